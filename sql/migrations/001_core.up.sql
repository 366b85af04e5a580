-- 001_core.up.sql: the core batchd schema (tables, indexes, SQL API).
--
-- The migration runner (`batchd migrate`) runs this file in one transaction while
-- holding an advisory lock, and records the version in batchd.schema_migrations;
-- that table belongs to the runner, so this file neither creates it nor uses
-- BEGIN/COMMIT. Built-in PostgreSQL 15 features only: no extensions
-- (gen_random_uuid() is in core since PostgreSQL 13).
--
-- Lock order (every function here follows it, and so must any other SQL that
-- writes these tables, such as cancel, retry or the dead-worker reaper):
--   1. item rows first (claims take them with SKIP LOCKED, so they never wait);
--   2. then batch rows, always sorted by id, with FOR NO KEY UPDATE.
-- Because nobody holds a batch lock while waiting for an item, and batch locks
-- are always taken in one global order, claims, completions and releases never
-- deadlock with one another. FOR NO KEY UPDATE (not FOR UPDATE) is used on
-- batches because counters and status are not key columns: the FOR KEY SHARE
-- locks taken by foreign-key checks (inserting items or batch_events) do not
-- conflict with it, so inserting an event never waits for a counter update.
--
-- Every function fixes its search_path (pg_catalog first, then batchd), so that
-- objects in a caller's schemas can never shadow the ones used here.
--
-- Every function is meant to run in READ COMMITTED (the default): multi-step
-- functions rely on each statement taking a fresh snapshot after the previous
-- statement acquired its row locks. Call each of claim/complete/release in its
-- own transaction (autocommit): batch locks are held to commit, and two calls in
-- one transaction would no longer take them in one global order.

CREATE SCHEMA IF NOT EXISTS batchd;

COMMENT ON SCHEMA batchd IS 'batchd: batches of work items drained through external HTTP APIs';

---------------------------------------------------------------------------
-- Tables
---------------------------------------------------------------------------

-- One submitted batch. The counters (succeeded/failed/cancelled) are kept up to
-- date by complete_items() and by cancellation, so that progress is one row read;
-- batchd.check_consistency() verifies them against the items.
CREATE TABLE batchd.batches (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant       text        NOT NULL,
    name         text,
    route        text        NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                 CONSTRAINT batches_status_check CHECK (status IN
                     ('pending', 'processing', 'completed',
                      'completed_with_errors', 'failed', 'cancelled')),
    priority     int         NOT NULL DEFAULT 5
                 CONSTRAINT batches_priority_check CHECK (priority BETWEEN 0 AND 10),
    max_attempts int         NOT NULL DEFAULT 3
                 CONSTRAINT batches_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 100),
    group_key    text,       -- payload field (dotted path) used as group key, or NULL
    total        int         NOT NULL CONSTRAINT batches_total_check CHECK (total >= 0),
    succeeded    int         NOT NULL DEFAULT 0 CONSTRAINT batches_succeeded_check CHECK (succeeded >= 0),
    failed       int         NOT NULL DEFAULT 0 CONSTRAINT batches_failed_check CHECK (failed >= 0),
    cancelled    int         NOT NULL DEFAULT 0 CONSTRAINT batches_cancelled_check CHECK (cancelled >= 0),
    metadata     jsonb       NOT NULL DEFAULT '{}'
                 CONSTRAINT batches_metadata_check CHECK (jsonb_typeof(metadata) = 'object'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);

COMMENT ON TABLE batchd.batches IS 'Submitted batches: one row per batch, with live counters';
COMMENT ON COLUMN batchd.batches.group_key IS
    'Name of the payload field (dotted path such as "account.id" for nested fields) whose value groups items, or NULL';
COMMENT ON COLUMN batchd.batches.total IS 'Number of items submitted; succeeded + failed + cancelled = total when finished';

-- Listing: GET /v1/batches shows a tenant''s batches, newest first, paged by
-- keyset (created_at, id).
CREATE INDEX batches_tenant_created_idx
    ON batchd.batches (tenant, created_at DESC, id);

