"""The SQL API (batchd.submit_batch) and `batchd migrate`."""

import glob
import os
import subprocess
import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import (SQL_DIR, assert_no_sanitizer_report, batch, batchd_bin,
                      batchd_env, free_port, items, migrate, require_binary, run_batchd, submit,
                      write_minimal_config)


def table_exists(conn, name):
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL AS e", (name,)).fetchone()["e"]


def function_exists(conn, name):
    return conn.execute("SELECT to_regproc(%s) IS NOT NULL AS e", (name,)).fetchone()["e"]


def migrations(conn):
    if not table_exists(conn, "batchd.schema_migrations"):
        return []
    return conn.execute("SELECT version, name, applied_at FROM batchd.schema_migrations "
                        "ORDER BY version").fetchall()


def migration_files():
    """Versions of sql/NNN_name.up.sql, ascending."""
    out = []
    for path in sorted(glob.glob(os.path.join(SQL_DIR, "*.up.sql"))):
        out.append(int(os.path.basename(path).split("_", 1)[0]))
    return out


# ------------------------------------------------------------------ submit_batch: valid

def test_submit_defaults(conn):
    payloads = [{"id": i, "name": f"n{i}"} for i in range(5)]
    bid = submit(conn, "acme", "verify", payloads)
    b = batch(conn, bid)
    assert b is not None
    assert b["tenant"] == "acme"
    assert b["route"] == "verify"
    assert b["status"] == "pending"
    assert b["total"] == 5
    assert (b["succeeded"], b["failed"], b["cancelled"]) == (0, 0, 0)
    assert 0 <= b["priority"] <= 10
    assert 1 <= b["max_attempts"] <= 100
    assert b["metadata"] == {}
    assert b["created_at"] is not None
    assert b["started_at"] is None and b["finished_at"] is None

    rows = items(conn, bid)
    assert [r["payload"] for r in rows] == payloads
    assert all(r["status"] == "queued" for r in rows)
    assert all(r["attempts"] == 0 for r in rows)
    assert all(r["worker_id"] is None and r["result"] is None and r["error"] is None
               for r in rows)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + 5)), "seq is consecutive in array order"
    assert len({r["id"] for r in rows}) == 5
    assert conn.execute("SELECT * FROM batchd.check_consistency()").fetchall() == []


def test_submit_default_options_arg_equals_empty_object(conn):
    a = submit(conn, "t", "r", [{"id": 1}])
    b = submit(conn, "t", "r", [{"id": 1}], {})
    ba, bb = batch(conn, a), batch(conn, b)
    for k in ("priority", "max_attempts", "metadata", "name", "status"):
        assert ba[k] == bb[k], k
    assert a != b


def test_submit_options_stored(conn):
    bid = submit(conn, "acme", "verify", [{"id": 1}, {"id": 2}],
                 {"name": "nightly trucks", "priority": 7, "max_attempts": 5,
                  "metadata": {"source": "cron", "n": [1, 2]}})
    b = batch(conn, bid)
    assert b["name"] == "nightly trucks"
    assert b["priority"] == 7
    assert b["max_attempts"] == 5
    assert b["metadata"] == {"source": "cron", "n": [1, 2]}
    assert b["total"] == 2


@pytest.mark.parametrize("priority", [0, 10])
def test_submit_priority_bounds_accepted(conn, priority):
    bid = submit(conn, "t", "r", [{"id": 1}], {"priority": priority})
    assert batch(conn, bid)["priority"] == priority


@pytest.mark.parametrize("attempts", [1, 100])
def test_submit_max_attempts_bounds_accepted(conn, attempts):
    bid = submit(conn, "t", "r", [{"id": 1}], {"max_attempts": attempts})
    assert batch(conn, bid)["max_attempts"] == attempts


def test_submit_seq_order_large(conn):
    payloads = [{"id": 1000 - i} for i in range(1000)]
    bid = submit(conn, "t", "r", payloads)
    rows = conn.execute("SELECT payload FROM batchd.items WHERE batch_id = %s ORDER BY seq",
                        (bid,)).fetchall()
    assert [r["payload"] for r in rows] == payloads
    assert batch(conn, bid)["total"] == 1000


