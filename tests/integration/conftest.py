"""
Integration test harness: a private PostgreSQL 15 cluster per test session, a
fresh database per test (migrated with the real `batchd migrate`), the mock
provider, and a factory that starts the real batchd and checks at teardown that
it stopped cleanly (exit 0, no sanitizer report).

Everything is bounded in time and uses free ports only, so the suite can run
in parallel (one cluster per pytest-xdist worker).

Environment:
  BATCHD_BIN          the batchd binary (default: <repo>/batchd)
  MOCK_PROVIDER_BIN   the mock provider (default: <repo>/tests/mock/mock_provider)
  PG_BINDIR           PostgreSQL server binaries (default: /usr/lib/postgresql/15/bin,
                      else `pg_config --bindir`)
"""

import itertools
import json
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SQL_DIR = os.path.join(REPO, "sql", "migrations")

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
TERMINAL_BATCH = ("completed", "completed_with_errors", "failed", "cancelled")


# ------------------------------------------------------------------ helpers

def batchd_bin():
    return os.environ.get("BATCHD_BIN") or os.path.join(REPO, "batchd")


def mock_bin():
    return os.environ.get("MOCK_PROVIDER_BIN") or os.path.join(
        REPO, "tests", "mock", "mock_provider")


def batchctl_bin():
    """BATCHCTL_BIN, else build/dev/batchctl, else ./batchctl of the tree."""
    env = os.environ.get("BATCHCTL_BIN")
    if env:
        return env
    for cand in (os.path.join(REPO, "build", "dev", "batchctl"), os.path.join(REPO, "batchctl")):
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    pytest.fail("batchctl not found: build it (make batchctl) or set BATCHCTL_BIN")


def batchctl_env(url=None, token=None, database=None, env=None):
    """The environment of a batchctl run: never BATCHD_* or
    CREDENTIALS_DIRECTORY from the caller's (the arguments and env= set
    them), and the sanitizer options."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("BATCHD_") and k != "CREDENTIALS_DIRECTORY"}
    full.update(SANITIZER_ENV)
    if url is not None:
        full["BATCHD_URL"] = url
    if token is not None:
        full["BATCHD_TOKEN"] = token
    if database is not None:
        full["BATCHD_DATABASE"] = database
    if env:
        full.update(env)
    return full


def run_ctl(args, url=None, token=None, input=None, timeout=60, env=None, database=None):
    """Run batchctl to completion in batchctl_env(); returns CompletedProcess
    (text); sanitizer reports fail the test."""
    full = batchctl_env(url, token, database, env)
    r = subprocess.run([batchctl_bin()] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=timeout, env=full, input=input,
                       stdin=None if input is not None else subprocess.DEVNULL)
    assert_no_sanitizer_report(r.stdout + r.stderr, "batchctl")
    return r


def require_binary(path, what):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{what} not found at {path}: build it first (make) or set "
                    f"{'BATCHD_BIN' if what == 'batchd' else 'MOCK_PROVIDER_BIN'}")
    return path


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.05, desc=None):
    """Poll predicate() until it returns a truthy value (returned) or the
    timeout passes (AssertionError naming desc and the last value)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for "
                f"{desc or getattr(predicate, '__name__', 'condition')} (last value: {last!r})")
        time.sleep(interval)


def tail(text, lines=60):
    return "\n".join(text.splitlines()[-lines:])


