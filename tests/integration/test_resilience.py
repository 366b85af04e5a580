"""Resilience, measured at the provider and in the database: the token bucket,
max_concurrency, Retry-After pauses, retries with full-jitter backoff, the
circuit breaker, failover, deferral back to the queue when every breaker is
open or a wait is long, per-group limits, timeouts and idempotency keys.

Every assertion is about what the (mock) provider saw -- arrival times "t" and
answer times "done" from /_mock/requests, /_mock/stats -- and about the rows
batchd wrote (status, attempts, run_after, provider, tries, error). Each
provider gets its own mock instance where a test must control it separately.

Every wait is bounded; cooldowns and backoffs are short so the file runs in
about a minute.
"""

import re
import time

import pytest

from conftest import batch, check_consistency, items, submit, wait_batch_done, wait_until

ROUTE = "r"
NO_BREAKER = "100000"   # a breaker that never opens, for tests about something else


# ------------------------------------------------------------------ helpers

def prov(mock, path="/item/{id}", **keys):
    """A [provider] section for mock: short timeouts, plus keys (str()-ed)."""
    p = {"url": mock.url(path), "timeout": "5s", "connect_timeout": "2s"}
    p.update({k: str(v) for k, v in keys.items()})
    return p


def by_id(reqs):
    """id -> that id's requests, in arrival order."""
    out = {}
    for r in sorted(reqs, key=lambda r: r["t"]):
        out.setdefault(r["id"], []).append(r)
    return out


def tries_of(conn, it):
    """items.tries (jsonb, from migration 003) of an item row, as a dict."""
    assert "tries" in it, ("batchd.items has no tries column: migration "
                           "sql/003_resilience.* not applied / not there yet")
    return it["tries"] or {}


def item_by_payload_id(rows):
    return {str(it["payload"]["id"]): it for it in rows}


def max_in_window(times, width):
    """Largest number of arrivals in any half-open window [x, x + width).
    The maximum is reached by a window that starts at an arrival, so sliding
    the window start over the arrivals covers every window."""
    ts = sorted(times)
    best, j = 0, 0
    for i in range(len(ts)):
        while j < len(ts) and ts[j] < ts[i] + width:
            j += 1
        best = max(best, j - i)
    return best


