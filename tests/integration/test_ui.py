"""The web dashboard (GET /, src/ui.c, ui/).

Plain HTTP: the page, its script, stylesheet and icon are served from the
binary with the right content types and the three security headers
(Content-Security-Policy self only, nosniff, no-referrer) on every answer,
revalidate with ETags, embed no token and no tenant data, and use no inline
script or style and no innerHTML.

In a browser: tests/browser/ui.e2e.mjs drives Debian's headless Chromium
with playwright-core against a real batchd: a bad token gets a clear
sign-in message, signing in shows live batches whose progress bar moves,
a provider's breaker opens when its mock fails, a dead worker is marked,
an item error holding HTML shows as text, the batch buttons follow the
API's rules, a batch is cancelled and then deleted and a failed item retried
from the page, the layout fits a phone, a revoked token returns to the
sign-in form, and nothing is logged to the console. A screenshot is saved under the test's
tmp dir and copied to $UI_SCREENSHOT (default: build/ui-screenshot.png).

The browser test skips, saying why, only where Chromium (or Node.js) is not
installed; it runs `npm ci` in tests/browser when node_modules is missing.
UI_CHROMIUM names another Chromium binary (default /usr/bin/chromium).
"""

import http.client
import os
import re
import select
import shutil
import subprocess
import time

import pytest

from conftest import REPO, submit, wait_batch_done, wait_until

BROWSER_DIR = os.path.join(REPO, "tests", "browser")
CHROMIUM = os.environ.get("UI_CHROMIUM", "/usr/bin/chromium")
TENANT = "tenant-ui-7f3a"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
ASSETS = {
    "/": "text/html",
    "/app.js": "text/javascript",
    "/app.css": "text/css",
    "/favicon.svg": "image/svg+xml",
}
XSS_ID = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
XSS_NAME = "lookup <b>bold</b> &amp; co"


def create_token(conn, tenant):
    return conn.execute("SELECT batchd.create_token(%s) AS t", (tenant,)).fetchone()["t"]


def request(port, method, path, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def assert_security_headers(headers, what):
    csp = headers.get("content-security-policy", "")
    directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";") if d.strip()}
    assert directives.get("default-src") == "default-src 'self'", f"{what}: CSP {csp!r}"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, f"{what}: CSP {csp!r}"
    assert "frame-ancestors 'none'" in csp, f"{what}: CSP {csp!r}"
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, f"{what}: {name} is {headers.get(name)!r}"


# ------------------------------------------------------------------ plain HTTP

@pytest.fixture
def ui_batchd(db, conn, mock, batchd_factory):
    d = batchd_factory(db=db, providers={"p": {"url": mock.url()}}, routes={"r": "p"},
                       shutdown_timeout="1s")
    return d


def test_assets_served_with_security_headers(ui_batchd, conn):
    token = create_token(conn, TENANT)
    bid = submit(conn, TENANT, "r", [{"id": 1}], {"name": "secret-batch-name-91"})
    wait_batch_done(conn, bid)
    port = ui_batchd.port
    bodies = {}
    for path, ctype in ASSETS.items():
        for headers in ({}, {"Authorization": f"Bearer {token}"}):
            status, h, body = request(port, "GET", path, headers)
            assert status == 200, (path, status, body[:200])
            assert h.get("content-type", "").split(";")[0].strip() == ctype, (path, h)
            assert_security_headers(h, path)
            assert h.get("etag"), (path, h)
            assert int(h.get("content-length", -1)) == len(body) > 0, (path, h)
            bodies[path] = body
    html = bodies["/"].decode()
    # the same page for everybody: no token, tenant or batch in it
    for secret in (token, TENANT, bid, "secret-batch-name-91"):
        for path, body in bodies.items():
            assert secret.encode() not in body, f"{path} contains {secret!r}"
    # CSP-clean markup: scripts and styles only from files, no handlers
    for tag in re.findall(r"<script\b[^>]*>", html, re.I):
        assert re.search(r'\bsrc="/app\.js"', tag), f"inline script: {tag}"
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", html, re.I), "inline style or handler"
    assert '<html lang="en">' in html and 'name="viewport"' in html
    for landmark in ("<main", "<header", "<h1", "<label for=\"token\""):
        assert landmark in html, f"no {landmark} in the page"
    # the token field is never submitted as a form field (no name), and the
    # form cannot navigate (method=dialog, CSP form-action 'none')
    field = re.search(r'<input id="token"[^>]*>', html).group(0)
    assert " name=" not in field and 'type="password"' in field, field
    # values reach the page as text, never as markup
    js = re.sub(r"/\*.*?\*/", "", bodies["/app.js"].decode(), flags=re.S)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in js, f"app.js uses {sink}"
    assert "textContent" in js and "sessionStorage" in js and "localStorage" not in js


