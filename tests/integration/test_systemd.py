"""batchd as a systemd service: the notify protocol (READY, WATCHDOG,
RELOADING/READY, STOPPING), watchdog pings withheld while the loop is stalled
or the database is away past watchdog_db_grace, reload of provider limits on
SIGHUP measured at the provider, Prometheus metrics checked by promtool, and
structured logs with no secret in them.

The test plays systemd: it binds a datagram socket, passes it as
NOTIFY_SOCKET and reads what batchd sends."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import types

import pytest

from conftest import batch, check_consistency, http_get, submit, wait_batch_done, wait_until

ROUTE = "r"


class Notify:
    """A NOTIFY_SOCKET listener collecting (monotonic time, message) pairs."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.msgs = []
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.msgs.append((time.monotonic(), data.decode()))

    def close(self):
        self.stop = True
        self.t.join(2)
        self.sock.close()

    def lines(self, since=0.0):
        return [(t, m) for t, m in self.msgs if t >= since]

    def count(self, key, since=0.0, until=None):
        return sum(1 for t, m in self.msgs
                   if t >= since and (until is None or t <= until) and key in m.split("\n"))

    def first(self, prefix, since=0.0):
        for t, m in self.msgs:
            if t >= since and any(l.startswith(prefix) for l in m.split("\n")):
                return t, m
        return None


@pytest.fixture
def notify(tmp_path):
    n = Notify(os.path.join(str(tmp_path), "notify.sock"))
    yield n
    n.close()


def provider(mock, **kw):
    p = {"url": mock.url("/item/{id}"), "timeout": "5s", "retries": "0",
         "breaker_failures": "100000"}
    p.update(kw)
    return p


def sd_env(notify, watchdog_usec=1000000):
    # no WATCHDOG_PID: sd_watchdog_enabled() then trusts WATCHDOG_USEC
    return {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(watchdog_usec)}


def test_notify_protocol(db, mock, batchd_factory, notify):
    d = batchd_factory(db=db, providers={"mock": provider(mock)}, routes={ROUTE: "mock"},
                       env=sd_env(notify), heartbeat_interval="1s", lease_timeout="5s")
    # READY=1 came, and only once the listener answers
    wait_until(lambda: notify.first("READY=1") is not None, 10, desc="READY=1")
    t_ready, msg = notify.first("READY=1")
    assert "STATUS=" in msg
    assert http_get(f"http://127.0.0.1:{d.port}/readyz")[0] == 200

    # WATCHDOG=1 at half of WATCHDOG_USEC (1 s): about 2 per second
    t0 = time.monotonic()
    time.sleep(2.2)
    n = notify.count("WATCHDOG=1", since=t0)
    assert 3 <= n <= 6, notify.lines(t0)

    # STATUS= with live figures every few seconds
    wait_until(lambda: any("in flight" in m for _, m in notify.lines()), 10, desc="STATUS figures")

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1
    t1 = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: notify.first("READY=1", since=t1) is not None, 5, desc="READY after reload")
    tr, rmsg = notify.first("RELOADING=1", since=t1)
    assert "MONOTONIC_USEC=" in rmsg
    usec = int([l for l in rmsg.split("\n") if l.startswith("MONOTONIC_USEC=")][0].split("=")[1])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
    assert tr <= notify.first("READY=1", since=t1)[0]

    # stalled loop (SIGSTOP): no WATCHDOG=1 at all; pings come back after SIGCONT
    d.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.3)
    t2 = time.monotonic()
    time.sleep(1.5)
    t3 = time.monotonic()
    d.proc.send_signal(signal.SIGCONT)
    assert notify.count("WATCHDOG=1", since=t2, until=t3) == 0
    wait_until(lambda: notify.count("WATCHDOG=1", since=t3) >= 2, 5, desc="WATCHDOG after SIGCONT")

    # SIGTERM: STOPPING=1, exit 0 (the factory checks the status)
    t4 = time.monotonic()
    assert d.stop() == 0
    assert notify.first("STOPPING=1", since=t4) is not None


