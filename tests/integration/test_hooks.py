"""Route hooks (migration 007): the result hook `[route] hook = schema.fn`,
called as fn(item batchd.items) in the transaction that records the item, and
the batch callback `[route] on_batch_done = schema.fn`, called as
fn(batch batchd.batches) in the transaction that ends the batch.

What is checked:
  - batchd.sync_routes(): validation (22023 naming the route and key, nothing
    written), upsert, routes not listed left alone; batchd records its routes
    at start and refuses to start when a hook function does not exist;
  - a hook that raises fails that item alone ('hook failed: ...', counted as
    failed), in the same flush as items whose hooks succeeded and whose
    effects are committed; the hook sees the finished row (status, provider,
    http_status, result, error), for failed items too;
  - SQLSTATE BDRTY from a hook requeues the item (attempt counted, run_after
    later), and it fails once max_attempts is spent;
  - a route without a hook calls nothing;
  - on_batch_done runs exactly once per batch end: three batchd processes, one
    killed with kill -9 mid-batch (lease_timeout 2s, heartbeat 500ms), and
    again after retry_batch() reopens the batch; on cancel; on the reaper's
    path; a callback that raises leaves the batch ended, with a
    'callback_failed' event;
  - batchd.check_consistency() and batchd.check_groups() stay empty.

The hook functions are the tests' own (schema app, created before batchd
starts, since batchd validates them at start).
"""

import uuid

import psycopg
import pytest

import chaos
from chaos import Fleet, install_audit
from conftest import batch, check_consistency, migrate, submit, wait_batch_done, wait_until

ROUTE = "hooked"

APP_SQL = r"""
CREATE SCHEMA app;

-- one row per hook call that did not raise (a raising call is rolled back)
CREATE TABLE app.seen (
    item_id     bigint NOT NULL,
    batch_id    uuid   NOT NULL,
    pid         text,
    status      text   NOT NULL,
    provider    text,
    http_status int,
    result      jsonb,
    error       text,
    attempts    int    NOT NULL,
    txid        bigint NOT NULL DEFAULT txid_current()
);

CREATE FUNCTION app.hook(it batchd.items) RETURNS void
LANGUAGE plpgsql SET search_path = app, pg_catalog AS $$
BEGIN
    INSERT INTO seen (item_id, batch_id, pid, status, provider, http_status, result, error,
                      attempts)
    VALUES (it.id, it.batch_id, it.payload ->> 'id', it.status, it.provider, it.http_status,
            it.result, it.error, it.attempts);
    CASE it.payload ->> 'hook'
    WHEN 'raise' THEN
        RAISE EXCEPTION 'bad answer for %', it.payload ->> 'id';
    WHEN 'retry_once' THEN
        IF it.attempts < 2 THEN
            RAISE EXCEPTION 'not ready yet' USING ERRCODE = 'BDRTY';
        END IF;
    WHEN 'retry_always' THEN
        RAISE EXCEPTION 'never ready' USING ERRCODE = 'BDRTY';
    ELSE
        NULL;
    END CASE;
END
$$;

-- one row per callback call that did not raise
CREATE TABLE app.batch_done (
    batch_id  uuid NOT NULL,
    status    text NOT NULL,
    succeeded int  NOT NULL,
    failed    int  NOT NULL,
    cancelled int  NOT NULL,
    finished  boolean NOT NULL,
    seen      int  NOT NULL,     -- hook rows of the batch visible to the callback
    txid      bigint NOT NULL DEFAULT txid_current()
);

CREATE FUNCTION app.done(b batchd.batches) RETURNS void
LANGUAGE plpgsql SET search_path = app, pg_catalog AS $$
BEGIN
    INSERT INTO batch_done (batch_id, status, succeeded, failed, cancelled, finished, seen)
    VALUES (b.id, b.status, b.succeeded, b.failed, b.cancelled, b.finished_at IS NOT NULL,
            (SELECT count(*) FROM seen WHERE seen.batch_id = b.id));
    IF b.metadata ->> 'callback' = 'raise' THEN
        RAISE EXCEPTION 'callback broke for %', b.name;
    END IF;
END
$$;
"""


# ------------------------------------------------------------------ helpers

def setup_app(conn):
    conn.execute(APP_SQL)


def prov(mock, **keys):
    p = {"url": mock.url("/item/{id}"), "timeout": "5s", "connect_timeout": "2s",
         "breaker_failures": "100000"}
    p.update({k: str(v) for k, v in keys.items()})
    return p


