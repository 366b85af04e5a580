"""Jobs, fan-out and intake (migration 014, sql/functions/intake.sql).

A job is one JSON object whose list fields fan out into the cross product of
items (batchd.fanout, batchd.submit_job); the batch row keeps the job and,
when it ends, its summary: counts per job and per group (the group option,
e.g. per vehicle). Intake: the trigger function batchd.intake(route, options)
on a user table submits every inserted row as a job in the inserting
transaction; the job's on_done callback writes the counts back to the row.

What is checked, against a private PostgreSQL, the real batchd and the mock
provider (per-id faults: some vehicle/term/mileage combinations answer 422):
  - an INSERT into the user table yields a batch that batchd drains without
    any other call; the row gets its batch id and, at the end, its counts;
  - a rolled-back INSERT, a failed statement and a row ON CONFLICT skipped
    yield no batch;
  - 2 vehicles x 2 terms x 3 mileages = 12 items with the right payloads, in
    order; the default fan-out (every list field, in name order), none ([]);
  - partial failures are counted, not fatal: per job and per vehicle, in the
    batch's summary and in the user's row;
  - the expansion bound (max_items, default 10000): a clear 22023, nothing
    inserted (the INSERT of the row fails with it);
  - bad options: clear 22023 errors naming the option;
  - a cancelled job: the summary counts the cancelled items per group, the
    on_done runs once per end (again after a retry);
  - migration 014's down and up.
"""

import itertools
import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import (batch, check_consistency, items, migrate, run_batchd, wait_batch_done,
                      wait_until, write_minimal_config)

APP_SQL = r"""
CREATE SCHEMA app;

CREATE TABLE app.quote_jobs (
    id         serial PRIMARY KEY,
    customer   text   NOT NULL,
    vehicles   text[] NOT NULL,
    terms      int[]  NOT NULL,
    mileages   int[]  NOT NULL CHECK (cardinality(mileages) > 0),
    status     text   NOT NULL DEFAULT 'submitted',
    batch_id   uuid,
    items      int,
    succeeded  int,
    failed     int,
    cancelled  int,
    by_vehicle jsonb,
    done_calls int    NOT NULL DEFAULT 0
);

-- the job of a row: its lists under the names the items carry
CREATE FUNCTION app.job_of(j app.quote_jobs) RETURNS jsonb
LANGUAGE sql SET search_path = app, pg_catalog AS $$
    SELECT jsonb_build_object('job_id', j.id, 'customer', j.customer,
                              'vehicle', to_jsonb(j.vehicles), 'term', to_jsonb(j.terms),
                              'mileage', to_jsonb(j.mileages))
$$;

CREATE FUNCTION app.job_done(b batchd.batches) RETURNS void
LANGUAGE sql SET search_path = app, pg_catalog AS $$
    UPDATE quote_jobs
       SET status = b.status, items = (b.summary ->> 'total')::int,
           succeeded = (b.summary ->> 'succeeded')::int, failed = (b.summary ->> 'failed')::int,
           cancelled = (b.summary ->> 'cancelled')::int, by_vehicle = b.summary -> 'groups',
           done_calls = done_calls + 1
     WHERE id = b.source_key::int;
$$;

CREATE TRIGGER quote_jobs_intake AFTER INSERT ON app.quote_jobs
    FOR EACH ROW EXECUTE FUNCTION batchd.intake('quotes',
        '{"tenant": "dealer", "job": "app.job_of", "fanout": ["vehicle", "term", "mileage"],
          "group": "vehicle", "batch_column": "batch_id", "on_done": "app.job_done"}');
"""

ROUTE = "quotes"
TENANT = "dealer"


def q(conn, sql, *args):
    return conn.execute(sql, args or None).fetchall()


def one(conn, sql, *args):
    return conn.execute(sql, args or None).fetchone()


def count_batches(conn):
    return one(conn, "SELECT count(*) AS n FROM batchd.batches")["n"]


def count_items(conn):
    return one(conn, "SELECT count(*) AS n FROM batchd.items")["n"]


def insert_job(conn, customer, vehicles, terms, mileages):
    return one(conn, "INSERT INTO app.quote_jobs (customer, vehicles, terms, mileages) "
                     "VALUES (%s, %s, %s, %s) RETURNING id", customer, vehicles, terms,
               mileages)["id"]


def job_row(conn, job_id):
    return one(conn, "SELECT * FROM app.quote_jobs WHERE id = %s", job_id)


