-- groups.sql: per-group concurrency: group slots and their garbage collection, and their consistency check.
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

-- group_slot is true only while the item runs. Functions here clear it
-- themselves (and give the slot back); this trigger clears it when other SQL
-- moves an item out of 'running', so that a stale flag can never be mistaken for
-- a slot later. The WHEN clause is evaluated in the executor without calling the
-- function: updates that keep the invariant cost nothing more.
CREATE OR REPLACE FUNCTION batchd.items_clear_group_slot()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    NEW.group_slot := false;
    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION batchd.items_clear_group_slot() IS
    'Trigger: an item that is not running holds no group slot.';

CREATE OR REPLACE TRIGGER items_clear_group_slot
    BEFORE UPDATE ON batchd.items
    FOR EACH ROW
    WHEN (NEW.group_slot AND NEW.status <> 'running')
    EXECUTE FUNCTION batchd.items_clear_group_slot();

-- batchd.gc_groups() -> (created, repaired, deleted)
--
-- Safe to call at any time from any number of sessions (READ COMMITTED, its own
-- transaction); meant to run periodically (e.g. every minute). O(groups) plus a
-- loose index scan of the queue (one index descent per queued group): not for
-- the hot path.
--   1. created: a row for every (route, group key) that has queued items but no
--      row (a submit that raced with a delete below, or SQL such as a retry that
--      requeued items of a deleted group), sorted; until then, such items are
--      not claimed on a limited route.
--   2. Lock, SKIP LOCKED (a group being claimed or completed right now is left
--      for next time), the rows that may need work: counter different from its
--      slot holders, or idle-looking.
--   3. repaired: running := the number of slot holders, counted with a snapshot
--      taken after the lock (every claim and completion changes slots under
--      this lock, so the count is exact). Drift comes only from SQL outside
--      these functions (an item deleted, or moved out of 'running', while
--      holding a slot).
--   4. deleted: rows with running = 0 (recounted: no slot holder), next_start_at
--      passed (spacing kept) and no queued item. (Items running without a slot,
--      claimed by the 3-argument claim_items, do not keep the row: if they are
--      requeued, step 1 of a later call brings it back.)
CREATE OR REPLACE FUNCTION batchd.gc_groups()
RETURNS TABLE (created int, repaired int, deleted int)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
#variable_conflict use_column
DECLARE
    v_created  int;
    v_repaired int;
    v_deleted  int;
    v_routes   text[];
    v_keys     text[];
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'batchd.gc_groups() must run in READ COMMITTED'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;

    -- 1. Missing rows. Loose index scan of items_group_claim_idx: the queued
    -- routes, then each route's distinct non-null group keys, one descent each.
    WITH RECURSIVE r(route) AS (
        SELECT (SELECT i.route FROM batchd.items AS i
                 WHERE i.status = 'queued'
                 ORDER BY i.route COLLATE "C" LIMIT 1)
        UNION ALL
        SELECT (SELECT i.route FROM batchd.items AS i
                 WHERE i.status = 'queued' AND i.route COLLATE "C" > r.route
                 ORDER BY i.route COLLATE "C" LIMIT 1)
          FROM r
         WHERE r.route IS NOT NULL
    ), k(route, group_key) AS (
        SELECT r.route,
               (SELECT i.group_key FROM batchd.items AS i
                 WHERE i.status = 'queued' AND i.route COLLATE "C" = r.route
                   AND i.group_key IS NOT NULL
                 ORDER BY i.group_key COLLATE "C" LIMIT 1)
          FROM r
         WHERE r.route IS NOT NULL
        UNION ALL
        SELECT k.route,
               (SELECT i.group_key FROM batchd.items AS i
                 WHERE i.status = 'queued' AND i.route COLLATE "C" = k.route
                   AND i.group_key COLLATE "C" > k.group_key
                 ORDER BY i.group_key COLLATE "C" LIMIT 1)
          FROM k
         WHERE k.group_key IS NOT NULL
    ), ins AS (
        INSERT INTO batchd.groups (route, group_key)
        SELECT k.route, k.group_key
          FROM k
         WHERE k.group_key IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM batchd.groups AS g
                            WHERE g.route = k.route AND g.group_key = k.group_key)
         ORDER BY k.route, k.group_key
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::int INTO v_created FROM ins;

    -- 2. Candidates, locked.
    WITH holders AS (
        SELECT i.route, i.group_key, count(*)::int AS n
          FROM batchd.items AS i
         WHERE i.status = 'running' AND i.group_slot
         GROUP BY i.route, i.group_key
    ), cand AS (
        SELECT g.route, g.group_key
          FROM batchd.groups AS g
          LEFT JOIN holders AS h ON h.route = g.route AND h.group_key = g.group_key
         WHERE g.running <> coalesce(h.n, 0)
            OR (g.running = 0 AND g.next_start_at <= now()
                AND NOT EXISTS (SELECT 1 FROM batchd.items AS i
                                 WHERE i.status = 'queued'
                                   AND i.route COLLATE "C" = g.route
                                   AND i.group_key COLLATE "C" = g.group_key))
           FOR UPDATE OF g SKIP LOCKED
    )
    SELECT array_agg(c.route), array_agg(c.group_key)
      INTO v_routes, v_keys
      FROM cand AS c;

    IF v_routes IS NULL THEN
        RETURN QUERY SELECT v_created, 0, 0;
        RETURN;
    END IF;

    -- 3. Recount, with this statement's (later) snapshot.
    WITH c AS (
        SELECT u.route, u.group_key
          FROM unnest(v_routes, v_keys) AS u(route, group_key)
    ), fixed AS (
        UPDATE batchd.groups AS g
           SET running = h.n
          FROM (SELECT c.route, c.group_key,
                       (SELECT count(*)::int FROM batchd.items AS i
                         WHERE i.status = 'running' AND i.group_slot
                           AND i.route = c.route AND i.group_key = c.group_key) AS n
                  FROM c) AS h
         WHERE g.route = h.route
           AND g.group_key = h.group_key
           AND g.running <> h.n
        RETURNING 1
    )
    SELECT count(*)::int INTO v_repaired FROM fixed;

    -- 4. Delete the idle ones (this statement sees the repaired counters).
    WITH c AS (
        SELECT u.route, u.group_key
          FROM unnest(v_routes, v_keys) AS u(route, group_key)
    ), gone AS (
        DELETE FROM batchd.groups AS g
         USING c
         WHERE g.route = c.route
           AND g.group_key = c.group_key
           AND g.running = 0
           AND g.next_start_at <= now()
           AND NOT EXISTS (SELECT 1 FROM batchd.items AS i
                            WHERE i.status = 'queued'
                              AND i.route COLLATE "C" = g.route
                              AND i.group_key COLLATE "C" = g.group_key)
        RETURNING 1
    )
    SELECT count(*)::int INTO v_deleted FROM gone;

    RETURN QUERY SELECT v_created, v_repaired, v_deleted;
