"""The core path: batches drain through the mock provider, every outcome is
recorded once, bad provider responses fail cleanly, LISTEN/NOTIFY wakes an
idle batchd, graceful stop."""

import json
import signal
import time
from datetime import timedelta

import pytest

from conftest import (batch, check_consistency, free_port, http_get, items, submit,
                      wait_batch_done, wait_until)

ROUTE = "verify"


def start(batchd_factory, db, mock, provider=None, route_providers="mock", **batchd_keys):
    # No retries and a breaker that never opens: these tests look at a single
    # try's outcome (retries, breakers and failover: test_resilience.py).
    prov = {"url": mock.url("/item/{id}"), "timeout": "5s", "connect_timeout": "2s",
            "retries": "0", "breaker_failures": "100000"}
    prov.update(provider or {})
    return batchd_factory(db=db, providers={"mock": prov}, routes={ROUTE: route_providers},
                          **batchd_keys)


def count(conn, sql, *args):
    return conn.execute(sql, args).fetchone()["n"]


# ------------------------------------------------------------------ draining

@pytest.mark.parametrize("n", [1000, 2000])
def test_batch_drains_exactly_once(db, conn, mock, batchd_factory, capsys, n):
    start(batchd_factory, db, mock, max_inflight=100)
    payloads = [{"id": i, "tag": f"t{i}"} for i in range(1, n + 1)]
    t0 = time.monotonic()
    bid = submit(conn, "acme", ROUTE, payloads)
    b = wait_batch_done(conn, bid, timeout=90)
    wall = time.monotonic() - t0

    assert b["status"] == "completed", b
    assert (b["total"], b["succeeded"], b["failed"], b["cancelled"]) == (n, n, 0, 0)
    assert b["started_at"] is not None and b["finished_at"] is not None
    assert b["finished_at"] >= b["started_at"] >= b["created_at"]

    bad = conn.execute(
        """SELECT id, seq, status, http_status, provider, error, result, attempts
             FROM batchd.items
            WHERE batch_id = %s
              AND (status = 'succeeded' AND http_status = 200 AND provider = 'mock'
                   AND result->>'id' = payload->>'id' AND error IS NULL
                   AND attempts = 1 AND started_at IS NOT NULL
                   AND finished_at >= started_at) IS NOT TRUE
            ORDER BY seq LIMIT 5""", (bid,)).fetchall()
    assert bad == [], f"items not recorded as expected (first 5): {bad}"
    assert count(conn, "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s", bid) == n
    assert check_consistency(conn) == []

    seen = mock.ids()
    assert len(seen) == n, f"mock saw {len(seen)} distinct ids, expected {n}"
    dups = {k: v for k, v in seen.items() if v != 1}
    assert dups == {}, f"ids requested more than once: {list(dups.items())[:10]}"
    assert set(seen) == {str(i) for i in range(1, n + 1)}
    st = mock.stats()
    assert st["distinct_ids"] == n and st["duplicate_ids"] == 0, st
    assert st["max_inflight"] <= 100, f"max_inflight exceeded: {st['max_inflight']}"

    db_secs = (b["finished_at"] - b["started_at"]).total_seconds()
    with capsys.disabled():
        print(f"\n[throughput] {n} items: {n / wall:.0f} items/s from submit to done "
              f"({wall:.2f}s), {n / max(db_secs, 1e-6):.0f} items/s started->finished "
              f"({db_secs:.2f}s)")


def test_max_inflight_is_used_and_respected(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock, provider={"url": mock.url("/item/{id}?latency_ms=50")},
          max_inflight=20)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(200)])
    t0 = time.monotonic()
    assert wait_batch_done(conn, bid, timeout=30)["status"] == "completed"
    elapsed = time.monotonic() - t0
    st = mock.stats()
    assert st["max_inflight"] <= 20, f"more than max_inflight calls at once: {st}"
    assert st["max_inflight"] >= 10, f"calls are not run concurrently: {st}"
    # 200 calls of 50 ms, 20 at a time: 0.5 s when concurrent, 10 s when serial
    assert elapsed < 5, f"200 x 50ms calls at max_inflight 20 took {elapsed:.1f}s"


