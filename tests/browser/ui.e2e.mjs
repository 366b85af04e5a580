// End-to-end test of batchd's web dashboard in Debian's headless Chromium,
// driven by playwright-core (no browser download: executablePath).
//
// Run by tests/integration/test_ui.py, which starts PostgreSQL, the mock
// providers and batchd, submits the batches and passes everything in the
// environment:
//
//   BASE_URL        http://127.0.0.1:PORT (batchd's listener)
//   TOKEN           a valid tenant token; BAD_TOKEN one that is not
//   RUNNING_ID      a batch that is processing slowly (route "steady")
//   FLAKY_ID        a batch on the "flaky" provider; FLAKY_MOCK its mock's base URL
//   XSS_ID          a finished batch whose failed item's error holds HTML; XSS_TEXT that
//                   text, XSS_NAME the batch's name (markup too)
//   FOREIGN_NAME    the name of another tenant's batch (never shown)
//   DEAD_HOST       the hostname of a dead (not yet reaped) worker row
//   SCREENSHOT      where to save the screenshot (PNG); SCREENSHOT_PHONE the phone-width
//                   one; the sign-in form after the revocation goes to SCREENSHOT-signin.png
//   CHROMIUM        the browser (default /usr/bin/chromium)
//
// Talks to the test on stdout/stdin: "@@step NAME" lines tell what it is
// doing; "@@ask revoke" asks the test to revoke TOKEN and waits for a line
// on stdin. Exit 0 when every check passed; otherwise the reason on stderr.

import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const env = (name, dflt) => {
	const v = process.env[name] ?? dflt;
	if (v === undefined)
		throw new Error(`missing environment variable ${name}`);
	return v;
};

const BASE = env('BASE_URL').replace(/\/$/, '');
const TOKEN = env('TOKEN');
const BAD_TOKEN = env('BAD_TOKEN');
const RUNNING_ID = env('RUNNING_ID');
const FLAKY_ID = env('FLAKY_ID');
const FLAKY_MOCK = env('FLAKY_MOCK');
const XSS_ID = env('XSS_ID');
const XSS_TEXT = env('XSS_TEXT');
const XSS_NAME = env('XSS_NAME');
const FOREIGN_NAME = env('FOREIGN_NAME');
const DEAD_HOST = env('DEAD_HOST');
const SCREENSHOT = env('SCREENSHOT');
const SCREENSHOT_PHONE = env('SCREENSHOT_PHONE');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const OVERALL_MS = Number(env('UI_TEST_TIMEOUT_MS', '150000'));

const step = (name) => process.stdout.write(`@@step ${name}\n`);

function check(cond, message) {
	if (!cond)
		throw new Error(message);
}

// stdin lines, for "@@ask" answers
const lines = createInterface({ input: process.stdin });
const answers = [];
const waiters = [];
lines.on('line', (l) => {
	const w = waiters.shift();
	if (w)
		w(l);
	else
		answers.push(l);
});

function ask(what) {
	process.stdout.write(`@@ask ${what}\n`);
	return new Promise((resolve) => {
		if (answers.length)
			resolve(answers.shift());
		else
			waiters.push(resolve);
	});
}

const watchdog = setTimeout(() => {
	process.stderr.write(`ui.e2e: gave up after ${OVERALL_MS} ms\n`);
	process.exit(3);
}, OVERALL_MS);

let browser;
let page;
const consoleErrors = [];
const foreignRequests = [];
let phase = 'start';