def hooked_route(**extra):
    r = {"providers": "mock", "hook": "app.hook", "on_batch_done": "app.done"}
    r.update(extra)
    return r


def start(batchd_factory, db, mock, routes=None, **keys):
    keys.setdefault("poll_interval", "200ms")
    return batchd_factory(db=db, providers={"mock": prov(mock)},
                          routes=routes or {ROUTE: hooked_route()}, **keys)


def rows(conn, sql, *args):
    return conn.execute(sql, args).fetchall()


def by_pid(conn, bid):
    return {r["payload"]["id"]: r for r in rows(
        conn, "SELECT * FROM batchd.items WHERE batch_id = %s", bid)}


def assert_clean(conn):
    assert check_consistency(conn) == []
    assert rows(conn, "SELECT * FROM batchd.check_groups()") == []


def events(conn, bid, *names):
    return [r["event"] for r in rows(
        conn, "SELECT event FROM batchd.batch_events WHERE batch_id = %s "
              "AND event = ANY(%s) ORDER BY id", bid, list(names))]


def sync(conn, routes):
    return conn.execute("SELECT batchd.sync_routes(%s::jsonb) AS n",
                        (psycopg.types.json.Jsonb(routes),)).fetchone()["n"]


# ------------------------------------------------------------------ sync_routes

def test_sync_routes_validates_and_upserts(conn):
    setup_app(conn)
    bad = [
        ({}, "routes must be a JSON array"),
        ([1], r"routes\[0\] must be a JSON object"),
        ([{"name": ""}], r"routes\[0\]: name must be"),
        ([{"name": "a", "hook": "x; drop table t"}], 'route "a": hook = "x; drop table t" is not a valid'),
        ([{"name": "a", "hook": "a.b.c"}], "is not a valid function name"),
        ([{"name": "a", "hook": "app.nope"}], r"no function app.nope\(batchd.items\) exists"),
        ([{"name": "a", "on_batch_done": "app.hook"}],
         r"on_batch_done = app.hook: no function app.hook\(batchd.batches\) exists"),
        ([{"name": "a", "hook": 5}], "hook must be a string or null"),
        ([{"name": "a", "extra": 1}], 'unknown key "extra"'),
        ([{"name": "a"}, {"name": "a"}], 'route "a" is listed twice'),
        ([{"name": "ok", "hook": "app.hook"}, {"name": "b", "hook": "nosuch.fn"}],
         r"no function nosuch.fn\(batchd.items\)"),
    ]
    for arg, msg in bad:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=msg):
            sync(conn, arg)
    assert rows(conn, "SELECT * FROM batchd.routes") == []   # nothing written

    # names fold to lower case, as unquoted SQL names do
    assert sync(conn, [{"name": "a", "hook": "App.Hook", "on_batch_done": "app.done"},
                       {"name": "b"}]) == 2
    assert sync(conn, [{"name": "a", "hook": "App.Hook", "on_batch_done": "app.done"}]) == 0
    assert sync(conn, [{"name": "a", "hook": None}]) == 1        # changed: hook removed
    got = {r["name"]: (r["hook"], r["on_batch_done"])
           for r in rows(conn, "SELECT * FROM batchd.routes")}
    assert got == {"a": (None, None), "b": (None, None)}          # b left alone
    # the table refuses a bad name written by hand
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE batchd.routes SET hook = 'x;y' WHERE name = 'a'")
    assert_clean(conn)


def test_batchd_records_routes_and_refuses_missing_hook(db, conn, mock, batchd_factory):
    setup_app(conn)
    d = start(batchd_factory, db, mock, routes={ROUTE: hooked_route(), "plain": "mock"})
    got = {r["name"]: (r["hook"], r["on_batch_done"])
           for r in rows(conn, "SELECT * FROM batchd.routes")}
    assert got == {ROUTE: ("app.hook", "app.done"), "plain": (None, None)}
    d.stop()

    # a hook that does not exist: a startup error naming it
    with pytest.raises(AssertionError, match=r"app\.missing"):
        start(batchd_factory, db, mock, routes={ROUTE: hooked_route(hook="app.missing")})
    assert_clean(conn)


# ------------------------------------------------------------------ result hook