def test_full_outcome_buffer_flushes_without_waiting_for_the_timer(db, conn, mock, batchd_factory):
    # Claims stop while max_inflight outcomes wait to be written, so a flush
    # must start before that however large flush_size is. When it waited for
    # flush_interval instead, this took one interval per 10 items (about 30 s).
    start(batchd_factory, db, mock, max_inflight=10, flush_size=500, flush_interval="1s")
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(300)])
    t0 = time.monotonic()
    b = wait_batch_done(conn, bid, timeout=60)
    elapsed = time.monotonic() - t0
    assert (b["status"], b["succeeded"]) == ("completed", 300), b
    assert elapsed < 6, f"300 items at max_inflight 10 took {elapsed:.1f}s"
    assert check_consistency(conn) == []


def test_last_outcomes_are_written_at_once_when_nothing_else_is_held(db, conn, mock,
                                                                     batchd_factory):
    # flush_interval batches outcomes that arrive close together; once the
    # process holds no other item, none is coming to share the statement, so
    # the last ones are written at once instead of after the interval.
    start(batchd_factory, db, mock, max_inflight=100, flush_interval="5s", poll_interval="60s")
    time.sleep(0.5)
    for round_ in range(2):  # the second round starts within the interval
        bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(30)])
        t0 = time.monotonic()
        b = wait_batch_done(conn, bid, timeout=20)
        took = time.monotonic() - t0
        assert (b["status"], b["succeeded"]) == ("completed", 30), b
        assert took < 2.0, f"round {round_}: 30 items took {took:.1f}s with flush_interval 5s"
    assert check_consistency(conn) == []


@pytest.mark.parametrize("ahead", [0, 4])
def test_claim_ahead_holds_more_but_sends_max_inflight(db, conn, mock, batchd_factory, ahead):
    # max_inflight caps the transfers; claim_ahead more items wait in the
    # provider's queue (running in the database, under this worker) and start
    # the moment a transfer ends.
    d = start(batchd_factory, db, mock,
              provider={"url": mock.url("/item/{id}?latency_ms=200")},
              max_inflight=3, claim_ahead=ahead)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(30)])
    held, inflight = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        b = batch(conn, bid)
        _, text = http_get(f"http://127.0.0.1:{d.port}/metrics")
        m = dict(line.split(" ", 1) for line in text.decode().splitlines()
                 if line.startswith(("batchd_held_items ", "batchd_inflight ")))
        held.append(int(m["batchd_held_items"]))
        inflight.append(int(m["batchd_inflight"]))
        if b["status"] == "completed":
            break
        time.sleep(0.02)
    assert b["status"] == "completed", b
    st = mock.stats()
    assert st["max_inflight"] == 3, f"transfers at once: {st}"
    assert max(inflight) == 3, inflight
    assert max(held) == 3 + ahead, f"items held at once: {held}"
    # 30 calls of 200 ms, 3 at a time: 2 s whether or not items wait ahead
    assert b["finished_at"] - b["started_at"] < timedelta(seconds=4), b


def test_two_batches_and_worker_registered(db, conn, mock, batchd_factory):
    d = start(batchd_factory, db, mock)
    w = conn.execute("SELECT * FROM batchd.workers").fetchall()
    assert len(w) == 1 and w[0]["pid"] == d.pid, w
    a = submit(conn, "t1", ROUTE, [{"id": f"a{i}"} for i in range(50)])
    b = submit(conn, "t2", ROUTE, [{"id": f"b{i}"} for i in range(50)])
    assert wait_batch_done(conn, a)["status"] == "completed"
    assert wait_batch_done(conn, b)["status"] == "completed"
    assert count(conn, "SELECT count(*) AS n FROM batchd.items WHERE worker_id = %s "
                       "AND status = 'succeeded'", w[0]["id"]) == 100
    assert check_consistency(conn) == []