-- One work item: one external call. route and priority are copied from the batch
-- so that the claim reads this table only.
--
-- Each row is written three times (insert, claim, completion). No fillfactor
-- below 100: both updates change status, which appears in the partial indexes'
-- predicates (and the claim sets worker_id, which is indexed), so they can never
-- be HOT updates and every update inserts new index entries whatever the free
-- space; and a page holds ~30 rows, so 10-20% free space would keep only a few
-- of the new versions on the same page. Measured: claim+complete of 150k items
-- ran no faster at fillfactor 85 than at 100 (within noise), while submit wrote
-- 19% more heap pages. Space freed by dead versions is reused through page
-- pruning and vacuum instead.
-- The table is a queue with constant churn: autovacuum runs after 2% of rows
-- changed (default 20%), so dead versions and the dead claim-index entries of
-- claimed items (which every claim otherwise walks past) are cleared quickly.
CREATE TABLE batchd.items (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id     uuid        NOT NULL REFERENCES batchd.batches (id) ON DELETE CASCADE,
    seq          int         NOT NULL CONSTRAINT items_seq_check CHECK (seq >= 0),
    route        text        NOT NULL,
    priority     int         NOT NULL,
    payload      jsonb       NOT NULL,
    group_key    text,
    status       text        NOT NULL DEFAULT 'queued'
                 CONSTRAINT items_status_check CHECK (status IN
                     ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts     int         NOT NULL DEFAULT 0 CONSTRAINT items_attempts_check CHECK (attempts >= 0),
    max_attempts int         NOT NULL,
    run_after    timestamptz NOT NULL DEFAULT now(),
    worker_id    uuid,       -- no foreign key: rows of dead workers outlive the worker row
    provider     text,
    http_status  int,
    result       jsonb,
    error        text,
    started_at   timestamptz,
    finished_at  timestamptz,
    CONSTRAINT items_batch_seq_key UNIQUE (batch_id, seq)
) WITH (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

COMMENT ON TABLE batchd.items IS 'Work items, one external call each; a queue claimed with SKIP LOCKED';
COMMENT ON COLUMN batchd.items.seq IS '0-based position of the item in the submitted array';
COMMENT ON COLUMN batchd.items.group_key IS 'Value of the batch''s group field in this payload, as text, or NULL';
COMMENT ON COLUMN batchd.items.result IS 'Response body as JSON, or the body as a JSON string when it was not JSON';
COMMENT ON COLUMN batchd.items.worker_id IS 'Worker that claimed the item last (kept after completion for the record)';

-- The claim index. Partial, so it holds only queued items: finished items (the
-- bulk of the table) cost the claim nothing, and the claim reads O(limit) index
-- entries. Its key order is the claim order (priority DESC, id), so the claim is
-- an ordered index scan that stops after `limit` rows, no sort.
-- run_after and route are trailing key columns (not INCLUDE columns): as keys,
-- the btree scan checks `run_after <= now()` (and `route = p_routes[1]` when the
-- worker serves one route) on the index tuple itself, so items waiting for a
-- retry back-off, or queued for routes this worker does not serve, are skipped
-- without visiting the heap. (INCLUDE columns would only be checked after the
-- heap fetch.) Since id is unique, the trailing keys do not change the order.
-- A claimed item leaves a dead entry here until vacuum; later claims skip it
-- cheaply once it is marked dead (after no snapshot can see the old version),
-- so a very long transaction elsewhere makes claims slower until it ends.
CREATE INDEX items_claim_idx
    ON batchd.items (priority DESC, id, run_after, route)
    WHERE status = 'queued';

-- Items in flight per worker: release on shutdown, requeue of a dead worker's items.
CREATE INDEX items_running_worker_idx
    ON batchd.items (worker_id)
    WHERE status = 'running';

-- One row per running batchd process (id is a fresh uuid per process start).
CREATE TABLE batchd.workers (
    id           uuid        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          int         NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    inflight     int         NOT NULL DEFAULT 0
);

COMMENT ON TABLE batchd.workers IS 'Live batchd processes; a heartbeat older than lease_timeout means dead';

-- Audit trail of batch state changes, retries and releases.
CREATE TABLE batchd.batch_events (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id uuid        NOT NULL REFERENCES batchd.batches (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    event    text        NOT NULL,  -- submitted, started, completed, completed_with_errors,
                                    -- failed, cancelled, retried, released, ...
    detail   jsonb       NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE batchd.batch_events IS 'Audit trail of batch state changes, retries and releases';

CREATE INDEX batch_events_batch_idx ON batchd.batch_events (batch_id, id);

---------------------------------------------------------------------------
-- Submit
---------------------------------------------------------------------------

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
CREATE FUNCTION batchd.submit_batch(p_tenant text, p_route text, p_items jsonb,
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

---------------------------------------------------------------------------
-- Claim
---------------------------------------------------------------------------

-- batchd.claim_items(worker, routes, limit): claim up to `limit` due, queued
-- items of the given routes, highest priority first then oldest id, skipping
-- rows other claimers hold (SKIP LOCKED). Claimed items become running under
-- this worker with one more attempt. Batches of claimed items that are still
-- pending become processing (with a 'started' event); those batch rows are
-- locked in id order after the item rows (see the lock order at the top).
--
-- One SQL statement does it all. The picker is an ordered scan of the partial
-- claim index that stops after `limit` locked rows: O(limit) in live entries,
-- whatever the number of finished items, but it steps over the dead entries of
-- items claimed since the last vacuum (010's claim_items resumes past them). plan_cache_mode = force_custom_plan makes PL/pgSQL
-- plan the statement with the actual limit and routes on every call (a generic
-- plan would have to guess the LIMIT as 10% of the queue and may pick a sort);
-- planning costs well under a millisecond.
--
-- With one route, the route test is a plain equality that the btree checks on
-- the index tuple; with several, it is `= ANY(array)`, which the planner can only
-- apply after the heap fetch if it is to keep the index order, so that form is
-- kept for the multi-route case only.
CREATE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit int)
RETURNS TABLE (id bigint, batch_id uuid, route text, payload jsonb,
               attempts int, max_attempts int, group_key text)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    IF cardinality(p_routes) = 1 THEN
        RETURN QUERY
        WITH picked AS (
            SELECT i.id
              FROM batchd.items AS i
             WHERE i.status = 'queued'
               AND i.run_after <= now()
               AND i.route = p_routes[1]
             ORDER BY i.priority DESC, i.id
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE batchd.items AS i
               SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
                   started_at = now(), finished_at = NULL
              FROM picked
             WHERE i.id = picked.id
            RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                      i.max_attempts, i.group_key, i.priority
        ), to_start AS (
            -- Pending batches among those touched, locked in id order. If another
            -- transaction started (or cancelled) the batch meanwhile, the status
            -- test is re-checked on the new row version and the batch is skipped.
            SELECT b.id
              FROM batchd.batches AS b
             WHERE b.id IN (SELECT c.batch_id FROM claimed AS c)
               AND b.status = 'pending'
             ORDER BY b.id
               FOR NO KEY UPDATE
        ), started AS (
            UPDATE batchd.batches AS b
               SET status = 'processing', started_at = now()
              FROM to_start
             WHERE b.id = to_start.id
            RETURNING b.id
        ), started_events AS (
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT s.id, 'started', jsonb_build_object('worker', p_worker)
              FROM started AS s
        )
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM claimed AS c
         ORDER BY c.priority DESC, c.id;
    ELSE
        RETURN QUERY
        WITH picked AS (
            SELECT i.id
              FROM batchd.items AS i
             WHERE i.status = 'queued'
               AND i.run_after <= now()
               AND i.route = ANY (p_routes)
             ORDER BY i.priority DESC, i.id
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE batchd.items AS i
               SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
                   started_at = now(), finished_at = NULL
              FROM picked
             WHERE i.id = picked.id
            RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                      i.max_attempts, i.group_key, i.priority
        ), to_start AS (
            SELECT b.id
              FROM batchd.batches AS b
             WHERE b.id IN (SELECT c.batch_id FROM claimed AS c)
               AND b.status = 'pending'
             ORDER BY b.id
               FOR NO KEY UPDATE
        ), started AS (
            UPDATE batchd.batches AS b
               SET status = 'processing', started_at = now()
              FROM to_start
             WHERE b.id = to_start.id
            RETURNING b.id
        ), started_events AS (
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT s.id, 'started', jsonb_build_object('worker', p_worker)
              FROM started AS s
        )
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM claimed AS c
         ORDER BY c.priority DESC, c.id;
    END IF;
END
$fn$;

COMMENT ON FUNCTION batchd.claim_items(uuid, text[], int) IS
    'Claim up to p_limit due queued items of the given routes for a worker (SKIP LOCKED); starts pending batches.';

---------------------------------------------------------------------------
-- Complete
---------------------------------------------------------------------------

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
CREATE FUNCTION batchd.complete_items(p_worker uuid, p_items jsonb)
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

---------------------------------------------------------------------------
-- Release
---------------------------------------------------------------------------

-- batchd.release_items(worker, ids) -> number released
--
-- Put items running under this worker back to queued without spending an
-- attempt (graceful stop, or items this worker cannot serve any more). ids NULL
-- means all of the worker's running items. Logs a 'released' event per batch
-- and notifies batchd_work once per distinct route (delivered at commit).
CREATE FUNCTION batchd.release_items(p_worker uuid, p_ids bigint[])
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
-- Workers
---------------------------------------------------------------------------

-- Register (or re-register after a reconnect) a worker; refreshes its heartbeat.
-- started_at keeps its first value.
CREATE FUNCTION batchd.register_worker(p_id uuid, p_hostname text, p_pid int, p_version text)
RETURNS void
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
    INSERT INTO batchd.workers AS w (id, hostname, pid, version)
    VALUES (p_id, p_hostname, p_pid, p_version)
    ON CONFLICT (id) DO UPDATE
       SET hostname = excluded.hostname, pid = excluded.pid,
           version = excluded.version, heartbeat_at = now();
$fn$;

COMMENT ON FUNCTION batchd.register_worker(uuid, text, int, text) IS
    'Insert or refresh a worker row (heartbeat_at = now()).';

-- Heartbeat: returns false when the worker row is gone (another worker declared
-- this one dead and removed it): the caller must then stop completing items it
-- holds (they are fenced anyway) and re-register.
CREATE FUNCTION batchd.heartbeat(p_id uuid, p_inflight int)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    UPDATE batchd.workers
       SET heartbeat_at = now(), inflight = coalesce(p_inflight, 0)
     WHERE id = p_id;
    RETURN FOUND;
END
$fn$;

COMMENT ON FUNCTION batchd.heartbeat(uuid, int) IS
    'Refresh a worker''s heartbeat and in-flight count; false when the worker row is gone.';

-- Deregister at graceful stop: requeue whatever the worker still holds (no
-- attempt spent), then delete its row. Returns the number of items released.
CREATE FUNCTION batchd.deregister_worker(p_id uuid)
RETURNS int
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_released int;
BEGIN
    v_released := batchd.release_items(p_id, NULL);
    DELETE FROM batchd.workers WHERE id = p_id;
    RETURN v_released;
END
$fn$;

COMMENT ON FUNCTION batchd.deregister_worker(uuid) IS
    'Release a worker''s running items and delete its row; returns the number released.';

---------------------------------------------------------------------------
-- Checks
---------------------------------------------------------------------------

-- Batches whose counters disagree with their items: total vs number of items,
-- and succeeded/failed/cancelled vs items in those statuses. Empty when all is
-- well. Reads every item (one hash aggregate): meant for tests and operators,
-- not for the hot path.
CREATE FUNCTION batchd.check_consistency()
RETURNS TABLE (batch_id uuid, total int, items int,
               succeeded int, items_succeeded int,
               failed int, items_failed int,
               cancelled int, items_cancelled int)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, batchd
AS $fn$
    WITH agg AS (
        SELECT i.batch_id,
               count(*)::int                                        AS items,
               count(*) FILTER (WHERE i.status = 'succeeded')::int  AS items_succeeded,
               count(*) FILTER (WHERE i.status = 'failed')::int     AS items_failed,
               count(*) FILTER (WHERE i.status = 'cancelled')::int  AS items_cancelled
          FROM batchd.items AS i
         GROUP BY i.batch_id
    )
    SELECT b.id, b.total, coalesce(a.items, 0),
           b.succeeded, coalesce(a.items_succeeded, 0),
           b.failed,    coalesce(a.items_failed, 0),
           b.cancelled, coalesce(a.items_cancelled, 0)
      FROM batchd.batches AS b
      LEFT JOIN agg AS a ON a.batch_id = b.id
     WHERE (b.total, b.succeeded, b.failed, b.cancelled)
           IS DISTINCT FROM
           (coalesce(a.items, 0), coalesce(a.items_succeeded, 0),
            coalesce(a.items_failed, 0), coalesce(a.items_cancelled, 0))
     ORDER BY b.id;
$fn$;

COMMENT ON FUNCTION batchd.check_consistency() IS
    'Batches whose counters disagree with their items'' statuses; empty when consistent.';