def test_submit_group_key(conn):
    payloads = [{"id": 1, "account": "a1"}, {"id": 2, "account": "a2"}, {"id": 3, "account": "a1"}]
    bid = submit(conn, "t", "r", payloads, {"group_key": "account"})
    rows = items(conn, bid)
    assert [r["group_key"] for r in rows] == ["a1", "a2", "a1"]


def test_submit_group_key_dotted_path(conn):
    payloads = [{"id": 1, "vehicle": {"vin": "VIN1", "owner": {"id": "o1"}}},
                {"id": 2, "vehicle": {"vin": "VIN2", "owner": {"id": "o2"}}}]
    bid = submit(conn, "t", "r", payloads, {"group_key": "vehicle.owner.id"})
    assert [r["group_key"] for r in items(conn, bid)] == ["o1", "o2"]
    bid = submit(conn, "t", "r", payloads, {"group_key": "vehicle.vin"})
    assert [r["group_key"] for r in items(conn, bid)] == ["VIN1", "VIN2"]


def test_submit_without_group_key_leaves_it_null(conn):
    bid = submit(conn, "t", "r", [{"id": 1, "account": "a1"}])
    assert items(conn, bid)[0]["group_key"] is None


def test_submit_notifies_batchd_work(db, conn):
    listener = db.connect()
    got = []
    listener.add_notify_handler(lambda n: got.append(n))
    listener.execute("LISTEN batchd_work")
    submit(conn, "t", "r", [{"id": 1}])
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        listener.execute("SELECT 1")  # notifications are delivered with query results
        time.sleep(0.02)
    assert got, "no NOTIFY on channel batchd_work after submit_batch"
    assert got[0].channel == "batchd_work"


def test_submit_in_rolled_back_transaction_leaves_nothing(db):
    c = db.connect()
    with pytest.raises(RuntimeError):
        with c.transaction():
            submit(c, "t", "r", [{"id": 1}])
            raise RuntimeError("roll back")
    assert c.execute("SELECT count(*) AS n FROM batchd.batches").fetchone()["n"] == 0
    assert c.execute("SELECT count(*) AS n FROM batchd.items").fetchone()["n"] == 0


# ------------------------------------------------------------------ submit_batch: bad input

ONE = [{"id": 1}]

BAD_INPUTS = [
    # id, tenant, route, items (python; raw SQL NULL as None), options, field named
    ("tenant-null", None, "r", ONE, {}, "tenant"),
    ("tenant-empty", "", "r", ONE, {}, "tenant"),
    ("route-null", "t", None, ONE, {}, "route"),
    ("route-empty", "t", "", ONE, {}, "route"),
    ("items-null", "t", "r", None, {}, "items"),
    ("items-object", "t", "r", {"id": 1}, {}, "items"),
    ("items-string", "t", "r", "x", {}, "items"),
    ("items-empty", "t", "r", [], {}, "items"),
    ("items-number-element", "t", "r", [{"id": 1}, 2], {}, "item"),
    ("items-string-element", "t", "r", ["x"], {}, "item"),
    ("items-null-element", "t", "r", [{"id": 1}, None], {}, "item"),
    ("items-array-element", "t", "r", [[1]], {}, "item"),
    ("options-array", "t", "r", ONE, [], "options"),
    ("options-string", "t", "r", ONE, "x", "options"),
    ("options-unknown", "t", "r", ONE, {"bogus_option": 1}, "bogus_option"),
    ("priority-negative", "t", "r", ONE, {"priority": -1}, "priority"),
    ("priority-11", "t", "r", ONE, {"priority": 11}, "priority"),
    ("priority-fraction", "t", "r", ONE, {"priority": 1.5}, "priority"),
    ("priority-string", "t", "r", ONE, {"priority": "3"}, "priority"),
    ("max_attempts-0", "t", "r", ONE, {"max_attempts": 0}, "max_attempts"),
    ("max_attempts-101", "t", "r", ONE, {"max_attempts": 101}, "max_attempts"),
    ("max_attempts-string", "t", "r", ONE, {"max_attempts": "5"}, "max_attempts"),
    ("metadata-array", "t", "r", ONE, {"metadata": [1]}, "metadata"),
    ("metadata-string", "t", "r", ONE, {"metadata": "x"}, "metadata"),
    ("name-too-long", "t", "r", ONE, {"name": "x" * 10000}, "name"),
]