# ------------------------------------------------------------------ response bodies

@pytest.mark.parametrize("mode", ["text", "badjson", "html"])
def test_non_json_body_stored_as_json_string(db, conn, mock, batchd_factory, mode):
    start(batchd_factory, db, mock, provider={"url": mock.url("/item/{id}?mode=" + mode)})
    bid = submit(conn, "t", ROUTE, [{"id": 1}, {"id": 2}])
    b = wait_batch_done(conn, bid)
    assert b["status"] == "completed", b
    for it in items(conn, bid):
        assert it["status"] == "succeeded", it
        assert it["http_status"] == 200
        kind = conn.execute("SELECT jsonb_typeof(result) AS k FROM batchd.items WHERE id = %s",
                            (it["id"],)).fetchone()["k"]
        assert kind == "string", f"mode={mode}: result is {kind}: {it['result']!r}"
        assert isinstance(it["result"], str) and it["result"] != ""
    # the stored string is the body the provider sent, byte for byte
    status, body = http_get(mock.url(f"/item/1?mode={mode}"))
    assert items(conn, bid)[0]["result"] == body.decode()


def test_json_body_stored_as_json(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock)
    bid = submit(conn, "t", ROUTE, [{"id": "abc-1"}])
    wait_batch_done(conn, bid)
    it = items(conn, bid)[0]
    assert isinstance(it["result"], dict), it["result"]
    assert it["result"]["id"] == "abc-1"


def test_url_placeholder_is_percent_encoded(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock)
    bid = submit(conn, "t", ROUTE, [{"id": "a b/c?d&e"}])
    b = wait_batch_done(conn, bid)
    assert b["status"] == "completed", (b, items(conn, bid))
    reqs = mock.all_requests()
    assert len(reqs) == 1
    path = reqs[0]["path"]
    assert "A%20B%2FC%3FD%26E" in path.upper(), path


# ------------------------------------------------------------------ failures

def test_provider_500_fails_item(db, conn, mock, batchd_factory):
    mock.configure(ids={"3": {"status": 500}, "7": {"status": 500}})
    start(batchd_factory, db, mock)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(1, 11)], {"max_attempts": 1})
    b = wait_batch_done(conn, bid)
    assert b["status"] == "completed_with_errors", b
    assert (b["succeeded"], b["failed"]) == (8, 2)
    for it in items(conn, bid):
        if it["payload"]["id"] in (3, 7):
            assert it["status"] == "failed", it
            assert it["http_status"] == 500, it
            assert it["error"] and "500" in it["error"], it
            assert it["finished_at"] is not None
        else:
            assert it["status"] == "succeeded", it
            assert it["error"] is None
    assert check_consistency(conn) == []


def test_all_items_fail_batch_failed(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock, provider={"url": mock.url("/item/{id}?status=503")})
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(5)], {"max_attempts": 1})
    b = wait_batch_done(conn, bid)
    assert b["status"] == "failed", b
    assert (b["succeeded"], b["failed"]) == (0, 5)
    for it in items(conn, bid):
        assert it["status"] == "failed" and it["http_status"] == 503 and "503" in it["error"], it
    assert check_consistency(conn) == []


def test_response_over_max_response_size_fails(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock,
          provider={"url": mock.url("/item/{id}?mode=big&big_bytes={n}"),
                    "max_response_size": "64KB"})
    bid = submit(conn, "t", ROUTE, [{"id": 1, "n": 1000000}, {"id": 2, "n": 30000}],
                 {"max_attempts": 1})
    b = wait_batch_done(conn, bid)
    big, small = items(conn, bid)
    assert big["status"] == "failed", big
    assert big["error"] and any(w in big["error"].lower() for w in ("size", "large", "exceed")), big
    assert big["result"] is None or len(json.dumps(big["result"])) < 70000
    assert small["status"] == "succeeded", small
    assert b["status"] == "completed_with_errors"


