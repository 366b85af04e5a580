-- 001_core.down.sql: undo 001_core.up.sql.
--
-- Run by `batchd migrate` in one transaction (with its advisory lock), which also
-- removes version 1 from batchd.schema_migrations. Schema batchd and
-- batchd.schema_migrations stay: they belong to the migration runner.
--
-- No CASCADE and no IF EXISTS: if something outside these migrations depends on
-- these objects, or the schema has drifted, the down migration fails and rolls
-- back instead of silently dropping more (or less) than 001 created.

-- Functions first (PL/pgSQL bodies do not record dependencies on tables).
DROP FUNCTION batchd.check_consistency();
DROP FUNCTION batchd.deregister_worker(uuid);
DROP FUNCTION IF EXISTS batchd.heartbeat(uuid, int);          -- 011 dropped it
DROP FUNCTION IF EXISTS batchd.register_worker(uuid, text, int, text);  -- 011 dropped it
DROP FUNCTION batchd.release_items(uuid, bigint[]);
DROP FUNCTION batchd.complete_items(uuid, jsonb);
DROP FUNCTION batchd.claim_items(uuid, text[], int);
DROP FUNCTION batchd.submit_batch(text, text, jsonb, jsonb);

-- Then tables, referencing tables before the referenced one. Their indexes,
-- constraints and identity sequences go with them.
DROP TABLE batchd.batch_events;
DROP TABLE batchd.items;
DROP TABLE batchd.workers;
DROP TABLE batchd.batches;
