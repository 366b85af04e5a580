#!/usr/bin/python3
"""
batchd benchmark: every figure beside a ceiling measured in the same run.

    make bench                                   (BATCHD_BIN, MOCK_PROVIDER_BIN set by make)
    /usr/bin/python3 tests/bench/bench.py        (builds build/bench with CFLAGS="-O2 -g")
    /usr/bin/python3 tests/bench/bench.py --quick              smoke: seconds, small sizes
    /usr/bin/python3 tests/bench/bench.py --only B1,B3 --json out.json

It starts and stops its own PostgreSQL 15 cluster (as the postgres OS user when
run as root, like tests/integration/conftest.py), the mock provider and batchd,
all on 127.0.0.1, and prints ONE table on stdout (progress goes to stderr):

  C1  database ceiling: pgbench, 4 clients, a custom script doing the least work
      per item on a table shaped like batchd.items (same columns, indexes and
      storage options): claim up to 100 with FOR UPDATE SKIP LOCKED, complete
      them in one statement, two transactions per 100 items, as batchd does.
      Three runs, each on a fresh table; the median is the ceiling (one run
      swings 23,000-55,000 items/s back to back on a quiet 2-CPU machine),
      the spread and the WAL bytes per item are in the note.
  C2  provider ceiling: wrk -t1 -c64 (keep-alive) against the mock, latency 0.
  B1  throughput: N items, latency 0, max_inflight 256; items/s from the first
      claim to the last completion (batches.started_at .. finished_at); ratio to
      min(C1, C2).
  B2  latency-bound: latency 200 ms, max_inflight 1000; ratio to 1000 / 0.2 s.
      B2.steady (shown only): the items started from 1 s after the first claim
      on, over the time from then to the last completion: the same drain
      without the provider's slow start (its first round trip at a window of
      breaker_failures, issue #18), the tail kept.
      B2.loss (shown only): the span beyond n x 200 ms / 1000, by phase, from
      the mock's own arrival and answer times (see b2_losses).
  B3  pickup latency: idle batchd, single-item batches 20 ms apart; submit commit
      (client clock right after the commit returned) -> mock arrival ("t" of
      /_mock/requests); both CLOCK_REALTIME on this host.
  B4  ingest: items/s through batchd.submit_batch() and POST /v1/batches, in
      chunks; ratio to COPY of the same rows (plus the batch row, FK checked) into
      a table shaped like batchd.items.
  B5  memory: peak RSS (VmHWM, and VmRSS sampled) of batchd during B2; VmRSS
      after 10% and after 100% of the B6 run (growth).
  B6  sustained: one batchd drains N items (all submitted first); items/s of the
      last 10% vs the first 10% (100k of 1M), bloat and index growth included;
      B6.trend (shown only): a least-squares line through the ten tenths' rates,
      fitted last / fitted first, which one autovacuum pass does not swing.
  B7  rate accuracy: provider rate 500/s, burst 10; achieved rate over the 20 s
      after the first second (compared with the target at 3 decimals: one
      arrival more or less at an edge is 1 in 10,000), and the largest sliding one-second window of
      arrivals at the mock (where it starts, and the largest after the first second).
  B8  cost per item during B1: CPU (utime+stime) of batchd, and of the whole
      cluster (postmaster, every backend and auxiliary process, and the children
      it reaped), per item.
  B9  B1's drain (latency 0) at max_inflight 10, 50, 200 and 1000, each over
      b9_items items: items/s against min(C1, C2), with the DB and batchd CPU
      per item; the DB's beside C1's own, and the WAL bytes per item
      (pg_current_wal_lsn before and after the drain) in the note, and
      batchd's CPU per item over the mock's CPU per request in C2: the same
      mock binary under wrk, an index of the machine's speed of the moment
      (it read 14.7 and 19.7 us an hour apart on one machine), shown only.

The columns "DB us/item" and "batchd us/item" give, beside each throughput,
the CPU per item of the whole cluster and of batchd during that drain.

Cluster settings (the same for C1 and every B): PostgreSQL's default
durability, fsync on, full_page_writes on, synchronous_commit ON (what users
run; --synchronous-commit off measures the other column), shared_buffers 1GB,
max_wal_size 8GB, checkpoint_timeout 30min, wal_buffers 64MB, jit off,
autovacuum on.

Targets are printed (PASS/MISS) in a full run, never asserted; --quick judges
nothing. The "other CPU" column is the average number of CPUs that processes
we did not start used during that figure (/proc/stat minus our own processes):
on a shared 2-CPU machine anything above ~0.2 disturbs the figure (B6 prints its
rate per tenth of the run with that load, in the log and the JSON). Use
--wait-quiet SECONDS to wait for a quiet machine first. The full run keeps to a
budget of ~9.5 minutes after that wait: B6 (last) is capped by what is left. Exit status: 0 when every selected figure was computed, 1 when one
failed (its row says why), 2 on bad usage or a setup failure.

Environment: BATCHD_BIN, MOCK_PROVIDER_BIN (else build/bench is built and used),
PG_BINDIR (default /usr/lib/postgresql/15/bin), WRK (default: wrk on PATH),
BENCH_TMPDIR (logs and configs; default: the system temp dir; the cluster always
goes in the system temp dir, which the postgres user can traverse).
"""

