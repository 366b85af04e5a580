-- 008_register.down.sql: revert 008_register.up.sql.
DROP FUNCTION batchd.worker_register(uuid, text, int, text, text[], bigint);