def submit_job(conn, job, options=None, tenant=TENANT, route=ROUTE):
    return str(one(conn, "SELECT batchd.submit_job(%s, %s, %s, %s) AS id", tenant, route,
                   Jsonb(job), Jsonb(options or {}))["id"])


def sql_error(conn, sql, *args):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args or None)
    return e.value


def quote_provider(mock):
    # the mock's id: vehicle-term-mileage, so that faults can be set per combination
    return {"url": mock.url("/v1/quotes/{vehicle}?id={vehicle}-{term}-{mileage}"),
            "method": "POST", "header": "Content-Type: application/json",
            "body": '{"vehicle": {vehicle}, "term_months": {term}, "annual_mileage": {mileage}}',
            "timeout": "5s", "connect_timeout": "2s", "retries": "0",
            "breaker_failures": "100000"}


def start_batchd(batchd_factory, db, mock, **keys):
    keys.setdefault("poll_interval", "30s")     # a NOTIFY must wake it, not the poll
    keys.setdefault("max_inflight", "8")
    return batchd_factory(db=db, providers={"quotes": quote_provider(mock)},
                          routes={ROUTE: "quotes"}, **keys)


@pytest.fixture
def app(conn):
    conn.execute(APP_SQL)
    return conn


# ------------------------------------------------------------------ intake

def test_insert_yields_a_batch_that_batchd_drains_with_no_other_call(app, db, mock,
                                                                    batchd_factory):
    conn = app
    mock.configure(latency_ms=20)
    d = start_batchd(batchd_factory, db, mock)
    t0 = time.monotonic()
    jid = insert_job(conn, "Fleet GmbH", ["VW-GOLF-8", "FORD-FOCUS"], [24, 36], [10000])

    row = job_row(conn, jid)
    assert row["batch_id"] is not None, "batch_column gets the batch id in the same transaction"
    bid = str(row["batch_id"])
    b = batch(conn, bid)
    assert (b["tenant"], b["route"], b["total"]) == (TENANT, ROUTE, 4)
    assert (b["source"], b["source_key"]) == ("app.quote_jobs", str(jid))
    assert b["name"] == f"quote_jobs {jid}"
    assert b["job"] == {"job_id": jid, "customer": "Fleet GmbH",
                        "vehicle": ["VW-GOLF-8", "FORD-FOCUS"], "term": [24, 36],
                        "mileage": [10000]}
    assert (b["job_group"], b["on_done"]) == ("vehicle", "app.job_done")
    assert one(conn, "SELECT id FROM batchd.batches WHERE source = 'app.quote_jobs' "
                     "AND source_key = %s", str(jid))["id"] == row["batch_id"]

    b = wait_batch_done(conn, bid, timeout=20)
    # woken by the commit's NOTIFY, not by the 30 s poll
    assert time.monotonic() - t0 < 10, "the intake's batch waited for a poll"
    assert b["status"] == "completed" and b["succeeded"] == 4
    row = wait_until(lambda: (r := job_row(conn, jid))["done_calls"] and r, timeout=5)
    assert (row["status"], row["items"], row["succeeded"], row["failed"]) == ("completed", 4, 4, 0)
    assert row["by_vehicle"] == {
        v: {"total": 2, "succeeded": 2, "failed": 0, "cancelled": 0, "unfinished": 0}
        for v in ("VW-GOLF-8", "FORD-FOCUS")}
    seen = sorted(r["id"] for r in mock.all_requests())
    assert seen == sorted(f"{v}-{t}-10000" for v in ("VW-GOLF-8", "FORD-FOCUS") for t in (24, 36))
    assert check_consistency(conn) == []
    d.stop()


