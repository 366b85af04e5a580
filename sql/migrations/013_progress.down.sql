-- 013_progress.down.sql: undo 013_progress.up.sql.
--
-- The three-argument retry_batch() reads the dropped column: it goes too (the
-- release before this one defines its two-argument retry_batch() again when
-- its `batchd migrate` applies its function files).
DROP VIEW batchd.tenant_stats;
DROP VIEW batchd.batch_status;
DROP INDEX batchd.batches_active_route_idx;
DROP FUNCTION IF EXISTS batchd.retry_batch(text, uuid, integer);
ALTER TABLE batchd.batches DROP COLUMN retries;