def test_raising_hook_fails_only_that_item(db, conn, mock, batchd_factory):
    """One flush: the item whose hook raises is failed ('hook failed: ...'),
    the others are succeeded with their hook's rows committed, in the same
    transaction. A provider failure reaches the hook as a failed row."""
    setup_app(conn)
    install_audit(conn)
    mock.configure(ids={"p404": {"status": 404}})
    start(batchd_factory, db, mock, flush_interval="500ms", flush_size="500", max_inflight="50")
    payload = [{"id": f"ok{i}"} for i in range(18)]
    payload.insert(7, {"id": "bad", "hook": "raise"})
    payload.append({"id": "p404"})
    bid = submit(conn, "t", ROUTE, payload)
    b = wait_batch_done(conn, bid, timeout=20)
    assert (b["status"], b["succeeded"], b["failed"]) == ("completed_with_errors", 18, 2)

    it = by_pid(conn, bid)
    bad = it["bad"]
    assert bad["status"] == "failed"
    assert bad["error"] == "hook failed: bad answer for bad"
    # the provider's answer is kept
    assert bad["provider"] == "mock" and bad["http_status"] == 200
    assert bad["result"]["id"] == "bad"
    assert all(it[f"ok{i}"]["status"] == "succeeded" for i in range(18))

    seen = {r["pid"]: r for r in rows(conn, "SELECT * FROM app.seen")}
    assert set(seen) == {f"ok{i}" for i in range(18)} | {"p404"}   # 'bad' rolled back
    # the hook sees the finished row
    ok0 = seen["ok0"]
    assert (ok0["status"], ok0["provider"], ok0["http_status"], ok0["attempts"]) == \
        ("succeeded", "mock", 200, 1)
    assert ok0["result"]["id"] == "ok0"
    p = seen["p404"]
    assert (p["status"], p["http_status"]) == ("failed", 404) and p["error"]

    # same flush: the failed item was recorded in a transaction that also
    # recorded (and ran the hooks of) succeeded items
    txid = rows(conn, "SELECT DISTINCT txid FROM public.item_audit WHERE item_id = %s "
                      "AND new_status IN ('succeeded', 'failed')", bad["id"])
    assert len(txid) == 1
    seen_in_tx = [r for r in seen.values() if r["txid"] == txid[0]["txid"]]
    assert seen_in_tx, "the raising item's flush recorded no other item"
    assert all(r["status"] == "succeeded" for r in seen_in_tx if r["pid"] != "p404")

    # the callback saw the hooks' rows of the last flush
    done = rows(conn, "SELECT * FROM app.batch_done WHERE batch_id = %s", bid)
    assert len(done) == 1 and done[0]["seen"] == 19 and done[0]["failed"] == 2
    assert_clean(conn)


def test_retry_sqlstate_requeues(db, conn, mock, batchd_factory):
    """BDRTY: back to queued with the attempt counted, run again later;
    failed once max_attempts is spent."""
    setup_app(conn)
    start(batchd_factory, db, mock)
    bid = submit(conn, "t", ROUTE, [{"id": "once", "hook": "retry_once"},
                                    {"id": "always", "hook": "retry_always"},
                                    {"id": "plain"}], {"max_attempts": 2})
    # the first answer is not recorded as a success: it waits, queued
    wait_until(lambda: by_pid(conn, bid)["once"]["attempts"] == 1
               and by_pid(conn, bid)["once"]["status"] == "queued", timeout=10,
               desc="'once' requeued")
    q = by_pid(conn, bid)["once"]
    assert q["error"] == "hook asked for a retry: not ready yet" and q["worker_id"] is None
    assert conn.execute("SELECT %s > now() AS later", (q["run_after"],)).fetchone()["later"]

    b = wait_batch_done(conn, bid, timeout=20)
    assert (b["status"], b["succeeded"], b["failed"]) == ("completed_with_errors", 2, 1)
    it = by_pid(conn, bid)
    assert (it["once"]["status"], it["once"]["attempts"], it["once"]["error"]) == \
        ("succeeded", 2, None)
    assert (it["always"]["status"], it["always"]["attempts"]) == ("failed", 2)
    assert it["always"]["error"] == "hook failed: never ready"
    ids = mock.ids()
    assert (ids["once"], ids["always"], ids["plain"]) == (2, 2, 1)
    # only the successful call of 'once' left its row
    seen = rows(conn, "SELECT pid, attempts FROM app.seen ORDER BY pid")
    assert [(r["pid"], r["attempts"]) for r in seen] == [("once", 2), ("plain", 1)]
    assert_clean(conn)