async function main() {
	browser = await chromium.launch({
		executablePath: CHROMIUM,
		headless: true,
		timeout: 60000,
		// Playwright adds --no-sandbox (chromiumSandbox is false) and a fresh
		// temporary profile (--user-data-dir) itself.
		args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
			'--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
	});
	const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
	page = await context.newPage();
	page.setDefaultTimeout(20000);
	page.on('console', (msg) => {
		if (msg.type() === 'error' || msg.type() === 'warning' && /Content.Security.Policy/i.test(msg.text()))
			consoleErrors.push({ phase, text: msg.text() });
	});
	page.on('pageerror', (err) => consoleErrors.push({ phase, text: 'uncaught: ' + err.message }));
	page.on('request', (req) => {
		const u = req.url();
		if (!u.startsWith(BASE + '/') && !u.startsWith('data:'))
			foreignRequests.push(u);
	});

	// ------------------------------------------------------------ the page itself
	step('load');
	const resp = await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
	check(resp.status() === 200, `GET / answered ${resp.status()}`);
	const h = resp.headers();
	check(/default-src 'self'/.test(h['content-security-policy'] || ''), `no CSP on /: ${JSON.stringify(h)}`);
	check(h['x-content-type-options'] === 'nosniff', 'no nosniff on /');
	check(h['referrer-policy'] === 'no-referrer', 'no Referrer-Policy on /');
	await page.locator('#signin').waitFor({ state: 'visible' });
	check(await page.locator('#dash').isHidden(), 'the dashboard shows before sign-in');

	// ------------------------------------------------------------ a bad token
	step('bad-token');
	phase = 'bad-token';
	await page.fill('#token', BAD_TOKEN);
	await page.click('#signin-form button[type="submit"]');
	await page.locator('#signin-msg').filter({ hasText: /refused/ }).waitFor();
	check(await page.locator('#dash').isHidden(), 'the dashboard shows after a bad token');
	check(await page.evaluate(() => sessionStorage.length) === 0, 'a bad token was stored');

	// ------------------------------------------------------------ sign in
	step('sign-in');
	phase = 'signed-in';
	await page.fill('#token', TOKEN);
	await page.click('#signin-form button[type="submit"]');
	await page.locator('#dash').waitFor({ state: 'visible' });
	check(await page.locator('#signin').isHidden(), 'the sign-in form stays after signing in');
	check(await page.evaluate(() => sessionStorage.getItem('batchd.token')) === TOKEN,
		'the token is not in session storage');
	check(await page.evaluate(() => localStorage.length) === 0, 'something was put in local storage');

	// ------------------------------------------------------------ live progress
	step('progress');
	const runningRow = page.locator(`#batch-rows tr[data-id="${RUNNING_ID}"]`);
	await runningRow.waitFor();
	const bar = runningRow.locator('.bar');
	const done0 = Number(await bar.getAttribute('data-done'));
	const width0 = await runningRow.locator('.seg-ok').evaluate((e) => e.getBoundingClientRect().width);
	await page.waitForFunction(([id, d0]) => {
		const b = document.querySelector(`#batch-rows tr[data-id="${id}"] .bar`);
		return b && Number(b.getAttribute('data-done')) > d0 + 5;
	}, [RUNNING_ID, done0], { timeout: 20000 });
	await page.waitForTimeout(700); // the bar's width transition
	const width1 = await runningRow.locator('.seg-ok').evaluate((e) => e.getBoundingClientRect().width);
	check(width1 > width0, `the progress bar did not grow (${width0} -> ${width1} px)`);
	const rowText = await runningRow.innerText();
	check(/processing/.test(rowText), `the running batch's status word is missing: ${rowText}`);
	check(/remaining/.test(rowText), `the running batch's bar has no words: ${rowText}`);
	await page.waitForFunction((id) => {
		const r = document.querySelector(`#batch-rows tr[data-id="${id}"]`);
		return r && /\/s/.test(r.cells[4].textContent) && /\d+ (s|min)/.test(r.cells[5].textContent);
	}, RUNNING_ID, { timeout: 20000 });

	const listText = await page.locator('#batch-rows').textContent();
	check(!listText.includes(FOREIGN_NAME), 'another tenant\'s batch is listed');
	const xssLink = page.locator(`#batch-rows tr[data-id="${XSS_ID}"] a.batch-link`);
	check(await xssLink.textContent() === XSS_NAME, 'a batch name holding markup is not shown as text');

	// newest first: the running batch was submitted last
	const firstId = await page.locator('#batch-rows tr').first().getAttribute('data-id');
	check(firstId === RUNNING_ID, `batches are not newest first (first row ${firstId})`);

	// ------------------------------------------------------------ workers
	step('workers');
	await page.locator('#worker-rows tr:not(.dead)').first().waitFor();
	const live = await page.locator('#worker-rows tr:not(.dead)').first().innerText();
	check(/alive/.test(live) && /serving this page/.test(live) && /ago/.test(live), `live worker row: ${live}`);
	const dead = page.locator('#worker-rows tr.dead');
	await dead.first().waitFor();
	const deadText = await dead.first().innerText();
	check(deadText.includes(DEAD_HOST) && /dead/.test(deadText) && /reap/.test(deadText),
		`dead worker row: ${deadText}`);

	// ------------------------------------------------------------ the breaker opens
	step('breaker');
	const flakyRow = page.locator('#provider-rows tr[data-name="flaky"]');
	await flakyRow.waitFor();
	await page.waitForFunction(() => {
		const r = document.querySelector('#provider-rows tr[data-name="flaky"]');
		return r && r.getAttribute('data-breaker') === 'closed' && /closed/.test(r.textContent);
	});
	let r = await fetch(FLAKY_MOCK + '/_mock/config', {
		method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"down":true}',
	});
	check(r.ok, `cannot make the flaky mock fail: ${r.status}`);
	await page.waitForFunction(() => {
		const r = document.querySelector('#provider-rows tr[data-name="flaky"]');
		return r && r.getAttribute('data-breaker') === 'open' && /half-open in \d/.test(r.textContent);
	}, null, { timeout: 20000 });
	const flakyText = await flakyRow.innerText();
	check(/\bopen\b/.test(flakyText), `the open breaker has no word: ${flakyText}`);
	check(/of 4\/s/.test(flakyText), `the configured rate is missing: ${flakyText}`);
	check(/\/ 3\b/.test(flakyText), `the concurrency cap is missing: ${flakyText}`);
	check(/%/.test(flakyText), `the error rate is missing: ${flakyText}`);
	const sparkPoints = await flakyRow.locator('polyline').getAttribute('points');
	check(sparkPoints && sparkPoints.split(' ').length === 180, 'the sparkline does not have 180 points');
	const steadyText = await page.locator('#provider-rows tr[data-name="steady"]').innerText();
	check(/closed/.test(steadyText), `steady provider: ${steadyText}`);
	// its batch stops moving (every item back in the queue until the breaker
	// half-opens): stalled, no ETA, once nothing finished for the rate's window
	await page.waitForFunction((id) => {
		const r = document.querySelector(`#batch-rows tr[data-id="${id}"]`);
		return r && r.cells[5].textContent === 'stalled';
	}, FLAKY_ID, { timeout: 45000 });

	// ------------------------------------------------------------ an error holding HTML
	step('escaped-error');
	await page.locator(`#batch-rows tr[data-id="${XSS_ID}"] a.batch-link`).click();
	await page.waitForURL(`**/#batch/${XSS_ID}`);
	await page.locator('#detail').waitFor({ state: 'visible' });
	await page.locator('#failed-rows tr').first().waitFor();
	const errCell = page.locator('#failed-rows td.error').first();
	const errText = await errCell.textContent();
	check(errText.includes(XSS_TEXT), `the error is not shown as text: ${JSON.stringify(errText)}`);
	const injected = await page.evaluate(() => ({
		scripts: document.querySelectorAll('main script, #detail img').length,
		xss: window.__xss === undefined ? null : window.__xss,
	}));
	check(injected.scripts === 0 && injected.xss === null, `markup from an item error ran: ${JSON.stringify(injected)}`);
	const failedRow = await page.locator('#failed-rows tr').first().innerText();
	check(/lookup/.test(failedRow) && /404/.test(failedRow), `failed item row: ${failedRow}`);
	// the API's rules: a finished batch with a failure can be retried and deleted, not cancelled
	check(await page.locator('#act-cancel').isDisabled(), 'cancel is enabled on a finished batch');
	check(await page.locator('#act-retry').isEnabled(), 'retry is disabled on a batch with a failed item');
	check(await page.locator('#act-delete').isEnabled(), 'delete is disabled on a finished batch');

	// ------------------------------------------------------------ the screenshot
	step('screenshot');
	// the running batch is still moving and the flaky breaker still open
	const stillOpen = await flakyRow.getAttribute('data-breaker');
	const runningStatus = await runningRow.getAttribute('data-status');
	check(stillOpen === 'open' && runningStatus === 'processing',
		`screenshot state: breaker ${stillOpen}, running batch ${runningStatus}`);
	await page.screenshot({ path: SCREENSHOT, fullPage: true });

	// ------------------------------------------------------------ cancel from the page
	step('cancel');
	await runningRow.locator('a.batch-link').click();
	await page.waitForURL(`**/#batch/${RUNNING_ID}`);
	await page.waitForFunction((id) => {
		const hd = document.getElementById('detail-facts');
		return hd && hd.textContent.includes(id);
	}, RUNNING_ID);
	check(await page.locator('#act-delete').isDisabled(), 'delete is enabled on a processing batch');
	check(await page.locator('#act-retry').isDisabled(), 'retry is enabled on a processing batch');
	await page.locator('#act-cancel').waitFor();
	check(await page.locator('#act-cancel').isEnabled(), 'cancel is disabled on a processing batch');
	let dialogText = null;
	page.once('dialog', (d) => {
		dialogText = d.message();
		d.accept();
	});
	await page.click('#act-cancel');
	await page.locator('#action-msg').filter({ hasText: 'Batch cancelled.' }).waitFor();
	check(dialogText && /Cancel/.test(dialogText), `no confirmation before cancelling: ${dialogText}`);
	await page.waitForFunction((id) => {
		const r = document.querySelector(`#batch-rows tr[data-id="${id}"]`);
		return r && r.getAttribute('data-status') === 'cancelled' && /cancelled/.test(r.cells[2].textContent);
	}, RUNNING_ID);
	await page.locator('#detail-facts .badge.st-cancelled').waitFor();
	check(await page.locator('#act-cancel').isDisabled(), 'cancel stays enabled after cancelling');
	// the batch's events show the cancel
	await page.locator('#detail-events li[data-event="cancelled"]').waitFor();
	const evText = await page.locator('#detail-events').innerText();
	check(/submitted/.test(evText) && /cancelled/.test(evText), `events of the cancelled batch: ${evText}`);

	// ------------------------------------------------------------ then delete it
	step('delete');
	// enabled once its last running items have finished
	await page.waitForFunction(() => !document.getElementById('act-delete').disabled, null, { timeout: 15000 });
	page.once('dialog', (d) => d.accept());
	await page.click('#act-delete');
	await page.locator('#flash').filter({ hasText: 'deleted' }).waitFor();
	check(await page.locator('#detail').isHidden(), 'the detail of a deleted batch stays open');
	await page.waitForFunction((id) => !document.querySelector(`#batch-rows tr[data-id="${id}"]`), RUNNING_ID);

	// ------------------------------------------------------------ retry the failed item
	step('retry');
	await page.locator(`#batch-rows tr[data-id="${XSS_ID}"] a.batch-link`).click();
	await page.waitForURL(`**/#batch/${XSS_ID}`);
	await page.waitForFunction((id) => {
		const hd = document.getElementById('detail-facts');
		return hd && hd.textContent.includes(id) && !document.getElementById('act-retry').disabled;
	}, XSS_ID);
	await page.click('#act-retry');
	await page.locator('#action-msg').filter({ hasText: 'Failed items queued again.' }).waitFor();
	// and the retry, with the batch's retry count
	await page.locator('#detail-events li[data-event="retried"]').waitFor();
	await page.waitForFunction(() => /Retried\s*once/.test(document.getElementById('detail-facts').textContent));

	// ------------------------------------------------------------ phone width
	step('phone');
	await page.setViewportSize({ width: 390, height: 844 });
	await page.locator('#detail-close').click();
	await page.evaluate(() => window.scrollTo(0, 0));
	await page.waitForTimeout(400);
	const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
	check(overflow <= 1, `the page is ${overflow}px wider than a phone`);
	await page.screenshot({ path: SCREENSHOT_PHONE, fullPage: false });
	await page.setViewportSize({ width: 1280, height: 900 });

	// ------------------------------------------------------------ no data in the markup
	step('no-token-in-dom');
	const html = await page.content();
	check(!html.includes(TOKEN), 'the token is in the DOM');

	// ------------------------------------------------------------ a revoked token
	step('revoke');
	phase = 'revoked';
	const answer = await ask('revoke');
	check(answer === 'ok', `the test could not revoke the token: ${answer}`);
	await page.locator('#signin').waitFor({ state: 'visible', timeout: 15000 });
	await page.locator('#signin-msg').filter({ hasText: /no longer accepts/ }).waitFor();
	check(await page.locator('#dash').isHidden(), 'the dashboard stays after the token was revoked');
	check(await page.evaluate(() => sessionStorage.getItem('batchd.token')) === null,
		'a revoked token stays in session storage');
	check(await page.locator('#batch-rows tr').count() === 0, 'tenant data stays on the page after sign-out');
	await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '') + '-signin.png' });

	// ------------------------------------------------------------ console
	step('console');
	// A 401 shows in the console as a failed resource load: expected when
	// the token is bad or revoked, and only then.
	const unexpected = consoleErrors.filter((e) => !((e.phase === 'bad-token' || e.phase === 'revoked') &&
		/status of 401/.test(e.text)));
	check(unexpected.length === 0, `console errors: ${JSON.stringify(unexpected)}`);
	check(foreignRequests.length === 0, `requests to other origins: ${JSON.stringify(foreignRequests)}`);
	step('done');
}

main().then(async () => {
	clearTimeout(watchdog);
	await browser.close();
	process.exit(0);
}, async (err) => {
	process.stderr.write(`ui.e2e: FAILED at phase ${phase}: ${err && err.stack ? err.stack : err}\n`);
	if (consoleErrors.length)
		process.stderr.write(`console errors so far: ${JSON.stringify(consoleErrors)}\n`);
	if (page) {
		try {
			const fail = SCREENSHOT.replace(/\.png$/, '') + '-failure.png';
			await page.screenshot({ path: fail, fullPage: true });
			process.stderr.write(`ui.e2e: screenshot of the failure: ${fail}\n`);
		} catch (e) { /* the browser is gone */ }
	}
	try {
		if (browser)
			await browser.close();
	} catch (e) { /* ignore */ }
	process.exit(1);
});
