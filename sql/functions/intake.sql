-- intake.sql: jobs and intake. A job is one JSON object whose list fields
-- fan out into items (batchd.fanout, batchd.submit_job); when its batch ends,
-- its record (the batch row) gets per-job and per-group counts
-- (batchd.job_summary, the trigger batches_job_summary) and its own callback
-- runs (on_done, the trigger batches_job_on_done). Intake: the trigger
-- function batchd.intake(), which a user attaches to a table of their own,
-- submits one job per new row in the transaction that inserts the row.
--
-- Repeatable: `batchd migrate` re-applies this file whenever its text
-- changes (see sql/README). The definition of each object here is the only
-- one; edit it in place. The columns are migration 014's.
--
-- Why a trigger and not a polled query: the row and its batch commit
-- together or not at all (a rolled-back INSERT leaves no batch, a committed
-- one always has its batch); submit_batch's NOTIFY wakes every batchd at
-- that commit, so nothing polls and nothing lags by a poll interval; and no
-- batchd process has to own the intake (no leader, no cursor over the table,
-- no "already taken" marker to keep): the database does it, whichever
-- client inserts.

-- batchd.fanout(job, fields, max_items) -> JSON array of items
--
-- job:       a JSON object.
-- fields:    JSON array of the names of the job's list fields to expand, in
--            expansion order (the first one varies slowest); NULL: every field
--            whose value is a JSON array, in name order; []: none (one item,
--            the job as it is).
-- max_items: the most items the job may expand into (1 to 1000000).
--
-- The items are the cross product of the fields' lists: each item is the job
-- with each expanded field holding one element of its list (same name), the
-- other fields as they are. {"v":["a","b"],"t":[24,36],"d":5} with fields
-- ["v","t"] gives {"v":"a","t":24,"d":5}, {"v":"a","t":36,"d":5},
-- {"v":"b","t":24,"d":5}, {"v":"b","t":36,"d":5}.
--
-- Errors (SQLSTATE 22023, nothing built): a named field that is missing, not
-- an array, or an empty list; a field named twice; more items than
-- max_items (the count is the product of the list lengths, checked before
-- anything is built).
CREATE OR REPLACE FUNCTION batchd.fanout(p_job jsonb, p_fields jsonb DEFAULT NULL,
                                         p_max_items integer DEFAULT 10000)
RETURNS jsonb
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_fields text[];
    v_f      text;
    v_n      numeric := 1;
    v_dims   text[] := '{}';
    v_items  jsonb;
BEGIN
    IF p_job IS NULL OR jsonb_typeof(p_job) <> 'object' THEN
        RAISE EXCEPTION 'job must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_max_items IS NULL OR p_max_items NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'max_items must be an integer from 1 to 1000000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_fields IS NULL OR jsonb_typeof(p_fields) = 'null' THEN
        SELECT coalesce(array_agg(e.k ORDER BY e.k COLLATE "C"), '{}') INTO v_fields
          FROM jsonb_each(p_job) AS e(k, v)
         WHERE jsonb_typeof(e.v) = 'array';
    ELSE
        IF jsonb_typeof(p_fields) <> 'array'
           OR jsonb_path_exists(p_fields, 'strict $[*] ? (@.type() != "string")') THEN
            RAISE EXCEPTION 'fanout must be a JSON array of field names (strings)'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT coalesce(array_agg(e.f ORDER BY e.ord), '{}') INTO v_fields
          FROM jsonb_array_elements_text(p_fields) WITH ORDINALITY AS e(f, ord);
        SELECT d.f INTO v_f
          FROM unnest(v_fields) AS d(f)
         GROUP BY d.f HAVING count(*) > 1
         ORDER BY d.f LIMIT 1;
        IF v_f IS NOT NULL THEN
            RAISE EXCEPTION 'fanout names field "%" twice', v_f
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    FOREACH v_f IN ARRAY v_fields LOOP
        IF NOT p_job ? v_f THEN
            RAISE EXCEPTION 'fanout field "%" is not a field of the job', v_f
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(p_job -> v_f) <> 'array' THEN
            RAISE EXCEPTION 'fanout field "%" must be a JSON array (it is %)', v_f,
                            jsonb_typeof(p_job -> v_f)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_array_length(p_job -> v_f) = 0 THEN
            RAISE EXCEPTION 'fanout field "%" is an empty list: the job would have no items', v_f
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_n := v_n * jsonb_array_length(p_job -> v_f);
        v_dims := v_dims || format('%s %s', jsonb_array_length(p_job -> v_f), v_f);
    END LOOP;
    IF v_n > p_max_items THEN
        RAISE EXCEPTION 'job expands into % items (%), more than max_items (%)',
                        v_n, array_to_string(v_dims, ' x '), p_max_items
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Split the job into smaller ones, or raise max_items (at most 1000000).';
    END IF;

    -- One pass per field: every item so far times every element of its list.
    v_items := jsonb_build_array(p_job - v_fields);
    FOREACH v_f IN ARRAY v_fields LOOP
        SELECT jsonb_agg(i.it || jsonb_build_object(v_f, e.el) ORDER BY i.ord, e.ord)
          INTO v_items
          FROM jsonb_array_elements(v_items) WITH ORDINALITY AS i(it, ord),
               jsonb_array_elements(p_job -> v_f) WITH ORDINALITY AS e(el, ord);
    END LOOP;
    RETURN v_items;
