"""Dead workers' rows (issue #20.5): what a dead worker held, from the
database, in GET /v1/status and `batchctl workers`, and in the 'recovered'
event the reaper writes when it requeues those items.

A real kill -9 of a batchd holding items at a provider that does not answer
(mode hang), a survivor started once the victim's lease has run out (its
reaper first runs one heartbeat_interval after it starts: the window where
the dead worker is listed, not yet reaped), then the provider made fast and
the batch finished. The fleet harness (chaos.Fleet, via test_fleet's
fleet_factory) records the victim's running items at the kill exactly
(SIGSTOP, read, SIGKILL) and audits every item update.
"""

import json
import re

import pytest

import chaos
from chaos import install_audit, verify_run
from conftest import submit, wait_batch_done, wait_until
from test_api import Client
from test_batchctl import create_token, run_ctl
from test_fleet import fleet_factory  # noqa: F401 (fixture)

ROUTE = chaos.ROUTE
TENANT = "ops"
# the survivor: heartbeat 2s, lease 4s; the victim: the fleet's 500ms / 2s
B_KEYS = {"heartbeat_interval": "2s", "lease_timeout": "4s"}
B_LEASE_S = 4.0
CLAIM_AHEAD = 4
HELD_IDS_MAX = 100      # held_item_ids and item_ids: the first 100


def running_under(conn, wid):
    return [r["id"] for r in conn.execute(
        "SELECT id FROM batchd.items WHERE worker_id = %s AND status = 'running' ORDER BY id",
        (wid,)).fetchall()]


def abbreviated(ids, held):
    """batchctl's ITEMS cell: the first three ids, then (+N more)."""
    s = ",".join(str(i) for i in ids[:3])
    return s + (f" (+{held - 3})" if held > 3 else "")


@pytest.mark.parametrize("max_inflight", [6, 120])
def test_kill9_dead_worker_held_ids_then_recovered(db, conn, mock, fleet_factory,  # noqa: F811
                                                    max_inflight):
    """kill -9 of a worker holding max_inflight + claim_ahead items: before it is reaped,
    a survivor's /v1/status and `batchctl workers` list it dead with exactly
    the ids the database has running under it (the first 100, truncated
    flagged past 100), whatever its last heartbeat's inflight said; the
    reaper's 'recovered' event (GET /v1/batches/ID/events) carries the same
    ids; every item ends succeeded, recorded once."""
    install_audit(conn)
    token = create_token(db.conninfo, TENANT)
    mock.configure(mode="hang")
    # A holds max_inflight + claim_ahead items: the transfers its
    # concurrency window lets out, the rest waiting for it
    fleet = fleet_factory(db, mock, max_inflight=max_inflight, claim_ahead=CLAIM_AHEAD)
    a = fleet.start()
    n = max_inflight + CLAIM_AHEAD + 20
    bid = submit(conn, TENANT, ROUTE, [{"id": i} for i in range(1, n + 1)])
    wait_until(lambda: len(running_under(conn, a.worker_id())) == max_inflight + CLAIM_AHEAD,
               timeout=10, desc=f"worker A holding {max_inflight + CLAIM_AHEAD} items")
    k = fleet.kill(a)
    held = k.running
    assert len(held) == max_inflight + CLAIM_AHEAD, held
    shown = held[:HELD_IDS_MAX]
    truncated = len(held) > HELD_IDS_MAX

    # A silent longer than the survivor's lease, then the survivor
    wait_until(lambda: conn.execute(
        "SELECT heartbeat_at < now() - make_interval(secs => %s) AS dead FROM batchd.workers "
        "WHERE id = %s", (B_LEASE_S + 0.3, k.worker_id)).fetchone()["dead"],
        timeout=B_LEASE_S + 5, desc="A's heartbeat older than B's lease")
    mock.configure(mode="json", latency_ms=20)
    b = fleet.start(**B_KEYS)
    url = f"http://127.0.0.1:{b.port}"
    api = Client(b.port, token)

    # /v1/status: A dead, holding exactly those ids (from the database)
    r = api.get("/v1/status")
    assert r.status == 200, r
    rows = {w["id"]: w for w in r.json()["fleet"]}
    w = rows[k.worker_id]
    assert w["alive"] is False and w["self"] is False, w
    assert w["held_items"] == len(held), w
    assert w["held_item_ids"] == shown, (w["held_item_ids"], shown)
    assert w["held_item_ids_truncated"] is truncated, w
    # inflight is the last heartbeat's figure, not what the database holds
    assert w["inflight"] <= len(held), w
    me = rows[b.worker_id()]
    assert me["alive"] and me["held_items"] == len(me["held_item_ids"]) <= n - len(held), me

    # batchctl workers: HELD and ITEMS, and --json with the full fields
    r = run_ctl(["workers"], url=url, token=token)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "HOST", "PID", "INFLIGHT", "HELD", "HEARTBEAT",
                                "STATE", "ITEMS"], r.stdout
    line = [ln for ln in lines if ln.startswith(k.worker_id)]
    assert len(line) == 1, r.stdout
    cols = line[0].split()
    assert cols[4] == str(len(held)) and " dead " in line[0], line[0]
    assert line[0].rstrip().endswith(" " + abbreviated(held, len(held))), line[0]
    r = run_ctl(["--json", "workers"], url=url, token=token)
    assert r.returncode == 0, r.stderr
    wj = {x["id"]: x for x in json.loads(r.stdout)["fleet"]}[k.worker_id]
    assert (wj["held_items"], wj["held_item_ids"], wj["held_item_ids_truncated"]) == \
        (len(held), shown, truncated), wj

    # all of that before the reaper ran: the items are still A's
    assert running_under(conn, k.worker_id) == held, \
        "the survivor reaped A before the checks above (its first reap is one heartbeat_interval " \
        "after it starts): the test's window was missed"

    # the reaper requeues them: a 'recovered' event with the same ids
    assert wait_batch_done(conn, bid, timeout=60)["status"] == "completed"
    fleet.join_watchers()
    r = api.get(f"/v1/batches/{bid}/events?limit=100")
    assert r.status == 200, r
    rec = [e for e in r.json()["events"] if e["event"] == "recovered"]
    assert len(rec) == 1, r.json()
    assert rec[0]["detail"] == {"worker": k.worker_id, "items": len(held),
                                "item_ids": shown, "item_ids_truncated": truncated}, rec
    # ... A's row is gone, and every item ended succeeded once; A's with
    # their second attempt
    r = api.get("/v1/status")
    assert k.worker_id not in {w["id"] for w in r.json()["fleet"]}, r
    rcs = fleet.stop_all()
    assert all(rc == 0 for rc in rcs.values()), rcs
    fig, problems = verify_run(db.conninfo, mock, bid, n, fleet,
                               recovery_bound=B_LEASE_S + 2 * 2.0 + 5)
    assert problems == [], "\n".join(problems)
    att = {r["id"]: r["attempts"] for r in conn.execute(
        "SELECT id, attempts FROM batchd.items WHERE batch_id = %s", (bid,)).fetchall()}
    assert all(att[i] == 2 for i in held), {i: att[i] for i in held}
    assert all(v == 1 for i, v in att.items() if i not in set(held))
    logs = b.log()
    assert re.search(rf"recovered 1 dead worker\(s\): {len(held)} item\(s\) requeued", logs)