def test_rolled_back_or_skipped_insert_yields_nothing(app, db):
    conn = app
    other = db.connect()
    with conn.transaction(force_rollback=True):
        insert_job(conn, "Muster AG", ["TESLA-M3"], [36], [10000, 20000])
        # in the inserting transaction the batch is there; nobody else sees it
        assert count_batches(conn) == 1 and count_items(conn) == 2
        assert count_batches(other) == 0
    assert (count_batches(conn), count_items(conn)) == (0, 0)
    assert one(conn, "SELECT count(*) AS n FROM app.quote_jobs")["n"] == 0

    # a statement that fails on its second row: neither row, no batch
    e = sql_error(conn, "INSERT INTO app.quote_jobs (customer, vehicles, terms, mileages) "
                        "VALUES ('a', '{X}', '{24}', '{1}'), ('b', '{Y}', '{24}', '{}')")
    assert e.sqlstate == "23514"
    assert (count_batches(conn), count_items(conn)) == (0, 0)

    # a row that ON CONFLICT skips fires nothing; the one inserted fires once
    jid = insert_job(conn, "Fleet GmbH", ["A"], [24], [1])
    conn.execute("INSERT INTO app.quote_jobs (id, customer, vehicles, terms, mileages) "
                 "VALUES (%s, 'dup', '{B}', '{36}', '{2}') ON CONFLICT (id) DO NOTHING", (jid,))
    assert count_batches(conn) == 1
    # an UPDATE does not submit (the trigger is AFTER INSERT only)
    conn.execute("UPDATE app.quote_jobs SET customer = 'Fleet AG' WHERE id = %s", (jid,))
    assert count_batches(conn) == 1

    # several rows in one statement: one batch each
    conn.execute("INSERT INTO app.quote_jobs (customer, vehicles, terms, mileages) "
                 "SELECT 'c' || g, '{A,B}', '{24}', '{1}' FROM generate_series(1, 3) AS g")
    assert count_batches(conn) == 4
    rows = q(conn, "SELECT j.id, j.batch_id, b.source_key, b.total FROM app.quote_jobs AS j "
                   "JOIN batchd.batches AS b ON b.id = j.batch_id ORDER BY j.id")
    assert [r["source_key"] for r in rows] == [str(r["id"]) for r in rows]
    assert [r["total"] for r in rows] == [1, 2, 2, 2]
    other.close()


# ------------------------------------------------------------------ fan-out

def test_fanout_2_vehicles_x_2_terms_x_3_mileages_is_12_items(app):
    conn = app
    vehicles, terms, mileages = ["VW-GOLF-8", "TESLA-M3"], [24, 36], [10000, 15000, 20000]
    expect = [{"job_id": 7, "deposit": 3000, "vehicle": v, "term": t, "mileage": m}
              for v, t, m in itertools.product(vehicles, terms, mileages)]

    bid = submit_job(conn, {"job_id": 7, "deposit": 3000, "vehicle": vehicles, "term": terms,
                            "mileage": mileages},
                     {"fanout": ["vehicle", "term", "mileage"], "group": "vehicle",
                      "name": "job 7", "priority": 7})
    its = items(conn, bid)
    assert [i["payload"] for i in its] == expect
    assert [i["seq"] for i in its] == list(range(12))
    b = batch(conn, bid)
    assert (b["total"], b["name"], b["priority"], b["job_group"]) == (12, "job 7", 7, "vehicle")
    assert b["summary"] is None, "written when the batch ends"
    live = one(conn, "SELECT batchd.job_summary(%s) AS s", bid)["s"]
    assert live == {"total": 12, "succeeded": 0, "failed": 0, "cancelled": 0, "unfinished": 12,
                    "group": "vehicle",
                    "groups": {v: {"total": 6, "succeeded": 0, "failed": 0, "cancelled": 0,
                                   "unfinished": 6} for v in vehicles}}

    # through the intake: the same 12 combinations, with the row's id
    jid = insert_job(conn, "Fleet GmbH", vehicles, terms, mileages)
    its = items(conn, str(job_row(conn, jid)["batch_id"]))
    assert [(i["payload"]["vehicle"], i["payload"]["term"], i["payload"]["mileage"])
            for i in its] == list(itertools.product(vehicles, terms, mileages))
    assert {i["payload"]["job_id"] for i in its} == {jid}

    # the default fan-out: every list field, in name order (mileage, term, vehicle)
    got = one(conn, "SELECT batchd.fanout(%s) AS f",
              Jsonb({"vehicle": ["A", "B"], "term": [1, 2], "mileage": [9], "x": 1}))["f"]
    assert got == [{"x": 1, "mileage": 9, "term": t, "vehicle": v}
                   for t, v in itertools.product([1, 2], ["A", "B"])]
    # none: the job as it is, lists included
    got = one(conn, "SELECT batchd.fanout(%s, '[]') AS f", Jsonb({"v": ["A", "B"]}))["f"]
    assert got == [{"v": ["A", "B"]}]
    # group_key (the per-key sequential slots) is still submit_batch's
    bid = submit_job(conn, {"vehicle": ["A", "B"], "term": [1]}, {"group_key": "vehicle"})
    assert [i["group_key"] for i in items(conn, bid)] == ["A", "B"]