def test_hanging_provider_times_out(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock,
          provider={"url": mock.url("/item/{id}?mode=hang"), "timeout": "1s"})
    t0 = time.monotonic()
    bid = submit(conn, "t", ROUTE, [{"id": 1}, {"id": 2}], {"max_attempts": 1})
    b = wait_batch_done(conn, bid, timeout=15)
    elapsed = time.monotonic() - t0
    assert b["status"] == "failed", b
    for it in items(conn, bid):
        assert it["status"] == "failed", it
        assert it["error"] and "time" in it["error"].lower(), it
    assert elapsed < 6, f"a 1s timeout took {elapsed:.1f}s to fail the batch"


def test_connection_reset_fails_item(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock, provider={"url": mock.url("/item/{id}?mode=reset")})
    bid = submit(conn, "t", ROUTE, [{"id": 1}], {"max_attempts": 1})
    b = wait_batch_done(conn, bid, timeout=15)
    it = items(conn, bid)[0]
    assert b["status"] == "failed", b
    assert it["status"] == "failed" and it["error"], it
    assert it["finished_at"] is not None


def test_connection_refused_fails_item(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock,
          provider={"url": f"http://127.0.0.1:{free_port()}/item/{{id}}"})
    bid = submit(conn, "t", ROUTE, [{"id": 1}], {"max_attempts": 1})
    b = wait_batch_done(conn, bid, timeout=15)
    it = items(conn, bid)[0]
    assert b["status"] == "failed", b
    assert it["status"] == "failed" and it["error"], it


def test_missing_placeholder_field_fails_item(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock)
    bid = submit(conn, "t", ROUTE, [{"id": 1}, {"other": 2}], {"max_attempts": 1})
    b = wait_batch_done(conn, bid)
    ok, bad = items(conn, bid)
    assert ok["status"] == "succeeded"
    assert bad["status"] == "failed" and "id" in bad["error"], bad
    assert b["status"] == "completed_with_errors"
    assert set(mock.ids()) == {"1"}


# ------------------------------------------------------------------ wake-up, routing

def test_notify_wakes_idle_batchd(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock, poll_interval="60s")
    time.sleep(1.0)  # let it settle into idle (past any start-up claim)
    t0 = time.monotonic()
    bid = submit(conn, "t", ROUTE, [{"id": 1}])
    b = wait_batch_done(conn, bid, timeout=2.0)
    assert b["status"] == "completed"
    took = time.monotonic() - t0
    assert took < 2.0, took


def test_work_queued_before_start_is_picked_up(db, conn, mock, batchd_factory):
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(20)])
    start(batchd_factory, db, mock, poll_interval="60s")
    assert wait_batch_done(conn, bid, timeout=5)["status"] == "completed"


def test_other_route_stays_queued(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock)
    other = submit(conn, "t", "not-served", [{"id": 9001}, {"id": 9002}])
    served = submit(conn, "t", ROUTE, [{"id": 1}])
    assert wait_batch_done(conn, served)["status"] == "completed"
    time.sleep(0.5)
    b = batch(conn, other)
    assert b["status"] == "pending", b
    assert [it["status"] for it in items(conn, other)] == ["queued", "queued"]
    assert all(it["attempts"] == 0 and it["worker_id"] is None for it in items(conn, other))
    assert "9001" not in mock.ids() and "9002" not in mock.ids()


# ------------------------------------------------------------------ request shape

def test_post_sends_payload_as_json_body(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock, provider={"method": "POST"})
    payload = {"id": 5, "vin": "WDB123", "nested": {"a": [1, 2, None]}, "s": "é\"\\"}
    bid = submit(conn, "t", ROUTE, [payload])
    assert wait_batch_done(conn, bid)["status"] == "completed"
    it = items(conn, bid)[0]
    echoed = it["result"]["body"]
    if isinstance(echoed, str):
        echoed = json.loads(echoed)
    assert echoed == payload
    reqs = mock.all_requests()
    assert [r["method"] for r in reqs] == ["POST"]


