-- batches.sql: cancel, retry and delete of a batch, and the triggers that finish a cancelled batch, announce it and cancel its released items.
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

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

COMMENT ON FUNCTION batchd.cancel_batch(text, uuid) IS
    'Cancel a pending/processing batch of a tenant (queued items cancelled, running ones finish); ok, not_found or terminal.';

-- A cancelled batch is finished when its last running item is recorded.
-- complete_items() moves the counters of a cancelled batch but keeps
-- its status and finished_at; this sets finished_at at that moment.
CREATE OR REPLACE FUNCTION batchd.batches_cancelled_finished()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    NEW.finished_at := now();
    RETURN NEW;
END
$fn$;

CREATE OR REPLACE TRIGGER batches_cancelled_finished
    BEFORE UPDATE ON batchd.batches
    FOR EACH ROW
    WHEN (NEW.status = 'cancelled' AND NEW.finished_at IS NULL
          AND NEW.succeeded + NEW.failed + NEW.cancelled >= NEW.total)
    EXECUTE FUNCTION batchd.batches_cancelled_finished();

CREATE OR REPLACE FUNCTION batchd.batches_notify_cancel()
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

CREATE OR REPLACE TRIGGER batches_notify_cancel
    AFTER UPDATE OF status ON batchd.batches
    FOR EACH ROW
    WHEN (NEW.status = 'cancelled' AND OLD.status IS DISTINCT FROM 'cancelled')
    EXECUTE FUNCTION batchd.batches_notify_cancel();

CREATE OR REPLACE FUNCTION batchd.items_requeue_cancelled()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    PERFORM 1 FROM batchd.batches AS b
     WHERE b.id = NEW.batch_id AND b.status = 'cancelled';
    IF FOUND THEN
        NEW.status := 'cancelled';
        NEW.worker_id := NULL;
        NEW.finished_at := now();
        UPDATE batchd.batches AS b
           SET cancelled = b.cancelled + 1
         WHERE b.id = NEW.batch_id;
    END IF;
    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION batchd.items_requeue_cancelled() IS
    'Trigger: a running item sent back to the queue while its batch is cancelled is cancelled instead.';

CREATE OR REPLACE TRIGGER items_requeue_cancelled
    BEFORE UPDATE OF status ON batchd.items
    FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status = 'queued')
    EXECUTE FUNCTION batchd.items_requeue_cancelled();

