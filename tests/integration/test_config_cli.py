"""Command line and configuration: --check-config, --version, usage errors,
bad configs (exit 2 with "FILE:LINE: message"), BATCHD_DATABASE."""

import os
import re

import pytest

from conftest import (REPO, assert_no_sanitizer_report, free_port, run_batchd,
                      write_minimal_config)

GOOD = """\
# a comment
; another comment
[batchd]
database = host=127.0.0.1 port=1 dbname=x
listen = 127.0.0.1:{port}
max_inflight = 200
log_level = debug
log_format = json
shutdown_timeout = 30s
poll_interval = 250ms

[provider primary]
url = http://127.0.0.1:9/v1/item/{{id}}?vin={{vehicle.vin}}
method = POST
header = Authorization: Bearer ${{BATCHD_TEST_TOKEN}}
header = X-Request: {{id}}
body = {{"id": {{id}}}}
timeout = 5s
connect_timeout = 2s
max_response_size = 1MB

[provider fallback]
url = https://fallback.example/lookup/{{id}}
timeout = 2m
max_response_size = 512KB

[route verify]
providers = primary, fallback

[route single]
providers = fallback
"""


def write(tmp_path, text, name="batchd.ini"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def check_config(path, env=None):
    return run_batchd(["--check-config", "-c", path], env=env, timeout=30)


def good_config(tmp_path):
    return write(tmp_path, GOOD.format(port=free_port()))


def test_check_config_good(tmp_path):
    r = check_config(good_config(tmp_path), env={"BATCHD_TEST_TOKEN": "secret"})
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr}"
    assert_no_sanitizer_report(r.stdout + r.stderr)


def test_check_config_does_not_touch_database(tmp_path):
    # the database in GOOD is unreachable (port 1): --check-config only validates
    r = check_config(good_config(tmp_path), env={"BATCHD_TEST_TOKEN": "x"})
    assert r.returncode == 0, r.stderr


def test_example_config_is_valid(tmp_path):
    """contrib/batchd.ini (installed as /etc/batchd/batchd.ini) passes --check-config."""
    path = os.path.join(REPO, "contrib", "batchd.ini")
    r = check_config(path, env={"BATCHD_PROVIDER_TOKEN": "x", "REGISTRY_TOKEN": "x"})
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr}"


MINIMAL = "[batchd]\ndatabase = dbname=x\n"
PROVIDER = "[provider p]\nurl = http://127.0.0.1:9/item/{id}\n"
ROUTE = "[route r]\nproviders = p\n"
PR = PROVIDER + ROUTE

# id, config text, accepted line numbers (None: "FILE:" with or without a line),
# a regex the message must match (case-insensitive)
BAD_CONFIGS = [
    ("unknown-key-batchd", MINIMAL + "bogus_key = 1\n" + PROVIDER + ROUTE, [3], r"bogus_key"),
    ("unknown-key-provider", MINIMAL + PROVIDER + "retry_forever = yes\n" + ROUTE, [5],
     r"retry_forever"),
    ("unknown-key-route", MINIMAL + PROVIDER + ROUTE + "frobnicate = 1\n", [7], r"frobnicate"),
    ("bad-duration", MINIMAL + PROVIDER + "timeout = 5 parsecs\n" + ROUTE, [5],
     r"timeout|duration|5 parsecs"),
    ("bad-duration-shutdown", MINIMAL + "shutdown_timeout = soon\n" + PR, [3],
     r"shutdown_timeout|duration|soon"),
    ("bad-size", MINIMAL + PROVIDER + "max_response_size = huge\n" + ROUTE, [5],
     r"max_response_size|size|huge"),
    ("bad-max-inflight", MINIMAL + "max_inflight = many\n" + PR, [3], r"max_inflight|many"),
    ("zero-max-inflight", MINIMAL + "max_inflight = 0\n" + PR, [3], r"max_inflight"),
    ("bad-log-level", MINIMAL + "log_level = loud\n" + PR, [3], r"log_level|loud"),
    ("bad-log-format", MINIMAL + "log_format = xml\n" + PR, [3], r"log_format|xml"),
    ("bad-listen", MINIMAL + "listen = not-an-address\n" + PR, [3], r"listen|not-an-address"),
    ("route-unknown-provider", MINIMAL + PROVIDER + "[route r]\nproviders = p, nope\n", [5, 6],
     r"nope"),
    ("placeholder-in-host", MINIMAL + "[provider p]\nurl = http://{host}/item/{id}\n" + ROUTE,
     [4], r"host|placeholder"),
    ("placeholder-in-port", MINIMAL + "[provider p]\nurl = http://127.0.0.1:{port}/x\n" + ROUTE,
     [4], r"host|port|placeholder"),
    ("url-not-http", MINIMAL + "[provider p]\nurl = ftp://127.0.0.1/{id}\n" + ROUTE, [4],
     r"url|http|scheme"),
    ("provider-without-url", MINIMAL + "[provider p]\ntimeout = 5s\n" + ROUTE, [3, 4], r"url"),
    ("bad-method", MINIMAL + PROVIDER + "method = FETCH\n" + ROUTE, [5], r"method|FETCH"),
    ("bad-header", MINIMAL + PROVIDER + "header = no colon here\n" + ROUTE, [5], r"header"),
    ("unknown-section", MINIMAL + "[bogus]\nx = 1\n" + PR, [3, 4], r"bogus"),
    ("unknown-section-kind", MINIMAL + "[frobber q]\nx = 1\n" + PR, [3, 4], r"frobber"),
    ("unset-env-var", "[batchd]\ndatabase = ${BATCHD_TEST_SURELY_UNSET_VAR}\n" + PR, [2],
     r"BATCHD_TEST_SURELY_UNSET_VAR"),
    ("missing-database", "[batchd]\nlog_level = info\n" + PROVIDER + ROUTE, None, r"database"),
    ("empty-file", "", None, r"database|route|empty"),
    ("not-ini", MINIMAL + "this is not ini\n" + PR, [3], r"."),
    ("no-route", MINIMAL + PROVIDER, None, r"route"),
]