def read_text(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def http_get(url, timeout=5.0):
    """(status, body bytes); connection errors raise OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post_json(url, obj, timeout=5.0):
    data = json.dumps(obj).encode() if obj is not None else b""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def connect(conninfo, **kw):
    """A psycopg connection in autocommit mode with dict rows."""
    return psycopg.connect(conninfo, autocommit=True, row_factory=dict_row, **kw)


def submit(conn, tenant, route, items, options=None):
    """batchd.submit_batch(...) -> batch id (str)."""
    if options is None:
        row = conn.execute("SELECT batchd.submit_batch(%s, %s, %s) AS id",
                           (tenant, route, Jsonb(items))).fetchone()
    else:
        row = conn.execute("SELECT batchd.submit_batch(%s, %s, %s, %s) AS id",
                           (tenant, route, Jsonb(items), Jsonb(options))).fetchone()
    return str(row["id"])


def batch(conn, batch_id):
    """The batchd.batches row as a dict (None when absent)."""
    return conn.execute("SELECT * FROM batchd.batches WHERE id = %s",
                        (batch_id,)).fetchone()


def items(conn, batch_id):
    return conn.execute("SELECT * FROM batchd.items WHERE batch_id = %s ORDER BY seq",
                        (batch_id,)).fetchall()


def wait_batch_done(conn, batch_id, timeout=30.0):
    """Wait until the batch reaches a terminal status; returns its row."""
    def done():
        b = batch(conn, batch_id)
        return b if b and b["status"] in TERMINAL_BATCH else None

    return wait_until(done, timeout=timeout, interval=0.05, desc=f"batch {batch_id} to finish")


def check_consistency(conn):
    return conn.execute("SELECT * FROM batchd.check_consistency()").fetchall()


# ------------------------------------------------------------------ PostgreSQL

def pg_bindir():
    env = os.environ.get("PG_BINDIR")
    if env:
        return env
    if os.path.exists("/usr/lib/postgresql/15/bin/pg_ctl"):
        return "/usr/lib/postgresql/15/bin"
    try:
        return subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pytest.fail("PostgreSQL server binaries not found (apt-get install postgresql-15)")


class PgCluster:
    """A throwaway cluster: initdb -A trust in a temp dir, run as `postgres`
    when we are root (PostgreSQL refuses to run as root)."""

    def __init__(self):
        self.bindir = pg_bindir()
        self.dir = tempfile.mkdtemp(prefix="batchd-pg-")
        self.datadir = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.sockdir = self.dir
        self.port = None
        self.as_user = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = "postgres"
        os.chmod(self.dir, 0o755)

    def _cmd(self, *argv):
        argv = [os.path.join(self.bindir, argv[0])] + list(argv[1:])
        if self.as_user:
            argv = ["runuser", "-u", self.as_user, "--"] + argv
        return argv

    def _run(self, *argv, timeout=60):
        r = subprocess.run(self._cmd(*argv), capture_output=True, text=True, timeout=timeout,
                           cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
                               f"\n--- postgres log ---\n{tail(read_text(self.logfile))}")
        return r

    def start(self):
        self._run("initdb", "-D", self.datadir, "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync", timeout=120)
        conf = os.path.join(self.datadir, "postgresql.conf")
        last_err = None
        for _ in range(3):  # the free port may be taken by the time postgres binds it
            self.port = free_port()
            with open(conf, "a") as f:
                f.write(f"""
# batchd integration tests
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.sockdir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
checkpoint_timeout = 30min
max_wal_size = 1GB
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
""")
            try:
                self._run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60",
                          "start", timeout=90)
                return
            except RuntimeError as e:
                last_err = e
        raise last_err

    def stop(self):
        try:
            subprocess.run(self._cmd("pg_ctl", "-D", self.datadir, "-m", "immediate", "-w",
                                     "-t", "30", "stop"),
                           capture_output=True, timeout=60, cwd=self.dir)
        except (OSError, subprocess.SubprocessError):
            pass

    def conninfo(self, dbname="postgres"):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def log(self):
        return read_text(self.logfile)


@pytest.fixture(scope="session")
def pg(request):
    cluster = PgCluster()
    try:
        cluster.start()
    except Exception:
        shutil.rmtree(cluster.dir, ignore_errors=True)
        raise
    yield cluster
    failed = request.session.testsfailed
    if failed:
        sys.stderr.write(f"\n--- postgres log (tail, {failed} test(s) failed) ---\n"
                         f"{tail(cluster.log(), 80)}\n")
    cluster.stop()
    shutil.rmtree(cluster.dir, ignore_errors=True)


_db_counter = itertools.count(1)


class Database:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.conninfo = cluster.conninfo(name)
        self._conns = []

    def connect(self, **kw):
        c = connect(self.conninfo, **kw)
        self._conns.append(c)
        return c

    def close(self):
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass


def write_minimal_config(path, conninfo):
    """A config for commands that only need the database (migrate): the
    provider and route are there because a config must have a route."""
    with open(path, "w") as f:
        f.write(f"[batchd]\ndatabase = {conninfo}\nlog_level = warn\n\n"
                "[provider unused]\nurl = http://127.0.0.1:9/item/{id}\n\n"
                "[route unused]\nproviders = unused\n")
    return path


def run_batchd(args, env=None, timeout=60, input=None):
    """Run batchd to completion; returns CompletedProcess (text)."""
    full_env = batchd_env(env)
    return subprocess.run([require_binary(batchd_bin(), "batchd")] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def batchd_env(extra=None):
    env = dict(os.environ)
    env.pop("BATCHD_DATABASE", None)
    env.update(SANITIZER_ENV)
    if extra:
        env.update(extra)
    return env


def assert_no_sanitizer_report(text, what="batchd"):
    for marker in SANITIZER_MARKERS:
        assert marker not in text, f"{what} output has a sanitizer report ({marker!r}):\n{tail(text, 80)}"


# BATCHD_TEST_UPGRADE_FROM=DUMP: every test database starts as that dump of a
# database made by an earlier release (tests/upgrade/release-010.sql), which
# the test's `batchd migrate` then upgrades: the whole suite on upgraded schemas.
UPGRADE_FROM = os.environ.get("BATCHD_TEST_UPGRADE_FROM") or None


def restore_dump(cluster, conninfo, path):
    """Load a plain pg_dump file into a database with psql (ON_ERROR_STOP)."""
    r = subprocess.run([os.path.join(cluster.bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-d", conninfo, "-f", path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"restoring {path} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def dump_schema(cluster, conninfo):
    """pg_dump --schema-only of schema batchd, normalized: without the lines
    that name versions, the session settings and pg_dump's per-run
    \\restrict key, so that two dumps of the same schema compare equal."""
    r = subprocess.run([os.path.join(cluster.bindir, "pg_dump"), "--schema-only",
                        "--schema=batchd", "--no-owner", "--no-privileges", "-d", conninfo],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.splitlines():
        if (line.startswith("-- Dumped from") or line.startswith("-- Dumped by")
                or line.startswith("\\restrict") or line.startswith("\\unrestrict")
                or line.startswith("SET ") or line.startswith("SELECT pg_catalog.set_config")):
            continue
        out.append(line.rstrip())
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return text


def migrate(conninfo, tmp_dir, down=None, extra_args=()):
    """`batchd migrate` against conninfo; asserts exit 0 and a clean run."""
    cfg = write_minimal_config(os.path.join(tmp_dir, f"migrate-{next(_db_counter)}.ini"), conninfo)
    args = ["migrate", "-c", cfg] + list(extra_args)
    if down is not None:
        args += ["--down", str(down)]
    r = run_batchd(args)
    assert_no_sanitizer_report(r.stdout + r.stderr, "batchd migrate")
    assert r.returncode == 0, f"batchd {' '.join(args)} exited {r.returncode}:\n{r.stderr}"
    return r


@pytest.fixture
def new_database(pg, tmp_path):
    """Factory: new_database(migrated=True) -> Database (fresh, dropped at teardown)."""
    made = []
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")

    def make(migrated=True):
        name = f"test_{worker}{os.getpid()}_{next(_db_counter)}"
        with connect(pg.conninfo()) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        db = Database(pg, name)
        made.append(db)
        if migrated:
            if UPGRADE_FROM:
                restore_dump(pg, db.conninfo, UPGRADE_FROM)
            migrate(db.conninfo, str(tmp_path))
        return db

    yield make
    for db in made:
        db.close()
        try:
            with connect(pg.conninfo()) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
        except Exception:
            pass


@pytest.fixture
def db(new_database):
    """A fresh, migrated database for this test."""
    return new_database()


@pytest.fixture
def conn(db):
    """An autocommit psycopg connection (dict rows) to the test's database."""
    return db.connect()


# ------------------------------------------------------------------ mock provider

class MockProvider:
    def __init__(self, proc, port, out_lines):
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self._out = out_lines

    def url(self, path="/item/{id}"):
        return self.base + path

    def _get(self, path):
        status, body = http_get(self.base + path)
        assert status == 200, f"mock GET {path}: {status} {body[:200]!r}"
        return json.loads(body)

    def configure(self, **cfg):
        status, body = http_post_json(self.base + "/_mock/config", cfg)
        assert status == 200, f"mock config {cfg}: {status} {body[:200]!r}"

    def reset(self):
        status, body = http_post_json(self.base + "/_mock/reset", None)
        assert status == 200, f"mock reset: {status} {body[:200]!r}"

    def stats(self):
        return self._get("/_mock/stats")

    def ids(self):
        return self._get("/_mock/ids")

    def requests(self, since=0):
        return self._get(f"/_mock/requests?since={since}")["requests"]

    def all_requests(self):
        out, since = [], 0
        for _ in range(10000):  # bounded
            page = self._get(f"/_mock/requests?since={since}")
            out.extend(page["requests"])
            if not page["requests"] or page["next"] == since:
                break
            since = page["next"]
        return out

    def output(self):
        return "".join(self._out)


def start_mock(tmp_dir, config=None, timeout=10.0):
    argv = [require_binary(mock_bin(), "mock_provider"), "--port", "0"]
    if config is not None:
        argv += ["--config", json.dumps(config)]
    errlog = open(os.path.join(tmp_dir, "mock_provider.log"), "w")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errlog,
                            stdin=subprocess.DEVNULL, env=batchd_env())
    errlog.close()
    deadline = time.monotonic() + timeout
    buf = b""
    port = None
    while port is None:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            proc.wait(timeout=5)
            raise AssertionError(f"mock provider did not print PORT= within {timeout}s "
                                 f"(exit {proc.returncode}); stdout {buf!r}; stderr:\n"
                                 f"{read_text(os.path.join(tmp_dir, 'mock_provider.log'))}")
        r, _, _ = select.select([proc.stdout], [], [], min(left, 0.2))
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            buf += chunk
            if b"\n" in buf:
                first, buf = buf.split(b"\n", 1)
                line = first.decode(errors="replace").strip()
                assert line.startswith("PORT="), f"mock provider's first line is {line!r}"
                port = int(line[5:])
    out_lines = [buf.decode(errors="replace")]

    def drain():  # keep reading so the mock never blocks on a full pipe
        try:
            for chunk in iter(lambda: os.read(proc.stdout.fileno(), 65536), b""):
                out_lines.append(chunk.decode(errors="replace"))
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    m = MockProvider(proc, port, out_lines)
    wait_until(lambda: _mock_up(m), timeout=timeout, desc="mock provider to answer")
    return m


