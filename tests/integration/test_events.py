"""REST listing and progress as clients expect (issue #20.4): a batch's
events (GET /v1/batches/ID/events, paged and tenant-scoped) after cancel and
retry, the batch-level retry count and its cap max_batch_retries (409
retry_limit_reached, over REST and batchctl), total on the batch and item
lists with the cursor kept, fraction beside percent, and the operators'
views batchd.batch_status and batchd.tenant_stats."""

import base64
import http.client
import json

from conftest import run_ctl, wait_until

ROUTE = "verify"
TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")


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

    def ok(self, method, path, body=None):
        st, j = self.call(method, path, body)
        assert st in (200, 201), (method, path, st, j)
        return j

    def submit(self, ids, **fields):
        body = {"route": ROUTE, "items": [{"id": i} for i in ids]}
        body.update(fields)
        return self.ok("POST", "/v1/batches", body)["id"]

    def wait_done(self, bid, timeout=30):
        def done():
            b = self.ok("GET", f"/v1/batches/{bid}")
            return b if b["status"] in TERMINAL and b["running"] == 0 else None
        return wait_until(done, timeout=timeout, desc=f"batch {bid} to end")


def token(conn, tenant):
    return conn.execute("SELECT batchd.create_token(%s) AS t", (tenant,)).fetchone()["t"]


def start(db, conn, mock, batchd_factory, latency_ms=0, **keys):
    url = mock.url("/item/{id}" + (f"?latency_ms={latency_ms}" if latency_ms else ""))
    d = batchd_factory(db=db, providers={"p": {"url": url, "timeout": "10s"}},
                       routes={ROUTE: "p"}, shutdown_timeout="1s", **keys)
    return d, Client(d.port, token(conn, TENANT_A)), Client(d.port, token(conn, TENANT_B))


