"""batchctl, the command-line client, against the real batchd (REST API),
a private PostgreSQL and the mock provider.

Exit status contract checked here: 0 ok; 1 batch ended other than
`completed` (submit --wait, watch); 2 usage or invalid input (nothing sent);
3 server/network error (HTTP 401 and 404 included).

Environment: BATCHCTL_BIN (default <repo>/build/dev/batchctl, then <repo>/batchctl).
"""

import csv
import http.server
import io
import json
import os
import re
import subprocess
import threading
import time
import uuid

import pytest

from conftest import (REPO, assert_no_sanitizer_report, batch, batchctl_bin, batchctl_env, free_port,
                      http_get, items, render_config, run_ctl, submit, wait_batch_done, wait_until)

ROUTE = "verify"
TENANT = "acme"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def ready(url):
    try:
        return http_get(url + "/readyz", timeout=1)[0] == 200
    except OSError:
        return False


def dead_url():
    return f"http://127.0.0.1:{free_port()}"


class Api:
    """A running batchd with the REST API, a token for TENANT, and helpers."""

    def __init__(self, daemon, db, conn, mock, token):
        self.daemon = daemon
        self.url = daemon.base
        self.db = db
        self.conn = conn
        self.mock = mock
        self.token = token

    def ctl(self, *args, **kw):
        kw.setdefault("url", self.url)
        kw.setdefault("token", self.token)
        return run_ctl(list(args), **kw)


def create_token(conninfo, tenant=TENANT):
    r = run_ctl(["token", "create", "--tenant", tenant, "--database", conninfo])
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token and "\n" not in token and " " not in token, r.stdout
    return token


# Items that fail here fail on purpose (the mock answers 500 for chosen ids):
# no provider retries, and a breaker that does not open on them, so that the
# batch ends quickly with exactly those failures.
PROVIDER_KEYS = {"timeout": "5s", "connect_timeout": "2s", "retries": 0,
                 "breaker_failures": 10000}


@pytest.fixture
def api(db, conn, mock, batchd_factory):
    daemon = batchd_factory(
        db=db, max_inflight=20,
        providers={"mock": PROVIDER_KEYS | {"url": mock.url("/item/{id}")}},
        routes={ROUTE: "mock"})
    return Api(daemon, db, conn, mock, create_token(db.conninfo))


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


def submitted_id(r):
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
    bid = r.stdout.strip().splitlines()[0]
    assert UUID_RE.match(bid), r.stdout
    return bid


def payloads(conn, bid):
    return [it["payload"] for it in items(conn, bid)]


# ------------------------------------------------------------------ tokens

def test_token_create_use_revoke(api):
    r = api.ctl("status")
    assert r.returncode == 0, r.stderr

    r = run_ctl(["token", "revoke", api.token], database=api.db.conninfo)
    assert r.returncode == 0, r.stderr
    assert "revoked" in r.stdout

    r = api.ctl("status")
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "(HTTP 401)" in r.stderr, r.stderr
    assert r.stderr.startswith("batchctl: ")

    # revoking again: nothing to revoke is an error answer (exit 3)
    r = run_ctl(["token", "revoke", "-"], database=api.db.conninfo, input=api.token + "\n")
    assert r.returncode == 3, (r.stdout, r.stderr)


def test_token_create_json_and_tenant_isolation(api):
    r = run_ctl(["--json", "token", "create", "--tenant", "other"], database=api.db.conninfo)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["tenant"] == "other" and doc["token"]
    other = doc["token"]
    assert other != api.token

    bid = submitted_id(api.ctl("submit", "--route", ROUTE, "-", input='{"id": 1}\n'))
    # another tenant's batch is a 404
    r = api.ctl("status", bid, token=other)
    assert r.returncode == 3 and "(HTTP 404)" in r.stderr, (r.returncode, r.stderr)