def _mock_up(m):
    try:
        return http_get(m.base + "/_mock/stats", timeout=1)[0] == 200
    except OSError:
        return False


@pytest.fixture
def mock_factory(tmp_path):
    started = []

    def make(config=None):
        m = start_mock(str(tmp_path), config)
        started.append(m)
        return m

    yield make
    for m in started:
        if m.proc.poll() is None:
            m.proc.terminate()
            try:
                m.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=5)
        err = read_text(os.path.join(str(tmp_path), "mock_provider.log"))
        assert_no_sanitizer_report(err, "mock provider")


@pytest.fixture
def mock(mock_factory):
    """A running mock provider (fresh per test)."""
    return mock_factory()


# ------------------------------------------------------------------ batchd

def render_config(database, batchd=None, providers=None, routes=None):
    """INI text. batchd: dict of [batchd] keys; providers: {name: {key: value
    or list of values (repeated key)}}; routes: {name: providers string or dict}."""
    lines = ["[batchd]", f"database = {database}"]
    for k, v in (batchd or {}).items():
        lines.append(f"{k} = {v}")
    for name, keys in (providers or {}).items():
        lines += ["", f"[provider {name}]"]
        for k, v in keys.items():
            for one in (v if isinstance(v, (list, tuple)) else [v]):
                lines.append(f"{k} = {one}")
    for name, r in (routes or {}).items():
        lines += ["", f"[route {name}]"]
        if isinstance(r, str):
            r = {"providers": r}
        for k, v in r.items():
            lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