@pytest.mark.parametrize("tenant,route,items_,options,field",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS])
def test_submit_bad_input(conn, tenant, route, items_, options, field):
    with pytest.raises(psycopg.Error) as ei:
        conn.execute("SELECT batchd.submit_batch(%s, %s, %s, %s)",
                     (tenant, route, None if items_ is None else Jsonb(items_), Jsonb(options)))
    err = ei.value
    assert err.sqlstate == "22023", f"SQLSTATE {err.sqlstate}: {err}"
    msg = str(err)
    assert field in msg, f"message does not name {field!r}: {msg}"
    assert conn.execute("SELECT count(*) AS n FROM batchd.batches").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM batchd.items").fetchone()["n"] == 0


def test_bad_input_after_good_batch_changes_nothing(conn):
    bid = submit(conn, "t", "r", [{"id": 1}, {"id": 2}])
    with pytest.raises(psycopg.Error) as ei:
        submit(conn, "t", "r", [{"id": 3}, 4])
    assert ei.value.sqlstate == "22023"
    assert conn.execute("SELECT count(*) AS n FROM batchd.batches").fetchone()["n"] == 1
    assert conn.execute("SELECT count(*) AS n FROM batchd.items").fetchone()["n"] == 2
    assert batch(conn, bid)["total"] == 2


# ------------------------------------------------------------------ migrations

# ------------------------------------------------------------------ claim_items, resumed (010)

W = "00000000-0000-4000-8000-00000000000a"


def resume_claim(conn, routes, limit, after_priority=None, after_id=None):
    return conn.execute("SELECT * FROM batchd.claim_items(%s, %s, %s, %s, %s)",
                        (W, routes, limit, after_priority, after_id)).fetchall()


def ids_by_seq(conn, bid):
    return [it["id"] for it in items(conn, bid)]


def test_resumed_claim_from_the_head_is_the_plain_claim(conn):
    low = ids_by_seq(conn, submit(conn, "t", "r", [{"n": i} for i in range(3)], {"priority": 2}))
    high = ids_by_seq(conn, submit(conn, "t", "r", [{"n": i} for i in range(2)], {"priority": 7}))
    rows = resume_claim(conn, ["r"], 4)
    assert [r["id"] for r in rows] == high + low[:2]
    assert [r["priority"] for r in rows] == [7, 7, 2, 2]
    assert all(r["attempts"] == 1 for r in rows)
    got = {it["id"]: it for b in ("r",) for it in conn.execute(
        "SELECT * FROM batchd.items WHERE id = ANY (%s)", ([r["id"] for r in rows],)).fetchall()}
    assert all(it["status"] == "running" and str(it["worker_id"]) == W for it in got.values())


def test_resumed_claim_starts_after_the_given_item(conn):
    bid = submit(conn, "t", "r", [{"n": i} for i in range(10)], {"priority": 5})
    ids = ids_by_seq(conn, bid)
    # items 0-2 are still queued: a claim resuming after item 4 skips them
    rows = resume_claim(conn, ["r"], 3, 5, ids[4])
    assert [r["id"] for r in rows] == ids[5:8]
    assert batch(conn, bid)["status"] == "processing"
    events = conn.execute("SELECT event FROM batchd.batch_events WHERE batch_id = %s "
                          "AND event = 'started'", (bid,)).fetchall()
    assert len(events) == 1


