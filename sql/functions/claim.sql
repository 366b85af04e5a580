-- claim.sql: claiming queued items for a worker: from the head of the queue, resumed after the previous claim, with per-group limits, and with per-route batch slots.
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

-- batchd.claim_items(worker, routes, limit): claim up to `limit` due, queued
-- items of the given routes, highest priority first then oldest id, skipping
-- rows other claimers hold (SKIP LOCKED). Claimed items become running under
-- this worker with one more attempt. Batches of claimed items that are still
-- pending become processing (with a 'started' event); those batch rows are
-- locked in id order after the item rows (see the lock order in sql/README).
--
-- One SQL statement does it all. The picker is an ordered scan of the partial
-- claim index that stops after `limit` locked rows: O(limit) in live entries,
-- whatever the number of finished items, but it steps over the dead entries of
-- items claimed since the last vacuum (claim_items(worker, routes, limit, after_priority, after_id) resumes past
-- them). plan_cache_mode = force_custom_plan makes PL/pgSQL
-- plan the statement with the actual limit and routes on every call (a generic
-- plan would have to guess the LIMIT as 10% of the queue and may pick a sort);
-- planning costs well under a millisecond.
--
-- With one route, the route test is a plain equality that the btree checks on
-- the index tuple; with several, it is `= ANY(array)`, which the planner can only
-- apply after the heap fetch if it is to keep the index order, so that form is
-- kept for the multi-route case only.
CREATE OR REPLACE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit int)
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

-- batchd.claim_items(worker, routes, limit, group_routes, group_concurrency,
--                    group_interval_ms)
--
-- Like claim_items(worker, routes, limit) (same result columns, same
-- 'started' handling of pending batches), but the routes listed in group_routes
-- have per-group limits. The three group arrays are aligned: group_concurrency
-- (0 = unlimited) is how many items of one group may run at once, fleet-wide;
-- group_interval_ms (0 = no spacing) the least time between two starts of one
-- group (so at most one start per interval). A route with both 0, a route not in
-- group_routes, and items whose group_key is NULL are claimed exactly as
-- claim_items(worker, routes, limit) does. Routes of group_routes that are not in routes are ignored. Bad arrays
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
--   ungrouped  limited routes' items without a group key, head-claim style (ordered
--              scan, LIMIT, SKIP LOCKED), per route;
--   plain      the other routes' items, exactly the head claim's picker;
--   admitted   the items of `grouped` within their group's free slots, the
--              group rows locked SKIP LOCKED and the caps re-checked on the
--              latest row version (a concurrent claim or completion that
--              committed since the snapshot is seen);
--   picked     admitted + ungrouped + plain, best `limit` by (priority DESC, id);
--   claimed / taken / to_start ...
--              update the items, the groups (running, next_start_at) and the
--              batches (pending -> processing, in id order, as the head claim does).
-- Locks: items (SKIP LOCKED) before groups (SKIP LOCKED) before batches (waiting,
-- id order), as in sql/README. Items or groups locked but not used are left
-- unchanged; their locks go at commit.
--
-- Cost: one read of the routes' group rows, one index descent per eligible
-- group (one that may start an item now), then the head claim's per-item cost for what is
-- claimed. A group at its cap or waiting for its spacing costs its row read
-- only, whatever its queue; so a steady-state claim, which finds eligible only
-- the groups freed since the previous claim, is cheap, and the dearest claim is
-- the first one over many fresh groups. Idle group rows (drained groups) cost a
-- descent each until gc_groups() removes them.
CREATE OR REPLACE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit int,
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

    -- No limited route among ours: this is the head claim.
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
    -- the equality the btree checks on the index tuple, as in the head claim).
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
        -- As in the head claim: pending batches among those touched, locked in id order.
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