-- batchd.retry_batch(tenant, id, max_retries)
--   -> 'ok' | 'not_found' | 'not_terminal' | 'running' | 'nothing_to_retry'
--      | 'retry_limit'
--
-- A finished batch (completed_with_errors, failed, cancelled; or completed,
-- which has nothing to retry) with no running item: its failed and cancelled
-- items go back to queued with attempts = 0 and their outcome cleared; the
-- counters move by the same numbers; the batch becomes processing again with
-- finished_at cleared (started_at keeps the first start) and retries + 1; a
-- 'retried' event (with the retry's number) and a NOTIFY batchd_work wake
-- the claimers. A batch retried max_retries times already (the REST API
-- passes max_batch_retries; NULL: no cap) is refused with 'retry_limit'.
DROP FUNCTION IF EXISTS batchd.retry_batch(text, uuid);

CREATE OR REPLACE FUNCTION batchd.retry_batch(p_tenant text, p_id uuid,
                                              p_max_retries integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_status    text;
    v_route     text;
    v_failed    int;
    v_cancelled int;
    v_retries   int;
BEGIN
    SELECT b.status, b.route, b.retries INTO v_status, v_route, v_retries
      FROM batchd.batches AS b
     WHERE b.id = p_id AND b.tenant = p_tenant;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_status IN ('pending', 'processing') THEN
        RETURN 'not_terminal';
    END IF;
    IF EXISTS (SELECT 1 FROM batchd.items AS i
                WHERE i.batch_id = p_id AND i.status = 'running') THEN
        RETURN 'running';
    END IF;
    IF p_max_retries IS NOT NULL AND v_retries >= p_max_retries THEN
        RETURN 'retry_limit';
    END IF;

    -- (1) Items first. FOR UPDATE re-checks the status of rows a concurrent
    -- retry changed, so two retries never requeue the same item twice.
    WITH old AS (
        SELECT i.id, i.status
          FROM batchd.items AS i
         WHERE i.batch_id = p_id
           AND i.status IN ('failed', 'cancelled')
           FOR UPDATE
    ), requeued AS (
        UPDATE batchd.items AS i
           SET status = 'queued', attempts = 0, run_after = now(), worker_id = NULL,
               provider = NULL, http_status = NULL, result = NULL, error = NULL,
               started_at = NULL, finished_at = NULL
          FROM old
         WHERE i.id = old.id
        RETURNING old.status AS was
    )
    SELECT count(*) FILTER (WHERE r.was = 'failed')::int,
           count(*) FILTER (WHERE r.was = 'cancelled')::int
      INTO v_failed, v_cancelled
      FROM requeued AS r;

    IF v_failed + v_cancelled = 0 THEN
        RETURN 'nothing_to_retry';   -- nothing changed
    END IF;

    -- (2) Then the batch row. It cannot have changed status meanwhile without
    -- changing the items we now hold, but check rather than assume; the
    -- exception rolls the whole call back.
    SELECT b.status, b.retries INTO v_status, v_retries
      FROM batchd.batches AS b
     WHERE b.id = p_id
       FOR NO KEY UPDATE;
    IF NOT FOUND OR v_status IN ('pending', 'processing') THEN
        RAISE EXCEPTION 'batch % changed while being retried', p_id
            USING ERRCODE = 'BD409';
    END IF;

    UPDATE batchd.batches AS b
       SET failed = b.failed - v_failed,
           cancelled = b.cancelled - v_cancelled,
           status = 'processing',
           finished_at = NULL,
           retries = b.retries + 1
     WHERE b.id = p_id;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (p_id, 'retried', jsonb_build_object('failed', v_failed, 'cancelled', v_cancelled,
                                                'previous_status', v_status,
                                                'retry', v_retries + 1));

    PERFORM pg_notify('batchd_work', v_route);
    RETURN 'ok';
END
$fn$;

COMMENT ON FUNCTION batchd.retry_batch(text, uuid, integer) IS
    'Requeue the failed and cancelled items of a finished batch retried fewer than max_retries times; ok, not_found, not_terminal, running, nothing_to_retry or retry_limit.';

-- batchd.delete_batch(tenant, id) -> 'ok' | 'not_found' | 'not_terminal' | 'running'
--
-- A finished batch with no running item goes, with its items and events.
-- Items are deleted first (lock order), only finished ones; if that is not
-- all of them (a concurrent retry requeued some), the call raises BD409 and
-- rolls back.
CREATE OR REPLACE FUNCTION batchd.delete_batch(p_tenant text, p_id uuid)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_status  text;
    v_total   int;
    v_deleted int;
BEGIN
    SELECT b.status INTO v_status
      FROM batchd.batches AS b
     WHERE b.id = p_id AND b.tenant = p_tenant;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_status IN ('pending', 'processing') THEN
        RETURN 'not_terminal';
    END IF;
    IF EXISTS (SELECT 1 FROM batchd.items AS i
                WHERE i.batch_id = p_id AND i.status = 'running') THEN
        RETURN 'running';
    END IF;

    -- (1) Items first.
    DELETE FROM batchd.items AS i
     WHERE i.batch_id = p_id
       AND i.status IN ('succeeded', 'failed', 'cancelled');
    GET DIAGNOSTICS v_deleted = ROW_COUNT;

    -- (2) Then the batch row.
    SELECT b.status, b.total INTO v_status, v_total
      FROM batchd.batches AS b
     WHERE b.id = p_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';          -- deleted meanwhile
    END IF;
    IF v_status IN ('pending', 'processing') OR v_deleted <> v_total THEN
        RAISE EXCEPTION 'batch % changed while being deleted', p_id
            USING ERRCODE = 'BD409';
    END IF;

    DELETE FROM batchd.batch_events AS e WHERE e.batch_id = p_id;
    DELETE FROM batchd.batches AS b WHERE b.id = p_id;
    RETURN 'ok';
END
$fn$;

COMMENT ON FUNCTION batchd.delete_batch(text, uuid) IS
    'Delete a finished batch of a tenant with its items and events; ok, not_found, not_terminal or running.';