def test_resumed_claim_goes_on_from_the_head_when_short(conn):
    low = ids_by_seq(conn, submit(conn, "t", "r", [{"n": i} for i in range(3)], {"priority": 1}))
    mid = ids_by_seq(conn, submit(conn, "t", "r", [{"n": i} for i in range(4)], {"priority": 5}))
    # after mid[1] there are 2 of priority 5; the other 3 come from the head:
    # mid[0] and mid[1] (ahead of the starting point), then the lower priority
    rows = resume_claim(conn, ["r"], 5, 5, mid[1])
    assert sorted(r["id"] for r in rows) == sorted(mid + low[:1])
    # returned in claim order, whatever part found them
    assert [r["id"] for r in rows] == mid + low[:1]


def test_resumed_claim_several_routes_and_due_items_only(conn):
    a = ids_by_seq(conn, submit(conn, "t", "a", [{"n": i} for i in range(4)]))
    b = ids_by_seq(conn, submit(conn, "t", "b", [{"n": i} for i in range(4)]))
    c = ids_by_seq(conn, submit(conn, "t", "c", [{"n": i} for i in range(4)]))
    conn.execute("UPDATE batchd.items SET run_after = now() + interval '1 hour' WHERE id = %s",
                 (b[1],))
    rows = resume_claim(conn, ["a", "b"], 100, 5, a[2])
    got = [r["id"] for r in rows]
    # after a[2]: a[3], b[0], b[2], b[3] (b[1] not due); then a[0..2] from the head
    assert got == sorted(a + [b[0], b[2], b[3]]), got
    assert not set(got) & set(c)
    # a single route (the form whose route test the btree checks)
    assert [r["id"] for r in resume_claim(conn, ["c"], 2, 5, c[0])] == c[1:3]


def test_resumed_claim_skips_rows_locked_elsewhere(db, conn):
    bid = submit(conn, "t", "r", [{"n": i} for i in range(6)])
    ids = ids_by_seq(conn, bid)
    other = db.connect()
    with other.transaction():
        other.execute("SELECT id FROM batchd.items WHERE id = ANY (%s) FOR UPDATE",
                      ([ids[2], ids[3]],))
        rows = resume_claim(conn, ["r"], 10, 5, ids[1])
        assert [r["id"] for r in rows] == [ids[0], ids[1], ids[4], ids[5]]
    other.close()


def completion_buffers(conn, recs):
    """Shared buffers one complete_items() call touched (its statements' own
    included: they run inside the function scan)."""
    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
                        "SELECT * FROM batchd.complete_items(%s, %s)",
                        (W, Jsonb(recs))).fetchone()
    node = list(plan.values())[0][0]["Plan"]
    return node["Shared Hit Blocks"] + node["Shared Read Blocks"]


def test_completion_reads_items_by_id_whatever_the_statistics(conn):
    """complete_items() locks the items it records by primary key, even when
    the statistics say nothing runs (ANALYZE before the claim, as in a queue
    whose statistics lag): a plan through items_running_worker_idx would read
    every item the worker runs to record ten of them."""
    n = 50000
    bid = submit(conn, "t", "r", [{"n": i} for i in range(n)])
    conn.execute("ANALYZE batchd.items")
    claimed = conn.execute("SELECT count(*) AS n FROM batchd.claim_items(%s, %s, %s)",
                           (W, ["r"], n)).fetchone()["n"]
    assert claimed == n
    ids = ids_by_seq(conn, bid)

    def recs(part):
        return [{"id": i, "status": "succeeded", "http_status": 200, "result": {"ok": True}}
                for i in part]

    completion_buffers(conn, recs(ids[:1]))  # the session's first call plans
    touched = completion_buffers(conn, recs(ids[100:110]))
    done = conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                        "AND status = 'succeeded'", (bid,)).fetchone()["n"]
    assert done == 11
    # ten items by primary key, their batch row, the update: about 200
    # buffers; through the worker's index, every heap page of its items too
    # (over 1,000 here)
    assert touched < 600, touched


@pytest.mark.parametrize("limit,routes", [(0, ["r"]), (None, ["r"]), (5, []), (5, None)])
def test_resumed_claim_nothing_to_do(conn, limit, routes):
    submit(conn, "t", "r", [{"n": 1}])
    assert resume_claim(conn, routes, limit, 5, 0) == []