def test_token_database_errors(tmp_path, pg):
    r = run_ctl(["token", "create", "--tenant", "t"])
    assert r.returncode == 2 and "BATCHD_DATABASE" in r.stderr, r.stderr
    r = run_ctl(["token", "create", "--tenant", "t", "--database",
                 f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2"])
    assert r.returncode == 3 and "database" in r.stderr, r.stderr
    # an unmigrated database: the functions are missing
    r = run_ctl(["token", "create", "--tenant", "t"], database=pg.conninfo())
    assert r.returncode == 3 and "batchd migrate" in r.stderr, r.stderr


# ------------------------------------------------------------------ submit

CSV_TEXT = (
    "\ufeffid,name,note\r\n"                     # BOM, CRLF
    "1,plain,simple\r\n"
    "\r\n"                                        # blank line: skipped
    '2,"with, comma","say ""hi"""\r\n'
    '3,"multi\nline",""\n'                        # embedded newline, empty quoted field
    "4,émoji 🚚,\n"                               # UTF-8, empty last field
    '5,"x",y'                                     # no final newline
)
CSV_EXPECTED = [
    {"id": "1", "name": "plain", "note": "simple"},
    {"id": "2", "name": "with, comma", "note": 'say "hi"'},
    {"id": "3", "name": "multi\nline", "note": ""},
    {"id": "4", "name": "émoji 🚚", "note": ""},
    {"id": "5", "name": "x", "note": "y"},
]


def test_submit_csv_file(api, tmp_path):
    path = write(tmp_path, "items.csv", CSV_TEXT)
    bid = submitted_id(api.ctl("submit", "--route", ROUTE, "--name", "nightly",
                               "--priority", "7", "--max-attempts", "2", path))
    b = batch(api.conn, bid)
    assert b["tenant"] == TENANT and b["route"] == ROUTE and b["name"] == "nightly"
    assert (b["priority"], b["max_attempts"], b["total"]) == (7, 2, 5)
    assert payloads(api.conn, bid) == CSV_EXPECTED
    assert wait_batch_done(api.conn, bid)["status"] == "completed"


def test_submit_jsonl_stdin_with_options(api):
    lines = [{"id": 1, "account": {"id": "a"}, "n": 1.5},
             {"id": 2, "account": {"id": "b"}, "tags": ["x", "y"], "ok": True, "none": None},
             {"id": 3, "account": {"id": "a"}, "text": "ünï \"q\" \\ /"}]
    text = "\n" + "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n  \n"
    r = api.ctl("--json", "submit", "--route", ROUTE, "--group-key", "account.id",
                "--metadata", '{"source": "test"}', "-", input=text)
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    bid = created["id"]
    assert created["route"] == ROUTE and created["total"] == 3
    assert payloads(api.conn, bid) == lines
    assert [it["group_key"] for it in items(api.conn, bid)] == ["a", "b", "a"]
    assert batch(api.conn, bid)["metadata"] == {"source": "test"}


def test_submit_format_detection_and_override(api, tmp_path):
    # stdin, CSV detected (first char is not '{')
    bid = submitted_id(api.ctl("submit", "--route", ROUTE, "-", input="id,v\n7,a\n"))
    assert payloads(api.conn, bid) == [{"id": "7", "v": "a"}]
    # a .csv name does not matter: the content says JSON Lines
    path = write(tmp_path, "looks.csv", '{"id": 8}\n')
    bid = submitted_id(api.ctl("submit", "--route", ROUTE, path))
    assert payloads(api.conn, bid) == [{"id": 8}]
    # --format csv forces CSV even though the header starts with '{'
    bid = submitted_id(api.ctl("submit", "--route", ROUTE, "--format", "csv", "-",
                               input='"{x",id\n1,9\n'))
    assert payloads(api.conn, bid) == [{"{x": "1", "id": "9"}]


def test_submit_idempotency_key(api):
    args = ("submit", "--route", ROUTE, "--idempotency-key", "nightly-2026-11-23", "-")
    a = submitted_id(api.ctl(*args, input='{"id": 1}\n'))
    b = submitted_id(api.ctl(*args, input='{"id": 1}\n'))
    assert a == b
    n = api.conn.execute("SELECT count(*) AS n FROM batchd.batches").fetchone()["n"]
    assert n == 1


@pytest.mark.parametrize("fmt,data,where,what", [
    ("jsonl", '{"id": 1}\n[1, 2]\n', ":2:", "JSON object"),
    ("jsonl", '{"id": 1}\n\n{"id": 2,}\n', ":3:", "invalid JSON"),
    ("jsonl", '{"id": 1}\n{"id":\n2}\n', ":2:", "invalid JSON"),
    ("jsonl", '{"id": 1} {"id": 2}\n', ":1:", "invalid JSON"),
    ("jsonl", '{"id": "\\u0000"}\n', ":1:", "\\u0000"),
    ("jsonl", b'{"id": "\xff"}\n', ":1:", "invalid JSON"),
    ("csv", "id,v\n1,2\n3\n", ":3:", "1 field, but the header has 2"),
    ("csv", 'id,v\n1,"open\n2,3\n', ":2:", "unterminated quoted field"),
    ("csv", 'id,v\n1,a"b\n', ":2:", "quote inside an unquoted field"),
    ("csv", 'id,v\n1,"a"b\n', ":2:", "after a closing quote"),
    ("csv", "id,id\n1,2\n", ":1:", "appears twice"),
    ("csv", "id,\n1,2\n", ":1:", "has no name"),
    ("csv", b"id,v\n1,\xe9t\xe9\n", ":2:", "UTF-8"),
    ("csv", "id,v\n", "", "no items"),
    ("csv", "\n  \n", "", "empty input"),
])
def test_submit_invalid_input_exit_2(tmp_path, fmt, data, where, what):
    # the URL is dead: exit 2 (not 3) proves nothing was sent
    path = write(tmp_path, f"bad.{fmt}", data)
    r = run_ctl(["submit", "--route", ROUTE, path], url=dead_url(), token="t")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{path}{where}" in r.stderr and what in r.stderr, r.stderr


def test_submit_wait_exit_codes(api, tmp_path):
    ok = write(tmp_path, "ok.jsonl", "".join(json.dumps({"id": i}) + "\n" for i in range(1, 11)))
    r = api.ctl("submit", "--route", ROUTE, "--wait", "--interval", "200ms", ok)
    bid = submitted_id(r)
    assert r.stdout.strip() == bid, "with --wait, stdout holds the id only"
    assert f"batch {bid} completed:" in r.stderr.strip().splitlines()[-1], r.stderr
    assert batch(api.conn, bid)["status"] == "completed"

    api.mock.configure(ids={"13": {"status": 500}, "17": {"status": 500}})
    some_fail = write(tmp_path, "some.jsonl",
                      "".join(json.dumps({"id": i}) + "\n" for i in range(11, 21)))
    r = api.ctl("submit", "--route", ROUTE, "--max-attempts", "1", "--wait",
                "--interval", "200ms", some_fail)
    assert r.returncode == 1, (r.returncode, r.stderr)
    bid = r.stdout.strip()
    last = r.stderr.strip().splitlines()[-1]
    assert f"batch {bid} completed_with_errors" in last and "2 failed" in last, r.stderr
    assert batch(api.conn, bid)["status"] == "completed_with_errors"

    api.mock.configure(ids={str(i): {"status": 500} for i in range(21, 24)})
    r = api.ctl("submit", "--route", ROUTE, "--max-attempts", "1", "--wait", "-",
                input="".join(json.dumps({"id": i}) + "\n" for i in range(21, 24)))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "failed" in r.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ watch

def test_watch_plain_lines_until_terminal(db, conn, mock, batchd_factory):
    daemon = batchd_factory(
        db=db, max_inflight=4,
        providers={"mock": PROVIDER_KEYS | {"url": mock.url("/item/{id}?latency_ms=100")}},
        routes={ROUTE: "mock"})
    token = create_token(db.conninfo)
    bid = submit(conn, TENANT, ROUTE, [{"id": i} for i in range(40)])
    r = run_ctl(["watch", "--interval", "200ms", bid], url=daemon.base, token=token)
    assert r.returncode == 0, (r.returncode, r.stderr)
    lines = r.stdout.strip().splitlines()
    assert len(lines) >= 3, r.stdout  # progress lines while running, then the end
    assert "\r" not in r.stdout and "\033" not in r.stdout, "no terminal codes when not a tty"
    assert lines[-1].startswith(f"batch {bid} completed:"), lines[-1]
    assert "40 succeeded, 0 failed, 0 cancelled of 40" in lines[-1]
    assert any("/40" in ln for ln in lines[:-1])
    # lines are printed on change only: no two progress lines alike
    assert len(set(lines[:-1])) == len(lines[:-1]), lines

    # a finished batch: one line and the end, at once; --json: progress objects
    r = run_ctl(["--json", "watch", bid], url=daemon.base, token=token)
    assert r.returncode == 0, r.stderr
    docs = [json.loads(ln) for ln in r.stdout.strip().splitlines()]
    assert docs[-1]["status"] == "completed" and docs[-1]["done"] == 40


def test_watch_survives_daemon_restart(db, conn, mock, batchd_factory):
    """A watch outlives a batchd restart on the same address: it retries
    quietly, says so once on stderr, and ends normally."""
    url = f"http://127.0.0.1:{free_port()}"
    config = render_config(
        db.conninfo, {"log_level": "info", "shutdown_timeout": "5s", "max_inflight": 2,
                      "listen": url[len("http://"):]},
        providers={"mock": PROVIDER_KEYS | {"url": mock.url("/item/{id}?latency_ms=100")}},
        routes={ROUTE: "mock"})

    def start():  # the factory waits for readiness only on a port of its own choosing
        d = batchd_factory(config, wait=False)
        wait_until(lambda: ready(url), timeout=30, desc="batchd to be ready")
        return d

    first = start()
    token = create_token(db.conninfo)
    bid = submit(conn, TENANT, ROUTE, [{"id": i} for i in range(40)])
    watch = subprocess.Popen([batchctl_bin(), "watch", "--interval", "200ms", bid],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=batchctl_env(url, token),
                             stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: batch(conn, bid)["succeeded"] >= 4, timeout=20, desc="some progress")
        assert first.stop() == 0
        time.sleep(1.0)  # several polls find nobody listening
        assert watch.poll() is None, "watch must not give up at once"
        start()
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert_no_sanitizer_report(out + err, "batchctl")
    assert watch.returncode == 0, (out, err)
    assert err.count("lost contact with the server") == 1, err
    assert out.strip().splitlines()[-1].startswith(f"batch {bid} completed:"), out


def test_watch_failed_batch_exit_1(api):
    api.mock.configure(ids={"2": {"status": 500}})
    bid = submit(api.conn, TENANT, ROUTE, [{"id": 1}, {"id": 2}], {"max_attempts": 1})
    wait_batch_done(api.conn, bid)
    r = api.ctl("watch", bid)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "completed_with_errors" in r.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------ results

def finished_batch_with_failures(api, n=30, fail=(4, 9)):
    api.mock.configure(ids={str(i): {"status": 500} for i in fail})
    bid = submit(api.conn, TENANT, ROUTE, [{"id": i, "tag": f"t,{i}\n\"q\""} for i in range(n)],
                 {"max_attempts": 1})
    assert wait_batch_done(api.conn, bid)["status"] == "completed_with_errors"
    return bid


def test_results_jsonl(api):
    bid = finished_batch_with_failures(api)
    r = api.ctl("results", bid)
    assert r.returncode == 0, r.stderr
    got = [json.loads(ln) for ln in r.stdout.splitlines()]
    rows = items(api.conn, bid)
    assert len(got) == len(rows) == 30
    by_id = {int(g["id"]): g for g in got}
    for row in rows:
        g = by_id[row["id"]]
        assert g["seq"] == row["seq"] and g["status"] == row["status"]
        assert g["payload"] == row["payload"] and g["result"] == row["result"]
        assert g["http_status"] == row["http_status"] and g["error"] == row["error"]

    r = api.ctl("results", "--status", "failed", bid)
    assert r.returncode == 0, r.stderr
    got = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert sorted(g["payload"]["id"] for g in got) == [4, 9]
    assert all(g["status"] == "failed" and g["error"] for g in got)


def test_results_csv(api):
    bid = finished_batch_with_failures(api)
    r = api.ctl("results", "--format", "csv", bid)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert rows[0] == ["id", "seq", "status", "attempts", "provider", "http_status", "error",
                       "result", "payload"]
    db_rows = {row["id"]: row for row in items(api.conn, bid)}
    assert len(rows) - 1 == len(db_rows) == 30
    for rec in rows[1:]:
        row = db_rows[int(rec[0])]
        assert int(rec[1]) == row["seq"] and rec[2] == row["status"]
        assert int(rec[3]) == row["attempts"] and rec[4] == (row["provider"] or "")
        assert rec[5] == ("" if row["http_status"] is None else str(row["http_status"]))
        assert rec[6] == (row["error"] or "")
        assert json.loads(rec[7]) == row["result"]
        assert json.loads(rec[8]) == row["payload"]

    r = api.ctl("results", "--format", "csv", "--status", "succeeded", bid)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert len(rows) == 1 + 28 and all(rec[2] == "succeeded" for rec in rows[1:])


def test_results_large_batch_streams(api):
    n = 3000
    bid = submit(api.conn, TENANT, ROUTE, [{"id": i, "pad": "x" * 200} for i in range(n)])
    assert wait_batch_done(api.conn, bid, timeout=60)["status"] == "completed"
    r = api.ctl("results", bid)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == n
    assert sorted(json.loads(ln)["seq"] for ln in lines) == list(range(n))
    # --status pages through the items endpoint: many pages, no item twice
    r = api.ctl("results", "--status", "succeeded", "--format", "csv", bid)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout, newline="")))[1:]
    assert sorted(int(rec[1]) for rec in rows) == list(range(n))


