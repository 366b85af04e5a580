-- maintenance.sql: maintenance: retention (purge_finished) and the consistency check.
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

-- Delete finished batches whose finished_at is older than p_older_ms, up to
-- p_max_batches batches or about p_max_items items per call (at least one
-- batch), oldest first. Items and events go with their batch (ON DELETE
-- CASCADE). Returns the number of batches deleted; call again while it
-- returns a full chunk.
CREATE OR REPLACE FUNCTION batchd.purge_finished(p_older_ms bigint, p_max_batches int DEFAULT 20,
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

-- Batches whose counters disagree with their items: total vs number of items,
-- and succeeded/failed/cancelled vs items in those statuses. Empty when all is
-- well. Reads every item (one hash aggregate): meant for tests and operators,
-- not for the hot path.
CREATE OR REPLACE FUNCTION batchd.check_consistency()
RETURNS TABLE (batch_id uuid, total int, items int,
               succeeded int, items_succeeded int,
               failed int, items_failed int,
               cancelled int, items_cancelled int)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, batchd
AS $fn$
    WITH agg AS (
        SELECT i.batch_id,
               count(*)::int                                        AS items,
               count(*) FILTER (WHERE i.status = 'succeeded')::int  AS items_succeeded,
               count(*) FILTER (WHERE i.status = 'failed')::int     AS items_failed,
               count(*) FILTER (WHERE i.status = 'cancelled')::int  AS items_cancelled
          FROM batchd.items AS i
         GROUP BY i.batch_id
    )
    SELECT b.id, b.total, coalesce(a.items, 0),
           b.succeeded, coalesce(a.items_succeeded, 0),
           b.failed,    coalesce(a.items_failed, 0),
           b.cancelled, coalesce(a.items_cancelled, 0)
      FROM batchd.batches AS b
      LEFT JOIN agg AS a ON a.batch_id = b.id
     WHERE (b.total, b.succeeded, b.failed, b.cancelled)
           IS DISTINCT FROM
           (coalesce(a.items, 0), coalesce(a.items_succeeded, 0),
            coalesce(a.items_failed, 0), coalesce(a.items_cancelled, 0))
     ORDER BY b.id;
$fn$;

COMMENT ON FUNCTION batchd.check_consistency() IS
    'Batches whose counters disagree with their items'' statuses; empty when consistent.';
