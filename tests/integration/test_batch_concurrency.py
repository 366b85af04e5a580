"""Batch-level concurrency (issue #20.2): a route's `batch_concurrency = N`
runs at most N of its batches at once, fleet-wide, and shares each claim
between them, so that a small batch is not stuck behind a large one.

Real PostgreSQL, real batchd (one or two processes), the mock provider with
latency. "A batch runs" is read from the database two ways: live, by
sampling the batches that have running items (the claim marks an item
running; it stays so until its completion is recorded), and after the fact,
from the batches' started_at (first claim) and finished_at (last
completion): a batch holds its slot over at least that interval, so at no
instant may more than N of those intervals overlap.

  (1) N = 3, 6 batches: never more than 3 run, 3 do run at once; a higher
      priority batch submitted later takes the next free slot; the progress
      of a batch waiting for a slot says so; /v1/status shows the slots.
  (2) fair share: a 400-item batch, then a 6-item one of equal priority,
      N = 2: the small one ends while the large one has most items left.
      (2b) the same behind a rate-limited provider's queue: a small batch
      submitted after the large one filled it is served in turn, not last.
  (3) N = 0 (the default): as before, FIFO (the small batch starts after
      every item of the large one), and batch_slots is never written.
  (4) two batchd processes on one database, N = 2: never more than 2.
  (5) SIGHUP changing N from 1 to 3 takes effect.
  (6) bad values are a configuration error (--check-config).
Every item must succeed: nothing lost, nothing stuck.
"""

import os
import signal
import threading
import time

import pytest

from conftest import (check_consistency, render_config, run_batchd, submit,
                      wait_batch_done, wait_until)

import datetime
import json

ROUTE = "quotes"
TENANT = "acme"


def provider(mock, latency_ms):
    return {"p": {"url": mock.url("/item/{id}") + f"?latency_ms={latency_ms}",
                  "timeout": "10s", "retries": "0"}}


def route(n=None, **keys):
    r = {"providers": "p"}
    if n is not None:
        r["batch_concurrency"] = str(n)
    r.update(keys)
    return {ROUTE: r}


def items(n, tag):
    return [{"id": f"{tag}-{i}"} for i in range(n)]


class Sampler:
    """Samples, every few ms until stopped, how many batches of the route
    have running items (max and whether the target was reached)."""

    def __init__(self, db):
        self.conn = db.connect()
        self.max = 0
        self.counts = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            n = self.conn.execute(
                "SELECT count(DISTINCT batch_id) AS n FROM batchd.items "
                "WHERE status = 'running' AND route = %s", (ROUTE,)).fetchone()["n"]
            self.counts.append(n)
            self.max = max(self.max, n)
            time.sleep(0.005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=10)


def max_overlap(conn, ids, tol=0.1):
    """The most batches whose [started_at, finished_at] overlap at one instant.
    Both are transaction start times (now()): a claim that began before the
    completion ending another batch committed, and waited for it (or for the
    route's lock), records a start up to a claim's wait before that end; the
    starts are moved tol seconds later to allow for that."""
    rows = conn.execute("SELECT started_at, finished_at FROM batchd.batches WHERE id = ANY(%s)",
                        (ids,)).fetchall()
    ev = []
    for r in rows:
        assert r["started_at"] is not None and r["finished_at"] is not None, r
        ev.append((r["started_at"] + datetime.timedelta(seconds=tol), 1))
        ev.append((r["finished_at"], -1))
    ev.sort(key=lambda e: (e[0], e[1]))      # an end before a start at the same instant
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def all_succeeded(conn, ids):
    for b in ids:
        row = wait_batch_done(conn, b, timeout=60)
        assert row["status"] == "completed", row
        assert row["succeeded"] == row["total"], row
    left = conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = ANY(%s) "
                        "AND status <> 'succeeded'", (ids,)).fetchone()["n"]
    assert left == 0
    assert check_consistency(conn) == []


def api_token(conn):
    return conn.execute("SELECT batchd.create_token(%s) AS t", (TENANT,)).fetchone()["t"]


