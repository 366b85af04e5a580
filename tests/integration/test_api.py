"""The REST API through real HTTP: every endpoint, tokens and tenant
isolation, idempotent submits, keyset pagination, NDJSON streaming with
bounded memory, the cancel/retry/delete rules, and a table of malformed
requests that must each get the right status and error shape while the
database stays unchanged."""

import base64
import http.client
import json
import socket
import threading
import uuid

import pytest

from conftest import check_consistency, free_port, render_config, submit, wait_until

ROUTE = "verify"
HOLD = "hold"
TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")
BATCH_FIELDS = {"id", "name", "route", "status", "priority", "max_attempts", "total", "queued",
                "running", "succeeded", "failed", "cancelled", "created_at", "started_at",
                "finished_at", "metadata"}
ITEM_FIELDS = {"id", "seq", "status", "attempts", "provider", "http_status", "payload", "result",
               "error", "started_at", "finished_at"}
_DEFAULT = object()


# ------------------------------------------------------------------ HTTP client

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class Client:
    """http.client against one batchd, with a default bearer token."""

    def __init__(self, port, token=None, host="127.0.0.1"):
        self.host = host
        self.port = port
        self.token = token

    def conn(self, timeout=30):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, *, raw=None, headers=None, token=_DEFAULT,
                ctype="application/json", timeout=30):
        hdrs = {}
        tok = self.token if token is _DEFAULT else token
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        data = None
        if raw is not None:
            data = raw
        elif body is not None:
            data = json.dumps(body).encode()
        if data is not None and ctype is not None:
            hdrs["Content-Type"] = ctype
        hdrs.update(headers or {})
        c = self.conn(timeout)
        try:
            c.request(method, path, body=data, headers=hdrs)
            r = c.getresponse()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            c.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def submit(self, items, route=ROUTE, expect=201, idem=None, **fields):
        body = {"route": route, "items": items}
        body.update(fields)
        r = self.post("/v1/batches", body,
                      headers={"Idempotency-Key": idem} if idem is not None else None)
        assert r.status == expect, r
        return r.json()


def assert_error(r, status, code=None):
    assert r.status == status, r
    j = r.json()
    assert set(j) == {"error"}, j
    assert set(j["error"]) == {"code", "message"}, j
    assert isinstance(j["error"]["message"], str) and j["error"]["message"], j
    want = code or {400: "bad_request", 401: "unauthorized", 404: "not_found",
                    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                    415: "unsupported_media_type", 503: "unavailable"}[status]
    assert j["error"]["code"] == want, j
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    return j


def create_token(conn, tenant):
    return conn.execute("SELECT batchd.create_token(%s) AS t", (tenant,)).fetchone()["t"]


def counts(conn):
    return conn.execute(
        """SELECT (SELECT count(*) FROM batchd.batches) AS batches,
                  (SELECT count(*) FROM batchd.items) AS items,
                  (SELECT count(*) FROM batchd.batch_events) AS events,
                  (SELECT count(*) FROM batchd.api_tokens) AS tokens""").fetchone()


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def b64(s):
    return base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")


# ------------------------------------------------------------------ set-ups

class Api:
    def __init__(self, d, conn, mock):
        self.d = d
        self.conn = conn
        self.mock = mock
        self.tok_a = create_token(conn, TENANT_A)
        self.tok_b = create_token(conn, TENANT_B)
        self.a = Client(d.port, self.tok_a)
        self.b = Client(d.port, self.tok_b)
        self.anon = Client(d.port, None)


def providers_for(mock):
    return {
        "mock": {"url": mock.url("/item/{id}"), "timeout": "5s", "connect_timeout": "2s"},
        # never answers: holds a slot for as long as a test runs
        "holdp": {"url": mock.url("/item/{id}?mode=hang"), "timeout": "60s",
                  "connect_timeout": "2s"},
    }


@pytest.fixture
def api(db, conn, mock, batchd_factory):
    """batchd draining route 'verify' through the mock at once."""
    d = batchd_factory(db=db, providers=providers_for(mock), routes={ROUTE: "mock", HOLD: "holdp"},
                       max_inflight=50, shutdown_timeout="1s")
    return Api(d, conn, mock)


def start_blocked(db, conn, mock, batchd_factory, **keys):
    """batchd with max_inflight 1, its one slot held by a hanging item: every
    batch submitted afterwards stays pending (all items queued)."""
    blocker = submit(conn, "blocker", HOLD, [{"id": "block"}], {"priority": 10})
    d = batchd_factory(db=db, providers=providers_for(mock), routes={ROUTE: "mock", HOLD: "holdp"},
                       max_inflight=1, shutdown_timeout="1s", **keys)
    wait_until(lambda: conn.execute("SELECT status FROM batchd.items WHERE batch_id = %s",
                                    (blocker,)).fetchone()["status"] == "running",
               timeout=10, desc="the blocker item to run")
    return Api(d, conn, mock)


@pytest.fixture
def blocked(db, conn, mock, batchd_factory):
    return start_blocked(db, conn, mock, batchd_factory)


def wait_api_done(client, bid, timeout=30):
    def done():
        r = client.get(f"/v1/batches/{bid}")
        return r.json() if r.status == 200 and r.json()["status"] in TERMINAL else None
    return wait_until(done, timeout=timeout, desc=f"batch {bid} to finish (API)")


# ------------------------------------------------------------------ health, listen, status

def test_health_needs_no_token_and_v1_does(api):
    assert api.anon.get("/healthz").status == 200
    assert api.anon.get("/readyz").status == 200
    r = api.anon.get("/v1/batches")
    assert_error(r, 401)
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    assert_error(api.anon.get("/v1/status"), 401)
    assert_error(api.anon.get("/nope"), 404)


