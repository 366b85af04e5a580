-- 005_ops.down.sql: revert 005_ops.up.sql.
DROP FUNCTION batchd.purge_finished(bigint, int, int);
DROP FUNCTION batchd.record_completions(uuid, jsonb);