def test_partial_failures_counted_per_job_and_per_vehicle(app, db, mock, batchd_factory):
    conn = app
    # fault injection: these combinations answer 422 (permanent: the item fails alone)
    bad = {"TESLA-M3-24-15000", "TESLA-M3-36-20000", "XX-UNKNOWN-36-10000",
           "XX-UNKNOWN-36-20000"}
    mock.configure(latency_ms=10, ids={i: {"status": 422} for i in bad})
    start_batchd(batchd_factory, db, mock)

    j1 = insert_job(conn, "Fleet GmbH", ["VW-GOLF-8", "TESLA-M3"], [24, 36],
                    [10000, 15000, 20000])
    j2 = insert_job(conn, "Muster AG", ["XX-UNKNOWN"], [36], [10000, 20000])
    b1 = wait_batch_done(conn, str(job_row(conn, j1)["batch_id"]), timeout=30)
    b2 = wait_batch_done(conn, str(job_row(conn, j2)["batch_id"]), timeout=30)
    assert (b1["status"], b1["succeeded"], b1["failed"]) == ("completed_with_errors", 10, 2)
    assert (b2["status"], b2["succeeded"], b2["failed"]) == ("failed", 0, 2)

    def counts(total, succeeded, failed):
        return {"total": total, "succeeded": succeeded, "failed": failed, "cancelled": 0,
                "unfinished": 0}

    assert b1["summary"] == dict(counts(12, 10, 2), group="vehicle",
                                 groups={"VW-GOLF-8": counts(6, 6, 0),
                                         "TESLA-M3": counts(6, 4, 2)})
    assert b2["summary"] == dict(counts(2, 0, 2), group="vehicle",
                                 groups={"XX-UNKNOWN": counts(2, 0, 2)})
    r1 = wait_until(lambda: (r := job_row(conn, j1))["done_calls"] and r, timeout=5)
    r2 = wait_until(lambda: (r := job_row(conn, j2))["done_calls"] and r, timeout=5)
    assert (r1["status"], r1["items"], r1["succeeded"], r1["failed"]) == \
        ("completed_with_errors", 12, 10, 2)
    assert r1["by_vehicle"] == b1["summary"]["groups"]
    assert (r2["status"], r2["succeeded"], r2["failed"]) == ("failed", 0, 2)
    assert r2["by_vehicle"] == {"XX-UNKNOWN": counts(2, 0, 2)}
    failed = {f'{i["payload"]["vehicle"]}-{i["payload"]["term"]}-{i["payload"]["mileage"]}'
              for b in (b1, b2) for i in items(conn, str(b["id"])) if i["status"] == "failed"}
    assert failed == bad
    assert all(i["http_status"] == 422 for b in (b1, b2) for i in items(conn, str(b["id"]))
               if i["status"] == "failed")
    for b in (b1, b2):
        ev = [r["event"] for r in q(conn, "SELECT event FROM batchd.batch_events "
                                          "WHERE batch_id = %s ORDER BY id", b["id"])]
        assert ev.count("callback_done") == 1 and "callback_failed" not in ev, ev
    assert (r1["done_calls"], r2["done_calls"]) == (1, 1)
    assert check_consistency(conn) == []


def test_cancelled_job_summary_and_on_done_once_per_end(app, db, mock, batchd_factory):
    conn = app
    mock.configure(latency_ms=400)
    d = start_batchd(batchd_factory, db, mock, max_inflight="2")
    jid = insert_job(conn, "Slow AG", ["A", "B", "C"], [24, 36], [10000])
    bid = str(job_row(conn, jid)["batch_id"])
    wait_until(lambda: one(conn, "SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s "
                                 "AND status = 'running'", bid)["n"] > 0, timeout=10)
    assert one(conn, "SELECT batchd.cancel_batch(%s, %s) AS r", TENANT, bid)["r"] == "ok"
    b = wait_until(lambda: (x := batch(conn, bid))["finished_at"] and x, timeout=15)
    s = b["summary"]
    assert b["status"] == "cancelled" and s["unfinished"] == 0
    assert (s["total"], s["succeeded"], s["failed"], s["cancelled"]) == \
        (6, b["succeeded"], b["failed"], b["cancelled"])
    assert s["cancelled"] >= 1
    groups = s["groups"]
    assert set(groups) == {"A", "B", "C"}
    for k in ("total", "succeeded", "failed", "cancelled"):
        assert sum(g[k] for g in groups.values()) == s[k], (k, s)
    row = wait_until(lambda: (r := job_row(conn, jid))["done_calls"] and r, timeout=5)
    assert (row["status"], row["done_calls"], row["cancelled"]) == \
        ("cancelled", 1, s["cancelled"])

    # a retry reopens it; its next end writes the summary and calls on_done again
    mock.configure(latency_ms=0)
    assert one(conn, "SELECT batchd.retry_batch(%s, %s) AS r", TENANT, bid)["r"] == "ok"
    b = wait_batch_done(conn, bid, timeout=20)
    assert b["status"] == "completed"
    assert b["summary"]["groups"] == {
        v: {"total": 2, "succeeded": 2, "failed": 0, "cancelled": 0, "unfinished": 0}
        for v in "ABC"}
    row = wait_until(lambda: (r := job_row(conn, jid))["done_calls"] == 2 and r, timeout=5)
    assert (row["status"], row["succeeded"], row["cancelled"]) == ("completed", 6, 0)
    assert check_consistency(conn) == []
    d.stop()