def test_listen_ipv6(db, conn, mock, batchd_factory):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    cfg = render_config(db.conninfo, {"listen": f"[::1]:{port}", "log_level": "info",
                                      "shutdown_timeout": "1s"},
                        providers_for(mock), {ROUTE: "mock"})
    d = batchd_factory(cfg, wait=False)
    tok = create_token(conn, TENANT_A)
    c = Client(port, tok, host="::1")

    def up():
        try:
            return c.get("/healthz", token=None).status == 200
        except OSError:
            assert d.running(), d.log()
            return False
    wait_until(up, timeout=15, desc="batchd on [::1]")
    b = c.submit([{"id": 1}])
    assert c.get(f"/v1/batches/{b['id']}").json()["id"] == b["id"]


def test_status(api):
    r = api.a.get("/v1/status")
    assert r.status == 200, r
    s = r.json()
    w = s["worker"]
    assert w["pid"] == api.d.pid and w["ready"] is True and w["uptime_s"] >= 0
    uuid.UUID(w["id"])
    assert s["database"]["up"] is True and s["database"]["error"] is None
    assert {"inflight", "claimed", "succeeded", "failed", "fenced", "rate_per_s"} <= set(s["engine"])
    me = [f for f in s["fleet"] if f["id"] == w["id"]]
    assert len(me) == 1 and me[0]["alive"] is True and me[0]["self"] is True
    assert me[0]["pid"] == api.d.pid and me[0]["heartbeat_age_s"] >= 0
    names = {p["name"]: p for p in s["providers"]}
    assert set(names) == {"mock", "holdp"}
    assert "state" in names["mock"]["breaker"]
    assert {"name": ROUTE, "providers": ["mock"], "batch_concurrency": 0,
            "active_batches": None} in s["routes"]
    assert api.a.request("HEAD", "/v1/status").status == 200


# ------------------------------------------------------------------ the happy path

def test_submit_and_read_every_endpoint(api):
    items = [{"id": i, "acct": f"a{i % 3}"} for i in range(1, 21)]
    r = api.a.post("/v1/batches", {"route": ROUTE, "items": items, "name": "nightly",
                                   "priority": 7, "max_attempts": 2, "group_key": "acct",
                                   "metadata": {"team": "ops", "n": [1, 2]}})
    assert r.status == 201, r
    b = r.json()
    assert set(b) >= BATCH_FIELDS
    assert r.headers["location"] == f"/v1/batches/{b['id']}"
    assert (b["name"], b["route"], b["priority"], b["max_attempts"], b["total"]) == \
        ("nightly", ROUTE, 7, 2, 20)
    assert b["metadata"] == {"team": "ops", "n": [1, 2]}
    assert b["status"] in ("pending", "processing")
    assert b["queued"] + b["running"] + b["succeeded"] + b["failed"] + b["cancelled"] == 20

    done = wait_api_done(api.a, b["id"])
    assert done["status"] == "completed"
    assert (done["succeeded"], done["queued"], done["running"]) == (20, 0, 0)
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["created_at"].endswith("Z")

    p = api.a.get(f"/v1/batches/{b['id']}/progress")
    assert p.status == 200, p
    p = p.json()
    assert set(p) == {"batch_id", "status", "state", "waiting_behind_priority",
                      "waiting_for_batch_slot", "total", "done",
                      "queued", "running", "percent", "fraction", "succeeded", "failed",
                      "cancelled", "retries", "rate_per_s", "rate_window_s", "eta_s"}
    assert (p["batch_id"], p["status"], p["state"], p["total"], p["done"], p["percent"],
            p["fraction"], p["queued"], p["running"], p["retries"]) == \
        (b["id"], "completed", "completed", 20, 20, 100.0, 1.0, 0, 0, 0)
    assert p["rate_per_s"] > 0 and p["eta_s"] is None

    it = api.a.get(f"/v1/batches/{b['id']}/items?limit=5")
    assert it.status == 200, it
    it = it.json()
    assert len(it["items"]) == 5 and it["next_cursor"]
    first = it["items"][0]
    assert set(first) == ITEM_FIELDS
    assert (first["seq"], first["status"], first["attempts"], first["provider"],
            first["http_status"]) == (0, "succeeded", 1, "mock", 200)
    assert first["payload"] == items[0] and first["result"]["id"] == "1"

    res = api.a.get(f"/v1/batches/{b['id']}/results")
    assert res.status == 200, res
    assert res.headers["content-type"] == "application/x-ndjson"
    assert res.headers.get("transfer-encoding") == "chunked"
    lines = [json.loads(x) for x in res.body.decode().splitlines()]
    assert [x["seq"] for x in lines] == list(range(20))
    assert all(x["status"] == "succeeded" for x in lines)
    assert api.a.request("HEAD", f"/v1/batches/{b['id']}/results").status == 200

    lst = api.a.get("/v1/batches").json()
    assert [x["id"] for x in lst["batches"]] == [b["id"]] and lst["next_cursor"] is None
    assert api.a.get("/v1/batches?status=completed").json()["batches"][0]["id"] == b["id"]
    assert api.a.get("/v1/batches?status=pending").json()["batches"] == []
    assert check_consistency(api.conn) == []


