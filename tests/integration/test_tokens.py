"""batchctl's token commands (issue 21, point 5): `-c batchd.ini` for the
database (read as batchd reads it, ${file:} and ${credential:} included),
`token list` with last_used_at, `token revoke --id`; and the REST API keeping
last_used_at at most once a minute."""

import http.client
import json
import re

import pytest

from conftest import run_ctl as ctl

ROUTE = "verify"
TS_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
RFC3339_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def config(tmp_path, database_line, name="batchd.ini"):
    p = tmp_path / name
    p.write_text(f"[batchd]\ndatabase = {database_line}\n\n"
                 "[provider p]\nurl = http://127.0.0.1:9/item/{id}\n\n"
                 "[route r]\nproviders = p\n")
    return str(p)


def get(port, token, path="/v1/batches"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def tokens(conn):
    return conn.execute("SELECT id, tenant, last_used_at, revoked, revoked_at "
                        "FROM batchd.api_tokens ORDER BY id").fetchall()


# ------------------------------------------------------------------ -c FILE

def test_config_file_gives_the_database(db, conn, tmp_path):
    # the conninfo from a file, as a secret would come
    (tmp_path / "conninfo").write_text(db.conninfo + "\n")
    cfg = config(tmp_path, "${file:conninfo}")
    tok = ok(ctl(["token", "create", "--tenant", "acme", "-c", cfg])).strip()
    assert tok.startswith("bd_")
    # the option before the command, before the subcommand, long, long with =
    ok(ctl(["-c", cfg, "token", "create", "--tenant", "acme"]))
    ok(ctl(["token", "-c", cfg, "create", "--tenant", "acme"]))
    ok(ctl(["token", "create", "--config", cfg, "--tenant", "acme"]))
    ok(ctl(["token", "list", f"--config={cfg}"]))
    ok(ctl(["token", "list", f"-c{cfg}"]))
    assert [t["tenant"] for t in tokens(conn)] == ["acme"] * 4
    # ${credential:NAME}: systemd's LoadCredential= directory
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "db").write_text(db.conninfo)
    cfg2 = config(tmp_path, "${credential:db}", "cred.ini")
    ok(ctl(["token", "revoke", "-c", cfg2, tok], env={"CREDENTIALS_DIRECTORY": str(creds)}))
    assert [t["revoked"] for t in tokens(conn)] == [True, False, False, False]


def test_config_file_precedence_and_errors(db, conn, tmp_path):
    dead = "host=127.0.0.1 port=1 connect_timeout=2"
    bad = config(tmp_path, dead, "dead.ini")
    good = config(tmp_path, db.conninfo, "good.ini")
    # --database wins over -c
    ok(ctl(["token", "create", "--tenant", "a", "-c", bad, "--database", db.conninfo]))
    # BATCHD_DATABASE overrides the file's database, as it does for batchd
    ok(ctl(["token", "create", "--tenant", "b", "-c", bad], database=db.conninfo))
    # -c wins over nothing: its database is used
    ok(ctl(["token", "create", "--tenant", "c", "-c", good]))
    r = ctl(["token", "create", "--tenant", "d", "-c", bad])
    assert r.returncode == 3 and "database" in r.stderr, r.stderr
    assert [t["tenant"] for t in tokens(conn)] == ["a", "b", "c"]
    # a file batchd would refuse is refused the same way, naming it: exit 2
    broken = tmp_path / "broken.ini"
    broken.write_text("[batchd]\ndatabase = ${NO_SUCH_VARIABLE_HERE}\n")
    r = ctl(["token", "list", "-c", broken])
    assert r.returncode == 2 and str(broken) in r.stderr and "NO_SUCH_VARIABLE_HERE" in r.stderr, \
        r.stderr
    r = ctl(["token", "list", "-c", tmp_path / "missing.ini"])
    assert r.returncode == 2 and "missing.ini" in r.stderr, r.stderr
    r = ctl(["token", "list", "-c"])
    assert r.returncode == 2 and "needs a value" in r.stderr, r.stderr
    # the API commands take no -c
    r = ctl(["status", "-c", good], env={"BATCHD_TOKEN": "t"})
    assert r.returncode == 2, r.stderr


# ------------------------------------------------------------------ list, revoke --id

