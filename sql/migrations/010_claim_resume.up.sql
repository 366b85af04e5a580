-- 010_claim_resume.up.sql: a claim that resumes where the worker's previous
-- claim ended.
--
-- Why. A claimed item leaves a dead entry in the claim index (items_claim_idx)
-- until vacuum removes it, and claims take items from the head of that index.
-- So every claim that starts at the head first steps over the dead entries of
-- everything claimed since the last vacuum: marked dead after the first visit,
-- they cost no heap access, but their leaf pages are still read one by one.
-- autovacuum visits a database at most once per autovacuum_naptime (1 min by
-- default) and a pass over a large table takes a while, so during a long drain
-- the dead prefix grows to hundreds of thousands of entries. Measured on a
-- 1,000,000-item drain (2 cores, ~10,000 items/s): the head claim read 4 index
-- pages after the vacuum before the drain and 3,554 pages (~10 ms) 68 s later,
-- just before the first autovacuum pass; a claim's cost grew linearly with the
-- work done since the last vacuum.
--
-- What. claim_items(worker, routes, limit, after_priority, after_id) is 001's
-- claim_items(worker, routes, limit) (same locking, same 'started' handling of
-- pending batches) with a starting point: given the (priority, id) of the last
-- item of the worker's previous claim, it first takes queued items of that same
-- priority with a larger id (one index descent to that key, then O(limit)),
-- and only when those are fewer than `limit` does it go on with a claim from
-- the head, for the rest. With NULLs it is exactly a claim from the head. It
-- also returns each item's priority, so that the caller knows where to resume.
--
-- What the caller must do (batchd's engine does): resume only while its claims
-- come back full and nothing may have appeared ahead of the starting point. An
-- item can appear there when a batch is submitted (possibly at a higher
-- priority, or with lower ids committed late), when items are released or
-- retried by an operator (all of which NOTIFY batchd_work), and when a
-- requeued item's run_after passes (no NOTIFY). So: claim from the head after
-- every NOTIFY, after a claim that came back short, and at least every few
-- hundred milliseconds; in between, resume. Items ahead of the starting point
-- are then never later than that interval, and the claim does not depend on
-- the caller for correctness in any other way: the same rows are locked
-- (SKIP LOCKED) and re-checked as from the head.

-- Plans. The two pickers are planned on every call with the actual starting
-- point, routes and limit (EXECUTE plans each time, with the values as
-- constants to the planner: the LIMIT and the route equality must be known to
-- keep the index-ordered scan, see 001). The claim statement itself takes an
-- id array and is the same for every call, so PL/pgSQL keeps its plan (a
-- primary-key lookup per id) instead of planning it per call as 001 does
-- (force_custom_plan there): that planning was ~0.2 ms per claim.
CREATE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit int,
                                   p_after_priority int, p_after_id bigint)
RETURNS TABLE (id bigint, batch_id uuid, route text, payload jsonb,
               attempts int, max_attempts int, group_key text, priority int)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
#variable_conflict use_column
DECLARE
    -- One route: the equality the btree checks on the index tuple, as in 001;
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

    -- (2) The rest from the head, as 001 does. Rows locked in (1) are still
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

    -- (3) Claim them and start their pending batches, as 001 does.
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
