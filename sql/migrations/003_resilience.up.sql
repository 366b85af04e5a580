-- 003_resilience.up.sql: per-group limits, deferrals and per-provider try counts.
--
-- Run by `batchd migrate` in one transaction (with its advisory lock), which also
-- records version 3 in batchd.schema_migrations; no BEGIN/COMMIT here.
--
-- What it adds:
--   * items.tries       per-provider try counts of the last run ({"primary":3,...});
--   * items.group_slot  true while the item, running, holds a slot of its group;
--   * batchd.groups     one row per (route, group key): how many items of the group
--                       run now (running) and when the next may start
--                       (next_start_at), shared by every batchd process;
--   * claim_items(worker, routes, limit, group_routes, group_concurrency,
--                 group_interval_ms): a claim that honours per-group concurrency
--                 and start spacing, fleet-wide (an overload: 001's 3-argument
--                 claim_items stays as it is);
--   * complete_items(): "tries", and "status":"queued" records (deferrals);
--   * complete_items(), release_items() (so deregister_worker(), which calls it)
--     give back group slots;
--   * gc_groups(): drop idle group rows, repair counters, re-create missing rows;
--   * check_groups(): groups whose counter disagrees with their slot holders.
--
-- Lock order. 001's order, with group rows in the middle; every function here
-- follows it, and so must any other SQL that writes these tables:
--   1. item rows (claims: SKIP LOCKED; completions and releases: in id order,
--      in a statement of their own);
--   2. group rows, sorted by (route, group_key) whenever we may wait for them
--      (claims take them with SKIP LOCKED; inserting a group row counts too, as
--      it waits for a concurrent uncommitted insert of the same key).
--   3. batch rows, sorted by id, FOR NO KEY UPDATE.
-- Completions and releases lock all three in statements of their own before
-- they change any item, so that a trigger on items that locks batch rows during
-- the update (006's, for an item of a cancelled batch) finds them locked
-- already and never waits out of order.
-- A lock taken with SKIP LOCKED never waits, so it cannot close a wait cycle; of
-- the locks that can wait, nobody holds a later class while waiting for an
-- earlier one, and within a class they are taken in one global order, so claims,
-- completions, releases, submits and gc_groups() never deadlock with one another.
-- Group rows are locked FOR NO KEY UPDATE (running and next_start_at are not
-- key columns), except by gc_groups(), which may delete them (FOR UPDATE).
--
-- Group accounting invariant: for every group row, running = the number of items
-- with status 'running' AND group_slot. A claim sets group_slot and increments
-- running under the group row lock; every transition out of 'running' done here
-- (completion, deferral, release) clears group_slot and decrements running in
-- the same statement, under the same lock. SQL that moves items out of 'running'
-- or deletes them without doing so (a slot-unaware reaper, cancel, DELETE of a
-- batch) cannot make a group exceed its limit: a trigger clears group_slot on
-- any item leaving 'running', so the group merely counts one slot too many until
-- gc_groups() recounts it. check_groups() shows such drift.
--
-- Group rows: submit_batch() creates them; a claim only considers groups that
-- have a row (that is what makes a blocked group cheap to skip). A row is idle
-- when running = 0, its spacing has passed and the group has no queued item;
-- gc_groups() deletes idle rows and re-creates the row of any group that has
-- queued items but no row (possible when a submit races with the delete, or when
-- SQL such as a retry requeues items of a group whose row was deleted). Call it
-- periodically (any worker, any number at once; e.g. every minute).
--
-- Everything runs in READ COMMITTED, one call per transaction (autocommit), as
-- in 001: a transaction that still holds the batch locks of one call while the
-- next call locks items or groups (complete_items() then release_items()) is
-- outside the order above.

---------------------------------------------------------------------------
-- Tables and columns
---------------------------------------------------------------------------

-- Adding a nullable column and a NOT NULL column with a constant default is a
-- catalog-only change (no table rewrite).
ALTER TABLE batchd.items
    ADD COLUMN tries      jsonb,
    ADD COLUMN group_slot boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN batchd.items.tries IS
    'Per-provider try counts of the last run, e.g. {"primary": 3, "fallback": 1}, or NULL';
COMMENT ON COLUMN batchd.items.group_slot IS
    'True while the item, running, holds a slot of its group (counted in batchd.groups.running)';

-- One row per (route, group key). Rows are small and updated at every claim and
-- completion of a limited group: fillfactor 70 leaves room for HOT updates (no
-- indexed column changes), and autovacuum runs early.
CREATE TABLE batchd.groups (
    route         text        NOT NULL,
    group_key     text        NOT NULL,
    running       int         NOT NULL DEFAULT 0
                  CONSTRAINT groups_running_check CHECK (running >= 0),
    next_start_at timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (route, group_key)
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

COMMENT ON TABLE batchd.groups IS
    'Per-group claim state shared by all workers: items of the group running now, earliest next start';
COMMENT ON COLUMN batchd.groups.running IS
    'Items with status running and group_slot true in this group (see batchd.check_groups())';
COMMENT ON COLUMN batchd.groups.next_start_at IS
    'No item of the group may start before this (start spacing); -infinity when not spaced';

-- Groups for the items already there (rows are normally created by submit_batch).
INSERT INTO batchd.groups (route, group_key)
SELECT DISTINCT i.route, i.group_key
  FROM batchd.items AS i
 WHERE i.status IN ('queued', 'running')
   AND i.group_key IS NOT NULL
 ORDER BY 1, 2;

-- The per-group claim index: queued items by group, in claim order. A claim
-- reads the head of each eligible group with one descent (route and group_key
-- equal, then priority DESC, id), so a long queue of a blocked group costs
-- nothing. run_after is a trailing key so that waiting items are skipped on the
-- index tuple. Items without a group key are in it too (NULLs sort last): a claim
-- reads those of a limited route with `group_key IS NULL ORDER BY group_key,
-- priority DESC, id`, an ordered scan of that part of the index. The loose index
-- scan of gc_groups() walks it as well.
-- route and group_key are keyed in the "C" collation: equality is the same in
-- every deterministic collation, and bytewise comparison keeps the descents
-- cheap (a grouped submit inserts all over this index; a claim descends once
-- per eligible group) whatever the database's collation. Queries that mean to
-- use this index say COLLATE "C" on the item columns (only the functions here).
CREATE INDEX items_group_claim_idx
    ON batchd.items (route COLLATE "C", group_key COLLATE "C", priority DESC, id, run_after)
    WHERE status = 'queued';

-- Slot holders per group: tiny (running items of limited groups only); used by
-- check_groups() and by the recount in gc_groups().
CREATE INDEX items_group_slot_idx
    ON batchd.items (route, group_key)
    WHERE status = 'running' AND group_slot;

-- group_slot is true only while the item runs. Functions here clear it
-- themselves (and give the slot back); this trigger clears it when other SQL
-- moves an item out of 'running', so that a stale flag can never be mistaken for
-- a slot later. The WHEN clause is evaluated in the executor without calling the
-- function: updates that keep the invariant cost nothing more.
CREATE FUNCTION batchd.items_clear_group_slot()
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

CREATE TRIGGER items_clear_group_slot
    BEFORE UPDATE ON batchd.items
    FOR EACH ROW
    WHEN (NEW.group_slot AND NEW.status <> 'running')
    EXECUTE FUNCTION batchd.items_clear_group_slot();

---------------------------------------------------------------------------
-- Submit
---------------------------------------------------------------------------

-- 001's submit_batch, unchanged but for the group rows: the item INSERT returns
-- the group keys, and one row per distinct non-null key is added to
-- batchd.groups (ON CONFLICT DO NOTHING; sorted, so that concurrent inserters of
-- the same keys wait for one another in one order).
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
    -- The same statement adds the group rows (003) from the inserted keys.
    WITH ins AS (
        INSERT INTO batchd.items (batch_id, seq, route, priority, payload, group_key, max_attempts)
        SELECT v_id, (e.ord - 1)::int, p_route, v_priority, e.v,
               CASE WHEN v_group_path IS NOT NULL THEN e.v #>> v_group_path END,
               v_max_attempts
          FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
         ORDER BY e.ord
        RETURNING items.group_key
    )
    INSERT INTO batchd.groups (route, group_key)
    SELECT DISTINCT p_route, ins.group_key
      FROM ins
     WHERE ins.group_key IS NOT NULL
     ORDER BY 2
    ON CONFLICT DO NOTHING;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (v_id, 'submitted', jsonb_build_object('total', v_count));

    PERFORM pg_notify('batchd_work', p_route);

    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION batchd.submit_batch(text, text, jsonb, jsonb) IS
    'Validate and store a batch with its items; returns the batch id. Bad input raises SQLSTATE 22023 and stores nothing.';

---------------------------------------------------------------------------
-- Claim with per-group limits
---------------------------------------------------------------------------

-- batchd.claim_items(worker, routes, limit, group_routes, group_concurrency,
--                    group_interval_ms)
--
-- Like 001's claim_items(worker, routes, limit) (same result columns, same
-- 'started' handling of pending batches), but the routes listed in group_routes
-- have per-group limits. The three group arrays are aligned: group_concurrency
-- (0 = unlimited) is how many items of one group may run at once, fleet-wide;
-- group_interval_ms (0 = no spacing) the least time between two starts of one
-- group (so at most one start per interval). A route with both 0, a route not in
-- group_routes, and items whose group_key is NULL are claimed exactly as 001
-- does. Routes of group_routes that are not in routes are ignored. Bad arrays
-- (different lengths, NULL or negative entries, a repeated route, an interval
-- that is NaN or infinite) raise SQLSTATE 22023.
--
-- An item of a limited route with a group key is claimed only through its group
-- row, locked (SKIP LOCKED: a group that another claimer holds right now is
-- skipped this time) and re-checked: running < concurrency (when > 0) and
-- next_start_at <= now() (when interval > 0). Claiming it sets group_slot,
-- increments running and, with spacing, sets next_start_at = now() + interval.
--
-- One statement:
--   heads      the eligible groups of the limited routes (read from batchd.groups,
--              not locked), each with its first due item (one index descent per
--              group through items_group_claim_idx); the best `limit` of them by
--              (priority DESC, id). A group that waits (at its cap, or spaced)
--              costs one groups row read, whatever the length of its queue, so
--              other groups keep flowing.
--   grouped    for each of those groups, up to its free slots (1 with spacing) of
--              its first due items, locked SKIP LOCKED (one slot: the head, by
--              primary key);
--   ungrouped  limited routes' items without a group key, 001-style (ordered
--              scan, LIMIT, SKIP LOCKED), per route;
--   plain      the other routes' items, exactly 001's picker;
--   admitted   the items of `grouped` within their group's free slots, the
--              group rows locked SKIP LOCKED and the caps re-checked on the
--              latest row version (a concurrent claim or completion that
--              committed since the snapshot is seen);
--   picked     admitted + ungrouped + plain, best `limit` by (priority DESC, id);
--   claimed / taken / to_start ...
--              update the items, the groups (running, next_start_at) and the
--              batches (pending -> processing, in id order, as 001).
-- Locks: items (SKIP LOCKED) before groups (SKIP LOCKED) before batches (waiting,
-- id order), as in the header. Items or groups locked but not used are left
-- unchanged; their locks go at commit.
--
-- Cost: one read of the routes' group rows, one index descent per eligible
-- group (one that may start an item now), then 001's per-item cost for what is
-- claimed. A group at its cap or waiting for its spacing costs its row read
-- only, whatever its queue; so a steady-state claim, which finds eligible only
-- the groups freed since the previous claim, is cheap, and the dearest claim is
-- the first one over many fresh groups. Idle group rows (drained groups) cost a
-- descent each until gc_groups() removes them.
CREATE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit int,
                                   p_group_routes text[], p_group_concurrency int[],
                                   p_group_interval_ms float8[])
