-- 002_api.up.sql: what the REST API needs: bearer tokens, idempotent submits,
-- and the batch state changes (cancel, retry, delete) as atomic functions.
--
-- Run by `batchd migrate` in one transaction under its advisory lock (no
-- BEGIN/COMMIT here). Same rules as 001: built-in features only, every
-- function pins its search_path, and every writer follows 001's lock order:
--   1. item rows first;
--   2. then batch rows, sorted by id (FOR NO KEY UPDATE, or FOR UPDATE to delete).
-- cancel_batch, retry_batch and delete_batch touch one batch each, so "sorted
-- by id" is trivially true; what matters is that none of them waits for an item
-- lock while holding a batch lock, exactly like claim_items and complete_items.
--
-- The functions take the tenant as their first argument: a batch of another
-- tenant is reported exactly like a batch that does not exist ('not_found').

---------------------------------------------------------------------------
-- Idempotent submits
---------------------------------------------------------------------------

-- The Idempotency-Key of the submit that created the batch, unique per tenant.
ALTER TABLE batchd.batches
    ADD COLUMN idempotency_key text
        CONSTRAINT batches_idempotency_key_check
        CHECK (char_length(idempotency_key) BETWEEN 1 AND 200);

COMMENT ON COLUMN batchd.batches.idempotency_key IS
    'Idempotency-Key of the REST submit that created the batch (unique per tenant), or NULL';