def test_route_without_hook_calls_nothing(db, conn, mock, batchd_factory):
    setup_app(conn)
    start(batchd_factory, db, mock, routes={ROUTE: hooked_route(), "plain": "mock"})
    b1 = submit(conn, "t", "plain", [{"id": f"p{i}", "hook": "raise"} for i in range(20)])
    b2 = submit(conn, "t", ROUTE, [{"id": f"h{i}"} for i in range(5)])
    assert wait_batch_done(conn, b1)["status"] == "completed"    # 'raise' never called
    assert wait_batch_done(conn, b2)["status"] == "completed"
    seen = rows(conn, "SELECT batch_id FROM app.seen")
    assert len(seen) == 5 and all(str(r["batch_id"]) == b2 for r in seen)
    assert rows(conn, "SELECT batch_id FROM app.batch_done") == [{"batch_id": uuid.UUID(b2)}]
    assert events(conn, b1, "callback_done", "callback_failed") == []
    assert_clean(conn)


def test_hook_on_reaper_path(db, conn):
    """An item that reaches max_attempts with its worker lost is recorded by
    the reaper through complete_items(): the hook sees it failed ('worker
    lost'), and the batch's end runs the callback."""
    setup_app(conn)
    sync(conn, [{"name": ROUTE, "hook": "app.hook", "on_batch_done": "app.done"}])
    bid = submit(conn, "t", ROUTE, [{"id": "a"}, {"id": "b"}], {"max_attempts": 1})
    dead = str(uuid.uuid4())
    conn.execute("SELECT * FROM batchd.worker_register(%s, 'h', 1, 'v', '{}', 60000)", (dead,))
    assert len(rows(conn, "SELECT * FROM batchd.claim_items(%s, ARRAY[%s], 10)", dead, ROUTE)) == 2
    conn.execute("UPDATE batchd.workers SET heartbeat_at = now() - interval '1 hour' "
                 "WHERE id = %s", (dead,))
    r = conn.execute("SELECT * FROM batchd.reap_workers(%s, 1000)", (str(uuid.uuid4()),)).fetchone()
    assert (r["workers"], r["failed"]) == (1, 2)
    seen = rows(conn, "SELECT pid, status, error FROM app.seen ORDER BY pid")
    assert [(s["pid"], s["status"], s["error"]) for s in seen] == \
        [("a", "failed", "worker lost"), ("b", "failed", "worker lost")]
    done = rows(conn, "SELECT status, failed FROM app.batch_done WHERE batch_id = %s", bid)
    assert [(d["status"], d["failed"]) for d in done] == [("failed", 2)]
    assert_clean(conn)


# ------------------------------------------------------------------ batch callback

def test_callback_on_cancel_once(db, conn):
    """cancel_batch() with nothing running ends the batch: one call. With
    items running, the batch ends when the last one is recorded: one call,
    then."""
    setup_app(conn)
    sync(conn, [{"name": ROUTE, "on_batch_done": "app.done"}])
    b1 = submit(conn, "t", ROUTE, [{"id": 1}, {"id": 2}])
    assert conn.execute("SELECT batchd.cancel_batch('t', %s) AS r", (b1,)).fetchone()["r"] == "ok"
    assert conn.execute("SELECT batchd.cancel_batch('t', %s) AS r", (b1,)).fetchone()["r"] == "terminal"
    done = rows(conn, "SELECT * FROM app.batch_done WHERE batch_id = %s", b1)
    assert [(d["status"], d["cancelled"], d["finished"]) for d in done] == [("cancelled", 2, True)]

    w = str(uuid.uuid4())
    b2 = submit(conn, "t", ROUTE, [{"id": 1}, {"id": 2}, {"id": 3}])
    claimed = rows(conn, "SELECT * FROM batchd.claim_items(%s, ARRAY[%s], 1)", w, ROUTE)
    assert len(claimed) == 1
    assert conn.execute("SELECT batchd.cancel_batch('t', %s) AS r", (b2,)).fetchone()["r"] == "ok"
    assert rows(conn, "SELECT * FROM app.batch_done WHERE batch_id = %s", b2) == []
    conn.execute("SELECT * FROM batchd.complete_items(%s, %s::jsonb)",
                 (w, f'[{{"id": {claimed[0]["id"]}, "status": "succeeded"}}]'))
    done = rows(conn, "SELECT * FROM app.batch_done WHERE batch_id = %s", b2)
    assert [(d["status"], d["succeeded"], d["cancelled"]) for d in done] == [("cancelled", 1, 2)]
    assert events(conn, b2, "callback_done") == ["callback_done"]
    assert_clean(conn)