def test_token_list_and_revoke_by_id(db, conn, batchd_factory, mock, tmp_path):
    d = batchd_factory(db=db, providers={"mock": {"url": mock.url("/item/{id}")}},
                       routes={ROUTE: "mock"})
    cfg = config(tmp_path, db.conninfo)
    t1 = ok(ctl(["token", "create", "--tenant", "acme", "-c", cfg])).strip()
    t2 = ok(ctl(["token", "create", "--tenant", "acme", "-c", cfg])).strip()
    ok(ctl(["token", "create", "--tenant", "globex", "-c", cfg]))
    ids = [t["id"] for t in tokens(conn)]

    r = ctl(["token", "list", "-c", cfg])
    lines = ok(r).splitlines()
    assert re.match(r"^ID\s+TENANT\s+CREATED\s+LAST USED\s+REVOKED$", lines[0]), lines
    assert len(lines) == 4, lines
    for line, i, tenant in zip(lines[1:], ids, ["acme", "acme", "globex"]):
        assert re.match(rf"^\s*{i}\s+{tenant}\s+{TS_RE}\s+-\s+-$", line), line
    assert t1 not in r.stdout and t1[3:] not in r.stdout, "tokens are never shown again"

    # the REST API marks the token used
    assert get(d.port, t1) == 200
    doc = json.loads(ok(ctl(["--json", "token", "list", "--tenant", "acme", "-c", cfg])))
    assert [t["id"] for t in doc["tokens"]] == ids[:2]
    assert set(doc["tokens"][0]) == {"id", "tenant", "created_at", "last_used_at", "revoked_at"}
    first, second = doc["tokens"]
    assert first["tenant"] == "acme" and RFC3339_US.match(first["created_at"])
    assert RFC3339_US.match(first["last_used_at"]) and first["revoked_at"] is None
    assert second["last_used_at"] is None

    # revoke by id
    r = ctl(["token", "revoke", "--id", ids[1], "-c", cfg])
    assert ok(r).strip() == "revoked"
    assert get(d.port, t2) == 401
    assert get(d.port, t1) == 200
    r = ctl(["token", "revoke", "--id", ids[1], "-c", cfg])
    assert r.returncode == 3 and f"no token with id {ids[1]}" in r.stderr, r.stderr
    r = ctl(["token", "revoke", "--id", "999999", "-c", cfg])
    assert r.returncode == 3, r.stderr
    lines = ok(ctl(["token", "list", "--tenant", "acme", "-c", cfg])).splitlines()
    assert re.match(rf"^\s*{ids[1]}\s+acme\s+{TS_RE}\s+-\s+{TS_RE}$", lines[2]), lines
    assert re.match(rf"^\s*{ids[0]}\s+acme\s+{TS_RE}\s+{TS_RE}\s+-$", lines[1]), lines
    doc = json.loads(ok(ctl(["token", "list", "--json", "-c", cfg, "--tenant", "nobody"])))
    assert doc == {"tokens": []}
    r = ctl(["token", "list", "-c", cfg, "--tenant", "nobody"])
    assert ok(r) == "" and "no tokens" in r.stderr


@pytest.mark.parametrize("args,what", [
    (["token", "revoke", "--id", "1", "bd_x"], "not both"),
    (["token", "revoke", "--id", "0"], "--id must be an integer from 1"),
    (["token", "revoke", "--id", "x"], "--id must be an integer from 1"),
    (["token", "revoke", "--id"], "needs a value"),
    (["token", "create", "--tenant", "t", "--id", "1"], "--id is for token revoke"),
    (["token", "list", "--id", "1"], "--id is for token revoke"),
    (["token", "list", "extra"], "unexpected argument"),
    (["token", "list", "--tenant", ""], "--tenant must not be empty"),
    (["token", "revoke", "--tenant", "t", "--id", "1"], "--tenant is for"),
    (["token", "drop"], "create, revoke or list"),
])
def test_token_usage_errors(args, what):
    r = ctl(args, database="host=127.0.0.1 port=1")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert what in r.stderr, r.stderr


def test_last_used_at_is_written_at_most_once_a_minute(db, conn, batchd_factory, mock):
    d = batchd_factory(db=db, providers={"mock": {"url": mock.url("/item/{id}")}},
                       routes={ROUTE: "mock"})
    tok = conn.execute("SELECT batchd.create_token('acme') AS t").fetchone()["t"]
    assert tokens(conn)[0]["last_used_at"] is None
    assert get(d.port, tok) == 200
    first = tokens(conn)[0]["last_used_at"]
    assert first is not None
    for _ in range(5):
        assert get(d.port, tok) == 200
    assert tokens(conn)[0]["last_used_at"] == first, "rewritten within the minute"
    # a minute later it moves again
    conn.execute("UPDATE batchd.api_tokens SET last_used_at = last_used_at - interval '61 s'")
    assert get(d.port, tok) == 200
    assert tokens(conn)[0]["last_used_at"] > first