import argparse
import datetime
import http.client
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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ROUTE = "bench"
TENANT = "bench"
TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")
FIGURES = ["C1", "C2", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9"]
# what a figure needs measured in the same run
NEEDS = {"B1": ["C1", "C2"], "B8": ["B1"], "B5": ["B2", "B6"], "B9": ["C1", "C2"]}
# B9: B1's drain at each of these max_inflight
SWEEP = [10, 50, 200, 1000]
# every row the table has, in order (the smoke test checks each is printed)
ROW_IDS = ["C1", "C2", "B1", "B2", "B2.steady", "B2.loss", "B3.p50", "B3.p95", "B3.p99", "B4.sql", "B4.rest",
           "B5.peak", "B5.growth", "B6", "B6.trend", "B7.rate", "B7.window", "B8.batchd", "B8.db"
           ] + [f"B9.{m}" for m in SWEEP]
CLK_TCK = os.sysconf("SC_CLK_TCK")

SIZES = {
    "full": dict(c1_items=200_000, c1_clients=4, c1_runs=3, c2_secs=5, b1_items=200_000, b1_chunk=10_000,
                 b2_items=50_000, b3_batches=200, b4_items=1_000_000, b4_chunk=10_000,
                 b6_items=1_000_000, b6_chunk=10_000, b7_secs=20,
                 b9_items=40_000, b9_cap=60,
                 b1_cap=150, b2_cap=90, b6_cap=330, submit_cap=240, budget=680),
    "quick": dict(c1_items=10_000, c1_clients=4, c1_runs=1, c2_secs=1, b1_items=10_000, b1_chunk=5_000,
                  b2_items=3_000, b3_batches=20, b4_items=20_000, b4_chunk=5_000,
                  b6_items=20_000, b6_chunk=5_000, b7_secs=2,
                  b9_items=2_000, b9_cap=30,
                  b1_cap=60, b2_cap=30, b6_cap=60, submit_cap=60, budget=240),
}

T0 = time.monotonic()


def log(msg):
    sys.stderr.write(f"[{time.monotonic() - T0:7.1f}s] {msg}\n")
    sys.stderr.flush()


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ helpers

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_text(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def tail(text, n=30):
    return "\n".join(text.splitlines()[-n:])


def wait_until(pred, timeout, interval=0.05, desc="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {desc}")
        time.sleep(interval)


def http_req(method, url, body=None, headers=None, timeout=10.0):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def proc_stat(pid):
    """(ppid, utime+stime ticks, cutime+cstime ticks) or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def proc_cpu_s(pid):
    st = proc_stat(pid)
    return st[1] / CLK_TCK if st else None


def proc_mem_kib(pid):
    """{'VmRSS': kB, 'VmHWM': kB} (empty when gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def machine_cpu():
    """(busy, total) CPU seconds of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    idle = v[3] + v[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def own_cpu():
    """CPU seconds of this script and of every child it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def percentile(sorted_vals, p):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def fmt_num(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return f"{s} {unit}".strip()


# ------------------------------------------------------------------ processes

class Procs:
    """Every process we start, so that we stop exactly those (by PID)."""

    def __init__(self):
        self.items = []

    def add(self, proc, name):
        self.items.append((proc, name))
        return proc

    def stop(self, proc, sig=signal.SIGTERM, timeout=30.0):
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def stop_all(self):
        for proc, _ in reversed(self.items):
            if proc.poll() is None:
                try:
                    self.stop(proc, timeout=10)
                except Exception:
                    pass


PROCS = Procs()


# ------------------------------------------------------------------ PostgreSQL

# --pg-stats (diagnosis only: it costs CPU, so figures taken with it are not the
# reference ones): every statement, also inside PL/pgSQL functions.
PG_STATS_SETTINGS = {
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "1000",
    "pg_stat_statements.track_planning": "on",
}

PG_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",   # PostgreSQL's default; --synchronous-commit off for the other column
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "wal_buffers": "64MB",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    "max_connections": "100",
    "jit": "off",
    "autovacuum": "on",
}


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
        raise BenchError("PostgreSQL server binaries not found (apt-get install postgresql-15)")


class PgCluster:
    """A private cluster in a temp dir (initdb -A trust), run as `postgres` when
    we are root, as tests/integration/conftest.py does, with benchmark settings."""

    def __init__(self, base_dir):
        self.bindir = pg_bindir()
        self.dir = tempfile.mkdtemp(prefix="batchd-bench-pg-", dir=base_dir)
        self.datadir = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgres.log")
        self.port = None
        self.as_user = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = "postgres"
        os.chmod(self.dir, 0o755)
        self.started = False

    def _cmd(self, *argv):
        argv = [os.path.join(self.bindir, argv[0])] + list(argv[1:])
        if self.as_user:
            argv = ["runuser", "-u", self.as_user, "--"] + argv
        return argv

    def _run(self, *argv, timeout=120):
        r = subprocess.run(self._cmd(*argv), capture_output=True, text=True, timeout=timeout,
                           cwd=self.dir)
        if r.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
                             f"\n--- postgres log ---\n{tail(read_text(self.logfile))}")
        return r

    def start(self, extra=None):
        self._run("initdb", "-D", self.datadir, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        conf = os.path.join(self.datadir, "postgresql.conf")
        settings = "\n".join(f"{k} = {v}" for k, v in dict(PG_SETTINGS, **(extra or {})).items())
        last = None
        for _ in range(3):  # the free port may be taken by the time postgres binds it
            self.port = free_port()
            with open(conf, "a") as f:
                f.write(f"\n# batchd benchmark\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                        f"unix_socket_directories = '{self.dir}'\n{settings}\n"
                        "log_min_messages = warning\nlog_line_prefix = '%m [%p] %d '\n")
            try:
                self._run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60",
                          "start", timeout=90)
                self.started = True
                return
            except BenchError as e:
                last = e
        raise last

    def postmaster_pid(self):
        with open(os.path.join(self.datadir, "postmaster.pid")) as f:
            return int(f.readline())

    def cpu_s(self):
        """CPU seconds of the whole cluster: the postmaster (with the children it
        reaped) plus every live child process."""
        pm = self.postmaster_pid()
        st = proc_stat(pm)
        total = st[1] + st[2]
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            s = proc_stat(int(name))
            if s and s[0] == pm:
                total += s[1]
        return total / CLK_TCK

    def stop(self):
        if not self.started:
            return
        try:
            subprocess.run(self._cmd("pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", "60",
                                     "stop"), capture_output=True, timeout=90, cwd=self.dir)
        except (OSError, subprocess.SubprocessError):
            pass
        self.started = False

    def conninfo(self, dbname="postgres"):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def connect(self, dbname="postgres"):
        return psycopg.connect(self.conninfo(dbname), autocommit=True)


# ------------------------------------------------------------------ mock provider

class Mock:
    def __init__(self, binary, work_dir):
        argv = [binary, "--host", "127.0.0.1", "--port", "0"]
        self.errlog = os.path.join(work_dir, "mock_provider.log")
        with open(self.errlog, "w") as err:
            self.proc = PROCS.add(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                                   stdin=subprocess.DEVNULL), "mock")
        deadline = time.monotonic() + 10
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise BenchError(f"mock provider did not print PORT= ({buf!r}): "
                                 f"{tail(read_text(self.errlog))}")
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.2))
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if chunk:
                    buf += chunk
        line = buf.split(b"\n", 1)[0].decode().strip()
        if not line.startswith("PORT="):
            raise BenchError(f"mock provider's first line is {line!r}")
        self.port = int(line[5:])
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._drain, daemon=True).start()
        wait_until(self._up, 10, desc="mock provider")

    def _drain(self):
        try:
            while os.read(self.proc.stdout.fileno(), 65536):
                pass
        except OSError:
            pass

    def _up(self):
        try:
            return http_req("GET", self.base + "/_mock/stats", timeout=1)[0] == 200
        except OSError:
            return False

    def get(self, path):
        st, body = http_req("GET", self.base + path, timeout=30)
        if st != 200:
            raise BenchError(f"mock GET {path}: {st} {body[:200]!r}")
        return json.loads(body)

    def reset(self, **config):
        st, body = http_req("POST", self.base + "/_mock/reset", {"config": True})
        if st != 200:
            raise BenchError(f"mock reset: {st} {body[:200]!r}")
        if config:
            st, body = http_req("POST", self.base + "/_mock/config", config)
            if st != 200:
                raise BenchError(f"mock config {config}: {st} {body[:200]!r}")

    def requests(self, limit_pages=1000):
        out, since = [], 0
        for _ in range(limit_pages):  # bounded
            page = self.get(f"/_mock/requests?since={since}&limit=10000")
            out.extend(page["requests"])
            if not page["requests"] or page["next"] == since:
                break
            since = page["next"]
        return out

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid)


# ------------------------------------------------------------------ batchd

class Batchd:
    def __init__(self, binary, work_dir, conninfo, mock, name, batchd_keys=None, provider=None,
                 listen=True):
        self.name = name
        self.port = free_port() if listen else None
        keys = {"log_level": "warn", "shutdown_timeout": "5s", "max_inflight": 256}
        keys.update(batchd_keys or {})
        if listen:
            keys["listen"] = f"127.0.0.1:{self.port}"
        prov = {"url": f"{mock.base}/item/{{id}}", "timeout": "60s"}
        prov.update(provider or {})
        lines = ["[batchd]", f"database = {conninfo}"]
        lines += [f"{k} = {v}" for k, v in keys.items()]
        lines += ["", "[provider mock]"] + [f"{k} = {v}" for k, v in prov.items()]
        lines += ["", f"[route {ROUTE}]", "providers = mock", ""]
        self.config_text = "\n".join(lines)
        self.config = os.path.join(work_dir, f"batchd-{name}.ini")
        with open(self.config, "w") as f:
            f.write(self.config_text)
        self.logfile = os.path.join(work_dir, f"batchd-{name}.log")
        env = dict(os.environ)
        env.pop("BATCHD_DATABASE", None)
        with open(self.logfile, "a") as lf:
            self.proc = PROCS.add(subprocess.Popen([binary, "-c", self.config], stdout=lf,
                                                   stderr=lf, stdin=subprocess.DEVNULL, env=env),
                                  f"batchd-{name}")
        self.pid = self.proc.pid
        self.base = f"http://127.0.0.1:{self.port}" if listen else None

    def wait_ready(self, timeout=30):
        def ready():
            if self.proc.poll() is not None:
                raise BenchError(f"batchd ({self.name}) exited {self.proc.returncode} before "
                                 f"it was ready:\n{tail(read_text(self.logfile))}")
            if self.base:
                try:
                    return http_req("GET", self.base + "/readyz", timeout=1)[0] == 200
                except OSError:
                    return False
            return re.search(r"\bready\b", read_text(self.logfile)) is not None
        wait_until(ready, timeout, desc=f"batchd ({self.name}) to be ready")
        return self

    def alive(self):
        if self.proc.poll() is not None:
            raise BenchError(f"batchd ({self.name}) exited {self.proc.returncode}:\n"
                             f"{tail(read_text(self.logfile))}")

    def stop(self):
        rc = PROCS.stop(self.proc, timeout=30)
        if rc != 0:
            log(f"warning: batchd ({self.name}) exited {rc}; log tail:\n"
                f"{tail(read_text(self.logfile), 10)}")
        return rc


class RssSampler(threading.Thread):
    """VmRSS of a process every `period` seconds (max kept), bounded by the process."""

    def __init__(self, pid, period=0.05):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.max_kib = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            m = proc_mem_kib(self.pid)
            if not m:
                return
            self.max_kib = max(self.max_kib, m.get("VmRSS", 0))
            self.samples += 1
            self._halt.wait(self.period)

    def finish(self):
        self._halt.set()
        self.join(timeout=5)
        return self.max_kib


# ------------------------------------------------------------------ the run