def test_progress_while_running(blocked):
    b = blocked.a.submit([{"id": i} for i in range(10)])
    p = blocked.a.get(f"/v1/batches/{b['id']}/progress").json()
    assert (p["status"], p["state"], p["done"], p["percent"], p["rate_per_s"], p["eta_s"]) == \
        ("pending", "pending", 0, 0.0, 0.0, None)
    # 4 items finished 5 s ago, batch started a minute ago: rate over the
    # last 15 s = 4/15
    blocked.conn.execute(
        """UPDATE batchd.batches SET status = 'processing', succeeded = 4,
                  started_at = now() - interval '60 seconds' WHERE id = %s""", (b["id"],))
    blocked.conn.execute(
        """UPDATE batchd.items SET status = 'succeeded',
                  finished_at = now() - interval '5 seconds'
            WHERE batch_id = %s AND seq < 4""", (b["id"],))
    p = blocked.a.get(f"/v1/batches/{b['id']}/progress").json()
    assert (p["state"], p["done"], p["percent"], p["fraction"], p["rate_window_s"]) == \
        ("running", 4, 40.0, 0.4, 15.0)
    assert abs(p["rate_per_s"] - 4 / 15) < 0.01, p
    assert abs(p["eta_s"] - 6 / (4 / 15)) < 1, p
    # the same 4 finished half a minute ago: nothing moved in the window
    blocked.conn.execute(
        """UPDATE batchd.items SET finished_at = now() - interval '30 seconds'
            WHERE batch_id = %s AND seq < 4""", (b["id"],))
    p = blocked.a.get(f"/v1/batches/{b['id']}/progress").json()
    assert (p["state"], p["rate_per_s"], p["eta_s"]) == ("stalled", 0.0, None), p


# ------------------------------------------------------------------ tenants and tokens

def test_tenant_isolation(blocked):
    a, b = blocked.a, blocked.b
    ba = a.submit([{"id": i} for i in range(3)], name="a's")
    bb = b.submit([{"id": 9}], name="b's")
    bid = ba["id"]
    for method, path in [("GET", f"/v1/batches/{bid}"), ("GET", f"/v1/batches/{bid}/progress"),
                         ("GET", f"/v1/batches/{bid}/items"),
                         ("GET", f"/v1/batches/{bid}/results"),
                         ("POST", f"/v1/batches/{bid}/cancel"),
                         ("POST", f"/v1/batches/{bid}/retry"), ("DELETE", f"/v1/batches/{bid}")]:
        rb = b.request(method, path)
        missing = b.request(method, path.replace(bid, str(uuid.uuid4())))
        assert_error(rb, 404)
        assert_error(missing, 404)
        assert rb.json() == missing.json(), (method, path)
    assert [x["id"] for x in b.get("/v1/batches").json()["batches"]] == [bb["id"]]
    assert [x["id"] for x in a.get("/v1/batches").json()["batches"]] == [bid]
    # B's attempts changed nothing
    assert a.get(f"/v1/batches/{bid}").json()["status"] == "pending"


def test_revoked_token_is_refused_at_once(api):
    assert api.a.get("/v1/batches").status == 200
    row = api.conn.execute("SELECT batchd.revoke_token(%s) AS ok", (api.tok_a,)).fetchone()
    assert row["ok"] is True
    assert_error(api.a.get("/v1/batches"), 401)
    assert api.b.get("/v1/batches").status == 200
    assert api.conn.execute("SELECT batchd.revoke_token(%s) AS ok",
                            (api.tok_a,)).fetchone()["ok"] is False
    hashes = api.conn.execute("SELECT token_hash, tenant, last_used_at, revoked FROM "
                              "batchd.api_tokens ORDER BY id").fetchall()
    assert [(h["tenant"], h["revoked"]) for h in hashes] == [(TENANT_A, True), (TENANT_B, False)]
    assert all(len(bytes(h["token_hash"])) == 32 for h in hashes)
    assert hashes[1]["last_used_at"] is not None
    # the token itself is stored nowhere
    dump = api.conn.execute("SELECT string_agg(t::text, ' ') AS s FROM batchd.api_tokens t"
                            ).fetchone()["s"]
    assert api.tok_b not in dump and api.tok_b[3:] not in dump


# ------------------------------------------------------------------ idempotency

def test_idempotent_submit(blocked):
    a, b, conn = blocked.a, blocked.b, blocked.conn
    first = a.submit([{"id": 1}], idem="key-1")
    again = a.submit([{"id": 1}], idem="key-1", expect=200)
    assert again["id"] == first["id"]
    other = a.submit([{"id": 1}], idem="key-2")
    assert other["id"] != first["id"]
    bs = b.submit([{"id": 1}], idem="key-1")          # keys are per tenant
    assert bs["id"] != first["id"]
    assert conn.execute("SELECT count(*) AS n FROM batchd.batches WHERE idempotency_key = "
                        "'key-1'").fetchone()["n"] == 2

    results = []

    def go():
        r = a.post("/v1/batches", {"route": ROUTE, "items": [{"id": i} for i in range(200)]},
                   headers={"Idempotency-Key": "race"})
        results.append((r.status, r.json()["id"]))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8, results
    assert len({i for _, i in results}) == 1, results
    assert sorted(s for s, _ in results) == [200] * 7 + [201], results
    row = conn.execute("SELECT count(*) AS n, sum(total) AS items FROM batchd.batches "
                       "WHERE tenant = %s AND idempotency_key = 'race'", (TENANT_A,)).fetchone()
    assert (row["n"], row["items"]) == (1, 200)
    assert conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s",
                        (results[0][1],)).fetchone()["n"] == 200
    assert check_consistency(conn) == []


# ------------------------------------------------------------------ pagination

