"""
The benchmark must never rot: run tests/bench/bench.py --quick (small sizes,
every figure computed, no target judged) against the binaries this suite uses
(BATCHD_BIN, MOCK_PROVIDER_BIN, as conftest resolves them), and check that it
exits 0 and printed every row of its table, and wrote them all to its JSON.

Figures measured here mean nothing (sanitized build, tiny sizes, a shared
machine): the real run is `make bench`.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

from conftest import REPO, batchd_bin, mock_bin, require_binary, tail

BENCH = os.path.join(REPO, "tests", "bench", "bench.py")
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def bench_row_ids():
    spec = importlib.util.spec_from_file_location("batchd_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.ROW_IDS)


def test_bench_quick_prints_every_row(tmp_path):
    env = dict(os.environ,
               BATCHD_BIN=require_binary(batchd_bin(), "batchd"),
               MOCK_PROVIDER_BIN=require_binary(mock_bin(), "mock_provider"),
               BENCH_TMPDIR=str(tmp_path),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("BATCHD_DATABASE", None)
    out_json = tmp_path / "bench.json"
    r = subprocess.run([PYTHON, BENCH, "--quick", "--no-build", "--json", str(out_json)],
                       capture_output=True, text=True, timeout=240, env=env,
                       stdin=subprocess.DEVNULL, cwd=str(tmp_path))
    report = f"stdout:\n{r.stdout}\nstderr (tail):\n{tail(r.stderr, 40)}"
    assert r.returncode == 0, f"bench.py --quick exited {r.returncode}\n{report}"

    rows = bench_row_ids()
    assert len(rows) >= 16
    for rid in rows:
        m = re.search(rf"^{re.escape(rid)}\s+(.*)$", r.stdout, re.M)
        assert m, f"row {rid} missing from the table\n{report}"
        assert "ERROR" not in m.group(1), f"row {rid}: {m.group(1)}\n{report}"
    assert "quick mode" in r.stdout

    doc = json.loads(out_json.read_text())
    assert doc["mode"] == "quick"
    assert [row["id"] for row in doc["rows"]] == rows
    assert not doc["errors"], doc["errors"]
    for row in doc["rows"]:
        assert row["verdict"] == "-", f"quick mode judged {row['id']}: {row['verdict']}"

    # B2.loss: its phases are a partition of the span beyond n x latency /
    # window (the integral of the window's idle part, from the mock's own
    # times): they add up to the total and none is negative
    loss = doc["details"]["B2"]["losses_s"]
    phases = ("before", "first_s", "steady", "tail", "after", "latency")
    assert all(loss[k] >= -0.001 for k in phases + ("slow_start",)), loss
    assert abs(sum(loss[k] for k in phases) - loss["total"]) < 0.005, loss

    # C1: the median of its runs is the ceiling, with its WAL per item
    c1 = doc["details"]["C1"]
    rates = sorted(x["items_per_s"] for x in c1["runs"])
    assert c1["items_per_s"] == rates[len(rates) // 2]
    assert c1["wal_bytes_per_item"] > 0
