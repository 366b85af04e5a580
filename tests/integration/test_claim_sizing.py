"""Claims and completion statements follow the drain rate, not the slot count
(issue #17): at a small max_inflight and a provider that answers at once,
each claim and each completion statement carries many items; at a slow
provider the local queue stays at its floor, so a lease holds next to
nothing unstarted and workers of a fleet share the queue as before."""

import time

from conftest import check_consistency, http_get, submit, wait_batch_done

ROUTE = "verify"


def start(batchd_factory, db, mock, url, **batchd_keys):
    prov = {"url": url, "timeout": "5s", "connect_timeout": "2s", "retries": "0",
            "breaker_failures": "100000"}
    return batchd_factory(db=db, providers={"mock": prov}, routes={ROUTE: "mock"},
                          **batchd_keys)


def metrics(d):
    _, text = http_get(f"http://127.0.0.1:{d.port}/metrics")
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split(" ", 1)
            out[name] = float(value)
    return out


def test_small_max_inflight_fast_provider_shares_statements(db, conn, mock, batchd_factory):
    # max_inflight 10 and a provider answering at once: the old sizing claimed
    # when one slot was free (one or two items a statement) and flushed every
    # five outcomes. Sized by the rate, a claim carries the items of about
    # 30 ms of drain, and a completion statement about 15 ms.
    n = 4000
    d = start(batchd_factory, db, mock, mock.url("/item/{id}"), max_inflight=10)
    m0 = metrics(d)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    ahead_seen = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        m = metrics(d)
        ahead_seen = max(ahead_seen, m["batchd_claim_ahead"])
        if conn.execute("SELECT status FROM batchd.batches WHERE id = %s",
                        (bid,)).fetchone()["status"] == "completed":
            break
        time.sleep(0.05)
    b = wait_batch_done(conn, bid, timeout=10)
    assert (b["status"], b["succeeded"]) == ("completed", n), b
    m = metrics(d)
    claims = m["batchd_claims_total"] - m0["batchd_claims_total"]
    claimed = m["batchd_claimed_total"] - m0["batchd_claimed_total"]
    flushes = m["batchd_flushes_total"] - m0["batchd_flushes_total"]
    assert claimed == n, m
    per_claim, per_flush = claimed / claims, n / flushes
    print(f"[claim sizing] {per_claim:.1f} items per claim, {per_flush:.1f} per flush, claim_ahead up to {ahead_seen:.0f}")
    # the old sizing (claim_ahead 1, a claim when one slot is free, a flush
    # every 5 outcomes) gave 5.8 items per claim and 7.2 per flush here (the
    # sanitizer build, the statements batching up while one is out); sized
    # by the rate, 19 and 23
    assert per_claim >= 10, f"{per_claim:.1f} items per claim ({claims:.0f} claims)"
    assert per_flush >= 12, f"{per_flush:.1f} items per flush ({flushes:.0f} flushes)"
    assert ahead_seen > 1, f"claim_ahead stayed at the floor: {ahead_seen}"
    # the mock never saw more than max_inflight at once
    assert mock.stats()["max_inflight"] <= 10
    assert check_consistency(conn) == []


def test_slow_provider_keeps_the_floor(db, conn, mock, batchd_factory):
    # 300 ms answers, max_inflight 10: about 33 items/s, so 30 ms plus two claim
    # round trips of drain is well under one item: the local queue stays at
    # its floor (a tenth of max_inflight) and the process never holds more
    # than max_inflight + 1 items.
    d = start(batchd_factory, db, mock, mock.url("/item/{id}?latency_ms=300"), max_inflight=10)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(60)])
    held, ahead = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = metrics(d)
        held.append(m["batchd_held_items"])
        ahead.append(m["batchd_claim_ahead"])
        if conn.execute("SELECT status FROM batchd.batches WHERE id = %s",
                        (bid,)).fetchone()["status"] == "completed":
            break
        time.sleep(0.02)
    b = wait_batch_done(conn, bid, timeout=10)
    assert b["status"] == "completed", b
    assert max(ahead) == 1, ahead
    assert max(held) <= 11, f"items held at once: {max(held)}"


def test_claim_ahead_set_is_fixed(db, conn, mock, batchd_factory):
    # an explicit claim_ahead is used as it is, whatever the rate
    d = start(batchd_factory, db, mock, mock.url("/item/{id}"), max_inflight=10, claim_ahead=2)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(1500)])
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.add(metrics(d)["batchd_claim_ahead"])
        if conn.execute("SELECT status FROM batchd.batches WHERE id = %s",
                        (bid,)).fetchone()["status"] == "completed":
            break
        time.sleep(0.05)
    assert wait_batch_done(conn, bid, timeout=10)["status"] == "completed"
    assert seen == {2}, seen
