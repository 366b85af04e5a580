"""Idempotency keys of POST /v1/batches (issue 21, point 1): the same key with
the same request gets the first batch back (200), with another request a 422
idempotency_key_reused naming the key, over REST, from batchctl and from SQL;
keys expire after idempotency_ttl (24 hours by default) and then go to the
next batch that uses them; concurrent submits of one key agree; migration 012
goes down and up again."""

import http.client
import json
import threading

import pytest

from conftest import check_consistency, migrate, run_ctl

ROUTE = "verify"
OTHER = "other"
TENANT = "acme"


class Client:
    def __init__(self, port, token):
        self.port = port
        self.token = token

    def post(self, body, key=None, raw=None):
        hdrs = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if key is not None:
            hdrs["Idempotency-Key"] = key
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("POST", "/v1/batches",
                      body=raw if raw is not None else json.dumps(body).encode(), headers=hdrs)
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()


def token(conn, tenant=TENANT):
    return conn.execute("SELECT batchd.create_token(%s) AS t", (tenant,)).fetchone()["t"]


def start(db, mock, batchd_factory, **keys):
    return batchd_factory(db=db, providers={"mock": {"url": mock.url("/item/{id}"),
                                                     "timeout": "5s"}},
                          routes={ROUTE: "mock", OTHER: "mock"}, **keys)


def nbatches(conn):
    return conn.execute("SELECT count(*) AS n, coalesce(sum(total), 0) AS items "
                        "FROM batchd.batches").fetchone()


def assert_reused(status, doc, key, first_id):
    assert status == 422, (status, doc)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["code"] == "idempotency_key_reused", doc
    assert f'"{key}"' in doc["error"]["message"], doc
    assert first_id in doc["error"]["message"], doc


def backdate(conn, bid, age):
    conn.execute("UPDATE batchd.batches SET created_at = now() - %s::interval WHERE id = %s",
                 (age, bid))


@pytest.fixture
def api(db, conn, mock, batchd_factory):
    d = start(db, mock, batchd_factory)
    return Client(d.port, token(conn)), conn


def test_same_key_same_request_returns_the_first_batch(api):
    a, conn = api
    body = {"route": ROUTE, "items": [{"id": 1}, {"id": 2}], "name": "n", "priority": 7}
    st, first = a.post(body, key="k1")
    assert st == 201, first
    st, again = a.post(body, key="k1")
    assert (st, again["id"]) == (200, first["id"]), again
    # the same request spelled differently: other key order, spacing, escapes,
    # and options given as null (null means "not given")
    raw = ('{ "priority" : 7, "name":"\\u006e", "group_key": null, "items" : '
           '[ {"id":1}, {"id":2} ], "route":"verify", "metadata": null }').encode()
    st, same = a.post(None, key="k1", raw=raw)
    assert (st, same["id"]) == (200, first["id"]), same
    assert nbatches(conn)["n"] == 1
    row = conn.execute("SELECT idempotency_key, length(idempotency_hash) AS n FROM batchd.batches "
                       "WHERE id = %s", (first["id"],)).fetchone()
    assert (row["idempotency_key"], row["n"]) == ("k1", 32)


@pytest.mark.parametrize("change", [
    {"items": [{"id": 1}, {"id": 3}]},          # other items (b.csv after a.csv)
    {"items": [{"id": 2}, {"id": 1}]},          # the same items in another order
    {"route": OTHER},
    {"name": "other"},
    {"priority": 9},
    {"max_attempts": 1},
    {"metadata": {"team": "ops"}},
    {"group_key": "id"},
])
def test_same_key_other_request_is_422(api, change):
    a, conn = api
    body = {"route": ROUTE, "items": [{"id": 1}, {"id": 2}]}
    st, first = a.post(body, key="nightly-2026-12-03")
    assert st == 201, first
    before = nbatches(conn)
    st, doc = a.post(body | change, key="nightly-2026-12-03")
    assert_reused(st, doc, "nightly-2026-12-03", first["id"])
    assert nbatches(conn) == before, "the refused request stored nothing"
    # the first request still gets its batch; other keys are not affected
    st, again = a.post(body, key="nightly-2026-12-03")
    assert (st, again["id"]) == (200, first["id"])
    st, other = a.post(body | change, key="nightly-2026-12-04")
    assert st == 201 and other["id"] != first["id"]