class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.sz = SIZES[self.mode]
        self.rows = {}
        self.details = {}
        self.errors = {}
        self.work = None
        self.pg = None
        self.mock = None
        self.ndb = 0
        self.noise = {}
        self.t_start = T0

    # -------------------------------------------------------------- setup

    def binaries(self):
        a = self.args
        batchd = a.batchd or os.environ.get("BATCHD_BIN")
        mock = a.mock or os.environ.get("MOCK_PROVIDER_BIN")
        bdir = os.path.join(REPO, "build", "bench")
        if not batchd or not mock:
            if not a.no_build:
                build_bench(bdir)
            batchd = batchd or os.path.join(bdir, "batchd")
            mock = mock or os.path.join(bdir, "tests", "mock", "mock_provider")
            if not os.access(mock, os.X_OK):
                dev = os.path.join(REPO, "build", "dev", "tests", "mock", "mock_provider")
                mock = dev if os.access(dev, os.X_OK) else mock
        for path, what in ((batchd, "batchd (BATCHD_BIN)"), (mock, "mock provider (MOCK_PROVIDER_BIN)")):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise BenchError(f"{what} not found at {path}")
        self.batchd_bin, self.mock_bin = batchd, mock
        self.sanitized = b"__asan_init" in open(batchd, "rb").read()
        log(f"batchd: {batchd}{' (SANITIZED build: figures are not representative)' if self.sanitized else ''}")
        log(f"mock provider: {mock}")

    def setup(self):
        base = os.environ.get("BENCH_TMPDIR") or None
        self.work = tempfile.mkdtemp(prefix="batchd-bench-", dir=base)
        os.chmod(self.work, 0o755)
        self.pg = PgCluster(None)  # the system temp dir: postgres must traverse it
        log(f"starting PostgreSQL in {self.pg.dir}")
        self.pg.start(PG_STATS_SETTINGS if self.args.pg_stats else None)
        with self.pg.connect() as c:
            c.execute("CREATE DATABASE bench_tmpl")
            self.pg_version = c.execute("SHOW server_version").fetchone()[0]
        if self.args.pg_stats:
            with self.pg.connect("bench_tmpl") as c:
                c.execute("CREATE EXTENSION pg_stat_statements")
        cfg = os.path.join(self.work, "migrate.ini")
        with open(cfg, "w") as f:
            f.write(f"[batchd]\ndatabase = {self.pg.conninfo('bench_tmpl')}\nlog_level = warn\n\n"
                    "[provider unused]\nurl = http://127.0.0.1:9/item/{id}\n\n"
                    "[route unused]\nproviders = unused\n")
        r = subprocess.run([self.batchd_bin, "migrate", "-c", cfg], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError(f"batchd migrate failed ({r.returncode}): {r.stderr}")
        self.mock = Mock(self.mock_bin, self.work)
        log(f"PostgreSQL {self.pg_version} on port {self.pg.port}; mock on port {self.mock.port}")

    def teardown(self):
        PROCS.stop_all()
        if self.pg:
            self.pg.stop()
            if not self.args.keep:
                shutil.rmtree(self.pg.dir, ignore_errors=True)
        if self.work and not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        elif self.work:
            log(f"kept {self.work} and {self.pg.dir if self.pg else ''}")

    def new_db(self, tag):
        self.ndb += 1
        name = f"b{self.ndb}_{tag.lower()}"
        with self.pg.connect() as c:
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE bench_tmpl')
        return name

    def drop_db(self, name):
        if self.mode == "quick":
            return  # the cluster goes away at the end; DROP DATABASE forces a checkpoint
        try:
            with self.pg.connect() as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as e:
            log(f"warning: dropping {name}: {e}")

    def batchd(self, db, name, **kw):
        return Batchd(self.batchd_bin, self.work, self.pg.conninfo(db), self.mock, name, **kw)

    # -------------------------------------------------------------- helpers

    @staticmethod
    def chunks_json(n_items, chunk, prefix):
        """Pre-serialised JSON arrays of payloads {"id": "<prefix><n>"}."""
        out = []
        for start in range(0, n_items, chunk):
            end = min(n_items, start + chunk)
            out.append("[" + ",".join(f'{{"id":"{prefix}{i}"}}' for i in range(start, end)) + "]")
        return out

    def submit_all(self, db, n_items, chunk, prefix, cap):
        """Submit n_items through batchd.submit_batch() in chunks; returns seconds."""
        arrays = self.chunks_json(n_items, chunk, prefix)
        deadline = time.monotonic() + cap
        with self.pg.connect(db) as c:
            t = time.monotonic()
            for k, arr in enumerate(arrays):
                c.execute("SELECT batchd.submit_batch(%s, %s, %s::jsonb, %s::jsonb)",
                          (TENANT, ROUTE, arr, json.dumps({"name": f"{prefix}{k}"})))
                if time.monotonic() > deadline:
                    raise BenchError(f"submitting {n_items} items took over {cap}s")
            return time.monotonic() - t

    def prepare_drain(self, db):
        """The same start for every drain (and for C1): statistics and visibility map
        up to date, no dirty buffers left for the measured phase to write."""
        with self.pg.connect(db) as c:
            c.execute("VACUUM (ANALYZE) batchd.items")
            c.execute("VACUUM (ANALYZE) batchd.batches")
            if self.mode != "quick":
                c.execute("CHECKPOINT")

    def progress(self, c):
        r = c.execute("SELECT count(*), count(*) FILTER (WHERE status = ANY (%s)), "
                      "coalesce(sum(total), 0), coalesce(sum(succeeded + failed + cancelled), 0), "
                      "coalesce(sum(failed), 0) FROM batchd.batches", (list(TERMINAL),)).fetchone()
        return dict(batches=r[0], done_batches=r[1], total=int(r[2]), done=int(r[3]), failed=int(r[4]))

    def cap(self, figure_cap, reserve=15):
        """A drain's time cap: its own, and no more than the run's budget leaves."""
        left = self.t_start + self.sz["budget"] - time.monotonic() - reserve
        return max(20.0, min(figure_cap, left))

    def drain(self, db, bd, cap, on_progress=None, interval=0.2):
        """Wait (bounded) until every batch of db is finished; returns the last progress."""
        deadline = time.monotonic() + cap
        with self.pg.connect(db) as c:
            while True:
                bd.alive()
                p = self.progress(c)
                if on_progress:
                    on_progress(p)
                if p["batches"] and p["done_batches"] == p["batches"]:
                    return p
                if time.monotonic() > deadline:
                    p["timed_out"] = True
                    log(f"  cap of {cap}s reached with {p['done']}/{p['total']} items done")
                    return p
                time.sleep(interval)

    def wal_lsn(self, db):
        with self.pg.connect(db) as c:
            return c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]

    def wal_since(self, db, lsn):
        """WAL bytes written by the whole cluster since lsn (the drain's own,
        while it is the only thing running)."""
        with self.pg.connect(db) as c:
            return float(c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)",
                                   (lsn,)).fetchone()[0])

    def batch_span(self, db):
        """(seconds from the first claim to the last completion, items finished)."""
        with self.pg.connect(db) as c:
            r = c.execute("SELECT extract(epoch FROM max(finished_at) - min(started_at)), "
                          "sum(succeeded + failed) FROM batchd.batches "
                          "WHERE started_at IS NOT NULL").fetchone()
        return (float(r[0]) if r[0] is not None else None), int(r[1] or 0)

    def row(self, rid, figure, value, unit, ceiling=None, ceiling_desc="", ratio=None,
            target="", ok=None, note="", db_us=None, bd_us=None):
        if self.mode == "quick" or ok is None:
            verdict = "-"
        else:
            verdict = "PASS" if ok else "MISS"
        self.rows[rid] = dict(id=rid, figure=figure, value=value, unit=unit, ceiling=ceiling,
                              ceiling_desc=ceiling_desc, ratio=ratio, target=target,
                              verdict=verdict, note=note, db_us=db_us, bd_us=bd_us)

    # -------------------------------------------------------------- C1

    def run_c1(self):
        """C1, c1_runs times (each on a fresh table): the median run is the
        ceiling. One pgbench run on this machine read 23,000-55,000 items/s
        back to back on a quiet machine (its 4 clients' SKIP LOCKED scans
        meet each other's locks by chance), so one sample is not a ceiling."""
        n, clients, runs = self.sz["c1_items"], self.sz["c1_clients"], self.sz["c1_runs"]
        samples = [self.c1_once(n, clients, k) for k in range(runs)]
        rates = sorted(x["items_per_s"] for x in samples)
        rate = rates[len(rates) // 2]
        us = sorted(x["db_cpu_us_per_item"] for x in samples)[len(samples) // 2]
        wal = sorted(x["wal_bytes_per_item"] for x in samples)[len(samples) // 2]
        self.c1 = rate
        self.details["C1"] = dict(items=n, clients=clients, runs=samples, items_per_s=rate,
                                  db_cpu_us_per_item=us, wal_bytes_per_item=wal,
                                  indexes=samples[0]["indexes"])
        note = f"{n:,} items, {samples[0]['indexes']} indexes; WAL {wal:,.0f} B/item"
        if runs > 1:
            note = (f"median of {runs} runs ({rates[0]:,.0f}-{rates[-1]:,.0f} items/s, "
                    f"{min(x['db_cpu_us_per_item'] for x in samples):.1f}-"
                    f"{max(x['db_cpu_us_per_item'] for x in samples):.1f} us); " + note)
        self.row("C1", f"DB ceiling: pgbench {clients} clients, claim 100 + complete",
                 rate, "items/s", note=note, db_us=us)
        log(f"C1: median {rate:,.0f} items/s, {us:.1f} us DB CPU/item, WAL {wal:,.0f} B/item")

    def c1_once(self, n, clients, k):
        db = self.new_db(f"c1_{k}")
        pgbench = os.path.join(self.pg.bindir, "pgbench")
        if not os.access(pgbench, os.X_OK):
            raise BenchError(f"pgbench not found at {pgbench} (apt-get install postgresql-15)")
        with self.pg.connect(db) as c:
            ro = c.execute("SELECT reloptions FROM pg_class WHERE oid = 'batchd.items'::regclass"
                           ).fetchone()[0] or []
            c.execute("CREATE SCHEMA c1")
            c.execute("CREATE TABLE c1.items (LIKE batchd.items INCLUDING ALL)"
                      + (f" WITH ({', '.join(ro)})" if ro else ""))
            c.execute("INSERT INTO c1.items (batch_id, seq, route, priority, payload, max_attempts) "
                      "SELECT '00000000-0000-0000-0000-000000000001', g - 1, %s, 5, "
                      "jsonb_build_object('id', 'c1-' || g), 3 FROM generate_series(1, %s) g "
                      "ORDER BY g", (ROUTE, n))
            nidx = c.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'c1'").fetchone()[0]
        self.prepare_drain_table(db, "c1.items")
        script = os.path.join(self.work, "c1.sql")
        with open(script, "w") as f:
            f.write(f"""-- claim up to 100 (SKIP LOCKED), as claim_items does for one route
WITH picked AS (
    SELECT i.id FROM c1.items AS i
     WHERE i.status = 'queued' AND i.run_after <= now() AND i.route = '{ROUTE}'
     ORDER BY i.priority DESC, i.id
     LIMIT 100
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE c1.items AS i
       SET status = 'running', worker_id = md5(:client_id::text)::uuid,
           attempts = i.attempts + 1, started_at = now(), finished_at = NULL
      FROM picked WHERE i.id = picked.id
    RETURNING i.id
)
SELECT coalesce(array_agg(id), '{{}}')::text AS ids FROM claimed
\\gset
-- complete them in one statement, fenced by worker as complete_items does
UPDATE c1.items AS i
   SET status = 'succeeded', http_status = 200, provider = 'mock', error = NULL,
       result = jsonb_build_object('id', i.id::text, 'method', 'GET', 'path', '/item/' || i.id, 'n', i.id),
       finished_at = now()
 WHERE i.id = ANY (:ids::bigint[]) AND i.status = 'running'
   AND i.worker_id = md5(:client_id::text)::uuid;
""")
        per_client = -(-n // (100 * clients))
        argv = [pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
                "-t", str(per_client), "-f", script, "-h", "127.0.0.1", "-p", str(self.pg.port),
                "-U", "postgres", db]
        log(f"C1 ({k + 1}/{self.sz['c1_runs']}): pgbench {clients} clients over {n:,} items "
            f"(table with {nidx} indexes)")
        wal0 = self.wal_lsn(db)
        cpu0 = self.pg.cpu_s()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
        cpu1 = self.pg.cpu_s()
        if r.returncode != 0:
            raise BenchError(f"pgbench failed ({r.returncode}): {r.stderr[-2000:]}")
        wal_bytes = self.wal_since(db, wal0)
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
        with self.pg.connect(db) as c:
            done, span = c.execute(
                "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) "
                "FROM c1.items WHERE status = 'succeeded'").fetchone()
        if done != n:
            raise BenchError(f"pgbench drained {done} of {n} items")
        rate = done / float(span)
        us = (cpu1 - cpu0) / n * 1e6
        log(f"C1 ({k + 1}/{self.sz['c1_runs']}): {rate:,.0f} items/s ({us:.1f} us DB CPU/item)")
        self.drop_db(db)
        return dict(seconds=float(span), items_per_s=rate, db_cpu_us_per_item=us,
                    wal_bytes_per_item=wal_bytes / n, indexes=nidx,
                    pgbench_tps=float(m.group(1)) if m else None)

    def prepare_drain_table(self, db, table):
        with self.pg.connect(db) as c:
            c.execute(f"VACUUM (ANALYZE) {table}")
            if self.mode != "quick":
                c.execute("CHECKPOINT")

    # -------------------------------------------------------------- C2

    def run_c2(self):
        wrk = os.environ.get("WRK") or shutil.which("wrk")
        if wrk and not os.access(wrk, os.X_OK):
            wrk = None
        secs = self.sz["c2_secs"]
        if not wrk:
            self.c2 = None
            self.details["C2"] = dict(error="wrk not installed")
            self.row("C2", "provider ceiling: wrk -t1 -c64 keep-alive", "n/a", "",
                     note="wrk not installed (apt-get install wrk)")
            log("C2: wrk not installed: n/a")
            return
        self.mock.reset()
        cpu0 = self.mock.cpu_s()
        argv = [wrk, "-t1", "-c64", f"-d{secs}s", "--timeout", "5s", f"{self.mock.base}/item/1"]
        log(f"C2: {' '.join(argv[1:])}")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60,
                           stdin=subprocess.DEVNULL)
        cpu1 = self.mock.cpu_s()
        m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
        if r.returncode != 0 or not m:
            raise BenchError(f"wrk failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
        if "Non-2xx" in r.stdout or "Socket errors" in r.stdout:
            log(f"C2: wrk reported errors:\n{r.stdout}")
        rate = float(m.group(1))
        self.c2 = rate
        stats = self.mock.get("/_mock/stats")
        self.details["C2"] = dict(req_per_s=rate, seconds=secs, mock_requests=stats["requests"],
                                  mock_cpu_us_per_req=(cpu1 - cpu0) / max(1, stats["requests"]) * 1e6,
                                  wrk_output=r.stdout)
        mock_us = self.details["C2"]["mock_cpu_us_per_req"]
        self.row("C2", "provider ceiling: wrk -t1 -c64 keep-alive", rate, "req/s",
                 note=f"mock latency 0, {secs}s; mock CPU {mock_us:.1f} us/request")
        log(f"C2: {rate:,.0f} req/s")
        self.mock.reset()

    # -------------------------------------------------------------- B1 + B8

    def run_b1(self):
        n, chunk = self.sz["b1_items"], self.sz["b1_chunk"]
        db = self.new_db("b1")
        self.mock.reset()
        secs = self.submit_all(db, n, chunk, "b1-", self.sz["submit_cap"])
        log(f"B1: submitted {n:,} items in {secs:.1f}s; draining with max_inflight 256")
        self.prepare_drain(db)
        pg0, mock0 = self.pg.cpu_s(), self.mock.cpu_s()
        bd = self.batchd(db, "b1", batchd_keys={"max_inflight": 256})
        perf = None
        if self.args.perf:
            perf = PROCS.add(subprocess.Popen(
                ["perf", "record", "-F", "1999", "-g", "-o", self.args.perf, "-p", str(bd.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), "perf")
        bd.wait_ready()
        b1_cap = self.cap(self.sz["b1_cap"])
        p = self.drain(db, bd, b1_cap)
        bd_cpu = proc_cpu_s(bd.pid)
        pg1, mock1 = self.pg.cpu_s(), self.mock.cpu_s()
        if perf:
            PROCS.stop(perf, signal.SIGINT)
        bd.stop()
        span, done = self.batch_span(db)
        if not done or not span:
            raise BenchError("B1: nothing was processed")
        if p.get("failed"):
            log(f"B1: warning: {p['failed']} item(s) failed")
        rate = done / span
        ceil = min(x for x in (self.c1, self.c2) if x) if (self.c1 or self.c2) else None
        which = "min(C1,C2)" if self.c1 and self.c2 else ("C1 (C2 n/a)" if self.c1 else "C2")
        ratio = rate / ceil if ceil else None
        note = f"{done:,} items, max_inflight 256"
        if p.get("timed_out"):
            note += f"; CAPPED at {b1_cap:.0f}s"
        self.details["B1"] = dict(items=done, seconds=span, items_per_s=rate, ceiling=ceil,
                                  failed=p.get("failed"), timed_out=bool(p.get("timed_out")))
        self.row("B1", "throughput, latency 0", rate, "items/s", ceil, which, ratio,
                 ">= 0.70", ratio is not None and ratio >= 0.70, note,
                 db_us=(pg1 - pg0) / done * 1e6, bd_us=bd_cpu / done * 1e6)
        log(f"B1: {rate:,.0f} items/s over {span:.2f}s ({done:,} items)")
        # B8: CPU per item during B1
        bd_us = bd_cpu / done * 1e6
        db_us = (pg1 - pg0) / done * 1e6
        self.details["B8"] = dict(batchd_cpu_s=bd_cpu, db_cpu_s=pg1 - pg0, items=done,
                                  batchd_us_per_item=bd_us, db_us_per_item=db_us,
                                  mock_us_per_item=(mock1 - mock0) / done * 1e6,
                                  c1_db_us_per_item=self.details.get("C1", {}).get("db_cpu_us_per_item"))
        c1_us = self.details.get("C1", {}).get("db_cpu_us_per_item")
        self.row("B8.batchd", "CPU per item: batchd process (during B1)", bd_us, "us/item",
                 None, "", None, "<= 20", bd_us <= 20, f"{bd_cpu:.2f}s CPU")
        self.row("B8.db", "CPU per item: all PostgreSQL processes", db_us, "us/item",
                 c1_us, "C1's DB CPU/item" if c1_us else "", db_us / c1_us if c1_us else None,
                 "<= 30", db_us <= 30, f"{pg1 - pg0:.2f}s CPU")
        log(f"B8: batchd {bd_us:.1f} us/item, PostgreSQL {db_us:.1f} us/item, "
            f"mock {(mock1 - mock0) / done * 1e6:.1f} us/item")
        self.drop_db(db)

    # -------------------------------------------------------------- B9

    def run_b9(self):
        """B1's drain at each max_inflight of SWEEP: the same items, latency 0."""
        n, chunk = self.sz["b9_items"], min(self.sz["b1_chunk"], self.sz["b9_items"])
        ceil = min(x for x in (self.c1, self.c2) if x) if (self.c1 or self.c2) else None
        c1_us = self.details.get("C1", {}).get("db_cpu_us_per_item")
        self.details["B9"] = {}
        for mi in SWEEP:
            rid = f"B9.{mi}"
            db = self.new_db(f"b9_{mi}")
            self.mock.reset()
            self.submit_all(db, n, chunk, f"b9-{mi}-", self.sz["submit_cap"])
            self.prepare_drain(db)
            wal0 = self.wal_lsn(db)
            pg0 = self.pg.cpu_s()
            bd = self.batchd(db, f"b9-{mi}", batchd_keys={"max_inflight": mi})
            perf = None
            if self.args.perf:
                perf = PROCS.add(subprocess.Popen(
                    ["perf", "record", "-F", "1999", "-g", "-o", f"{self.args.perf}.b9-{mi}",
                     "-p", str(bd.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), "perf")
            bd.wait_ready()
            p = self.drain(db, bd, self.cap(self.sz["b9_cap"]))
            bd_cpu = proc_cpu_s(bd.pid) or 0.0
            pg1 = self.pg.cpu_s()
            if perf:
                PROCS.stop(perf, signal.SIGINT)
            wal_bytes = self.wal_since(db, wal0)
            bd.stop()
            span, done = self.batch_span(db)
            self.drop_db(db)
            if not done or not span:
                self.row(rid, f"throughput, latency 0, max_inflight {mi}", "n/a", "",
                         note="nothing was processed")
                continue
            rate = done / span
            ratio = rate / ceil if ceil else None
            db_us, bd_us = (pg1 - pg0) / done * 1e6, bd_cpu / done * 1e6
            note = f"{done:,} items"
            if c1_us:
                note += f"; DB/item {db_us / c1_us:.2f}x C1's"
            note += f"; WAL {wal_bytes / done:,.0f} B/item"
            c2_us = self.details.get("C2", {}).get("mock_cpu_us_per_req")
            if c2_us:
                # the machine's speed of the moment: the same mock binary's
                # CPU per request under wrk (C2) read 14.7-19.7 us an hour apart
                note += f"; batchd/item {bd_us / c2_us:.2f}x C2's mock CPU/request"
            if p.get("timed_out"):
                note += f"; CAPPED at {self.cap(self.sz['b9_cap']):.0f}s"
            self.details["B9"][str(mi)] = dict(items=done, seconds=span, items_per_s=rate,
                                               ratio=ratio, db_us_per_item=db_us,
                                               batchd_us_per_item=bd_us,
                                               wal_bytes_per_item=wal_bytes / done)
            self.row(rid, f"throughput, latency 0, max_inflight {mi}", rate, "items/s", ceil,
                     "min(C1,C2)", ratio, ">= 0.50", ratio is not None and ratio >= 0.50, note,
                     db_us=db_us, bd_us=bd_us)
            log(f"B9: max_inflight {mi}: {rate:,.0f} items/s, DB {db_us:.1f} us/item, "
                f"batchd {bd_us:.1f} us/item")

    # -------------------------------------------------------------- B2 (+B5 peak)

    def run_b2(self):
        n = self.sz["b2_items"]
        db = self.new_db("b2")
        self.mock.reset(latency_ms=200)
        self.submit_all(db, n, 10_000, "b2-", self.sz["submit_cap"])
        self.prepare_drain(db)
        log(f"B2: {n:,} items, latency 200 ms, max_inflight 1000")
        pg0 = self.pg.cpu_s()
        bd = self.batchd(db, "b2", batchd_keys={"max_inflight": 1000})
        sampler = RssSampler(bd.pid, 0.05)
        sampler.start()
        bd.wait_ready()
        p = self.drain(db, bd, self.cap(self.sz["b2_cap"]))
        pg1, bd_cpu = self.pg.cpu_s(), proc_cpu_s(bd.pid) or 0.0
        mem = proc_mem_kib(bd.pid)
        rss_max = sampler.finish()
        stats = self.mock.get("/_mock/stats")
        bd.stop()
        reqs = self.mock.requests()
        self.mock.reset()
        span, done = self.batch_span(db)
        rate = done / span
        ideal = 1000 / 0.2
        ratio = rate / ideal
        # from 1 s after the first claim (a fifth of the span in --quick's small run)
        off = min(1.0, span / 5)
        with self.pg.connect(db) as c:
            late, late_s = c.execute(
                "WITH t0 AS (SELECT min(started_at) + make_interval(secs => %s) AS t "
                "FROM batchd.batches) "
                "SELECT count(*) FILTER (WHERE i.started_at >= t0.t), "
                "extract(epoch FROM max(i.finished_at) - t0.t) "
                "FROM batchd.items AS i, t0 GROUP BY t0.t", (off,)).fetchone()
        steady = int(late) / float(late_s) if late_s and float(late_s) > 0 else None
        self.details["B2"] = dict(items=done, seconds=span, items_per_s=rate, ideal=ideal,
                                  mock_max_inflight=stats.get("max_inflight"),
                                  timed_out=bool(p.get("timed_out")))
        c1_us = self.details.get("C1", {}).get("db_cpu_us_per_item")
        db_us = (pg1 - pg0) / max(done, 1) * 1e6
        self.details["B2"].update(db_us_per_item=db_us, batchd_us_per_item=bd_cpu / max(done, 1) * 1e6)
        note = f"{done:,} items; mock saw max {stats.get('max_inflight')} in flight"
        if c1_us:
            note += f"; DB/item {db_us / c1_us:.2f}x C1's"
        self.row("B2", "latency-bound: 200 ms, max_inflight 1000", rate, "items/s", ideal,
                 "1000 / 0.2 s", ratio, ">= 0.98", ratio >= 0.98, note,
                 db_us=db_us, bd_us=bd_cpu / max(done, 1) * 1e6)
        if steady:
            self.details["B2"].update(steady_items=int(late), steady_seconds=float(late_s),
                                      steady_items_per_s=steady)
            self.row("B2.steady", f"B2 from {off:g} s after the first claim (no slow start)",
                     steady, "items/s", ideal, "1000 / 0.2 s", steady / ideal, "(shown only)",
                     None, f"{int(late):,} items started in the last {float(late_s):.2f} s")
        loss = self.b2_losses(db, reqs, 1000, 0.2)
        if loss:
            self.details["B2"]["losses_s"] = loss
            self.row("B2.loss", "B2's time beyond n x 200 ms / 1000, by phase", loss["total"], "s",
                     None, "", None, "(shown only)", None,
                     f"to 1st request {loss['before']:.3f}, 1st s {loss['first_s']:.3f} "
                     f"(of it {loss['slow_start']:.3f} before the 1st answer), "
                     f"steady {loss['steady']:.3f}, tail {loss['tail']:.3f}, "
                     f"last flush {loss['after']:.3f}, answers over 200 ms {loss['latency']:.3f}")
        log(f"B2: {rate:,.0f} items/s ({ratio:.3f} of ideal); mock max in flight "
            f"{stats.get('max_inflight')}")
        hwm = mem.get("VmHWM", 0)
        peak = max(hwm, rss_max) / 1024
        self.b5_peak = peak
        self.details["B5_peak"] = dict(vmhwm_kib=hwm, vmrss_max_kib=rss_max,
                                       samples=sampler.samples,
                                       mock_max_inflight=stats.get("max_inflight"))
        self.drop_db(db)

    def b2_losses(self, db, reqs, window, latency):
        """Where B2's time beyond n * latency / window goes, in seconds of
        the whole window, from the mock's own arrival ("t") and answer
        ("done") times: (window - in flight) integrated over each phase, / window.
          before      first claim (batches.started_at) -> the first request;
          first_s     the first second of requests: the slow start's first
                      round trip (slow_start: up to the first answer), the
                      window opening, the first waves of answers;
          steady      from then to the last request's start;
          tail        the last request's start -> the last answer: nothing
                      is left to start while the last answers come back;
          after       the last answer -> batches.finished_at (the last flush);
          latency     answers slower than `latency` (the mock's own time).
        The phases add up to the span minus n * latency / window."""
        done = [r for r in reqs if r.get("done")]
        if not done:
            return None
        with self.pg.connect(db) as c:
            s0, s1 = c.execute("SELECT extract(epoch FROM min(started_at)), "
                               "extract(epoch FROM max(finished_at)) FROM batchd.batches").fetchone()
        s0, s1 = float(s0), float(s1)
        t0 = min(r["t"] for r in done)
        t_end = max(r["done"] for r in done)
        t_last = max(r["t"] for r in done)
        t_ans = min(r["done"] for r in done)
        ev = sorted([(r["t"], 1) for r in done] + [(r["done"], -1) for r in done])
        c1 = min(t_ans, t_last)
        cuts = [t0, c1, max(c1, min(t0 + 1.0, t_last)), t_last, t_end]
        deficit = [0.0] * 4          # [t0,t_ans) [t_ans,t0+1) [t0+1,t_last) [t_last,t_end]

        def add(a, b, inflight):
            for k in range(4):
                lo, hi = max(a, cuts[k]), min(b, cuts[k + 1])
                if hi > lo:
                    deficit[k] += (window - inflight) * (hi - lo)
        inflight, last = 0, t0
        for t, d in ev:
            if t > last:
                add(last, t, inflight)
                last = t
            inflight += d
        over = sum(r["done"] - r["t"] - latency for r in done) / window
        d = [x / window for x in deficit]
        out = dict(before=t0 - s0, slow_start=d[0], first_s=d[0] + d[1], steady=d[2], tail=d[3],
                   after=s1 - t_end, latency=over)
        out["total"] = (s1 - s0) - len(done) * latency / window
        return out

    # -------------------------------------------------------------- B3

    def run_b3(self):
        k = self.sz["b3_batches"]
        db = self.new_db("b3")
        self.mock.reset()
        bd = self.batchd(db, "b3").wait_ready()
        time.sleep(1.0)  # idle: the start-up claim found nothing
        commits = {}
        log(f"B3: {k} single-item batches, 20 ms apart, to an idle batchd")
        with self.pg.connect(db) as c:
            c.execute("SELECT 1")
            start = time.monotonic()
            for i in range(k):
                due = start + i * 0.020
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)
                ident = f"b3-{i}"
                c.execute("SELECT batchd.submit_batch(%s, %s, %s::jsonb)",
                          (TENANT, ROUTE, f'[{{"id":"{ident}"}}]'))
                commits[ident] = time.time()  # CLOCK_REALTIME, right after the commit returned
        wait_until(lambda: self.mock.get("/_mock/stats")["requests"] >= k, 30,
                   desc="the mock to receive every B3 request")
        reqs = self.mock.requests()
        bd.stop()
        lat = sorted((r["t"] - commits[r["id"]]) * 1000 for r in reqs if r["id"] in commits)
        if len(lat) < k:
            raise BenchError(f"B3: the mock saw {len(lat)} of {k} requests")
        p50, p95, p99 = (percentile(lat, q) for q in (50, 95, 99))
        self.details["B3"] = dict(n=len(lat), p50_ms=p50, p95_ms=p95, p99_ms=p99,
                                  min_ms=lat[0], max_ms=lat[-1])
        for q, v, tgt in (("p50", p50, 2.0), ("p95", p95, None), ("p99", p99, 6.0)):
            self.row(f"B3.{q}", f"pickup latency {q}: commit -> provider", v, "ms", None, "", None,
                     f"<= {tgt:g} ms" if tgt else "", (v <= tgt) if tgt else None,
                     f"{len(lat)} submits, min {lat[0]:.2f} max {lat[-1]:.2f} ms")
        log(f"B3: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms")
        self.mock.reset()
        self.drop_db(db)

    # -------------------------------------------------------------- B4

    def run_b4(self):
        n, chunk = self.sz["b4_items"], self.sz["b4_chunk"]
        arrays = self.chunks_json(n, chunk, "b4-")
        nchunks = len(arrays)
        # (1) the ceiling: COPY of the same rows (and the batch row, FK checked)
        db = self.new_db("b4copy")
        with self.pg.connect(db) as c:
            ro = c.execute("SELECT reloptions FROM pg_class WHERE oid = 'batchd.items'::regclass"
                           ).fetchone()[0] or []
            c.execute("CREATE SCHEMA ingest")
            c.execute("CREATE TABLE ingest.items (LIKE batchd.items INCLUDING ALL)"
                      + (f" WITH ({', '.join(ro)})" if ro else ""))
            c.execute("ALTER TABLE ingest.items ADD FOREIGN KEY (batch_id) "
                      "REFERENCES batchd.batches (id) ON DELETE CASCADE")
            uuids = [r[0] for r in c.execute(
                "SELECT gen_random_uuid()::text FROM generate_series(1, %s)", (nchunks,))]
        copy_data = []
        for k in range(nchunks):
            lo = k * chunk
            hi = min(n, lo + chunk)
            copy_data.append("".join(f'{uuids[k]}\t{i - lo}\t{ROUTE}\t5\t{{"id": "b4-{i}"}}\t3\n'
                                     for i in range(lo, hi)).encode())
        log(f"B4: COPY {n:,} rows in {nchunks} chunks (one transaction each, with its batch row)")
        with self.pg.connect(db) as c:
            # warm-up (untimed): a 10-row COPY with its batch row
            with c.transaction():
                wid = c.execute("INSERT INTO batchd.batches (tenant, route, total) VALUES (%s, %s, 10) "
                                "RETURNING id::text", (TENANT, ROUTE)).fetchone()[0]
                with c.cursor().copy("COPY ingest.items (batch_id, seq, route, priority, payload, "
                                     "max_attempts) FROM STDIN") as cp:
                    cp.write("".join(f'{wid}\t{i}\t{ROUTE}\t5\t{{"id": "w-{i}"}}\t3\n'
                                     for i in range(10)).encode())
            t = time.monotonic()
            for k, data in enumerate(copy_data):
                with c.transaction():
                    c.execute("INSERT INTO batchd.batches (id, tenant, route, total) "
                              "VALUES (%s, %s, %s, %s)", (uuids[k], TENANT, ROUTE, chunk))
                    with c.cursor().copy("COPY ingest.items (batch_id, seq, route, priority, "
                                         "payload, max_attempts) FROM STDIN") as cp:
                        cp.write(data)
            copy_secs = time.monotonic() - t
            got = c.execute("SELECT count(*) FROM ingest.items").fetchone()[0] - 10
        if got != n:
            raise BenchError(f"B4: COPY stored {got} of {n} rows")
        copy_rate = n / copy_secs
        del copy_data
        self.drop_db(db)
        log(f"B4: COPY {copy_rate:,.0f} rows/s")
        # (2) batchd.submit_batch()
        db = self.new_db("b4sql")
        warm = "[" + ",".join(f'{{"id":"w-{i}"}}' for i in range(10)) + "]"
        with self.pg.connect(db) as c:
            c.execute("SELECT batchd.submit_batch(%s, %s, %s::jsonb)", (TENANT, ROUTE, warm))
            t = time.monotonic()
            for arr in arrays:
                c.execute("SELECT batchd.submit_batch(%s, %s, %s::jsonb)", (TENANT, ROUTE, arr))
            sql_secs = time.monotonic() - t
            got = c.execute("SELECT count(*) FROM batchd.items").fetchone()[0] - 10
        if got != n:
            raise BenchError(f"B4: submit_batch stored {got} of {n} items")
        sql_rate = n / sql_secs
        self.drop_db(db)
        log(f"B4: submit_batch {sql_rate:,.0f} items/s")
        self.row("B4.sql", f"ingest: batchd.submit_batch(), {chunk:,}/call", sql_rate, "items/s",
                 copy_rate, "COPY same rows", sql_rate / copy_rate, ">= 0.50",
                 sql_rate / copy_rate >= 0.50, f"{n:,} items")
        # (3) POST /v1/batches, through a running batchd that holds one item
        db = self.new_db("b4rest")
        rest = dict(error=None)
        bd = None
        try:
            with self.pg.connect(db) as c:
                tok = c.execute("SELECT batchd.create_token(%s)", (TENANT,)).fetchone()[0]
            bd = self.batchd(db, "b4", batchd_keys={"max_inflight": 1, "shutdown_timeout": "1s"},
                             provider={"url": f"{self.mock.base}/item/{{id}}?mode=hang",
                                       "timeout": "10m"}).wait_ready()
            hc = http.client.HTTPConnection("127.0.0.1", bd.port, timeout=120)
            hdrs = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
            bodies = [f'{{"route":"{ROUTE}","items":{arr}}}'.encode() for arr in arrays]
            # warm-up (untimed): a 10-item batch through the same path
            hc.request("POST", "/v1/batches", body=f'{{"route":"{ROUTE}","items":{warm}}}'.encode(),
                       headers=hdrs)
            r = hc.getresponse()
            answer = r.read()
            if r.status not in (200, 201):
                raise BenchError(f"POST /v1/batches answered {r.status}: {answer[:300]!r}")
            t = time.monotonic()
            for body in bodies:
                hc.request("POST", "/v1/batches", body=body, headers=hdrs)
                r = hc.getresponse()
                answer = r.read()
                if r.status not in (200, 201):
                    raise BenchError(f"POST /v1/batches answered {r.status}: {answer[:300]!r}")
            rest_secs = time.monotonic() - t
            hc.close()
            with self.pg.connect(db) as c:
                got = c.execute("SELECT count(*) FROM batchd.items").fetchone()[0] - 10
            if got != n:
                raise BenchError(f"POST stored {got} of {n} items")
            rest_rate = n / rest_secs
            self.row("B4.rest", f"ingest: POST /v1/batches, {chunk:,}/request", rest_rate,
                     "items/s", copy_rate, "COPY same rows", rest_rate / copy_rate, ">= 0.50",
                     rest_rate / copy_rate >= 0.50, f"{n:,} items, one keep-alive connection")
            rest.update(items_per_s=rest_rate, seconds=rest_secs)
            log(f"B4: POST /v1/batches {rest_rate:,.0f} items/s")
        except (BenchError, OSError, http.client.HTTPException) as e:
            rest["error"] = str(e)
            self.row("B4.rest", f"ingest: POST /v1/batches, {chunk:,}/request", "n/a", "",
                     copy_rate, "COPY same rows", None, ">= 0.50", None, f"n/a: {e}"[:200])
            log(f"B4: POST /v1/batches n/a: {e}")
        finally:
            if bd:
                bd.stop()
            self.drop_db(db)
        self.details["B4"] = dict(items=n, chunk=chunk, copy_items_per_s=copy_rate,
                                  copy_seconds=copy_secs, sql_items_per_s=sql_rate,
                                  sql_seconds=sql_secs, rest=rest)

    # -------------------------------------------------------------- B6 (+B5 growth)

    def run_b6(self):
        n, chunk = self.sz["b6_items"], self.sz["b6_chunk"]
        tenth = n // 10
        db = self.new_db("b6")
        self.mock.reset()
        secs = self.submit_all(db, n, chunk, "b6-", self.sz["submit_cap"])
        log(f"B6: submitted {n:,} items in {secs:.1f}s; draining with max_inflight 256")
        self.prepare_drain(db)
        bd = self.batchd(db, "b6", batchd_keys={"max_inflight": 256})
        bd.wait_ready()
        marks = {}
        series = []  # (wall clock, machine busy CPU s, our CPU s), about once a second

        def on_progress(p):
            if "rss_10" not in marks and p["done"] >= tenth:
                marks["rss_10"] = proc_mem_kib(bd.pid).get("VmRSS")
                marks["done_10"] = p["done"]
            if not series or time.time() - series[-1][0] >= 1.0:
                series.append((time.time(), machine_cpu()[0], self.our_cpu() + (proc_cpu_s(bd.pid) or 0)))
        b6_cap = self.cap(self.sz["b6_cap"], reserve=10)
        p = self.drain(db, bd, b6_cap, on_progress, interval=0.25)
        time.sleep(0.5)  # idle again: every completion flushed
        marks["rss_end"] = proc_mem_kib(bd.pid).get("VmRSS")
        marks["hwm_end"] = proc_mem_kib(bd.pid).get("VmHWM")
        bd.stop()
        with self.pg.connect(db) as c:
            first_claim = c.execute("SELECT min(started_at) FROM batchd.batches").fetchone()[0]
            done = c.execute("SELECT count(*) FROM batchd.items WHERE finished_at IS NOT NULL "
                             "AND status IN ('succeeded', 'failed')").fetchone()[0]
            if done < 2 * tenth:
                raise BenchError(f"B6: only {done} items finished")
            # the finish times of the tenth-th, (done - tenth)-th and last item
            r = c.execute(
                "SELECT (array_agg(finished_at ORDER BY finished_at))[%s], "
                "(array_agg(finished_at ORDER BY finished_at))[%s], max(finished_at) "
                "FROM batchd.items WHERE finished_at IS NOT NULL AND status IN ('succeeded', 'failed')",
                (tenth, done - tenth)).fetchone()
            deciles = [float(x.timestamp()) for x in c.execute(
                "SELECT percentile_disc(ARRAY[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0]) "
                "WITHIN GROUP (ORDER BY finished_at) FROM batchd.items WHERE finished_at IS NOT "
                "NULL AND status IN ('succeeded', 'failed')").fetchone()[0]]
            sizes = c.execute("SELECT pg_total_relation_size('batchd.items'), "
                              "pg_relation_size('batchd.items'), "
                              "pg_indexes_size('batchd.items')").fetchone()
        t_first = (r[0] - first_claim).total_seconds()
        t_last = (r[2] - r[1]).total_seconds()
        first_rate, last_rate = tenth / t_first, tenth / t_last
        ratio = last_rate / first_rate
        capped = bool(p.get("timed_out"))
        note = f"{done:,} items, {tenth:,} each end"
        if capped:
            note += f"; CAPPED at {b6_cap:.0f}s by the run's budget (last = last {tenth:,} done)"
        # per tenth of the run: items/s, and the CPU other processes used meanwhile
        edges = [first_claim.timestamp()] + deciles
        per_tenth = []
        for k in range(10):
            a, b = edges[k], edges[k + 1]
            pts = [x for x in series if a <= x[0] <= b]
            other = None
            if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
                dt = pts[-1][0] - pts[0][0]
                other = max(0.0, ((pts[-1][1] - pts[0][1]) - (pts[-1][2] - pts[0][2])) / dt)
            per_tenth.append(dict(items_per_s=round(done / 10 / max(b - a, 1e-6)),
                                  other_cpus=None if other is None else round(other, 2)))
        log("B6: per tenth (items/s @ other CPUs): " + ", ".join(
            f"{x['items_per_s']}@{x['other_cpus']}" for x in per_tenth))
        self.details["B6"] = dict(items=done, tenth=tenth, first_items_per_s=first_rate,
                                  per_tenth=per_tenth,
                                  last_items_per_s=last_rate, ratio=ratio, timed_out=capped,
                                  table_bytes=sizes[1], indexes_bytes=sizes[2],
                                  total_bytes=sizes[0])
        self.row("B6", f"sustained: last {tenth:,} vs first {tenth:,}", last_rate, "items/s",
                 first_rate, f"first {tenth:,}", ratio, ">= 0.80", ratio >= 0.80, note)
        # Two 10-s windows swing with whatever runs in them (an autovacuum pass
        # of the items table takes ~10 s here): a least-squares line through all
        # ten tenths' rates shows whether the drain really slows down. Shown
        # beside B6, not instead of it.
        ys = [x["items_per_s"] for x in per_tenth]
        xm, ym = 4.5, sum(ys) / 10
        slope = sum((k - xm) * (y - ym) for k, y in enumerate(ys)) / sum((k - xm) ** 2
                                                                           for k in range(10))
        fit0, fit9 = ym - slope * xm, ym + slope * (9 - xm)
        trend = fit9 / fit0 if fit0 > 0 else None
        self.row("B6.trend", "sustained: line fitted through all ten tenths", fit9,
                 "items/s", fit0, "fitted first tenth", trend, "(shown only)", None,
                 "least squares over the tenths' items/s")
        self.details["B6"]["trend_ratio"] = trend
        log(f"B6: first {first_rate:,.0f} items/s, last {last_rate:,.0f} items/s ({ratio:.2f}); "
            f"items heap {sizes[1] / 2**20:.0f} MiB, indexes {sizes[2] / 2**20:.0f} MiB")
        self.b5_growth = marks
        self.details["B5_growth"] = dict(marks, tenth=tenth, items=done)
        self.drop_db(db)

    # -------------------------------------------------------------- B5 (from B2 and B6)

    def run_b5(self):
        peak = getattr(self, "b5_peak", None)
        if peak is None:
            raise BenchError("B5 needs B2")
        self.row("B5.peak", "peak RSS of batchd, 1000 in flight (B2)", peak, "MiB", 32.0,
                 "target 32 MiB", peak / 32.0, "<= 32 MiB", peak <= 32.0,
                 f"VmHWM {self.details['B5_peak']['vmhwm_kib'] / 1024:.1f} MiB")
        m = getattr(self, "b5_growth", None)
        if not m or not m.get("rss_10") or not m.get("rss_end"):
            raise BenchError("B5 needs B6 (RSS at 10% and at the end)")
        a, b = m["rss_10"] / 1024, m["rss_end"] / 1024
        growth = b - a
        tol = max(2.0, 0.05 * a)
        items = self.details["B5_growth"]["items"]
        self.row("B5.growth", f"RSS after {items:,} vs after {m.get('done_10', 0):,} (B6)", b,
                 "MiB", a, f"RSS after {m.get('done_10', 0):,}", b / a, f"growth <= {tol:.1f} MiB",
                 growth <= tol, f"growth {growth:+.2f} MiB")
        log(f"B5: peak {peak:.1f} MiB; RSS {a:.1f} -> {b:.1f} MiB")

    # -------------------------------------------------------------- B7

    def run_b7(self):
        rate, burst, secs = 500, 10, self.sz["b7_secs"]
        n = rate * (secs + 2) + burst + 500
        db = self.new_db("b7")
        self.mock.reset()
        self.submit_all(db, n, 10_000, "b7-", self.sz["submit_cap"])
        log(f"B7: provider rate {rate}/s burst {burst}, {secs}s measured after the first second")
        bd = self.batchd(db, "b7", provider={"rate": f"{rate}/s", "burst": burst}).wait_ready()
        # run until the first second and the measured window are over (bounded)
        t_first = wait_until(lambda: (self.mock.get("/_mock/stats")["requests"] > 0) and time.time(),
                             30, desc="the first B7 request")
        end = time.monotonic() + 1 + secs + 0.5
        while time.monotonic() < end:
            bd.alive()
            time.sleep(0.2)
        bd.stop()
        ts = sorted(r["t"] for r in self.mock.requests())
        self.mock.reset()
        self.drop_db(db)
        t0 = ts[0]
        inwin = [t for t in ts if t0 + 1 <= t < t0 + 1 + secs]
        achieved = len(inwin) / secs
        frac = achieved / rate
        # largest number of arrivals in any one-second window [t, t + 1s)
        best, best_at, j = 0, 0.0, 0
        for i in range(len(ts)):
            while ts[i] - ts[j] >= 1.0:
                j += 1
            if i - j + 1 > best:
                best, best_at = i - j + 1, ts[j] - t0
        steady, j = 0, 0
        late = [t for t in ts if t >= t0 + 1]
        for i in range(len(late)):
            while late[i] - late[j] >= 1.0:
                j += 1
            steady = max(steady, i - j + 1)
        self.details["B7"] = dict(rate=rate, burst=burst, seconds=secs, requests=len(ts),
                                  achieved_per_s=achieved, fraction=frac, max_window_1s=best,
                                  max_window_starts_s=best_at, max_window_after_first_s=steady,
                                  first_arrival_delay_s=t0 - t_first)
        # compared at the table's precision: an arrival whose jitter carries it
        # across either edge of the window moves the count by 1 in 10,000
        self.row("B7.rate", f"rate accuracy: {rate}/s for {secs}s", achieved, "req/s", rate,
                 f"rate {rate}/s", frac, "0.98 .. 1.00", 0.98 <= round(frac, 3) <= 1.0,
                 f"{len(inwin):,} requests in the window")
        self.row("B7.window", "largest sliding 1-s window", best, "requests", rate + burst,
                 f"rate + burst = {rate + burst}", best / (rate + burst), f"<= {rate + burst}",
                 best <= rate + burst,
                 f"at t0+{best_at:.2f}s; after the first second max {steady}")
        log(f"B7: {achieved:.1f} req/s ({frac:.4f}); max 1-s window {best}")

    # -------------------------------------------------------------- run

    def run(self, selected):
        order = [f for f in ["C1", "C2", "B1", "B9", "B3", "B4", "B7", "B2", "B6", "B5"]
                 if f in selected]
        if "B8" in selected and "B1" not in order:
            order.insert(0, "B1")
        self.c1 = self.c2 = None
        for f in order:
            t = time.monotonic()
            m0, own0 = machine_cpu()[0], self.our_cpu()
            try:
                if self.args.pg_stats:
                    self.pg_stats_reset()
                getattr(self, f"run_{f.lower()}")()
                if self.args.pg_stats:
                    self.pg_stats_dump(f)
            except Exception as e:  # one figure failing must not hide the others
                self.errors[f] = f"{type(e).__name__}: {e}"
                log(f"{f} FAILED: {self.errors[f]}")
            wall = time.monotonic() - t
            other = (machine_cpu()[0] - m0) - (self.our_cpu() - own0)
            self.details.setdefault("seconds", {})[f] = round(wall, 1)
            self.noise[f] = max(0.0, other / wall) if wall > 0 else 0.0
            if self.noise[f] > 0.25 and wall >= 1.0:
                log(f"{f}: other processes used {self.noise[f]:.2f} CPUs on average: this "
                    "figure is disturbed")

    def our_cpu(self):
        """CPU seconds of everything we started: this script and its waited-for children
        (batchd, pgbench, wrk), the cluster, and the mock provider."""
        total = own_cpu()
        try:
            total += self.pg.cpu_s()
        except (OSError, TypeError, ValueError):
            pass
        total += self.mock.cpu_s() or 0.0
        return total

    def wait_quiet(self, limit):
        """Wait (at most limit seconds) until other processes use < 0.2 CPUs over 2 s."""
        deadline = time.monotonic() + limit
        while True:
            m0, o0 = machine_cpu()[0], self.our_cpu()
            time.sleep(2.0)
            other = ((machine_cpu()[0] - m0) - (self.our_cpu() - o0)) / 2.0
            if other < 0.2:
                log(f"machine quiet (other processes: {other:.2f} CPUs)")
                return other
            if time.monotonic() >= deadline:
                log(f"machine still busy after {limit:.0f}s (other processes: {other:.2f} CPUs, "
                    f"load average {loadavg():.1f}): figures will be disturbed")
                return other
            log(f"waiting for a quiet machine (other processes: {other:.2f} CPUs)")

    def pg_stats_reset(self):
        with self.pg.connect("bench_tmpl") as c:
            c.execute("SELECT pg_stat_statements_reset()")

    def pg_stats_dump(self, fig):
        with self.pg.connect("bench_tmpl") as c:
            rows = c.execute(
                "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), "
                "rows, toplevel, round(total_plan_time::numeric, 1), regexp_replace(left(query, 160), '\\s+', ' ', 'g') "
                "FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25").fetchall()
        log(f"{fig}: pg_stat_statements, top by total time (ms):")
        for r in rows:
            log(f"  calls {r[0]:>7}  total {r[1]:>10}  mean {r[2]:>9}  rows {r[3]:>8}  "
                f"{'top' if r[4] else 'nested'}  plan {r[5]:>8}  {r[6]}")
        self.details.setdefault("pg_stats", {})[fig] = [list(map(str, r)) for r in rows]

    def rows_for(self, selected):
        want = []
        for rid in ROW_IDS:
            fig = rid.split(".")[0]
            if fig in selected:
                want.append(rid)
        return want

    def table(self, selected):
        want = self.rows_for(selected)
        head = ["ID", "figure", "measured", "ceiling / reference", "ratio", "target", "result",
                "DB us/item", "batchd us/item", "other CPU", "note"]
        lines = []
        for rid in want:
            r = self.rows.get(rid)
            if r is None:
                fig = rid.split(".")[0]
                src = {"B8": "B1", "B5": "B2/B6"}.get(fig, fig)
                err = self.errors.get(fig) or self.errors.get(src) or "not measured"
                if fig == "B5" and not err:
                    err = "not measured"
                lines.append([rid, "ERROR", err[:90], "", "", "", "ERROR", "", "", "", ""])
                continue
            ceil = ""
            if r["ceiling"] is not None:
                ceil = f"{fmt_num(r['ceiling'], r['unit'])} ({r['ceiling_desc']})"
            elif r["ceiling_desc"]:
                ceil = r["ceiling_desc"]
            fig = {"B8": "B1"}.get(rid.split(".")[0], rid.split(".")[0])
            if rid == "B5.peak":
                fig = "B2"
            elif rid == "B5.growth":
                fig = "B6"
            noise = self.noise.get(fig)
            lines.append([rid, r["figure"], fmt_num(r["value"], r["unit"]), ceil,
                          "" if r["ratio"] is None else f"{r['ratio']:.3f}", r["target"],
                          r["verdict"],
                          "" if r.get("db_us") is None else f"{r['db_us']:.1f}",
                          "" if r.get("bd_us") is None else f"{r['bd_us']:.1f}",
                          "" if noise is None else f"{noise:.2f}", r["note"]])
        widths = [max(len(str(x[i])) for x in lines + [head]) for i in range(len(head))]
        out = []
        out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        out.append("  ".join("-" * w for w in widths))
        for ln in lines:
            out.append("  ".join(str(x).ljust(w) for x, w in zip(ln, widths)).rstrip())
        return "\n".join(out)


def build_bench(bdir):
    """configure (CFLAGS=-O2 -g, no sanitizers) and make batchd and the mock in build/bench."""
    os.makedirs(bdir, exist_ok=True)
    if not os.path.exists(os.path.join(REPO, "configure")):
        log("autoreconf -fi")
        subprocess.run(["autoreconf", "-fi"], cwd=REPO, check=True, timeout=600)
    if not os.path.exists(os.path.join(bdir, "Makefile")):
        log("configuring build/bench (CFLAGS='-O2 -g', no sanitizers)")
        subprocess.run([os.path.join(REPO, "configure"), "-q", "CFLAGS=-O2 -g"], cwd=bdir,
                       check=True, timeout=600)
    log("make batchd tests/mock/mock_provider (build/bench)")
    r = subprocess.run(["make", f"-j{os.cpu_count() or 2}", "batchd", "tests/mock/mock_provider"],
                       cwd=bdir, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise BenchError(f"building build/bench failed:\n{tail(r.stdout + r.stderr, 40)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: small sizes, every figure computed, no target judged")
    ap.add_argument("--only", default="",
                    help="comma-separated figures (C1,C2,B1..B8); ceilings they need run too")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--batchd", help="batchd binary (default $BATCHD_BIN, else build/bench)")
    ap.add_argument("--mock", help="mock provider binary (default $MOCK_PROVIDER_BIN)")
    ap.add_argument("--no-build", action="store_true", help="never build build/bench")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, cluster)")
    ap.add_argument("--perf", metavar="PATH",
                    help="perf record -g batchd during B1 into PATH, and during each B9 drain "
                         "into PATH.b9-<max_inflight> (needs linux-perf)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="first wait (at most SECONDS) until other processes use < 0.2 CPUs")
    ap.add_argument("--pg-stats", action="store_true",
                    help="diagnosis: pg_stat_statements (track=all), top statements per figure")
    ap.add_argument("--synchronous-commit", choices=["on", "off"], default="on",
                    help="the cluster's synchronous_commit (default on, PostgreSQL's default; "
                         "off gives the figures of the faster, less durable mode beside them)")
    args = ap.parse_args(argv)
    PG_SETTINGS["synchronous_commit"] = args.synchronous_commit

    selected = set(FIGURES)
    if args.only:
        asked = [x.strip().upper() for x in args.only.split(",") if x.strip()]
        bad = [x for x in asked if x not in FIGURES]
        if bad:
            ap.error(f"unknown figure(s) {', '.join(bad)}; known: {', '.join(FIGURES)}")
        selected = set(asked)
        changed = True
        while changed:
            changed = False
            for f in list(selected):
                for dep in NEEDS.get(f, []):
                    if dep not in selected:
                        selected.add(dep)
                        changed = True
        extra = selected - set(asked)
        if extra:
            log(f"also running {', '.join(sorted(extra))} (needed by {', '.join(asked)})")

    b = Bench(args)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        b.binaries()
        b.setup()
        if args.wait_quiet > 0:
            b.wait_quiet(args.wait_quiet)
        b.load_before = loadavg()
        b.t_start = time.monotonic()  # the budget counts from here
        b.run(selected)
    except BenchError as e:
        log(f"setup failed: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as e:
        log(f"setup failed: {type(e).__name__}: {e}")
        return 2
    finally:
        b.teardown()  # every path: our processes by PID, the cluster, the temp dirs
    total = time.monotonic() - T0
    settings = ", ".join(f"{k}={v}" for k, v in PG_SETTINGS.items())
    print(f"batchd benchmark ({b.mode}{', SANITIZED batchd' if b.sanitized else ''}) - "
          f"{os.cpu_count()} CPUs, PostgreSQL {getattr(b, 'pg_version', '?')}, "
          f"{started:%Y-%m-%d %H:%M} UTC, {total:.0f} s")
    print(f"cluster (C1 and B*): {settings}")
    print(b.table(selected))
    if b.mode == "quick":
        print("quick mode: small sizes, targets not judged")
    sys.stdout.flush()
    if args.json:
        doc = dict(mode=b.mode, started=started.isoformat(), seconds=round(total, 1),
                   cpus=os.cpu_count(), postgres=getattr(b, "pg_version", None),
                   pg_settings=PG_SETTINGS, batchd=b.batchd_bin, sanitized=b.sanitized,
                   sizes=b.sz, selected=sorted(selected),
                   rows=[b.rows[r] for r in b.rows_for(selected) if r in b.rows],
                   errors=b.errors, details=b.details)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
    return 1 if b.errors else 0


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        PROCS.stop_all()
    sys.exit(rc)
