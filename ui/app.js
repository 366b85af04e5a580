/*
 * batchd dashboard: signs in with a tenant token (kept in this tab's session
 * storage, sent as Authorization: Bearer) and polls the REST API.
 *
 * Every value from the server reaches the page through textContent or a DOM
 * attribute, never as markup to parse: an item error holding HTML shows as
 * the text it is.  Tables are updated in place, row by row (keyed by id), so
 * a focused link or button survives a refresh.
 */
'use strict';

(function () {
	const TOKEN_KEY = 'batchd.token';
	const POLL_MS = 1500;           /* refresh period while the tab is visible */
	const HIDDEN_POLL_MS = 10000;   /* ... and while it is not */
	const MAX_BACKOFF_MS = 10000;   /* retry period when the server is unreachable */
	const LIST_LIMIT = 50;          /* batches shown */
	const PROGRESS_MAX = 8;         /* /progress requests per refresh (unfinished batches) */
	const FAILED_LIMIT = 50;        /* failed items shown in a batch's detail */
	const EVENTS_LIMIT = 50;        /* events shown in a batch's detail (the first ones) */
	const TERMINAL = ['completed', 'completed_with_errors', 'failed', 'cancelled'];
	const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
	const SVG_NS = 'http://www.w3.org/2000/svg';

	const $ = (id) => document.getElementById(id);

	/* ------------------------------------------------------------ DOM helpers */

	/* el('td', {class: 'x', 'data-label': 'Name'}, 'text', node, ...) */
	function el(tag, attrs, ...children) {
		const e = document.createElement(tag);
		for (const [k, v] of Object.entries(attrs || {})) {
			if (v === null || v === undefined || v === false)
				continue;
			if (k === 'class')
				e.className = v;
			else
				e.setAttribute(k, v === true ? '' : String(v));
		}
		for (const c of children)
			if (c !== null && c !== undefined)
				e.append(typeof c === 'string' ? document.createTextNode(c) : c);
		return e;
	}

	function svg(tag, attrs) {
		const e = document.createElementNS(SVG_NS, tag);
		for (const [k, v] of Object.entries(attrs || {}))
			e.setAttribute(k, String(v));
		return e;
	}

	function setText(node, text) {
		text = text === null || text === undefined ? '' : String(text);
		if (node.textContent !== text)
			node.textContent = text;
	}

	function setAttr(node, name, value) {
		value = String(value);
		if (node.getAttribute(name) !== value)
			node.setAttribute(name, value);
	}

	function setClass(node, cls) {
		if (node.className !== cls)
			node.className = cls;
	}

	function show(node, visible) {
		if (node.hidden === visible)
			node.hidden = !visible;
	}

	/* Keep tbody's rows in the order of keys, creating rows with make(key)
	 * and dropping rows whose key is gone; returns key -> row. */
	function reconcile(tbody, cache, keys, make) {
		const keep = new Set(keys);
		for (const [k, row] of cache) {
			if (!keep.has(k)) {
				row.remove();
				cache.delete(k);
			}
		}
		keys.forEach((k, i) => {
			let row = cache.get(k);
			if (!row) {
				row = make(k);
				cache.set(k, row);
			}
			const at = tbody.children[i];
			if (at !== row)
				tbody.insertBefore(row, at || null);
		});
		return cache;
	}

	/* ------------------------------------------------------------ formatting */

	const nf = new Intl.NumberFormat('en');

	function fmtInt(n) {
		return typeof n === 'number' && isFinite(n) ? nf.format(n) : '\u2014';
	}

	function fmtRate(r) {
		if (typeof r !== 'number' || !isFinite(r))
			return '\u2014';
		if (r >= 100)
			return r.toFixed(0) + '/s';
		if (r >= 10)
			return r.toFixed(1).replace(/\.0$/, '') + '/s';
		return r.toFixed(2).replace(/\.?0+$/, '') + '/s';
	}

	function fmtDuration(s) {
		if (typeof s !== 'number' || !isFinite(s) || s < 0)
			return '\u2014';
		s = Math.round(s);
		if (s < 60)
			return s + ' s';
		if (s < 3600)
			return Math.floor(s / 60) + ' min ' + String(s % 60).padStart(2, '0') + ' s';
		const h = Math.floor(s / 3600);
		if (h < 48)
			return h + ' h ' + String(Math.floor((s % 3600) / 60)).padStart(2, '0') + ' min';
		return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
	}

	function fmtTime(ts) {
		if (!ts)
			return '\u2014';
		const d = new Date(ts);
		return isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
	}

	function fmtPercent(x) {
		if (typeof x !== 'number' || !isFinite(x))
			return '\u2014';
		const p = x * 100;
		return (p >= 10 || p === 0 ? p.toFixed(0) : p.toFixed(1)) + '%';
	}

	function statusWord(s) {
		return String(s || 'unknown').replace(/_/g, ' ');
	}

	function shortId(id) {
		return String(id || '').slice(0, 8);
	}

	function batchTitle(b) {
		return b.name ? String(b.name) : 'batch ' + shortId(b.id);
	}

	function isTerminal(status) {
		return TERMINAL.includes(status);
	}

	/* ------------------------------------------------------------ REST */

	class AuthError extends Error {}

	class ApiError extends Error {
		constructor(status, message) {
			super(message);
			this.status = status;
		}
	}

	let token = null;

	async function api(method, path, tok) {
		let res;
		try {
			res = await fetch(path, {
				method: method,
				headers: {
					'Authorization': 'Bearer ' + (tok || token || ''),
					'Accept': 'application/json',
				},
				cache: 'no-store',
				credentials: 'omit',
				redirect: 'error',
				referrerPolicy: 'no-referrer',
			});
		} catch (e) {
			throw new ApiError(0, 'cannot reach batchd (' + (e && e.message ? e.message : 'network error') + ')');
		}
		let body = null;
		if (res.status !== 204) {
			const text = await res.text();
			if (text) {
				try {
					body = JSON.parse(text);
				} catch (e) {
					body = null;
				}
			}
		}
		const msg = body && body.error && typeof body.error.message === 'string' ?
			body.error.message : 'HTTP ' + res.status;
		if (res.status === 401)
			throw new AuthError(msg);
		if (!res.ok)
			throw new ApiError(res.status, msg);
		return body;
	}

	/* ------------------------------------------------------------ progress bar */

	/* A bar split into succeeded / failed / cancelled / remaining, with the
	 * figures also in words beside it (readable without colour). */
	function makeBar() {
		const ok = el('span', {class: 'seg seg-ok'});
		const failed = el('span', {class: 'seg seg-failed'});
		const cancelled = el('span', {class: 'seg seg-cancelled'});
		const bar = el('div', {class: 'bar', role: 'progressbar', 'aria-valuemin': 0},
			ok, failed, cancelled);
		const words = el('div', {class: 'bar-words'});
		const root = el('div', {class: 'progress'}, bar, words);
		return {root, bar, ok, failed, cancelled, words};
	}

	function updateBar(p, b) {
		const total = Math.max(0, b.total | 0);
		const s = b.succeeded | 0, f = b.failed | 0, c = b.cancelled | 0;
		const rest = Math.max(0, total - s - f - c);
		const pct = (n) => total > 0 ? Math.min(100, n * 100 / total) : 0;
		const donePct = total > 0 ? (s + f + c) * 100 / total : 100;
		p.ok.style.width = pct(s) + '%';
		p.failed.style.width = pct(f) + '%';
		p.cancelled.style.width = pct(c) + '%';
		const parts = [fmtInt(s) + ' succeeded'];
		if (f)
			parts.push(fmtInt(f) + ' failed');
		if (c)
			parts.push(fmtInt(c) + ' cancelled');
		parts.push(fmtInt(rest) + ' remaining');
		const pctText = (donePct >= 99.95 || donePct === 0 ? donePct.toFixed(0) : donePct.toFixed(1)) + '%';
		const text = pctText + ' \u00b7 ' + parts.join(' \u00b7 ');
		setText(p.words, text);
		setAttr(p.bar, 'aria-valuemax', total);
		setAttr(p.bar, 'aria-valuenow', s + f + c);
		setAttr(p.bar, 'aria-valuetext', pctText + ' done: ' + parts.join(', ') + ' of ' + fmtInt(total));
		setAttr(p.bar, 'data-done', s + f + c);
	}

	/* ------------------------------------------------------------ state */

	let pollTimer = null;
	let polling = false;
	let pollAgain = false;         /* a refresh was asked for while one ran */
	let generation = 0;        /* bumped at sign-in/out: late answers are dropped */
	let failures = 0;
	let batches = [];
	let nextCursor = null;
	let listTotal = null;          /* the list's total (all the tenant's batches) */
	const progress = new Map();    /* batch id -> /progress answer */
	let openId = null;
	let detail = null;             /* the open batch */
	let failedItems = null;
	let failedMore = false;
	let events = null;             /* the open batch's /events answer */
	let lastStatus = null;
	let busyAction = false;

	const batchRows = new Map();
	const providerRows = new Map();
	const workerRows = new Map();
	const failedRows = new Map();
	let detailBar = null;          /* the open batch's progress bar */

	/* ------------------------------------------------------------ sign-in */

	function showSignin(message) {
		stopPolling();
		generation++;
		token = null;
		try {
			sessionStorage.removeItem(TOKEN_KEY);
		} catch (e) { /* storage disabled: nothing kept anyway */ }
		clearDashboard();
		show($('dash'), false);
		show($('signout'), false);
		show($('signin'), true);
		setText($('live'), '');
		setClass($('live'), 'live');
		const msg = $('signin-msg');
		setText(msg, message || '');
		show(msg, !!message);
		$('token').value = '';
		$('token').focus();
	}

	function showDashboard() {
		show($('signin'), false);
		show($('signin-msg'), false);
		show($('dash'), true);
		show($('signout'), true);
		openId = parseHash();
		startPolling();
	}

	async function onSignin(ev) {
		ev.preventDefault();
		const input = $('token');
		const tok = input.value.trim();
		const msg = $('signin-msg');
		const button = ev.target.querySelector('button[type="submit"]');
		if (!tok) {
			setText(msg, 'Enter a token.');
			show(msg, true);
			input.focus();
			return;
		}
		if (!/^[\x21-\x7e]+$/.test(tok) || tok.length > 512) {
			setText(msg, 'That is not a token: tokens are one word of printable characters.');
			show(msg, true);
			input.focus();
			return;
		}
		button.disabled = true;
		setText(msg, 'Signing in\u2026');
		show(msg, true);
		try {
			const status = await api('GET', '/v1/status', tok);
			token = tok;
			try {
				sessionStorage.setItem(TOKEN_KEY, tok);
			} catch (e) { /* no storage: this page load only */ }
			input.value = '';
			lastStatus = status;
			showDashboard();
			$('main').focus();
		} catch (e) {
			let text;
			if (e instanceof AuthError)
				text = 'Sign-in failed: the server refused this token (' + e.message + '). ' +
					'Check that it was copied whole and has not been revoked.';
			else if (e instanceof ApiError && e.status === 0)
				text = 'Sign-in failed: ' + e.message + '.';
			else
				text = 'Sign-in failed: ' + (e && e.message ? e.message : 'unexpected error') + '.';
			setText(msg, text);
			show(msg, true);
			input.focus();
			input.select();
		} finally {
			button.disabled = false;
		}
	}

	function onSignout() {
		showSignin('Signed out. The token was removed from this tab.');
	}

	/* ------------------------------------------------------------ polling */

	function startPolling() {
		stopPolling();
		failures = 0;
		poll();
	}

	function stopPolling() {
		if (pollTimer !== null)
			clearTimeout(pollTimer);
		pollTimer = null;
	}

	function schedule(ms) {
		stopPolling();
		pollTimer = setTimeout(poll, ms);
	}

	async function poll() {
		pollTimer = null;
		if (!token)
			return;
		if (polling) {
			pollAgain = true;
			return;
		}
		polling = true;
		pollAgain = false;
		const gen = generation;
		try {
			await refresh(gen);
			if (gen !== generation)
				return;
			failures = 0;
			show($('problem'), false);
			setText($('live'), 'Live \u00b7 updated ' + new Date().toLocaleTimeString());
			setClass($('live'), 'live ok');
		} catch (e) {
			if (gen !== generation)
				return;
			if (e instanceof AuthError) {
				showSignin('Signed out: the server no longer accepts this tab\u2019s token (' + e.message +
					'). Sign in again with a valid token.');
				return;
			}
			failures++;
			const p = $('problem');
			setText(p, 'Cannot refresh: ' + e.message + '. Retrying; the figures below may be out of date.');
			show(p, true);
			setText($('live'), 'Not updating');
			setClass($('live'), 'live stale');
		} finally {
			polling = false;
			if (gen === generation && token) {
				const base = document.hidden ? HIDDEN_POLL_MS : POLL_MS;
				schedule(pollAgain ? 0 : failures ?
					Math.min(MAX_BACKOFF_MS, base * Math.pow(2, failures - 1)) : base);
			}
		}
	}

	async function refresh(gen) {
		const [list, status] = await Promise.all([
			api('GET', '/v1/batches?limit=' + LIST_LIMIT),
			api('GET', '/v1/status'),
		]);
		if (gen !== generation)
			return;
		batches = Array.isArray(list && list.batches) ? list.batches : [];
		nextCursor = list ? list.next_cursor : null;
		listTotal = list && typeof list.total === 'number' ? list.total : null;
		lastStatus = status;

		/* rate, ETA and state: /progress of the unfinished batches, and of
		 * cancelled ones whose items still run (the first few; processing
		 * ones before pending ones) */
		const want = batches.filter((b) => wantsProgress(b) && b.status !== 'pending')
			.concat(batches.filter((b) => b.status === 'pending'))
			.slice(0, PROGRESS_MAX).map((b) => b.id);
		if (openId && !want.includes(openId))
			want.push(openId);
		/* settled at once, so that a failure is never an unhandled rejection
		 * while the /progress requests are awaited */
		const detailReq = openId ? Promise.all([
			api('GET', '/v1/batches/' + openId),
			api('GET', '/v1/batches/' + openId + '/items?status=failed&limit=' + (FAILED_LIMIT + 1)),
			api('GET', '/v1/batches/' + openId + '/events?limit=' + EVENTS_LIMIT),
		]).then((v) => ({value: v}), (e) => ({error: e})) : null;
		const settled = await Promise.allSettled(want.map((id) =>
			api('GET', '/v1/batches/' + id + '/progress')));
		const seen = new Set(batches.map((b) => b.id));
		for (const k of progress.keys())
			if (!seen.has(k) && k !== openId)
				progress.delete(k);
		settled.forEach((r, i) => {
			if (r.status === 'fulfilled')
				progress.set(want[i], r.value);
			else if (r.reason instanceof AuthError)
				throw r.reason;
		});
		for (const b of batches)
			if (!wantsProgress(b) && b.id !== openId)
				progress.delete(b.id);

		if (detailReq) {
			const id = openId;
			try {
				const got = await detailReq;
				if (got.error)
					throw got.error;
				const [b, it, ev] = got.value;
				if (gen !== generation || id !== openId)
					return;
				detail = b;
				events = ev && Array.isArray(ev.events) ? ev : null;
				const items = Array.isArray(it && it.items) ? it.items : [];
				failedMore = items.length > FAILED_LIMIT || !!(it && it.next_cursor);
				failedItems = items.slice(0, FAILED_LIMIT);
			} catch (e) {
				if (e instanceof ApiError && e.status === 404 && id === openId) {
					closeDetail('That batch no longer exists (deleted, or not one of this tenant\u2019s).');
				} else {
					throw e;
				}
			}
		}
		if (gen !== generation)
			return;
		render();
	}

	/* ------------------------------------------------------------ rendering */

	function render() {
		renderBatches();
		renderDetail();
		renderProviders();
		renderWorkers();
	}

	function clearDashboard() {
		batches = [];
		progress.clear();
		detail = null;
		failedItems = null;
		events = null;
		lastStatus = null;
		for (const cache of [batchRows, providerRows, workerRows])
			for (const row of cache.values())
				row.remove();
		batchRows.clear();
		providerRows.clear();
		workerRows.clear();
		for (const row of failedRows.values())
			row.remove();
		failedRows.clear();
		detailBar = null;
		$('detail-facts').replaceChildren();
		$('detail-progress').replaceChildren();
		$('detail-events').replaceChildren();
		setText($('flash'), '');
		setText($('action-msg'), '');
		setText($('db-state'), '');
		show($('detail'), false);
		show($('problem'), false);
	}

	function makeBatchRow(id) {
		const link = el('a', {href: '#batch/' + id, class: 'batch-link'});
		const bar = makeBar();
		const status = el('span', {class: 'badge'});
		const cells = {
			name: el('td', {'data-label': 'Name', class: 'name'}, link),
			route: el('td', {'data-label': 'Route'}),
			status: el('td', {'data-label': 'Status'}, status),
			progress: el('td', {'data-label': 'Progress', class: 'wide'}, bar.root),
			rate: el('td', {'data-label': 'Rate', class: 'num'}),
			eta: el('td', {'data-label': 'ETA', class: 'num'}),
		};
		const row = el('tr', {'data-id': id}, cells.name, cells.route, cells.status, cells.progress,
			cells.rate, cells.eta);
		row._ui = {link, bar, status, cells};
		return row;
	}

	function wantsProgress(b) {
		return !isTerminal(b.status) || (b.running | 0) > 0;
	}

	/* Items of a batch still running: from its /progress when we have it
	 * (fresher), else from the list. */
	function runningOf(b) {
		const p = progress.get(b.id);
		return p && typeof p.running === 'number' ? p.running : (b.running | 0);
	}

	/* "cancelled", or "cancelled, 3 still running" while they end */
	function statusText(b) {
		const n = isTerminal(b.status) ? runningOf(b) : 0;
		return statusWord(b.status) + (n > 0 ? ', ' + fmtInt(n) + ' still running' : '');
	}

	/*
	 * Rate and ETA (or what the batch is doing instead) from its /progress:
	 * the server's state says whether it moves; an ETA is shown only when
	 * the server gives one (running, enough recent samples).
	 */
	function rateEta(b) {
		const p = progress.get(b.id);
		if (isTerminal(b.status))
			return ['\u2014', runningOf(b) > 0 ? fmtInt(runningOf(b)) + ' still running' : 'done'];
		if (!p)
			return ['\u2026', b.status === 'pending' ? 'waiting' : '\u2026'];
		const rate = fmtRate(p.rate_per_s);
		switch (p.state) {
		case 'waiting':
			if (p.waiting_for_batch_slot === true)
				return [rate, 'waiting for a batch slot'];
			return [rate, typeof p.waiting_behind_priority === 'number' ?
				'waiting (behind priority ' + p.waiting_behind_priority + ')' : 'waiting'];
		case 'stalled':
			return [rate, 'stalled'];
		case 'pending':
			return [rate, 'waiting to start'];
		case 'running':
			return [rate, typeof p.eta_s === 'number' ? fmtDuration(p.eta_s) : '\u2014'];
		default:
			return [rate, statusWord(p.state || b.status)];
		}
	}

	function renderBatches() {
		const tbody = $('batch-rows');
		reconcile(tbody, batchRows, batches.map((b) => b.id), makeBatchRow);
		for (const b of batches) {
			const row = batchRows.get(b.id);
			const u = row._ui;
			setText(u.link, batchTitle(b));
			if (u.link.getAttribute('aria-current') !== (b.id === openId ? 'true' : null)) {
				if (b.id === openId)
					u.link.setAttribute('aria-current', 'true');
				else
					u.link.removeAttribute('aria-current');
			}
			setText(u.cells.route, b.route);
			setText(u.status, statusText(b));
			setClass(u.status, 'badge st-' + b.status);
			setClass(row, b.id === openId ? 'selected' : '');
			setAttr(row, 'data-status', b.status);
			updateBar(u.bar, b);
			const [rate, eta] = rateEta(b);
			setText(u.cells.rate, rate);
			setText(u.cells.eta, eta);
		}
		show($('batches-empty'), batches.length === 0);
		const more = $('batches-more');
		setText(more, nextCursor ? 'Showing the newest ' + batches.length +
			(typeof listTotal === 'number' ? ' of ' + fmtInt(listTotal) : '') +
			' batches (batchctl list, or the API with a cursor, pages through the rest).' : '');
		show(more, !!nextCursor);
	}

	function fact(dl, term, value) {
		dl.append(el('dt', null, term), el('dd', null, value));
	}

	function renderDetail() {
		const section = $('detail');
		if (!openId || !detail || detail.id !== openId) {
			show(section, !!openId);
			if (openId)
				setText($('detail-h'), 'Batch ' + shortId(openId) + ' (loading\u2026)');
			return;
		}
		const b = detail;
		show(section, true);
		setText($('detail-h'), batchTitle(b));

		const dl = el('dl', {id: 'detail-facts', class: 'facts'});
		fact(dl, 'ID', el('code', null, b.id));
		fact(dl, 'Status', el('span', {class: 'badge st-' + b.status}, statusText(b)));
		fact(dl, 'Route', String(b.route));
		fact(dl, 'Items', fmtInt(b.total) + ' (' + fmtInt(b.queued) + ' queued, ' + fmtInt(b.running) + ' running)');
		const [rate, eta] = rateEta(b);
		fact(dl, 'Rate', rate);
		fact(dl, 'ETA', eta);
		fact(dl, 'Priority', fmtInt(b.priority) + ', at most ' + fmtInt(b.max_attempts) + ' attempts');
		fact(dl, 'Retried', (b.retries | 0) === 1 ? 'once' : fmtInt(b.retries | 0) + ' times');
		fact(dl, 'Created', fmtTime(b.created_at));
		fact(dl, 'Started', fmtTime(b.started_at));
		fact(dl, 'Finished', fmtTime(b.finished_at));
		const old = $('detail-facts');
		/* rebuild only when something changed (keeps a text selection) */
		if (old.textContent !== dl.textContent)
			old.replaceWith(dl);

		if (!detailBar) {
			detailBar = makeBar();
			$('detail-progress').replaceChildren(detailBar.root);
		}
		updateBar(detailBar, b);
		updateActions(b);
		renderEvents();
		renderFailed();
	}

	/* "cancelled (7 cancelled, 3 running)", "retried (retry 1: 2 failed, 7
	 * cancelled)": the event and the figures of its detail, as text. */
	function eventText(e) {
		const d = e.detail && typeof e.detail === 'object' && !Array.isArray(e.detail) ? e.detail : {};
		const parts = [];
		for (const [k, v] of Object.entries(d))
			if (typeof v === 'number' || typeof v === 'string')
				parts.push(statusWord(k) + ' ' + (typeof v === 'number' ? fmtInt(v) : statusWord(v)));
		return statusWord(e.event) + (parts.length ? ' (' + parts.join(', ') + ')' : '');
	}

	function renderEvents() {
		const list = events ? events.events : [];
		const ol = el('ol', {id: 'detail-events', class: 'events'});
		for (const e of list)
			ol.append(el('li', {'data-event': String(e.event)},
				el('time', {datetime: String(e.at || '')}, fmtTime(e.at)), ' ', eventText(e)));
		const old = $('detail-events');
		if (old.textContent !== ol.textContent)
			old.replaceWith(ol);
		show($('events-empty'), !!events && list.length === 0);
		const more = events && typeof events.total === 'number' && events.total > list.length;
		setText($('events-more'), more ? 'Showing the first ' + list.length + ' of ' +
			fmtInt(events.total) + ' events; GET /v1/batches/{id}/events pages through them.' : '');
		show($('events-more'), !!more);
	}

	function updateActions(b) {
		const terminal = isTerminal(b.status);
		const running = b.running | 0;
		const retryable = (b.failed | 0) + (b.cancelled | 0);
		const rules = {
			cancel: terminal ? 'Only a pending or processing batch can be cancelled.' : '',
			retry: !terminal ? 'A batch can be retried once it has finished.' :
				running > 0 ? 'Some items are still running; retry once they finish.' :
				retryable === 0 ? 'There are no failed or cancelled items to retry.' : '',
			delete: !terminal ? 'Cancel the batch before deleting it.' :
				running > 0 ? 'Some items are still running; delete once they finish.' : '',
		};
		for (const action of ['cancel', 'retry', 'delete']) {
			const button = $('act-' + action);
			const why = rules[action];
			const disabled = busyAction || !!why;
			if (button.disabled !== disabled)
				button.disabled = disabled;
			if (why)
				setAttr(button, 'title', why);
			else if (button.hasAttribute('title'))
				button.removeAttribute('title');
		}
		const reasons = Object.values(rules).filter(Boolean);
		let note = $('action-rules');
		if (!note) {
			note = el('p', {id: 'action-rules', class: 'muted'});
			$('action-msg').before(note);
		}
		setText(note, reasons.join(' '));
	}

	function makeFailedRow(key) {
		const cells = {
			seq: el('td', {'data-label': '#', class: 'num'}),
			error: el('td', {'data-label': 'Error', class: 'error'}),
			provider: el('td', {'data-label': 'Provider'}),
			http: el('td', {'data-label': 'HTTP', class: 'num'}),
			tries: el('td', {'data-label': 'Tries', class: 'num'}),
		};
		const row = el('tr', null, cells.seq, cells.error, cells.provider, cells.http, cells.tries);
		row._ui = cells;
		return row;
	}

	function renderFailed() {
		const items = failedItems || [];
		const tbody = $('failed-rows');
		reconcile(tbody, failedRows, items.map((it) => String(it.id)), makeFailedRow);
		for (const it of items) {
			const c = failedRows.get(String(it.id))._ui;
			setText(c.seq, it.seq);
			setText(c.error, it.error === null || it.error === undefined ? '(no error text)' : it.error);
			setText(c.provider, it.provider || '\u2014');
			setText(c.http, it.http_status === null || it.http_status === undefined ? '\u2014' : it.http_status);
			setText(c.tries, it.attempts);
		}
		show($('failed-empty'), failedItems !== null && items.length === 0);
		setText($('failed-more'), failedMore ? 'Showing the first ' + FAILED_LIMIT +
			' failed items; GET /v1/batches/{id}/results has them all.' : '');
		show($('failed-more'), failedMore);
	}

	/* ------------------------------------------------------------ providers */

	function breakerText(p) {
		const br = p.breaker || {};
		switch (br.state) {
		case 'closed':
			return {word: 'closed', cls: 'closed', extra: br.failures ? br.failures + ' recent failure' + (br.failures === 1 ? '' : 's') : ''};
		case 'open':
			return {word: 'open', cls: 'open', extra: typeof br.half_open_in_s === 'number' ?
				'half-open in ' + fmtDuration(Math.max(0, br.half_open_in_s)) : ''};
		case 'half_open':
			return {word: 'half-open', cls: 'half-open', extra: 'trying one request'};
		default:
			return {word: statusWord(br.state), cls: 'unknown', extra: ''};
		}
	}

	/* a provider with login_url: its token, shown beside the breaker */
	function loginText(p) {
		const l = p.login;
		if (!l || typeof l !== 'object')
			return '';
		switch (l.state) {
		case 'ready':
		case 'refreshing':
			return 'login ' + (l.state === 'ready' ? 'ok' : 'refreshing') +
				(typeof l.expires_in_s === 'number' ? ', token expires in ' + fmtDuration(Math.max(0, l.expires_in_s)) : '');
		case 'failed':
		case 'refresh_failed':
			return 'login failing' + (l.last_error ? ': ' + l.last_error : '');
		case 'logging_in':
			return 'logging in';
		default:
			return 'login ' + statusWord(l.state);
		}
	}

	function makeProviderRow(name) {
		const state = el('span', {class: 'badge'});
		const stateExtra = el('span', {class: 'sub'});
		const spark = svg('svg', {class: 'spark', viewBox: '0 0 180 32', preserveAspectRatio: 'none',
			role: 'img', focusable: 'false'});
		const area = svg('polygon', {class: 'spark-area', points: ''});
		const line = svg('polyline', {class: 'spark-line', points: ''});
		spark.append(area, line);
		const sparkWords = el('span', {class: 'sub'});
		const cells = {
			name: el('th', {scope: 'row', 'data-label': 'Provider'}),
			breaker: el('td', {'data-label': 'Breaker'}, state, stateExtra),
			rate: el('td', {'data-label': 'Rate now / limit', class: 'num'}),
			inflight: el('td', {'data-label': 'In flight / cap', class: 'num'}),
			errors: el('td', {'data-label': 'Errors (1 min)', class: 'num'}),
			spark: el('td', {'data-label': 'Requests/s, 3 min', class: 'wide'}, spark, sparkWords),
		};
		setText(cells.name, name);
		const row = el('tr', {'data-name': name}, cells.name, cells.breaker, cells.rate, cells.inflight,
			cells.errors, cells.spark);
		row._ui = {state, stateExtra, spark, area, line, sparkWords, cells};
		return row;
	}

	function updateSpark(u, series) {
		const n = series.length;
		let max = 1;
		for (const v of series)
			if (v > max)
				max = v;
		const H = 32, top = 2;
		const pts = series.map((v, i) => {
			const x = n > 1 ? i * 180 / (n - 1) : 0;
			const y = H - (Math.max(0, v) / max) * (H - top);
			return x.toFixed(1) + ',' + y.toFixed(1);
		});
		const linePts = pts.join(' ');
		setAttr(u.line, 'points', linePts);
		setAttr(u.area, 'points', (n ? '0,' + H + ' ' + linePts + ' 180,' + H : ''));
		const peak = series.reduce((a, v) => Math.max(a, v), 0);
		const last = n > 1 ? series[n - 2] : (n ? series[0] : 0);
		const label = 'Requests per second over the last ' + Math.round(n / 60) + ' minutes: peak ' +
			peak + ', last full second ' + last;
		setAttr(u.spark, 'aria-label', label);
		setText(u.sparkWords, 'peak ' + peak + '/s');
	}

	function renderProviders() {
		const list = lastStatus && Array.isArray(lastStatus.providers) ? lastStatus.providers : [];
		reconcile($('provider-rows'), providerRows, list.map((p) => String(p.name)), makeProviderRow);
		for (const p of list) {
			const u = providerRows.get(String(p.name))._ui;
			const br = breakerText(p);
			setText(u.state, br.word);
			setClass(u.state, 'badge br-' + br.cls);
			const paused = typeof p.paused_for_s === 'number' && p.paused_for_s > 0 ?
				'paused ' + fmtDuration(p.paused_for_s) + ' (Retry-After)' : '';
			setText(u.stateExtra, [br.extra, paused, loginText(p)].filter(Boolean).join('; '));
			setAttr(providerRows.get(String(p.name)), 'data-breaker', br.cls);

			const series = Array.isArray(p.per_second) ? p.per_second.map(Number) : [];
			/* the last second is still counting: "now" is the five before it */
			const recent = series.slice(-6, -1);
			const now = recent.length ? recent.reduce((a, v) => a + v, 0) / recent.length :
				(typeof p.rate_per_s === 'number' ? p.rate_per_s : null);
			const limit = p.rate > 0 ? fmtRate(p.rate) : 'unlimited';
			let rateText = (now === null ? '\u2014' : fmtRate(now)) + ' of ' + limit;
			if (p.rate > 0 && typeof p.rate_share === 'number' && Math.abs(p.rate_share - p.rate) > 1e-9)
				rateText += ' (this worker ' + fmtRate(p.rate_share) + ')';
			setText(u.cells.rate, rateText);

			/* the window now: slow start, the fixed cap or the adaptive limit */
			const c = p.concurrency;
			let cap = p.max_concurrency > 0 ? fmtInt(p.max_concurrency) : 'no cap';
			if (c && typeof c.limit === 'number') {
				cap = fmtInt(c.limit) + (c.mode === 'auto' ? ' (auto)' : '');
				if (c.phase === 'slow_start')
					cap += ', slow start';
			}
			let inflight = (typeof p.inflight === 'number' ? fmtInt(p.inflight) : '\u2014') + ' / ' + cap;
			if (p.queued > 0)
				inflight += ', ' + fmtInt(p.queued) + ' waiting';
			setText(u.cells.inflight, inflight);

			const er = typeof p.error_rate === 'number' ? p.error_rate : null;
			setText(u.cells.errors, er === null ? '\u2014' : fmtPercent(er));
			setClass(u.cells.errors, 'num' + (er !== null && er >= 0.2 ? ' bad' : ''));
			updateSpark(u, series);
		}
	}

	/* ------------------------------------------------------------ workers */

	function makeWorkerRow(id) {
		const state = el('span', {class: 'badge'});
		const self = el('span', {class: 'sub'});
		const cells = {
			id: el('th', {scope: 'row', 'data-label': 'Worker'}, el('code', {title: id}, shortId(id)), self),
			state: el('td', {'data-label': 'State'}, state),
			host: el('td', {'data-label': 'Host'}),
			pid: el('td', {'data-label': 'PID', class: 'num'}),
			inflight: el('td', {'data-label': 'In flight', class: 'num'}),
			beat: el('td', {'data-label': 'Heartbeat', class: 'num'}),
		};
		const row = el('tr', {'data-id': id}, cells.id, cells.state, cells.host, cells.pid, cells.inflight,
			cells.beat);
		row._ui = {state, self, cells};
		return row;
	}

	function renderWorkers() {
		const fleet = lastStatus && Array.isArray(lastStatus.fleet) ? lastStatus.fleet : [];
		reconcile($('worker-rows'), workerRows, fleet.map((w) => String(w.id)), makeWorkerRow);
		for (const w of fleet) {
			const row = workerRows.get(String(w.id));
			const u = row._ui;
			setText(u.self, w.self ? ' (serving this page)' : '');
			setText(u.state, w.alive ? 'alive' : 'dead \u2014 awaiting reaping');
			setClass(u.state, 'badge ' + (w.alive ? 'w-alive' : 'w-dead'));
			setClass(row, w.alive ? '' : 'dead');
			setText(u.cells.host, w.hostname);
			setText(u.cells.pid, w.pid);
			setText(u.cells.inflight, fmtInt(w.inflight));
			const age = Number(w.heartbeat_age_s);
			setText(u.cells.beat, isFinite(age) ? fmtDuration(Math.max(0, age)) + ' ago' : fmtTime(w.heartbeat_at));
		}
		const db = lastStatus && lastStatus.database;
		let text = '';
		if (db)
			text = db.up ? 'Database: connected.' : 'Database: DOWN \u2014 ' + (db.error || 'unknown error') +
				' (work resumes when it is back).';
		setText($('db-state'), text);
		setClass($('db-state'), db && !db.up ? 'notice' : 'muted');
	}

	/* ------------------------------------------------------------ detail, actions */

	function parseHash() {
		const m = /^#batch\/([0-9a-fA-F-]{36})$/.exec(location.hash);
		return m && UUID_RE.test(m[1].toLowerCase()) ? m[1].toLowerCase() : null;
	}

	function onHashChange() {
		const id = parseHash();
		if (id === openId)
			return;
		openId = id;
		detail = null;
		failedItems = null;
		failedMore = false;
		events = null;
		$('detail-events').replaceChildren();
		for (const row of failedRows.values())
			row.remove();
		failedRows.clear();
		$('detail-facts').replaceChildren();
		for (const action of ['cancel', 'retry', 'delete'])
			$('act-' + action).disabled = true;
		setText($('action-msg'), '');
		setText($('flash'), '');
		render();
		if (id) {
			show($('detail'), true);
			$('detail-h').focus();
		}
		if (token)
			startPolling();
	}

	function closeDetail(message) {
		openId = null;
		detail = null;
		failedItems = null;
		events = null;
		if (location.hash)
			history.replaceState(null, '', location.pathname + location.search);
		show($('detail'), false);
		setText($('flash'), message || '');
	}

	async function onAction(ev) {
		const button = ev.currentTarget;
		const action = button.getAttribute('data-action');
		const b = detail;
		if (!b || busyAction || !token)
			return;
		const name = batchTitle(b);
		if (action === 'cancel' && !window.confirm('Cancel "' + name + '"? Items not yet run are not run; a retry can queue them again.'))
			return;
		if (action === 'delete' && !window.confirm('Delete "' + name + '" and all its items and results? This cannot be undone.'))
			return;
		busyAction = true;
		updateActions(b);
		const msg = $('action-msg');
		setText(msg, {cancel: 'Cancelling\u2026', retry: 'Queuing the failed items again\u2026', delete: 'Deleting\u2026'}[action]);
		setClass(msg, 'action-msg');
		try {
			if (action === 'delete')
				await api('DELETE', '/v1/batches/' + b.id);
			else
				await api('POST', '/v1/batches/' + b.id + '/' + action);
			setText(msg, {cancel: 'Batch cancelled.', retry: 'Failed items queued again.', delete: 'Batch deleted.'}[action]);
			if (action === 'delete') {
				busyAction = false;
				closeDetail('Batch \u201c' + name + '\u201d deleted.');
			}
		} catch (e) {
			if (e instanceof AuthError) {
				busyAction = false;
				showSignin('Signed out: the server refused this tab\u2019s token (' + e.message +
					'). Sign in again with a valid token.');
				return;
			}
			setText(msg, 'Could not ' + action + ': ' + e.message + '.');
			setClass(msg, 'action-msg notice');
		} finally {
			busyAction = false;
		}
		startPolling();
	}

	/* ------------------------------------------------------------ start */

	function init() {
		$('signin-form').addEventListener('submit', onSignin);
		$('signout').addEventListener('click', onSignout);
		for (const action of ['cancel', 'retry', 'delete'])
			$('act-' + action).addEventListener('click', onAction);
		$('detail-close').addEventListener('click', (ev) => {
			ev.preventDefault();
			closeDetail('');
			render();
		});
		window.addEventListener('hashchange', onHashChange);
		document.addEventListener('visibilitychange', () => {
			if (!document.hidden && token)
				startPolling();
		});
		let saved = null;
		try {
			saved = sessionStorage.getItem(TOKEN_KEY);
		} catch (e) { /* storage disabled */ }
		if (saved) {
			token = saved;
			showDashboard();
		} else {
			showSignin('');
		}
	}

	if (document.readyState === 'loading')
		document.addEventListener('DOMContentLoaded', init);
	else
		init();
})();