def test_batches_pagination_walks_each_once(blocked):
    conn, a = blocked.conn, blocked.a
    ids = []
    # ten batches in one transaction share created_at: the id breaks the tie
    with conn.transaction():
        for i in range(10):
            ids.append(submit(conn, TENANT_A, ROUTE, [{"id": i}]))
    for i in range(13):
        ids.append(submit(conn, TENANT_A, ROUTE, [{"id": i}]))
    submit(conn, TENANT_B, ROUTE, [{"id": 0}])
    conn.execute("UPDATE batchd.batches SET status = 'cancelled' WHERE id = ANY(%s::uuid[])",
                 (ids[:5],))

    def walk(query, limit):
        seen, cursor, pages = [], None, 0
        while True:
            q = f"/v1/batches?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
            r = a.get(q)
            assert r.status == 200, r
            page = r.json()
            assert len(page["batches"]) <= limit
            seen += page["batches"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                return seen, pages
            assert pages < 100

    seen, pages = walk("", 4)
    assert sorted(x["id"] for x in seen) == sorted(ids)
    assert len(seen) == len(ids) == 23 and pages == 6
    keys = [(x["created_at"], x["id"]) for x in seen]
    assert keys == sorted(keys, key=lambda k: (k[0], [-ord(c) for c in k[1]]), reverse=True), \
        "newest first, ties by id"
    seen, _ = walk("&status=cancelled", 2)
    assert sorted(x["id"] for x in seen) == sorted(ids[:5])
    # exactly the limit: no further page
    page = a.get("/v1/batches?limit=23").json()
    assert len(page["batches"]) == 23 and page["next_cursor"] is None


def test_items_pagination_walks_each_once(blocked):
    a = blocked.a
    b = a.submit([{"id": i} for i in range(250)])
    blocked.conn.execute("UPDATE batchd.items SET status = 'failed' WHERE batch_id = %s "
                         "AND seq %% 10 = 0", (b["id"],))
    seen, cursor = [], None
    while True:
        r = a.get(f"/v1/batches/{b['id']}/items?limit=100" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status == 200, r
        page = r.json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [x["seq"] for x in seen] == list(range(250))
    assert [x["payload"]["id"] for x in seen] == list(range(250))
    failed = a.get(f"/v1/batches/{b['id']}/items?status=failed&limit=1000").json()
    assert [x["seq"] for x in failed["items"]] == list(range(0, 250, 10))
    assert failed["next_cursor"] is None
    assert a.get(f"/v1/batches/{b['id']}/items?status=succeeded").json() == \
        {"total": 0, "items": [], "next_cursor": None}


# ------------------------------------------------------------------ results stream

def test_results_stream_100k_items_bounded_memory(db, conn, mock, batchd_factory):
    # A small ASan quarantine, so that RSS shows what batchd holds, not what
    # ASan keeps of what batchd freed.
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1:"
                           "quarantine_size_mb=4:thread_local_quarantine_size_kb=256"}
    api = start_blocked(db, conn, mock, batchd_factory, env=env)
    n = 100_000
    pad = "x" * 600
    bid = conn.execute(
        "SELECT batchd.submit_batch(%s, %s, (SELECT jsonb_agg(jsonb_build_object('id', g, "
        "'pad', %s::text) ORDER BY g) FROM generate_series(0, %s) AS g)) AS id",
        (TENANT_A, ROUTE, pad, n - 1)).fetchone()["id"]

    small = api.a.submit([{"id": 1}])
    assert api.a.get(f"/v1/batches/{small['id']}/results").status == 200   # warm-up
    before = rss_kb(api.d.pid)
    hwm_before = rss_kb(api.d.pid, "VmHWM")

    c = api.a.conn(timeout=60)
    c.request("GET", f"/v1/batches/{bid}/results",
              headers={"Authorization": f"Bearer {api.tok_a}"})
    r = c.getresponse()
    assert r.status == 200
    count, total_bytes, expect_seq, tail = 0, 0, 0, b""
    while True:
        chunk = r.read(1 << 16)
        if not chunk:
            break
        total_bytes += len(chunk)
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            item = json.loads(line)
            assert item["seq"] == expect_seq
            expect_seq += 1
            count += 1
    c.close()
    assert tail == b"" and count == n, (count, tail[:100])
    assert total_bytes > 60 * 1024 * 1024

    after = rss_kb(api.d.pid)
    hwm_after = rss_kb(api.d.pid, "VmHWM")
    growth_mb = (max(after, hwm_after) - max(before, hwm_before)) / 1024
    print(f"\n[rss] streamed {total_bytes >> 20} MB, batchd grew {growth_mb:.1f} MB "
          f"(rss {before // 1024} -> {after // 1024} MB)")
    assert growth_mb < 50, f"batchd grew by {growth_mb:.1f} MB streaming {total_bytes >> 20} MB"
    # the stream's connection is gone
    wait_until(lambda: api.a.get("/v1/status").json()["api"]["streams"] == 0, timeout=10)


def test_results_stream_client_gone_and_cap(blocked):
    conn, a = blocked.conn, blocked.a
    bid = conn.execute(
        "SELECT batchd.submit_batch(%s, %s, (SELECT jsonb_agg(jsonb_build_object('id', g, "
        "'pad', repeat('y', 1000))) FROM generate_series(1, 20000) AS g)) AS id",
        (TENANT_A, ROUTE)).fetchone()["id"]

    def open_stream():
        s = socket.create_connection(("127.0.0.1", blocked.d.port))
        s.sendall(f"GET /v1/batches/{bid}/results HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {blocked.tok_a}\r\n\r\n".encode())
        s.settimeout(10)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        return s

    # a client that leaves mid-stream
    s = open_stream()
    s.recv(10000)
    s.close()
    wait_until(lambda: a.get("/v1/status").json()["api"]["streams"] == 0, timeout=10,
               desc="the abandoned stream to be closed")

    # 16 slow readers fill the cap; the 17th is refused
    socks = [open_stream() for _ in range(16)]
    try:
        assert_error(a.get(f"/v1/batches/{bid}/results"), 503)
        assert a.get(f"/v1/batches/{bid}").status == 200     # the rest still works
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: a.get("/v1/status").json()["api"]["streams"] == 0, timeout=10)
    r = a.get(f"/v1/batches/{bid}/results", timeout=60)
    assert r.status == 200 and r.body.count(b"\n") == 20000
    assert blocked.d.running()