# ------------------------------------------------------------------ status

def test_status_one_and_list(api):
    a = submit(api.conn, TENANT, ROUTE, [{"id": 1}, {"id": 2}], {"name": "first"})
    wait_batch_done(api.conn, a)
    b = submit(api.conn, TENANT, ROUTE, [{"id": 3}], {"name": "second"})
    wait_batch_done(api.conn, b)

    r = api.ctl("status", a)
    assert r.returncode == 0, r.stderr
    fields = dict(re.split(r"\s{2,}", ln.strip(), maxsplit=1) for ln in r.stdout.splitlines())
    assert fields["id"] == a and fields["name"] == "first" and fields["status"] == "completed"
    assert fields["done"].startswith("2/2") and fields["route"] == ROUTE

    r = api.ctl("--json", "status", a)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["id"] == a and doc["status"] == "completed" and doc["succeeded"] == 2

    r = api.ctl("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROUTE", "STATUS", "DONE/TOTAL", "CREATED"]
    assert lines[1].split()[:5] == [b, "second", ROUTE, "completed", "1/1"], "newest first"
    assert lines[2].split()[:5] == [a, "first", ROUTE, "completed", "2/2"]

    r = api.ctl("status", "--limit", "1")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2 and b in r.stdout
    m = re.search(r"next page: batchctl status --limit 1 --cursor (\S+)$", r.stderr.strip())
    assert m, r.stderr
    r = api.ctl("status", "--limit", "1", "--cursor", m.group(1))
    assert r.returncode == 0 and a in r.stdout, (r.stdout, r.stderr)

    r = api.ctl("--json", "status", "--status", "cancelled")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batches"] == []


