"""Slow start: a provider's concurrency window starts at breaker_failures and
opens as answers succeed, so a provider that is down receives only the
initial window before its breaker opens, whatever max_inflight is, and one
that comes back gets a slow start again rather than the whole window.

Measured at the mock: the requests it received (/_mock/requests: arrival
"t" and answer "done") and its own peak in flight (/_mock/stats). The
provider sections set no max_concurrency: the window alone bounds them.
"""

import json
import os
import time
import urllib.request

import pytest

from conftest import items, submit, wait_batch_done, wait_until

ROUTE = "r"
FAILURES = 5


def prov(mock, **keys):
    p = {"url": mock.url("/item/{id}"), "timeout": "5s", "connect_timeout": "2s"}
    p.update({k: str(v) for k, v in keys.items()})
    return p


def log_lines(d, pattern):
    import re
    rx = re.compile(pattern)
    return [ln for ln in d.log().splitlines() if rx.search(ln)]


def status_provider(d, conn, name):
    """provider name's entry of /v1/status (with a token of tenant t)."""
    tok = conn.execute("SELECT batchd.create_token('t') AS t").fetchone()["t"]
    req = urllib.request.Request(d.base + "/v1/status",
                                 headers={"Authorization": f"Bearer {tok}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        st, body = r.status, r.read()
    assert st == 200, (st, body[:200])
    for p in json.loads(body)["providers"]:
        if p["name"] == name:
            return p
    raise AssertionError(f"provider {name} not in /v1/status")


def metric(d, name, provider):
    st, body = d.get("/metrics")
    assert st == 200
    for ln in body.decode().splitlines():
        if ln.startswith(f'{name}{{provider="{provider}"}} '):
            return float(ln.split()[-1])
    raise AssertionError(f"no {name} for {provider} in /metrics")


@pytest.mark.parametrize("max_inflight", [200, 1000])
def test_down_provider_gets_the_initial_window_only(db, conn, mock_factory, batchd_factory,
                                                    max_inflight, capsys):
    """a answers 500 from the first request: it receives at most
    breaker_failures + 2 requests before its breaker opens (the cooldown is
    longer than the test, so every request it got came before), and every
    item succeeds through b."""
    mock_a = mock_factory({"down": True, "error_status": 500, "latency_ms": 20})
    # b answers in 200 ms: its in flight shows its window, not how fast
    # the transfers start
    mock_b = mock_factory({"latency_ms": 200})
    d = batchd_factory(
        db=db,
        providers={
            "a": prov(mock_a, retries=2, backoff="20ms", breaker_failures=FAILURES,
                      breaker_cooldown="60s"),
            "b": prov(mock_b, breaker_failures=100000),
        },
        routes={ROUTE: "a, b"}, max_inflight=max_inflight)
    n = 2 * max_inflight
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    b = wait_batch_done(conn, bid, timeout=60)
    assert b["status"] == "completed" and b["succeeded"] == n, b
    rows = items(conn, bid)
    assert all(it["provider"] == "b" for it in rows)
    reqs_a = mock_a.all_requests()
    assert len(reqs_a) <= FAILURES + 2, \
        f"a received {len(reqs_a)} requests with max_inflight {max_inflight} " \
        f"(breaker_failures {FAILURES})"
    assert len(reqs_a) >= FAILURES
    assert log_lines(d, r"provider a: circuit breaker closed -> open")
    # b was healthy from the start: its window opened to max_inflight
    assert mock_b.stats()["max_inflight"] > max_inflight // 2, mock_b.stats()
    with capsys.disabled():
        print(f"\n[slow start] max_inflight {max_inflight}: a (down) received "
              f"{len(reqs_a)} requests; b max in flight {mock_b.stats()['max_inflight']}")


def test_slow_start_again_after_the_breaker_closes(db, conn, mock_factory, batchd_factory,
                                                    capsys):
    """a is down, its breaker opens; a recovers (200 ms answers), a probe
    closes the breaker; then the items go to a again, but in a slow start:
    within the first round trip after the probe a receives the initial
    window, not max_inflight, and after it the whole window."""
    latency = 0.2
    mock_a = mock_factory({"down": True, "error_status": 500})
    mock_b = mock_factory({"latency_ms": 200})
    d = batchd_factory(
        db=db,
        providers={
            "a": prov(mock_a, retries=1, backoff="20ms", breaker_failures=FAILURES,
                      breaker_cooldown="1s"),
            "b": prov(mock_b, breaker_failures=100000),
        },
        routes={ROUTE: "a, b"}, max_inflight=300)
    first = submit(conn, "t", ROUTE, [{"id": f"f{i}"} for i in range(100)])
    assert wait_batch_done(conn, first, timeout=30)["status"] == "completed"
    assert len(mock_a.all_requests()) <= FAILURES + 2
    p = status_provider(d, conn, "a")
    assert p["breaker"]["state"] in ("open", "half_open"), p["breaker"]

    mock_a.configure(down=False, latency_ms=int(latency * 1000))
    wait_until(lambda: log_lines(d, r"provider a: circuit breaker open -> half_open"),
               timeout=5, desc="a's breaker to go half-open")
    mock_a.reset()
    n = 3000
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    wait_until(lambda: log_lines(d, r"provider a: circuit breaker half_open -> closed"),
               timeout=10, desc="a's breaker to close")
    b = wait_batch_done(conn, bid, timeout=60)
    assert b["status"] == "completed" and b["succeeded"] == n, b
    reqs = sorted(mock_a.all_requests(), key=lambda r: r["t"])
    ok = [r for r in reqs if r["status"] == 200]
    assert ok, "a received no request after it recovered"
    probe = ok[0]
    # after the probe's answer: one round trip with the initial window
    after = [r for r in reqs if r["t"] >= probe["done"]]
    first_rtt = [r for r in after if r["t"] < probe["done"] + latency * 0.8]
    assert len(first_rtt) <= FAILURES + 1, \
        f"a received {len(first_rtt)} requests in the first round trip after its " \
        f"breaker closed (slow start from {FAILURES}, max_inflight 300)"
    # ... and then the whole window: the slow start does not stay slow
    peak = max_concurrent(after)
    assert peak >= 200, f"a never had more than {peak} in flight after the slow start"
    assert sum(1 for it in items(conn, bid) if it["provider"] == "a") >= n // 2
    lim = metric(d, "batchd_provider_concurrency_limit", "a")
    assert lim == 300, lim
    with capsys.disabled():
        print(f"\n[slow start] after recovery: {len(first_rtt)} requests to a in the first "
              f"round trip, then up to {peak} in flight; limit now {lim:.0f}")


def max_concurrent(reqs):
    ev = []
    for r in reqs:
        ev.append((r["t"], 1))
        ev.append((r["done"] if r["done"] else time.time(), -1))
    ev.sort()
    cur = best = 0
    for _, k in ev:
        cur += k
        best = max(best, cur)
    return best


def test_window_in_status_and_metrics(db, conn, mock, batchd_factory):
    """The window is visible: /v1/status (concurrency: mode, limit, phase)
    and batchd_provider_concurrency_limit, starting at breaker_failures."""
    d = batchd_factory(db=db, providers={"p": prov(mock, breaker_failures=4)},
                       routes={ROUTE: "p"}, max_inflight=50)
    p = status_provider(d, conn, "p")
    assert p["concurrency"] == {"mode": "fixed", "limit": 4, "phase": "slow_start",
                                "base_latency_ms": None}, p["concurrency"]
    assert metric(d, "batchd_provider_concurrency_limit", "p") == 4
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(200)])
    assert wait_batch_done(conn, bid, timeout=30)["status"] == "completed"
    p = status_provider(d, conn, "p")
    assert p["concurrency"]["limit"] == 50 and p["concurrency"]["phase"] == "steady", p
    assert metric(d, "batchd_provider_concurrency_limit", "p") == 50