def test_reaper_events_list_ids_per_batch_and_orphans(db, conn):
    """The SQL reaper on its own (no daemon): a dead worker's items of two
    batches get one 'recovered' event per batch with that batch's ids; an
    orphan (items running under a worker id with no row) gets its event too;
    more than 100 ids: the first 100 and item_ids_truncated."""
    b1 = submit(conn, TENANT, ROUTE, [{"id": i} for i in range(1, 131)])
    b2 = submit(conn, TENANT, ROUTE, [{"id": i} for i in range(1, 4)])
    dead = "00000000-0000-4000-8000-00000000dead"
    orphan = "00000000-0000-4000-8000-0000000000ff"
    conn.execute("INSERT INTO batchd.workers (id, hostname, pid, version, heartbeat_at) "
                 "VALUES (%s, 'h', 1, 'v', now() - interval '1 hour')", (dead,))
    ids1 = [r["id"] for r in conn.execute(
        "SELECT id FROM batchd.items WHERE batch_id = %s ORDER BY id", (b1,)).fetchall()]
    ids2 = [r["id"] for r in conn.execute(
        "SELECT id FROM batchd.items WHERE batch_id = %s ORDER BY id", (b2,)).fetchall()]
    # claimed as claim_items() leaves them: running, attempt spent, a worker id
    conn.execute("UPDATE batchd.items SET status = 'running', attempts = 1, worker_id = %s, "
                 "started_at = now() - interval '1 hour' WHERE id = ANY(%s)",
                 (dead, ids1[:120] + ids2[:2]))
    conn.execute("UPDATE batchd.items SET status = 'running', attempts = 1, worker_id = %s, "
                 "started_at = now() - interval '1 hour' WHERE id = ANY(%s)",
                 (orphan, ids1[120:125]))
    r = conn.execute("SELECT * FROM batchd.reap_workers(NULL, 2000)").fetchone()
    assert (r["workers"], r["requeued"], r["failed"]) == (1, 127, 0), r
    ev = conn.execute("SELECT batch_id, detail FROM batchd.batch_events WHERE event = "
                      "'recovered' ORDER BY id").fetchall()
    got = [(str(e["batch_id"]), e["detail"]) for e in ev]
    # the dead worker's first, one per batch in batch id order; then the orphan's
    assert got == sorted([
        (b1, {"worker": dead, "items": 120, "item_ids": ids1[:100],
              "item_ids_truncated": True}),
        (b2, {"worker": dead, "items": 2, "item_ids": ids2[:2],
              "item_ids_truncated": False})], key=lambda x: x[0]) + [
        (b1, {"worker": orphan, "items": 5, "item_ids": ids1[120:125],
              "item_ids_truncated": False})], got
    # requeued with the attempt counted; the others untouched
    st = {(r["status"], r["attempts"], r["worker_id"]): r["n"] for r in conn.execute(
        "SELECT status, attempts, worker_id, count(*) AS n FROM batchd.items "
        "GROUP BY 1, 2, 3").fetchall()}
    assert st == {("queued", 1, None): 127, ("queued", 0, None): 6}, st
    assert conn.execute("SELECT count(*) AS n FROM batchd.workers").fetchone()["n"] == 0