@pytest.mark.parametrize("method,body", [("GET", None), ("PUT", None), ("PATCH", None),
                                         ("DELETE", None), ("DELETE", '{"k": {id}}')])
def test_methods_on_reused_handles(db, conn, mock, batchd_factory, method, body):
    # Two transfers at a time over 30 items: every request after the first two
    # runs on an easy handle set up for an earlier one (the provider's pool).
    prov = {"method": method}
    if body:
        prov["body"] = body
    start(batchd_factory, db, mock, provider=prov, max_inflight=2)
    payloads = [{"id": i, "v": f"x{i}"} for i in range(1, 31)]
    bid = submit(conn, "t", ROUTE, payloads)
    assert wait_batch_done(conn, bid)["status"] == "completed"
    reqs = mock.all_requests()
    assert len(reqs) == 30 and {r["method"] for r in reqs} == {method}
    for it in items(conn, bid):
        res = it["result"]
        assert res["method"] == method and res["path"] == f"/item/{it['payload']['id']}"
        if method in ("GET", "DELETE") and not body:
            assert "body" not in res, res          # no body sent
        elif body:
            assert res["body"] == {"k": it["payload"]["id"]}, res
        else:
            assert res["body"] == it["payload"], res


def test_reload_applies_new_request_settings(db, conn, mock, batchd_factory):
    # Pooled easy handles carry the provider's method, timeouts and the like:
    # a reload must not send the next requests with the old ones.
    d = start(batchd_factory, db, mock, provider={"method": "POST"}, max_inflight=2)
    first = submit(conn, "t", ROUTE, [{"id": i} for i in range(1, 11)])
    assert wait_batch_done(conn, first)["status"] == "completed"
    with open(d.config_path) as f:
        text = f.read()
    assert "method = POST" in text
    with open(d.config_path, "w") as f:
        f.write(text.replace("method = POST", "method = PUT"))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in d.log(), 5, desc="reload logged")
    mock.reset()
    second = submit(conn, "t", ROUTE, [{"id": i} for i in range(11, 21)])
    assert wait_batch_done(conn, second)["status"] == "completed"
    assert [r["method"] for r in mock.all_requests()] == ["PUT"] * 10


def test_body_template(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock,
          provider={"method": "POST", "body": '{"vin": {vin}, "whole": {.}}'})
    payload = {"id": 6, "vin": "V6"}
    bid = submit(conn, "t", ROUTE, [payload])
    assert wait_batch_done(conn, bid)["status"] == "completed"
    echoed = items(conn, bid)[0]["result"]["body"]
    if isinstance(echoed, str):
        echoed = json.loads(echoed)
    assert echoed == {"vin": "V6", "whole": payload}


def test_header_with_env_var_reaches_provider(db, conn, mock, batchd_factory):
    prov = {"url": mock.url("/item/{id}"), "header": "Authorization: Bearer ${MOCK_TOKEN}"}
    batchd_factory(db=db, providers={"mock": prov}, routes={ROUTE: "mock"},
                   env={"MOCK_TOKEN": "s3cret-token"})
    bid = submit(conn, "t", ROUTE, [{"id": 1}, {"id": 2}])
    assert wait_batch_done(conn, bid)["status"] == "completed"
    reqs = mock.all_requests()
    assert len(reqs) == 2
    assert all(r["authorization"] == "Bearer s3cret-token" for r in reqs), reqs


