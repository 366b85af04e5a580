-- 004_fleet.down.sql: revert 004_fleet.up.sql.
DROP FUNCTION batchd.reap_workers(uuid, bigint);
DROP FUNCTION batchd.release_unheld(uuid, bigint[]);
DROP FUNCTION batchd.worker_heartbeat(uuid, int, bigint);
DROP FUNCTION IF EXISTS batchd.register_worker(uuid, text, int, text, text[]);  -- 011 dropped it
ALTER TABLE batchd.workers DROP COLUMN providers;
