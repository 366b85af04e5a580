-- 003_resilience.down.sql: undo 003_resilience.up.sql.
--
-- Run by `batchd migrate` in one transaction (with its advisory lock), which also
-- removes version 3 from batchd.schema_migrations.
--
-- The functions 003 replaced get back their previous definitions, copied
-- verbatim below (each says where it comes from); then what 003 added is
-- dropped. No CASCADE and no IF EXISTS, as in 001: if the schema has drifted,
-- this fails and rolls back rather than dropping more (or less) than 003 made.
-- Items that hold group slots simply stop being counted (the table goes).

---------------------------------------------------------------------------
-- Previous definitions of the replaced functions
---------------------------------------------------------------------------

-- batchd.submit_batch(text, text, jsonb, jsonb), as in 001_core.up.sql:
--
-- batchd.submit_batch(tenant, route, items, options) -> batch id
--
-- items:   non-empty JSON array of JSON objects (the payloads).
-- options: JSON object with optional keys (a JSON null value means "not given";
--          a SQL NULL options argument means no options):
--            name          string, at most 200 characters
--            priority      integer 0..10 (default 5); higher is claimed first
--            max_attempts  integer 1..100 (default 3)
--            metadata      object (default {})
--            group_key     string naming a payload field; dots address nested
--                          fields ("account.id" is payload->'account'->'id'); each
--                          item's group_key is that value as text, NULL if missing
--
-- Any invalid argument raises SQLSTATE 22023 (invalid_parameter_value) with a
-- message that names the field; as the exception aborts the statement, nothing
-- is inserted. On success: one batch row, all items in one INSERT ... SELECT,
-- one 'submitted' event, and a NOTIFY on channel batchd_work with the route as
-- payload (delivered at commit) to wake idle claimers.
CREATE OR REPLACE FUNCTION batchd.submit_batch(p_tenant text, p_route text, p_items jsonb,
                                    p_options jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_key          text;
    v_val          jsonb;
    v_num          numeric;
    v_name         text;
    v_priority     int := 5;
    v_max_attempts int := 3;
    v_metadata     jsonb := '{}';
    v_group_key    text;
    v_group_path   text[];
    v_count        bigint;
    v_bad          bigint;
    v_id           uuid;
BEGIN
    -- tenant and route: non-empty (not just blanks), at most 200 characters.
    IF p_tenant IS NULL OR btrim(p_tenant) = '' OR char_length(p_tenant) > 200 THEN
        RAISE EXCEPTION 'tenant must be a non-empty string of at most 200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_route IS NULL OR btrim(p_route) = '' OR char_length(p_route) > 200 THEN
        RAISE EXCEPTION 'route must be a non-empty string of at most 200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- items: a non-empty array whose elements are all objects. The jsonpath test
    -- walks the array in place (about 3 times cheaper than materialising the
    -- elements); only when it finds a bad element do we look for its index.
    -- (Separate tests: SQL does not promise to evaluate OR operands left to
    -- right, and jsonb_array_length() raises its own error on a non-array.)
    IF p_items IS NULL OR jsonb_typeof(p_items) <> 'array' THEN
        RAISE EXCEPTION 'items must be a non-empty JSON array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_count := jsonb_array_length(p_items);
    IF v_count = 0 THEN
        RAISE EXCEPTION 'items must be a non-empty JSON array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- strict mode: in lax mode a nested array element would be unwrapped and
    -- its contents tested instead of the array itself.
    IF jsonb_path_exists(p_items, 'strict $[*] ? (@.type() != "object")') THEN
        SELECT min(e.ord) INTO v_bad
          FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
         WHERE jsonb_typeof(e.v) <> 'object';
        RAISE EXCEPTION 'items[%] must be a JSON object', v_bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- options
    IF p_options IS NULL THEN
        p_options := '{}';
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR v_key, v_val IN SELECT o.key, o.value FROM jsonb_each(p_options) AS o ORDER BY o.key LOOP
        IF v_key NOT IN ('name', 'priority', 'max_attempts', 'metadata', 'group_key') THEN
            RAISE EXCEPTION 'unknown option "%"', v_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known options: name, priority, max_attempts, metadata, group_key.';
        END IF;
        CONTINUE WHEN jsonb_typeof(v_val) = 'null';   -- null: keep the default

        CASE v_key
        WHEN 'name' THEN
            IF jsonb_typeof(v_val) <> 'string' OR char_length(v_val #>> '{}') > 200 THEN
                RAISE EXCEPTION 'name must be a string of at most 200 characters'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_name := v_val #>> '{}';
        WHEN 'priority' THEN
            -- An integral JSON number (5 and 5.0 are both fine; 1.5, "3" and true
            -- are not); the range is checked on numeric, before any cast to int.
            v_num := CASE WHEN jsonb_typeof(v_val) = 'number' THEN v_val::numeric END;
            IF v_num IS NULL OR v_num <> trunc(v_num) OR v_num NOT BETWEEN 0 AND 10 THEN
                RAISE EXCEPTION 'priority must be an integer from 0 to 10'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_priority := v_num::int;
        WHEN 'max_attempts' THEN
            v_num := CASE WHEN jsonb_typeof(v_val) = 'number' THEN v_val::numeric END;
            IF v_num IS NULL OR v_num <> trunc(v_num) OR v_num NOT BETWEEN 1 AND 100 THEN
                RAISE EXCEPTION 'max_attempts must be an integer from 1 to 100'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_max_attempts := v_num::int;
        WHEN 'metadata' THEN
            IF jsonb_typeof(v_val) <> 'object' THEN
                RAISE EXCEPTION 'metadata must be a JSON object'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_metadata := v_val;
        WHEN 'group_key' THEN
            -- A field name, or a dotted path of non-empty field names.
            IF jsonb_typeof(v_val) <> 'string'
               OR char_length(v_val #>> '{}') NOT BETWEEN 1 AND 200
               OR '' = ANY (string_to_array(v_val #>> '{}', '.')) THEN
                RAISE EXCEPTION 'group_key must be a non-empty string naming a payload field (dots separate nested fields)'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_group_key  := v_val #>> '{}';
            v_group_path := string_to_array(v_group_key, '.');
        END CASE;
    END LOOP;

    -- The batch.
    INSERT INTO batchd.batches (tenant, name, route, priority, max_attempts,
                                group_key, total, metadata)
    VALUES (p_tenant, v_name, p_route, v_priority, v_max_attempts,
            v_group_key, v_count, v_metadata)
    RETURNING batches.id INTO v_id;

    -- All items in one statement. ORDER BY ord makes the identity values follow
    -- the submitted order, so items of equal priority are claimed in that order.
    -- #>> gives the group value as text: strings unquoted, numbers as written,
    -- objects/arrays as JSON text, JSON null and missing fields as SQL NULL.
    INSERT INTO batchd.items (batch_id, seq, route, priority, payload, group_key, max_attempts)
    SELECT v_id, (e.ord - 1)::int, p_route, v_priority, e.v,
           CASE WHEN v_group_path IS NOT NULL THEN e.v #>> v_group_path END,
           v_max_attempts
      FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
     ORDER BY e.ord;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (v_id, 'submitted', jsonb_build_object('total', v_count));

    PERFORM pg_notify('batchd_work', p_route);

    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION batchd.submit_batch(text, text, jsonb, jsonb) IS
    'Validate and store a batch with its items; returns the batch id. Bad input raises SQLSTATE 22023 and stores nothing.';

-- batchd.complete_items(uuid, jsonb), as in 001_core.up.sql:
--
-- batchd.complete_items(worker, items) -> (applied, fenced)
--
-- items: JSON array of {"id", "status": "succeeded"|"failed", "http_status",
-- "result", "error", "provider", "started_at", "finished_at"}; unknown keys are
-- ignored, missing ones are NULL.
--
-- Fencing: an outcome is written only if the item is still running under this
-- worker. Anything else (the item was requeued after this worker was declared
-- dead, completed already, or listed twice in one call) is "fenced": counted,
-- and nothing is changed. applied + fenced = number of array elements.
--
-- Then, still in this call, the touched batches are locked in id order, their
-- counters move by the applied outcomes, and a batch that is pending/processing
-- and whose items are all finished becomes completed (all succeeded), failed
-- (none succeeded) or completed_with_errors, with an event carrying the final
-- counts. A cancelled batch keeps its status, but its counters still move.
--
-- Three statements: (1) update the items, aggregating per-batch deltas;
-- (2) lock the batches in id order; (3) apply the deltas. Statement (3) takes
-- its snapshot after (2) obtained the locks, so it reads the batches' current
-- counters and status, and knows exactly which batches it finishes.
CREATE OR REPLACE FUNCTION batchd.complete_items(p_worker uuid, p_items jsonb)
RETURNS TABLE (applied int, fenced int)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
#variable_conflict use_column
DECLARE
    v_total     int;
    v_applied   int;
    v_batches   uuid[];
    v_succeeded int[];
    v_failed    int[];
    v_bad       bigint;
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
        OR (e.v ->> 'status') IS DISTINCT FROM 'succeeded' AND (e.v ->> 'status') IS DISTINCT FROM 'failed';
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'items[%] must be an object with a numeric "id" and "status" "succeeded" or "failed"', v_bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- (1) Fenced update of the items, and the per-batch deltas. If an id appears
    -- twice, the join matches the row twice but UPDATE changes it once: the
    -- duplicate counts as fenced.
    WITH input AS (
        SELECT x.*
          FROM jsonb_to_recordset(p_items) AS x(id bigint, status text, http_status int,
                                               result jsonb, error text, provider text,
                                               started_at timestamptz, finished_at timestamptz)
    ), done AS (
        UPDATE batchd.items AS i
           SET status      = x.status,
               http_status = x.http_status,
               result      = x.result,
               error       = x.error,
               provider    = x.provider,
               started_at  = coalesce(x.started_at, i.started_at),
               finished_at = coalesce(x.finished_at, now())
          FROM input AS x
         WHERE i.id = x.id
           AND i.status = 'running'
           AND i.worker_id = p_worker
        RETURNING i.batch_id, i.status
    ), per_batch AS (
        SELECT d.batch_id,
               count(*) FILTER (WHERE d.status = 'succeeded')::int AS succeeded,
               count(*) FILTER (WHERE d.status = 'failed')::int    AS failed
          FROM done AS d
         GROUP BY d.batch_id
    )
    SELECT coalesce(sum(p.succeeded + p.failed), 0)::int,
           array_agg(p.batch_id ORDER BY p.batch_id),
           array_agg(p.succeeded ORDER BY p.batch_id),
           array_agg(p.failed ORDER BY p.batch_id)
      INTO v_applied, v_batches, v_succeeded, v_failed
      FROM per_batch AS p;

    IF v_applied > 0 THEN
        -- (2) Lock the touched batches in id order (the global batch lock order).
        PERFORM 1
           FROM batchd.batches AS b
          WHERE b.id = ANY (v_batches)
          ORDER BY b.id
            FOR NO KEY UPDATE;

        -- (3) Apply the deltas; finish the batches that are now complete.
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
    'Record outcomes of items running under this worker (others are fenced), update batch counters, finish batches.';

-- batchd.release_items(uuid, bigint[]), as in 001_core.up.sql:
--
-- batchd.release_items(worker, ids) -> number released
--
-- Put items running under this worker back to queued without spending an
-- attempt (graceful stop, or items this worker cannot serve any more). ids NULL
-- means all of the worker's running items. Logs a 'released' event per batch
-- and notifies batchd_work once per distinct route (delivered at commit).
CREATE OR REPLACE FUNCTION batchd.release_items(p_worker uuid, p_ids bigint[])
RETURNS int
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_custom_plan
AS $fn$
DECLARE
    v_count  int;
    v_routes text[];
    v_route  text;
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    WITH released AS (
        UPDATE batchd.items AS i
           SET status = 'queued', attempts = greatest(i.attempts - 1, 0),
               worker_id = NULL, started_at = NULL, run_after = now()
         WHERE i.status = 'running'
           AND i.worker_id = p_worker
           AND (p_ids IS NULL OR i.id = ANY (p_ids))
        RETURNING i.batch_id, i.route
    ), events AS (
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT r.batch_id, 'released', jsonb_build_object('items', count(*))
          FROM released AS r
         GROUP BY r.batch_id
         ORDER BY r.batch_id
    )
    SELECT count(*)::int, array_agg(DISTINCT r.route)
      INTO v_count, v_routes
      FROM released AS r;

    IF v_routes IS NOT NULL THEN
        FOREACH v_route IN ARRAY v_routes LOOP
            PERFORM pg_notify('batchd_work', v_route);
        END LOOP;
    END IF;

    RETURN v_count;
END
$fn$;

COMMENT ON FUNCTION batchd.release_items(uuid, bigint[]) IS
    'Requeue items running under a worker (all when p_ids is NULL) without spending an attempt; returns the count.';
---------------------------------------------------------------------------
-- Objects added by 003
---------------------------------------------------------------------------

DROP FUNCTION batchd.check_groups();
DROP FUNCTION batchd.gc_groups();
DROP FUNCTION batchd.claim_items(uuid, text[], int, text[], int[], float8[]);

DROP TRIGGER items_clear_group_slot ON batchd.items;
DROP FUNCTION batchd.items_clear_group_slot();

DROP INDEX batchd.items_group_slot_idx;
DROP INDEX batchd.items_group_claim_idx;

DROP TABLE batchd.groups;

ALTER TABLE batchd.items
    DROP COLUMN group_slot,
    DROP COLUMN tries;