def test_request_headers_and_compressed_answers(db, conn, mock, batchd_factory):
    # batchd builds its header list itself (no allocation per header): every
    # request carries User-Agent and Accept-Encoding, once, and a gzip answer
    # is stored decoded, on fresh and on reused easy handles alike.
    mock.configure(mode="gzip")
    start(batchd_factory, db, mock, provider={"method": "POST"}, max_inflight=2)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(1, 13)])
    assert wait_batch_done(conn, bid)["status"] == "completed"
    reqs = mock.all_requests()
    assert len(reqs) == 12
    for r in reqs:
        assert r["user_agent"].startswith("batchd/"), r
        assert "gzip" in [x.strip() for x in r["accept_encoding"].split(",")], r
    for it in items(conn, bid):
        res = it["result"]
        assert res["path"] == f"/item/{it['payload']['id']}" and res["body"] == it["payload"], res


def test_answer_jsonb_refuses_is_stored_as_a_string(db, conn, mock, batchd_factory):
    # JSON in shape with an ill-formed UTF-8 sequence: PostgreSQL refuses it
    # (yajl took it), and passed on as JSON it failed the completion
    # statement it travelled in (the items ended failed). It is kept as a
    # string instead, the bad bytes replaced by U+FFFD: every item succeeds.
    mock.configure(mode="badutf8")
    start(batchd_factory, db, mock)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(1, 6)])
    assert wait_batch_done(conn, bid, timeout=20)["status"] == "completed"
    for it in items(conn, bid):
        assert it["status"] == "succeeded", it
        assert it["result"] == '{"s":"a\ufffd\ufffdb"}', it


def test_provider_headers_replace_ours(db, conn, mock, batchd_factory):
    # A provider's own User-Agent and Accept-Encoding replace ours (the mock
    # logs a header sent twice as "a, b"), and templated headers are rendered
    # per item next to them.
    start(batchd_factory, db, mock,
          provider={"method": "POST", "header": ["User-Agent: acme-sync/2",
                                                 "Accept-Encoding: identity",
                                                 "Idempotency-Key: k-{id}-{v}"]},
          max_inflight=2)
    payloads = [{"id": i, "v": f"x{i}"} for i in range(1, 9)]
    bid = submit(conn, "t", ROUTE, payloads)
    assert wait_batch_done(conn, bid)["status"] == "completed"
    reqs = mock.all_requests()
    assert len(reqs) == 8
    for r in reqs:
        assert r["user_agent"] == "acme-sync/2", r
        assert r["accept_encoding"] == "identity", r
    assert sorted(r["idempotency_key"] for r in reqs) == sorted(f"k-{i}-x{i}" for i in range(1, 9))
    for it in items(conn, bid):
        assert it["result"]["body"] == it["payload"], it


# ------------------------------------------------------------------ HTTP, no HTTP

def test_health_endpoints(db, conn, mock, batchd_factory):
    d = start(batchd_factory, db, mock)
    status, body = d.get("/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}, (status, body)
    status, body = d.get("/readyz")
    assert status == 200, (status, body)
    status, _ = d.get("/no/such/path")
    assert status == 404


def test_runs_without_listen(db, conn, mock, batchd_factory):
    start(batchd_factory, db, mock, listen=False)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(5)])
    assert wait_batch_done(conn, bid)["status"] == "completed"


# ------------------------------------------------------------------ stop

def test_sigterm_idle_exits_0_and_deregisters(db, conn, mock, batchd_factory):
    d = start(batchd_factory, db, mock)
    assert count(conn, "SELECT count(*) AS n FROM batchd.workers WHERE pid = %s", d.pid) == 1
    t0 = time.monotonic()
    rc = d.stop(timeout=10)
    assert rc == 0, d.log()[-3000:]
    assert time.monotonic() - t0 < 5, "an idle batchd stops promptly"
    assert count(conn, "SELECT count(*) AS n FROM batchd.workers") == 0