def test_unknown_batch_is_404_exit_3(api):
    r = api.ctl("status", str(uuid.uuid4()))
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert re.match(r"^batchctl: .+ \(HTTP 404\)$", r.stderr.splitlines()[0]), r.stderr


# ------------------------------------------------------------------ cancel, retry, delete

def test_cancel(db, conn, mock, batchd_factory):
    daemon = batchd_factory(
        db=db, max_inflight=2,
        providers={"mock": PROVIDER_KEYS | {"url": mock.url("/item/{id}?latency_ms=300")}},
        routes={ROUTE: "mock"})
    token = create_token(db.conninfo)
    bid = submit(conn, TENANT, ROUTE, [{"id": i} for i in range(100)])
    r = run_ctl(["cancel", bid], url=daemon.base, token=token)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(bid)
    b = wait_batch_done(conn, bid)
    assert b["status"] == "cancelled" and b["cancelled"] > 0, b
    # watching a cancelled batch ends at once with exit 1
    r = run_ctl(["watch", bid], url=daemon.base, token=token)
    assert r.returncode == 1 and "cancelled" in r.stdout.splitlines()[-1], r.stdout
    # cancelling again is a conflict (or a no-op), never a crash
    r = run_ctl(["cancel", bid], url=daemon.base, token=token)
    assert r.returncode in (0, 3), r.stderr
    if r.returncode == 3:
        assert "(HTTP 409)" in r.stderr, r.stderr