def test_resumed_claim_refuses_a_null_worker(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("SELECT * FROM batchd.claim_items(NULL, ARRAY['r'], 1, NULL, NULL)")


def test_migrate_creates_schema(conn):
    for t in ("batchd.batches", "batchd.items", "batchd.workers", "batchd.batch_events",
              "batchd.schema_migrations"):
        assert table_exists(conn, t), t
    assert function_exists(conn, "batchd.submit_batch")
    assert function_exists(conn, "batchd.check_consistency")
    versions = [m["version"] for m in migrations(conn)]
    assert versions == migration_files(), "every sql/*.up.sql is applied, once"


def test_migrate_is_idempotent(db, conn, tmp_path):
    before = migrations(conn)
    assert before
    r = migrate(db.conninfo, str(tmp_path))
    assert migrations(conn) == before, "a second migrate changed schema_migrations"
    # the data survives a no-op migrate
    bid = submit(conn, "t", "r", [{"id": 1}])
    migrate(db.conninfo, str(tmp_path))
    assert batch(conn, bid)["total"] == 1
    assert "Traceback" not in r.stderr


def test_migrate_down_and_up_again(db, conn, tmp_path):
    n = len(migrations(conn))
    migrate(db.conninfo, str(tmp_path), down=n)
    assert not table_exists(conn, "batchd.batches")
    assert not table_exists(conn, "batchd.items")
    assert not function_exists(conn, "batchd.submit_batch")
    assert migrations(conn) == []
    migrate(db.conninfo, str(tmp_path))
    assert table_exists(conn, "batchd.batches")
    assert [m["version"] for m in migrations(conn)] == migration_files()
    bid = submit(conn, "t", "r", [{"id": 1}])
    assert batch(conn, bid)["status"] == "pending"


def test_migrate_down_1_reverts_latest_only(db, conn, tmp_path):
    before = migrations(conn)
    migrate(db.conninfo, str(tmp_path), down=1)
    after = migrations(conn)
    assert [m["version"] for m in after] == [m["version"] for m in before[:-1]]
    if len(before) == 1:
        assert not table_exists(conn, "batchd.batches")
    migrate(db.conninfo, str(tmp_path))
    assert [m["version"] for m in migrations(conn)] == [m["version"] for m in before]


def test_migrate_down_more_than_applied_fails(db, conn, tmp_path):
    n = len(migrations(conn))
    cfg = write_minimal_config(str(tmp_path / "m.ini"), db.conninfo)
    r = run_batchd(["migrate", "-c", cfg, "--down", str(n + 1)])
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip(), "an error is explained on stderr"
    assert len(migrations(conn)) == n, "nothing was reverted"


def test_migrate_concurrent_on_fresh_database(new_database, tmp_path):
    fresh = new_database(migrated=False)
    cfgs = [write_minimal_config(str(tmp_path / f"c{i}.ini"), fresh.conninfo) for i in range(2)]
    exe = require_binary(batchd_bin(), "batchd")
    procs = [subprocess.Popen([exe, "migrate", "-c", c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=batchd_env(),
                              stdin=subprocess.DEVNULL) for c in cfgs]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail("batchd migrate did not finish within 60s")
        outs.append((p.returncode, err))
    for rc, err in outs:
        assert_no_sanitizer_report(err, "batchd migrate")
        assert rc == 0, f"concurrent migrate exited {rc}:\n{err}"
    c = fresh.connect()
    versions = [m["version"] for m in migrations(c)]
    assert versions == migration_files(), "each migration applied exactly once"
    assert table_exists(c, "batchd.batches")


def test_migrate_unreachable_database_exits_1(tmp_path):
    cfg = write_minimal_config(str(tmp_path / "m.ini"),
                               f"host=127.0.0.1 port={free_port()} user=postgres "
                               f"dbname=nope connect_timeout=3")
    t0 = time.monotonic()
    r = run_batchd(["migrate", "-c", cfg], timeout=30)
    assert r.returncode == 1, f"exit {r.returncode}: {r.stderr}"
    assert r.stderr.strip(), "the connection error is explained on stderr"
    assert time.monotonic() - t0 < 20
    assert_no_sanitizer_report(r.stderr)