@pytest.mark.parametrize("text,lines,message",
                         [pytest.param(*c[1:], id=c[0]) for c in BAD_CONFIGS])
def test_check_config_bad(tmp_path, text, lines, message):
    path = write(tmp_path, text)
    r = check_config(path)
    assert_no_sanitizer_report(r.stdout + r.stderr)
    assert r.returncode == 2, f"exit {r.returncode} for:\n{text}\nstderr:\n{r.stderr}"
    if lines is None:
        m = re.search(re.escape(path) + r":(\d+:)? ?(.*)", r.stderr)
    else:
        m = re.search(re.escape(path) + r":(" + "|".join(str(n) for n in lines) + r"): ?(.*)",
                      r.stderr)
    assert m, (f"stderr has no '{path}:{lines if lines else ''}:' prefix "
               f"(expected lines {lines}):\n{r.stderr}")
    assert re.search(message, m.group(2), re.I), \
        f"message {m.group(2)!r} does not match {message!r}"


def test_check_config_missing_file(tmp_path):
    path = str(tmp_path / "nope.ini")
    r = check_config(path)
    assert r.returncode == 2, r.stderr
    assert path in r.stderr


def test_bad_config_daemon_exits_2_without_starting(new_database, tmp_path):
    db = new_database()
    port = free_port()
    path = write(tmp_path, f"[batchd]\ndatabase = {db.conninfo}\nlisten = 127.0.0.1:{port}\n"
                           f"bogus_key = 1\n" + PROVIDER + ROUTE)
    r = run_batchd(["-c", path], timeout=30)
    assert_no_sanitizer_report(r.stdout + r.stderr)
    assert r.returncode == 2, r.stderr
    assert f"{path}:4:" in r.stderr
    conn = db.connect()
    assert conn.execute("SELECT count(*) AS n FROM batchd.workers").fetchone()["n"] == 0


def test_version():
    r = run_batchd(["--version"], timeout=10)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(REPO, "configure.ac")) as f:
        version = re.search(r"AC_INIT\(\[batchd\],\s*\[([^\]]+)\]", f.read()).group(1)
    assert r.stdout.strip().splitlines()[0] == f"batchd {version}", r.stdout


