-- 011_drop_superseded.up.sql: drop the functions that nothing calls any more.
--
-- From this version on, migrations hold DDL only: the current definition of
-- every function and trigger is in sql/functions/, applied by `batchd migrate`
-- after the migrations (see sql/README).
--
-- Superseded, without callers in batchd or in its SQL:
--   * heartbeat(worker, inflight) (001): worker_heartbeat(worker, inflight,
--     lease_ms) (004) also returns the fleet shares;
--   * register_worker(...) (001, and 004's with providers): worker_register
--     (008) also reaps and returns the lease.
-- IF EXISTS: 011's down does not bring them back (see there), so after a
-- down and up again they are gone already.
DROP FUNCTION IF EXISTS batchd.heartbeat(uuid, int);
DROP FUNCTION IF EXISTS batchd.register_worker(uuid, text, int, text);
DROP FUNCTION IF EXISTS batchd.register_worker(uuid, text, int, text, text[]);