def test_failing_callback_keeps_batch_completed(db, conn, mock, batchd_factory):
    setup_app(conn)
    start(batchd_factory, db, mock)
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(5)],
                 {"name": "cb", "metadata": {"callback": "raise"}})
    b = wait_batch_done(conn, bid)
    assert b["status"] == "completed" and b["finished_at"] is not None
    # the callback's own insert was rolled back; the completion stands
    assert rows(conn, "SELECT * FROM app.batch_done") == []
    ev = rows(conn, "SELECT event, detail FROM batchd.batch_events WHERE batch_id = %s "
                    "ORDER BY id", bid)
    names = [e["event"] for e in ev]
    assert names[-2:] == ["completed", "callback_failed"], names
    d = ev[-1]["detail"]
    assert d["function"] == "app.done" and d["status"] == "completed"
    assert d["error"] == "callback broke for cb" and d["sqlstate"] == "P0001"
    assert len(rows(conn, "SELECT * FROM app.seen")) == 5      # hooks unaffected
    assert_clean(conn)


@pytest.fixture
def fleet_factory(tmp_path):
    made = []

    def make(db, mock, **kw):
        f = Fleet(db.conninfo, mock, str(tmp_path), **kw)
        made.append(f)
        return f

    yield make
    problems = []
    for f in made:
        for p in f.procs:
            if p.running():
                p.thaw()
        f.stop_all(timeout=30)
        problems += f.problems()
        f.cleanup()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def test_callback_exactly_once_with_fleet_and_kill9(db, conn, mock, fleet_factory):
    """Three batchd processes, one killed with kill -9 mid-batch: each batch's
    callback runs exactly once, each item's hook exactly once; a retry of
    the batch that ended with errors runs it again at its next end."""
    setup_app(conn)
    # jitter: answers (and so flushes and claims) of a worker are spread out,
    # so that it always holds items in flight
    mock.configure(latency_ms=150, latency_jitter_ms=300,
                   ids={"b0-7": {"status": 404}, "b0-8": {"status": 404}})
    fleet = fleet_factory(db, mock, max_inflight=8,
                          route_keys={"hook": "app.hook", "on_batch_done": "app.done"})
    procs = [fleet.start() for _ in range(3)]
    n = 60
    bids = [submit(conn, "t", chaos.ROUTE, [{"id": f"b{b}-{i}"} for i in range(n)],
                   {"name": f"b{b}"}) for b in range(3)]
    wait_until(lambda: conn.execute("SELECT sum(succeeded + failed) AS n FROM batchd.batches"
                                    ).fetchone()["n"] >= 25, timeout=10, desc="25 recorded")
    victim = procs[0]
    wait_until(lambda: conn.execute("SELECT count(*) AS n FROM batchd.items WHERE worker_id = %s "
                                    "AND status = 'running'", (victim.worker_id(),)
                                    ).fetchone()["n"] >= 3, timeout=10, desc="victim busy")
    k = fleet.kill(victim)
    assert k.running, "the victim held items when it was killed"
    for bid in bids:
        wait_batch_done(conn, bid, timeout=30)
    b0 = batch(conn, bids[0])
    assert (b0["status"], b0["failed"]) == ("completed_with_errors", 2)
    assert all(batch(conn, b)["status"] == "completed" for b in bids[1:])
    # the victim's items were recovered by the others
    assert rows(conn, "SELECT 1 FROM batchd.batch_events WHERE event = 'recovered'")

    for bid in bids:
        done = rows(conn, "SELECT * FROM app.batch_done WHERE batch_id = %s", bid)
        assert len(done) == 1, done
        assert done[0]["seen"] == n                         # after every hook of the batch
        assert events(conn, bid, "callback_done") == ["callback_done"]
    # each item's hook ran once: recorded once, whoever recorded it
    dup = rows(conn, "SELECT item_id, count(*) AS n FROM app.seen GROUP BY 1 HAVING count(*) <> 1")
    assert dup == []
    assert conn.execute("SELECT count(*) AS n FROM app.seen").fetchone()["n"] == 3 * n

    # retry reopens the batch: its next end calls the callback again
    mock.configure(ids=None)
    assert conn.execute("SELECT batchd.retry_batch('t', %s) AS r",
                        (bids[0],)).fetchone()["r"] == "ok"
    assert wait_batch_done(conn, bids[0], timeout=20)["status"] == "completed"
    done = rows(conn, "SELECT status, succeeded, failed FROM app.batch_done "
                      "WHERE batch_id = %s ORDER BY txid", bids[0])
    assert [(d["status"], d["succeeded"], d["failed"]) for d in done] == \
        [("completed_with_errors", n - 2, 2), ("completed", n, 0)]
    assert events(conn, bids[0], "callback_done") == ["callback_done"] * 2
    assert rows(conn, "SELECT pid, status FROM app.seen WHERE pid IN ('b0-7', 'b0-8') "
                      "ORDER BY pid, txid") == [
        {"pid": "b0-7", "status": "failed"}, {"pid": "b0-7", "status": "succeeded"},
        {"pid": "b0-8", "status": "failed"}, {"pid": "b0-8", "status": "succeeded"}]
    fleet.join_watchers()
    rcs = fleet.stop_all()
    assert all(rc == 0 for rc in rcs.values()), rcs
    assert_clean(conn)


