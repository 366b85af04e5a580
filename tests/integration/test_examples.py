"""The runnable examples in contrib/examples/, end to end.

Each test runs an example's real `run` script in short mode
(EXAMPLE_SHORT=1: fewer rows, shorter outages, cooldowns and leases; the same
story) with the binaries under test (BATCHD_BIN, BATCHCTL_BIN,
MOCK_PROVIDER_BIN, so nothing is built), and checks the domain outcome: the
script's last line (RESULT <json>), and, for the examples run against a fresh
database of the session's cluster (EXAMPLE_DATABASE), the domain tables
themselves. quote-fanout runs as a user would, with its own private
PostgreSQL cluster. Every script stops what it started (batchd must exit 0
on SIGTERM); the batchd and mock logs (EXAMPLE_LOG_DIR) must hold no
sanitizer report.

A script that overruns its time limit gets SIGTERM (its trap stops its
processes, by PID), then SIGKILL.
"""

import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import (REPO, SANITIZER_ENV, SANITIZER_MARKERS, batchctl_bin, batchd_bin, mock_bin, read_text,
                      require_binary, run_batchd, submit, tail)

EXAMPLES = os.path.join(REPO, "contrib", "examples")
NAMES = ["registry-verification", "activity-batches", "account-sync", "crash-recovery",
         "quote-fanout"]


def run_example(name, tmp_path, db=None, timeout=90):
    """Run contrib/examples/NAME/run in short mode; returns (RESULT dict, stdout)."""
    logs = tmp_path / f"logs-{name}"
    env = dict(os.environ)
    env.pop("BATCHD_DATABASE", None)
    env.pop("EXAMPLE_DATABASE", None)
    env.update(SANITIZER_ENV)
    env.update({
        "BATCHD_BIN": os.path.abspath(require_binary(batchd_bin(), "batchd")),
        "MOCK_PROVIDER_BIN": os.path.abspath(require_binary(mock_bin(), "mock_provider")),
        "BATCHCTL_BIN": os.path.abspath(require_binary(batchctl_bin(), "batchctl")),
        "EXAMPLE_SHORT": "1",
        "EXAMPLE_TIMEOUT": "45",
        "EXAMPLE_LOG_DIR": str(logs),
    })
    if db is not None:
        env["EXAMPLE_DATABASE"] = db.conninfo
    proc = subprocess.Popen([os.path.join(EXAMPLES, name, "run")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=str(tmp_path))
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)       # the script's trap stops its processes
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
        pytest.fail(f"{name}/run did not finish within {timeout}s:\n{tail(out, 80)}")
    for f in sorted(logs.glob("*.log")) if logs.exists() else []:
        text = read_text(str(f))
        for marker in SANITIZER_MARKERS:
            assert marker not in text, f"{name}: {f.name} has {marker!r}:\n{tail(text, 60)}"
    assert proc.returncode == 0, f"{name}/run exited {proc.returncode}:\n{tail(out, 120)}"
    lines = out.rstrip("\n").splitlines()
    assert lines and lines[-1].startswith("RESULT "), f"{name}: no RESULT line:\n{tail(out, 40)}"
    return json.loads(lines[-1][len("RESULT "):]), out


def q(conn, sql, *args):
    return conn.execute(sql, args or None).fetchall()


def one(conn, sql, *args):
    return conn.execute(sql, args or None).fetchone()


def assert_batchd_clean(conn):
    assert q(conn, "SELECT * FROM batchd.check_consistency()") == []
    assert q(conn, "SELECT * FROM batchd.check_groups()") == []


def callback_events(conn, bid):
    return [r["event"] for r in q(conn, "SELECT event FROM batchd.batch_events WHERE batch_id = %s "
                                        "AND event LIKE 'callback%%' ORDER BY id", bid)]


# ------------------------------------------------------------------ layout