# ------------------------------------------------------------------ cancel, retry, delete

def test_cancel_retry_delete_rules(blocked):
    a, conn = blocked.a, blocked.conn
    b = a.submit([{"id": i} for i in range(5)])
    bid = b["id"]
    assert_error(a.post(f"/v1/batches/{bid}/retry"), 409)
    assert_error(a.delete(f"/v1/batches/{bid}"), 409)

    r = a.post(f"/v1/batches/{bid}/cancel")
    assert r.status == 200, r
    c = r.json()
    assert (c["status"], c["cancelled"], c["queued"], c["running"]) == ("cancelled", 5, 0, 0)
    assert c["finished_at"] is not None
    assert_error(a.post(f"/v1/batches/{bid}/cancel"), 409)
    assert check_consistency(conn) == []

    r = a.post(f"/v1/batches/{bid}/retry", {}, ctype="application/json; charset=utf-8")
    assert r.status == 200, r
    t = r.json()
    assert (t["status"], t["cancelled"], t["queued"], t["finished_at"]) == \
        ("processing", 0, 5, None)
    it = conn.execute("SELECT status, attempts, error, finished_at FROM batchd.items "
                      "WHERE batch_id = %s", (bid,)).fetchall()
    assert all((x["status"], x["attempts"], x["error"], x["finished_at"]) ==
               ("queued", 0, None, None) for x in it)
    assert_error(a.post(f"/v1/batches/{bid}/retry"), 409)
    events = [e["event"] for e in conn.execute(
        "SELECT event FROM batchd.batch_events WHERE batch_id = %s ORDER BY id", (bid,))]
    assert events == ["submitted", "cancelled", "retried"]

    assert a.post(f"/v1/batches/{bid}/cancel").status == 200
    r = a.delete(f"/v1/batches/{bid}")
    assert r.status == 204 and r.body == b"", r
    assert_error(a.get(f"/v1/batches/{bid}"), 404)
    assert_error(a.delete(f"/v1/batches/{bid}"), 404)
    left = conn.execute("SELECT (SELECT count(*) FROM batchd.items WHERE batch_id = %s) AS i, "
                        "(SELECT count(*) FROM batchd.batch_events WHERE batch_id = %s) AS e",
                        (bid, bid)).fetchone()
    assert (left["i"], left["e"]) == (0, 0)
    assert check_consistency(conn) == []


def test_cancel_with_running_items(blocked):
    a, conn = blocked.a, blocked.conn
    # the blocker batch: its one item hangs in the provider
    hold = conn.execute("SELECT id FROM batchd.batches WHERE tenant = 'blocker'").fetchone()["id"]
    conn.execute("UPDATE batchd.batches SET tenant = %s WHERE id = %s", (TENANT_A, hold))
    hid = str(hold)
    r = a.post(f"/v1/batches/{hid}/cancel")
    assert r.status == 200, r
    c = r.json()
    assert (c["status"], c["running"], c["cancelled"], c["finished_at"]) == \
        ("cancelled", 1, 0, None)
    assert_error(a.post(f"/v1/batches/{hid}/retry"), 409)     # still running
    assert_error(a.delete(f"/v1/batches/{hid}"), 409)
    # when the running item is recorded, the cancelled batch is finished
    wid = conn.execute("SELECT worker_id FROM batchd.items WHERE batch_id = %s",
                       (hid,)).fetchone()["worker_id"]
    conn.execute("""SELECT * FROM batchd.complete_items(%s, (SELECT jsonb_agg(jsonb_build_object(
                      'id', id, 'status', 'failed', 'error', 'test')) FROM batchd.items
                     WHERE batch_id = %s))""", (wid, hid))
    f = a.get(f"/v1/batches/{hid}").json()
    assert (f["status"], f["failed"], f["running"]) == ("cancelled", 1, 0)
    assert f["finished_at"] is not None
    assert check_consistency(conn) == []


def test_retry_failed_items_until_completed(api):
    a, mock = api.a, api.mock
    mock.configure(ids={"2": {"status": 404}, "4": {"status": 404}})
    b = a.submit([{"id": i} for i in range(1, 6)], max_attempts=1)
    done = wait_api_done(a, b["id"])
    assert (done["status"], done["succeeded"], done["failed"]) == ("completed_with_errors", 3, 2)
    failed = a.get(f"/v1/batches/{b['id']}/items?status=failed").json()["items"]
    assert sorted(x["payload"]["id"] for x in failed) == [2, 4]
    assert all(x["http_status"] == 404 and x["error"] for x in failed)

    mock.configure(ids=None)
    r = a.post(f"/v1/batches/{b['id']}/retry")
    assert r.status == 200, r
    assert r.json()["status"] in ("processing", "completed")
    done = wait_api_done(a, b["id"])
    assert (done["status"], done["succeeded"], done["failed"]) == ("completed", 5, 0)
    again = a.get(f"/v1/batches/{b['id']}/items?status=succeeded").json()["items"]
    assert all(x["attempts"] == 1 and x["error"] is None for x in again)
    assert_error(a.post(f"/v1/batches/{b['id']}/retry"), 409)      # nothing to retry
    assert a.delete(f"/v1/batches/{b['id']}").status == 204
    assert check_consistency(api.conn) == []


# ------------------------------------------------------------------ bad requests