# ------------------------------------------------------------------ bounds and bad input

def test_expansion_bound(app):
    conn = app
    job = {"vehicle": ["A", "B"], "term": [24, 36], "mileage": [1, 2, 3]}
    e = sql_error(conn, "SELECT batchd.submit_job('t', 'r', %s, %s)", Jsonb(job),
                  Jsonb({"fanout": ["vehicle", "term", "mileage"], "max_items": 10}))
    assert e.sqlstate == "22023"
    assert e.diag.message_primary == ("job expands into 12 items (2 vehicle x 2 term x 3 mileage), "
                                      "more than max_items (10)")
    assert "Split the job" in e.diag.message_hint
    assert count_batches(conn) == 0
    # exactly at the bound is fine
    assert batch(conn, submit_job(conn, job, {"max_items": 12}))["total"] == 12

    # the default bound, 10000: checked before anything is built
    big = {"a": list(range(101)), "b": list(range(100))}
    e = sql_error(conn, "SELECT batchd.submit_job('t', 'r', %s)", Jsonb(big))
    assert e.sqlstate == "22023" and "10100 items" in str(e) and "max_items (10000)" in str(e)
    huge = {"a": list(range(1000)), "b": list(range(1000)), "c": list(range(1000))}
    e = sql_error(conn, "SELECT batchd.fanout(%s, NULL, 1000000)", Jsonb(huge))
    assert "1000000000 items" in str(e)
    for bad in (0, 1000001, 1.5, "10"):
        e = sql_error(conn, "SELECT batchd.submit_job('t', 'r', %s, %s)", Jsonb(job),
                      Jsonb({"max_items": bad}))
        assert e.sqlstate == "22023" and "max_items must be an integer from 1 to 1000000" in str(e)

    # through the intake: the INSERT fails with it, no row, no batch
    n = 10001
    e = sql_error(conn, "INSERT INTO app.quote_jobs (customer, vehicles, terms, mileages) "
                        "SELECT 'big', '{A}', '{24}', array_agg(g) FROM generate_series(1, %s) g",
                  n)
    assert e.sqlstate == "22023" and f"job expands into {n} items" in str(e)
    assert one(conn, "SELECT count(*) AS n FROM app.quote_jobs")["n"] == 0
    assert count_batches(conn) == 1


BAD_JOBS = [
    ({"v": "A"}, {"fanout": ["v"]}, 'fanout field "v" must be a JSON array (it is string)'),
    ({"v": []}, {}, 'fanout field "v" is an empty list: the job would have no items'),
    ({"v": ["A"]}, {"fanout": ["w"]}, 'fanout field "w" is not a field of the job'),
    ({"v": ["A"]}, {"fanout": ["v", "v"]}, 'fanout names field "v" twice'),
    ({"v": ["A"]}, {"fanout": "v"}, "fanout must be a JSON array of field names (strings)"),
    ({"v": ["A"]}, {"group": "w"}, 'group "w" is not a field of the job'),
    ({"v": ["A"]}, {"group": 1}, "group must be a non-empty string naming a field of the job"),
    ({"v": ["A"]}, {"grup": "v"}, 'unknown option "grup"'),
    ({"v": ["A"]}, {"on_done": "app.nope"}, "on_done: no function app.nope(batchd.batches) exists"),
    ({"v": ["A"]}, {"on_done": "1bad"}, 'invalid function name "1bad"'),
    ({"v": ["A"]}, {"priority": 11}, "priority must be an integer from 0 to 10"),
]


@pytest.mark.parametrize("job,options,message", BAD_JOBS)
def test_submit_job_bad_input(app, job, options, message):
    conn = app
    e = sql_error(conn, "SELECT batchd.submit_job('t', 'r', %s, %s)", Jsonb(job), Jsonb(options))
    assert e.sqlstate == "22023"
    assert message in e.diag.message_primary, e.diag.message_primary
    assert count_batches(conn) == 0
    e = sql_error(conn, "SELECT batchd.submit_job('t', 'r', '[1]')")
    assert e.sqlstate == "22023" and "job must be a JSON object" in str(e)