def api_get(d, token, path):
    import urllib.request
    req = urllib.request.Request(d.base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def status_route(d, token):
    return [r for r in api_get(d, token, "/v1/status")["routes"] if r["name"] == ROUTE][0]


# ------------------------------------------------------------------ (1)

def test_three_batches_at_once(db, conn, mock, batchd_factory):
    d = batchd_factory(db=db, providers=provider(mock, 150), routes=route(3), max_inflight=15)
    token = api_token(conn)
    assert status_route(d, token)["batch_concurrency"] == 3
    with Sampler(db) as s:
        ids = [submit(conn, TENANT, ROUTE, items(30, f"b{k}")) for k in range(6)]
        # three started, three wait for a slot
        wait_until(lambda: conn.execute(
            "SELECT count(*) AS n FROM batchd.batches WHERE id = ANY(%s) AND status = "
            "'processing'", (ids,)).fetchone()["n"] == 3, timeout=10, desc="3 batches started")
        waiting = [b for b in ids if api_get(d, token, f"/v1/batches/{b}")["status"] == "pending"]
        assert len(waiting) == 3
        pg = api_get(d, token, f"/v1/batches/{waiting[0]}/progress")
        assert (pg["state"], pg["waiting_for_batch_slot"]) == ("waiting", True), pg
        assert status_route(d, token)["active_batches"] == 3
        # a higher priority batch submitted now takes the next free slot
        high = submit(conn, TENANT, ROUTE, items(10, "hi"), {"priority": 9})
        still_pending = [b for b in ids if conn.execute(
            "SELECT status FROM batchd.batches WHERE id = %s", (b,)).fetchone()["status"]
            == "pending"]
        all_succeeded(conn, ids + [high])
    assert s.max == 3, f"batches with running items at once: max {s.max} (want exactly 3)"
    assert max_overlap(conn, ids + [high]) == 3
    hs = conn.execute("SELECT started_at FROM batchd.batches WHERE id = %s",
                      (high,)).fetchone()["started_at"]
    for b in still_pending:
        bs = conn.execute("SELECT started_at FROM batchd.batches WHERE id = %s",
                          (b,)).fetchone()["started_at"]
        assert hs <= bs, "the priority 9 batch started after a waiting priority 5 one"
    # slots go with their batches
    wait_until(lambda: status_route(d, token)["active_batches"] == 0, timeout=10,
               desc="no active batch left")


# ------------------------------------------------------------------ (2)

def fair_run(db, conn, mock, batchd_factory, n):
    batchd_factory(db=db, providers=provider(mock, 40), routes=route(n), max_inflight=10)
    big = submit(conn, TENANT, ROUTE, items(400, "big"))
    small = submit(conn, TENANT, ROUTE, items(6, "small"))
    all_succeeded(conn, [big, small])
    s = conn.execute("SELECT finished_at, started_at FROM batchd.batches WHERE id = %s",
                     (small,)).fetchone()
    b = conn.execute("SELECT finished_at, started_at FROM batchd.batches WHERE id = %s",
                     (big,)).fetchone()
    big_done_before = conn.execute(
        "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s AND finished_at <= %s",
        (big, s["finished_at"])).fetchone()["n"]
    small_min_start = conn.execute(
        "SELECT min(started_at) AS t FROM batchd.items WHERE batch_id = %s",
        (small,)).fetchone()["t"]
    big_max_start = conn.execute(
        "SELECT max(started_at) AS t FROM batchd.items WHERE batch_id = %s",
        (big,)).fetchone()["t"]
    t0 = b["started_at"]
    print(f"\nbatch_concurrency={n}: small ended at "
          f"{(s['finished_at'] - t0).total_seconds():.3f}s, large at "
          f"{(b['finished_at'] - t0).total_seconds():.3f}s; large items done when the small "
          f"one ended: {big_done_before}/400")
    return big_done_before, small_min_start, big_max_start, s, b


def test_fair_share_small_beside_large(db, conn, mock, batchd_factory):
    done, _, _, s, b = fair_run(db, conn, mock, batchd_factory, 2)
    assert s["finished_at"] < b["finished_at"]
    # the small one ended while the large one had most of its items left
    assert done < 100, f"the large batch had {done}/400 items done when the small one ended"


def test_late_small_batch_not_behind_provider_queue(db, conn, mock, batchd_factory):
    """(2b) A rate-limited provider: the claim hands out up to max_inflight
    items, which wait in the provider's local queue for a token. A small
    batch that gets its slot after the large one has filled that queue must
    not wait behind all of it: the queue takes turns by batch, and the
    one-item claims that follow each completion go to the batch this worker
    holds fewest of (not always to the first slot). Measured, from the
    small batch's submission to its end: ~1.2 s with both, ~3.8 s with the
    claims all to the first slot, ~5 s with a FIFO queue, ~7.7 s with
    neither (after the large batch)."""
    provs = {"p": {"url": mock.url("/item/{id}") + "?latency_ms=10", "timeout": "10s",
                   "retries": "0", "rate": "5/s", "burst": "1"}}
    batchd_factory(db=db, providers=provs, routes=route(2), max_inflight=20)
    big = submit(conn, TENANT, ROUTE, items(40, "big"))

    def big_done():
        return conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                            "AND status = 'succeeded'", (big,)).fetchone()["n"]

    # about 1 s of it ran (5/s): its claimed items fill the provider's queue
    wait_until(lambda: big_done() >= 5, timeout=15, desc="5 items of the large batch done")
    queued = conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                          "AND status = 'running'", (big,)).fetchone()["n"]
    assert queued >= 10, f"only {queued} items of the large batch claimed: queue not filled"
    small = submit(conn, TENANT, ROUTE, items(3, "small"))
    all_succeeded(conn, [big, small])
    s = conn.execute("SELECT created_at, started_at, finished_at FROM batchd.batches "
                     "WHERE id = %s", (small,)).fetchone()
    b = conn.execute("SELECT started_at, finished_at FROM batchd.batches WHERE id = %s",
                     (big,)).fetchone()
    big_left = conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                            "AND finished_at > %s", (big, s["finished_at"])).fetchone()["n"]
    took = (s["finished_at"] - s["created_at"]).total_seconds()
    t0 = b["started_at"]
    print(f"\nsmall batch: submitted at {(s['created_at'] - t0).total_seconds():.2f}s, "
          f"ended at {(s['finished_at'] - t0).total_seconds():.2f}s ({took:.2f}s after its "
          f"submission); large ended at {(b['finished_at'] - t0).total_seconds():.2f}s, "
          f"{big_left}/40 of its items left when the small one ended "
          f"({queued} claimed when the small one was submitted)")
    # 3 items at 5/s shared with the large batch: about 1.2 s plus a claim;
    # behind the large batch's queued items (FIFO) it took ~4 s or more
    assert took < 2.5, f"the small batch took {took:.2f}s from its submission"
    assert big_left > 15, f"the large batch had only {big_left}/40 items left"
    assert s["finished_at"] < b["finished_at"]