# ------------------------------------------------------------------ max_concurrency = auto

def mock_window(mock, since):
    """(mean in flight, requests, 503s, seconds) at the mock since a stats
    snapshot `since` (time-weighted, from inflight_area)."""
    st = mock.stats()
    secs = st["now"] - since["now"]
    mean = (st["inflight_area"] - since["inflight_area"]) / secs
    reqs = st["requests"] - since["requests"]
    over = st["overflowed"] - since["overflowed"]
    return mean, reqs, over, secs, st


def test_auto_finds_the_capacity_and_follows_a_drop(db, conn, mock_factory, batchd_factory,
                                                     capsys):
    """A provider serving 50 at once at 20 ms (the rest queue; 503 beyond a
    queue of 50), max_concurrency = auto, max_inflight 1000: in flight at the
    mock settles between 35 and 80, throughput >= 0.85 of 50 / 20 ms, fewer
    than 1 % answered 503. Then its capacity drops to 10: the limit follows
    within 5 s and the 503 share stays under 5 %."""
    cap, base = 50, 0.02
    # the optimized build when there is one (contrib/check builds it for
    # valgrind): figures of the limiter, not of the sanitizers' overhead
    plain = os.environ.get("BATCHD_PLAIN_BIN")
    mock = mock_factory({"latency_ms": int(base * 1000), "capacity": cap, "queue_max": 50})
    d = batchd_factory(
        db=db,
        providers={"p": prov(mock, max_concurrency="auto", breaker_failures=100000,
                             retries=5, backoff="20ms")},
        routes={ROUTE: "p"}, max_inflight=1000, log_level="warn",
        binary=plain if plain and os.access(plain, os.X_OK) else None)
    n = 80_000
    for k in range(8):
        submit(conn, "t", ROUTE, [{"id": f"{k}-{i}"} for i in range(n // 8)])
    # 5 s to settle, then 15 s measured: 20 s of drain at capacity 50
    wait_until(lambda: mock.stats()["requests"] > 0, timeout=10, desc="the first request")
    time.sleep(5)
    s0 = mock.stats()
    time.sleep(15)
    mean, reqs, over, secs, s1 = mock_window(mock, s0)
    rate = (reqs - over) / secs
    ideal = cap / base
    lim = metric(d, "batchd_provider_concurrency_limit", "p")
    with capsys.disabled():
        print(f"\n[auto] capacity {cap} at {base * 1000:.0f} ms: mean in flight {mean:.1f}, "
              f"{rate:,.0f} answers/s ({rate / ideal:.3f} of {ideal:,.0f}), "
              f"503 {over}/{reqs} ({over / max(reqs, 1):.2%}), limit {lim:.0f}")
    assert 35 <= mean <= 80, f"mean in flight {mean:.1f} at the mock (capacity {cap})"
    assert rate >= 0.85 * ideal, f"{rate:.0f}/s < 0.85 x {ideal:.0f}/s"
    assert over < 0.01 * reqs, f"{over} of {reqs} answered 503"

    # the capacity drops to 10: the limit follows within 5 s
    mock.configure(capacity=10)
    t_drop = time.monotonic()
    s0 = mock.stats()
    followed = wait_until(
        lambda: metric(d, "batchd_provider_concurrency_limit", "p") <= 25 or None,
        timeout=5, desc="the limit to follow the capacity drop to 10")
    t_follow = time.monotonic() - t_drop
    time.sleep(10)
    mean2, reqs2, over2, secs2, _ = mock_window(mock, s0)
    lim2 = metric(d, "batchd_provider_concurrency_limit", "p")
    with capsys.disabled():
        print(f"[auto] capacity 10: limit <= 25 after {t_follow:.1f}s, now {lim2:.0f}; "
              f"mean in flight {mean2:.1f}, 503 {over2}/{reqs2} ({over2 / max(reqs2, 1):.2%})")
    assert followed
    assert over2 < 0.05 * reqs2, f"{over2} of {reqs2} answered 503 after the drop"
    assert lim2 <= 25, lim2