class Batchd:
    def __init__(self, proc, config_path, log_path, port, expect_rc=0):
        self.proc = proc
        self.pid = proc.pid
        self.config_path = config_path
        self.log_path = log_path
        self.port = port
        self.base = f"http://127.0.0.1:{port}" if port else None
        self.expect_rc = expect_rc
        self.returncode = None

    def log(self):
        return read_text(self.log_path)

    def get(self, path, timeout=5.0):
        return http_get(self.base + path, timeout=timeout)

    def running(self):
        return self.proc.poll() is None

    def ready(self):
        try:
            return self.get("/readyz", timeout=1)[0] == 200
        except OSError:
            return False

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=30.0):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"batchd (pid {self.pid}) did not exit within {timeout}s; "
                                 f"killed. Log tail:\n{tail(self.log())}")
        return self.returncode

    def stop(self, timeout=30.0):
        """SIGTERM and wait (bounded); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)


@pytest.fixture
def batchd_factory(tmp_path):
    """start(config_text=None, *, db=None, providers=, routes=, env=, wait=True,
    listen=True, binary=None (default $BATCHD_BIN), **batchd_keys) -> Batchd.

    At teardown each daemon still running gets SIGTERM; every daemon must have
    exited 0 (or its expect_rc) and logged no sanitizer report."""
    started = []
    counter = itertools.count(1)

    def start(config_text=None, *, db=None, providers=None, routes=None, env=None,
              wait=True, listen=True, ready_timeout=30.0, expect_rc=0, binary=None,
              **batchd_keys):
        n = next(counter)
        port = None
        if config_text is None:
            keys = {"log_level": "info", "shutdown_timeout": "5s"}
            if listen:
                keys["listen"] = f"127.0.0.1:{free_port()}"
            keys.update({k: v for k, v in batchd_keys.items() if v is not None})
            if keys.get("listen"):
                port = int(str(keys["listen"]).rsplit(":", 1)[1])
            config_text = render_config(db.conninfo, keys, providers, routes)
        config_path = os.path.join(str(tmp_path), f"batchd-{n}.ini")
        with open(config_path, "w") as f:
            f.write(config_text)
        log_path = os.path.join(str(tmp_path), f"batchd-{n}.log")
        with open(log_path, "a") as logf:  # O_APPEND: every writer appends
            proc = subprocess.Popen([require_binary(binary or batchd_bin(), "batchd"),
                                     "-c", config_path],
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    env=batchd_env(env))
        d = Batchd(proc, config_path, log_path, port, expect_rc)
        started.append(d)
        if wait:
            # ready: /readyz answers 200, or without listen the readiness log line
            if port is not None:
                is_ready = d.ready
            else:
                def is_ready():
                    return re.search(r"\bready\b", d.log()) is not None
            deadline = time.monotonic() + ready_timeout
            while not is_ready():
                if proc.poll() is not None:
                    d.expect_rc = proc.returncode  # reported here, not again at teardown
                    raise AssertionError(f"batchd exited {proc.returncode} before it was ready; "
                                         f"log:\n{tail(d.log())}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"batchd not ready within {ready_timeout}s; "
                                         f"log:\n{tail(d.log())}")
                time.sleep(0.05)
        return d

    yield start

    problems = []
    for d in started:
        try:
            rc = d.stop(timeout=30.0)
        except AssertionError as e:
            problems.append(str(e))
            continue
        log = d.log()
        for marker in SANITIZER_MARKERS:
            if marker in log:
                problems.append(f"batchd (pid {d.pid}) log has {marker!r}:\n{tail(log, 80)}")
                break
        if rc != d.expect_rc:
            problems.append(f"batchd (pid {d.pid}) exited {rc}, expected {d.expect_rc}; "
                            f"log tail:\n{tail(log)}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)

