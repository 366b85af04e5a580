"""The schema as a whole (sql/README): the checked-in snapshot, the function
files, and the upgrade from a database made by the previous release.

  - sql/schema.sql is what a fresh `batchd migrate` makes (pg_dump
    --schema-only of schema batchd, normalized): any schema change that is not
    recorded there fails here, with the diff. To record one:
        contrib/schema-snapshot          (or BATCHD_UPDATE_SNAPSHOT=1 pytest -k snapshot)
  - every function and trigger of schema batchd is defined in exactly one
    sql/functions/ file, and none is left over from the migrations;
  - tests/upgrade/release-010.sql, a database made by the release before the
    function files, upgrades to exactly the snapshot, keeping its rows.
  - batchd refuses to start on a database whose function files are not its own.
"""

import difflib
import glob
import os
import re

from conftest import (REPO, dump_schema, migrate, restore_dump, run_batchd,
                      write_minimal_config)

SNAPSHOT = os.path.join(REPO, "sql", "schema.sql")
FUNCTIONS = os.path.join(REPO, "sql", "functions")
RELEASE_010 = os.path.join(REPO, "tests", "upgrade", "release-010.sql")


def snapshot_diff(got):
    want = open(SNAPSHOT).read() if os.path.exists(SNAPSHOT) else ""
    if got == want:
        return None
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                        "sql/schema.sql", "fresh batchd migrate", n=2))
    return diff[:12000]


def test_schema_snapshot_matches_a_fresh_migrate(new_database, pg, tmp_path):
    db = new_database(migrated=False)
    migrate(db.conninfo, str(tmp_path))
    got = dump_schema(pg, db.conninfo)
    if os.environ.get("BATCHD_UPDATE_SNAPSHOT") == "1":
        with open(SNAPSHOT, "w") as f:
            f.write(got)
    diff = snapshot_diff(got)
    assert diff is None, ("the schema differs from the snapshot sql/schema.sql: record the "
                          "change with contrib/schema-snapshot and commit it\n" + diff)


def defined_objects(text):
    funcs = re.findall(r"^CREATE (?:OR REPLACE )?FUNCTION (batchd\.\w+)\s*\(([^)]*)\)",
                       text, re.M)
    trigs = re.findall(r"^CREATE (?:OR REPLACE )?TRIGGER (\w+)", text, re.M)
    return funcs, trigs


def arg_types(args):
    """'p_a uuid, p_b text[] DEFAULT x' -> ('uuid', 'text[]')"""
    out = []
    for a in re.split(r",(?![^(]*\))", args):
        a = a.strip()
        if not a:
            continue
        a = re.split(r"\s+DEFAULT\s+|\s*=\s*", a, flags=re.I)[0].split()
        out.append(a[-1] if len(a) > 1 else a[0])
    return tuple(out)


def test_every_function_and_trigger_is_defined_once_in_the_function_files(db, conn):
    seen = {}
    trig_seen = {}
    for path in sorted(glob.glob(os.path.join(FUNCTIONS, "*.sql"))):
        funcs, trigs = defined_objects(open(path).read())
        for name, args in funcs:
            key = (name, arg_types(args))
            assert key not in seen, f"{key} defined in {seen.get(key)} and {path}"
            seen[key] = os.path.basename(path)
        for t in trigs:
            assert t not in trig_seen, f"trigger {t} defined twice"
            trig_seen[t] = os.path.basename(path)
    installed = conn.execute(
        "SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args "
        "FROM pg_proc AS p WHERE p.pronamespace = 'batchd'::regnamespace").fetchall()
    names = sorted(f"batchd.{r['proname']}" for r in installed)
    defined = sorted(k[0] for k in seen)
    assert names == defined, ("functions installed but not in sql/functions, or the reverse: "
                              f"{sorted(set(names) ^ set(defined))}")
    for r in installed:
        n = len([a for a in r["args"].split(",") if a.strip()])
        assert any(k[0] == f"batchd.{r['proname']}" and len(k[1]) == n for k in seen), r
    triggers = conn.execute(
        "SELECT t.tgname FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = 'batchd'::regnamespace AND NOT t.tgisinternal").fetchall()
    assert sorted(r["tgname"] for r in triggers) == sorted(trig_seen)
    # the migrations after 010 define none (they hold DDL only)
    for path in sorted(glob.glob(os.path.join(REPO, "sql", "migrations", "0[1-9][1-9]_*.sql")) +
                       glob.glob(os.path.join(REPO, "sql", "migrations", "[1-9]*.sql"))):
        if os.path.basename(path) < "011":
            continue
        funcs, trigs = defined_objects(open(path).read())
        assert not funcs and not trigs, f"{path} defines {funcs or trigs}: put it in sql/functions"


