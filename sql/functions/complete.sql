-- complete.sql: recording outcomes. complete_items() with the routes' result
-- hooks, record_completions(), and the batch callback (on_batch_done).
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The definition of each object here is the only
-- one; edit it in place.
--
-- Routes' hooks live in batchd.routes (one row per route a batchd serves,
-- written at every (re)connect and reload through batchd.sync_routes(), see
-- routes.sql). Every SQL path that records results or ends a batch reads it,
-- so the hooks run whoever does the work: a worker's completions, the
-- dead-worker reaper, a cancel from the REST API or psql.
--
-- Result hook: `[route NAME] hook = schema.function`, a function
-- schema.function(item batchd.items) (any return type; the value is ignored).
--   * It runs once per recorded outcome (succeeded or failed), after the item
--     row is updated, in the transaction that records it, with the finished
--     row (status, result, provider, http_status, error, tries, attempts,
--     ...), each call in a subtransaction of its own (BEGIN ... EXCEPTION):
--     its effects commit together with the item's record, or not at all.
--   * If it raises, only that item is affected; the other items of the same
--     flush are recorded and their hooks' effects kept:
--       - SQLSTATE 'BDRTY' (RAISE ... USING ERRCODE = 'BDRTY'), and also
--         40001 serialization_failure, 40P01 deadlock_detected, 55P03
--         lock_not_available (transient by nature): the hook asks for a
--         retry. The item goes back to 'queued' with its attempt counted,
--         run_after = now() + min(2^(attempts-1), 60) seconds, error
--         'hook asked for a retry: <message>' (until it runs again), worker_id,
--         started_at and finished_at cleared, the last outcome's provider,
--         http_status and result kept. When attempts >= max_attempts it fails
--         instead, as below. (In a batch that was cancelled meanwhile it is
--         cancelled, as the items_requeue_cancelled trigger does for any
--         requeue.)
--       - any other error: the item is 'failed' with error
--         'hook failed: <message>' (provider, http_status and result stay as
--         the provider answered); the batch counts it as failed, not
--         succeeded. No retry.
--     The hook's own changes are rolled back in both cases.
--   * Items of routes without a hook cost nothing more: complete_items() reads
--     batchd.routes (a few rows) once per call, and when no route of the call
--     has a hook it runs its plain statement.
--   * Deferrals ("status":"queued" records) and items a trigger cancels are not
--     finished: no hook call.
--
-- Batch callback: `[route NAME] on_batch_done = schema.function`, a function
-- schema.function(batch batchd.batches).
--   * Called once per end of a batch: when the batch reaches a terminal status
--     with finished_at set (completed, completed_with_errors, failed; cancelled
--     once nothing of it runs any more -- at the cancel when nothing was
--     running, else when the last running item is recorded or put back). It
--     is a trigger (AFTER UPDATE, WHEN finished_at goes from NULL to a value),
--     so every path is covered: complete_items() (workers and the reaper),
--     cancel_batch(), release_items() through items_requeue_cancelled. The
--     transition happens once, in one UPDATE of the batch row under its row
--     lock, so two batchd processes never both see it, and a worker killed
--     mid-batch either committed it or did not. retry_batch() reopens a batch
--     (finished_at back to NULL): its next end calls the callback again.
--   * The argument is the batch row as it ends (status, counters,
--     finished_at). The callback runs after the statement that ended the batch
--     (after the result hooks of that flush), in the same transaction.
--   * If it raises, its changes are rolled back (a subtransaction) but the
--     batch stays ended: a 'callback_failed' event (function, status, sqlstate,
--     error) is added to batchd.batch_events. A successful call adds a
--     'callback_done' event (function, status). batchd does not call it again
--     by itself; a retry of the batch does, at its next end.
--
-- Rules for hook and callback functions:
--   * They run as the role of the batchd connection (or of whoever calls
--     cancel_batch()), with the search_path a session of that role starts
--     with (its ALTER ROLE / ALTER DATABASE setting, else the server's; see
--     run_hook), not batchd's pinned one: a hook written and tested in psql
--     finds its tables as it did there. A hook function with its own SET
--     search_path (recommended: it then does not depend on the role's
--     settings) sees only that. batchd's own functions stay pinned to
--     pg_catalog, batchd, before and after the call.
--   * They run while the transaction holds row locks on the items, group rows
--     and batch rows being recorded: keep them short, touch your own tables,
--     never write batchd's tables (items, batches, groups, workers) -- reading
--     them is fine, and so is batchd.submit_batch() (a callback chaining the
--     next stage: it only inserts new rows) -- and never COMMIT. Locks on your
--     rows are taken after batchd's, so an application transaction that locks
--     those rows and then waits on batchd rows can deadlock with a hook;
--     PostgreSQL resolves that by failing one side (in a hook: 40P01, a retry
--     as above).
--   * RAISE NOTICE/WARNING from a hook goes to batchd's connection; prefer
--     writing to a table.
--
-- Locks (the order of sql/README): complete_items() locks items, group rows
-- and batch rows, then calls the hooks; the callback trigger fires under the
-- batch row lock of the UPDATE that ends the batch.