END
$fn$;

COMMENT ON FUNCTION batchd.fanout(jsonb, jsonb, integer) IS
    'Expand a job''s list fields into the cross product of items (JSON array); more than max_items raises 22023.';

-- batchd.submit_job(tenant, route, job, options, source, source_key) -> batch id
--
-- One job, one batch: batchd.fanout(job, options.fanout, options.max_items),
-- submitted with batchd.submit_batch(); the batch row keeps the job (job),
-- its group field (job_group), its callback (on_done) and, when given, the
-- row it stands for (source: the table, as "schema.table"; source_key: the
-- row's key as text; both or neither), as batchd.intake() records it -- so
-- rows that were there before the intake trigger can be submitted alike.
-- options: JSON object, every key optional (JSON null: not given):
--   fanout      array of list fields to expand, in order (default: every
--               field holding a JSON array, in name order; [] for none)
--   group       a field of the job (a fanout field or a plain one) whose
--               value groups the items in the summary, e.g. "vehicle"
--   max_items   the most items the job may expand into, 1..1000000
--               (default 10000)
--   on_done     schema.function(batch batchd.batches), called once per end of
--               the batch, after the summary is written (see
--               batches_job_on_done below)
--   name, priority, max_attempts, metadata, group_key: submit_batch's
-- Bad input raises SQLSTATE 22023 naming the field; nothing is inserted.
CREATE OR REPLACE FUNCTION batchd.submit_job(p_tenant text, p_route text, p_job jsonb,
                                             p_options jsonb DEFAULT '{}',
                                             p_source text DEFAULT NULL,
                                             p_source_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_key        text;
    v_val        jsonb;
    v_num        numeric;
    v_fanout     jsonb;
    v_group      text;
    v_max        integer := 10000;
    v_on_done    text;
    v_batch_opts jsonb := '{}';
    v_items      jsonb;
    v_id         uuid;
BEGIN
    IF p_job IS NULL OR jsonb_typeof(p_job) <> 'object' THEN
        RAISE EXCEPTION 'job must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_options IS NULL THEN
        p_options := '{}';
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_source IS NULL) <> (p_source_key IS NULL) OR p_source = '' THEN
        RAISE EXCEPTION 'source and source_key go together: the table (schema.table) and the row''s key'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR v_key, v_val IN SELECT o.key, o.value FROM jsonb_each(p_options) AS o ORDER BY o.key LOOP
        IF v_key IN ('name', 'priority', 'max_attempts', 'metadata', 'group_key') THEN
            v_batch_opts := v_batch_opts || jsonb_build_object(v_key, v_val);
            CONTINUE;
        END IF;
        IF v_key NOT IN ('fanout', 'group', 'max_items', 'on_done') THEN
            RAISE EXCEPTION 'unknown option "%"', v_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known options: fanout, group, max_items, on_done, name, priority, max_attempts, metadata, group_key.';
        END IF;
        CONTINUE WHEN jsonb_typeof(v_val) = 'null';
        CASE v_key
        WHEN 'fanout' THEN
            v_fanout := v_val;                  -- checked by fanout()
        WHEN 'group' THEN
            IF jsonb_typeof(v_val) <> 'string' OR char_length(v_val #>> '{}') NOT BETWEEN 1 AND 200 THEN
                RAISE EXCEPTION 'group must be a non-empty string naming a field of the job'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_group := v_val #>> '{}';
        WHEN 'max_items' THEN
            v_num := CASE WHEN jsonb_typeof(v_val) = 'number' THEN v_val::numeric END;
            IF v_num IS NULL OR v_num <> trunc(v_num) OR v_num NOT BETWEEN 1 AND 1000000 THEN
                RAISE EXCEPTION 'max_items must be an integer from 1 to 1000000'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_max := v_num::int;
        WHEN 'on_done' THEN
            IF jsonb_typeof(v_val) <> 'string' THEN
                RAISE EXCEPTION 'on_done must be a function name (schema.function)'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_on_done := v_val #>> '{}';
            PERFORM batchd.hook_call(v_on_done);            -- 22023 on a bad name
            IF to_regprocedure(v_on_done || '(batchd.batches)') IS NULL THEN
                RAISE EXCEPTION 'on_done: no function %(batchd.batches) exists', v_on_done
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'CREATE FUNCTION ' || v_on_done || '(batch batchd.batches) RETURNS void ...';
            END IF;
        END CASE;
    END LOOP;
    IF v_group IS NOT NULL AND NOT p_job ? v_group THEN
        RAISE EXCEPTION 'group "%" is not a field of the job', v_group
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_items := batchd.fanout(p_job, v_fanout, v_max);
    v_id := batchd.submit_batch(p_tenant, p_route, v_items, v_batch_opts);
    -- the new batch row is ours alone until commit
    UPDATE batchd.batches AS b
       SET job = p_job, job_group = v_group, on_done = v_on_done,
           source = p_source, source_key = p_source_key
     WHERE b.id = v_id;
    RETURN v_id;
END
$fn$;

COMMENT ON FUNCTION batchd.submit_job(text, text, jsonb, jsonb, text, text) IS
    'Submit one job: its list fields fanned out into items (batchd.fanout), one batch that keeps the job, its group field, its on_done and the row it stands for; bad input raises 22023.';

-- batchd.job_summary_of(batch row) -> jsonb
--
-- {"total", "succeeded", "failed", "cancelled", "unfinished"} from the row's
-- counters, and, for a job with a group field, "group" (its name) and
-- "groups": {"<value>": {"total", "succeeded", "failed", "cancelled",
-- "unfinished"}, ...} counted from the items (the value as text; JSON null
-- or missing: ""). For an ended batch (finished_at set) an item still
-- queued or running counts as cancelled: only a cancelled batch ends with
-- such items, at the moment its last running item is being put back.
CREATE OR REPLACE FUNCTION batchd.job_summary_of(p_batch batchd.batches)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, batchd
AS $fn$
    SELECT jsonb_build_object(
               'total', p_batch.total, 'succeeded', p_batch.succeeded,
               'failed', p_batch.failed, 'cancelled', p_batch.cancelled,
               'unfinished', greatest(p_batch.total - p_batch.succeeded - p_batch.failed
                                      - p_batch.cancelled, 0))
           || CASE WHEN p_batch.job_group IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object(
                            'group', p_batch.job_group,
                            'groups', coalesce((
                                SELECT jsonb_object_agg(g.k, jsonb_build_object(
                                           'total', g.total, 'succeeded', g.succeeded,
                                           'failed', g.failed, 'cancelled', g.cancelled,
                                           'unfinished', g.unfinished))
                                  FROM (SELECT coalesce(i.payload ->> p_batch.job_group, '') AS k,
                                               count(*)::int AS total,
                                               (count(*) FILTER (WHERE i.status = 'succeeded'))::int
                                                   AS succeeded,
                                               (count(*) FILTER (WHERE i.status = 'failed'))::int
                                                   AS failed,
                                               (count(*) FILTER (WHERE i.status = 'cancelled'
                                                   OR (p_batch.finished_at IS NOT NULL
                                                       AND i.status IN ('queued', 'running'))))::int
                                                   AS cancelled,
                                               (count(*) FILTER (WHERE p_batch.finished_at IS NULL
                                                   AND i.status IN ('queued', 'running')))::int
                                                   AS unfinished
                                          FROM batchd.items AS i
                                         WHERE i.batch_id = p_batch.id
                                         GROUP BY 1) AS g), '{}'))
              END
$fn$;

COMMENT ON FUNCTION batchd.job_summary_of(batchd.batches) IS
    'A batch''s counts (total, succeeded, failed, cancelled, unfinished), and per group for a job with a group field.';

-- batchd.job_summary(batch id) -> jsonb, or NULL for no such batch
--
-- job_summary_of() of the batch as it is now: live counts while it runs
-- (batches.summary holds the ones at its end).
CREATE OR REPLACE FUNCTION batchd.job_summary(p_id uuid)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, batchd
AS $fn$
    SELECT batchd.job_summary_of(b) FROM batchd.batches AS b WHERE b.id = p_id
$fn$;

COMMENT ON FUNCTION batchd.job_summary(uuid) IS
    'The live summary of a batch (batchd.job_summary_of): counts per job and, for a job with a group field, per group.';

-- At every end of a job's batch (finished_at set, terminal status): the
-- summary, in the row itself, so that the callbacks of that end (the job's
-- on_done, the route's on_batch_done) see it in their argument. A BEFORE
-- trigger named after batches_cancelled_finished, so that it also sees the
-- finished_at that trigger sets. Every path that ends a batch has recorded
-- its items in an earlier statement (complete_items, cancel_batch), except
-- a cancelled batch's last running item put back (items_requeue_cancelled
-- updates the batch before the item): job_summary_of counts it as cancelled.
CREATE OR REPLACE FUNCTION batchd.batches_job_summary()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
BEGIN
    NEW.summary := batchd.job_summary_of(NEW);
    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION batchd.batches_job_summary() IS
    'Trigger: write a job''s summary (batchd.job_summary_of) into its batch row when the batch ends.';

CREATE OR REPLACE TRIGGER batches_job_summary
    BEFORE UPDATE ON batchd.batches
    FOR EACH ROW
    WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL AND NEW.job IS NOT NULL
          AND NEW.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled'))
    EXECUTE FUNCTION batchd.batches_job_summary();

-- A job's own callback (submit_job's on_done, or the intake's): called once
-- per end of its batch, as the route's on_batch_done is (the same rules: top
-- of complete.sql), before it (triggers fire in name order), with the batch
-- row as it ends, summary included. A failure rolls back the callback's own
-- changes and is a 'callback_failed' event; the batch stays ended.
CREATE OR REPLACE FUNCTION batchd.batches_job_on_done()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_state text;
    v_msg   text;
BEGIN
    BEGIN
        PERFORM batchd.run_hook(NEW.on_done, batchd.session_search_path(), NEW);
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        VALUES (NEW.id, 'callback_done',
                jsonb_build_object('function', NEW.on_done, 'status', NEW.status));
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        VALUES (NEW.id, 'callback_failed',
                jsonb_build_object('function', NEW.on_done, 'status', NEW.status,
                                   'sqlstate', v_state, 'error', v_msg));
    END;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION batchd.batches_job_on_done() IS
    'Trigger: call a job''s on_done(batch) once per end of its batch; a failure is logged as a callback_failed event.';

CREATE OR REPLACE TRIGGER batches_job_on_done
    AFTER UPDATE ON batchd.batches
    FOR EACH ROW
    WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL AND NEW.on_done IS NOT NULL
          AND NEW.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled'))
    EXECUTE FUNCTION batchd.batches_job_on_done();

-- batchd.intake_job(function, search_path, row) -> jsonb
--
-- The intake's job option: call schema.function(row) (a function of the
-- table's row type returning jsonb) under the session's search_path, as
-- hooks are called (run_hook).
CREATE OR REPLACE FUNCTION batchd.intake_job(p_fn text, p_path text, p_row anyelement)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_call text;
    v_job  jsonb;
BEGIN
    PERFORM batchd.hook_call(p_fn);                            -- 22023 on a bad name
    SELECT format('SELECT %I.%I($1)', n.nspname, p.proname) INTO v_call
      FROM pg_catalog.pg_proc AS p
      JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
     WHERE p.oid = to_regprocedure(p_fn || '(' || pg_typeof(p_row)::text || ')');
    IF v_call IS NULL THEN
        RAISE EXCEPTION 'intake: job: no function %(%) exists', p_fn, pg_typeof(p_row)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('CREATE FUNCTION %s(r %s) RETURNS jsonb ...', p_fn, pg_typeof(p_row));
    END IF;
    PERFORM pg_catalog.set_config('search_path', coalesce(p_path, ''), true);
    EXECUTE v_call INTO v_job USING p_row;
    RETURN v_job;
END
$fn$;

COMMENT ON FUNCTION batchd.intake_job(text, text, anyelement) IS
    'Intake: the job of a row, from the user''s function of the row type (called under the session''s search_path).';

-- batchd.intake(route [, options]): a trigger function. Attach it to a table
-- of yours, AFTER INSERT (and, if rows are to be submitted again, AFTER
-- UPDATE with a WHEN clause) ... FOR EACH ROW:
--
--   CREATE TRIGGER quote_jobs_intake AFTER INSERT ON quotes.quote_jobs
--       FOR EACH ROW EXECUTE FUNCTION batchd.intake('quotes',
--           '{"tenant": "dealer", "job": "quotes.job_of",
--             "fanout": ["vehicle", "term", "mileage"], "group": "vehicle",
--             "batch_column": "batch_id", "on_done": "quotes.on_job_done"}');
--
-- Every row the statement inserts becomes one job, submitted with
-- batchd.submit_job() in the same transaction: the row and its batch commit
-- together or not at all, and the commit wakes batchd (submit_batch's
-- NOTIFY). A row the INSERT skips (ON CONFLICT DO NOTHING, a BEFORE trigger
-- returning NULL) fires nothing. An error (bad options, a job that expands
-- into too many items) fails the INSERT.
--
-- options (a JSON object, the trigger's second argument):
--   tenant        required: the batches' tenant
--   key           the row's key column, a unique one (default: the table's
--                 single-column primary key); its value, as text, is
--                 batches.source_key, and batch_column's UPDATE finds the
--                 row by it
--   columns       array of column names: the job is those columns of the row
--                 (default: every column, as to_jsonb(row) gives them)
--   job           instead of columns: schema.function(row <table>) RETURNS
--                 jsonb, the job of a row (any shape; lists to fan out)
--   batch_column  a column of the row that gets the batch id (an UPDATE of
--                 the row, after the INSERT; an UPDATE trigger of yours sees
--                 it; this trigger ignores an UPDATE that changes only it)
--   fanout, group, max_items, on_done, name, priority, max_attempts,
--   metadata, group_key: submit_job's (name defaults to "<table> <key>")
-- The batch records the row: source (schema.table, quoted as needed) and
-- source_key, indexed: SELECT * FROM batchd.batches WHERE source =
-- 'quotes.quote_jobs' AND source_key = '42'.
--
-- The trigger runs as the role that inserts, which needs what submit_batch
-- needs (batchd's tables).
CREATE OR REPLACE FUNCTION batchd.intake()
RETURNS trigger
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
DECLARE
    v_where    text := format('batchd.intake() (trigger %I on %I.%I)',
                              TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME);
    v_opts     jsonb;
    v_job_opts jsonb := '{}';
    v_key      text;
    v_val      jsonb;
    v_tenant   text;
    v_keycol   text;
    v_cols     jsonb;
    v_fn       text;
    v_batchcol text;
    v_row      jsonb;
    v_job      jsonb;
    v_rowkey   text;
    v_nkey     bigint;
    v_path     text;
    v_id       uuid;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' OR TG_OP NOT IN ('INSERT', 'UPDATE') THEN
        RAISE EXCEPTION '%: must be an AFTER INSERT (or UPDATE) ... FOR EACH ROW trigger', v_where
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF TG_NARGS NOT IN (1, 2) THEN
        RAISE EXCEPTION '%: takes the route and an optional JSON object of options, not % arguments',
                        v_where, TG_NARGS
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        v_opts := CASE WHEN TG_NARGS = 2 THEN TG_ARGV[1]::jsonb ELSE '{}' END;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION '%: the options are not valid JSON: %', v_where, SQLERRM
            USING ERRCODE = 'invalid_parameter_value';
    END;
    IF jsonb_typeof(v_opts) <> 'object' THEN
        RAISE EXCEPTION '%: the options must be a JSON object', v_where
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR v_key, v_val IN SELECT o.key, o.value FROM jsonb_each(v_opts) AS o ORDER BY o.key LOOP
        IF v_key IN ('fanout', 'group', 'max_items', 'on_done', 'name', 'priority',
                     'max_attempts', 'metadata', 'group_key') THEN
            v_job_opts := v_job_opts || jsonb_build_object(v_key, v_val);
            CONTINUE;
        END IF;
        IF v_key NOT IN ('tenant', 'key', 'columns', 'job', 'batch_column') THEN
            RAISE EXCEPTION '%: unknown option "%"', v_where, v_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Known options: tenant, key, columns, job, batch_column, and submit_job''s: fanout, group, max_items, on_done, name, priority, max_attempts, metadata, group_key.';
        END IF;
        CONTINUE WHEN jsonb_typeof(v_val) = 'null';
        IF v_key = 'columns' THEN
            IF jsonb_typeof(v_val) <> 'array' OR jsonb_array_length(v_val) = 0
               OR jsonb_path_exists(v_val, 'strict $[*] ? (@.type() != "string")') THEN
                RAISE EXCEPTION '%: columns must be a non-empty array of column names', v_where
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_cols := v_val;
            CONTINUE;
        END IF;
        IF jsonb_typeof(v_val) <> 'string' OR v_val #>> '{}' = '' THEN
            RAISE EXCEPTION '%: % must be a non-empty string', v_where, v_key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        CASE v_key
        WHEN 'tenant' THEN v_tenant := v_val #>> '{}';
        WHEN 'key' THEN v_keycol := v_val #>> '{}';
        WHEN 'job' THEN v_fn := v_val #>> '{}';
        WHEN 'batch_column' THEN v_batchcol := v_val #>> '{}';
        END CASE;
    END LOOP;
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION '%: the tenant option is required', v_where
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_cols IS NOT NULL AND v_fn IS NOT NULL THEN
        RAISE EXCEPTION '%: give columns or job, not both', v_where
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    v_row := to_jsonb(NEW);
    IF v_keycol IS NULL THEN
        SELECT min(a.attname), count(*) INTO v_keycol, v_nkey
          FROM pg_catalog.pg_index AS x
          JOIN pg_catalog.pg_attribute AS a
            ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
         WHERE x.indrelid = TG_RELID AND x.indisprimary;
        IF v_nkey <> 1 THEN
            RAISE EXCEPTION '%: the table has no single-column primary key: name the key column (option key)', v_where
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF NOT v_row ? v_keycol THEN
        RAISE EXCEPTION '%: key: "%" is not a column of the table', v_where, v_keycol
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_rowkey := v_row ->> v_keycol;
    IF v_rowkey IS NULL THEN
        RAISE EXCEPTION '%: the row''s key (column %) is NULL', v_where, v_keycol
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_batchcol IS NOT NULL THEN
        IF NOT v_row ? v_batchcol THEN
            RAISE EXCEPTION '%: batch_column: "%" is not a column of the table', v_where, v_batchcol
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- the write-back below, seen by an UPDATE trigger of ours: not a new job
        IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - v_batchcol) = (v_row - v_batchcol) THEN
            RETURN NULL;
        END IF;
    END IF;

    IF v_fn IS NOT NULL THEN
        -- session_search_path() reads pg_settings (about 0.7 ms): once per
        -- transaction, kept in a transaction-local setting ("p:" + path)
        v_path := current_setting('batchd.intake_search_path', true);
        IF v_path IS NULL OR v_path NOT LIKE 'p:%' THEN
            v_path := 'p:' || coalesce(batchd.session_search_path(), '');
            PERFORM pg_catalog.set_config('batchd.intake_search_path', v_path, true);
        END IF;
        v_job := batchd.intake_job(v_fn, substr(v_path, 3), NEW);
        IF v_job IS NULL OR jsonb_typeof(v_job) <> 'object' THEN
            RAISE EXCEPTION '%: job: %() returned % instead of a JSON object', v_where, v_fn,
                            coalesce(jsonb_typeof(v_job), 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    ELSIF v_cols IS NOT NULL THEN
        SELECT c.c INTO v_key
          FROM jsonb_array_elements_text(v_cols) AS c(c)
         WHERE NOT v_row ? c.c
         LIMIT 1;
        IF v_key IS NOT NULL THEN
            RAISE EXCEPTION '%: columns: "%" is not a column of the table', v_where, v_key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT jsonb_object_agg(c.c, v_row -> c.c) INTO v_job
          FROM jsonb_array_elements_text(v_cols) AS c(c);
    ELSE
        v_job := v_row;
    END IF;
    IF NOT v_job_opts ? 'name' OR jsonb_typeof(v_job_opts -> 'name') = 'null' THEN
        v_job_opts := v_job_opts || jsonb_build_object('name', left(TG_TABLE_NAME || ' ' || v_rowkey, 200));
    END IF;

    v_id := batchd.submit_job(v_tenant, TG_ARGV[0], v_job, v_job_opts,
                              format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), v_rowkey);
    IF v_batchcol IS NOT NULL THEN
        EXECUTE format('UPDATE %I.%I SET %I = $1 WHERE %I = ($2).%I',
                       TG_TABLE_SCHEMA, TG_TABLE_NAME, v_batchcol, v_keycol, v_keycol)
          USING v_id, NEW;
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION batchd.intake() IS
    'Trigger function batchd.intake(route [, options]): submit each new row of a user table as a job (batchd.submit_job), in the inserting transaction.';