@pytest.mark.parametrize("args", [
    ["--no-such-option"],
    ["-c"],
    ["-c", "{cfg}", "stray-argument"],
    ["migrate", "-c", "{cfg}", "--down"],
    ["migrate", "-c", "{cfg}", "--down", "zero"],
    ["migrate", "-c", "{cfg}", "--down", "-1"],
    ["frobnicate", "-c", "{cfg}"],
    ["-c", "{cfg}", "frobnicate"],
    ["-c", "{cfg}", "migrate", "migrate"],
    ["migrate", "-c", "{cfg}", "stray-argument"],
    ["-c", "{cfg}", "--down", "1"],
    ["--down", "1", "-c", "{cfg}", "--check-config", "migrate"],
    ["-c", "{cfg}", "migrate", "--no-such-option"],
], ids=["unknown-option", "c-without-file", "stray-argument", "down-without-n",
        "down-not-a-number", "down-negative", "unknown-command",
        "options-first-unknown-command", "second-command", "command-then-stray",
        "down-without-migrate", "check-config-with-migrate", "command-then-unknown-option"])
def test_usage_errors_exit_2(tmp_path, args):
    # a valid config (unreachable database), so only the usage is wrong
    cfg = write(tmp_path, "[batchd]\ndatabase = host=127.0.0.1 port=1 dbname=x connect_timeout=1\n"
                + PR)
    args = [a.replace("{cfg}", cfg) for a in args]
    r = run_batchd(args, timeout=10)
    assert r.returncode == 2, f"batchd {args}: exit {r.returncode}\n{r.stderr}"
    assert r.stderr.strip(), "a usage error says what is wrong"
    assert_no_sanitizer_report(r.stderr)


@pytest.mark.parametrize("order", ["options-first", "command-first", "mixed"])
def test_migrate_takes_options_before_or_after_the_command(new_database, tmp_path, order):
    """batchd -c FILE migrate == batchd migrate -c FILE (issue #19), --down too."""
    db = new_database(migrated=False)
    cfg = write_minimal_config(str(tmp_path / "m.ini"), db.conninfo)
    up = {"options-first": ["-c", cfg, "migrate"],
          "command-first": ["migrate", "-c", cfg],
          "mixed": ["-c", cfg, "migrate"]}[order]
    down = {"options-first": ["-c", cfg, "--down", "1", "migrate"],
            "command-first": ["migrate", "--down", "1", "-c", cfg],
            "mixed": ["--down", "1", "migrate", "-c", cfg]}[order]
    conn = db.connect()

    def versions():
        return [r["version"] for r in conn.execute(
            "SELECT version FROM batchd.schema_migrations ORDER BY version")]

    r = run_batchd(up, timeout=60)
    assert r.returncode == 0, f"batchd {up}: {r.stderr}"
    assert_no_sanitizer_report(r.stdout + r.stderr)
    full = versions()
    assert full and conn.execute(
        "SELECT to_regclass('batchd.batches') IS NOT NULL AS e").fetchone()["e"]
    r = run_batchd(down, timeout=60)
    assert r.returncode == 0, f"batchd {down}: {r.stderr}"
    assert versions() == full[:-1]


@pytest.mark.parametrize("args", [["-c", "{cfg}", "--check-config"],
                                  ["--check-config", "-c", "{cfg}"]],
                         ids=["config-first", "check-first"])
def test_check_config_takes_options_in_any_order(tmp_path, args):
    cfg = write(tmp_path, "[batchd]\ndatabase = dbname=x\n" + PROVIDER + ROUTE)
    args = [a.replace("{cfg}", cfg) for a in args]
    r = run_batchd(args, timeout=10)
    assert r.returncode == 0, r.stderr
    assert f"{cfg}: configuration ok" in r.stdout


def test_batchd_database_overrides_config(new_database, tmp_path):
    db = new_database(migrated=False)
    cfg = write_minimal_config(str(tmp_path / "m.ini"),
                               f"host=127.0.0.1 port={free_port()} dbname=nope connect_timeout=2")
    r = run_batchd(["migrate", "-c", cfg], env={"BATCHD_DATABASE": db.conninfo}, timeout=60)
    assert r.returncode == 0, r.stderr
    conn = db.connect()
    assert conn.execute("SELECT to_regclass('batchd.batches') IS NOT NULL AS e").fetchone()["e"]


def test_batchd_database_satisfies_missing_database(new_database, tmp_path):
    db = new_database(migrated=False)
    path = write(tmp_path, "[batchd]\nlog_level = warn\n" + PR)
    r = run_batchd(["migrate", "-c", path], env={"BATCHD_DATABASE": db.conninfo}, timeout=60)
    assert r.returncode == 0, r.stderr


