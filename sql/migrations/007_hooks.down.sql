-- 007_hooks.down.sql: revert 007_hooks.up.sql.
--
-- complete_items() gets back its 003 definition, copied verbatim below; then
-- what 007 added is dropped (no CASCADE, no IF EXISTS: if the schema has
-- drifted, this fails and rolls back).

-- batchd.complete_items(uuid, jsonb), as in 003_resilience.up.sql:
--
-- batchd.complete_items(worker, items) -> (applied, fenced)
--
-- 001's complete_items, plus:
--   * "tries": a JSON object (per-provider try counts of this run), stored in
--     items.tries (NULL when missing or null); any other type is rejected.
--   * "status": "queued" -- a deferral: the item waits (a retry delay longer
--     than the worker keeps in memory, or every provider's breaker is open). It
--     goes back to queued with run_after = the record's "run_after" (a finite
--     timestamptz as text, required), attempts - 1 (no attempt spent; never
--     below 0), worker_id, started_at and finished_at NULL, error and provider
--     from the record (the error says why it waits), tries stored; http_status
--     and result are left as they are. No batch counter moves, no NOTIFY (the
--     claimers' poll finds it at run_after). It counts as applied, and is fenced
--     like any other record when the item is not running under this worker.
--   * every applied record gives back the item's group slot: group_slot is
--     cleared and the group's running decremented in the same statement.
-- "run_after" is read for "queued" records only; other records ignore it.
--
-- Statements: (1a) lock the items (id order, by primary key); (1b) lock the
-- group rows of those holding a slot ((route, group_key) order); (1c) lock
-- their batch rows (id order); (1d) update the items, give back their slots,
-- aggregate per-batch deltas of succeeded/failed; (3) apply the deltas, as
-- 001. 001 locked the batches after updating the items; here they are locked
-- before, so that a trigger on items that touches batches (006) finds them
-- locked already. Id sets travel as
-- arrays, constants to the planner (force_custom_plan), so that no plan depends
-- on the statistics of running items (often stale in a queue).
CREATE OR REPLACE FUNCTION batchd.complete_items(p_worker uuid, p_items jsonb)
RETURNS TABLE (applied int, fenced int)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_total     int;
    v_applied   int;
    v_batches   uuid[];
    v_succeeded int[];
    v_failed    int[];
    v_bad       bigint;
    v_ord       bigint;
    v_text      text;
    v_ids       bigint[];
    v_locked    bigint[];
    v_slot_ids  bigint[];
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_items IS NULL OR jsonb_typeof(p_items) <> 'array' THEN
        RAISE EXCEPTION 'items must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_total := jsonb_array_length(p_items);
    IF v_total = 0 THEN
        RETURN QUERY SELECT 0, 0;
        RETURN;
    END IF;

    -- Reject a malformed element outright rather than record garbage: this is a
    -- bug in the caller, and the whole call changes nothing.
    SELECT min(e.ord) INTO v_bad
      FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
     WHERE jsonb_typeof(e.v) <> 'object'
        OR jsonb_typeof(e.v -> 'id') IS DISTINCT FROM 'number'
        OR coalesce(e.v ->> 'status', '') NOT IN ('succeeded', 'failed', 'queued');
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'items[%] must be an object with a numeric "id" and "status" "succeeded", "failed" or "queued"', v_bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT min(e.ord) INTO v_bad
      FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
     WHERE jsonb_typeof(e.v -> 'tries') NOT IN ('object', 'null');
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'items[%]: "tries" must be a JSON object', v_bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Deferrals need a finite run_after. The cast is tried on all of them at
    -- once; only if one fails do we look for it, one by one.
    IF jsonb_path_exists(p_items, '$[*] ? (@.status == "queued")') THEN
        BEGIN
            SELECT min(e.ord) INTO v_bad
              FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
             WHERE e.v ->> 'status' = 'queued'
               AND (jsonb_typeof(e.v -> 'run_after') IS DISTINCT FROM 'string'
                    OR NOT isfinite((e.v ->> 'run_after')::timestamptz));
        EXCEPTION WHEN data_exception THEN
            v_bad := NULL;
            FOR v_ord, v_text IN
                SELECT e.ord, e.v ->> 'run_after'
                  FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
                 WHERE e.v ->> 'status' = 'queued'
                 ORDER BY e.ord
            LOOP
                BEGIN
                    PERFORM v_text::timestamptz;
                EXCEPTION WHEN data_exception THEN
                    v_bad := v_ord;
                    EXIT;
                END;
            END LOOP;
        END;
        IF v_bad IS NOT NULL THEN
            RAISE EXCEPTION 'items[%]: a "queued" record needs "run_after", a finite timestamp (timestamptz text)', v_bad - 1
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    -- (1a) Lock the items this call may change: running under this worker, in id
    -- order, by primary key (the id list is a constant to the planner:
    -- force_custom_plan). Their group_slot, read under the lock, is current.
    v_ids := ARRAY(SELECT (e.v ->> 'id')::bigint
                     FROM jsonb_array_elements(p_items) AS e(v));
    SELECT array_agg(s.id), array_agg(s.id) FILTER (WHERE s.group_slot)
      INTO v_locked, v_slot_ids
      FROM (SELECT i.id, i.group_slot
              FROM batchd.items AS i
             WHERE i.id = ANY (v_ids)
               AND i.status = 'running'
               AND i.worker_id = p_worker
             ORDER BY i.id
               FOR UPDATE) AS s;
    IF v_locked IS NULL THEN
        RETURN QUERY SELECT 0, v_total;
        RETURN;
    END IF;

    -- (1b) Lock the group rows of the slot holders, in (route, group_key)
    -- order, then (1c) the batch rows of all the locked items, in id order,
    -- before any item changes: a trigger on items may lock batch rows during
    -- the update (006's does, for a deferral in a cancelled batch), in row
    -- order; holding them already, it never waits out of order.
    IF v_slot_ids IS NOT NULL THEN
        PERFORM 1
           FROM batchd.groups AS g
          WHERE (g.route, g.group_key) IN (SELECT i.route, i.group_key
                                             FROM batchd.items AS i
                                            WHERE i.id = ANY (v_slot_ids))
          ORDER BY g.route, g.group_key
            FOR NO KEY UPDATE;
    END IF;
    PERFORM 1
       FROM batchd.batches AS b
      WHERE b.id IN (SELECT i.batch_id FROM batchd.items AS i WHERE i.id = ANY (v_locked))
      ORDER BY b.id
        FOR NO KEY UPDATE;

    -- (1d) Update exactly the locked rows, give back their group slots,
    -- aggregate per-batch deltas. If an id appears twice, the join matches the
    -- row twice but UPDATE changes it once: the duplicate counts as fenced. (A
    -- deferral that a trigger turns into something else, such as 006's
    -- 'cancelled', is applied as that; only succeeded and failed move the
    -- counters here.)
    WITH input AS (
        SELECT x.*
          FROM jsonb_to_recordset(p_items) AS x(id bigint, status text, http_status int,
                                               result jsonb, error text, provider text,
                                               started_at timestamptz, finished_at timestamptz,
                                               run_after text, tries jsonb)
    ), done AS (
        UPDATE batchd.items AS i
           SET status      = x.status,
               http_status = CASE WHEN x.status = 'queued' THEN i.http_status ELSE x.http_status END,
               result      = CASE WHEN x.status = 'queued' THEN i.result ELSE x.result END,
               error       = x.error,
               provider    = x.provider,
               tries       = nullif(x.tries, 'null'::jsonb),
               started_at  = CASE WHEN x.status = 'queued' THEN NULL
                                  ELSE coalesce(x.started_at, i.started_at) END,
               finished_at = CASE WHEN x.status = 'queued' THEN NULL
                                  ELSE coalesce(x.finished_at, now()) END,
               run_after   = CASE WHEN x.status = 'queued' THEN x.run_after::timestamptz
                                  ELSE i.run_after END,
               attempts    = CASE WHEN x.status = 'queued' THEN greatest(i.attempts - 1, 0)
                                  ELSE i.attempts END,
               worker_id   = CASE WHEN x.status = 'queued' THEN NULL ELSE i.worker_id END,
               group_slot  = false
          FROM input AS x
         WHERE i.id = x.id
           AND i.id = ANY (v_locked)
           AND i.status = 'running'
           AND i.worker_id = p_worker
        RETURNING i.batch_id, i.status, i.route, i.group_key,
                  i.id = ANY (v_slot_ids) AS had_slot
    ), slots AS (
        SELECT d.route, d.group_key, count(*)::int AS n
          FROM done AS d
         WHERE d.had_slot
         GROUP BY d.route, d.group_key
    ), freed AS (
        -- Rows locked in (1b). greatest(): should the counter ever be low (it
        -- cannot, unless SQL outside these functions touched it), a completion
        -- must still go through; check_groups() shows the drift, gc_groups()
        -- repairs it.
        UPDATE batchd.groups AS g
           SET running = greatest(g.running - s.n, 0)
          FROM slots AS s
         WHERE g.route = s.route
           AND g.group_key = s.group_key
    ), per_batch AS (
        SELECT d.batch_id,
               count(*)::int                                        AS n,
               count(*) FILTER (WHERE d.status = 'succeeded')::int  AS succeeded,
               count(*) FILTER (WHERE d.status = 'failed')::int     AS failed
          FROM done AS d
         GROUP BY d.batch_id
    )
    SELECT coalesce(sum(p.n), 0)::int,
           array_agg(p.batch_id ORDER BY p.batch_id)  FILTER (WHERE p.succeeded + p.failed > 0),
           array_agg(p.succeeded ORDER BY p.batch_id) FILTER (WHERE p.succeeded + p.failed > 0),
           array_agg(p.failed ORDER BY p.batch_id)    FILTER (WHERE p.succeeded + p.failed > 0)
      INTO v_applied, v_batches, v_succeeded, v_failed
      FROM per_batch AS p;

    IF v_batches IS NOT NULL THEN
        -- (2) The touched batches are locked (1c). (3) Apply the deltas; finish
        -- the batches that are now complete. This statement's snapshot is taken
        -- after the locks, so it reads the batches' current counters and status.
        WITH delta AS (
            SELECT d.batch_id, d.succeeded, d.failed
              FROM unnest(v_batches, v_succeeded, v_failed) AS d(batch_id, succeeded, failed)
        ), next AS (
            SELECT b.id,
                   b.succeeded + d.succeeded AS succeeded,
                   b.failed + d.failed       AS failed,
                   b.cancelled,
                   CASE
                       WHEN b.status NOT IN ('pending', 'processing')
                         OR b.succeeded + d.succeeded + b.failed + d.failed + b.cancelled < b.total
                           THEN NULL                             -- not finishing now
                       WHEN b.succeeded + d.succeeded = b.total THEN 'completed'
                       WHEN b.succeeded + d.succeeded = 0       THEN 'failed'
                       ELSE 'completed_with_errors'
                   END AS final_status
              FROM batchd.batches AS b
              JOIN delta AS d ON d.batch_id = b.id
        ), upd AS (
            UPDATE batchd.batches AS b
               SET succeeded   = n.succeeded,
                   failed      = n.failed,
                   status      = coalesce(n.final_status, b.status),
                   finished_at = CASE WHEN n.final_status IS NOT NULL THEN now() ELSE b.finished_at END
              FROM next AS n
             WHERE b.id = n.id
        )
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT n.id, n.final_status,
               jsonb_build_object('succeeded', n.succeeded, 'failed', n.failed,
                                  'cancelled', n.cancelled)
          FROM next AS n
         WHERE n.final_status IS NOT NULL
         ORDER BY n.id;
    END IF;

    RETURN QUERY SELECT v_applied, v_total - v_applied;
END
$fn$;

COMMENT ON FUNCTION batchd.complete_items(uuid, jsonb) IS
    'Record outcomes (or deferrals) of items running under this worker (others are fenced), give back group slots, update batch counters, finish batches.';

DROP TRIGGER batches_on_done ON batchd.batches;
DROP FUNCTION batchd.batches_on_done();
DROP FUNCTION batchd.sync_routes(jsonb);
DROP FUNCTION batchd.hook_call(text);
DROP TABLE batchd.routes;