def test_assets_revalidate_and_refuse_other_methods(ui_batchd):
    port = ui_batchd.port
    for path in ASSETS:
        status, h, body = request(port, "GET", path)
        etag = h["etag"]
        status, h2, body2 = request(port, "GET", path, {"If-None-Match": etag})
        assert status == 304 and body2 == b"", (path, status, body2[:100])
        assert h2.get("etag") == etag
        assert_security_headers(h2, f"{path} (304)")
        status, h3, _ = request(port, "GET", path, {"If-None-Match": '"0-0", ' + etag})
        assert status == 304, (path, status)
        status, _, body3 = request(port, "GET", path, {"If-None-Match": '"stale"'})
        assert status == 200 and body3 == body, path
        assert "no-cache" in h.get("cache-control", ""), (path, h)

        status, h4, body4 = request(port, "HEAD", path)
        assert status == 200 and body4 == b"", (path, status)
        assert_security_headers(h4, f"HEAD {path}")

        for method in ("POST", "PUT", "DELETE"):
            status, h5, body5 = request(port, method, path)
            assert status == 405, (method, path, status, body5[:200])
            assert "GET" in h5.get("allow", ""), (method, path, h5)
            assert_security_headers(h5, f"{method} {path}")

    # a query string changes nothing (and is never where a token goes)
    status, h, body = request(port, "GET", "/?token=x")
    assert status == 200 and h["content-type"].startswith("text/html")

    # unknown paths are not the page
    for path in ("/index.htm", "/app.js.map", "/ui/nope", "/app.js/x", "/../etc/passwd"):
        status, h, body = request(port, "GET", path)
        assert status in (400, 404), (path, status, body[:200])
        assert b"<html" not in body.lower(), path


def test_api_rules_unchanged_by_the_ui(ui_batchd, conn):
    """The page's data comes only through the token-checked API."""
    port = ui_batchd.port
    for path in ("/v1/batches", "/v1/status"):
        status, _, _ = request(port, "GET", path)
        assert status == 401, path
        status, _, _ = request(port, "GET", path, {"Authorization": "Bearer bd_" + "0" * 64})
        assert status == 401, path


# ------------------------------------------------------------------ in the browser

SHOT_SUFFIXES = (".png", "-phone.png", "-signin.png", "-failure.png")


def screenshot_dest():
    return os.environ.get("UI_SCREENSHOT") or os.path.join(REPO, "build", "ui-screenshot.png")