CREATE UNIQUE INDEX batches_tenant_idempotency_key_idx
    ON batchd.batches (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

---------------------------------------------------------------------------
-- Tokens
---------------------------------------------------------------------------

-- Bearer tokens of the REST API. Only the SHA-256 of a token is stored: the
-- token itself is shown once, by create_token(). batchd hashes the presented
-- token itself and looks the hash up, so the token never travels to SQL.
CREATE TABLE batchd.api_tokens (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash   bytea       NOT NULL
                 CONSTRAINT api_tokens_token_hash_key UNIQUE
                 CONSTRAINT api_tokens_token_hash_check CHECK (octet_length(token_hash) = 32),
    tenant       text        NOT NULL
                 CONSTRAINT api_tokens_tenant_check
                 CHECK (btrim(tenant) <> '' AND char_length(tenant) <= 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,           -- refreshed at most once a minute
    revoked      boolean     NOT NULL DEFAULT false,
    revoked_at   timestamptz
);

COMMENT ON TABLE batchd.api_tokens IS
    'REST API bearer tokens, stored as SHA-256 hashes; each belongs to one tenant';

-- batchd.create_token(tenant) -> token
--
-- A new random token for the tenant, returned once: "bd_" and 64 hex digits
-- (two gen_random_uuid() values, i.e. 244 bits from the server's strong
-- random source). Only its SHA-256 is stored.
CREATE FUNCTION batchd.create_token(p_tenant text)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_token text;
BEGIN
    IF p_tenant IS NULL OR btrim(p_tenant) = '' OR char_length(p_tenant) > 200 THEN
        RAISE EXCEPTION 'tenant must be a non-empty string of at most 200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_token := 'bd_' || translate(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    INSERT INTO batchd.api_tokens (token_hash, tenant)
    VALUES (sha256(convert_to(v_token, 'UTF8')), p_tenant);
    RETURN v_token;
END
$fn$;

COMMENT ON FUNCTION batchd.create_token(text) IS
    'Create a REST API token for a tenant; returns the token (shown once, stored only as its SHA-256).';

-- batchd.revoke_token(token) -> true when a live token was revoked. Takes
-- effect on the next request (batchd does not cache tokens).
CREATE FUNCTION batchd.revoke_token(p_token text)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    IF p_token IS NULL THEN
        RETURN false;
    END IF;
    UPDATE batchd.api_tokens
       SET revoked = true, revoked_at = now()
     WHERE token_hash = sha256(convert_to(p_token, 'UTF8'))
       AND NOT revoked;
    RETURN FOUND;
END
$fn$;

COMMENT ON FUNCTION batchd.revoke_token(text) IS
    'Revoke a REST API token; true when a live token was revoked.';

-- batchd.api_authenticate(sha256 of the token) -> tenant, or NULL for an
-- unknown or revoked token. Refreshes last_used_at at most once a minute per
-- token, and never waits for that: a row another request is refreshing right
-- now is skipped.
CREATE FUNCTION batchd.api_authenticate(p_hash bytea)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_id     bigint;
    v_tenant text;
    v_last   timestamptz;
BEGIN
    SELECT t.id, t.tenant, t.last_used_at INTO v_id, v_tenant, v_last
      FROM batchd.api_tokens AS t
     WHERE t.token_hash = p_hash
       AND NOT t.revoked;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_last IS NULL OR v_last < now() - interval '1 minute' THEN
        UPDATE batchd.api_tokens AS t
           SET last_used_at = now()
         WHERE t.id = (SELECT u.id
                         FROM batchd.api_tokens AS u
                        WHERE u.id = v_id
                          AND (u.last_used_at IS NULL
                               OR u.last_used_at < now() - interval '1 minute')
                          FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN v_tenant;
END
$fn$;

COMMENT ON FUNCTION batchd.api_authenticate(bytea) IS
    'Tenant of a live token given its SHA-256, or NULL; refreshes last_used_at at most once a minute.';

---------------------------------------------------------------------------
-- Helpers for the REST API's output
---------------------------------------------------------------------------

-- RFC 3339 UTC with microseconds ("2026-11-23T01:02:03.123456Z"), the format
-- of every timestamp in the API, independent of the session's TimeZone and
-- DateStyle. No SET clause and a qualified body, so the planner can inline it.
CREATE FUNCTION batchd.api_ts(p_at timestamptz)
RETURNS text
LANGUAGE sql
STABLE
PARALLEL SAFE
AS $fn$
    SELECT pg_catalog.to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$fn$;

COMMENT ON FUNCTION batchd.api_ts(timestamptz) IS
    'Timestamp as RFC 3339 UTC with microseconds, as the REST API shows it.';

---------------------------------------------------------------------------
-- Submit with an idempotency key
---------------------------------------------------------------------------

-- batchd.api_submit(tenant, route, items, options, idempotency_key) -> (id, created)
--
-- submit_batch() (same validation, same SQLSTATE 22023 on bad input), plus an
-- optional idempotency key: when the tenant already has a batch with this
-- key, nothing is inserted and that batch is returned with created = false.
-- Two concurrent submits with the same key: both insert, the second one's key
-- update waits on the unique index for the first to commit, then fails with
-- unique_violation; its subtransaction (its batch and items) is rolled back and
-- it returns the first batch. If the first rolls back instead, the second wins.
CREATE FUNCTION batchd.api_submit(p_tenant text, p_route text, p_items jsonb,
                                  p_options jsonb, p_idempotency_key text)
RETURNS TABLE (id uuid, created boolean)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
#variable_conflict use_column
DECLARE
    v_id uuid;
BEGIN
    IF p_idempotency_key IS NULL THEN
        RETURN QUERY SELECT batchd.submit_batch(p_tenant, p_route, p_items, p_options), true;
        RETURN;
    END IF;
    IF char_length(p_idempotency_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'idempotency key must have 1 to 200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT b.id INTO v_id
      FROM batchd.batches AS b
     WHERE b.tenant = p_tenant AND b.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        RETURN QUERY SELECT v_id, false;
        RETURN;
    END IF;

    BEGIN
        v_id := batchd.submit_batch(p_tenant, p_route, p_items, p_options);
        -- The new batch row is ours alone until commit: no lock order issue.
        UPDATE batchd.batches AS b SET idempotency_key = p_idempotency_key WHERE b.id = v_id;
    EXCEPTION WHEN unique_violation THEN
        SELECT b.id INTO v_id
          FROM batchd.batches AS b
         WHERE b.tenant = p_tenant AND b.idempotency_key = p_idempotency_key;
        IF NOT FOUND THEN
            RAISE;
        END IF;
        RETURN QUERY SELECT v_id, false;
        RETURN;
    END;
    RETURN QUERY SELECT v_id, true;
END
$fn$;

COMMENT ON FUNCTION batchd.api_submit(text, text, jsonb, jsonb, text) IS
    'submit_batch() with an optional per-tenant idempotency key; returns (id, created).';

---------------------------------------------------------------------------
-- Cancel
---------------------------------------------------------------------------

-- batchd.cancel_batch(tenant, id) -> 'ok' | 'not_found' | 'terminal'
--
-- A pending or processing batch becomes 'cancelled': its queued items become
-- cancelled (finished_at = now()) and the batch's cancelled counter moves by
-- the same number in the same transaction. Running items are left alone: they
-- finish, complete_items() records them and moves the counters, and (as 001
-- keeps a cancelled batch cancelled) the batch stays cancelled.
--
-- finished_at of the batch is set now when nothing is running, else when the
-- last running item is recorded: complete_items() does not touch finished_at
-- of a cancelled batch, so the trigger below does it.
--
-- 'terminal': the batch was already completed, completed_with_errors, failed or
-- cancelled; nothing changed.
CREATE FUNCTION batchd.cancel_batch(p_tenant text, p_id uuid)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_status    text;
    v_cancelled int;
    v_running   int;
BEGIN
    SELECT b.status INTO v_status
      FROM batchd.batches AS b
     WHERE b.id = p_id AND b.tenant = p_tenant;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_status NOT IN ('pending', 'processing') THEN
        RETURN 'terminal';
    END IF;

    -- (1) Items first. A claimer holding some of these rows makes us wait
    -- until it commits; the rows are then running, no longer queued, and
    -- skipped. Claimers skip the rows we lock (SKIP LOCKED).
    WITH c AS (
        UPDATE batchd.items AS i
           SET status = 'cancelled', finished_at = now()
         WHERE i.batch_id = p_id
           AND i.status = 'queued'
        RETURNING 1
    )
    SELECT count(*)::int INTO v_cancelled FROM c;

    -- (2) Then the batch row.
    PERFORM 1 FROM batchd.batches AS b WHERE b.id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';          -- deleted meanwhile (it had finished)
    END IF;
    SELECT b.status INTO v_status FROM batchd.batches AS b WHERE b.id = p_id;

    SELECT count(*)::int INTO v_running
      FROM batchd.items AS i
     WHERE i.batch_id = p_id AND i.status = 'running';

    IF v_status NOT IN ('pending', 'processing') THEN
        -- Cancelled (or finished) by someone else meanwhile. Items we still
        -- found queued were put back after that (a worker released them): they
        -- stay cancelled and are counted, so the counters stay exact.
        IF v_cancelled > 0 THEN
            UPDATE batchd.batches AS b
               SET cancelled = b.cancelled + v_cancelled
             WHERE b.id = p_id;
        END IF;
        RETURN 'terminal';
    END IF;

    UPDATE batchd.batches AS b
       SET cancelled   = b.cancelled + v_cancelled,
           status      = 'cancelled',
           finished_at = CASE WHEN v_running = 0 THEN now() END
     WHERE b.id = p_id;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (p_id, 'cancelled', jsonb_build_object('cancelled', v_cancelled, 'running', v_running));
    RETURN 'ok';
END
$fn$;

COMMENT ON FUNCTION batchd.cancel_batch(text, uuid) IS
    'Cancel a pending/processing batch of a tenant (queued items cancelled, running ones finish); ok, not_found or terminal.';

-- A cancelled batch is finished when its last running item is recorded.
-- complete_items() (001) moves the counters of a cancelled batch but keeps
-- its status and finished_at; this sets finished_at at that moment.
CREATE FUNCTION batchd.batches_cancelled_finished()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    NEW.finished_at := now();
    RETURN NEW;
END
$fn$;

CREATE TRIGGER batches_cancelled_finished
    BEFORE UPDATE ON batchd.batches
    FOR EACH ROW
    WHEN (NEW.status = 'cancelled' AND NEW.finished_at IS NULL
          AND NEW.succeeded + NEW.failed + NEW.cancelled >= NEW.total)
    EXECUTE FUNCTION batchd.batches_cancelled_finished();

---------------------------------------------------------------------------
-- Retry
---------------------------------------------------------------------------

-- batchd.retry_batch(tenant, id)
--   -> 'ok' | 'not_found' | 'not_terminal' | 'running' | 'nothing_to_retry'
--
-- A finished batch (completed_with_errors, failed, cancelled; or completed,
-- which has nothing to retry) with no running item: its failed and cancelled
-- items go back to queued with attempts = 0 and their outcome cleared; the
-- counters move by the same numbers; the batch becomes processing again with
-- finished_at cleared (started_at keeps the first start); a 'retried' event
-- and a NOTIFY batchd_work wake the claimers.
CREATE FUNCTION batchd.retry_batch(p_tenant text, p_id uuid)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_status    text;
    v_route     text;
    v_failed    int;
    v_cancelled int;
BEGIN
    SELECT b.status, b.route INTO v_status, v_route
      FROM batchd.batches AS b
     WHERE b.id = p_id AND b.tenant = p_tenant;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_status IN ('pending', 'processing') THEN
        RETURN 'not_terminal';
    END IF;
    IF EXISTS (SELECT 1 FROM batchd.items AS i
                WHERE i.batch_id = p_id AND i.status = 'running') THEN
        RETURN 'running';
    END IF;

    -- (1) Items first. FOR UPDATE re-checks the status of rows a concurrent
    -- retry changed, so two retries never requeue the same item twice.
    WITH old AS (
        SELECT i.id, i.status
          FROM batchd.items AS i
         WHERE i.batch_id = p_id
           AND i.status IN ('failed', 'cancelled')
           FOR UPDATE
    ), requeued AS (
        UPDATE batchd.items AS i
           SET status = 'queued', attempts = 0, run_after = now(), worker_id = NULL,
               provider = NULL, http_status = NULL, result = NULL, error = NULL,
               started_at = NULL, finished_at = NULL
          FROM old
         WHERE i.id = old.id
        RETURNING old.status AS was
    )
    SELECT count(*) FILTER (WHERE r.was = 'failed')::int,
           count(*) FILTER (WHERE r.was = 'cancelled')::int
      INTO v_failed, v_cancelled
      FROM requeued AS r;

    IF v_failed + v_cancelled = 0 THEN
        RETURN 'nothing_to_retry';   -- nothing changed
    END IF;

    -- (2) Then the batch row. It cannot have changed status meanwhile without
    -- changing the items we now hold, but check rather than assume; the
    -- exception rolls the whole call back.
    SELECT b.status INTO v_status
      FROM batchd.batches AS b
     WHERE b.id = p_id
       FOR NO KEY UPDATE;
    IF NOT FOUND OR v_status IN ('pending', 'processing') THEN
        RAISE EXCEPTION 'batch % changed while being retried', p_id
            USING ERRCODE = 'BD409';
    END IF;

    UPDATE batchd.batches AS b
       SET failed = b.failed - v_failed,
           cancelled = b.cancelled - v_cancelled,
           status = 'processing',
           finished_at = NULL
     WHERE b.id = p_id;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (p_id, 'retried', jsonb_build_object('failed', v_failed, 'cancelled', v_cancelled,
                                                'previous_status', v_status));

    PERFORM pg_notify('batchd_work', v_route);
    RETURN 'ok';
END
$fn$;

COMMENT ON FUNCTION batchd.retry_batch(text, uuid) IS
    'Requeue the failed and cancelled items of a finished batch; ok, not_found, not_terminal, running or nothing_to_retry.';

---------------------------------------------------------------------------
-- Delete
---------------------------------------------------------------------------

-- batchd.delete_batch(tenant, id) -> 'ok' | 'not_found' | 'not_terminal' | 'running'
--
-- A finished batch with no running item goes, with its items and events.
-- Items are deleted first (lock order), only finished ones; if that is not
-- all of them (a concurrent retry requeued some), the call raises BD409 and
-- rolls back.
CREATE FUNCTION batchd.delete_batch(p_tenant text, p_id uuid)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_status  text;
    v_total   int;
    v_deleted int;
BEGIN
    SELECT b.status INTO v_status
      FROM batchd.batches AS b
     WHERE b.id = p_id AND b.tenant = p_tenant;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_status IN ('pending', 'processing') THEN
        RETURN 'not_terminal';
    END IF;
    IF EXISTS (SELECT 1 FROM batchd.items AS i
                WHERE i.batch_id = p_id AND i.status = 'running') THEN
        RETURN 'running';
    END IF;

    -- (1) Items first.
    DELETE FROM batchd.items AS i
     WHERE i.batch_id = p_id
       AND i.status IN ('succeeded', 'failed', 'cancelled');
    GET DIAGNOSTICS v_deleted = ROW_COUNT;

    -- (2) Then the batch row.
    SELECT b.status, b.total INTO v_status, v_total
      FROM batchd.batches AS b
     WHERE b.id = p_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';          -- deleted meanwhile
    END IF;
    IF v_status IN ('pending', 'processing') OR v_deleted <> v_total THEN
        RAISE EXCEPTION 'batch % changed while being deleted', p_id
            USING ERRCODE = 'BD409';
    END IF;

    DELETE FROM batchd.batch_events AS e WHERE e.batch_id = p_id;
    DELETE FROM batchd.batches AS b WHERE b.id = p_id;
    RETURN 'ok';
END
$fn$;

COMMENT ON FUNCTION batchd.delete_batch(text, uuid) IS
    'Delete a finished batch of a tenant with its items and events; ok, not_found, not_terminal or running.';