@pytest.mark.parametrize("name", NAMES)
def test_example_layout_and_config(name, tmp_path):
    """Each example: a README naming its one command, an executable run, the
    SQL, and a batchd.ini that batchd accepts."""
    d = os.path.join(EXAMPLES, name)
    for f in ("README", "run", "batchd.ini", "schema.sql"):
        assert os.path.isfile(os.path.join(d, f)), f"{name}/{f} missing"
    assert os.access(os.path.join(d, "run"), os.X_OK)
    assert f"contrib/examples/{name}/run" in read_text(os.path.join(d, "README"))
    ini = read_text(os.path.join(d, "batchd.ini"))
    env = {v: "1" for v in re.findall(r"\$\{([A-Z_]+)\}", ini)}
    env.update({"EXAMPLE_DB": "host=127.0.0.1 port=9 dbname=x", "EXAMPLE_HTTP_PORT": "8080",
                "REGISTRY_RATE": "10/s", "REGISTRY_PAID_RATE": "5/s", "BREAKER_COOLDOWN": "1s",
                "HEARTBEAT": "1s", "LEASE": "3s"})
    r = run_batchd(["--check-config", "-c", os.path.join(d, "batchd.ini")], env=env)
    assert r.returncode == 0, r.stderr
    assert "hook" in ini


# ------------------------------------------------------------------ registry-verification

def test_registry_verification(new_database, tmp_path):
    db = new_database(migrated=False)
    res, out = run_example("registry-verification", tmp_path, db)
    conn = db.connect()

    # the seed's rules (seed.sql), for trucks due tonight (g % 10 != 0)
    n = res["trucks"]
    due = [g for g in range(1, n + 1) if g % 10 != 0]
    unknown = {g for g in due if g % 37 == 7}
    garbled = {g for g in due if g % 53 == 8}
    answered = [g for g in due if g not in unknown | garbled]
    expect = {
        "expired_insurance": {g for g in answered if g % 17 == 3},
        "expired_fitness": {g for g in answered if g % 19 == 4},
        "blacklisted": {g for g in answered if g % 29 == 5},
        "owner_mismatch": {g for g in answered if g % 13 == 6},
    }
    flags = {}
    for r in q(conn, "SELECT kind, severity, truck_id FROM registry.compliance_flags "
                     "WHERE resolved_at IS NULL"):
        flags.setdefault(r["kind"], set()).add(r["truck_id"])
        assert r["severity"] == ("warning" if r["kind"] == "owner_mismatch" else "severe")
    assert flags == {k: v for k, v in expect.items() if v}
    severe = expect["expired_insurance"] | expect["expired_fitness"] | expect["blacklisted"]
    tickets = q(conn, "SELECT truck_id, flags FROM registry.tickets WHERE status = 'open'")
    assert {t["truck_id"] for t in tickets} == severe and len(tickets) == len(severe)

    trucks = {r["id"]: r for r in q(conn, "SELECT * FROM registry.trucks")}
    for g in answered:
        t = trucks[g]
        assert t["verified_at"] is not None and t["verified_by"] in ("registry", "registry_paid")
        flagged = any(g in v for v in expect.values())
        assert t["status"] == ("flagged" if flagged else "verified"), t
    assert all(trucks[g]["status"] == "unknown" for g in unknown)
    for g in garbled:   # the hook raised: that item alone failed, the truck stays due
        assert trucks[g]["verified_by"] is None and trucks[g]["status"] in ("pending", "verified")
        err = one(conn, "SELECT error FROM batchd.items WHERE batch_id = %s "
                        "AND (payload ->> 'truck_id')::int = %s", res["night1_batch"], g)["error"]
        assert err.startswith("hook failed: registry answer for "), err

    # night 1: breaker opened, the fallback took over, > 90%: no alert
    n1 = res["night1"]
    assert n1["status"] == "completed_with_errors"
    assert (n1["total"], n1["failed"]) == (len(due), len(unknown | garbled))
    assert n1["success_rate"] > 90
    assert n1["by_provider"].get("registry", 0) > 0 and n1["by_provider"].get("registry_paid", 0) > 0
    assert res["breaker_opened"] >= 1
    assert n1["tickets_opened"] == len(severe)
    # night 2: only the failed ones, all fail again
    n2 = res["night2"]
    assert (n2["status"], n2["total"], n2["success_rate"]) == ("failed", len(unknown | garbled), 0)

    # the runbook's alerts, recomputed here from the seed's rules
    flagged = set().union(*expect.values())

    def expected_alerts(run, flagged_trucks, ticketed):
        done = run["succeeded"] + run["failed"]
        kinds = set()
        if float(run["success_rate"] or 0) < 90:
            kinds.add("low_success_rate")
        if done == 0:
            kinds.add("nothing_processed")
        if done and 100.0 * run["failed"] / done > 20:
            kinds.add("high_failure_rate")
        if float(run["seconds"]) > 60 * 60:
            kinds.add("long_run")
        if done and 100.0 * len(flagged_trucks) / done > 20:
            kinds.add("many_flagged")
        if done and 100.0 * ticketed / done > 10:
            kinds.add("many_tickets")
        return sorted(kinds)

    by_batch = {str(k): v for k, v in res["alert_kinds"].items()}
    assert by_batch.get(res["night1_batch"], []) == expected_alerts(n1, flagged, len(severe))
    assert by_batch.get(res["night2_batch"], []) == expected_alerts(n2, set(), 0)
    assert by_batch[res["night2_batch"]] == ["high_failure_rate", "low_success_rate"]
    # the seed flags about a fifth of the trucks and tickets a sixth: night 1
    # breaks both of those thresholds (a check that the rules really fire)
    assert {"many_flagged", "many_tickets"} <= set(by_batch[res["night1_batch"]])
    assert set(by_batch) == {res["night1_batch"], res["night2_batch"]}

    # the callback ran once per run
    assert one(conn, "SELECT count(*) AS n FROM registry.runs")["n"] == 2
    for bid in (res["night1_batch"], res["night2_batch"]):
        assert callback_events(conn, bid) == ["callback_done"]
    assert "circuit breaker closed -> open" in out
    # registry.check_running(): a run going on for longer than 60 min raises
    # long_run once, while it runs; a short one or a finished one does not
    assert one(conn, "SELECT registry.check_running() AS n")["n"] == 0
    late = submit(conn, "fleet", "registry", [{"truck_id": 1, "vin": "X"}])
    fresh = submit(conn, "fleet", "registry", [{"truck_id": 2, "vin": "Y"}])
    conn.execute("UPDATE batchd.batches SET created_at = now() - interval '61 minutes' "
                 "WHERE id = %s", (late,))
    assert one(conn, "SELECT registry.check_running() AS n")["n"] == 1
    assert one(conn, "SELECT registry.check_running() AS n")["n"] == 0
    rows = q(conn, "SELECT kind, batch_id::text AS b, message FROM registry.alerts "
                   "WHERE batch_id IN (%s, %s)", late, fresh)
    assert [(r["kind"], r["b"]) for r in rows] == [("long_run", late)], rows
    assert "still running after 61 min" in rows[0]["message"], rows[0]
    conn.execute("SELECT batchd.cancel_batch(%s, %s)", ("fleet", late))
    conn.execute("SELECT batchd.cancel_batch(%s, %s)", ("fleet", fresh))
    assert_batchd_clean(conn)


