-- workers.sql: workers and leases: register, heartbeat (fleet shares), release held items, deregister, and the reaper of dead workers.
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

CREATE OR REPLACE FUNCTION batchd.worker_register(p_id uuid, p_hostname text, p_pid int,
                                       p_version text, p_providers text[], p_lease_ms bigint)
RETURNS TABLE (existed boolean, shares jsonb)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    INSERT INTO batchd.workers AS w (id, hostname, pid, version, providers)
    VALUES (p_id, p_hostname, p_pid, p_version, coalesce(p_providers, '{}'))
    ON CONFLICT (id) DO UPDATE
       SET hostname = excluded.hostname, pid = excluded.pid,
           version = excluded.version, providers = excluded.providers,
           heartbeat_at = now()
    RETURNING (w.xmax <> 0) INTO existed;   -- xmax is set when the row was updated
    SELECT coalesce(jsonb_object_agg(s.provider, s.n), '{}'::jsonb)
      INTO shares
      FROM (SELECT p.provider, count(*) AS n
              FROM batchd.workers AS w,
                   unnest(w.providers) AS p(provider)
             WHERE w.heartbeat_at > now() - make_interval(secs => p_lease_ms / 1000.0)
             GROUP BY p.provider) AS s;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION batchd.worker_register(uuid, text, int, text, text[], bigint) IS
    'Insert or refresh a worker row; returns whether it existed and the live workers per provider.';

-- Heartbeat and fleet shares in one round trip. registered is false when the
-- row is gone (the worker was declared dead): the caller registers again.
-- shares maps each provider to the number of live workers calling it.
CREATE OR REPLACE FUNCTION batchd.worker_heartbeat(p_id uuid, p_inflight int, p_lease_ms bigint)
RETURNS TABLE (registered boolean, shares jsonb)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    UPDATE batchd.workers
       SET heartbeat_at = now(), inflight = coalesce(p_inflight, 0)
     WHERE id = p_id;
    registered := FOUND;
    SELECT coalesce(jsonb_object_agg(s.provider, s.n), '{}'::jsonb)
      INTO shares
      FROM (SELECT p.provider, count(*) AS n
              FROM batchd.workers AS w,
                   unnest(w.providers) AS p(provider)
             WHERE w.heartbeat_at > now() - make_interval(secs => p_lease_ms / 1000.0)
             GROUP BY p.provider) AS s;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION batchd.worker_heartbeat(uuid, int, bigint) IS
    'Refresh a worker''s heartbeat; returns whether its row exists and the live workers per provider.';

