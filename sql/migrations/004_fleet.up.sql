-- 004_fleet.up.sql: a fleet of batchd processes on one database.
--
--   * workers.providers: the providers each worker calls, so that every
--     process can take its share (rate / live workers) of a provider's rate;
--   * worker_heartbeat(): heartbeat plus those shares, in one statement;
--   * reap_workers(): any live worker requeues the running items of workers
--     whose heartbeat is older than the lease (attempt counted; items that
--     reach max_attempts this way fail with "worker lost");
--   * release_unheld(): after a reconnect, a worker puts back items that a
--     claim lost with the connection left under its id.
--
-- Lock order, as in 001: worker row (reaper only), then items, then batch
-- rows in id order (complete_items and release_items do the last two).

ALTER TABLE batchd.workers ADD COLUMN providers text[] NOT NULL DEFAULT '{}';

COMMENT ON COLUMN batchd.workers.providers IS
    'Providers this worker calls; a provider''s rate is shared among its live workers';

CREATE FUNCTION batchd.register_worker(p_id uuid, p_hostname text, p_pid int,
                                       p_version text, p_providers text[])
RETURNS void
LANGUAGE sql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
    INSERT INTO batchd.workers AS w (id, hostname, pid, version, providers)
    VALUES (p_id, p_hostname, p_pid, p_version, coalesce(p_providers, '{}'))
    ON CONFLICT (id) DO UPDATE
       SET hostname = excluded.hostname, pid = excluded.pid,
           version = excluded.version, providers = excluded.providers,
           heartbeat_at = now();
$fn$;

COMMENT ON FUNCTION batchd.register_worker(uuid, text, int, text, text[]) IS
    'Insert or refresh a worker row with the providers it calls.';

-- Heartbeat and fleet shares in one round trip. registered is false when the
-- row is gone (the worker was declared dead): the caller registers again.
-- shares maps each provider to the number of live workers calling it.
CREATE FUNCTION batchd.worker_heartbeat(p_id uuid, p_inflight int, p_lease_ms bigint)
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

-- Put back (no attempt spent) the items running under p_worker that are not
-- in p_held: claims whose answer never reached the worker.
CREATE FUNCTION batchd.release_unheld(p_worker uuid, p_held bigint[])
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

-- Recover dead workers: heartbeat older than the lease. Each dead worker row
-- is locked with SKIP LOCKED, so two reapers never handle the same worker,
-- and deleted in the same transaction, so nothing is requeued twice. Running
-- items whose attempts reached max_attempts fail with "worker lost" (through
-- complete_items, so counters and batch status move as for any failure); the
-- others go back to the queue with their attempt counted.
CREATE FUNCTION batchd.reap_workers(p_self uuid, p_lease_ms bigint)
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
            UPDATE batchd.items AS i
               SET attempts = i.attempts + 1
             WHERE i.id = ANY (v_ids)
               AND i.status = 'queued';
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT i.batch_id, 'recovered',
                   jsonb_build_object('worker', v_worker, 'items', count(*))
              FROM batchd.items AS i
             WHERE i.id = ANY (v_ids)
             GROUP BY i.batch_id;
            requeued := requeued + v_n;
        END IF;

        DELETE FROM batchd.workers WHERE id = v_worker;
        workers := workers + 1;
    END LOOP;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION batchd.reap_workers(uuid, bigint) IS
    'Requeue (or fail after max_attempts) the items of workers silent longer than the lease, and delete those workers.';