def test_retry_then_delete(api):
    bid = finished_batch_with_failures(api, n=10, fail=(3,))
    api.mock.configure(ids=None)  # the provider recovers
    r = api.ctl("retry", bid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(bid)
    b = wait_batch_done(api.conn, bid)
    assert b["status"] == "completed" and (b["succeeded"], b["failed"]) == (10, 0), b

    r = api.ctl("delete", bid)
    assert r.returncode == 0, r.stderr
    assert batch(api.conn, bid) is None
    r = api.ctl("delete", bid)
    assert r.returncode == 3 and "(HTTP 404)" in r.stderr, r.stderr


# ------------------------------------------------------------------ workers

def test_workers(api):
    r = api.ctl("workers")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "HOST", "PID", "INFLIGHT", "HELD", "HEARTBEAT", "STATE",
                                "ITEMS"]
    mine = [ln for ln in lines[1:] if f" {api.daemon.pid} " in f" {ln} "]
    assert len(mine) == 1, r.stdout
    # idle: holds nothing (dead workers' rows: test_dead_workers.py)
    assert mine[0].split()[-2:] == ["alive", "-"] and "ago" in mine[0], mine
    assert mine[0].split()[4] == "0", mine

    r = api.ctl("--json", "workers")
    assert r.returncode == 0, r.stderr
    fleet = json.loads(r.stdout)["fleet"]
    assert any(w["pid"] == api.daemon.pid and w["alive"] and w["held_items"] == 0
               and w["held_item_ids"] == [] and w["held_item_ids_truncated"] is False
               for w in fleet), fleet