BAD_TRIGGERS = [
    ("AFTER INSERT", "'quotes'", "the tenant option is required"),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\"'", "the options are not valid JSON"),
    ("AFTER INSERT", "'quotes', '[1]'", "the options must be a JSON object"),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\", \"tennant\": 1}'", 'unknown option "tennant"'),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\", \"key\": \"nope\"}'",
     'key: "nope" is not a column of the table'),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\", \"columns\": [\"a\", \"zz\"]}'",
     'columns: "zz" is not a column of the table'),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\", \"batch_column\": \"zz\"}'",
     'batch_column: "zz" is not a column of the table'),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\", \"job\": \"app.nope\"}'",
     "no function app.nope(app.t2) exists"),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\", \"job\": \"app.job_of\", \"columns\": [\"a\"]}'",
     "give columns or job, not both"),
    ("BEFORE INSERT", "'quotes', '{\"tenant\": \"t\"}'",
     "must be an AFTER INSERT (or UPDATE) ... FOR EACH ROW trigger"),
    ("AFTER INSERT", "'quotes', '{\"tenant\": \"t\"}', 'x'", "not 3 arguments"),
]


@pytest.mark.parametrize("when,args,message", BAD_TRIGGERS)
def test_intake_bad_options_fail_the_insert(app, when, args, message):
    conn = app
    conn.execute("CREATE TABLE app.t2 (a int PRIMARY KEY, v text[])")
    conn.execute(f"CREATE TRIGGER t2_intake {when} ON app.t2 FOR EACH ROW "
                 f"EXECUTE FUNCTION batchd.intake({args})")
    e = sql_error(conn, "INSERT INTO app.t2 VALUES (1, '{x,y}')")
    assert e.sqlstate == "22023", str(e)
    assert message in e.diag.message_primary, e.diag.message_primary
    if message != "no function app.nope(app.t2) exists":
        assert e.diag.message_primary.startswith(
            "batchd.intake() (trigger t2_intake on app.t2)"), e.diag.message_primary
    assert one(conn, "SELECT count(*) AS n FROM app.t2")["n"] == 0
    assert count_batches(conn) == 0


def test_intake_defaults_and_key(app):
    """No options but the tenant: the job is the whole row, every array column
    fans out, the key is the primary key. A table without one needs key."""
    conn = app
    conn.execute("CREATE TABLE app.t3 (code text PRIMARY KEY, v text[], n int)")
    conn.execute("CREATE TRIGGER t3_intake AFTER INSERT ON app.t3 FOR EACH ROW "
                 "EXECUTE FUNCTION batchd.intake('r', '{\"tenant\": \"t\"}')")
    conn.execute("INSERT INTO app.t3 VALUES ('k1', '{x,y}', 5)")
    b = one(conn, "SELECT * FROM batchd.batches")
    assert (b["source"], b["source_key"], b["name"], b["route"]) == ("app.t3", "k1", "t3 k1", "r")
    assert [i["payload"] for i in items(conn, str(b["id"]))] == [
        {"code": "k1", "v": "x", "n": 5}, {"code": "k1", "v": "y", "n": 5}]

    conn.execute('CREATE TABLE app."Odd Name" (a int, b int)')
    conn.execute('CREATE TRIGGER odd AFTER INSERT ON app."Odd Name" FOR EACH ROW '
                 "EXECUTE FUNCTION batchd.intake('r', '{\"tenant\": \"t\"}')")
    e = sql_error(conn, 'INSERT INTO app."Odd Name" VALUES (1, 2)')
    assert "the table has no single-column primary key: name the key column (option key)" in str(e)
    conn.execute('DROP TRIGGER odd ON app."Odd Name"')
    conn.execute('CREATE TRIGGER odd AFTER INSERT ON app."Odd Name" FOR EACH ROW '
                 "EXECUTE FUNCTION batchd.intake('r', "
                 "'{\"tenant\": \"t\", \"key\": \"b\", \"columns\": [\"a\"]}')")
    conn.execute('INSERT INTO app."Odd Name" VALUES (1, 2)')
    b = one(conn, "SELECT * FROM batchd.batches WHERE source_key = '2'")
    assert b["source"] == 'app."Odd Name"'
    assert [i["payload"] for i in items(conn, str(b["id"]))] == [{"a": 1}]
    e = sql_error(conn, 'INSERT INTO app."Odd Name" VALUES (1, NULL)')
    assert "the row's key (column b) is NULL" in str(e)