-- Plans. The two pickers are planned on every call with the actual starting
-- point, routes and limit (EXECUTE plans each time, with the values as
-- constants to the planner: the LIMIT and the route equality must be known to
-- keep the index-ordered scan, see the head claim). The claim statement itself takes an
-- id array and is the same for every call, so PL/pgSQL keeps its plan (a
-- primary-key lookup per id) instead of planning it per call as the head claim does
-- (force_custom_plan there): that planning was ~0.2 ms per claim.
-- force_generic_plan makes it keep that plan at every claim size: left to
-- choose, the plan cache found a custom plan cheaper for a one-element array
-- than the generic plan's estimate and planned each one-item claim (an idle
-- worker's pickups: 0.27 ms of its ~0.75 ms).
CREATE OR REPLACE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit int,
                                   p_after_priority int, p_after_id bigint)
RETURNS TABLE (id bigint, batch_id uuid, route text, payload jsonb,
               attempts int, max_attempts int, group_key text, priority int)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    -- One route: the equality the btree checks on the index tuple, as in the head claim;
    -- several: = ANY, after the heap fetch.
    v_route text := CASE WHEN cardinality(p_routes) = 1 THEN 'i.route = $1[1]'
                         ELSE 'i.route = ANY ($1)' END;
    v_ids   bigint[] := '{}';
    v_more  bigint[];
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    -- (1) From the starting point: same priority, larger id. With the priority
    -- fixed, id order is the claim order, so the planner may read either the
    -- claim index from (priority, id) or the primary key from id (it often
    -- picks the latter); both start at the starting point and stop after
    -- `limit` rows when the items that follow are ours. (Items of routes
    -- this worker does not serve that follow at the same priority are read
    -- and skipped either way, as a claim from the head does.)
    IF p_after_priority IS NOT NULL AND p_after_id IS NOT NULL THEN
        EXECUTE 'SELECT coalesce(array_agg(s.id), ''{}'')
                   FROM (SELECT i.id
                           FROM batchd.items AS i
                          WHERE i.status = ''queued''
                            AND i.priority = $2
                            AND i.id > $3
                            AND i.run_after <= now()
                            AND ' || v_route || '
                          ORDER BY i.priority DESC, i.id
                          LIMIT $4
                            FOR UPDATE SKIP LOCKED) AS s'
           INTO v_ids
          USING p_routes, p_after_priority, p_after_id, p_limit;
    END IF;

    -- (2) The rest from the head, as the head claim does. Rows locked in (1) are still
    -- queued and not skipped (we hold their locks), so they are excluded here.
    IF cardinality(v_ids) < p_limit THEN
        EXECUTE 'SELECT array_agg(s.id)
                   FROM (SELECT i.id
                           FROM batchd.items AS i
                          WHERE i.status = ''queued''
                            AND i.run_after <= now()
                            AND ' || v_route || '
                            AND i.id <> ALL ($2)
                          ORDER BY i.priority DESC, i.id
                          LIMIT $3
                            FOR UPDATE SKIP LOCKED) AS s'
           INTO v_more
          USING p_routes, v_ids, p_limit - cardinality(v_ids);
        v_ids := v_ids || coalesce(v_more, '{}');
    END IF;

    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    -- (3) Claim them and start their pending batches, as the head claim does.
    RETURN QUERY
    WITH claimed AS (
        UPDATE batchd.items AS i
           SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
               started_at = now(), finished_at = NULL
         WHERE i.id = ANY (v_ids)
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
    SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key,
           c.priority
      FROM claimed AS c
     ORDER BY c.priority DESC, c.id;
END
$fn$;

COMMENT ON FUNCTION batchd.claim_items(uuid, text[], int, int, bigint) IS
    'Claim up to p_limit due queued items like claim_items(worker, routes, limit), first those after (p_after_priority, p_after_id) at that priority; returns each item''s priority.';

-- Batch slots: routes with batch_concurrency = N > 0 (man batchd.ini(5)).
--
-- batchd.claim_batch_slots(worker, routes, concurrency, limit): claim up to
-- `limit` due, queued items of the given routes, each limited to
-- concurrency[i] (> 0) batches at once, fleet-wide, sharing the claim
-- between those batches. Called by claim_items_shared() (which validates
-- the arrays and sorts the routes); same result columns as claim_items().
--
--   (1) One claimer at a time per route: a transaction-scoped advisory lock
--       (class 1650549859, "batc"; key hashtext(route)), taken in route name
--       order before any row lock and held to commit, so that the slot rows
--       it reads are the ones the previous holder committed.
--   (2) Slots of ended batches go: finished_at set (completed, failed, or
--       cancelled with nothing left running) or the batch gone (deleted,
--       purged). A batch keeps its slot while it has anything left, also
--       while its only items left wait for a retry time (run_after): it never
--       loses its place half done, and the others wait at most that backoff.
--   (3) Free slots (N minus the route's slots) go to the route's other
--       unfinished batches with items left: those already started
--       (processing: e.g. running before batch_concurrency was set) first,
--       then by priority (highest first), then oldest (submitted first).
--   (4) The batches served now: the route's first N slots in the order they
--       were handed out (after a reload that lowered N, the others wait, slot
--       kept, until enough of those ahead have ended).
--   (5) Fair share: the limit is split evenly between those batches (when
--       it does not divide, one more each for those of which this worker
--       holds the fewest running items, then the first ones: a claim of
--       one item goes to a batch started later, not always to the first
--       slot), each one's share
--       read from its own items (the claim index from the batch's first
--       item id: priority = the batch's, id between its first and last item,
--       an O(share) ordered scan), locked SKIP LOCKED; what a batch cannot
--       fill (it has fewer due items) is split again between the others,
--       until the limit is reached or every batch is drained.
--   (6) Claim them as the head claim does, returned round-robin (each
--       batch's first item, then each one's second, ...): the dispatcher
--       starts them in that order.
-- Cost: the advisory lock (claims of one route are serialized, fleet-wide),
-- the slot rows of the routes, one batch row per slot, one claim-index scan
-- per served batch and round (at most N rounds, usually one), and the
-- per-item cost of the head claim. Routes without batch_concurrency never
-- come here.
CREATE OR REPLACE FUNCTION batchd.claim_batch_slots(p_worker uuid, p_routes text[],
                                                    p_conc int[], p_limit int)
RETURNS TABLE (id bigint, batch_id uuid, route text, payload jsonb,
               attempts int, max_attempts int, group_key text)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
SET plan_cache_mode = force_custom_plan
AS $fn$
#variable_conflict use_column
DECLARE
    v_bids  uuid[];
    v_prio  int[];
    v_route text[];
    v_cur   bigint[];
    v_hi    bigint[];
    v_open  boolean[];
    v_held  int[];
    v_left  int := p_limit;
    v_nopen int;
    v_ids   bigint[] := '{}';
    r       record;
BEGIN
    IF p_limit IS NULL OR p_limit <= 0 OR coalesce(cardinality(p_routes), 0) = 0 THEN
        RETURN;
    END IF;

    -- (1)
    FOR k IN 1 .. cardinality(p_routes) LOOP
        PERFORM pg_advisory_xact_lock(1650549859, hashtext(p_routes[k]));
    END LOOP;

    -- (2)
    DELETE FROM batchd.batch_slots AS s
     WHERE s.route = ANY (p_routes)
       AND NOT EXISTS (SELECT 1 FROM batchd.batches AS b
                        WHERE b.id = s.batch_id AND b.finished_at IS NULL);

    -- (3)
    INSERT INTO batchd.batch_slots (batch_id, route)
    SELECT c.id, u.route
      FROM unnest(p_routes, p_conc) WITH ORDINALITY AS u(route, conc, rk)
     CROSS JOIN LATERAL (SELECT count(*)::int AS n
                           FROM batchd.batch_slots AS s
                          WHERE s.route = u.route) AS held
     CROSS JOIN LATERAL (
            -- Batches submitted in one transaction have one created_at: among
            -- those, the first submitted (its first item's id) goes first, as
            -- its items do in the head claim; WITH TIES keeps those lookups
            -- to the few batches that can be chosen.
            SELECT t.id,
                   row_number() OVER (ORDER BY t.status = 'processing' DESC, t.priority DESC,
                                               t.created_at, t.first_item NULLS LAST,
                                               t.id) AS pick
              FROM (SELECT b.id, b.status, b.priority, b.created_at,
                           (SELECT i.id FROM batchd.items AS i
                             WHERE i.batch_id = b.id AND i.seq = 0) AS first_item
                      FROM (SELECT b.id, b.status, b.priority, b.created_at
                              FROM batchd.batches AS b
                             WHERE b.route = u.route
                               AND b.status IN ('pending', 'processing')
                               AND b.finished_at IS NULL
                               AND b.succeeded + b.failed + b.cancelled < b.total
                               AND NOT EXISTS (SELECT 1 FROM batchd.batch_slots AS s
                                                WHERE s.batch_id = b.id)
                             ORDER BY b.status = 'processing' DESC, b.priority DESC,
                                      b.created_at
                             FETCH FIRST (greatest(u.conc - held.n, 0)) ROWS WITH TIES) AS b) AS t
             ORDER BY pick
             LIMIT greatest(u.conc - held.n, 0)) AS c
     WHERE held.n < u.conc
     ORDER BY u.rk, c.pick;     -- slot_order follows the choice

    -- (4) With the batch's first and last item ids (submit_batch inserts a
    -- batch's items in seq order, so ids grow with seq; a batch without
    -- items is read from 0 to the largest id).
    SELECT array_agg(a.bid ORDER BY a.pos, a.rk), array_agg(a.prio ORDER BY a.pos, a.rk),
           array_agg(a.route ORDER BY a.pos, a.rk), array_agg(a.lo - 1 ORDER BY a.pos, a.rk),
           array_agg(a.hi ORDER BY a.pos, a.rk)
      INTO v_bids, v_prio, v_route, v_cur, v_hi
      FROM (SELECT s.batch_id AS bid, b.priority AS prio, u.route, s.pos, u.rk,
                   coalesce((SELECT i.id FROM batchd.items AS i
                              WHERE i.batch_id = b.id AND i.seq = 0), 1) AS lo,
                   coalesce((SELECT i.id FROM batchd.items AS i
                              WHERE i.batch_id = b.id AND i.seq = b.total - 1),
                            9223372036854775807) AS hi
              FROM unnest(p_routes, p_conc) WITH ORDINALITY AS u(route, conc, rk)
             CROSS JOIN LATERAL (
                    SELECT s.batch_id, row_number() OVER (ORDER BY s.slot_order) AS pos
                      FROM batchd.batch_slots AS s
                     WHERE s.route = u.route
                     ORDER BY s.slot_order
                     LIMIT u.conc) AS s
              JOIN batchd.batches AS b ON b.id = s.batch_id) AS a;

    IF v_bids IS NULL THEN
        RETURN;
    END IF;
    v_open := array_fill(true, ARRAY[cardinality(v_bids)]);
    -- The items of each batch this worker holds (claimed, not ended: its
    -- few running items, items_running_worker_idx): what a split leaves
    -- over goes to the least held first, so that claims of one item at a
    -- time (a rate-limited provider draining) do not all go to the first
    -- slot while a batch started later holds nothing.
    SELECT array_agg((SELECT count(*)::int FROM batchd.items AS i
                       WHERE i.status = 'running' AND i.worker_id = p_worker
                         AND i.batch_id = o.bid) ORDER BY o.k)
      INTO v_held
      FROM unnest(v_bids) WITH ORDINALITY AS o(bid, k);

    -- (5)
    LOOP
        SELECT count(*)::int INTO v_nopen FROM unnest(v_open) AS o(x) WHERE o.x;
        EXIT WHEN v_left <= 0 OR v_nopen = 0;
        FOR r IN
            WITH a AS (
                SELECT u.k, u.bid, u.prio, u.route, u.cur, u.hi,
                       v_left / v_nopen
                       + CASE WHEN row_number() OVER (ORDER BY u.held, u.k) <= v_left % v_nopen
                              THEN 1 ELSE 0 END AS q
                  FROM unnest(v_bids, v_prio, v_route, v_cur, v_hi, v_open, v_held)
                       WITH ORDINALITY AS u(bid, prio, route, cur, hi, open, held, k)
                 WHERE u.open
            )
            SELECT a.k, a.q, count(x.id)::int AS n, max(x.id) AS last,
                   coalesce(array_agg(x.id) FILTER (WHERE x.id IS NOT NULL), '{}') AS ids
              FROM a
              LEFT JOIN LATERAL (
                    SELECT i.id
                      FROM batchd.items AS i
                     WHERE i.status = 'queued'
                       AND i.priority = a.prio
                       AND i.id > a.cur
                       AND i.id <= a.hi
                       AND i.run_after <= now()
                       AND i.route = a.route
                       AND i.batch_id = a.bid
                     ORDER BY i.priority DESC, i.id
                     LIMIT a.q
                       FOR UPDATE SKIP LOCKED) AS x ON true
             WHERE a.q > 0
             GROUP BY a.k, a.q
        LOOP
            v_ids := v_ids || r.ids;
            v_left := v_left - r.n;
            v_held[r.k] := v_held[r.k] + r.n;
            IF r.n < r.q THEN
                v_open[r.k] := false;      -- drained (for now)
            ELSE
                v_cur[r.k] := r.last;
            END IF;
        END LOOP;
    END LOOP;

    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    -- (6)
    RETURN QUERY
    WITH claimed AS (
        UPDATE batchd.items AS i
           SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
               started_at = now(), finished_at = NULL
         WHERE i.id = ANY (v_ids)
        RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                  i.max_attempts, i.group_key
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
      JOIN unnest(v_bids) WITH ORDINALITY AS o(bid, k) ON o.bid = c.batch_id
     ORDER BY row_number() OVER (PARTITION BY c.batch_id ORDER BY c.id), o.k;
END
$fn$;

COMMENT ON FUNCTION batchd.claim_batch_slots(uuid, text[], int[], int) IS
    'Internal (claim_items_shared): claim from at most concurrency[i] batches of each route at once, fleet-wide, sharing the claim between them.';

-- batchd.claim_items_shared(worker, routes, limit, batch_routes,
--                           batch_concurrency, group_routes,
--                           group_concurrency, group_interval_ms)
--
-- What batchd calls when a route it serves has batch_concurrency > 0; same
-- result columns as claim_items(). batch_routes and batch_concurrency are
-- aligned (0 = no limit); the routes of `routes` with a limit are claimed by
-- claim_batch_slots(), the others by claim_items(worker, others, ...,
-- group_routes, group_concurrency, group_interval_ms) exactly as batchd
-- claims them without this function (per-group limits included; a route
-- with both a batch and a group limit gets the batch limit only: batchd's
-- configuration refuses it). Bad arrays (different lengths, NULL or
-- negative entries, a repeated route) raise SQLSTATE 22023.
--
-- The limit is shared between the two kinds of route in proportion to their
-- numbers of routes; what one kind does not take goes to the other (one
-- more claim of the limited routes after the others), so that a claim comes
-- back short only when there is nothing more to claim.
--
-- Locks: the advisory locks of claim_batch_slots() come first, before any
-- row lock (see the lock order in sql/README); then each claim statement
-- takes its items (SKIP LOCKED) and the pending batches it starts (id
-- order). The pending batches of a limited route are locked only by the
-- holder of its advisory lock (and by single-row cancels and deletes), so
-- the two claim statements in one transaction cannot close a wait cycle
-- (provided every batchd serving a route has the same batch_concurrency
-- for it, as the fleet's configuration must).
CREATE OR REPLACE FUNCTION batchd.claim_items_shared(p_worker uuid, p_routes text[], p_limit int,
                                                     p_batch_routes text[],
                                                     p_batch_concurrency int[],
                                                     p_group_routes text[],
                                                     p_group_concurrency int[],
                                                     p_group_interval_ms float8[])
RETURNS TABLE (id bigint, batch_id uuid, route text, payload jsonb,
               attempts int, max_attempts int, group_key text)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
#variable_conflict use_column
DECLARE
    v_n      int;
    v_broutes text[];
    v_bconc  int[];
    v_other  text[];
    v_ask    int;
    v_got    int := 0;
    v_got2   int := 0;
    v_nb     int;
    v_no     int;
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_n := coalesce(cardinality(p_batch_routes), 0);
    IF coalesce(cardinality(p_batch_concurrency), 0) <> v_n THEN
        RAISE EXCEPTION 'batch_routes and batch_concurrency must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_n > 0 THEN
        IF EXISTS (SELECT 1 FROM unnest(p_batch_routes, p_batch_concurrency) AS u(r, c)
                    WHERE u.r IS NULL OR u.c IS NULL OR u.c < 0) THEN
            RAISE EXCEPTION 'batch_routes must not contain NULL and batch_concurrency must be >= 0'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(DISTINCT u.r) FROM unnest(p_batch_routes) AS u(r)) <> v_n THEN
            RAISE EXCEPTION 'batch_routes must not repeat a route'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    SELECT array_agg(u.r ORDER BY u.r), array_agg(u.c ORDER BY u.r)
      INTO v_broutes, v_bconc
      FROM unnest(p_batch_routes, p_batch_concurrency) AS u(r, c)
     WHERE u.r = ANY (p_routes)
       AND u.c > 0;
    SELECT array_agg(DISTINCT u.r)
      INTO v_other
      FROM unnest(p_routes) AS u(r)
     WHERE u.r IS NOT NULL
       AND (v_broutes IS NULL OR u.r <> ALL (v_broutes));

    IF v_broutes IS NULL THEN
        RETURN QUERY
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM batchd.claim_items(p_worker, v_other, p_limit, coalesce(p_group_routes, '{}'),
                                  coalesce(p_group_concurrency, '{}'),
                                  coalesce(p_group_interval_ms, '{}')) AS c;
        RETURN;
    END IF;

    -- The advisory locks before any row lock.
    FOR k IN 1 .. cardinality(v_broutes) LOOP
        PERFORM pg_advisory_xact_lock(1650549859, hashtext(v_broutes[k]));
    END LOOP;

    v_nb := cardinality(v_broutes);
    v_no := coalesce(cardinality(v_other), 0);
    v_ask := CASE WHEN v_no = 0 THEN p_limit
                  ELSE greatest(1, (p_limit * v_nb + v_nb + v_no - 1) / (v_nb + v_no)) END;
    RETURN QUERY
    SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
      FROM batchd.claim_batch_slots(p_worker, v_broutes, v_bconc, v_ask) AS c;
    GET DIAGNOSTICS v_got = ROW_COUNT;

    IF v_no > 0 AND v_got < p_limit THEN
        RETURN QUERY
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM batchd.claim_items(p_worker, v_other, p_limit - v_got,
                                  coalesce(p_group_routes, '{}'),
                                  coalesce(p_group_concurrency, '{}'),
                                  coalesce(p_group_interval_ms, '{}')) AS c;
        GET DIAGNOSTICS v_got2 = ROW_COUNT;
        IF v_got >= v_ask AND v_got + v_got2 < p_limit THEN
            RETURN QUERY
            SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
              FROM batchd.claim_batch_slots(p_worker, v_broutes, v_bconc,
                                            p_limit - v_got - v_got2) AS c;
        END IF;
    END IF;
END
$fn$;

COMMENT ON FUNCTION batchd.claim_items_shared(uuid, text[], int, text[], int[], text[], int[], float8[]) IS
    'Claim like claim_items(), with at most batch_concurrency[i] batches of each listed route at once, fleet-wide, sharing each claim between them.';