def max_overlap(reqs):
    """Most requests in flight at the mock at once, from (t, done)."""
    ev = []
    for r in reqs:
        ev.append((r["t"], 1))
        ev.append((r["done"] if r["done"] is not None else float("inf"), -1))
    ev.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def wait_batch_or_report(conn, mock, bid, timeout, why):
    """Wait (bounded) for the batch to finish; on timeout fail with what was
    done, what the provider saw and where the items are."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = batch(conn, bid)
        if b["status"] in ("completed", "completed_with_errors", "failed", "cancelled"):
            return b
        time.sleep(0.05)
    st = conn.execute("SELECT status, count(*) AS n FROM batchd.items WHERE batch_id = %s "
                      "GROUP BY status ORDER BY status", (bid,)).fetchall()
    reqs = sorted(mock.all_requests(), key=lambda r: r["t"])
    waves = []
    for r in reqs:
        if not waves or r["t"] - waves[-1][0] > 0.5:
            waves.append([r["t"], 0])
        waves[-1][1] += 1
    t0 = reqs[0]["t"] if reqs else 0
    pytest.fail(f"batch not done after {timeout}s ({why}): items {[(r['status'], r['n']) for r in st]}; "
                f"the provider saw {len(reqs)} requests, in bursts (start s: count) "
                f"{[(round(w[0] - t0, 2), w[1]) for w in waves]}", pytrace=False)


def log_lines(d, pattern):
    return [ln for ln in d.log().splitlines() if re.search(pattern, ln)]


def db_now_delta(conn, item_id):
    """run_after - now() in seconds, computed by the database."""
    return conn.execute("SELECT extract(epoch FROM run_after - now())::float8 AS s "
                        "FROM batchd.items WHERE id = %s", (item_id,)).fetchone()["s"]


# ------------------------------------------------------------------ token bucket

def test_rate_held_at_provider(db, conn, mock, batchd_factory, capsys):
    rate, burst, n = 20.0, 2, 200
    batchd_factory(db=db, providers={"a": prov(mock, rate="20/s", burst=burst,
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"}, max_inflight=100)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    b = wait_batch_done(conn, bid, timeout=n / rate + 15)
    assert b["status"] == "completed" and b["succeeded"] == n, b

    reqs = mock.all_requests()
    assert len(reqs) == n, f"{len(reqs)} requests for {n} items"
    ts = sorted(r["t"] for r in reqs)
    span = ts[-1] - ts[0]
    # n arrivals: the first `burst` go at once, the rest one token each, so the
    # steady rate is (n - 1) / span ~= rate (slightly above, by the burst).
    achieved = (n - 1) / span
    # Tolerance +1 per window: the bucket bounds the instants batchd *starts*
    # transfers; the mock stamps *arrivals*, each later than its start by a
    # small, varying delay d (loop scheduling, connect, kernel). A window of
    # width T at the mock therefore covers starts spread over at most T + max(d),
    # which, for max(d) under one token interval (1/rate = 50 ms), admits at most
    # one token more than burst + rate*T. Nothing else is tolerated.
    report = {}
    for width in (0.5, 1.0, 2.0, 5.0):
        got = max_in_window(ts, width)
        limit = burst + rate * width + 1
        report[width] = got
        assert got <= limit, (f"{got} requests within {width}s (limit burst {burst} + "
                              f"{rate}/s x {width}s + 1 = {limit})")
    assert 18.0 <= achieved <= 20.5, f"achieved {achieved:.2f} req/s over {span:.2f}s"
    with capsys.disabled():
        print(f"\n[rate] {n} requests in {span:.2f}s = {achieved:.2f}/s; max per window "
              + ", ".join(f"{w}s: {c}" for w, c in report.items()))


def test_max_concurrency_at_provider(db, conn, mock, batchd_factory, capsys):
    batchd_factory(db=db, providers={"a": prov(mock, "/item/{id}?latency_ms=200",
                                               max_concurrency=3,
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"}, max_inflight=100)
    n = 30
    t0 = time.monotonic()
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    b = wait_batch_done(conn, bid, timeout=20)
    elapsed = time.monotonic() - t0
    assert b["status"] == "completed", b
    st = mock.stats()
    overlap = max_overlap(mock.all_requests())
    assert st["max_inflight"] <= 3, f"more than max_concurrency in flight: {st}"
    assert st["max_inflight"] >= 2, f"max_concurrency 3 not used: {st}"
    assert overlap <= 3, overlap
    # 30 x 200 ms, 3 at a time: 2 s at best
    assert elapsed >= 30 * 0.2 / 3 - 0.1, elapsed
    with capsys.disabled():
        print(f"\n[concurrency] max_inflight at mock {st['max_inflight']}, "
              f"from (t, done) {overlap}; {elapsed:.2f}s for {n} x 200ms")


# ------------------------------------------------------------------ Retry-After

def test_retry_after_pauses_whole_provider(db, conn, mock, batchd_factory, capsys):
    # the first request for id 1 answers 429 with Retry-After: 2, then OK
    mock.configure(ids={"1": {"fail_first": 1, "error_status": 429, "retry_after": "2"}})
    d = batchd_factory(db=db, providers={"a": prov(mock, rate="10/s", backoff="50ms",
                                                   breaker_failures=NO_BREAKER)},
                       routes={ROUTE: "a"})
    n = 10
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(1, n + 1)])
    b = wait_batch_done(conn, bid, timeout=15)
    assert b["status"] == "completed" and b["succeeded"] == n, (b, items(conn, bid))

    reqs = sorted(mock.all_requests(), key=lambda r: r["t"])
    first429 = [r for r in reqs if r["status"] == 429]
    assert len(first429) == 1, reqs
    r429 = first429[0]
    pause_start, pause_end = r429["done"], r429["done"] + 2.0
    # A request batchd started before it read the 429 may reach the mock just
    # after the answer left it: 50 ms of grace at the start, none at the end.
    during = [r for r in reqs if pause_start + 0.05 < r["t"] < pause_end]
    assert during == [], (f"{len(during)} request(s) during the Retry-After pause "
                          f"(429 answered at {pause_start:.3f}): "
                          f"{[(r['id'], round(r['t'] - pause_start, 3)) for r in during]}")
    after = [r for r in reqs if r["t"] >= pause_start + 0.05]
    assert after, "nothing was sent after the pause"
    first_after = min(r["t"] for r in after) - pause_start
    assert first_after >= 2.0, first_after
    assert first_after < 4.0, f"the provider stayed paused {first_after:.2f}s for Retry-After: 2"
    # item 1 was answered on its second try; everything once more in total
    ids = by_id(reqs)
    assert len(ids["1"]) == 2 and ids["1"][-1]["status"] == 200, ids["1"]
    assert len(reqs) == n + 1, len(reqs)
    one = item_by_payload_id(items(conn, bid))["1"]
    assert one["status"] == "succeeded" and one["provider"] == "a", one
    assert one["attempts"] == 1, one
    assert log_lines(d, r"WARN .*provider a: paused"), "no WARN line for the pause"
    assert tries_of(conn, one) == {"a": 2}, one
    with capsys.disabled():
        print(f"\n[retry-after] first request after the 429: +{first_after:.3f}s")


def test_long_retry_after_requeues_item(db, conn, mock, batchd_factory, capsys):
    mock.configure(ids={"1": {"fail_first": 1, "error_status": 429, "retry_after": "60"}})
    batchd_factory(db=db, providers={"a": prov(mock, requeue_after="1s", backoff="50ms",
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"})
    bid = submit(conn, "t", ROUTE, [{"id": 1}])
    it_id = items(conn, bid)[0]["id"]

    def deferred():
        it = items(conn, bid)[0]
        return it if it["status"] == "queued" and it["error"] else None

    it = wait_until(deferred, timeout=10, desc="item back in the queue")
    ahead = db_now_delta(conn, it_id)
    assert 55 <= ahead <= 61, f"run_after is {ahead:.1f}s ahead, expected ~60s"
    assert it["attempts"] == 0, f"the deferral spent an attempt: {it['attempts']}"
    assert it["worker_id"] is None, it
    assert "429" in it["error"], it["error"]
    assert tries_of(conn, it).get("a") == 1, it
    time.sleep(0.5)
    reqs = mock.all_requests()
    assert len(reqs) == 1 and reqs[0]["status"] == 429, reqs
    assert batch(conn, bid)["status"] not in ("completed", "failed",
                                              "completed_with_errors"), batch(conn, bid)
    with capsys.disabled():
        print(f"\n[long retry-after] run_after {ahead:.1f}s ahead, attempts {it['attempts']}")


def test_requeued_item_is_claimed_when_due_during_a_long_drain(db, conn, mock, batchd_factory,
                                                              capsys):
    """A requeued item whose run_after passes announces nothing, and while the
    queue stays busy batchd's claims resume after their previous one (sql/010),
    past that item. A claim from the head at least every 500 ms must still
    pick it up soon after it is due, not when the drain ends or at the next
    poll (60 s here)."""
    mock.configure(latency_ms=10,
                   ids={"5": {"fail_first": 1, "error_status": 429, "retry_after": "1"}})
    batchd_factory(db=db, providers={"a": prov(mock, requeue_after="200ms", backoff="50ms",
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"}, max_inflight=10, poll_interval="60s")
    n = 4000
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    b = wait_batch_done(conn, bid, timeout=90)
    assert (b["status"], b["succeeded"]) == ("completed", n), b
    reqs = by_id(mock.all_requests())
    first, second = reqs["5"][0]["t"], reqs["5"][-1]["t"]
    assert len(reqs["5"]) == 2 and reqs["5"][0]["status"] == 429, reqs["5"]
    last = max(r["t"] for rs in reqs.values() for r in rs)
    gap = second - first
    with capsys.disabled():
        print(f"\n[requeued when due] retried {gap:.2f}s after its 429 (Retry-After 1 s); "
              f"the drain went on {last - second:.1f}s more")
    assert 0.9 <= gap < 2.5, f"the requeued item was retried {gap:.2f}s after a Retry-After of 1 s"
    assert last - second > 1.0, "the drain ended too soon after the retry: nothing measured"
    assert check_consistency(conn) == []


# ------------------------------------------------------------------ breaker, failover

def test_breaker_opens_failover_then_recovers(db, conn, mock_factory, batchd_factory, capsys):
    mock_a = mock_factory({"down": True, "error_status": 500})
    mock_b = mock_factory()
    failures, cooldown = 5, 2.0
    d = batchd_factory(
        db=db,
        providers={
            # one transfer at a time on a, so the breaker sees each failure
            # before the next request leaves (otherwise everything sent while
            # CLOSED is legitimately in flight when it opens)
            "a": prov(mock_a, retries=1, backoff="20ms", max_concurrency=1,
                      breaker_failures=failures, breaker_cooldown="2s"),
            "b": prov(mock_b, breaker_failures=NO_BREAKER),
        },
        routes={ROUTE: "a, b"}, max_inflight=100)
    n = 300
    t0 = time.monotonic()
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    b = wait_batch_done(conn, bid, timeout=30)
    wall = time.monotonic() - t0
    assert b["status"] == "completed" and b["succeeded"] == n, b
    rows = items(conn, bid)
    assert all(it["provider"] == "b" for it in rows), \
        [(it["seq"], it["provider"]) for it in rows if it["provider"] != "b"][:10]

    reqs_a = sorted(mock_a.all_requests(), key=lambda r: r["t"])
    reqs_b = mock_b.all_requests()
    assert len(reqs_b) == n, len(reqs_b)
    # a: breaker_failures to open, then at most one probe per cooldown
    probes_allowed = 1 + int(wall / cooldown)
    assert failures <= len(reqs_a) <= failures + probes_allowed, \
        f"a received {len(reqs_a)} requests (breaker_failures {failures})"
    for prev, cur in zip(reqs_a[failures - 1:], reqs_a[failures:]):
        gap = cur["t"] - prev["done"]
        assert gap >= cooldown - 0.05, f"probe {gap:.2f}s after the last failure on a"
    opened = log_lines(d, r"WARN .*provider a: circuit breaker closed -> open")
    assert opened, "no WARN 'circuit breaker closed -> open' for a:\n" + d.log()[-2000:]
    assert not log_lines(d, r"provider b: circuit breaker")

    # a recovers: after the cooldown a probe goes to a, succeeds, closes the breaker
    mock_a.configure(down=False)
    wait_until(lambda: log_lines(d, r"WARN .*provider a: circuit breaker open -> half_open"),
               timeout=cooldown + 3, desc="a's breaker to go half-open")
    n_a_before = len(reqs_a)
    probe = submit(conn, "t", ROUTE, [{"id": "probe"}])
    pb = wait_batch_done(conn, probe, timeout=10)
    pit = items(conn, probe)[0]
    assert pb["status"] == "completed" and pit["provider"] == "a", (pb, pit)
    closed = wait_until(
        lambda: log_lines(d, r"WARN .*provider a: circuit breaker half_open -> closed"),
        timeout=5, desc="'half_open -> closed' for a")
    # ... and items go to a again
    b2 = submit(conn, "t", ROUTE, [{"id": f"x{i}"} for i in range(50)])
    assert wait_batch_done(conn, b2, timeout=15)["status"] == "completed"
    assert all(it["provider"] == "a" for it in items(conn, b2)), \
        [it["provider"] for it in items(conn, b2)]
    assert len(mock_a.all_requests()) == n_a_before + 1 + 50
    assert len(mock_b.all_requests()) == n
    assert check_consistency(conn) == []
    # items.tries accounts for every request a and b received in the first batch
    assert sum(tries_of(conn, it).get("a", 0) for it in rows) == len(reqs_a)
    assert all(tries_of(conn, it).get("b") == 1 for it in rows)
    with capsys.disabled():
        print(f"\n[breaker] {n} items via b in {wall:.2f}s; a received {n_a_before} "
              f"requests; log: {opened[0].split(' ', 2)[-1]!r}; {closed[0].split(' ', 2)[-1]!r}")


def test_all_breakers_open_requeues_without_attempt(db, conn, mock_factory, batchd_factory,
                                                     capsys):
    mock_a = mock_factory({"down": True, "error_status": 500})
    mock_b = mock_factory({"down": True, "error_status": 503})
    cooldown = 2.0
    d = batchd_factory(
        db=db,
        providers={
            "a": prov(mock_a, retries=3, backoff="20ms", max_concurrency=1,
                      breaker_failures=2, breaker_cooldown="2s"),
            "b": prov(mock_b, retries=3, backoff="20ms", max_concurrency=1,
                      breaker_failures=2, breaker_cooldown="2s"),
        },
        routes={ROUTE: "a, b"}, poll_interval="200ms")
    n = 10
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)], {"max_attempts": 3})

    def all_deferred():
        rows = items(conn, bid)
        return rows if all(it["status"] == "queued" and it["error"] for it in rows) else None

    rows = wait_until(all_deferred, timeout=cooldown, interval=0.02,
                      desc="every item back in the queue")
    for it in rows:
        assert it["attempts"] == 0, f"deferral spent an attempt: {it}"
        assert it["worker_id"] is None, it
        assert "breaker" in it["error"], it["error"]
        ahead = db_now_delta(conn, it["id"])
        # at the earliest half-open time: ~cooldown after the breakers opened
        assert cooldown - 1.0 < ahead <= cooldown + 0.5, f"run_after {ahead:.2f}s ahead"
    assert batch(conn, bid)["failed"] == 0
    n_a, n_b = len(mock_a.all_requests()), len(mock_b.all_requests())
    assert (n_a, n_b) == (2, 2), f"a got {n_a}, b got {n_b} (breaker_failures 2 each)"
    assert log_lines(d, r"WARN .*provider a: circuit breaker closed -> open")
    assert log_lines(d, r"WARN .*provider b: circuit breaker closed -> open")

    # recovery: b heals; after the cooldown the items finish (a stays down)
    mock_b.configure(down=False)
    t0 = time.monotonic()
    # half-open after the cooldown, probe, close; items deferred while the probe
    # was out come back one cooldown later at worst
    b = wait_batch_or_report(conn, mock_b, bid, 3 * cooldown + 3,
                             "b healed; its breaker should go half-open, probe and close")
    took = time.monotonic() - t0
    assert b["status"] == "completed" and b["succeeded"] == n, (b, items(conn, bid))
    rows = items(conn, bid)
    assert all(it["provider"] == "b" for it in rows), [it["provider"] for it in rows]
    assert all(it["attempts"] == 1 for it in rows), [it["attempts"] for it in rows]
    # a (still down) went half-open after its cooldown too, and got its probe
    assert log_lines(d, r"WARN .*provider a: circuit breaker open -> half_open"), \
        "a's breaker never left OPEN:\n" + "\n".join(log_lines(d, "circuit breaker"))
    assert log_lines(d, r"WARN .*provider b: circuit breaker half_open -> closed")
    reqs_a = sorted(mock_a.all_requests(), key=lambda r: r["t"])
    assert len(reqs_a) >= 3, f"a was never probed after its cooldown ({len(reqs_a)} requests)"
    assert reqs_a[2]["t"] - reqs_a[1]["done"] >= cooldown - 0.05
    assert check_consistency(conn) == []
    # items.tries holds the tries of the item's last run (after its deferrals):
    # the run that succeeded took exactly one try, on b
    assert all(tries_of(conn, it).get("b", 0) >= 1 for it in rows), \
        [tries_of(conn, it) for it in rows]
    with capsys.disabled():
        print(f"\n[all open] deferred with attempts 0; finished {took:.2f}s after b healed "
              f"(cooldown {cooldown}s); a got {len(mock_a.all_requests())}, "
              f"b got {len(mock_b.all_requests())} requests")


# ------------------------------------------------------------------ outcome classes

def test_permanent_fails_at_once_transient_retried(db, conn, mock, batchd_factory):
    retries = 2
    mock.configure(ids={"nf": {"status": 404}, "se": {"status": 500},
                        "tm": {"status": 429}, "rt": {"status": 408},
                        "bad": {"status": 400}, "moved": {"status": 301}})
    batchd_factory(db=db, providers={"a": prov(mock, retries=retries, backoff="10ms",
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"})
    ids = ["ok", "nf", "se", "tm", "rt", "bad", "moved"]
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in ids])
    b = wait_batch_done(conn, bid, timeout=15)
    assert (b["succeeded"], b["failed"]) == (1, len(ids) - 1), b
    rows = item_by_payload_id(items(conn, bid))
    seen = by_id(mock.all_requests())
    expect = {"ok": 1, "nf": 1, "se": retries + 1, "tm": retries + 1, "rt": retries + 1,
              "bad": 1, "moved": 1}
    got = {i: len(seen.get(i, [])) for i in ids}
    assert got == expect, f"requests per id {got}, expected {expect}"
    for i in ids:
        it = rows[i]
        assert it["attempts"] == 1, (i, it)
        if i == "ok":
            assert it["status"] == "succeeded" and it["error"] is None, it
            continue
        assert it["status"] == "failed", (i, it)
        assert it["provider"] == "a", (i, it)
        assert it["error"], (i, it)
    assert rows["nf"]["http_status"] == 404 and "404" in rows["nf"]["error"]
    assert rows["se"]["http_status"] == 500 and "500" in rows["se"]["error"]
    assert "redirect" in rows["moved"]["error"].lower(), rows["moved"]
    assert {i: tries_of(conn, rows[i]) for i in ids} == {i: {"a": expect[i]} for i in ids}


def test_retry_on_and_permanent_on(db, conn, mock, batchd_factory):
    retries = 2
    mock.configure(ids={"r404": {"status": 404}, "p503": {"status": 503},
                        "p500": {"status": 500}})
    batchd_factory(db=db, providers={"a": prov(mock, retries=retries, backoff="10ms",
                                               retry_on="404", permanent_on="503",
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"})
    bid = submit(conn, "t", ROUTE, [{"id": "r404"}, {"id": "p503"}, {"id": "p500"}])
    b = wait_batch_done(conn, bid, timeout=15)
    assert b["failed"] == 3, b
    rows = item_by_payload_id(items(conn, bid))
    seen = by_id(mock.all_requests())
    got = {i: len(v) for i, v in seen.items()}
    assert got == {"r404": retries + 1, "p503": 1, "p500": retries + 1}, got
    assert rows["p503"]["http_status"] == 503 and "503" in rows["p503"]["error"]
    assert rows["r404"]["http_status"] == 404, rows["r404"]
    assert tries_of(conn, rows["r404"]) == {"a": retries + 1}
    assert tries_of(conn, rows["p503"]) == {"a": 1}


def test_failover_on_permanent(db, conn, mock_factory, batchd_factory):
    mock_a = mock_factory({"ids": {"nf": {"status": 404}}})
    mock_b = mock_factory()
    batchd_factory(
        db=db,
        providers={"a": prov(mock_a, retries=2, backoff="10ms", breaker_failures=NO_BREAKER),
                   "b": prov(mock_b, retries=2, backoff="10ms", breaker_failures=NO_BREAKER)},
        routes={"fo": {"providers": "a, b", "failover_on_permanent": "yes"},
                "nofo": "a, b"})
    fo = submit(conn, "t", "fo", [{"id": "nf"}, {"id": "ok"}])
    assert wait_batch_done(conn, fo, timeout=10)["status"] == "completed"
    rows = item_by_payload_id(items(conn, fo))
    assert rows["nf"]["provider"] == "b" and rows["nf"]["status"] == "succeeded", rows["nf"]
    assert rows["ok"]["provider"] == "a", rows["ok"]
    assert len(by_id(mock_a.all_requests())["nf"]) == 1
    assert len(by_id(mock_b.all_requests())["nf"]) == 1
    assert tries_of(conn, rows["nf"]) == {"a": 1, "b": 1}
    assert tries_of(conn, rows["ok"]) == {"a": 1}
    # without failover_on_permanent the 404 fails the item on a
    mock_a.reset()
    mock_b.reset()
    nofo = submit(conn, "t", "nofo", [{"id": "nf"}])
    b = wait_batch_done(conn, nofo, timeout=10)
    it = items(conn, nofo)[0]
    assert b["status"] == "failed" and it["provider"] == "a" and it["http_status"] == 404, it
    assert len(mock_a.all_requests()) == 1 and mock_b.all_requests() == []
    assert tries_of(conn, it) == {"a": 1}


def test_retries_spent_fail_over_to_next(db, conn, mock_factory, batchd_factory):
    mock_a = mock_factory({"ids": {"x": {"status": 500}}})
    mock_b = mock_factory()
    batchd_factory(
        db=db,
        providers={"a": prov(mock_a, retries=2, backoff="10ms", breaker_failures=NO_BREAKER),
                   "b": prov(mock_b, retries=2, backoff="10ms", breaker_failures=NO_BREAKER)},
        routes={ROUTE: "a, b"})
    bid = submit(conn, "t", ROUTE, [{"id": "x"}])
    assert wait_batch_done(conn, bid, timeout=10)["status"] == "completed"
    it = items(conn, bid)[0]
    assert it["provider"] == "b" and it["error"] is None, it
    assert len(mock_a.all_requests()) == 3 and len(mock_b.all_requests()) == 1
    assert tries_of(conn, it) == {"a": 3, "b": 1}


# ------------------------------------------------------------------ timeout, idempotency

def test_hanging_provider_hits_timeout(db, conn, mock, batchd_factory, capsys):
    batchd_factory(db=db, providers={"a": prov(mock, "/item/{id}?mode=hang", timeout="1s",
                                               retries=0, breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"})
    t0 = time.monotonic()
    bid = submit(conn, "t", ROUTE, [{"id": 1}])
    b = wait_batch_done(conn, bid, timeout=10)
    took = time.monotonic() - t0
    it = items(conn, bid)[0]
    assert b["status"] == "failed" and it["status"] == "failed", it
    assert "timeout" in it["error"].lower() or "timed out" in it["error"].lower(), it["error"]
    assert 0.9 <= took <= 3.0, f"a 1s timeout failed the item after {took:.2f}s"
    st = mock.stats()
    assert st["requests"] == 1 and st["dropped"] == 1, st
    assert tries_of(conn, it) == {"a": 1}
    with capsys.disabled():
        print(f"\n[timeout] failed after {took:.2f}s: {it['error']!r}")


def test_idempotency_key_stable_across_retries(db, conn, mock, batchd_factory):
    mock.configure(fail_first=2)
    batchd_factory(db=db, providers={"a": prov(mock, retries=3, backoff="10ms",
                                               idempotency_header="Idempotency-Key",
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"})
    n = 5
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    assert wait_batch_done(conn, bid, timeout=10)["status"] == "completed"
    seen = by_id(mock.all_requests())
    assert sorted(seen) == [str(i) for i in range(n)]
    keys = {}
    for i, reqs in seen.items():
        assert len(reqs) == 3, (i, reqs)
        ks = {r["idempotency_key"] for r in reqs}
        assert len(ks) == 1, f"id {i}: keys differ between tries: {ks}"
        k = ks.pop()
        assert k, f"id {i}: no Idempotency-Key sent"
        keys[i] = k
    assert len(set(keys.values())) == n, f"items share keys: {keys}"


# ------------------------------------------------------------------ backoff

def test_backoff_full_jitter_capped(db, conn, mock, batchd_factory, capsys):
    base, cap_max, retries, n = 0.2, 0.5, 3, 12
    mock.configure(fail_first=3)
    batchd_factory(db=db, providers={"a": prov(mock, retries=retries, backoff="200ms",
                                               backoff_max="500ms",
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: "a"})
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    b = wait_batch_done(conn, bid, timeout=15)
    assert b["status"] == "completed", (b, items(conn, bid))
    seen = by_id(mock.all_requests())
    # slack: from the mock sending the answer to batchd reading it, arming the
    # timer and the next request arriving -- a few ms on loopback; 60 ms allowed
    slack = 0.06
    gaps = {1: [], 2: [], 3: []}
    for i, reqs in seen.items():
        assert len(reqs) == retries + 1, (i, len(reqs))
        for k in range(1, retries + 1):
            gap = reqs[k]["t"] - reqs[k - 1]["done"]
            cap = min(cap_max, base * 2 ** (k - 1))
            assert 0 <= gap <= cap + slack, \
                f"id {i}: retry {k} came {gap * 1000:.0f} ms after the failure (cap {cap * 1000:.0f} ms)"
            gaps[k].append(gap)
    allg = [g for v in gaps.values() for g in v]
    # full jitter: delays spread over [0, cap], not pinned at the cap
    assert min(allg) < 0.1, f"no short delay among {len(allg)}: jitter missing? {allg}"
    # exponential: the third retry's cap (500 ms) is above the first's (200 ms);
    # P(all 12 third delays <= 210 ms | uniform on [0, 500]) = 0.42^12 ~ 3e-5
    assert max(gaps[3]) > base + 0.01, f"third retries never waited past {base}s: {gaps[3]}"
    for it in items(conn, bid):
        assert tries_of(conn, it) == {"a": retries + 1}, it
    with capsys.disabled():
        print("\n[backoff] max gap per retry: " + ", ".join(
            f"#{k}: {max(v) * 1000:.0f}ms (cap {min(cap_max, base * 2 ** (k - 1)) * 1000:.0f})"
            for k, v in gaps.items()))


# ------------------------------------------------------------------ per-group limits

def test_group_concurrency_one(db, conn, mock, batchd_factory, capsys):
    accounts, per, latency = 5, 6, 0.15
    batchd_factory(db=db, providers={"a": prov(mock, f"/item/{{id}}?latency_ms={int(latency * 1000)}",
                                               breaker_failures=NO_BREAKER)},
                   routes={ROUTE: {"providers": "a", "group_concurrency": "1"}},
                   max_inflight=50)
    payloads = [{"id": f"acct{a}-{k}", "acct": f"acct{a}"}
                for k in range(per) for a in range(accounts)]
    t0 = time.monotonic()
    bid = submit(conn, "t", ROUTE, payloads, {"group_key": "acct"})
    # ~1 s expected (6 x 150 ms per account, accounts in parallel); 4.5 s if
    # everything ran one at a time
    b = wait_batch_or_report(conn, mock, bid, 8,
                             f"{accounts} groups x {per} items of {latency}s, group_concurrency 1")
    wall = time.monotonic() - t0
    assert b["status"] == "completed", b
    rows = items(conn, bid)
    assert all(it["group_key"] == it["payload"]["acct"] for it in rows)
    reqs = mock.all_requests()
    assert len(reqs) == accounts * per
    acct_of = {p["id"]: p["acct"] for p in payloads}
    per_acct = {}
    for r in reqs:
        per_acct.setdefault(acct_of[r["id"]], []).append(r)
    for acct, rs in per_acct.items():
        rs.sort(key=lambda r: r["t"])
        for prev, cur in zip(rs, rs[1:]):
            assert cur["t"] >= prev["done"], (
                f"{acct}: {cur['id']} arrived {1000 * (prev['done'] - cur['t']):.1f} ms "
                f"before {prev['id']} was answered (group_concurrency 1)")
    overlap = max_overlap(reqs)
    assert overlap >= 2, "accounts were not served in parallel"
    span = max(r["done"] for r in reqs) - min(r["t"] for r in reqs)
    sequential = accounts * per * latency
    assert span < 0.6 * sequential, f"{span:.2f}s, sequential would be {sequential:.2f}s"
    with capsys.disabled():
        print(f"\n[group concurrency] {accounts}x{per} items at {latency * 1000:.0f} ms: "
              f"{span:.2f}s at the mock ({wall:.2f}s submit->done), max parallel "
              f"{overlap}, sequential {sequential:.1f}s")


def test_group_rate_spaces_starts(db, conn, mock, batchd_factory, capsys):
    accounts, per, rate = 3, 4, 4.0
    batchd_factory(db=db, providers={"a": prov(mock, breaker_failures=NO_BREAKER)},
                   routes={ROUTE: {"providers": "a", "group_rate": "4/s"}},
                   max_inflight=50)
    payloads = [{"id": f"g{a}-{k}", "acct": f"g{a}"} for k in range(per) for a in range(accounts)]
    bid = submit(conn, "t", ROUTE, payloads, {"group_key": "acct"})
    # (per - 1) / rate = 0.75 s expected
    b = wait_batch_or_report(conn, mock, bid, 6,
                             f"{accounts} groups x {per} items, group_rate {rate}/s")
    assert b["status"] == "completed", b
    reqs = mock.all_requests()
    acct_of = {p["id"]: p["acct"] for p in payloads}
    per_acct = {}
    for r in reqs:
        per_acct.setdefault(acct_of[r["id"]], []).append(r["t"])
    # the claim spaces the starts; arrivals add a varying delivery delay of a
    # few ms on top, so 30 ms of tolerance under 1/rate
    min_gap = 1 / rate - 0.03
    gaps = []
    for acct, ts in per_acct.items():
        ts.sort()
        assert len(ts) == per
        for x, y in zip(ts, ts[1:]):
            gaps.append(y - x)
            assert y - x >= min_gap, f"{acct}: starts {1000 * (y - x):.0f} ms apart (rate 4/s)"
    # other groups flow: every group's first request within the first interval
    firsts = sorted(ts[0] for ts in per_acct.values())
    assert firsts[-1] - firsts[0] < 1 / rate, f"groups waited on each other: {firsts}"
    span = max(r["t"] for r in reqs) - min(r["t"] for r in reqs)
    assert span < (per * accounts - 1) / rate, f"{span:.2f}s: groups were serialised"
    with capsys.disabled():
        print(f"\n[group rate] min gap within a group {1000 * min(gaps):.0f} ms "
              f"(1/rate = {1000 / rate:.0f} ms); span {span:.2f}s")