def test_sigterm_mid_batch_requeues_and_restart_finishes(db, conn, mock, batchd_factory):
    d = start(batchd_factory, db, mock,
              provider={"url": mock.url("/item/{id}?latency_ms=300")}, max_inflight=10,
              shutdown_timeout="10s")
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(100)])
    wait_until(lambda: batch(conn, bid)["succeeded"] >= 10, timeout=15,
               desc="some items done")
    assert d.stop(timeout=20) == 0
    st = conn.execute("SELECT status, count(*) AS n FROM batchd.items WHERE batch_id = %s "
                      "GROUP BY status", (bid,)).fetchall()
    st = {r["status"]: r["n"] for r in st}
    assert "running" not in st, f"items left running after a graceful stop: {st}"
    assert st.get("failed", 0) == 0, st
    assert check_consistency(conn) == []
    assert count(conn, "SELECT count(*) AS n FROM batchd.workers") == 0
    queued = [it for it in items(conn, bid) if it["status"] == "queued"]
    assert queued, "the stop came mid-batch, so some items are back in the queue"
    assert all(it["attempts"] == 0 and it["worker_id"] is None for it in queued), \
        "a graceful stop requeues without spending an attempt"
    # nothing lost: a new batchd finishes the rest, every item recorded once
    start(batchd_factory, db, mock,
          provider={"url": mock.url("/item/{id}?latency_ms=1")}, max_inflight=50)
    b = wait_batch_done(conn, bid, timeout=30)
    assert b["status"] == "completed" and b["succeeded"] == 100, b
    assert check_consistency(conn) == []



