-- routes.sql: routes and their hooks, as the running batchd processes configure them (sync_routes).
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The current definition of each object here is
-- the only one; edit it in place.

-- batchd.sync_routes(routes) -> number of rows inserted or changed
--
-- routes: a JSON array of objects {"name": text, "hook": text or null,
-- "on_batch_done": text or null} (missing keys mean null), the routes of the
-- calling batchd's config. Each is upserted into batchd.routes (updated_at
-- moves when the row changes); routes not listed are left alone (other
-- batchd processes may serve them). Every batchd serving a route should have
-- the same hook settings for it: the last one to start or reload wins.
--
-- Validation (any failure raises 22023 naming the route and the key, and
-- nothing changes): an array of objects; name a non-empty string of at most
-- 200 characters, listed once; no other keys; hook and on_batch_done null or
-- a valid function name (see hook_call) such that a function
-- name(batchd.items), resp. name(batchd.batches), exists.
--
-- Rows are written in name order, so that two processes syncing at once wait
-- for each other in one order.
CREATE OR REPLACE FUNCTION batchd.sync_routes(p_routes jsonb)
RETURNS int
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_elem  jsonb;
    v_ord   bigint;
    v_key   text;
    v_name  text;
    v_fn    text;
    v_names text[] := '{}';
    v_hooks text[] := '{}';
    v_dones text[] := '{}';
    v_n     int;
BEGIN
    IF p_routes IS NULL OR jsonb_typeof(p_routes) <> 'array' THEN
        RAISE EXCEPTION 'routes must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR v_elem, v_ord IN SELECT e.v, e.ord
                           FROM jsonb_array_elements(p_routes) WITH ORDINALITY AS e(v, ord)
                          ORDER BY e.ord LOOP
        IF jsonb_typeof(v_elem) <> 'object' THEN
            RAISE EXCEPTION 'routes[%] must be a JSON object', v_ord - 1
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(v_elem -> 'name') IS DISTINCT FROM 'string'
           OR btrim(v_elem ->> 'name') = '' OR char_length(v_elem ->> 'name') > 200 THEN
            RAISE EXCEPTION 'routes[%]: name must be a non-empty string of at most 200 characters', v_ord - 1
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_name := v_elem ->> 'name';
        IF v_name = ANY (v_names) THEN
            RAISE EXCEPTION 'route "%" is listed twice', v_name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT min(k) INTO v_key
          FROM jsonb_object_keys(v_elem) AS k
         WHERE k NOT IN ('name', 'hook', 'on_batch_done');
        IF v_key IS NOT NULL THEN
            RAISE EXCEPTION 'route "%": unknown key "%"', v_name, v_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known keys: name, hook, on_batch_done.';
        END IF;

        FOREACH v_key IN ARRAY ARRAY['hook', 'on_batch_done'] LOOP
            v_fn := NULL;
            IF jsonb_typeof(v_elem -> v_key) = 'string' THEN
                v_fn := v_elem ->> v_key;
                BEGIN
                    PERFORM batchd.hook_call(v_fn);
                EXCEPTION WHEN invalid_parameter_value THEN
                    RAISE EXCEPTION 'route "%": % = "%" is not a valid function name (expected function or schema.function)',
                                    v_name, v_key, v_fn
                        USING ERRCODE = 'invalid_parameter_value';
                END;
                IF to_regprocedure(v_fn || CASE v_key WHEN 'hook' THEN '(batchd.items)'
                                                      ELSE '(batchd.batches)' END) IS NULL THEN
                    RAISE EXCEPTION 'route "%": % = %: no function %(%) exists', v_name, v_key, v_fn,
                                    v_fn, CASE v_key WHEN 'hook' THEN 'batchd.items'
                                                     ELSE 'batchd.batches' END
                        USING ERRCODE = 'invalid_parameter_value',
                              HINT = 'Create the function before starting batchd, e.g. CREATE FUNCTION '
                                     || v_fn || CASE v_key WHEN 'hook' THEN '(item batchd.items)'
                                                           ELSE '(batch batchd.batches)' END
                                     || ' RETURNS void ...';
                END IF;
            ELSIF v_elem ? v_key AND jsonb_typeof(v_elem -> v_key) <> 'null' THEN
                RAISE EXCEPTION 'route "%": % must be a string or null', v_name, v_key
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF v_key = 'hook' THEN
                v_hooks := v_hooks || v_fn;
            ELSE
                v_dones := v_dones || v_fn;
            END IF;
        END LOOP;
        v_names := v_names || v_name;
    END LOOP;

    IF cardinality(v_names) = 0 THEN
        RETURN 0;
    END IF;

    WITH up AS (
        INSERT INTO batchd.routes AS r (name, hook, on_batch_done)
        SELECT u.name, u.hook, u.on_batch_done
          FROM unnest(v_names, v_hooks, v_dones) AS u(name, hook, on_batch_done)
         ORDER BY u.name
        ON CONFLICT (name) DO UPDATE
           SET hook = excluded.hook, on_batch_done = excluded.on_batch_done, updated_at = now()
         WHERE (r.hook, r.on_batch_done) IS DISTINCT FROM (excluded.hook, excluded.on_batch_done)
        RETURNING 1
    )
    SELECT count(*)::int INTO v_n FROM up;
    RETURN v_n;
END
$fn$;

COMMENT ON FUNCTION batchd.sync_routes(jsonb) IS
    'Record the hook and on_batch_done functions of the calling batchd''s routes (validated); returns rows inserted or changed.';
