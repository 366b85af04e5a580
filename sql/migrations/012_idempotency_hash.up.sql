-- 012_idempotency_hash.up.sql: what an Idempotency-Key is compared with.
--
-- A submit that repeats a live key (used less than idempotency_ttl ago, 24
-- hours by default) with the same request gets the first batch back; with a
-- different request it is refused (SQLSTATE BD422, HTTP 422
-- idempotency_key_reused). The request is known by its SHA-256, stored with
-- the key (batchd.api_submit() in functions/submit.sql computes it).
--
-- Batches submitted before this version have a key but no hash: a repeat of
-- their key gets them back, whatever its request, as before.
--
-- api_submit() gains the TTL as a sixth argument (functions/submit.sql drops
-- the five-argument one).
ALTER TABLE batchd.batches
    ADD COLUMN idempotency_hash bytea
        CONSTRAINT batches_idempotency_hash_check
        CHECK (idempotency_hash IS NULL
               OR (octet_length(idempotency_hash) = 32 AND idempotency_key IS NOT NULL));

COMMENT ON COLUMN batchd.batches.idempotency_hash IS
    'SHA-256 of the request that used idempotency_key (route, items, options), or NULL';
COMMENT ON COLUMN batchd.batches.idempotency_key IS
    'Idempotency-Key of the REST submit that created the batch (unique per tenant; a key older than idempotency_ttl moves to the next batch that uses it), or NULL';