def bad_requests(bid, tok_revoked):
    """(name, method, path, kwargs, status, allow)"""
    ok_items = [{"id": 1}]

    def sub(**fields):
        body = {"route": ROUTE, "items": ok_items}
        body.update(fields)
        return {"raw": json.dumps(body).encode()}

    deep = {"raw": b'{"route":"verify","items":[{"a":' + b"[" * 100 + b"]" * 100 + b"}]}"}
    very_deep = {"raw": b'{"route":"verify","items":[' + b"[" * 100000}
    cases = [
        ("bad json", "POST", "/v1/batches", {"raw": b'{"route":'}, 400),
        ("trailing garbage", "POST", "/v1/batches", {"raw": b'{"route":"verify","items":[{}]} x'}, 400),
        ("empty body", "POST", "/v1/batches", {"raw": b""}, 400),
        ("array body", "POST", "/v1/batches", {"raw": b"[]"}, 400),
        ("string body", "POST", "/v1/batches", {"raw": b'"x"'}, 400),
        ("no route", "POST", "/v1/batches", {"raw": b'{"items":[{}]}'}, 400),
        ("unknown route", "POST", "/v1/batches", sub(route="nope"), 400),
        ("route sql", "POST", "/v1/batches", sub(route="verify'; DROP TABLE batchd.items; --"), 400),
        ("route number", "POST", "/v1/batches", sub(route=5), 400),
        ("route null", "POST", "/v1/batches", sub(route=None), 400),
        ("no items", "POST", "/v1/batches", {"raw": b'{"route":"verify"}'}, 400),
        ("empty items", "POST", "/v1/batches", sub(items=[]), 400),
        ("items object", "POST", "/v1/batches", sub(items={}), 400),
        ("items scalar", "POST", "/v1/batches", sub(items=[1]), 400),
        ("items array", "POST", "/v1/batches", sub(items=[{}, []]), 400),
        ("items null elem", "POST", "/v1/batches", sub(items=[{}, None]), 400),
        ("priority high", "POST", "/v1/batches", sub(priority=11), 400),
        ("priority low", "POST", "/v1/batches", sub(priority=-1), 400),
        ("priority frac", "POST", "/v1/batches", sub(priority=1.5), 400),
        ("priority string", "POST", "/v1/batches", sub(priority="5"), 400),
        ("priority bool", "POST", "/v1/batches", sub(priority=True), 400),
        ("priority huge", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{}],"priority":1e400}'}, 400),
        ("priority bigint", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{}],"priority":99999999999999999999999}'}, 400),
        ("max_attempts 0", "POST", "/v1/batches", sub(max_attempts=0), 400),
        ("max_attempts 101", "POST", "/v1/batches", sub(max_attempts=101), 400),
        ("name long", "POST", "/v1/batches", sub(name="n" * 201), 400),
        ("name number", "POST", "/v1/batches", sub(name=5), 400),
        ("metadata array", "POST", "/v1/batches", sub(metadata=[]), 400),
        ("metadata string", "POST", "/v1/batches", sub(metadata="x"), 400),
        ("group_key number", "POST", "/v1/batches", sub(group_key=5), 400),
        ("group_key empty", "POST", "/v1/batches", sub(group_key=""), 400),
        ("group_key bad path", "POST", "/v1/batches", sub(group_key="a..b"), 400),
        ("unknown field", "POST", "/v1/batches", sub(tenant="other"), 400),
        ("duplicate field", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{}],"route":"verify"}'}, 400),
        ("deep nesting", "POST", "/v1/batches", deep, 400),
        ("very deep nesting", "POST", "/v1/batches", very_deep, 400),
        ("invalid utf-8", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"s":"\xff\xfe"}]}'}, 400),
        ("nul escape", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"s":"a\\u0000b"}]}'}, 400),
        ("nul byte", "POST", "/v1/batches", {"raw": b'{"route":"verify","items":[{}]}\x00'}, 400),
        ("lone surrogate", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"s":"\\ud800"}]}'}, 400),
        # yajl decodes the pair into something else: no NUL for its check
        ("surrogate then nul escape", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"s":"\\ud83d\\u0000"}]}'}, 400),
        # yajl passes these; PostgreSQL would refuse them: the strict check does
        ("overlong utf-8", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"s":"\xc0\xaf"}]}'}, 400),
        ("utf-8 surrogate", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"s":"\xed\xa0\x80"}]}'}, 400),
        ("utf-8 past U+10FFFF", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"s":"\xf4\x90\x80\x80"}]}'}, 400),
        ("form feed as space", "POST", "/v1/batches",
         {"raw": b'{"route":"verify",\x0c"items":[{}]}'}, 400),
        ("huge number", "POST", "/v1/batches",
         {"raw": b'{"route":"verify","items":[{"n":1e999999}]}'}, 400),
        ("idempotency key long", "POST", "/v1/batches",
         dict(sub(), headers={"Idempotency-Key": "k" * 201}), 400),
        ("no content type", "POST", "/v1/batches", dict(sub(), ctype=None), 415),
        ("text content type", "POST", "/v1/batches", dict(sub(), ctype="text/plain"), 415),
        ("latin1 json", "POST", "/v1/batches",
         dict(sub(), ctype="application/json; charset=latin1"), 415),
        ("form content type", "POST", "/v1/batches",
         dict(sub(), ctype="application/x-www-form-urlencoded"), 415),
        ("cancel text body", "POST", f"/v1/batches/{bid}/cancel",
         {"raw": b"please", "ctype": "text/plain"}, 415),
        ("cancel bad json", "POST", f"/v1/batches/{bid}/cancel", {"raw": b"{"}, 400),
        # ids, query strings, cursors
        ("id not uuid", "GET", "/v1/batches/not-a-uuid", {}, 400),
        ("id sql", "GET", "/v1/batches/1'%20OR%20'1'='1", {}, 400),
        ("id too long", "GET", f"/v1/batches/{bid}0", {}, 400),
        ("id huge", "GET", "/v1/batches/" + "a" * 200, {}, 400),
        ("progress bad id", "GET", "/v1/batches/123/progress", {}, 400),
        ("items bad id", "GET", "/v1/batches/x/items", {}, 400),
        ("results bad id", "GET", "/v1/batches/x/results", {}, 400),
        ("cancel bad id", "POST", "/v1/batches/x/cancel", {}, 400),
        ("retry bad id", "POST", "/v1/batches/x/retry", {}, 400),
        ("delete bad id", "DELETE", "/v1/batches/x", {}, 400),
        ("limit 0", "GET", "/v1/batches?limit=0", {}, 400),
        ("limit 1001", "GET", "/v1/batches?limit=1001", {}, 400),
        ("limit text", "GET", "/v1/batches?limit=ten", {}, 400),
        ("limit negative", "GET", "/v1/batches?limit=-5", {}, 400),
        ("limit twice", "GET", "/v1/batches?limit=1&limit=2", {}, 400),
        ("status bogus", "GET", "/v1/batches?status=bogus", {}, 400),
        ("status sql", "GET", "/v1/batches?status=x'%20OR%201=1--", {}, 400),
        ("item status on batches", "GET", "/v1/batches?status=queued", {}, 400),
        ("batch status on items", "GET", f"/v1/batches/{bid}/items?status=pending", {}, 400),
        ("unknown param", "GET", "/v1/batches?foo=1", {}, 400),
        ("param on get", "GET", f"/v1/batches/{bid}?limit=1", {}, 400),
        ("cursor garbage", "GET", "/v1/batches?cursor=!!!", {}, 400),
        ("cursor not ours", "GET", "/v1/batches?cursor=" + b64("hello"), {}, 400),
        ("cursor sql", "GET", "/v1/batches?cursor=" +
         b64("2026-01-01T00:00:00.000000Z|x' OR '1'='1"), {}, 400),
        ("cursor bad date", "GET", "/v1/batches?cursor=" +
         b64(f"2026-13-45T00:00:00.000000Z|{bid}"), {}, 400),
        ("items cursor", "GET", f"/v1/batches/{bid}/items?cursor=" + b64("-1"), {}, 400),
        ("items cursor big", "GET", f"/v1/batches/{bid}/items?cursor=" + b64("99999999999"), {}, 400),
        ("nul in query", "GET", "/v1/batches?status=pending%00x", {}, 400),
        # not found
        ("no such batch", "GET", f"/v1/batches/{uuid.uuid4()}", {}, 404),
        ("no such endpoint", "GET", "/v1/nope", {}, 404),
        ("no such sub", "GET", f"/v1/batches/{bid}/nope", {}, 404),
        ("trailing slash", "GET", "/v1/batches/", {}, 404),
        # methods
        ("put batches", "PUT", "/v1/batches", {}, 405, "GET, HEAD, POST"),
        ("delete batches", "DELETE", "/v1/batches", {}, 405, "GET, HEAD, POST"),
        ("post batch", "POST", f"/v1/batches/{bid}", {}, 405, "GET, HEAD, DELETE"),
        ("patch batch", "PATCH", f"/v1/batches/{bid}", {}, 405, "GET, HEAD, DELETE"),
        ("get cancel", "GET", f"/v1/batches/{bid}/cancel", {}, 405, "POST"),
        ("delete retry", "DELETE", f"/v1/batches/{bid}/retry", {}, 405, "POST"),
        ("post results", "POST", f"/v1/batches/{bid}/results", {}, 405, "GET, HEAD"),
        ("options progress", "OPTIONS", f"/v1/batches/{bid}/progress", {}, 405, "GET, HEAD"),
        ("delete status", "DELETE", "/v1/status", {}, 405, "GET, HEAD"),
        # tokens
        ("no token", "GET", "/v1/batches", {"token": None}, 401),
        ("empty bearer", "GET", "/v1/batches", {"token": None,
                                                "headers": {"Authorization": "Bearer "}}, 401),
        ("basic auth", "GET", "/v1/batches", {"token": None,
                                              "headers": {"Authorization": "Basic dTpw"}}, 401),
        ("wrong token", "GET", "/v1/batches", {"token": "bd_" + "0" * 64}, 401),
        ("sql token", "GET", "/v1/batches", {"token": "x'OR'1'='1"}, 401),
        ("long token", "GET", "/v1/batches", {"token": "t" * 5000}, 401),
        ("revoked token", "GET", "/v1/batches", {"token": tok_revoked}, 401),
        ("revoked token post", "POST", "/v1/batches", dict(sub(), token=tok_revoked), 401),
    ]
    return cases