END
$fn$;

COMMENT ON FUNCTION batchd.gc_groups() IS
    'Create missing group rows, recount drifted group counters, delete idle group rows; returns the three counts.';

-- Groups whose counter disagrees with the running items holding one of their
-- slots (running is NULL when slot holders have no group row). Empty when all is
-- well. Reads every group and every slot holder: for tests and operators.
CREATE OR REPLACE FUNCTION batchd.check_groups()
RETURNS TABLE (route text, group_key text, running int, actual int)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, batchd
AS $fn$
    WITH holders AS (
        SELECT i.route, i.group_key, count(*)::int AS n
          FROM batchd.items AS i
         WHERE i.status = 'running' AND i.group_slot
         GROUP BY i.route, i.group_key
    )
    SELECT coalesce(g.route, h.route), coalesce(g.group_key, h.group_key),
           g.running, coalesce(h.n, 0)
      FROM batchd.groups AS g
      FULL JOIN holders AS h ON h.route = g.route AND h.group_key = g.group_key
     WHERE g.running IS DISTINCT FROM coalesce(h.n, 0)
     ORDER BY 1, 2;
$fn$;

COMMENT ON FUNCTION batchd.check_groups() IS
    'Groups whose running counter disagrees with the count of running items holding a slot; empty when consistent.';