def browser_prereqs():
    """(node, None) or (None, why the browser test cannot run)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return None, (f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; "
                      "contrib/check installs it)")
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        return None, "Node.js is not installed (needed to run playwright-core)"
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return None, f"cannot tell the version of {node}"
    if major < 20:
        return None, f"Node.js {version} is too old for playwright-core (20 or later)"
    return node, None


def ensure_node_modules():
    marker = os.path.join(BROWSER_DIR, "node_modules", "playwright-core", "package.json")
    if os.path.exists(marker):
        return
    npm = shutil.which("npm")
    if not npm:
        pytest.fail("npm is not installed: cannot install playwright-core in tests/browser")
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        r = subprocess.run(cmd, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("npm ci in tests/browser took over 300 s")
    if r.returncode != 0 or not os.path.exists(marker):
        pytest.fail(f"npm ci in tests/browser failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                    f"{r.stderr[-2000:]}")


def run_browser(node, env, on_ask, timeout):
    """Run ui.e2e.mjs; answer its "@@ask" lines with on_ask(what) -> str.
    Returns (rc, steps, stderr)."""
    proc = subprocess.Popen([node, os.path.join(BROWSER_DIR, "ui.e2e.mjs")], cwd=BROWSER_DIR,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    steps, out, err = [], b"", b""
    deadline = time.monotonic() + timeout
    open_pipes = [proc.stdout, proc.stderr]
    try:
        while open_pipes:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait(timeout=10)
                raise AssertionError(f"the browser test ran over {timeout} s; steps {steps}\n"
                                     f"{err.decode(errors='replace')[-3000:]}")
            ready, _, _ = select.select(open_pipes, [], [], min(left, 0.5))
            for f in ready:
                chunk = os.read(f.fileno(), 65536)
                if not chunk:
                    open_pipes.remove(f)
                    continue
                if f is proc.stderr:
                    err += chunk
                    continue
                out += chunk
                while b"\n" in out:
                    line, out = out.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    if text.startswith("@@step "):
                        steps.append(text[7:])
                    elif text.startswith("@@ask "):
                        answer = on_ask(text[6:])
                        proc.stdin.write((answer + "\n").encode())
                        proc.stdin.flush()
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("@@step "):
                steps.append(line[7:])
        proc.stdin.close()
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return proc.returncode, steps, err.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_dashboard_in_chromium(db, conn, mock_factory, batchd_factory, tmp_path, pg):
    node, why = browser_prereqs()
    if why:
        pytest.skip(why)
    ensure_node_modules()

    steady = mock_factory({"latency_ms": 20})
    flaky = mock_factory({"latency_ms": 20})
    steady.configure(ids={XSS_ID: {"status": 404, "mode": "text"}})
    d = batchd_factory(
        db=db,
        providers={
            "steady": {"url": steady.url(), "rate": "10/s", "max_concurrency": 4},
            "lookup": {"url": steady.url("/lookup/{id}")},
            "flaky": {"url": flaky.url(), "rate": "4/s", "max_concurrency": 3, "retries": 0,
                      "breaker_failures": 3, "breaker_cooldown": "5m"},
        },
        # a few items of each batch held at a time (one group per batch): both
        # batches flow, and a cancel leaves only those few running
        routes={"steady": {"providers": "steady", "group_concurrency": 6}, "lookup": "lookup",
                "flaky": {"providers": "flaky", "group_concurrency": 4}},
        heartbeat_interval="500ms", lease_timeout="2s", shutdown_timeout="1s")

    token = create_token(conn, TENANT)
    # another tenant's batch: never on this tenant's page
    submit(conn, "someone-else", "lookup", [{"id": "x"}], {"name": "not-yours-5521"})

    # a finished batch whose failed item's error holds markup
    xss = submit(conn, TENANT, "lookup", [{"id": XSS_ID}, {"id": "fine-1"}, {"id": "fine-2"}],
                 {"name": XSS_NAME})
    wait_batch_done(conn, xss)
    err = conn.execute("SELECT error FROM batchd.items WHERE batch_id = %s AND status = 'failed'",
                       (xss,)).fetchone()["error"]
    assert XSS_ID in err, err
    time.sleep(0.05)
    flaky_batch = submit(conn, TENANT, "flaky", [{"id": f"f{i}", "g": 1} for i in range(150)],
                         {"name": "nightly registry check", "group_key": "g"})
    time.sleep(0.05)
    running = submit(conn, TENANT, "steady", [{"id": i, "g": 1} for i in range(1000)],
                     {"name": "activity sync", "group_key": "g"})
    wait_until(lambda: conn.execute("SELECT succeeded FROM batchd.batches WHERE id = %s",
                                    (running,)).fetchone()["succeeded"] > 0,
               timeout=15, desc="the running batch to start")

    # a dead worker that nobody can reap while we hold its row: marked dead
    dead_host = "gone-host-42"
    conn.execute("INSERT INTO batchd.workers (id, hostname, pid, version, started_at, "
                 "heartbeat_at) VALUES (gen_random_uuid(), %s, 4242, 'old', "
                 "now() - interval '1 hour', now() - interval '10 minutes')", (dead_host,))
    holder = db.connect()
    holder.autocommit = False
    holder.execute("SELECT 1 FROM batchd.workers WHERE hostname = %s FOR UPDATE", (dead_host,))

    # artifacts of an earlier run must not pass for this one's
    stem = screenshot_dest()[:-4] if screenshot_dest().endswith(".png") else screenshot_dest()
    for suffix in SHOT_SUFFIXES:
        if os.path.exists(stem + suffix):
            os.unlink(stem + suffix)
    shot = os.path.join(str(tmp_path), "ui-screenshot.png")
    shot_phone = os.path.join(str(tmp_path), "ui-screenshot-phone.png")
    env = dict(os.environ)
    env.update({
        "BASE_URL": d.base,
        "TOKEN": token,
        "BAD_TOKEN": "bd_" + "f" * 64,
        "RUNNING_ID": running,
        "FLAKY_ID": flaky_batch,
        "FLAKY_MOCK": flaky.base,
        "XSS_ID": xss,
        "XSS_TEXT": XSS_ID,
        "XSS_NAME": XSS_NAME,
        "FOREIGN_NAME": "not-yours-5521",
        "DEAD_HOST": dead_host,
        "SCREENSHOT": shot,
        "SCREENSHOT_PHONE": shot_phone,
        "CHROMIUM": CHROMIUM,
        "UI_TEST_TIMEOUT_MS": "150000",
    })

    def on_ask(what):
        if what == "revoke":
            ok = conn.execute("SELECT batchd.revoke_token(%s) AS ok", (token,)).fetchone()["ok"]
            return "ok" if ok else "not revoked"
        return "unknown question"

    try:
        rc, steps, stderr = run_browser(node, env, on_ask, timeout=180)
    finally:
        holder.rollback()
        holder.close()
        # the artifacts: build/ui-screenshot.png (or $UI_SCREENSHOT), and
        # -phone / -failure beside it
        dest = screenshot_dest()
        stem = dest[:-4] if dest.endswith(".png") else dest
        for suffix in SHOT_SUFFIXES:
            path = shot[:-4] + suffix
            if os.path.exists(path):
                os.makedirs(os.path.dirname(os.path.abspath(stem + suffix)), exist_ok=True)
                shutil.copyfile(path, stem + suffix)
    assert rc == 0, f"browser test failed (exit {rc}) after steps {steps}:\n{stderr[-6000:]}"
    assert steps[-1:] == ["done"], steps
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"

    # what the page did, as the database saw it
    # cancelled, then deleted
    assert conn.execute("SELECT count(*) AS n FROM batchd.batches WHERE id = %s",
                        (running,)).fetchone()["n"] == 0
    # retried: the item ran (and failed) again
    wait_batch_done(conn, xss)
    events = [r["event"] for r in conn.execute(
        "SELECT event FROM batchd.batch_events WHERE batch_id = %s ORDER BY id", (xss,))]
    assert "retried" in events, events
    assert steady.ids().get(XSS_ID) == 2, steady.ids()