def test_malformed_requests_change_nothing(blocked):
    a, conn = blocked.a, blocked.conn
    bid = a.submit([{"id": 1}])["id"]
    revoked = create_token(conn, TENANT_A)
    conn.execute("SELECT batchd.revoke_token(%s)", (revoked,))
    before = counts(conn)
    failures = []
    for case in bad_requests(bid, revoked):
        name, method, path, kw, status = case[:5]
        try:
            r = a.request(method, path, **kw)
            j = assert_error(r, status)
            if status == 405:
                assert r.headers.get("allow") == case[5], r.headers
            if status == 400 and "route" in name and "unknown" in name:
                assert "route" in j["error"]["message"]
            if name in ("nul escape", "lone surrogate", "surrogate then nul escape"):
                # refused by the API's own check, before the database
                assert "\\u0000" in j["error"]["message"], j
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)
    assert counts(conn) == before
    assert conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s",
                        (bid,)).fetchone()["n"] == 1
    assert check_consistency(conn) == []
    assert blocked.d.running()


def test_sql_in_every_field_is_stored_verbatim(blocked):
    a, conn = blocked.a, blocked.conn
    evil = "x'); DROP TABLE batchd.items; --\"\\ \u00e9\u2603"
    b = a.submit([{"id": evil, evil: [evil]}], name=evil, metadata={evil: evil},
                 group_key="id", idem=evil.encode("ascii", "ignore").decode())
    got = a.get(f"/v1/batches/{b['id']}").json()
    assert got["name"] == evil and got["metadata"] == {evil: evil}
    item = a.get(f"/v1/batches/{b['id']}/items").json()["items"][0]
    assert item["payload"] == {"id": evil, evil: [evil]}
    row = conn.execute("SELECT group_key FROM batchd.items WHERE batch_id = %s",
                       (b["id"],)).fetchone()
    assert row["group_key"] == evil
    assert conn.execute("SELECT count(*) AS n FROM batchd.items").fetchone()["n"] >= 2