# ------------------------------------------------------------------ usage and errors

U = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize("args,what", [
    ([], "missing COMMAND"),
    (["frob"], "unknown command"),
    (["--bogus", "status"], "unknown option"),
    (["--url"], "needs a value"),
    (["submit", "x.jsonl"], "--route is required"),
    (["submit", "--route", "r"], "missing FILE"),
    (["submit", "--route", "r", "a", "b"], "unexpected argument"),
    (["submit", "--route", "r", "--priority", "11", "-"], "--priority"),
    (["submit", "--route", "r", "--max-attempts", "0", "-"], "--max-attempts"),
    (["submit", "--route", "r", "--format", "xml", "-"], "--format"),
    (["submit", "--route", "r", "--metadata", "[1]", "-"], "--metadata"),
    (["status", "not-a-uuid"], "not a batch ID"),
    (["status", "--status", "done"], "--status"),
    (["status", U, "--limit", "5"], "not with an ID"),
    (["watch"], "missing batch ID"),
    (["watch", "--interval", "1ms", U], "--interval"),
    (["cancel", U, U], "unexpected argument"),
    (["results", "--format", "xml", U], "--format"),
    (["results", "--status", "done", U], "--status"),
    (["workers", "extra"], "unexpected argument"),
    (["token"], "create"),
    (["token", "mint"], "unknown token command"),
    (["token", "create"], "--tenant"),
    (["token", "revoke"], "TOKEN"),
    # options before the command are the command's: the same errors
    (["--route", "r", "submit"], "missing FILE"),
    (["--priority", "11", "--route", "r", "submit", "-"], "--priority"),
    (["--format", "xml", "results", U], "--format"),
    (["--status", "done", "status"], "--status"),
    (["--limit", "5", "status", U], "not with an ID"),
    (["--tenant", "t", "token"], "create"),
    (["--database", "x", "token", "revoke"], "TOKEN"),
    (["--route", "r", "frob"], "unknown command"),
    (["--tenant", "t", "workers"], "unknown option"),
    (["status", "workers"], "not a batch ID"),
])
def test_usage_errors_exit_2(args, what):
    r = run_ctl(args, url=dead_url(), token="t", database="host=127.0.0.1 port=1")
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert what in r.stderr, r.stderr
    assert "usage: batchctl" in r.stderr, r.stderr
    assert r.stdout == ""