def walk(client, path, key, limit):
    seen, cursor, totals = [], None, set()
    for _ in range(100):
        sep = "&" if "?" in path else "?"
        page = client.ok("GET", f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page[key]) <= limit, page
        seen += page[key]
        totals.add(page["total"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen, totals
    raise AssertionError("too many pages")


def test_events_after_cancel_and_retry(db, conn, mock, batchd_factory):
    d, a, b = start(db, conn, mock, batchd_factory, latency_ms=300, max_inflight=2)
    bid = a.submit(range(12))
    wait_until(lambda: a.ok("GET", f"/v1/batches/{bid}")["running"] == 2, timeout=10,
               desc="two items running")
    assert a.ok("POST", f"/v1/batches/{bid}/cancel")["status"] == "cancelled"
    first = a.wait_done(bid)
    assert first["cancelled"] >= 1 and first["retries"] == 0, first
    r = a.ok("POST", f"/v1/batches/{bid}/retry")
    assert (r["status"], r["retries"]) == ("processing", 1), r
    done = a.wait_done(bid)
    assert (done["status"], done["succeeded"], done["retries"]) == ("completed", 12, 1), done
    p = a.ok("GET", f"/v1/batches/{bid}/progress")
    assert (p["retries"], p["fraction"], p["percent"]) == (1, 1.0, 100.0), p

    page = a.ok("GET", f"/v1/batches/{bid}/events")
    rows = conn.execute("SELECT id, event, detail FROM batchd.batch_events WHERE batch_id = %s "
                        "ORDER BY id", (bid,)).fetchall()
    assert page["total"] == len(rows) and page["next_cursor"] is None
    assert [(e["id"], e["event"], e["detail"]) for e in page["events"]] == \
        [(x["id"], x["event"], x["detail"]) for x in rows]
    assert all(set(e) == {"id", "at", "event", "detail"} and e["at"].endswith("Z")
               for e in page["events"])
    names = [e["event"] for e in page["events"]]
    assert names[0] == "submitted" and names[-1] == "completed", names
    assert names.index("cancelled") < names.index("retried"), names
    cancelled = page["events"][names.index("cancelled")]["detail"]
    assert cancelled["running"] == 2 and cancelled["cancelled"] == first["cancelled"], cancelled
    retried = page["events"][names.index("retried")]["detail"]
    assert (retried["retry"], retried["cancelled"], retried["previous_status"]) == \
        (1, first["cancelled"], "cancelled"), retried

    # one event a page: each once, in order, the total on every page
    seen, totals = walk(a, f"/v1/batches/{bid}/events", "events", 1)
    assert [e["id"] for e in seen] == [x["id"] for x in rows] and totals == {len(rows)}

    # tenant-scoped like the other endpoints; the list's own checks
    assert b.call("GET", f"/v1/batches/{bid}/events")[0] == 404
    assert a.call("GET", "/v1/batches/00000000-0000-0000-0000-000000000000/events")[0] == 404
    st, j = a.call("GET", f"/v1/batches/{bid}/events?status=failed")
    assert st == 400 and "status" in j["error"]["message"], j
    assert a.call("GET", f"/v1/batches/{bid}/events?cursor=xyz")[0] == 400
    assert a.call("GET", f"/v1/batches/{bid}/events?limit=0")[0] == 400
    big = base64.urlsafe_b64encode(b"9223372036854775807").decode().rstrip("=")
    assert a.ok("GET", f"/v1/batches/{bid}/events?cursor={big}")["events"] == []


def test_retry_cap(db, conn, mock, batchd_factory):
    d, a, _ = start(db, conn, mock, batchd_factory, max_batch_retries=2)
    mock.configure(ids={"bad": {"status": 422}})
    bid = a.submit(["ok1", "ok2", "bad"], max_attempts=1)
    assert a.wait_done(bid)["status"] == "completed_with_errors"
    for n in (1, 2):
        r = a.ok("POST", f"/v1/batches/{bid}/retry")
        assert r["retries"] == n, r
        assert a.wait_done(bid)["status"] == "completed_with_errors"
    st, j = a.call("POST", f"/v1/batches/{bid}/retry")
    assert st == 409, (st, j)
    assert j["error"]["code"] == "retry_limit_reached", j
    assert "max_batch_retries (2)" in j["error"]["message"], j
    b = a.ok("GET", f"/v1/batches/{bid}")
    assert (b["status"], b["retries"], b["failed"]) == ("completed_with_errors", 2, 1), b
    ev = [e["event"] for e in a.ok("GET", f"/v1/batches/{bid}/events")["events"]]
    assert ev.count("retried") == 2, ev

    r = run_ctl(["retry", bid], d.base, a.token)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "max_batch_retries (2)" in r.stderr and "HTTP 409" in r.stderr, r.stderr
    assert "hint: batchctl results --status failed" in r.stderr, r.stderr

    # the SQL API without a cap still retries (the cap is the REST API's)
    assert conn.execute("SELECT batchd.retry_batch(%s, %s) AS r",
                        (TENANT_A, bid)).fetchone()["r"] == "ok"
    assert a.wait_done(bid)["retries"] == 3


def test_totals_on_lists_and_operator_views(db, conn, mock, batchd_factory):
    d, a, b = start(db, conn, mock, batchd_factory)
    mock.configure(ids={"bad1": {"status": 422}, "bad2": {"status": 422}})
    ids = [a.submit([i]) for i in range(5)]
    mixed = a.submit(["bad1", 1, 2, "bad2", 3, 4, 5], max_attempts=1)
    other = b.submit([1, 2])
    for x in ids + [mixed, other]:
        (a if x != other else b).wait_done(x)

    seen, totals = walk(a, "/v1/batches", "batches", 2)
    assert sorted(x["id"] for x in seen) == sorted(ids + [mixed]) and totals == {6}
    seen, totals = walk(a, "/v1/batches?status=completed", "batches", 2)
    assert sorted(x["id"] for x in seen) == sorted(ids) and totals == {5}
    page = a.ok("GET", "/v1/batches?status=pending")
    assert page == {"total": 0, "batches": [], "next_cursor": None}, page
    assert b.ok("GET", "/v1/batches")["total"] == 1

    seen, totals = walk(a, f"/v1/batches/{mixed}/items", "items", 3)
    assert [x["seq"] for x in seen] == list(range(7)) and totals == {7}
    for status, n in (("failed", 2), ("succeeded", 5), ("queued", 0), ("running", 0),
                      ("cancelled", 0)):
        page = a.ok("GET", f"/v1/batches/{mixed}/items?status={status}")
        assert page["total"] == n == len(page["items"]), (status, page)

    bs = conn.execute("SELECT * FROM batchd.batch_status WHERE id = %s", (mixed,)).fetchone()
    assert (bs["tenant"], bs["route"], bs["status"], bs["total"], bs["queued"], bs["running"],
            bs["succeeded"], bs["failed"], bs["cancelled"], bs["retries"], float(bs["percent"]),
            bs["last_event"]) == \
        (TENANT_A, ROUTE, "completed_with_errors", 7, 0, 0, 5, 2, 0, 0, 100.0,
         "completed_with_errors")
    assert bs["duration_s"] >= 0 and bs["last_event_at"] is not None
    ts = {r["tenant"]: r for r in conn.execute("SELECT * FROM batchd.tenant_stats")}
    assert set(ts) == {TENANT_A, TENANT_B}
    ta = ts[TENANT_A]
    assert (ta["batches"], ta["active_batches"], ta["items"], ta["unfinished_items"],
            ta["succeeded"], ta["failed"], ta["cancelled"], ta["retries"],
            ta["oldest_active_at"]) == (6, 0, 12, 0, 10, 2, 0, 0, None), ta
    assert (ts[TENANT_B]["batches"], ts[TENANT_B]["items"]) == (1, 2)
