"""batchd under valgrind's memcheck: a batch with successes, HTTP errors,
resets, oversized answers and retries, a reload, then a graceful stop. No
invalid access, no use of uninitialised memory, no definite leak.

valgrind cannot run an ASan build, so this uses a plain build of batchd:
BATCHD_PLAIN_BIN (contrib/check builds one in build/plain)."""

import os
import shutil
import signal
import subprocess

import pytest

from conftest import (REPO, check_consistency, free_port, http_get, render_config, submit,
                      tail, wait_batch_done, wait_until)

PLAIN = os.environ.get("BATCHD_PLAIN_BIN") or os.path.join(REPO, "build", "plain", "batchd")

pytestmark = pytest.mark.skipif(
    shutil.which("valgrind") is None or not os.access(PLAIN, os.X_OK),
    reason=f"needs valgrind and a plain (non-sanitizer) batchd at {PLAIN}; "
           "contrib/check provides both")


def test_memcheck_clean(db, conn, mock, tmp_path):
    port = free_port()
    cfg = render_config(
        db.conninfo,
        {"listen": f"127.0.0.1:{port}", "max_inflight": "20", "log_level": "info",
         "shutdown_timeout": "5s", "heartbeat_interval": "500ms", "lease_timeout": "5s"},
        {"mock": {"url": mock.url("/item/{id}?mode={mode}&status={st}"), "timeout": "3s",
                  "retries": "1", "backoff": "10ms", "breaker_failures": "100000",
                  "max_response_size": "64KB",
                  "header": ["Authorization: Bearer ${TOKEN}", "X-Item: {id}"]},
         "spare": {"url": mock.url("/spare/{id}"), "method": "POST"}},
        {"r": {"providers": "mock, spare", "failover_on_permanent": "no"}})
    path = os.path.join(str(tmp_path), "batchd.ini")
    with open(path, "w") as f:
        f.write(cfg)
    log = os.path.join(str(tmp_path), "valgrind.log")
    env = dict(os.environ, TOKEN="t0ken-for-valgrind")
    env.pop("BATCHD_DATABASE", None)
    with open(log, "a") as logf:
        proc = subprocess.Popen(
            ["valgrind", "--error-exitcode=99", "--leak-check=full",
             "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
             "--track-origins=yes", "--num-callers=30", PLAIN, "-c", path],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env)
    try:
        def ready():
            try:
                return http_get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200
            except OSError:
                return False
        try:
            wait_until(lambda: ready() or proc.poll() is not None, 120,
                       desc="batchd under valgrind ready")
            assert proc.poll() is None, "exited early"
        except AssertionError as e:
            raise AssertionError(f"{e}\n{tail(open(log).read(), 80)}")
        modes = ["json", "text", "badjson", "big", "reset", "json", "empty", "json"]
        items = [{"id": i, "mode": modes[i % len(modes)], "st": 500 if i % 11 == 0 else 200}
                 for i in range(200)]
        bid = submit(conn, "acme", "r", items)
        b = wait_batch_done(conn, bid, timeout=240)
        assert b["succeeded"] + b["failed"] == 200
        assert http_get(f"http://127.0.0.1:{port}/metrics", timeout=30)[0] == 200
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in open(log).read(), 60, desc="reload")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = open(log).read()
    assert rc == 0, f"valgrind/batchd exited {rc}:\n{tail(text, 120)}"
    assert "ERROR SUMMARY: 0 errors" in text, tail(text, 120)
    assert "definitely lost: 0 bytes" in text or "All heap blocks were freed" in text, \
        tail(text, 60)
    assert check_consistency(conn) == []
