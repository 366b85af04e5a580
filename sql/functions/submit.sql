-- submit.sql: submitting batches: the SQL API (submit_batch) and the REST API's submit (api_submit).
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

-- batchd.submit_batch(tenant, route, items, options) -> batch id
--
-- items:   non-empty JSON array of JSON objects (the payloads).
-- options: JSON object with optional keys (a JSON null value means "not given";
--          a SQL NULL options argument means no options):
--            name          string, at most 200 characters
--            priority      integer 0..10 (default 5); higher is claimed first
--            max_attempts  integer 1..100 (default 3)
--            metadata      object (default {})
--            group_key     string naming a payload field; dots address nested
--                          fields ("account.id" is payload->'account'->'id'); each
--                          item's group_key is that value as text, NULL if missing
--
-- Any invalid argument raises SQLSTATE 22023 (invalid_parameter_value) with a
-- message that names the field; as the exception aborts the statement, nothing
-- is inserted. On success: one batch row, all items in one INSERT ... SELECT,
-- one 'submitted' event, and a NOTIFY on channel batchd_work with the route as
-- payload (delivered at commit) to wake idle claimers. The item INSERT returns
-- the group keys, and one row per distinct non-null key is added to
-- batchd.groups (ON CONFLICT DO NOTHING; sorted, so that concurrent inserters of
-- the same keys wait for one another in one order).
CREATE OR REPLACE FUNCTION batchd.submit_batch(p_tenant text, p_route text, p_items jsonb,
                                               p_options jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_key          text;
    v_val          jsonb;
    v_num          numeric;
    v_name         text;
    v_priority     int := 5;
    v_max_attempts int := 3;
    v_metadata     jsonb := '{}';
    v_group_key    text;
    v_group_path   text[];
    v_count        bigint;
    v_bad          bigint;
    v_id           uuid;
BEGIN
    -- tenant and route: non-empty (not just blanks), at most 200 characters.
    IF p_tenant IS NULL OR btrim(p_tenant) = '' OR char_length(p_tenant) > 200 THEN
        RAISE EXCEPTION 'tenant must be a non-empty string of at most 200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_route IS NULL OR btrim(p_route) = '' OR char_length(p_route) > 200 THEN
        RAISE EXCEPTION 'route must be a non-empty string of at most 200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- items: a non-empty array whose elements are all objects. The jsonpath test
    -- walks the array in place (about 3 times cheaper than materialising the
    -- elements); only when it finds a bad element do we look for its index.
    -- (Separate tests: SQL does not promise to evaluate OR operands left to
    -- right, and jsonb_array_length() raises its own error on a non-array.)
    IF p_items IS NULL OR jsonb_typeof(p_items) <> 'array' THEN
        RAISE EXCEPTION 'items must be a non-empty JSON array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_count := jsonb_array_length(p_items);
    IF v_count = 0 THEN
        RAISE EXCEPTION 'items must be a non-empty JSON array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- strict mode: in lax mode a nested array element would be unwrapped and
    -- its contents tested instead of the array itself.
    IF jsonb_path_exists(p_items, 'strict $[*] ? (@.type() != "object")') THEN
        SELECT min(e.ord) INTO v_bad
          FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
         WHERE jsonb_typeof(e.v) <> 'object';
        RAISE EXCEPTION 'items[%] must be a JSON object', v_bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- options
    IF p_options IS NULL THEN
        p_options := '{}';
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR v_key, v_val IN SELECT o.key, o.value FROM jsonb_each(p_options) AS o ORDER BY o.key LOOP
        IF v_key NOT IN ('name', 'priority', 'max_attempts', 'metadata', 'group_key') THEN
            RAISE EXCEPTION 'unknown option "%"', v_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known options: name, priority, max_attempts, metadata, group_key.';
        END IF;
        CONTINUE WHEN jsonb_typeof(v_val) = 'null';   -- null: keep the default

        CASE v_key
        WHEN 'name' THEN
            IF jsonb_typeof(v_val) <> 'string' OR char_length(v_val #>> '{}') > 200 THEN
                RAISE EXCEPTION 'name must be a string of at most 200 characters'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_name := v_val #>> '{}';
        WHEN 'priority' THEN
            -- An integral JSON number (5 and 5.0 are both fine; 1.5, "3" and true
            -- are not); the range is checked on numeric, before any cast to int.
            v_num := CASE WHEN jsonb_typeof(v_val) = 'number' THEN v_val::numeric END;
            IF v_num IS NULL OR v_num <> trunc(v_num) OR v_num NOT BETWEEN 0 AND 10 THEN
                RAISE EXCEPTION 'priority must be an integer from 0 to 10'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_priority := v_num::int;
        WHEN 'max_attempts' THEN
            v_num := CASE WHEN jsonb_typeof(v_val) = 'number' THEN v_val::numeric END;
            IF v_num IS NULL OR v_num <> trunc(v_num) OR v_num NOT BETWEEN 1 AND 100 THEN
                RAISE EXCEPTION 'max_attempts must be an integer from 1 to 100'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_max_attempts := v_num::int;
        WHEN 'metadata' THEN
            IF jsonb_typeof(v_val) <> 'object' THEN
                RAISE EXCEPTION 'metadata must be a JSON object'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_metadata := v_val;
        WHEN 'group_key' THEN
            -- A field name, or a dotted path of non-empty field names.
            IF jsonb_typeof(v_val) <> 'string'
               OR char_length(v_val #>> '{}') NOT BETWEEN 1 AND 200
               OR '' = ANY (string_to_array(v_val #>> '{}', '.')) THEN
                RAISE EXCEPTION 'group_key must be a non-empty string naming a payload field (dots separate nested fields)'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_group_key  := v_val #>> '{}';
            v_group_path := string_to_array(v_group_key, '.');
        END CASE;
    END LOOP;

    -- The batch.
    INSERT INTO batchd.batches (tenant, name, route, priority, max_attempts,
                                group_key, total, metadata)
    VALUES (p_tenant, v_name, p_route, v_priority, v_max_attempts,
            v_group_key, v_count, v_metadata)
    RETURNING batches.id INTO v_id;

    -- All items in one statement. ORDER BY ord makes the identity values follow
    -- the submitted order, so items of equal priority are claimed in that order.
    -- #>> gives the group value as text: strings unquoted, numbers as written,
    -- objects/arrays as JSON text, JSON null and missing fields as SQL NULL.
    -- The same statement adds the group rows from the inserted keys.
    WITH ins AS (
        INSERT INTO batchd.items (batch_id, seq, route, priority, payload, group_key, max_attempts)
        SELECT v_id, (e.ord - 1)::int, p_route, v_priority, e.v,
               CASE WHEN v_group_path IS NOT NULL THEN e.v #>> v_group_path END,
               v_max_attempts
          FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
         ORDER BY e.ord
        RETURNING items.group_key
    )
    INSERT INTO batchd.groups (route, group_key)
    SELECT DISTINCT p_route, ins.group_key
      FROM ins
     WHERE ins.group_key IS NOT NULL
     ORDER BY 2
    ON CONFLICT DO NOTHING;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (v_id, 'submitted', jsonb_build_object('total', v_count));

    PERFORM pg_notify('batchd_work', p_route);

    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION batchd.submit_batch(text, text, jsonb, jsonb) IS
    'Validate and store a batch with its items; returns the batch id. Bad input raises SQLSTATE 22023 and stores nothing.';

-- batchd.api_submit(tenant, route, items, options, idempotency_key,
--                   idempotency_ttl) -> (id, created)
--
-- submit_batch() (same validation, same SQLSTATE 22023 on bad input), plus an
-- optional idempotency key, kept with the batch together with the SHA-256 of
-- the request: the jsonb text of [route, items, options without their JSON
-- null values] (jsonb's text is canonical: key order, spacing and escapes of
-- the body do not matter). When the tenant has a batch with this key,
-- created less than idempotency_ttl ago (default 24 hours; batchd passes its
-- idempotency_ttl setting):
--   * the same request: nothing is inserted, that batch is returned with
--     created = false;
--   * another request: SQLSTATE BD422 (HTTP 422 idempotency_key_reused), with
--     a message that names the key and the batch; nothing is inserted.
-- A batch from before migration 012 has no hash: it is returned, whatever
-- the request. A key used longer ago has expired: a new batch is created and
-- takes the key over (the old batch's key and hash are cleared). A key also
-- ends with its batch (delete_batch, purge_finished).
--
-- Two concurrent submits with the same key: both insert, the second one's key
-- update waits on the unique index for the first to commit, then fails with
-- unique_violation; its subtransaction (its batch and items) is rolled back and
-- it answers as if the first batch had been there already (the first batch, or
-- BD422). If the first rolls back instead, the second wins.
--
-- Lock order: taking over an expired key locks that one old batch row (FOR
-- UPDATE: the key is a unique index column) after submit_batch() inserted the
-- new batch, its items and group rows; the only other row lock this function
-- holds then is on the new batch, which nobody else can see. So it waits for
-- a batch row (class 3) only after the group rows (class 2), as the lock
-- order says (sql/README).
DROP FUNCTION IF EXISTS batchd.api_submit(text, text, jsonb, jsonb, text);
CREATE OR REPLACE FUNCTION batchd.api_submit(p_tenant text, p_route text, p_items jsonb,
                                  p_options jsonb, p_idempotency_key text,
                                  p_idempotency_ttl interval DEFAULT interval '24 hours')
RETURNS TABLE (id uuid, created boolean)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
#variable_conflict use_column
DECLARE
    v_id      uuid;
    v_hash    bytea;
    v_opts    jsonb;
    v_old     uuid;
    v_oldhash bytea;
    v_at      timestamptz;
BEGIN
    IF p_idempotency_key IS NULL THEN
        RETURN QUERY SELECT batchd.submit_batch(p_tenant, p_route, p_items, p_options), true;
        RETURN;
    END IF;
    IF char_length(p_idempotency_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'idempotency key must have 1 to 200 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_idempotency_ttl IS NULL OR p_idempotency_ttl <= interval '0' THEN
        RAISE EXCEPTION 'idempotency_ttl must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The request's hash. Options that are not an object are hashed as they
    -- are (submit_batch() refuses them anyway).
    v_opts := coalesce(p_options, '{}');
    IF jsonb_typeof(v_opts) = 'object' THEN
        SELECT coalesce(jsonb_object_agg(o.key, o.value), '{}') INTO v_opts
          FROM jsonb_each(v_opts) AS o
         WHERE jsonb_typeof(o.value) <> 'null';
    END IF;
    v_hash := sha256(convert_to(jsonb_build_array(p_route, p_items, v_opts)::text, 'UTF8'));

    SELECT b.id, b.idempotency_hash, b.created_at INTO v_old, v_oldhash, v_at
      FROM batchd.batches AS b
     WHERE b.tenant = p_tenant AND b.idempotency_key = p_idempotency_key;
    IF FOUND THEN
        IF v_at > now() - p_idempotency_ttl THEN
            IF v_oldhash IS NOT NULL AND v_oldhash <> v_hash THEN
                RAISE EXCEPTION 'Idempotency-Key "%" was already used for another request (batch %): use a new key for a new batch', p_idempotency_key, v_old
                    USING ERRCODE = 'BD422';
            END IF;
            RETURN QUERY SELECT v_old, false;
            RETURN;
        END IF;
    ELSE
        v_old := NULL;
    END IF;

    BEGIN
        v_id := batchd.submit_batch(p_tenant, p_route, p_items, p_options);
        IF v_old IS NOT NULL THEN
            -- the key has expired: take it over (a concurrent taker that got
            -- here first leaves this row without the key: nothing to do)
            UPDATE batchd.batches AS b
               SET idempotency_key = NULL, idempotency_hash = NULL
             WHERE b.id = v_old AND b.idempotency_key = p_idempotency_key;
        END IF;
        -- The new batch row is ours alone until commit: no lock order issue.
        UPDATE batchd.batches AS b
           SET idempotency_key = p_idempotency_key, idempotency_hash = v_hash
         WHERE b.id = v_id;
    EXCEPTION WHEN unique_violation THEN
        SELECT b.id, b.idempotency_hash INTO v_id, v_oldhash
          FROM batchd.batches AS b
         WHERE b.tenant = p_tenant AND b.idempotency_key = p_idempotency_key;
        IF NOT FOUND THEN
            RAISE;
        END IF;
        IF v_oldhash IS NOT NULL AND v_oldhash <> v_hash THEN
            RAISE EXCEPTION 'Idempotency-Key "%" was already used for another request (batch %): use a new key for a new batch', p_idempotency_key, v_id
                USING ERRCODE = 'BD422';
        END IF;
        RETURN QUERY SELECT v_id, false;
        RETURN;
    END;
    RETURN QUERY SELECT v_id, true;
END
$fn$;

COMMENT ON FUNCTION batchd.api_submit(text, text, jsonb, jsonb, text, interval) IS
    'submit_batch() with an optional per-tenant idempotency key, kept for idempotency_ttl with the request''s SHA-256; returns (id, created); another request under a live key raises BD422.';
