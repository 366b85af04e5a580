"""Progress that does not lie when a batch stops moving (issue #21.4):
GET /v1/batches/ID/progress's state (running, waiting behind a higher
priority, stalled, cancelled with items still running), its rate over a
short window and an ETA only when it means something, and how `batchctl
watch` renders them.  Real scenarios: a slow mock, two batches of one route
with different priorities, an open breaker, a cancel while items run."""

import http.client
import json
import subprocess
import time

from conftest import assert_no_sanitizer_report, batchctl_bin, batchctl_env, wait_until

ROUTE = "verify"
TENANT = "acme"


class Client:
    def __init__(self, port, token):
        self.port = port
        self.token = token

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            hdrs = {"Authorization": f"Bearer {self.token}"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            c.request(method, path, body=data, headers=hdrs)
            r = c.getresponse()
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
        finally:
            c.close()

    def ok(self, method, path, body=None, want=(200, 201)):
        st, j = self.call(method, path, body)
        assert st in want, (method, path, st, j)
        return j

    def submit(self, n, priority=5, **fields):
        body = {"route": ROUTE, "items": [{"id": i} for i in range(n)], "priority": priority}
        body.update(fields)
        return self.ok("POST", "/v1/batches", body)["id"]

    def progress(self, bid):
        return self.ok("GET", f"/v1/batches/{bid}/progress")


def start_watch(d, token, bid):
    """batchctl watch in the background, plain lines (stdout is a pipe)."""
    return subprocess.Popen([batchctl_bin(), "watch", "--interval", "200ms", bid],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=batchctl_env(d.base, token),
                            stdin=subprocess.DEVNULL)


def finish_watch(w, timeout=60):
    try:
        out, err = w.communicate(timeout=timeout)
    finally:
        if w.poll() is None:
            w.kill()
            w.communicate()
    assert_no_sanitizer_report(out + err, "batchctl")
    return out, err


def start_api(db, conn, batchd_factory, providers, **keys):
    d = batchd_factory(db=db, providers=providers, routes={ROUTE: "p"}, shutdown_timeout="1s",
                       **keys)
    token = conn.execute("SELECT batchd.create_token(%s) AS t", (TENANT,)).fetchone()["t"]
    return d, Client(d.port, token), token


def test_waiting_behind_a_higher_priority_batch(db, conn, mock, batchd_factory):
    d, c, token = start_api(db, conn, batchd_factory,
                        {"p": {"url": mock.url("/item/{id}?latency_ms=400"), "timeout": "10s"}},
                        max_inflight=2)
    low = c.submit(8, priority=2, name="low")
    wait_until(lambda: c.progress(low)["running"] > 0, timeout=10, desc="the low batch to run")
    assert c.progress(low)["state"] == "running"
    high = c.submit(30, priority=8, name="high")
    w = start_watch(d, token, low)

    p = wait_until(lambda: (lambda p: p if p["state"] == "waiting" else None)(c.progress(low)),
                   timeout=10, desc="the low batch to wait")
    assert (p["status"], p["waiting_behind_priority"], p["running"], p["eta_s"]) == \
        ("processing", 8, 0, None), p
    assert p["done"] < 8 and p["queued"] == 8 - p["done"], p
    # it does not move while it waits, and says so every time
    time.sleep(1.0)
    q = c.progress(low)
    assert (q["state"], q["done"], q["eta_s"]) == ("waiting", p["done"], None), q

    # the batch ahead runs, and gets an ETA once a few items finished
    h = wait_until(lambda: (lambda h: h if h["eta_s"] is not None else None)(c.progress(high)),
                   timeout=10, desc="an ETA for the high batch")
    assert h["state"] == "running" and h["rate_per_s"] > 0 and h["waiting_behind_priority"] is None

    out, err = finish_watch(w)
    assert w.returncode == 0, (out, err)
    lines = out.strip().splitlines()
    waiting = [ln for ln in lines if ln.startswith("waiting (behind priority 8): ")]
    assert waiting, lines
    assert all("ETA -" in ln for ln in waiting), waiting
    assert lines[-1].startswith(f"batch {low} completed:"), lines
    assert c.progress(low)["state"] == "completed"


def test_stalled_when_the_breaker_is_open(db, conn, mock, batchd_factory):
    mock.configure(down=True, error_status=500)
    d, c, token = start_api(db, conn, batchd_factory,
                        {"p": {"url": mock.url("/item/{id}"), "timeout": "5s", "retries": 3,
                               "backoff": "20ms", "max_concurrency": 1, "breaker_failures": 2,
                               "breaker_cooldown": "600s"}},
                        poll_interval="200ms")
    bid = c.submit(5, max_attempts=3)

    def deferred():
        rows = conn.execute("SELECT status, error FROM batchd.items WHERE batch_id = %s",
                            (bid,)).fetchall()
        return all(r["status"] == "queued" and r["error"] for r in rows)
    wait_until(deferred, timeout=10, desc="every item back in the queue (breaker open)")
    p = c.progress(bid)
    assert (p["status"], p["state"], p["running"], p["done"], p["rate_per_s"], p["eta_s"]) == \
        ("processing", "stalled", 0, 0, 0.0, None), p
    assert p["waiting_behind_priority"] is None

    w = start_watch(d, token, bid)
    try:
        time.sleep(1.5)
    finally:
        w.terminate()  # watch follows a stalled batch for ever: stop ours
    out, err = finish_watch(w, timeout=10)
    lines = out.strip().splitlines()
    assert lines and lines[0].startswith("stalled: 0/5 "), (lines, err)
    assert "ETA -" in lines[0], lines


def test_cancelled_with_items_still_running(db, conn, mock, batchd_factory):
    d, c, token = start_api(db, conn, batchd_factory,
                        {"p": {"url": mock.url("/item/{id}?latency_ms=2500"), "timeout": "10s"}},
                        max_inflight=3)
    bid = c.submit(10)
    wait_until(lambda: c.progress(bid)["running"] == 3, timeout=10, desc="three items running")
    assert c.ok("POST", f"/v1/batches/{bid}/cancel")["status"] == "cancelled"
    p = c.progress(bid)
    assert (p["status"], p["state"], p["running"], p["queued"], p["cancelled"], p["eta_s"]) == \
        ("cancelled", "cancelled", 3, 0, 7, None), p

    w = start_watch(d, token, bid)
    out, err = finish_watch(w)
    assert w.returncode == 1, (out, err)
    lines = out.strip().splitlines()
    assert lines[0].startswith("cancelled, 3 still running: "), lines
    # followed until they ended, then the final line
    assert lines[-1] == f"batch {bid} cancelled: 3 succeeded, 0 failed, 7 cancelled of 10", lines
    p = c.progress(bid)
    assert (p["state"], p["running"], p["done"]) == ("cancelled", 0, 10), p