def test_env_expansion_in_values(tmp_path):
    path = write(tmp_path, "[batchd]\ndatabase = ${BATCHD_TEST_DB}\n" + PROVIDER + ROUTE)
    r = check_config(path, env={"BATCHD_TEST_DB": "dbname=x"})
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ log_format = journal without a journal

def test_journal_format_without_journal_falls_back_to_stderr(tmp_path):
    """log_format = journal where no journal socket exists (a container, a
    test machine): --check-config says so, in one warning."""
    path = write(tmp_path, "[batchd]\ndatabase = dbname=x\nlog_format = journal\n" + PR)
    r = check_config(path, env={"BATCHD_JOURNAL_SOCKET": str(tmp_path / "no-such-socket")})
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "no journal socket" in ln]
    assert len(warnings) == 1, r.stderr
    assert "logging to stderr as text" in warnings[0]
    assert str(tmp_path / "no-such-socket") in warnings[0]


def test_journal_format_with_a_journal_socket_warns_nothing(tmp_path):
    import socket as so
    sock_path = str(tmp_path / "journal.sock")
    s = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    s.bind(sock_path)
    try:
        path = write(tmp_path, "[batchd]\ndatabase = dbname=x\nlog_format = journal\n" + PR)
        r = check_config(path, env={"BATCHD_JOURNAL_SOCKET": sock_path})
        assert r.returncode == 0, r.stderr
        assert "journal" not in r.stderr, r.stderr
    finally:
        s.close()


def test_daemon_with_journal_format_and_no_journal_logs_to_stderr(new_database, batchd_factory,
                                                                   tmp_path, mock):
    """The daemon itself: every record it logs reaches stderr (before the fix
    nothing at all was printed), as text lines."""
    db = new_database()
    d = batchd_factory(db=db, providers={"p": {"url": mock.url("/item/{id}")}},
                       routes={"r": "p"}, log_format="journal",
                       env={"BATCHD_JOURNAL_SOCKET": str(tmp_path / "none")})
    d.stop()
    log = d.log()
    assert "no journal socket" in log, log
    assert re.search(r"^\S+Z INFO .*ready", log, re.M), log


# ------------------------------------------------------------------ secrets from files

def test_provider_token_from_a_file_and_a_credential_reread_on_reload(db, conn, mock,
                                                                      batchd_factory, tmp_path):
    """header = Authorization: Bearer ${file:token} (relative to the config
    file) and ${credential:NAME} ($CREDENTIALS_DIRECTORY, as systemd's
    LoadCredential= sets it): the provider sees the file's token, and after
    the file changes and SIGHUP, the new one, with no restart."""
    import signal as sig
    from conftest import submit, wait_batch_done, wait_until
    (tmp_path / "token").write_text("first-token\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "apikey").write_text("key-1")
    d = batchd_factory(db=db, env={"CREDENTIALS_DIRECTORY": str(creds)},
                       providers={"p": {"url": mock.url("/item/{id}"),
                                        "header": ["Authorization: Bearer ${file:token}",
                                                   "Idempotency-Key: ${credential:apikey}"]}},
                       routes={"r": "p"})
    bid = submit(conn, "t", "r", [{"id": 1}])
    wait_batch_done(conn, bid)
    got = mock.all_requests()
    assert [(g["authorization"], g["idempotency_key"]) for g in got] == \
        [("Bearer first-token", "key-1")]
    assert "first-token" not in d.log(), "the token is redacted from the logs"

    (tmp_path / "token").write_text("second-token\n")
    (creds / "apikey").write_text("key-2\n")
    n = d.log().count("reload")
    d.signal(sig.SIGHUP)
    wait_until(lambda: d.log().count("reload") > n, 10, desc="the reload")
    bid = submit(conn, "t", "r", [{"id": 2}])
    wait_batch_done(conn, bid)
    got = mock.all_requests()
    assert [(g["authorization"], g["idempotency_key"]) for g in got][-1] == \
        ("Bearer second-token", "key-2")

    # a reload whose file is gone keeps the running config, and says why
    (tmp_path / "token").unlink()
    n = d.log().count("cannot read")
    d.signal(sig.SIGHUP)
    wait_until(lambda: d.log().count("cannot read") > n, 10, desc="the failed reload")
    bid = submit(conn, "t", "r", [{"id": 3}])
    wait_batch_done(conn, bid)
    assert mock.all_requests()[-1]["authorization"] == "Bearer second-token"
    assert d.running()