def test_missing_token_and_bad_url_are_usage_errors():
    r = run_ctl(["status"], url=dead_url())
    assert r.returncode == 2 and "BATCHD_TOKEN" in r.stderr, r.stderr
    r = run_ctl(["status"], url="ftp://127.0.0.1/", token="t")
    assert r.returncode == 2 and "http://" in r.stderr, r.stderr


@pytest.mark.parametrize("cmd", ["submit", "status", "watch", "cancel", "retry", "delete",
                                 "results", "workers", "token"])
def test_help_per_command(cmd):
    r = run_ctl([cmd, "--help"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: batchctl") and cmd in r.stdout.splitlines()[0]
    assert "Exit status" in r.stdout
    r2 = run_ctl(["help", cmd])
    assert r2.returncode == 0 and r2.stdout == r.stdout
    r = run_ctl(["--help"])
    assert r.returncode == 0 and cmd in r.stdout


@pytest.mark.parametrize("args", [["status"], ["status", U], ["watch", U], ["results", U],
                                  ["workers"], ["cancel", U]])
def test_unreachable_url_exit_3(args):
    url = dead_url()
    r = run_ctl(args, url=url, token="t", timeout=30)
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert url.split("//")[1] in r.stderr, r.stderr


def test_url_and_token_options_override_environment(api):
    r = run_ctl(["status", "--url", api.url, "--token", api.token], url=dead_url(), token="bad")
    assert r.returncode == 0, r.stderr
    r = run_ctl(["--url", api.url, "status"], token="bad")
    assert r.returncode == 3 and "(HTTP 401)" in r.stderr, r.stderr


def test_options_before_or_after_the_command(api, tmp_path):
    """Every option may stand before or after the command name (issue #19):
    global ones (--url, --token, --json) and the command's own (--format,
    --status, --route, --database, ...), with the same meaning."""
    bid = finished_batch_with_failures(api)
    after = run_ctl(["results", "--status", "failed", "--format", "csv", bid,
                     "--url", api.url, "--token", api.token], url=dead_url(), token="bad")
    before = run_ctl(["--url", api.url, "--token", api.token, "--format", "csv",
                      "--status", "failed", "results", bid], url=dead_url(), token="bad")
    mixed = run_ctl(["--format=csv", "--url", api.url, "results", "--status", "failed",
                     "--token", api.token, bid], url=dead_url(), token="bad")
    for r in (after, before, mixed):
        assert r.returncode == 0, r.stderr
    assert before.stdout == after.stdout == mixed.stdout
    assert len(list(csv.reader(io.StringIO(after.stdout)))) == 3   # header + 2 failed

    a = api.ctl("--json", "status", bid)
    b = api.ctl("status", bid, "--json")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["id"] == json.loads(b.stdout)["id"] == bid

    f = write(tmp_path, "in.jsonl", '{"id": 1}\n{"id": 2}\n')
    bid2 = submitted_id(api.ctl("--route", ROUTE, "--name", "first", "submit", f))
    assert batch(api.conn, bid2)["name"] == "first"

    # token: --database and --tenant before the command and before create
    r = run_ctl(["--database", api.db.conninfo, "--tenant", "t2", "token", "create"])
    assert r.returncode == 0, r.stderr
    t2 = r.stdout.strip()
    r = run_ctl(["token", "--database", api.db.conninfo, "revoke", t2])
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr

    r = run_ctl(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("batchctl ")


def test_value_option_list_matches_the_option_tables():
    """batchctl reorders a command line by knowing which long options take a
    value (value_options in src/batchctl.c): that list must be exactly the
    options declared with required_argument, or an option value would be
    taken for the command."""
    src = open(os.path.join(REPO, "src", "batchctl.c")).read()
    declared = set(re.findall(r'\{ "([a-z-]+)", required_argument', src))
    block = re.search(r"value_options\[\] = \{(.*?)\};", src, re.S).group(1)
    listed = set(re.findall(r'"([a-z-]+)"', block))
    assert listed == declared, (sorted(listed - declared), sorted(declared - listed))


# ------------------------------------------------------------------ client-side details
# What exactly goes on the wire, and how odd answers are handled, seen
# through a stub HTTP server (the real API cannot be made to misbehave).

class Stub:
    def __init__(self):
        self.requests = []
        self.replies = {}   # (method, path without query) -> (status, headers, body bytes)

    def reply(self, method, path):
        rep = self.replies.get((method, path.split("?", 1)[0]))
        if rep:
            return rep
        return 404, {}, b'{"error":{"code":"not_found","message":"stub: nothing here"}}'


@pytest.fixture
def stub():
    st = Stub()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _serve(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            st.requests.append({"method": self.command, "path": self.path,
                                "headers": dict(self.headers), "body": body})
            status, headers, out = st.reply(self.command, self.path)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_DELETE = _serve

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    st.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield st
    srv.shutdown()
    srv.server_close()


def test_submit_request_on_the_wire(stub, tmp_path):
    stub.replies[("POST", "/v1/batches")] = (201, {"Content-Type": "application/json"},
                                             json.dumps({"id": U, "status": "pending"}).encode())
    path = write(tmp_path, "in.csv", "a,b\n1,\"x\ny\"\n")
    r = run_ctl(["submit", "--route", "r1", "--name", "n", "--priority", "0",
                 "--max-attempts", "100", "--group-key", "a", "--metadata", '{"k": [1]}',
                 "--idempotency-key", "key-1", path], url=stub.url + "/", token="tok-123")
    assert r.returncode == 0, r.stderr
    assert r.stdout == U + "\n"
    (req,) = stub.requests
    assert req["method"] == "POST" and req["path"] == "/v1/batches"
    h = {k.lower(): v for k, v in req["headers"].items()}
    assert h["authorization"] == "Bearer tok-123"
    assert h["idempotency-key"] == "key-1"
    assert h["content-type"] == "application/json"
    assert json.loads(req["body"]) == {
        "route": "r1", "name": "n", "priority": 0, "max_attempts": 100, "group_key": "a",
        "metadata": {"k": [1]}, "items": [{"a": "1", "b": "x\ny"}]}


def test_odd_answers(stub):
    # an error page that is not the API's JSON (a proxy, say)
    stub.replies[("GET", "/v1/batches/" + U)] = (502, {}, b"<html>Bad Gateway</html>\n")
    r = run_ctl(["status", U], url=stub.url, token="t")
    assert r.returncode == 3 and "(HTTP 502)" in r.stderr, r.stderr
    # a 2xx answer that is not JSON
    stub.replies[("GET", "/v1/batches")] = (200, {}, b"not json")
    r = run_ctl(["status"], url=stub.url, token="t")
    assert r.returncode == 3 and "malformed answer" in r.stderr, r.stderr
    # an error answer to the results stream never reaches stdout
    r = run_ctl(["results", "--format", "csv", "11111111-1111-4111-8111-111111111111"],
                url=stub.url, token="t")
    assert r.returncode == 3 and r.stdout == "" and "(HTTP 404)" in r.stderr, r.stderr
    # an empty batch: just the CSV header
    stub.replies[("GET", f"/v1/batches/{U}/results")] = (200, {}, b"")
    r = run_ctl(["results", "--format", "csv", U], url=stub.url, token="t")
    assert r.returncode == 0 and r.stdout.startswith("id,seq,status,"), r.stderr
    # a redirect is not followed (it would carry the token elsewhere)
    stub.replies[("POST", f"/v1/batches/{U}/cancel")] = (307, {"Location": "http://127.0.0.1:9/"},
                                                          b"")
    r = run_ctl(["cancel", U], url=stub.url, token="t")
    assert r.returncode == 3 and "HTTP 307" in r.stderr, r.stderr
    assert [q["path"] for q in stub.requests][-1] == f"/v1/batches/{U}/cancel"
