-- tokens.sql: API tokens and the REST API's helpers (authentication, timestamps).
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

-- batchd.create_token(tenant) -> token
--
-- A new random token for the tenant, returned once: "bd_" and 64 hex digits
-- (two gen_random_uuid() values, i.e. 244 bits from the server's strong
-- random source). Only its SHA-256 is stored.
CREATE OR REPLACE FUNCTION batchd.create_token(p_tenant text)
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
CREATE OR REPLACE FUNCTION batchd.revoke_token(p_token text)
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

-- batchd.revoke_token_id(id) -> true when a live token was revoked: the same
-- by the token's id (batchd.api_tokens.id, as `batchctl token list` shows
-- it), for a token nobody has any more.
CREATE OR REPLACE FUNCTION batchd.revoke_token_id(p_id bigint)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    UPDATE batchd.api_tokens
       SET revoked = true, revoked_at = now()
     WHERE id = p_id
       AND NOT revoked;
    RETURN FOUND;
END
$fn$;

COMMENT ON FUNCTION batchd.revoke_token_id(bigint) IS
    'Revoke a REST API token by its id; true when a live token was revoked.';

-- batchd.api_authenticate(sha256 of the token) -> tenant, or NULL for an
-- unknown or revoked token. Refreshes last_used_at at most once a minute per
-- token, and never waits for that: a row another request is refreshing right
-- now is skipped.
CREATE OR REPLACE FUNCTION batchd.api_authenticate(p_hash bytea)
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

-- RFC 3339 UTC with microseconds ("2026-11-23T01:02:03.123456Z"), the format
-- of every timestamp in the API, independent of the session's TimeZone and
-- DateStyle. No SET clause and a qualified body, so the planner can inline it.
CREATE OR REPLACE FUNCTION batchd.api_ts(p_at timestamptz)
RETURNS text
LANGUAGE sql
STABLE
PARALLEL SAFE
AS $fn$
    SELECT pg_catalog.to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$fn$;

COMMENT ON FUNCTION batchd.api_ts(timestamptz) IS
    'Timestamp as RFC 3339 UTC with microseconds, as the REST API shows it.';