def test_body_over_max_body_size_is_413(db, conn, mock, batchd_factory):
    api = start_blocked(db, conn, mock, batchd_factory, max_body_size="64KB")
    before = counts(conn)
    big = {"route": ROUTE, "items": [{"id": i, "pad": "z" * 100} for i in range(1000)]}
    r = api.a.post("/v1/batches", big)
    # evhttp refuses the body before batchd's handler runs; batchd's
    # evhttp_send_error (src/api_req.c) gives the answer the JSON error shape
    assert_error(r, 413)
    assert "max_body_size" in r.json()["error"]["message"]
    assert counts(conn) == before
    small = api.a.submit([{"id": 1}])
    assert small["total"] == 1
    assert api.d.running()


# ------------------------------------------------------------------ database down

def test_database_down_gives_503(mock, batchd_factory, tmp_path):
    port = free_port()
    cfg = render_config(f"host=127.0.0.1 port={free_port()} user=postgres dbname=nowhere "
                        "connect_timeout=2",
                        {"listen": f"127.0.0.1:{port}", "log_level": "info",
                         "shutdown_timeout": "1s"},
                        providers_for(mock), {ROUTE: "mock"})
    d = batchd_factory(cfg, wait=False)
    c = Client(port, "bd_" + "1" * 64)

    def up():
        try:
            return c.get("/healthz", token=None).status == 200
        except OSError:
            assert d.running(), d.log()
            return False
    wait_until(up, timeout=15, desc="batchd to listen")
    r = c.get("/readyz", token=None)
    assert r.status == 503 and r.json()["status"] == "not_ready"
    for method, path, body in [("GET", "/v1/batches", None),
                               ("POST", "/v1/batches", {"route": ROUTE, "items": [{}]}),
                               ("GET", f"/v1/batches/{uuid.uuid4()}", None),
                               ("GET", "/v1/status", None)]:
        j = assert_error(c.request(method, path, body), 503)
        assert "database" in j["error"]["message"]
    assert d.running()


# ------------------------------------------------------------------ stop

def test_stop_with_requests_and_streams_in_flight(db, blocked):
    conn = blocked.conn
    bid = conn.execute(
        "SELECT batchd.submit_batch(%s, %s, (SELECT jsonb_agg(jsonb_build_object('id', g, "
        "'pad', repeat('y', 1000))) FROM generate_series(1, 20000) AS g)) AS id",
        (TENANT_A, ROUTE)).fetchone()["id"]
    socks = []
    for _ in range(2):       # streams whose clients do not read
        s = socket.create_connection(("127.0.0.1", blocked.d.port))
        s.sendall(f"GET /v1/batches/{bid}/results HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {blocked.tok_a}\r\n\r\n".encode())
        s.settimeout(10)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        socks.append(s)
    # requests whose queries wait for a lock when the stop comes
    lk = db.connect()
    lk.execute("BEGIN")
    lk.execute("LOCK TABLE batchd.api_tokens IN ACCESS EXCLUSIVE MODE")
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", blocked.d.port))
        s.sendall(f"GET /v1/batches HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {blocked.tok_a}\r\n\r\n".encode())
        socks.append(s)
    wait_until(lambda: conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()["n"] == 3, timeout=10, desc="the API queries to wait for the lock")
    assert blocked.d.stop(timeout=20) == 0
    lk.execute("ROLLBACK")
    for s in socks:
        s.close()


def test_database_connections_lost(blocked):
    a, conn = blocked.a, blocked.conn
    bid = conn.execute(
        "SELECT batchd.submit_batch(%s, %s, (SELECT jsonb_agg(jsonb_build_object('id', g, "
        "'pad', repeat('y', 1000))) FROM generate_series(1, 20000) AS g)) AS id",
        (TENANT_A, ROUTE)).fetchone()["id"]
    c = a.conn(timeout=20)
    c.request("GET", f"/v1/batches/{bid}/results",
              headers={"Authorization": f"Bearer {blocked.tok_a}"})
    r = c.getresponse()
    assert r.status == 200
    assert r.read(1000)
    killed = conn.execute("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                          "WHERE application_name = 'batchd api stream'").fetchone()["n"]
    assert killed == 1
    # the body must not look complete: the connection is cut, not ended
    with pytest.raises(http.client.IncompleteRead):
        while r.read(1 << 16):
            pass
    c.close()
    wait_until(lambda: a.get("/v1/status").json()["api"]["streams"] == 0, timeout=10)

    # the API's own connections come back by themselves
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = 'batchd api'")
    first = a.get(f"/v1/batches/{bid}")
    assert first.status in (200, 503), first
    if first.status == 503:
        assert_error(first, 503)
    wait_until(lambda: a.get(f"/v1/batches/{bid}").status == 200, timeout=15,
               desc="the API to reconnect")
    assert blocked.d.running()
