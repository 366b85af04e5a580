-- 002_api.down.sql: undo 002_api.up.sql.
--
-- Like 001's down: no CASCADE and no IF EXISTS, so a drifted schema makes the
-- down migration fail and roll back rather than drop more or less than 002
-- created. Idempotency keys and tokens are lost.

DROP FUNCTION batchd.delete_batch(text, uuid);
-- IF EXISTS: from 013 on retry_batch has three arguments, and 013's down
-- drops it.
DROP FUNCTION IF EXISTS batchd.retry_batch(text, uuid);
DROP TRIGGER batches_cancelled_finished ON batchd.batches;
DROP FUNCTION batchd.batches_cancelled_finished();
DROP FUNCTION batchd.cancel_batch(text, uuid);
-- IF EXISTS: from 012 on api_submit has six arguments, and 012's down drops it.
DROP FUNCTION IF EXISTS batchd.api_submit(text, text, jsonb, jsonb, text);
DROP FUNCTION batchd.api_ts(timestamptz);
DROP FUNCTION batchd.api_authenticate(bytea);
DROP FUNCTION batchd.revoke_token(text);
-- IF EXISTS: revoke_token_id came later (functions/tokens.sql, with 012).
DROP FUNCTION IF EXISTS batchd.revoke_token_id(bigint);
DROP FUNCTION batchd.create_token(text);

DROP TABLE batchd.api_tokens;

DROP INDEX batchd.batches_tenant_idempotency_key_idx;
ALTER TABLE batchd.batches DROP COLUMN idempotency_key;