def test_cancel_drops_items_held_but_not_sent(db, conn, mock, batchd_factory):
    """Items claimed and waiting for a token are running in the database;
    cancelling the batch must stop them before they reach the provider
    (NOTIFY batchd_cancel), and the batch ends cancelled with exact counts."""
    d = start(batchd_factory, db, mock, provider={"rate": "2/s", "burst": "1"}, max_inflight=50)
    bid = submit(conn, "acme", ROUTE, [{"id": i} for i in range(40)])
    # all 40 fit in one claim (max_inflight 50 + claim_ahead 5)
    wait_until(lambda: count(conn, "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                                   "AND status = 'running'", bid) >= 30, 10,
               desc="items claimed and held")
    assert count(conn, "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                       "AND status = 'queued'", bid) == 0
    time.sleep(1.0)
    assert conn.execute("SELECT batchd.cancel_batch('acme', %s) AS r", (bid,)).fetchone()["r"] == "ok"
    t_cancel = time.time()
    b = wait_batch_done(conn, bid, timeout=10)
    assert b["status"] == "cancelled"
    wait_until(lambda: batch(conn, bid)["finished_at"] is not None, 10, desc="finished_at set")
    b = batch(conn, bid)
    assert b["succeeded"] + b["failed"] + b["cancelled"] == 40
    assert b["cancelled"] >= 30, b
    late = [r for r in mock.all_requests() if r["t"] > t_cancel + 0.2]
    assert len(late) <= 1, late   # at most a transfer already started
    assert count(conn, "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s AND "
                       "status IN ('queued', 'running')", bid) == 0
    assert check_consistency(conn) == []
    # every item was held here, so the dropped ones are the batch's cancelled
    # ones, counted as such (not as deferred)
    _, text = http_get(f"http://127.0.0.1:{d.port}/metrics")
    m = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.decode().splitlines()
         if line.startswith("batchd_items_total{")}
    key = 'batchd_items_total{route="%s",outcome="%s"}'
    assert m[key % (ROUTE, "cancelled")] == b["cancelled"], m
    assert m[key % (ROUTE, "deferred")] == 0, m
    assert m[key % (ROUTE, "succeeded")] + m[key % (ROUTE, "failed")] == \
        b["succeeded"] + b["failed"], m


# ------------------------------------------------------------------ claim order, resumed claims

def test_higher_priority_batch_submitted_mid_drain_goes_first(db, conn, mock, batchd_factory):
    """While claims resume after the previous claim's last item (sql/010), a
    batch submitted at a higher priority is ahead of that point: its NOTIFY
    must send the next claim back to the head of the queue, so that its items
    start before the rest of the lower-priority batch."""
    start(batchd_factory, db, mock, provider={"url": mock.url("/item/{id}?latency_ms=10")},
          max_inflight=10, poll_interval="60s")
    low = submit(conn, "t", ROUTE, [{"id": f"low{i}"} for i in range(3000)], {"priority": 1})
    wait_until(lambda: batch(conn, low)["succeeded"] >= 300, 30, desc="the low batch under way")
    high = submit(conn, "t", ROUTE, [{"id": f"high{i}"} for i in range(100)], {"priority": 9})
    assert wait_batch_done(conn, high, timeout=30)["status"] == "completed"
    r = conn.execute(
        "SELECT (SELECT created_at FROM batchd.batches WHERE id = %(h)s) AS submitted, "
        "       (SELECT max(started_at) FROM batchd.items WHERE batch_id = %(h)s) AS last_high",
        {"h": high}).fetchone()
    # low-priority items started between the high batch's submit and the
    # start of its last item: at most what was in flight or held at the
    # submit: max_inflight 10 plus the local queue, which at about 1,000
    # items/s (10 in flight, 10 ms answers) holds what 30 ms and two claim
    # round trips drain, about 36 (src/claim.c, CLAIM_SPACING_US); 29 seen.
    # Were the NOTIFY not to send the claim back to the head, the high batch
    # would wait for the next claim from the head (at most 500 ms later):
    # 140 seen with claim_wake's reset of resume_ok removed.
    n_low = count(conn, "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                        "AND started_at > %s AND started_at < %s", low, r["submitted"], r["last_high"])
    assert n_low <= 50, f"{n_low} low-priority items were claimed while the high batch waited"
    assert batch(conn, low)["status"] != "completed", "the low batch ended first: nothing measured"
    assert wait_batch_done(conn, low, timeout=60)["status"] == "completed"
    assert check_consistency(conn) == []


def test_claims_do_not_walk_the_claimed_prefix(db, conn, mock, batchd_factory, capsys):
    """A claim from the head of the queue steps over the dead claim-index
    entries of every item claimed since the last vacuum; batchd resumes after
    its previous claim instead, so the claim index pages read per claim stay
    small however much was drained (autovacuum is off here, as it would be
    between two of its passes)."""
    n = 20000
    conn.execute("ALTER TABLE batchd.items SET (autovacuum_enabled = off)")
    conn.execute(f'ALTER DATABASE "{db.name}" SET track_functions = \'pl\'')
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])

    def claim_index_pages():
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT idx_blks_hit + idx_blks_read AS n FROM pg_statio_user_indexes "
                            "WHERE indexrelname = 'items_claim_idx'").fetchone()["n"]

    def claim_calls():
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT coalesce(sum(calls), 0) AS n FROM pg_stat_user_functions "
                            "WHERE schemaname = 'batchd' AND funcname = 'claim_items'").fetchone()["n"]

    # the submit's own index insertions are flushed to the statistics first
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")
    pages0 = claim_index_pages()
    d = start(batchd_factory, db, mock, max_inflight=100, poll_interval="60s")
    assert wait_batch_done(conn, bid, timeout=120)["status"] == "completed"
    d.stop()  # its sessions end: their statistics are flushed
    wait_until(lambda: claim_calls() > 0, 10, desc="claim statistics flushed")
    time.sleep(0.5)
    pages, calls = claim_index_pages() - pages0, claim_calls()
    per_claim = pages / calls
    with capsys.disabled():
        print(f"\n[claims] {calls} claims of {n} items read {pages} claim-index pages "
              f"({per_claim:.1f} per claim)")
    # From the head, a claim reads a root page, then every leaf page of the
    # claimed prefix: 20,000 entries fill ~100 leaves, so ~50 pages a claim on
    # average. Resumed, it reads the root and one or two leaves.
    assert per_claim < 10, f"{per_claim:.1f} claim-index pages per claim ({pages} / {calls})"
