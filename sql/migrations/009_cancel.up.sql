-- 009_cancel.up.sql: cancellation and recovery, tightened.
--
--   * cancel_batch() locks the batch's queued items in id order (with SKIP
--     LOCKED) before cancelling them, so it cannot deadlock with
--     complete_items(), which locks items by id;
--   * a batch that becomes cancelled NOTIFYs batchd_cancel with its id, so
--     workers drop that batch's items they hold but have not sent yet (their
--     deferral turns them into cancelled items, trigger of 006);
--   * reap_workers() also recovers orphaned items: running under a worker id
--     that has no row, for longer than the lease.

CREATE OR REPLACE FUNCTION batchd.cancel_batch(p_tenant text, p_id uuid)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_status    text;
    v_cancelled int;
    v_running   int;
BEGIN
    SELECT b.status INTO v_status
      FROM batchd.batches AS b
     WHERE b.id = p_id AND b.tenant = p_tenant;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_status NOT IN ('pending', 'processing') THEN
        RETURN 'terminal';
    END IF;

    -- (1) Items first. A claimer holding some of these rows makes us wait
    -- until it commits; the rows are then running, no longer queued, and
    -- skipped. Claimers skip the rows we lock (SKIP LOCKED).
    -- Lock them in id order first (SKIP LOCKED: a row a claimer holds is
    -- about to be running anyway): a plain UPDATE locks in physical order
    -- and can deadlock with complete_items, which locks items by id.
    WITH l AS (
        SELECT i.id
          FROM batchd.items AS i
         WHERE i.batch_id = p_id
           AND i.status = 'queued'
         ORDER BY i.id
           FOR UPDATE SKIP LOCKED
    ), c AS (
        UPDATE batchd.items AS i
           SET status = 'cancelled', finished_at = now()
          FROM l
         WHERE i.id = l.id
           AND i.status = 'queued'
        RETURNING 1
    )
    SELECT count(*)::int INTO v_cancelled FROM c;

    -- (2) Then the batch row.
    PERFORM 1 FROM batchd.batches AS b WHERE b.id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';          -- deleted meanwhile (it had finished)
    END IF;
    SELECT b.status INTO v_status FROM batchd.batches AS b WHERE b.id = p_id;

    SELECT count(*)::int INTO v_running
      FROM batchd.items AS i
     WHERE i.batch_id = p_id AND i.status = 'running';

    IF v_status NOT IN ('pending', 'processing') THEN
        -- Cancelled (or finished) by someone else meanwhile. Items we still
        -- found queued were put back after that (a worker released them): they
        -- stay cancelled and are counted, so the counters stay exact.
        IF v_cancelled > 0 THEN
            UPDATE batchd.batches AS b
               SET cancelled = b.cancelled + v_cancelled
             WHERE b.id = p_id;
        END IF;
        RETURN 'terminal';
    END IF;

    UPDATE batchd.batches AS b
       SET cancelled   = b.cancelled + v_cancelled,
           status      = 'cancelled',
           finished_at = CASE WHEN v_running = 0 THEN now() END
     WHERE b.id = p_id;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (p_id, 'cancelled', jsonb_build_object('cancelled', v_cancelled, 'running', v_running));
    RETURN 'ok';
END
$fn$;

CREATE FUNCTION batchd.batches_notify_cancel()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    PERFORM pg_notify('batchd_cancel', NEW.id::text);
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION batchd.batches_notify_cancel() IS
    'Trigger: NOTIFY batchd_cancel with the id of a batch that was just cancelled.';

CREATE TRIGGER batches_notify_cancel
    AFTER UPDATE OF status ON batchd.batches
    FOR EACH ROW
    WHEN (NEW.status = 'cancelled' AND OLD.status IS DISTINCT FROM 'cancelled')
    EXECUTE FUNCTION batchd.batches_notify_cancel();

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

    -- Orphans: items running under a worker id that has no row any more (a
    -- worker reaped while alive that claimed, then died before registering
    -- again) and started longer than the lease ago: back to the queue, the
    -- attempt counted, like any dead worker's.
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
            UPDATE batchd.items AS i
               SET attempts = i.attempts + 1
             WHERE i.id = ANY (v_ids)
               AND i.status = 'queued';
            requeued := requeued + v_n;
        END IF;
    END LOOP;
    RETURN NEXT;
END
$fn$;
