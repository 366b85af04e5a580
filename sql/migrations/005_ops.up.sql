-- 005_ops.up.sql: operations helpers.
--
--   * record_completions(): complete_items() plus a summary of every batch
--     that reached a terminal status in this call, so the worker that
--     finished a batch can log it (once, by construction);
--   * purge_finished(): retention, deleting old finished batches (with their
--     items and events) a few at a time.

CREATE FUNCTION batchd.record_completions(p_worker uuid, p_items jsonb)
RETURNS TABLE (applied int, fenced int, finished jsonb)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_batches uuid[];
BEGIN
    SELECT c.applied, c.fenced INTO applied, fenced
      FROM batchd.complete_items(p_worker, p_items) AS c;
    -- batches of these items that this transaction moved to a terminal
    -- status (finished_at = now() is this transaction's timestamp)
    SELECT array_agg(DISTINCT i.batch_id)
      INTO v_batches
      FROM batchd.items AS i
     WHERE i.id IN (SELECT (e ->> 'id')::bigint FROM jsonb_array_elements(p_items) AS e);
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

-- Delete finished batches whose finished_at is older than p_older_ms, up to
-- p_max_batches batches or about p_max_items items per call (at least one
-- batch), oldest first. Items and events go with their batch (ON DELETE
-- CASCADE). Returns the number of batches deleted; call again while it
-- returns a full chunk.
CREATE FUNCTION batchd.purge_finished(p_older_ms bigint, p_max_batches int DEFAULT 20,
                                      p_max_items int DEFAULT 50000)
RETURNS int
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_ids uuid[];
    v_n   int;
BEGIN
    SELECT array_agg(s.id)
      INTO v_ids
      FROM (SELECT b.id,
                   sum(b.total) OVER (ORDER BY b.finished_at, b.id) AS running_items,
                   row_number() OVER (ORDER BY b.finished_at, b.id) AS rn
              FROM batchd.batches AS b
             WHERE b.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled')
               AND b.finished_at < now() - make_interval(secs => p_older_ms / 1000.0)
             ORDER BY b.finished_at, b.id
             LIMIT p_max_batches) AS s
     WHERE s.rn = 1 OR s.running_items <= p_max_items;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM batchd.batches AS b
     WHERE b.id = ANY (v_ids)
       AND b.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$fn$;

COMMENT ON FUNCTION batchd.purge_finished(bigint, int, int) IS
    'Retention: delete up to a chunk of finished batches older than the given age; returns how many.';