def test_intake_on_update_with_when_and_batch_column(app):
    """AFTER INSERT OR UPDATE with a WHEN clause resubmits a row; the
    write-back of batch_column does not submit again."""
    conn = app
    conn.execute("CREATE TABLE app.t4 (id int PRIMARY KEY, v int[], state text, batch uuid)")
    conn.execute("CREATE TRIGGER t4_intake AFTER INSERT OR UPDATE ON app.t4 FOR EACH ROW "
                 "WHEN (NEW.state = 'new') EXECUTE FUNCTION batchd.intake('r', "
                 "'{\"tenant\": \"t\", \"columns\": [\"id\", \"v\"], \"batch_column\": \"batch\"}')")
    conn.execute("INSERT INTO app.t4 VALUES (1, '{1,2,3}', 'new')")
    first = one(conn, "SELECT batch FROM app.t4")["batch"]
    assert count_batches(conn) == 1 and batch(conn, first)["total"] == 3
    conn.execute("UPDATE app.t4 SET state = 'done'")
    assert count_batches(conn) == 1
    conn.execute("UPDATE app.t4 SET state = 'new', v = '{4}'")
    second = one(conn, "SELECT batch FROM app.t4")["batch"]
    assert count_batches(conn) == 2 and second != first
    assert [i["payload"] for i in items(conn, second)] == [{"id": 1, "v": 4}]


# ------------------------------------------------------------------ migration

def test_migration_014_down_and_up(db, conn, tmp_path):
    def columns():
        return {r["column_name"] for r in q(
            conn, "SELECT column_name FROM information_schema.columns "
                  "WHERE table_schema = 'batchd' AND table_name = 'batches'")}

    def functions():
        return {r["proname"] for r in q(
            conn, "SELECT proname FROM pg_proc WHERE pronamespace = 'batchd'::regnamespace")}

    new_cols = {"job", "job_group", "summary", "on_done", "source", "source_key"}
    new_fns = {"fanout", "submit_job", "job_summary", "job_summary_of", "intake", "intake_job",
               "batches_job_summary", "batches_job_on_done"}
    assert new_cols <= columns() and new_fns <= functions()
    applied = one(conn, "SELECT count(*) AS n FROM batchd.schema_migrations")["n"]
    # the migrations from 014 on (later ones may exist)
    down = one(conn, "SELECT count(*) AS n FROM batchd.schema_migrations WHERE version >= 14")["n"]

    # a user table's intake trigger depends on batchd.intake(): the down fails
    # and reverts nothing
    conn.execute("CREATE TABLE public.src (id int PRIMARY KEY)")
    conn.execute("CREATE TRIGGER src_intake AFTER INSERT ON public.src FOR EACH ROW "
                 "EXECUTE FUNCTION batchd.intake('r', '{\"tenant\": \"t\"}')")
    cfg = write_minimal_config(str(tmp_path / "m.ini"), db.conninfo)
    r = run_batchd(["migrate", "-c", cfg, "--down", str(down)])
    assert r.returncode == 1 and "src_intake" in r.stderr, r.stderr
    assert one(conn, "SELECT count(*) AS n FROM batchd.schema_migrations")["n"] == applied
    conn.execute("DROP TRIGGER src_intake ON public.src")

    bid = submit_job(conn, {"v": ["a", "b"]}, {"group": "v"})
    migrate(db.conninfo, str(tmp_path), down=down)
    assert not (new_cols & columns()) and not (new_fns & functions())
    assert batch(conn, bid)["total"] == 2, "the batches stay"
    migrate(db.conninfo, str(tmp_path))
    assert new_cols <= columns() and new_fns <= functions()
    assert batch(conn, submit_job(conn, {"v": ["a", "b", "c"]}))["total"] == 3


def test_plain_batches_are_untouched(conn):
    """A batch from submit_batch has no job: no summary is written at its end,
    no on_done; job_summary() still answers for it (no groups)."""
    bid = str(one(conn, "SELECT batchd.submit_batch('t', 'r', '[{\"id\": 1}]') AS id")["id"])
    conn.execute("SELECT batchd.cancel_batch('t', %s)", (bid,))
    b = batch(conn, bid)
    assert b["status"] == "cancelled" and b["finished_at"] is not None
    assert (b["job"], b["summary"], b["on_done"], b["source"]) == (None, None, None, None)
    assert one(conn, "SELECT batchd.job_summary(%s) AS s", bid)["s"] == {
        "total": 1, "succeeded": 0, "failed": 0, "cancelled": 1, "unfinished": 0}
    assert one(conn, "SELECT batchd.job_summary(gen_random_uuid()) AS s")["s"] is None


