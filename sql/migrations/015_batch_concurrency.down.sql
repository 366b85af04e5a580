-- 015_batch_concurrency.down.sql: undo 015_batch_concurrency.up.sql.
--
-- The claim functions that use the table go with it (the release before this
-- one has no batch_concurrency; its claims never call them).
DROP FUNCTION IF EXISTS batchd.claim_items_shared(uuid, text[], integer, text[], integer[],
                                                  text[], integer[], double precision[]);
DROP FUNCTION IF EXISTS batchd.claim_batch_slots(uuid, text[], integer[], integer);
DROP TABLE batchd.batch_slots;