-- batchd.release_items(worker, ids) -> number released
--
-- Requeue the worker's running items of ids (all of them when ids is NULL)
-- without spending an attempt, with a 'released' event per batch and a NOTIFY
-- per route. The items are locked first, in id order (noting which hold a
-- group slot), then the group rows of the slot holders ((route, group_key)
-- order) and the batch rows (id order, as complete_items() does), then the
-- items are requeued with their slots given back in the same statement. deregister_worker() calls this function, so it
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
    -- a trigger on items may lock batch rows during the update (items_requeue_cancelled does, for
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

-- Put back (no attempt spent) the items running under p_worker that are not
-- in p_held: claims whose answer never reached the worker.
CREATE OR REPLACE FUNCTION batchd.release_unheld(p_worker uuid, p_held bigint[])
RETURNS int
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(i.id ORDER BY i.id)
      INTO v_ids
      FROM batchd.items AS i
     WHERE i.status = 'running'
       AND i.worker_id = p_worker
       AND NOT (i.id = ANY (coalesce(p_held, '{}')));
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN batchd.release_items(p_worker, v_ids);
END
$fn$;

COMMENT ON FUNCTION batchd.release_unheld(uuid, bigint[]) IS
    'Requeue a worker''s running items that it does not hold (lost claims); returns the count.';

-- Deregister at graceful stop: requeue whatever the worker still holds (no
-- attempt spent), then delete its row. Returns the number of items released.
CREATE OR REPLACE FUNCTION batchd.deregister_worker(p_id uuid)
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

-- batchd.reap_workers(self, lease) -> (workers, requeued, failed)
--
-- For each worker silent longer than the lease (not self; SKIP LOCKED, so
-- two reapers never take the same one): fail with 'worker lost' its running
-- items that have spent max_attempts, requeue the rest with the attempt
-- counted and a 'recovered' event per batch (detail: worker, items = the
-- count, item_ids = the first 100 ids in id order, item_ids_truncated),
-- delete its row. Then the same for orphans (running items of a worker id
-- with no row, started longer than the lease ago).
CREATE OR REPLACE FUNCTION batchd.reap_workers(p_self uuid, p_lease_ms bigint)
RETURNS TABLE (workers int, requeued int, failed int)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_worker uuid;
    v_recs   jsonb;
    v_ids    bigint[];
    v_n      int;
BEGIN
    workers := 0;
    requeued := 0;
    failed := 0;
    FOR v_worker IN
        SELECT w.id
          FROM batchd.workers AS w
         WHERE w.heartbeat_at < now() - make_interval(secs => p_lease_ms / 1000.0)
           AND w.id IS DISTINCT FROM p_self
         ORDER BY w.id
           FOR UPDATE SKIP LOCKED
    LOOP
        SELECT jsonb_agg(jsonb_build_object('id', i.id, 'status', 'failed',
                                            'error', 'worker lost',
                                            'finished_at', now()) ORDER BY i.id),
               count(*)
          INTO v_recs, v_n
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.worker_id = v_worker
           AND i.attempts >= i.max_attempts;
        IF v_n > 0 THEN
            PERFORM batchd.complete_items(v_worker, v_recs);
            failed := failed + v_n;
        END IF;

        SELECT array_agg(i.id ORDER BY i.id)
          INTO v_ids
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.worker_id = v_worker;
        IF v_ids IS NOT NULL THEN
            -- release_items refunds the attempt; a lost worker spends it, so
            -- add it back (the rows stay locked by this transaction between
            -- the two statements: nobody can claim them in between).
            v_n := batchd.release_items(v_worker, v_ids);
            -- one 'recovered' event per batch, with the ids requeued (the
            -- first 100; items is the count), so that an operator can see
            -- afterwards which items a dead worker held
            WITH bumped AS (
                UPDATE batchd.items AS i
                   SET attempts = i.attempts + 1
                 WHERE i.id = ANY (v_ids)
                   AND i.status = 'queued'
                RETURNING i.id, i.batch_id
            )
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT b.batch_id, 'recovered',
                   jsonb_build_object('worker', v_worker, 'items', count(*),
                                      'item_ids', to_jsonb((array_agg(b.id ORDER BY b.id))[1:100]),
                                      'item_ids_truncated', count(*) > 100)
              FROM bumped AS b
             GROUP BY b.batch_id
             ORDER BY b.batch_id;
            requeued := requeued + v_n;
        END IF;

        DELETE FROM batchd.workers WHERE id = v_worker;
        workers := workers + 1;
    END LOOP;

    -- Orphans: items running under a worker id that has no row any more (a
    -- worker reaped while alive that claimed, then died before registering
    -- again) and started longer than the lease ago: back to the queue, the
    -- attempt counted and a 'recovered' event written, like any dead
    -- worker's.
    FOR v_worker IN
        SELECT DISTINCT i.worker_id
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.started_at < now() - make_interval(secs => p_lease_ms / 1000.0)
           AND NOT EXISTS (SELECT 1 FROM batchd.workers AS w WHERE w.id = i.worker_id)
    LOOP
        SELECT array_agg(i.id ORDER BY i.id)
          INTO v_ids
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.worker_id = v_worker;
        IF v_ids IS NOT NULL THEN
            v_n := batchd.release_items(v_worker, v_ids);
            WITH bumped AS (
                UPDATE batchd.items AS i
                   SET attempts = i.attempts + 1
                 WHERE i.id = ANY (v_ids)
                   AND i.status = 'queued'
                RETURNING i.id, i.batch_id
            )
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT b.batch_id, 'recovered',
                   jsonb_build_object('worker', v_worker, 'items', count(*),
                                      'item_ids', to_jsonb((array_agg(b.id ORDER BY b.id))[1:100]),
                                      'item_ids_truncated', count(*) > 100)
              FROM bumped AS b
             GROUP BY b.batch_id
             ORDER BY b.batch_id;
            requeued := requeued + v_n;
        END IF;
    END LOOP;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION batchd.reap_workers(uuid, bigint) IS
    'Requeue (or fail after max_attempts) the items of workers silent longer than the lease, with a recovered event per batch listing them, and delete those workers.';