# ------------------------------------------------------------------ migration

def test_down_restores_003_complete_items(db, conn, tmp_path):
    """007 down: complete_items no longer calls hooks; up again: it does."""
    setup_app(conn)
    sync(conn, [{"name": ROUTE, "hook": "app.hook"}])
    # revert 007 and whatever came after it
    down = conn.execute("SELECT count(*) AS n FROM batchd.schema_migrations "
                        "WHERE version >= 7").fetchone()["n"]
    migrate(db.conninfo, str(tmp_path), down=down)
    assert conn.execute("SELECT max(version) AS v FROM batchd.schema_migrations"
                        ).fetchone()["v"] == 6
    assert conn.execute("SELECT to_regclass('batchd.routes') AS r").fetchone()["r"] is None
    assert conn.execute("SELECT count(*) AS n FROM pg_trigger WHERE tgname = 'batches_on_done'"
                        ).fetchone()["n"] == 0
    body_now = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = "
                            "'batchd.complete_items(uuid, jsonb)'::regprocedure").fetchone()
    assert "hook" not in body_now["prosrc"]
    migrate(db.conninfo, str(tmp_path))
    sync(conn, [{"name": ROUTE, "hook": "app.hook"}])
    w = str(uuid.uuid4())
    bid = submit(conn, "t", ROUTE, [{"id": 1}])
    it = rows(conn, "SELECT * FROM batchd.claim_items(%s, ARRAY[%s], 1)", w, ROUTE)[0]
    conn.execute("SELECT * FROM batchd.complete_items(%s, %s::jsonb)",
                 (w, f'[{{"id": {it["id"]}, "status": "succeeded"}}]'))
    assert len(rows(conn, "SELECT * FROM app.seen WHERE batch_id = %s", bid)) == 1
    assert_clean(conn)


# ------------------------------------------------------------------ search_path (issue #19)

ISSUE_HOOK = """
create table seen(item bigint, ok bool);
create function public.on_item(it batchd.items) returns void language plpgsql as $$
begin insert into seen values (it.id, it.status = 'succeeded'); end $$;
create table finished(batch uuid, status text);
create function public.on_done(b batchd.batches) returns void language plpgsql as $$
begin insert into finished values (b.id, b.status); end $$;
"""


def test_hook_written_in_psql_with_unqualified_tables_records_every_item(db, conn, mock,
                                                                         batchd_factory):
    """The hook of issue #19, copied unchanged: no schema on its table, no SET
    search_path of its own. It runs with the search_path a session of
    batchd's role has ("$user", public), so it finds public.seen."""
    conn.execute(ISSUE_HOOK)
    d = start(batchd_factory, db, mock,
              routes={ROUTE: hooked_route(hook="public.on_item", on_batch_done="public.on_done")})
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(40)])
    b = wait_batch_done(conn, bid)
    assert (b["status"], b["succeeded"], b["failed"]) == ("completed", 40, 0), b
    seen = rows(conn, "SELECT item, ok FROM public.seen ORDER BY item")
    ids = [r["id"] for r in rows(conn, "SELECT id FROM batchd.items WHERE batch_id = %s "
                                       "ORDER BY id", bid)]
    assert [r["item"] for r in seen] == ids and all(r["ok"] for r in seen)
    assert rows(conn, "SELECT batch::text AS b, status FROM public.finished") == \
        [{"b": bid, "status": "completed"}]
    assert rows(conn, "SELECT * FROM batchd.items WHERE batch_id = %s AND error IS NOT NULL",
                bid) == []
    d.stop()
    assert_clean(conn)