def test_keys_are_per_tenant(db, conn, mock, batchd_factory):
    d = start(db, mock, batchd_factory)
    a, b = Client(d.port, token(conn)), Client(d.port, token(conn, "globex"))
    st, first = a.post({"route": ROUTE, "items": [{"id": 1}]}, key="k")
    assert st == 201
    st, theirs = b.post({"route": ROUTE, "items": [{"id": 2}]}, key="k")
    assert st == 201 and theirs["id"] != first["id"], theirs


def test_expired_key_goes_to_the_next_batch(api):
    """Default idempotency_ttl: 24 hours from the first use of the key."""
    a, conn = api
    body = {"route": ROUTE, "items": [{"id": 1}]}
    st, first = a.post(body, key="k")
    assert st == 201
    backdate(conn, first["id"], "23 hours 59 minutes")
    st, doc = a.post(body | {"name": "new"}, key="k")
    assert_reused(st, doc, "k", first["id"])
    backdate(conn, first["id"], "24 hours 1 minute")
    st, new = a.post(body | {"name": "new"}, key="k")
    assert st == 201 and new["id"] != first["id"], new
    keys = {r["id"]: (r["idempotency_key"], r["idempotency_hash"] is None) for r in conn.execute(
        "SELECT id::text, idempotency_key, idempotency_hash FROM batchd.batches")}
    assert keys == {first["id"]: (None, True), new["id"]: ("k", False)}
    # the key now stands for the new request
    st, again = a.post(body | {"name": "new"}, key="k")
    assert (st, again["id"]) == (200, new["id"])
    st, doc = a.post(body, key="k")
    assert_reused(st, doc, "k", new["id"])
    # an expired key with the very same request also makes a new batch
    backdate(conn, new["id"], "2 days")
    st, third = a.post(body | {"name": "new"}, key="k")
    assert st == 201 and third["id"] not in (first["id"], new["id"])
    assert check_consistency(conn) == []


def test_idempotency_ttl_setting(db, conn, mock, batchd_factory):
    d = start(db, mock, batchd_factory, idempotency_ttl="10m")
    a = Client(d.port, token(conn))
    body = {"route": ROUTE, "items": [{"id": 1}]}
    st, first = a.post(body, key="k")
    assert st == 201
    backdate(conn, first["id"], "9 minutes")
    st, doc = a.post(body | {"priority": 1}, key="k")
    assert_reused(st, doc, "k", first["id"])
    backdate(conn, first["id"], "11 minutes")
    st, new = a.post(body | {"priority": 1}, key="k")
    assert st == 201 and new["id"] != first["id"]


def test_longest_idempotency_ttl(db, conn, mock, batchd_factory):
    d = start(db, mock, batchd_factory, idempotency_ttl="3650d")
    a = Client(d.port, token(conn))
    body = {"route": ROUTE, "items": [{"id": 1}]}
    st, first = a.post(body, key="k")
    assert st == 201
    backdate(conn, first["id"], "3649 days")
    st, doc = a.post(body | {"priority": 1}, key="k")
    assert_reused(st, doc, "k", first["id"])
    backdate(conn, first["id"], "3651 days")
    st, new = a.post(body | {"priority": 1}, key="k")
    assert st == 201 and new["id"] != first["id"]


