-- 006_cancelled_release.up.sql: an item leaving 'running' for 'queued' while
-- its batch is cancelled is cancelled instead.
--
-- Cancelling a batch cancels its queued items and lets the running ones
-- finish. A running item can also go back to the queue without finishing:
-- graceful stop (release_items), a lost claim (release_unheld), a dead
-- worker (reap_workers), a deferral (complete_items with status 'queued').
-- Without this trigger such an item would be claimed and run again although
-- its batch was cancelled. The trigger moves the batch's cancelled counter
-- in the same statement, so counters keep matching the items, and the
-- batches_cancelled_finished trigger (002) then sets finished_at when the
-- last item is accounted for.
--
-- Lock order: the item row is locked by the UPDATE that fires this, then the
-- batch row: items first, then batches, as everywhere else.

CREATE FUNCTION batchd.items_requeue_cancelled()
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

CREATE TRIGGER items_requeue_cancelled
    BEFORE UPDATE OF status ON batchd.items
    FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status = 'queued')
    EXECUTE FUNCTION batchd.items_requeue_cancelled();