def claim_and_complete(conn, n=2):
    w = str(uuid.uuid4())
    bid = submit(conn, "t", ROUTE, [{"id": i} for i in range(n)])
    its = rows(conn, "SELECT * FROM batchd.claim_items(%s, ARRAY[%s], %s, NULL, NULL)", w, ROUTE, n)
    assert len(its) == n
    recs = ",".join(f'{{"id": {it["id"]}, "status": "succeeded"}}' for it in its)
    r = conn.execute("SELECT * FROM batchd.complete_items(%s, %s::jsonb)",
                     (w, f"[{recs}]")).fetchone()
    assert (r["applied"], r["fenced"]) == (n, 0)
    return bid


def test_hook_with_its_own_search_path_sees_only_that(conn):
    """A hook function that pins its search_path keeps it: of two tables named
    alike it writes the one its own path names."""
    conn.execute("""
        create schema mine;
        create table public.log(item bigint);
        create table mine.log(item bigint);
        create function public.pinned(it batchd.items) returns void language plpgsql
        set search_path = mine, pg_catalog as $$
        begin insert into log values (it.id); end $$;
    """)
    sync(conn, [{"name": ROUTE, "hook": "public.pinned"}])
    bid = claim_and_complete(conn, 3)
    assert len(rows(conn, "SELECT * FROM mine.log")) == 3
    assert rows(conn, "SELECT * FROM public.log") == []
    assert batch(conn, bid)["succeeded"] == 3
    assert_clean(conn)


def test_hook_follows_the_role_and_database_search_path(db, conn):
    """ALTER DATABASE ... SET search_path is what a session of the role starts
    with, so it is what the hook sees; batchd's own path comes back after."""
    conn.execute("""
        create schema hookland;
        create table hookland.notes(item bigint);
        create function public.note(it batchd.items) returns void language plpgsql as $$
        begin insert into notes values (it.id); end $$;
    """)
    conn.execute(f'ALTER DATABASE "{db.name}" SET search_path = hookland, public')
    c2 = db.connect()     # a new session starts with the database's setting
    sync(c2, [{"name": ROUTE, "hook": "public.note"}])
    claim_and_complete(c2, 2)
    assert len(rows(c2, "SELECT * FROM hookland.notes")) == 2
    assert c2.execute("SHOW search_path").fetchone()["search_path"] == "hookland, public"
    assert_clean(c2)


def test_user_objects_named_like_batchd_internals_change_nothing(conn):
    """Tables and functions in public named like batchd's (items, batches,
    groups, batch_events, hook_call, submit_batch) change nothing batchd's
    functions do, also while a hook runs with public on its search_path and
    writes to its own "items"."""
    conn.execute("""
        create table public.items(id bigint, note text);
        create table public.batches(id uuid);
        create table public.batch_events(batch_id uuid);
        create table public.groups(route text);
        create function public.hook_call(text) returns text language sql
            as $$ select 'SELECT 1/0' $$;
        create function public.now() returns timestamptz language sql
            as $$ select timestamptz '2000-01-01' $$;
        create function public.writes_items(it batchd.items) returns void language plpgsql as $$
        begin insert into items values (it.id, 'from the hook'); end $$;
    """)
    sync(conn, [{"name": ROUTE, "hook": "public.writes_items"}])
    bid = claim_and_complete(conn, 4)
    assert len(rows(conn, "SELECT * FROM public.items")) == 4
    assert rows(conn, "SELECT * FROM public.batches") == []
    assert rows(conn, "SELECT * FROM public.batch_events") == []
    b = batch(conn, bid)
    assert (b["status"], b["succeeded"]) == ("completed", 4)
    assert b["finished_at"].year > 2000
    assert len(rows(conn, "SELECT * FROM batchd.items WHERE batch_id = %s "
                          "AND status = 'succeeded'", bid)) == 4
    bid2 = submit(conn, "t", ROUTE, [{"id": 1}])
    assert batch(conn, bid2)["total"] == 1
    assert_clean(conn)