# ------------------------------------------------------------------ (3)

def test_no_limit_is_fifo_as_before(db, conn, mock, batchd_factory):
    done, small_start, big_last_start, s, b = fair_run(db, conn, mock, batchd_factory, 0)
    # claims in (priority, id) order: the small batch's items are claimed with or
    # after the large one's last ones
    assert small_start >= big_last_start
    assert done >= 380
    assert conn.execute("SELECT count(*) AS n FROM batchd.batch_slots").fetchone()["n"] == 0


# ------------------------------------------------------------------ (4)

def test_two_processes_share_the_slots(db, conn, mock, batchd_factory):
    keys = dict(providers=provider(mock, 120), routes=route(2), max_inflight=8)
    batchd_factory(db=db, **keys)
    batchd_factory(db=db, **keys)
    with Sampler(db) as s:
        ids = [submit(conn, TENANT, ROUTE, items(40, f"f{k}")) for k in range(6)]
        all_succeeded(conn, ids)
    assert s.max == 2, f"batches with running items at once: max {s.max} (want exactly 2)"
    assert max_overlap(conn, ids) == 2
    workers = conn.execute("SELECT count(DISTINCT worker_id) AS n FROM batchd.items "
                           "WHERE batch_id = ANY(%s)", (ids,)).fetchone()["n"]
    assert workers == 2, "both processes claimed"


# ------------------------------------------------------------------ (5)

def test_reload_changes_batch_concurrency(db, conn, mock, batchd_factory):
    d = batchd_factory(db=db, providers=provider(mock, 150), routes=route(1), max_inflight=12)
    token = api_token(conn)
    with Sampler(db) as s1:
        ids = [submit(conn, TENANT, ROUTE, items(60, f"r{k}")) for k in range(4)]
        wait_until(lambda: conn.execute(
            "SELECT count(*) AS n FROM batchd.items WHERE batch_id = ANY(%s) AND status = "
            "'succeeded'", (ids,)).fetchone()["n"] >= 12, timeout=20, desc="some progress")
    assert s1.max == 1
    with open(d.config_path) as f:
        text = f.read()
    with open(d.config_path, "w") as f:
        f.write(text.replace("batch_concurrency = 1", "batch_concurrency = 3"))
    d.signal(signal.SIGHUP)
    wait_until(lambda: status_route(d, token)["batch_concurrency"] == 3, timeout=10, desc="reloaded")
    with Sampler(db) as s3:
        wait_until(lambda: s3.max >= 3, timeout=20, desc="3 batches running after the reload")
        all_succeeded(conn, ids)
    assert s3.max == 3


# ------------------------------------------------------------------ (6)

