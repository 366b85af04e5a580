-- 013_progress.up.sql: batch-level retry count, the index progress uses to
-- tell a waiting batch, and the operators' summary views.
--
-- batches.retries counts the retries of a batch (batchd.retry_batch() in
-- functions/batches.sql increments it and refuses one beyond
-- max_batch_retries: 'retry_limit', HTTP 409 retry_limit_reached).
-- functions/batches.sql drops the two-argument retry_batch() for the
-- three-argument one that takes the cap.
ALTER TABLE batchd.batches
    ADD COLUMN retries integer NOT NULL DEFAULT 0
        CONSTRAINT batches_retries_check CHECK (retries >= 0);

COMMENT ON COLUMN batchd.batches.retries IS
    'How many times the batch was retried (retry_batch), at most max_batch_retries';

-- GET /v1/batches/ID/progress: the unfinished batches of a route ahead of
-- this one in claim order (higher priority, or equal and older).
CREATE INDEX batches_active_route_idx ON batchd.batches (route, priority DESC, created_at)
    WHERE status IN ('pending', 'processing');

-- One row per batch, with the counters the REST API shows and the last event.
CREATE VIEW batchd.batch_status AS
SELECT b.id, b.tenant, b.name, b.route, b.status, b.priority, b.total,
       greatest(b.total - b.succeeded - b.failed - b.cancelled - run.n, 0) AS queued,
       run.n AS running, b.succeeded, b.failed, b.cancelled, b.retries,
       CASE WHEN b.total > 0
            THEN round((b.succeeded + b.failed + b.cancelled) * 100.0 / b.total, 2)
            ELSE 100.00 END AS percent,
       b.created_at, b.started_at, b.finished_at,
       extract(epoch FROM coalesce(b.finished_at, now()) - b.started_at)::float8 AS duration_s,
       ev.event AS last_event, ev.at AS last_event_at
  FROM batchd.batches AS b
 CROSS JOIN LATERAL (SELECT count(*)::int AS n FROM batchd.items AS i
                      WHERE i.batch_id = b.id AND i.status = 'running') AS run
  LEFT JOIN LATERAL (SELECT e.event, e.at FROM batchd.batch_events AS e
                      WHERE e.batch_id = b.id ORDER BY e.id DESC LIMIT 1) AS ev ON true;

COMMENT ON VIEW batchd.batch_status IS
    'Operators: one row per batch with queued/running/finished counts, retries, percent, duration and the last event';

-- One row per tenant that has batches.
CREATE VIEW batchd.tenant_stats AS
SELECT b.tenant,
       count(*)::int AS batches,
       (count(*) FILTER (WHERE b.status IN ('pending', 'processing')))::int AS active_batches,
       coalesce(sum(b.total), 0)::bigint AS items,
       coalesce(sum(b.total - b.succeeded - b.failed - b.cancelled)
                FILTER (WHERE b.status IN ('pending', 'processing', 'cancelled')), 0)::bigint
           AS unfinished_items,
       coalesce(sum(b.succeeded), 0)::bigint AS succeeded,
       coalesce(sum(b.failed), 0)::bigint AS failed,
       coalesce(sum(b.cancelled), 0)::bigint AS cancelled,
       coalesce(sum(b.retries), 0)::bigint AS retries,
       min(b.created_at) FILTER (WHERE b.status IN ('pending', 'processing')) AS oldest_active_at,
       max(b.created_at) AS last_submit_at
  FROM batchd.batches AS b
 GROUP BY b.tenant;

COMMENT ON VIEW batchd.tenant_stats IS
    'Operators: per tenant, batches (all, active), items (all, unfinished, succeeded, failed, cancelled), retries, oldest active and last submit';
