-- 012_idempotency_hash.down.sql: undo 012_idempotency_hash.up.sql.
--
-- The six-argument api_submit() reads the dropped column: it goes too (the
-- release before this one defines its five-argument api_submit() again when
-- its `batchd migrate` applies its function files).
DROP FUNCTION IF EXISTS batchd.api_submit(text, text, jsonb, jsonb, text, interval);
ALTER TABLE batchd.batches DROP COLUMN idempotency_hash;
COMMENT ON COLUMN batchd.batches.idempotency_key IS
    'Idempotency-Key of the REST submit that created the batch (unique per tenant), or NULL';