def test_backfill_with_submit_job_and_callback_order(app):
    """Rows from before the trigger: submit_job() with the row's source and
    key, as the intake records them. At the end the job's on_done runs
    before the route's on_batch_done, and both see the summary."""
    conn = app
    conn.execute("ALTER TABLE app.quote_jobs DISABLE TRIGGER quote_jobs_intake")
    jid = insert_job(conn, "Old GmbH", ["A", "B"], [24], [1, 2])
    conn.execute("ALTER TABLE app.quote_jobs ENABLE TRIGGER quote_jobs_intake")
    assert count_batches(conn) == 0
    conn.execute("""
        CREATE TABLE app.route_done (batch_id uuid, had_summary boolean, row_done int);
        CREATE FUNCTION app.route_done(b batchd.batches) RETURNS void
        LANGUAGE sql SET search_path = app, pg_catalog AS $$
            INSERT INTO route_done
            SELECT b.id, b.summary IS NOT NULL, done_calls FROM quote_jobs
             WHERE id = b.source_key::int $$;
        SELECT batchd.sync_routes('[{"name": "quotes", "on_batch_done": "app.route_done"}]');
    """)
    bid = one(conn, "SELECT batchd.submit_job('dealer', 'quotes', app.job_of(j), "
                    "'{\"fanout\": [\"vehicle\", \"term\", \"mileage\"], \"group\": \"vehicle\", "
                    "\"on_done\": \"app.job_done\"}', 'app.quote_jobs', j.id::text) AS id "
                    "FROM app.quote_jobs AS j WHERE j.batch_id IS NULL")["id"]
    b = batch(conn, bid)
    assert (b["source"], b["source_key"], b["total"]) == ("app.quote_jobs", str(jid), 4)
    assert one(conn, "SELECT batchd.cancel_batch('dealer', %s) AS r", bid)["r"] == "ok"
    row = job_row(conn, jid)
    assert (row["status"], row["cancelled"], row["done_calls"]) == ("cancelled", 4, 1)
    assert row["by_vehicle"]["A"] == {"total": 2, "succeeded": 0, "failed": 0, "cancelled": 2,
                                      "unfinished": 0}
    # the route's callback ran after the job's (it saw done_calls = 1), with the summary
    assert q(conn, "SELECT had_summary, row_done FROM app.route_done") == [
        {"had_summary": True, "row_done": 1}]
    ev = [(r["event"], r["detail"].get("function")) for r in q(
        conn, "SELECT event, detail FROM batchd.batch_events WHERE batch_id = %s "
              "AND event LIKE 'callback%%' ORDER BY id", bid)]
    assert ev == [("callback_done", "app.job_done"), ("callback_done", "app.route_done")]

    e = sql_error(conn, "SELECT batchd.submit_job('t', 'r', '{}', '{}', 'app.quote_jobs')")
    assert e.sqlstate == "22023" and "source and source_key go together" in str(e)


def test_intake_job_function_runs_with_the_sessions_search_path(app, db):
    """The job function is called as hooks are: with the search_path a
    session of the role starts with (here the database's), not batchd's."""
    conn = app
    conn.execute("""
        CREATE TABLE app.labels (k int PRIMARY KEY, label text);
        INSERT INTO app.labels VALUES (1, 'one'), (2, 'two');
        CREATE TABLE app.t5 (id int PRIMARY KEY);
        -- no SET search_path of its own: "labels" is found through the session's
        CREATE FUNCTION app.job5(r app.t5) RETURNS jsonb LANGUAGE plpgsql AS $$
        BEGIN
            RETURN jsonb_build_object('id', r.id,
                                      'label', (SELECT label FROM labels WHERE k = r.id));
        END $$;
        CREATE TRIGGER t5_intake AFTER INSERT ON app.t5 FOR EACH ROW
            EXECUTE FUNCTION batchd.intake('r', '{"tenant": "t", "job": "app.job5"}');
    """)
    conn.execute(f'ALTER DATABASE "{db.name}" SET search_path = app, public')
    c2 = db.connect()
    c2.execute("INSERT INTO app.t5 VALUES (1), (2)")        # two rows, one transaction
    assert [r["payload"] for r in q(c2, "SELECT payload FROM batchd.items ORDER BY id")] == [
        {"id": 1, "label": "one"}, {"id": 2, "label": "two"}]
    c2.close()
    # a session whose search_path does not find labels: the INSERT fails
    e = sql_error(conn, "INSERT INTO app.t5 VALUES (3)")
    assert 'relation "labels" does not exist' in str(e)