RETURNS TABLE (id bigint, batch_id uuid, route text, payload jsonb,
               attempts int, max_attempts int, group_key text)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_n       int;
    v_lroutes text[];    -- limited routes of this call, with their limits
    v_lconc   int[];
    v_lintv   float8[];
    v_plain   text[];    -- the other routes of this call
    v_nplain  int;
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The group arrays come from the configuration: a mistake there is loud.
    v_n := coalesce(cardinality(p_group_routes), 0);
    IF coalesce(cardinality(p_group_concurrency), 0) <> v_n
       OR coalesce(cardinality(p_group_interval_ms), 0) <> v_n THEN
        RAISE EXCEPTION 'group_routes, group_concurrency and group_interval_ms must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_n > 0 THEN
        -- NaN sorts above every float8 in PostgreSQL, so "< 'Infinity'" also
        -- rejects NaN.
        IF EXISTS (SELECT 1
                     FROM unnest(p_group_routes, p_group_concurrency, p_group_interval_ms)
                          AS u(r, c, ms)
                    WHERE u.r IS NULL OR u.c IS NULL OR u.c < 0
                       OR u.ms IS NULL OR NOT (u.ms >= 0 AND u.ms < 'Infinity'::float8)) THEN
            RAISE EXCEPTION 'group_routes must not contain NULL, group_concurrency must be >= 0 and group_interval_ms finite and >= 0'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(DISTINCT u.r) FROM unnest(p_group_routes) AS u(r)) <> v_n THEN
            RAISE EXCEPTION 'group_routes must not repeat a route'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    SELECT array_agg(u.r ORDER BY u.r), array_agg(u.c ORDER BY u.r), array_agg(u.ms ORDER BY u.r)
      INTO v_lroutes, v_lconc, v_lintv
      FROM unnest(p_group_routes, p_group_concurrency, p_group_interval_ms) AS u(r, c, ms)
     WHERE u.r = ANY (p_routes)
       AND (u.c > 0 OR u.ms > 0);

    -- No limited route among ours: this is 001's claim.
    IF v_lroutes IS NULL THEN
        RETURN QUERY
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM batchd.claim_items(p_worker, p_routes, p_limit) AS c;
        RETURN;
    END IF;

    SELECT array_agg(DISTINCT u.r)
      INTO v_plain
      FROM unnest(p_routes) AS u(r)
     WHERE u.r IS NOT NULL
       AND u.r <> ALL (v_lroutes);
    v_nplain := coalesce(cardinality(v_plain), 0);

    -- plan_cache_mode = force_custom_plan: the variables are constants to the
    -- planner, so `v_nplain > 0` and the CASE in `plain` fold away (one route:
    -- the equality the btree checks on the index tuple, as in 001).
    RETURN QUERY
    WITH lim AS (
        SELECT u.route, u.conc, u.intv
          FROM unnest(v_lroutes, v_lconc, v_lintv) AS u(route, conc, intv)
    ), heads AS (
        SELECT g.route, g.group_key, g.running, l.conc, l.intv, h.priority, h.id
          FROM lim AS l
          JOIN batchd.groups AS g ON g.route = l.route
         CROSS JOIN LATERAL (
                SELECT i.priority, i.id
                  FROM batchd.items AS i
                 WHERE i.status = 'queued'
                   AND i.route COLLATE "C" = g.route
                   AND i.group_key COLLATE "C" = g.group_key
                   AND i.run_after <= now()
                 ORDER BY i.priority DESC, i.id
                 LIMIT 1) AS h
         WHERE (l.conc = 0 OR g.running < l.conc)
           AND (l.intv = 0 OR g.next_start_at <= now())
         ORDER BY h.priority DESC, h.id
         LIMIT p_limit
    ), grouped1 AS (
        -- One free slot (concurrency 1, or spacing: the usual case): the head
        -- itself, locked by primary key (SKIP LOCKED; re-checked as queued).
        SELECT i.id, i.priority, h.route, h.group_key
          FROM heads AS h
          JOIN batchd.items AS i ON i.id = h.id
         WHERE (h.intv > 0 OR h.conc - h.running = 1)
           AND i.status = 'queued'
           AND i.run_after <= now()
           FOR UPDATE OF i SKIP LOCKED
    ), grouped_n AS (
        -- More free slots: up to that many of the group's first due items.
        SELECT x.id, x.priority, h.route, h.group_key
          FROM heads AS h
         CROSS JOIN LATERAL (
                SELECT i.id, i.priority
                  FROM batchd.items AS i
                 WHERE i.status = 'queued'
                   AND i.route COLLATE "C" = h.route
                   AND i.group_key COLLATE "C" = h.group_key
                   AND i.run_after <= now()
                 ORDER BY i.priority DESC, i.id
                 LIMIT least(h.conc - h.running, p_limit)
                   FOR UPDATE SKIP LOCKED) AS x
         WHERE h.intv = 0
           AND h.conc - h.running > 1
    ), grouped AS (
        SELECT * FROM grouped1
        UNION ALL
        SELECT * FROM grouped_n
    ), ungrouped AS (
        SELECT x.id, x.priority, false AS slot
          FROM lim AS l
         CROSS JOIN LATERAL (
                SELECT i.id, i.priority
                  FROM batchd.items AS i
                 WHERE i.status = 'queued'
                   AND i.route COLLATE "C" = l.route
                   AND i.group_key IS NULL
                   AND i.run_after <= now()
                 ORDER BY i.group_key COLLATE "C", i.priority DESC, i.id
                 LIMIT p_limit
                   FOR UPDATE SKIP LOCKED) AS x
    ), plain AS (
        SELECT i.id, i.priority, false AS slot
          FROM batchd.items AS i
         WHERE v_nplain > 0
           AND i.status = 'queued'
           AND i.run_after <= now()
           AND CASE WHEN v_nplain = 1 THEN i.route = v_plain[1]
                    ELSE i.route = ANY (v_plain) END
         ORDER BY i.priority DESC, i.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), admitted AS (
        -- The group rows of `grouped`, locked SKIP LOCKED (a base-table join by
        -- primary key). Under READ COMMITTED the join is re-checked on the row
        -- version we lock, so the caps are tested against running and
        -- next_start_at as they are now (whatever committed since our snapshot)
        -- as well as in the snapshot: an item is admitted only if both allow it.
        SELECT r.id, r.priority, true AS slot
          FROM (SELECT x.id, x.priority, x.route, x.group_key,
                       row_number() OVER (PARTITION BY x.route, x.group_key
                                          ORDER BY x.priority DESC, x.id) AS n
                  FROM grouped AS x) AS r
          JOIN lim AS l ON l.route = r.route
          JOIN batchd.groups AS g ON g.route = r.route AND g.group_key = r.group_key
         WHERE (l.conc = 0 OR r.n <= l.conc - g.running)
           AND (l.intv = 0 OR (r.n = 1 AND g.next_start_at <= now()))
           FOR NO KEY UPDATE OF g SKIP LOCKED
    ), picked AS (
        SELECT a.id, a.slot
          FROM (SELECT u.id, u.priority, u.slot FROM ungrouped AS u
                UNION ALL
                SELECT p.id, p.priority, p.slot FROM plain AS p
                UNION ALL
                SELECT a.id, a.priority, a.slot FROM admitted AS a) AS a
         ORDER BY a.priority DESC, a.id
         LIMIT p_limit
    ), claimed AS (
        UPDATE batchd.items AS i
           SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
               started_at = now(), finished_at = NULL, group_slot = picked.slot
          FROM picked
         WHERE i.id = picked.id
        RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                  i.max_attempts, i.group_key, i.priority, i.group_slot
    ), taken AS (
        -- Rows locked in admitted: no wait here.
        UPDATE batchd.groups AS g
           SET running = g.running + t.n,
               next_start_at = CASE WHEN l.intv > 0
                                    THEN now() + l.intv * interval '1 millisecond'
                                    ELSE g.next_start_at END
          FROM (SELECT c.route, c.group_key, count(*)::int AS n
                  FROM claimed AS c
                 WHERE c.group_slot
                 GROUP BY c.route, c.group_key) AS t
          JOIN lim AS l ON l.route = t.route
         WHERE g.route = t.route
           AND g.group_key = t.group_key
    ), to_start AS (
        -- As in 001: pending batches among those touched, locked in id order.
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
END
$fn$;

COMMENT ON FUNCTION batchd.claim_items(uuid, text[], int, text[], int[], float8[]) IS
    'Claim like claim_items(worker, routes, limit), honouring per-group concurrency and start spacing of the listed routes fleet-wide.';

---------------------------------------------------------------------------
-- Complete (with deferrals and tries)
---------------------------------------------------------------------------

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

---------------------------------------------------------------------------
-- Release
---------------------------------------------------------------------------

-- batchd.release_items(worker, ids) -> number released
--
-- 001's release_items (requeue without spending an attempt, 'released' event per
-- batch, NOTIFY per route), plus: the items are locked first, in id order
-- (noting which hold a group slot), then the group rows of the slot holders
-- ((route, group_key) order) and the batch rows (id order; 001 did not lock
-- them here, see complete_items()), then the items are requeued with their
-- slots given back in the same statement. deregister_worker() calls this function, so it
-- gives back slots too.
CREATE OR REPLACE FUNCTION batchd.release_items(p_worker uuid, p_ids bigint[])
RETURNS int
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_custom_plan
AS $fn$
DECLARE
    v_count    int;
    v_routes   text[];
    v_route    text;
    v_locked   bigint[];
    v_slot_ids bigint[];
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- (1) Lock the rows to release, in id order, and note which hold a slot.
    SELECT array_agg(s.id), array_agg(s.id) FILTER (WHERE s.group_slot)
      INTO v_locked, v_slot_ids
      FROM (SELECT i.id, i.group_slot
              FROM batchd.items AS i
             WHERE i.status = 'running'
               AND i.worker_id = p_worker
               AND (p_ids IS NULL OR i.id = ANY (p_ids))
             ORDER BY i.id
               FOR UPDATE) AS s;
    IF v_locked IS NULL THEN
        RETURN 0;
    END IF;

    -- (2) Lock the group rows of the slot holders, in (route, group_key) order,
    -- then the batch rows of the items, in id order, before any item changes:
    -- a trigger on items may lock batch rows during the update (006's does, for
    -- a cancelled batch), in row order; holding them already, it never waits
    -- out of order.
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

    -- (3) Requeue exactly those; give back their slots in the same statement.
    WITH released AS (
        UPDATE batchd.items AS i
           SET status = 'queued', attempts = greatest(i.attempts - 1, 0),
               worker_id = NULL, started_at = NULL, run_after = now(),
               group_slot = false
         WHERE i.id = ANY (v_locked)
           AND i.status = 'running'
           AND i.worker_id = p_worker
        RETURNING i.batch_id, i.route, i.group_key, i.id = ANY (v_slot_ids) AS had_slot
    ), events AS (
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT r.batch_id, 'released', jsonb_build_object('items', count(*))
          FROM released AS r
         GROUP BY r.batch_id
         ORDER BY r.batch_id
    ), slots AS (
        SELECT r.route, r.group_key, count(*)::int AS n
          FROM released AS r
         WHERE r.had_slot
         GROUP BY r.route, r.group_key
    ), freed AS (
        -- Rows locked in (2).
        UPDATE batchd.groups AS g
           SET running = greatest(g.running - s.n, 0)
          FROM slots AS s
         WHERE g.route = s.route
           AND g.group_key = s.group_key
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
    'Requeue items running under a worker (all when p_ids is NULL) without spending an attempt, giving back group slots; returns the count.';

---------------------------------------------------------------------------
-- Group maintenance and checks
---------------------------------------------------------------------------

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
CREATE FUNCTION batchd.gc_groups()
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
CREATE FUNCTION batchd.check_groups()
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