def test_concurrent_submits_of_one_key_agree(api):
    """Eight submits race with one key, four with request X and four with Y:
    one batch is made; the others with its request get it (200), the rest
    get 422."""
    a, conn = api
    x = {"route": ROUTE, "items": [{"id": i} for i in range(100)]}
    y = {"route": ROUTE, "items": [{"id": i} for i in range(101)]}
    results = []
    go = threading.Barrier(8)

    def run(body):
        go.wait(10)
        st, doc = a.post(body, key="race")
        results.append((body is x, st, doc))

    threads = [threading.Thread(target=run, args=(x if i % 2 else y,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8, results
    created = [r for r in results if r[1] == 201]
    assert len(created) == 1, [(r[0], r[1]) for r in results]
    winner_is_x, _, winner = created[0]
    for is_x, st, doc in results:
        if st == 201:
            continue
        if is_x == winner_is_x:
            assert (st, doc["id"]) == (200, winner["id"]), doc
        else:
            assert_reused(st, doc, "race", winner["id"])
    row = nbatches(conn)
    assert (row["n"], row["items"]) == (1, 100 if winner_is_x else 101)
    assert check_consistency(conn) == []


def test_sql_api_submit(db, conn):
    """batchd.api_submit() called from SQL: the TTL argument defaults to 24
    hours; a batch from before migration 012 (no hash) answers its key
    whatever the request, as it did."""
    def sub(items, key, *ttl):
        return conn.execute(
            "SELECT * FROM batchd.api_submit(%s, %s, %s::jsonb, '{}', %s"
            + (", %s::interval" if ttl else "") + ")",
            (TENANT, ROUTE, json.dumps(items), key) + ttl).fetchone()
    first = sub([{"id": 1}], "s")
    assert first["created"] is True
    assert sub([{"id": 1}], "s") == {"id": first["id"], "created": False}
    with pytest.raises(Exception) as e:
        sub([{"id": 2}], "s")
    assert getattr(e.value, "sqlstate", None) == "BD422" and '"s"' in str(e.value)
    # a ttl of a second: the key of a batch two seconds old has expired
    backdate(conn, first["id"], "2 seconds")
    second = sub([{"id": 2}], "s", "1 second")
    assert second["created"] is True and second["id"] != first["id"]
    with pytest.raises(Exception) as e:
        sub([{"id": 2}], "s", "0 seconds")
    assert getattr(e.value, "sqlstate", None) == "22023"
    # no hash: the key's batch, whatever the request
    conn.execute("UPDATE batchd.batches SET idempotency_hash = NULL WHERE id = %s",
                 (second["id"],))
    assert sub([{"id": 3}], "s") == {"id": second["id"], "created": False}


def test_migration_012_down_and_up(db, conn, tmp_path):
    def columns():
        return {r["column_name"] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'batchd' AND table_name = 'batches'")}

    def api_submit_args():
        return sorted(r["a"] for r in conn.execute(
            "SELECT pg_get_function_identity_arguments(oid) AS a FROM pg_proc "
            "WHERE proname = 'api_submit' AND pronamespace = 'batchd'::regnamespace"))

    assert "idempotency_hash" in columns()
    assert len(api_submit_args()) == 1 and api_submit_args()[0].endswith("interval")
    # the migrations from 012 on, newest first (later ones may exist)
    applied = conn.execute("SELECT count(*) AS n FROM batchd.schema_migrations").fetchone()["n"]
    migrate(db.conninfo, str(tmp_path), down=applied - 11)
    assert "idempotency_hash" not in columns() and "idempotency_key" in columns()
    assert api_submit_args() == []
    migrate(db.conninfo, str(tmp_path))
    assert "idempotency_hash" in columns()
    # all the way down: no function of this release is left behind
    migrate(db.conninfo, str(tmp_path), down=applied)
    left = [r["proname"] for r in conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'batchd'::regnamespace")]
    assert "revoke_token_id" not in left and "api_submit" not in left, left
    migrate(db.conninfo, str(tmp_path))
    assert len(api_submit_args()) == 1
    row = conn.execute("SELECT * FROM batchd.api_submit('t', 'r', '[{}]', '{}', 'k')").fetchone()
    assert row["created"] is True


# ------------------------------------------------------------------ batchctl

def test_batchctl_submit_reused_key(db, conn, mock, batchd_factory, tmp_path):
    d = start(db, mock, batchd_factory)
    tok = token(conn)
    a = tmp_path / "a.csv"
    a.write_text("id,v\n1,x\n2,y\n")
    b = tmp_path / "b.csv"
    b.write_text("id,v\n" + "".join(f"{i},z\n" for i in range(29)))
    args = ["submit", "--route", ROUTE, "--idempotency-key", "k1"]
    r = run_ctl(args + [a], d.base, tok)
    assert r.returncode == 0, r.stderr
    first = r.stdout.strip()
    r = run_ctl(args + [a], d.base, tok)
    assert (r.returncode, r.stdout.strip()) == (0, first), r.stderr
    r = run_ctl(args + [b], d.base, tok)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert r.stdout == "", "no batch id is printed"
    assert '"k1"' in r.stderr and "HTTP 422" in r.stderr and first in r.stderr, r.stderr
    assert "new --idempotency-key" in r.stderr, r.stderr
    assert nbatches(conn)["items"] == 2