PROM_DIR = os.path.join(REPO, "contrib", "prometheus")


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus)")
def test_prometheus_alert_rules_check_and_pass_their_tests():
    """contrib/prometheus/batchd-alerts.yml: the runbook's alerts that batchd's
    metrics can tell pass `promtool check rules`, and their unit tests
    (batchd-alerts.test.yml: each alert fires on a bad night and stays quiet on
    a good one) pass `promtool test rules`."""
    r = subprocess.run(["promtool", "check", "rules", "batchd-alerts.yml"], cwd=PROM_DIR,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS: 4 rules found" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["promtool", "test", "rules", "batchd-alerts.test.yml"], cwd=PROM_DIR,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    # every metric a rule names is one batchd exports (a name in src/)
    rules = read_text(os.path.join(PROM_DIR, "batchd-alerts.yml"))
    src = "".join(read_text(os.path.join(REPO, "src", f))
                  for f in os.listdir(os.path.join(REPO, "src")) if f.endswith(".c"))
    for name in set(re.findall(r"\bbatchd_[a-z_]+", rules)):
        assert f'"{name}' in src, f"{name} is not a metric batchd exports"


# ------------------------------------------------------------------ activity-batches

def test_activity_batches(new_database, tmp_path):
    db = new_database(migrated=False)
    res, out = run_example("activity-batches", tmp_path, db)
    conn = db.connect()
    b = res["batches"]

    log = [(r["name"], r["status"], r["succeeded"], r["failed"], r["cancelled"])
           for r in res["batch_log"]]
    # one callback row per batch end; the late batch ended twice (failed, then
    # completed after the retry)
    others = [x for x in log if x[0] != "acme backfill"]
    assert others == [
        ("acme week 47", "completed", 20, 0, 0), ("globex march", "completed", 25, 0, 0),
        ("globex late shipments", "failed", 0, 5, 0),
        ("globex late shipments", "completed", 5, 0, 0)]
    backfill = [x for x in log if x[0] == "acme backfill"]
    assert len(backfill) == 1
    _, status, ok, failed, cancelled = backfill[0]
    assert status == "cancelled" and cancelled > 0 and ok + failed + cancelled == 80

    # emissions: by the hook, under the batch's tenant, computed from the
    # API's factor; the deleted batch's emissions are still there
    em = {r["tenant"]: r["n"] for r in q(conn, "SELECT tenant, count(*) AS n "
                                              "FROM activity.emissions GROUP BY 1")}
    assert em == {"acme": 20 + ok, "globex": 30}
    assert one(conn, "SELECT count(*) AS n FROM activity.emissions WHERE batch_id = %s",
               b["acme_week"])["n"] == 20
    bad = q(conn, """SELECT e.* FROM activity.emissions AS e
                       JOIN activity.activities AS a USING (tenant, activity_id)
                       JOIN activity.sandbox_factors AS f USING (mode)
                      WHERE e.co2e_kg <> round(f.factor * a.distance_km * a.weight_t / 1000, 1)""")
    assert bad == []
    wrong_tenant = q(conn, """SELECT e.* FROM activity.emissions AS e
                                JOIN batchd.batches AS bb ON bb.id = e.batch_id
                               WHERE bb.tenant <> e.tenant""")
    assert wrong_tenant == []

    # isolation and the REST lifecycle
    iso = res["isolation"]
    assert (iso["get"], iso["retry"], iso["delete"]) == (404, 404, 404)
    assert set(iso["acme_list"]) == {b["acme_week"], b["acme_backfill"]}
    assert set(iso["globex_list"]) == {b["globex_march"], b["globex_late"]}
    assert res["deleted"] == {"delete": 204, "get_after": 404, "rows_left": 0}
    assert callback_events(conn, b["globex_late"]) == ["callback_done", "callback_done"]
    assert_batchd_clean(conn)


# ------------------------------------------------------------------ account-sync

def test_account_sync(new_database, tmp_path):
    db = new_database(migrated=False)
    res, out = run_example("account-sync", tmp_path, db)
    conn = db.connect()
    accounts, per = res["accounts"], res["jobs_per_account"]
    total = accounts * per
    assert res["batch_status"] == "completed_with_errors"       # the job deleted remotely
    # upserts: odd-numbered jobs existed (updated), even ones are new
    # (inserted); acct-02's job 1 was deleted on the SaaS side
    assert res["outcomes"] == {"inserted": accounts * (per // 2),
                               "updated": accounts * ((per + 1) // 2) - 1,
                               "deleted_remotely": 1}
    assert one(conn, "SELECT count(*) AS n FROM saas.jobs")["n"] == total
    gone = q(conn, "SELECT account_id, title FROM saas.jobs WHERE state = 'deleted_remotely'")
    assert gone == [{"account_id": "acct-02", "title": "Job 1 (old title)"}]
    fresh = one(conn, "SELECT count(*) AS n FROM saas.jobs WHERE title LIKE 'Job % for acct-%' "
                      "AND synced_at > now() - interval '5 minutes'")["n"]
    assert fresh == total - 1
    assert res["changes_left"] == 0
    assert res["retried_calls"] == 2                           # two calls failed once
    # every call carried a token from the login; refreshed before expiry
    # (5 s tokens), none was refused
    assert res["login"]["logins"] >= 1 and res["login"]["login_failures"] == 0, res["login"]
    assert res["login"]["unauthorized"] == 0, res["login"]
    assert res["login"]["authorized"] == total + res["retried_calls"], res["login"]
    # sequential per account (group_concurrency 1, group_rate 1/s), parallel across
    assert res["overlaps"] == 0
    assert res["min_gap_s"] >= 0.9
    assert res["max_parallel_accounts"] >= 2
    assert_batchd_clean(conn)


# ------------------------------------------------------------------ crash-recovery

def test_crash_recovery(new_database, tmp_path):
    db = new_database(migrated=False)
    res, out = run_example("crash-recovery", tmp_path, db)
    conn = db.connect()
    assert res["batch_status"] == "completed"
    n = res["invoices"]
    assert res["rendered"] == res["documents"] == n                 # nothing lost
    assert one(conn, "SELECT count(DISTINCT invoice_id) AS n FROM docs.documents")["n"] == n
    assert res["held_at_kill"] > 0
    assert res["a_in_workers"]["state"] == "dead", out
    assert int(res["a_in_workers"]["inflight"]) > 0
    # batchctl workers (GET /v1/status) lists the ids A held, from the
    # database: the ones running under A at the kill
    held = res["held_ids_at_kill"]
    assert len(held) == res["held_at_kill"] and held == sorted(held)
    assert (res["a_in_workers"]["held_items"], res["a_in_workers"]["held_item_ids"],
            res["a_in_workers"]["held_item_ids_truncated"]) == (len(held), held, False), res
    assert re.search(r"\bdead\b.*\b" + re.escape(",".join(map(str, held[:3]))), out), out
    assert "the ones the database showed at the kill: yes" in out
    # ... and the 'recovered' event (GET /v1/batches/ID/events) the same ids,
    # which then succeeded at their second attempt
    assert res["recovered_ids"] == held, res
    assert res["recovered_final"] == {"succeeded/2": len(held)}, res
    assert res["recovered"] == res["held_at_kill"]                  # all of A's, requeued once
    assert res["second_attempts"] == res["held_at_kill"]
    assert 0 < res["recorded_by_a"] < n
    assert res["provider_repeated"] <= res["held_at_kill"] and res["same_idempotency_key"]
    assert res["workers_left"] == 0
    # the callback: exactly once, although a worker died during the batch
    assert res["batch_ends"] == ["completed"]
    assert callback_events(conn, res["batch"]) == ["callback_done"]
    assert re.search(r"\bdead\b", out)
    assert_batchd_clean(conn)


# ------------------------------------------------------------------ quote-fanout

def test_quote_fanout_private_cluster(tmp_path):
    """As a user runs it: its own PostgreSQL cluster, everything stopped at
    the end; the outcome from the RESULT line."""
    res, out = run_example("quote-fanout", tmp_path, db=None, timeout=90)
    jobs = {j["id"]: j for j in res["jobs"]}
    assert {k: (j["status"], j["items"], j["succeeded"], j["failed"]) for k, j in jobs.items()} == \
        {1: ("completed", 8, 8, 0), 2: ("completed", 4, 2, 2), 3: ("completed", 2, 2, 0),
         4: ("completed", 2, 2, 0)}
    # submitted by the intake (one batch per inserted row, none for the rolled-back
    # one), fanned out, and closed per vehicle by the job's on_done
    assert (res["batches"], res["stray_batches"]) == (4, 0)
    # batch_concurrency = 3: three jobs at once, the fourth after one ended
    assert res["max_jobs_at_once"] == 3
    assert res["fourth_started_after_an_end"] is True
    # served in turn, not behind the calls of jobs 1-3 waiting for the rate
    assert res["fourth_ended_before_job_1"] is True, "fourth ended before job 1"
    assert "at most 3 jobs ran at once" in out

    def per(total, succeeded, failed):
        return {"total": total, "succeeded": succeeded, "failed": failed, "cancelled": 0,
                "unfinished": 0}

    assert jobs[1]["by_vehicle"] == {"VW-GOLF-8": per(4, 4, 0), "FORD-FOCUS": per(4, 4, 0)}
    assert jobs[2]["by_vehicle"] == {"TESLA-M3": per(2, 2, 0), "XX-UNKNOWN": per(2, 0, 2)}
    assert jobs[3]["by_vehicle"] == {"SKODA-OCTAVIA": per(2, 2, 0)}
    assert jobs[4]["by_vehicle"] == {"BMW-I4": per(2, 2, 0)}
    assert "quotes.submit_job" not in out and "INSERT INTO quotes.quote_jobs" in out
    assert all(j["duration_s"] > 0 for j in jobs.values())
    assert (res["quotes"], res["quote_errors"]) == (14, 2)
    assert res["failed_vehicles"] == ["XX-UNKNOWN"]                # invalid vehicles fail alone
    assert res["requests"] == 16
    # 2 requests/s with burst 1: at most burst + rate * 1s in any second
    assert 1 <= res["max_requests_in_1s"] <= 3
    assert res["rate_per_s"] <= 2.2
    assert "PostgreSQL: private cluster" in out