@pytest.mark.parametrize("value,message", [
    ("-1", "batch_concurrency: invalid value '-1' (expected an integer from 0 to 100000)"),
    ("three", "batch_concurrency: invalid value 'three'"),
    ("100001", "batch_concurrency: invalid value '100001'"),
    ("2\n group_concurrency = 1",
     "[route quotes] batch_concurrency cannot be combined with group_concurrency or group_rate"),
])
def test_bad_values_are_config_errors(tmp_path, value, message):
    path = os.path.join(str(tmp_path), "bad.ini")
    with open(path, "w") as f:
        f.write(render_config("host=127.0.0.1 port=1 dbname=x",
                              {}, {"p": {"url": "http://127.0.0.1:9/item/{id}"}},
                              {ROUTE: {"providers": "p", "batch_concurrency": value}}))
    r = run_batchd(["--check-config", "-c", path])
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_zero_and_unset_are_valid(tmp_path):
    for value in ("0", None):
        path = os.path.join(str(tmp_path), "ok.ini")
        keys = {"providers": "p"}
        if value is not None:
            keys["batch_concurrency"] = value
        with open(path, "w") as f:
            f.write(render_config("host=127.0.0.1 port=1 dbname=x", {},
                                  {"p": {"url": "http://127.0.0.1:9/item/{id}"}}, {ROUTE: keys}))
        r = run_batchd(["--check-config", "-c", path])
        assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ migration 015

def test_migration_015_down_and_up(db, conn, tmp_path):
    from conftest import migrate

    def objects():
        fns = {r["proname"] for r in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'batchd'::regnamespace")}
        tables = {r["relname"] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'batchd'::regnamespace")}
        return fns & {"claim_items_shared", "claim_batch_slots"}, tables & {"batch_slots"}

    assert objects() == ({"claim_items_shared", "claim_batch_slots"}, {"batch_slots"})
    down = conn.execute("SELECT count(*) AS n FROM batchd.schema_migrations "
                        "WHERE version >= 15").fetchone()["n"]
    migrate(db.conninfo, str(tmp_path), down=down)
    assert objects() == (set(), set())
    migrate(db.conninfo, str(tmp_path))
    assert objects() == ({"claim_items_shared", "claim_batch_slots"}, {"batch_slots"})
    # and it claims: two batches, one slot, fair share within it
    a = submit(conn, TENANT, ROUTE, items(3, "a"))
    submit(conn, TENANT, ROUTE, items(3, "b"))
    w = "00000000-0000-0000-0000-0000000000aa"
    conn.execute("INSERT INTO batchd.workers (id, hostname, pid, version) "
                 "VALUES (%s, 'h', 1, 'test')", (w,))
    rows = conn.execute("SELECT * FROM batchd.claim_items_shared(%s, %s, 10, %s, '{1}', "
                        "'{}', '{}', '{}')", (w, [ROUTE], [ROUTE])).fetchall()
    assert [str(r["batch_id"]) for r in rows] == [a] * 3
    # bad arrays are refused
    with pytest.raises(Exception, match="same length"):
        conn.execute("SELECT * FROM batchd.claim_items_shared(%s, %s, 10, %s, '{1,2}', "
                     "'{}', '{}', '{}')", (w, [ROUTE], [ROUTE]))


def test_claim_is_shared_round_robin(conn):
    """The SQL alone: batch_concurrency 2 over a 20-item and a 3-item batch
    (and a third that waits): each claim split evenly, returned round-robin;
    what the small one cannot fill goes to the large one."""
    big = submit(conn, TENANT, ROUTE, items(20, "big"))
    small = submit(conn, TENANT, ROUTE, items(3, "small"))
    third = submit(conn, TENANT, ROUTE, items(3, "third"))
    w = "00000000-0000-0000-0000-0000000000bb"
    conn.execute("INSERT INTO batchd.workers (id, hostname, pid, version) "
                 "VALUES (%s, 'h', 1, 'test')", (w,))

    def claim(n):
        rows = conn.execute("SELECT * FROM batchd.claim_items_shared(%s, %s, %s, %s, '{2}', "
                            "'{}', '{}', '{}')", (w, [ROUTE], n, [ROUTE])).fetchall()
        return [{big: "B", small: "s", third: "t"}[str(r["batch_id"])] for r in rows]

    assert claim(4) == ["B", "s", "B", "s"]
    assert claim(5) == ["B", "s", "B", "B", "B"]
    assert claim(3) == ["B", "B", "B"]          # the small one has nothing queued
    slots = {str(r["batch_id"]) for r in conn.execute("SELECT batch_id FROM batchd.batch_slots")}
    assert slots == {big, small}
    # the small batch ends: its slot goes to the third at the next claim
    conn.execute("UPDATE batchd.items SET status = 'succeeded', finished_at = now() "
                 "WHERE batch_id = %s", (small,))
    conn.execute("UPDATE batchd.batches SET succeeded = 3, status = 'completed', "
                 "finished_at = now() WHERE id = %s", (small,))
    assert claim(4) == ["B", "t", "B", "t"]
    slots = {str(r["batch_id"]) for r in conn.execute("SELECT batch_id FROM batchd.batch_slots")}
    assert slots == {big, third}