def test_upgrade_from_the_previous_release(new_database, pg, tmp_path):
    """A database made by the release before the function files (schema 010,
    with a batch in it) upgrades to exactly the schema of a fresh migrate, and
    keeps its rows."""
    db = new_database(migrated=False)
    restore_dump(pg, db.conninfo, RELEASE_010)
    conn = db.connect()
    assert [r["version"] for r in conn.execute(
        "SELECT version FROM batchd.schema_migrations ORDER BY 1")] == list(range(1, 11))
    bid = conn.execute("SELECT batchd.submit_batch('t', 'r', '[{\"id\": 1}, {\"id\": 2}]') AS id"
                       ).fetchone()["id"]
    # a batchd of this tree refuses the old schema until it is migrated
    cfg = write_minimal_config(str(tmp_path / "old.ini"), db.conninfo)
    r = run_batchd(["-c", cfg], timeout=30)
    assert r.returncode == 1 and "batchd migrate" in r.stderr, r.stderr

    migrate(db.conninfo, str(tmp_path))
    diff = snapshot_diff(dump_schema(pg, db.conninfo))
    assert diff is None, "the upgraded schema differs from a fresh migrate's:\n" + diff
    assert conn.execute("SELECT count(*) AS n FROM batchd.items WHERE batch_id = %s",
                        (bid,)).fetchone()["n"] == 2
    assert conn.execute("SELECT count(*) AS n FROM batchd.schema_functions").fetchone()["n"] == \
        len(glob.glob(os.path.join(FUNCTIONS, "*.sql")))
    # a second migrate has nothing to do
    before = conn.execute("SELECT file, applied_at FROM batchd.schema_functions ORDER BY 1"
                          ).fetchall()
    migrate(db.conninfo, str(tmp_path))
    assert conn.execute("SELECT file, applied_at FROM batchd.schema_functions ORDER BY 1"
                        ).fetchall() == before


def test_changed_function_file_is_reapplied_and_checked_at_start(db, conn, tmp_path):
    """batchd migrate re-applies a function file whose recorded checksum
    differs (a function edited by hand, or a newer batchd's file); batchd does
    not start until it has."""
    conn.execute("CREATE OR REPLACE FUNCTION batchd.api_ts(p_at timestamptz) RETURNS text "
                 "LANGUAGE sql AS $$ SELECT 'tampered' $$")
    conn.execute("UPDATE batchd.schema_functions SET checksum = 'x' WHERE file = 'tokens.sql'")
    cfg = write_minimal_config(str(tmp_path / "b.ini"), db.conninfo)
    r = run_batchd(["-c", cfg], timeout=30)
    assert r.returncode == 1, r.stderr
    assert "functions" in r.stderr and "batchd migrate" in r.stderr, r.stderr
    before = dict((x["file"], x["applied_at"]) for x in conn.execute(
        "SELECT file, applied_at FROM batchd.schema_functions"))
    migrate(db.conninfo, str(tmp_path))
    after = dict((x["file"], x["applied_at"]) for x in conn.execute(
        "SELECT file, applied_at FROM batchd.schema_functions"))
    assert [f for f in after if after[f] != before[f]] == ["tokens.sql"], \
        "only the changed file is applied"
    r = run_batchd(["-c", cfg, "--check-config"], timeout=30)
    assert r.returncode == 0, r.stderr
    assert conn.execute("SELECT batchd.api_ts('2026-01-01T00:00:00Z') AS t").fetchone()["t"] != \
        "tampered"


def test_failed_function_file_rolls_back_the_whole_migrate(new_database, pg, tmp_path):
    """One transaction: when a function file fails, the migrations applied
    before it in the same run are rolled back too."""
    db = new_database(migrated=False)
    restore_dump(pg, db.conninfo, RELEASE_010)
    conn = db.connect()
    # something the function files cannot replace: a view on a function's
    # result type would not stop them, a same-named function with another
    # return type does
    conn.execute("DROP FUNCTION batchd.api_ts(timestamptz)")
    conn.execute("CREATE FUNCTION batchd.api_ts(p_at timestamptz) RETURNS int "
                 "LANGUAGE sql AS $$ SELECT 1 $$")
    cfg = write_minimal_config(str(tmp_path / "m.ini"), db.conninfo)
    r = run_batchd(["migrate", "-c", cfg], timeout=60)
    assert r.returncode == 1, r.stderr
    assert "tokens.sql" in r.stderr, r.stderr
    assert [x["version"] for x in conn.execute(
        "SELECT version FROM batchd.schema_migrations ORDER BY 1")] == list(range(1, 11))
    assert conn.execute("SELECT to_regprocedure('batchd.heartbeat(uuid, int)') IS NOT NULL AS e"
                        ).fetchone()["e"], "011 was rolled back with the failed file"