-- batchd.hook_call(name) -> 'SELECT "schema"."function"($1)'
--
-- name: "function" or "schema.function", each part [A-Za-z_][A-Za-z0-9_]*, at
-- most 63 characters (the config's rule). As in SQL, unquoted names fold to
-- lower case, so each part is lower-cased, then quoted with quote_ident: the
-- statement names exactly the function to_regprocedure(name || '(...)') finds.
-- Anything else raises 22023.
CREATE OR REPLACE FUNCTION batchd.hook_call(p_name text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_parts text[];
BEGIN
    IF p_name IS NULL
       OR p_name !~ '^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$' THEN
        RAISE EXCEPTION 'invalid function name "%" (expected function or schema.function; letters, digits and _, not starting with a digit, at most 63 characters each)', p_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_parts := string_to_array(lower(p_name), '.');
    IF cardinality(v_parts) = 2 THEN
        RETURN format('SELECT %I.%I($1)', v_parts[1], v_parts[2]);
    END IF;
    RETURN format('SELECT %I($1)', v_parts[1]);
END
$fn$;

COMMENT ON FUNCTION batchd.hook_call(text) IS
    'The SELECT that calls a validated hook function name with one argument ($1); raises 22023 on a bad name.';

-- batchd.session_search_path() -> text
--
-- The search_path a session of the current role starts with: the role's and
-- the database's settings (ALTER ROLE / ALTER DATABASE ... SET search_path),
-- else the server's -- what RESET would restore, whatever a function's own
-- SET clause has made of it meanwhile. Hooks and callbacks run with it.
CREATE OR REPLACE FUNCTION batchd.session_search_path()
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, batchd
AS $fn$
    SELECT s.reset_val FROM pg_catalog.pg_settings AS s WHERE s.name = 'search_path'
$fn$;

COMMENT ON FUNCTION batchd.session_search_path() IS
    'The search_path a session of the current role starts with (reset value of search_path): the one hooks run with.';

-- batchd.run_hook(function, search_path, argument)
--
-- Call a route's hook or callback (a name sync_routes validated) with the
-- argument, under the given search_path (session_search_path(): what the
-- hook's author sees in a session of batchd's role) instead of batchd's
-- pinned one, so that a hook written and tested in psql finds its tables
-- unqualified. A function with its own SET search_path still sees only
-- that. The function is looked up as sync_routes found it (batchd's
-- search_path for an unqualified name), then called by its qualified name.
-- batchd's own search_path comes back when this returns (the SET clause
-- below), also when the hook raises.
CREATE OR REPLACE FUNCTION batchd.run_hook(p_fn text, p_path text, p_arg anyelement)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_call text;
BEGIN
    SELECT format('SELECT %I.%I($1)', n.nspname, p.proname) INTO v_call
      FROM pg_catalog.pg_proc AS p
      JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
     WHERE p.oid = to_regprocedure(p_fn || '(' || pg_typeof(p_arg)::text || ')');
    -- gone since sync_routes: the call names it as configured, and fails
    v_call := coalesce(v_call, batchd.hook_call(p_fn));
    PERFORM pg_catalog.set_config('search_path', coalesce(p_path, ''), true);
    EXECUTE v_call USING p_arg;
END
$fn$;

COMMENT ON FUNCTION batchd.run_hook(text, text, anyelement) IS
    'Call a hook or callback function with one argument under the given search_path (the session''s, not batchd''s).';

-- batchd.complete_items(worker, items) -> (applied, fenced)
-- (a wrapper of batchd.complete_items_in(), which also returns the ids of
-- the batches of the items it locked, for record_completions())
--
-- items: JSON array of {"id", "status": "succeeded"|"failed"|"queued",
-- "http_status", "result", "error", "provider", "started_at", "finished_at",
-- "tries", "run_after"}; unknown keys are ignored, missing ones are NULL.
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
--     "run_after" is read for "queued" records only.
--   * every applied record gives back the item's group slot: group_slot is
--     cleared and the group's running decremented in the same statement.
--
-- Fencing: an outcome is written only if the item is still running under this
-- worker. Anything else (the item was requeued after this worker was declared
-- dead, completed already, or listed twice in one call) is "fenced": counted,
-- and nothing is changed. applied + fenced = number of array elements.
--
-- Then, still in this call, the touched batches' counters move by the applied
-- outcomes, and a batch that is pending/processing and whose items are all
-- finished becomes completed (all succeeded), failed (none succeeded) or
-- completed_with_errors, with an event carrying the final counts. A cancelled
-- batch keeps its status, but its counters still move.
--
-- Statements: (1a) lock the items (id order, by primary key); (1b) lock the
-- group rows of those holding a slot ((route, group_key) order); (1c) lock
-- their batch rows (id order), before the items are updated, so that a
-- trigger on items that touches batches (items_requeue_cancelled) finds them
-- locked already; one read of batchd.routes: the routes with a hook.
--   * When none of the locked items belongs to one: (1d) update the items,
--     give back their slots, aggregate per-batch deltas of succeeded/failed;
--     (3) apply the deltas (its snapshot is taken after the locks, so it reads
--     the batches' current counters and status, and knows exactly which
--     batches it finishes).
--   * Otherwise (1d') updates the items with the same statement but only
--     collects the recorded ids; (1e) calls each hook-route item's hook, in
--     item id order, in its own subtransaction, and turns an item whose hook
--     raised into failed, or back to queued for a retry (see the top of this
--     file); then the per-batch deltas are counted from the items' statuses as
--     they now are, and (3) applies them. The batch callback (trigger)
--     therefore runs after the hooks of the flush that ends the batch.
-- Plans. Id sets travel as arrays, and every statement keeps its generic
-- plan (force_generic_plan): planning each statement of each call cost more
-- than executing most of them (about 1.3 ms a call, 30% of a flush of 45).
-- (1a) reaches the items by primary key only: its test of the worker and
-- the status is one boolean (... IS TRUE) that no index can serve, so the
-- plan cannot depend on the statistics of running items (often stale in a
-- queue): with the plain conditions, a plan made when the statistics showed
-- few running items, generic or even custom, read every running item of the
-- worker through items_running_worker_idx (dead entries included) instead of
-- the ids. Every other statement reaches items by id alone (the rows (1a)
-- locked cannot change under us, so the update needs no other condition)
-- and batches and groups by their keys.
CREATE OR REPLACE FUNCTION batchd.complete_items_in(p_worker uuid, p_items jsonb,
                                                    OUT o_applied int, OUT o_fenced int,
                                                    OUT o_batches uuid[])
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_generic_plan
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
    v_lock_batches uuid[];
    v_slot_ids  bigint[];
    v_hook_routes text[];
    v_hook_fns    text[];
    v_hook_ids    bigint[];
    v_done_ids    bigint[];
    v_item        batchd.items;
    v_user_path   text;
    v_state       text;
    v_msg         text;
    v_bstatus     text;
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_items IS NULL OR jsonb_typeof(p_items) <> 'array' THEN
        RAISE EXCEPTION 'items must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_total := jsonb_array_length(p_items);
    IF v_total = 0 THEN
        o_applied := 0;
        o_fenced := 0;
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
    -- order, by primary key (the only index the condition lets the planner use:
    -- see Plans above). Their group_slot, read under the lock, is current.
    v_ids := ARRAY(SELECT (e.v ->> 'id')::bigint
                     FROM jsonb_array_elements(p_items) AS e(v));
    SELECT array_agg(s.id), array_agg(s.id) FILTER (WHERE s.group_slot),
           array_agg(DISTINCT s.batch_id)
      INTO v_locked, v_slot_ids, v_lock_batches
      FROM (SELECT i.id, i.group_slot, i.batch_id
              FROM batchd.items AS i
             WHERE i.id = ANY (v_ids)
               AND (i.status = 'running' AND i.worker_id = p_worker) IS TRUE
             ORDER BY i.id
               FOR UPDATE) AS s;
    IF v_locked IS NULL THEN
        o_applied := 0;
        o_fenced := v_total;
        RETURN;
    END IF;

    -- (1b) Lock the group rows of the slot holders, in (route, group_key)
    -- order, then (1c) the batch rows of all the locked items, in id order,
    -- before any item changes: a trigger on items may lock batch rows during
    -- the update (items_requeue_cancelled does, for a deferral in a cancelled batch), in row
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
      WHERE b.id = ANY (v_lock_batches)
      ORDER BY b.id
        FOR NO KEY UPDATE;

    -- Result hooks: one read of batchd.routes per call (a few rows). Only when
    -- a locked item belongs to a route with a hook does the call leave the plain
    -- path.
    SELECT array_agg(r.name ORDER BY r.name), array_agg(r.hook ORDER BY r.name)
      INTO v_hook_routes, v_hook_fns
      FROM batchd.routes AS r
     WHERE r.hook IS NOT NULL;
    IF v_hook_routes IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM batchd.items AS i
                        WHERE i.id = ANY (v_locked) AND i.route = ANY (v_hook_routes)) THEN
        v_hook_routes := NULL;
    END IF;

    IF v_hook_routes IS NULL THEN
        -- (1d) Update exactly the locked rows, give back their group slots,
        -- aggregate per-batch deltas. If an id appears twice, the join matches the
        -- row twice but UPDATE changes it once: the duplicate counts as fenced. (A
        -- deferral that a trigger turns into something else, such as items_requeue_cancelled
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
               AND i.id = ANY (v_locked)   -- running under p_worker, locked (1a)
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
    ELSE
        -- (1d') the plain statement's update of exactly the locked rows, group slots given
        -- back in the same statement; only the recorded ids are collected here,
        -- the deltas are counted after the hooks.
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
               AND i.id = ANY (v_locked)   -- running under p_worker, locked (1a)
            RETURNING i.id, i.batch_id, i.status, i.route, i.group_key,
                      i.id = ANY (v_slot_ids) AS had_slot
        ), slots AS (
            SELECT d.route, d.group_key, count(*)::int AS n
              FROM done AS d
             WHERE d.had_slot
             GROUP BY d.route, d.group_key
        ), freed AS (
            UPDATE batchd.groups AS g
               SET running = greatest(g.running - s.n, 0)
              FROM slots AS s
             WHERE g.route = s.route
               AND g.group_key = s.group_key
        )
        SELECT count(*)::int,
               array_agg(d.id ORDER BY d.id) FILTER (WHERE d.status IN ('succeeded', 'failed')),
               array_agg(d.id ORDER BY d.id) FILTER (WHERE d.status IN ('succeeded', 'failed')
                                                     AND d.route = ANY (v_hook_routes))
          INTO v_applied, v_done_ids, v_hook_ids
          FROM done AS d;

        -- (1e) The hooks, in item id order, each in a subtransaction. The
        -- item rows (locked since (1a)) are read as just recorded.
        IF v_hook_ids IS NOT NULL THEN
            v_user_path := batchd.session_search_path();
            -- hooks plan as the session would, not as this function does
            PERFORM pg_catalog.set_config('plan_cache_mode',
                                          (SELECT st.reset_val FROM pg_catalog.pg_settings AS st
                                            WHERE st.name = 'plan_cache_mode'), true);
            FOR v_item IN SELECT i.* FROM batchd.items AS i
                           WHERE i.id = ANY (v_hook_ids)
                           ORDER BY i.id LOOP
                BEGIN
                    PERFORM batchd.run_hook(v_hook_fns[array_position(v_hook_routes, v_item.route)],
                                            v_user_path, v_item);
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
                    IF v_state IN ('BDRTY', '40001', '40P01', '55P03')
                       AND v_item.attempts < v_item.max_attempts THEN
                        -- A retry. In a batch cancelled meanwhile, cancelled
                        -- instead (as items_requeue_cancelled does for any requeue); its row is
                        -- locked (1c).
                        SELECT b.status INTO v_bstatus
                          FROM batchd.batches AS b WHERE b.id = v_item.batch_id;
                        IF v_bstatus = 'cancelled' THEN
                            UPDATE batchd.items AS i
                               SET status = 'cancelled', worker_id = NULL, finished_at = now(),
                                   error = 'hook asked for a retry: ' || v_msg
                             WHERE i.id = v_item.id;
                            UPDATE batchd.batches AS b
                               SET cancelled = b.cancelled + 1
                             WHERE b.id = v_item.batch_id;
                        ELSE
                            UPDATE batchd.items AS i
                               SET status = 'queued', worker_id = NULL,
                                   started_at = NULL, finished_at = NULL,
                                   run_after = now() + make_interval(
                                       secs => least(60, power(2, greatest(i.attempts - 1, 0)))),
                                   error = 'hook asked for a retry: ' || v_msg
                             WHERE i.id = v_item.id;
                        END IF;
                    ELSE
                        UPDATE batchd.items AS i
                           SET status = 'failed', error = 'hook failed: ' || v_msg
                         WHERE i.id = v_item.id;
                    END IF;
                END;
            END LOOP;
            PERFORM pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true);
        END IF;

        -- Per-batch deltas from the recorded items' statuses as they are now
        -- (a hook failure counts as failed; a retry as nothing yet).
        SELECT array_agg(p.batch_id ORDER BY p.batch_id),
               array_agg(p.succeeded ORDER BY p.batch_id),
               array_agg(p.failed ORDER BY p.batch_id)
          INTO v_batches, v_succeeded, v_failed
          FROM (SELECT i.batch_id,
                       count(*) FILTER (WHERE i.status = 'succeeded')::int AS succeeded,
                       count(*) FILTER (WHERE i.status = 'failed')::int    AS failed
                  FROM batchd.items AS i
                 WHERE i.id = ANY (v_done_ids)
                 GROUP BY i.batch_id) AS p
         WHERE p.succeeded + p.failed > 0;
    END IF;

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

    o_applied := v_applied;
    o_fenced := v_total - v_applied;
    o_batches := v_lock_batches;
END
$fn$;

COMMENT ON FUNCTION batchd.complete_items_in(uuid, jsonb) IS
    'complete_items() with the ids of the batches it may have changed (those of the items it locked), for record_completions().';

CREATE OR REPLACE FUNCTION batchd.complete_items(p_worker uuid, p_items jsonb)
RETURNS TABLE (applied int, fenced int)
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
    SELECT c.o_applied, c.o_fenced FROM batchd.complete_items_in(p_worker, p_items) AS c;
$fn$;

COMMENT ON FUNCTION batchd.complete_items(uuid, jsonb) IS
    'Record outcomes (or deferrals) of items running under this worker (others are fenced), call the route''s result hook, give back group slots, update batch counters, finish batches.';

CREATE OR REPLACE FUNCTION batchd.record_completions(p_worker uuid, p_items jsonb)
RETURNS TABLE (applied int, fenced int, finished jsonb)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_batches uuid[];
BEGIN
    -- the batches of the items it recorded: those this transaction moved to a
    -- terminal status are among them (finished_at = now() is this
    -- transaction's timestamp)
    SELECT c.o_applied, c.o_fenced, c.o_batches INTO applied, fenced, v_batches
      FROM batchd.complete_items_in(p_worker, p_items) AS c;
    SELECT jsonb_agg(jsonb_build_object(
               'id', b.id, 'name', b.name, 'route', b.route, 'status', b.status,
               'total', b.total, 'succeeded', b.succeeded, 'failed', b.failed,
               'cancelled', b.cancelled,
               'seconds', round(extract(epoch FROM b.finished_at - coalesce(b.started_at, b.created_at))::numeric, 3))
             ORDER BY b.id)
      INTO finished
      FROM batchd.batches AS b
     WHERE b.id = ANY (v_batches)
       AND b.finished_at = now()
       AND b.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled');
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION batchd.record_completions(uuid, jsonb) IS
    'complete_items() plus the batches it finished (jsonb array), for the worker''s log.';

-- Fires once per end of a batch (see the top of this file). The WHEN clause
-- is evaluated without calling the function, so the counter updates of every
-- flush cost nothing more; the function itself reads batchd.routes only at a
-- batch end.
CREATE OR REPLACE FUNCTION batchd.batches_on_done()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_fn    text;
    v_state text;
    v_msg   text;
BEGIN
    SELECT r.on_batch_done INTO v_fn
      FROM batchd.routes AS r
     WHERE r.name = NEW.route;
    IF v_fn IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        PERFORM batchd.run_hook(v_fn, batchd.session_search_path(), NEW);
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        VALUES (NEW.id, 'callback_done', jsonb_build_object('function', v_fn, 'status', NEW.status));
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        VALUES (NEW.id, 'callback_failed',
                jsonb_build_object('function', v_fn, 'status', NEW.status,
                                   'sqlstate', v_state, 'error', v_msg));
    END;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION batchd.batches_on_done() IS
    'Trigger: call the route''s on_batch_done(batch) once per end of a batch; a failure is logged as a callback_failed event.';

CREATE OR REPLACE TRIGGER batches_on_done
    AFTER UPDATE ON batchd.batches
    FOR EACH ROW
    WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL
          AND NEW.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled'))
    EXECUTE FUNCTION batchd.batches_on_done();