class Proxy:
    """A TCP forwarder to PostgreSQL that the test can cut and restore, to
    take the database away from one batchd without touching the cluster."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.up = True
        self.conns = []
        self.stop = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _pipe(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.up:
                c.close()
                continue
            try:
                s = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, s]
            threading.Thread(target=self._pipe, args=(c, s), daemon=True).start()
            threading.Thread(target=self._pipe, args=(s, c), daemon=True).start()

    def cut(self):
        self.up = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def restore(self):
        self.up = True

    def close(self):
        self.stop = True
        self.cut()
        self.lsock.close()


def test_watchdog_withheld_while_database_away(db, mock, batchd_factory, notify):
    parts = dict(kv.split("=", 1) for kv in db.conninfo.split())
    proxy = Proxy(parts["host"], int(parts["port"]))
    try:
        parts.update(host="127.0.0.1", port=str(proxy.port))
        via_proxy = types.SimpleNamespace(conninfo=" ".join(f"{k}={v}" for k, v in parts.items()))
        d = batchd_factory(db=via_proxy, providers={"mock": provider(mock)},
                           routes={ROUTE: "mock"}, env=sd_env(notify, 400000),
                           watchdog_db_grace="1s")
        wait_until(lambda: notify.first("READY=1") is not None, 10, desc="READY=1")
        t0 = time.monotonic()
        time.sleep(0.6)
        assert notify.count("WATCHDOG=1", since=t0) >= 2
        proxy.cut()
        wait_until(lambda: http_get(f"http://127.0.0.1:{d.port}/readyz")[0] == 503, 10,
                   desc="readyz 503 with the database away")
        # within the grace pings go on; after it they stop
        time.sleep(1.5)
        t1 = time.monotonic()
        time.sleep(1.5)
        assert notify.count("WATCHDOG=1", since=t1) == 0, notify.lines(t1)
        assert "withholding watchdog pings" in d.log()
        proxy.restore()
        wait_until(lambda: http_get(f"http://127.0.0.1:{d.port}/readyz")[0] == 200, 15,
                   desc="readyz 200 after the database is back")
        t2 = time.monotonic()
        wait_until(lambda: notify.count("WATCHDOG=1", since=t2) >= 2, 5, desc="pings again")
        assert d.stop() == 0
    finally:
        proxy.close()


def arrivals(mock):
    return sorted(r["t"] for r in mock.all_requests())


def test_reload_changes_rate_within_a_second(db, conn, mock, batchd_factory, tmp_path):
    d = batchd_factory(db=db, providers={"mock": provider(mock, rate="5/s", burst="1")},
                       routes={ROUTE: "mock"}, max_inflight="50")
    bid = submit(conn, "acme", ROUTE, [{"id": i} for i in range(400)])
    time.sleep(2.0)
    before = arrivals(mock)
    # 5/s for ~2 s
    assert len(before) <= 1 + 5 * 2.5, len(before)
    with open(d.config_path) as f:
        text = f.read()
    with open(d.config_path, "w") as f:
        f.write(text.replace("rate = 5/s", "rate = 100/s"))
    t_hup = time.time()
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in d.log(), 5, desc="reload logged")
    wait_batch_done(conn, bid, timeout=30)
    after = [t for t in arrivals(mock) if t >= t_hup + 1.0]
    # the new rate is in force a second after the reload: well above 5/s
    span = after[-1] - after[0] if len(after) > 1 else 0
    assert len(after) > 50 and span > 0 and len(after) / span > 40, (len(after), span)
    # and never above it
    for i in range(len(after)):
        j = i
        while j < len(after) and after[j] - after[i] < 1.0:
            j += 1
        assert j - i <= 100 + 2, (j - i)
    assert check_consistency(conn) == []


def test_reload_with_bad_config_keeps_running(db, conn, mock, batchd_factory):
    d = batchd_factory(db=db, providers={"mock": provider(mock)}, routes={ROUTE: "mock"})
    with open(d.config_path, "a") as f:
        f.write("\nnot_a_key = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed, keeping the running configuration" in d.log(), 5,
               desc="reload failure logged")
    assert "unknown key 'not_a_key'" in d.log()
    bid = submit(conn, "acme", ROUTE, [{"id": i} for i in range(20)])
    assert wait_batch_done(conn, bid)["status"] == "completed"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus)")
def test_metrics_pass_promtool_mid_batch(db, conn, mock, batchd_factory, tmp_path):
    d = batchd_factory(db=db, providers={"mock": provider(mock, url=mock.url(
        "/item/{id}?latency_ms=20"))}, routes={ROUTE: "mock"}, max_inflight="20")
    bid = submit(conn, "acme", ROUTE, [{"id": i} for i in range(600)])
    wait_until(lambda: batch(conn, bid)["succeeded"] > 50, 20, desc="batch under way")
    code, body = http_get(f"http://127.0.0.1:{d.port}/metrics")
    assert code == 200
    text = body.decode() if isinstance(body, bytes) else body
    p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode() + "\n" + text[:3000]
    for name in ("batchd_items_total", "batchd_provider_requests_total",
                 "batchd_provider_request_duration_seconds_bucket",
                 "batchd_provider_retries_total", "batchd_breaker_state",
                 "batchd_breaker_transitions_total", "batchd_ratelimit_wait_seconds_total",
                 "batchd_inflight", "batchd_claimed_total", "batchd_items_recovered_total",
                 "batchd_completions_fenced_total", "batchd_db_up",
                 "batchd_db_query_duration_seconds_bucket", "batchd_loop_lag_seconds_bucket",
                 "batchd_loop_lag_max_seconds", "batchd_breaker_in_state",
                 "batchd_process_resident_memory_bytes",
                 "batchd_process_open_fds", "batchd_process_start_time_seconds"):
        assert f"\n{name}" in text, name
    assert 'batchd_provider_requests_total{provider="mock",code="200"}' in text
    assert "batchd_db_up 1" in text
    wait_batch_done(conn, bid)
    # the queue figures have no sample before the janitor's first count (1 s in)
    wait_until(lambda: b"\nbatchd_queue_depth{" in http_get(
        f"http://127.0.0.1:{d.port}/metrics")[1], 20, desc="the first queue count")
    _, body = http_get(f"http://127.0.0.1:{d.port}/metrics")
    text = body.decode() if isinstance(body, bytes) else body
    p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode() + "\n" + text[:3000]
    assert 'batchd_items_total{route="r",outcome="succeeded"} 600' in text
    assert "\nbatchd_queue_depth{" in text and "\nbatchd_queue_oldest_age_seconds{" in text


def test_json_logs_and_no_secret(db, conn, mock, batchd_factory):
    secret = "s3cr3t-T0ken-123456"
    d = batchd_factory(db=db, providers={"mock": provider(
        mock, url=mock.url("/item/{id}?status={st}"),
        header="Authorization: Bearer ${PROVIDER_TOKEN}",
        secret_header="X-Api-Key")},
        routes={ROUTE: "mock"}, log_level="debug", log_format="json",
        env={"PROVIDER_TOKEN": secret})
    items = [{"id": i, "st": 200 if i % 2 else 404} for i in range(20)]
    bid = submit(conn, "acme", ROUTE, items)
    wait_batch_done(conn, bid)
    seen = [r.get("authorization") for r in mock.all_requests()]
    assert f"Bearer {secret}" in seen  # the provider did get it
    assert d.stop() == 0
    lines = [l for l in d.log().splitlines() if l.strip()]
    assert lines
    records = []
    for l in lines:
        if l.startswith("==") or l.startswith("    #"):
            continue  # sanitizer output, checked by the fixture
        rec = json.loads(l)  # every line one JSON object
        assert {"ts", "level", "msg"} <= rec.keys()
        records.append(rec)
    assert not any(secret in l for l in lines)
    # item records carry their context
    assert any(r.get("item_id") and r.get("batch_id") == bid and r.get("provider") == "mock"
               for r in records)
    # the batch end summary at info
    assert any(r["level"] == "info" and f"batch {bid}" in r["msg"] and "completed" in r["msg"]
               for r in records)


def test_socket_activation(db, conn, mock, tmp_path):
    """Started by batchd.socket: the listener comes from systemd as fd 3
    (LISTEN_FDS/LISTEN_PID), and batchd serves on it without binding."""
    from conftest import batchd_bin, batchd_env, render_config
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    cfg = os.path.join(str(tmp_path), "sa.ini")
    with open(cfg, "w") as f:   # no listen key: the socket is all there is
        f.write(render_config(db.conninfo, {"log_level": "info", "shutdown_timeout": "5s"},
                              {"mock": provider(mock)}, {ROUTE: "mock"}))
    log = os.path.join(str(tmp_path), "sa.log")
    fd = lsock.fileno()
    env = batchd_env({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"})
    with open(log, "a") as lf:
        # the socket must be fd 3 and LISTEN_PID batchd's own pid: a wrapper
        # moves the fd, sets LISTEN_PID to its pid and execs (same pid)
        wrapper = ("import os, sys\n"
                   "fd = int(sys.argv[1])\n"
                   "if fd != 3:\n"
                   "    os.dup2(fd, 3)\n"
                   "    os.close(fd)\n"
                   "os.environ['LISTEN_PID'] = str(os.getpid())\n"
                   "os.execv(sys.argv[2], sys.argv[2:])\n")
        proc = subprocess.Popen(["/usr/bin/python3", "-c", wrapper, str(fd), batchd_bin(),
                                 "-c", cfg], stdout=lf, stderr=lf, env=env, pass_fds=(fd,))
    lsock.close()   # batchd holds its own copy now
    try:
        def ready():
            try:
                return http_get(f"http://127.0.0.1:{port}/readyz", timeout=1)[0] == 200
            except OSError:
                return False
        wait_until(lambda: ready() or proc.poll() is not None, 30, desc="ready on fd 3")
        assert proc.poll() is None, open(log).read()
        assert "socket(s) passed by systemd" in open(log).read()
        bid = submit(conn, "acme", ROUTE, [{"id": i} for i in range(10)])
        assert wait_batch_done(conn, bid)["status"] == "completed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, open(log).read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = open(log).read()
    assert "ERROR: AddressSanitizer" not in text and "runtime error:" not in text, text


def test_retention_deletes_old_finished_batches(db, conn, mock, batchd_factory):
    """retention = 1h: finished batches older than that go (items and events
    with them), in chunks; recent and unfinished ones stay."""
    old = [submit(conn, "acme", ROUTE, [{"id": i} for i in range(3)]) for _ in range(25)]
    keep_recent = submit(conn, "acme", ROUTE, [{"id": 1}])
    d = batchd_factory(db=db, providers={"mock": provider(mock)}, routes={ROUTE: "mock"},
                       retention="1h")
    for b in old + [keep_recent]:
        wait_batch_done(conn, b)
    # age the first 25 by two hours, and add an old but unfinished one
    conn.execute("UPDATE batchd.batches SET finished_at = now() - interval '2 hours' "
                 "WHERE id = ANY(%s)", (old,))
    pending_old = submit(conn, "acme", "no-such-route", [{"id": 1}])
    conn.execute("UPDATE batchd.batches SET created_at = now() - interval '3 hours' "
                 "WHERE id = %s", (pending_old,))
    # the retention timer runs 5 s after start, then every minute; more than
    # a chunk (20 batches) is waiting, so it continues at once
    wait_until(lambda: conn.execute("SELECT count(*) AS n FROM batchd.batches WHERE id = "
                                    "ANY(%s)", (old,)).fetchone()["n"] == 0,
               30, desc="old finished batches deleted")
    left = {str(r["id"]) for r in conn.execute("SELECT id FROM batchd.batches")}
    assert left == {keep_recent, pending_old}
    assert conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = ANY(%s)",
                        (old,)).fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM batchd.batch_events WHERE batch_id = "
                        "ANY(%s)", (old,)).fetchone()["n"] == 0
    assert "retention: deleted" in d.log()
    assert check_consistency(conn) == []
