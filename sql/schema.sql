--
-- PostgreSQL database dump
--

--
-- Name: batchd; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA batchd;

--
-- Name: SCHEMA batchd; Type: COMMENT; Schema: -; Owner: -
--

COMMENT ON SCHEMA batchd IS 'batchd: batches of work items drained through external HTTP APIs';

--
-- Name: api_authenticate(bytea); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.api_authenticate(p_hash bytea) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION api_authenticate(p_hash bytea); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.api_authenticate(p_hash bytea) IS 'Tenant of a live token given its SHA-256, or NULL; refreshes last_used_at at most once a minute.';

--
-- Name: api_submit(text, text, jsonb, jsonb, text, interval); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.api_submit(p_tenant text, p_route text, p_items jsonb, p_options jsonb, p_idempotency_key text, p_idempotency_ttl interval DEFAULT '24:00:00'::interval) RETURNS TABLE(id uuid, created boolean)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION api_submit(p_tenant text, p_route text, p_items jsonb, p_options jsonb, p_idempotency_key text, p_idempotency_ttl interval); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.api_submit(p_tenant text, p_route text, p_items jsonb, p_options jsonb, p_idempotency_key text, p_idempotency_ttl interval) IS 'submit_batch() with an optional per-tenant idempotency key, kept for idempotency_ttl with the request''s SHA-256; returns (id, created); another request under a live key raises BD422.';

--
-- Name: api_ts(timestamp with time zone); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.api_ts(p_at timestamp with time zone) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT pg_catalog.to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

--
-- Name: FUNCTION api_ts(p_at timestamp with time zone); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.api_ts(p_at timestamp with time zone) IS 'Timestamp as RFC 3339 UTC with microseconds, as the REST API shows it.';

--
-- Name: batches_cancelled_finished(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.batches_cancelled_finished() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    NEW.finished_at := now();
    RETURN NEW;
END
$$;

--
-- Name: batches_job_on_done(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.batches_job_on_done() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION batches_job_on_done(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.batches_job_on_done() IS 'Trigger: call a job''s on_done(batch) once per end of its batch; a failure is logged as a callback_failed event.';

--
-- Name: batches_job_summary(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.batches_job_summary() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    NEW.summary := batchd.job_summary_of(NEW);
    RETURN NEW;
END
$$;

--
-- Name: FUNCTION batches_job_summary(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.batches_job_summary() IS 'Trigger: write a job''s summary (batchd.job_summary_of) into its batch row when the batch ends.';

--
-- Name: batches_notify_cancel(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.batches_notify_cancel() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    PERFORM pg_notify('batchd_cancel', NEW.id::text);
    RETURN NULL;
END
$$;

--
-- Name: FUNCTION batches_notify_cancel(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.batches_notify_cancel() IS 'Trigger: NOTIFY batchd_cancel with the id of a batch that was just cancelled.';

--
-- Name: batches_on_done(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.batches_on_done() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
DECLARE
    v_fn    text;
    v_state text;
    v_msg   text;
BEGIN
    SELECT r.on_batch_done INTO v_fn
      FROM batchd.routes AS r
     WHERE r.name = NEW.route;
    IF v_fn IS NULL THEN
        RETURN NULL;
    END IF;
    BEGIN
        PERFORM batchd.run_hook(v_fn, batchd.session_search_path(), NEW);
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        VALUES (NEW.id, 'callback_done', jsonb_build_object('function', v_fn, 'status', NEW.status));
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        VALUES (NEW.id, 'callback_failed',
                jsonb_build_object('function', v_fn, 'status', NEW.status,
                                   'sqlstate', v_state, 'error', v_msg));
    END;
    RETURN NULL;
END
$$;

--
-- Name: FUNCTION batches_on_done(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.batches_on_done() IS 'Trigger: call the route''s on_batch_done(batch) once per end of a batch; a failure is logged as a callback_failed event.';

--
-- Name: cancel_batch(text, uuid); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.cancel_batch(p_tenant text, p_id uuid) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
    -- Lock them in id order first (SKIP LOCKED: a row a claimer holds is
    -- about to be running anyway): a plain UPDATE locks in physical order
    -- and can deadlock with complete_items, which locks items by id.
    WITH l AS (
        SELECT i.id
          FROM batchd.items AS i
         WHERE i.batch_id = p_id
           AND i.status = 'queued'
         ORDER BY i.id
           FOR UPDATE SKIP LOCKED
    ), c AS (
        UPDATE batchd.items AS i
           SET status = 'cancelled', finished_at = now()
          FROM l
         WHERE i.id = l.id
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
$$;

--
-- Name: FUNCTION cancel_batch(p_tenant text, p_id uuid); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.cancel_batch(p_tenant text, p_id uuid) IS 'Cancel a pending/processing batch of a tenant (queued items cancelled, running ones finish); ok, not_found or terminal.';

--
-- Name: check_consistency(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.check_consistency() RETURNS TABLE(batch_id uuid, total integer, items integer, succeeded integer, items_succeeded integer, failed integer, items_failed integer, cancelled integer, items_cancelled integer)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
    WITH agg AS (
        SELECT i.batch_id,
               count(*)::int                                        AS items,
               count(*) FILTER (WHERE i.status = 'succeeded')::int  AS items_succeeded,
               count(*) FILTER (WHERE i.status = 'failed')::int     AS items_failed,
               count(*) FILTER (WHERE i.status = 'cancelled')::int  AS items_cancelled
          FROM batchd.items AS i
         GROUP BY i.batch_id
    )
    SELECT b.id, b.total, coalesce(a.items, 0),
           b.succeeded, coalesce(a.items_succeeded, 0),
           b.failed,    coalesce(a.items_failed, 0),
           b.cancelled, coalesce(a.items_cancelled, 0)
      FROM batchd.batches AS b
      LEFT JOIN agg AS a ON a.batch_id = b.id
     WHERE (b.total, b.succeeded, b.failed, b.cancelled)
           IS DISTINCT FROM
           (coalesce(a.items, 0), coalesce(a.items_succeeded, 0),
            coalesce(a.items_failed, 0), coalesce(a.items_cancelled, 0))
     ORDER BY b.id;
$$;

--
-- Name: FUNCTION check_consistency(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.check_consistency() IS 'Batches whose counters disagree with their items'' statuses; empty when consistent.';

--
-- Name: check_groups(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.check_groups() RETURNS TABLE(route text, group_key text, running integer, actual integer)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
    WITH holders AS (
        SELECT i.route, i.group_key, count(*)::int AS n
          FROM batchd.items AS i
         WHERE i.status = 'running' AND i.group_slot
         GROUP BY i.route, i.group_key
    )
    SELECT coalesce(g.route, h.route), coalesce(g.group_key, h.group_key),
           g.running, coalesce(h.n, 0)
      FROM batchd.groups AS g
      FULL JOIN holders AS h ON h.route = g.route AND h.group_key = g.group_key
     WHERE g.running IS DISTINCT FROM coalesce(h.n, 0)
     ORDER BY 1, 2;
$$;

--
-- Name: FUNCTION check_groups(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.check_groups() IS 'Groups whose running counter disagrees with the count of running items holding a slot; empty when consistent.';

--
-- Name: claim_batch_slots(uuid, text[], integer[], integer); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.claim_batch_slots(p_worker uuid, p_routes text[], p_conc integer[], p_limit integer) RETURNS TABLE(id bigint, batch_id uuid, route text, payload jsonb, attempts integer, max_attempts integer, group_key text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    SET plan_cache_mode TO 'force_custom_plan'
    AS $$
#variable_conflict use_column
DECLARE
    v_bids  uuid[];
    v_prio  int[];
    v_route text[];
    v_cur   bigint[];
    v_hi    bigint[];
    v_open  boolean[];
    v_held  int[];
    v_left  int := p_limit;
    v_nopen int;
    v_ids   bigint[] := '{}';
    r       record;
BEGIN
    IF p_limit IS NULL OR p_limit <= 0 OR coalesce(cardinality(p_routes), 0) = 0 THEN
        RETURN;
    END IF;

    -- (1)
    FOR k IN 1 .. cardinality(p_routes) LOOP
        PERFORM pg_advisory_xact_lock(1650549859, hashtext(p_routes[k]));
    END LOOP;

    -- (2)
    DELETE FROM batchd.batch_slots AS s
     WHERE s.route = ANY (p_routes)
       AND NOT EXISTS (SELECT 1 FROM batchd.batches AS b
                        WHERE b.id = s.batch_id AND b.finished_at IS NULL);

    -- (3)
    INSERT INTO batchd.batch_slots (batch_id, route)
    SELECT c.id, u.route
      FROM unnest(p_routes, p_conc) WITH ORDINALITY AS u(route, conc, rk)
     CROSS JOIN LATERAL (SELECT count(*)::int AS n
                           FROM batchd.batch_slots AS s
                          WHERE s.route = u.route) AS held
     CROSS JOIN LATERAL (
            -- Batches submitted in one transaction have one created_at: among
            -- those, the first submitted (its first item's id) goes first, as
            -- its items do in the head claim; WITH TIES keeps those lookups
            -- to the few batches that can be chosen.
            SELECT t.id,
                   row_number() OVER (ORDER BY t.status = 'processing' DESC, t.priority DESC,
                                               t.created_at, t.first_item NULLS LAST,
                                               t.id) AS pick
              FROM (SELECT b.id, b.status, b.priority, b.created_at,
                           (SELECT i.id FROM batchd.items AS i
                             WHERE i.batch_id = b.id AND i.seq = 0) AS first_item
                      FROM (SELECT b.id, b.status, b.priority, b.created_at
                              FROM batchd.batches AS b
                             WHERE b.route = u.route
                               AND b.status IN ('pending', 'processing')
                               AND b.finished_at IS NULL
                               AND b.succeeded + b.failed + b.cancelled < b.total
                               AND NOT EXISTS (SELECT 1 FROM batchd.batch_slots AS s
                                                WHERE s.batch_id = b.id)
                             ORDER BY b.status = 'processing' DESC, b.priority DESC,
                                      b.created_at
                             FETCH FIRST (greatest(u.conc - held.n, 0)) ROWS WITH TIES) AS b) AS t
             ORDER BY pick
             LIMIT greatest(u.conc - held.n, 0)) AS c
     WHERE held.n < u.conc
     ORDER BY u.rk, c.pick;     -- slot_order follows the choice

    -- (4) With the batch's first and last item ids (submit_batch inserts a
    -- batch's items in seq order, so ids grow with seq; a batch without
    -- items is read from 0 to the largest id).
    SELECT array_agg(a.bid ORDER BY a.pos, a.rk), array_agg(a.prio ORDER BY a.pos, a.rk),
           array_agg(a.route ORDER BY a.pos, a.rk), array_agg(a.lo - 1 ORDER BY a.pos, a.rk),
           array_agg(a.hi ORDER BY a.pos, a.rk)
      INTO v_bids, v_prio, v_route, v_cur, v_hi
      FROM (SELECT s.batch_id AS bid, b.priority AS prio, u.route, s.pos, u.rk,
                   coalesce((SELECT i.id FROM batchd.items AS i
                              WHERE i.batch_id = b.id AND i.seq = 0), 1) AS lo,
                   coalesce((SELECT i.id FROM batchd.items AS i
                              WHERE i.batch_id = b.id AND i.seq = b.total - 1),
                            9223372036854775807) AS hi
              FROM unnest(p_routes, p_conc) WITH ORDINALITY AS u(route, conc, rk)
             CROSS JOIN LATERAL (
                    SELECT s.batch_id, row_number() OVER (ORDER BY s.slot_order) AS pos
                      FROM batchd.batch_slots AS s
                     WHERE s.route = u.route
                     ORDER BY s.slot_order
                     LIMIT u.conc) AS s
              JOIN batchd.batches AS b ON b.id = s.batch_id) AS a;

    IF v_bids IS NULL THEN
        RETURN;
    END IF;
    v_open := array_fill(true, ARRAY[cardinality(v_bids)]);
    -- The items of each batch this worker holds (claimed, not ended: its
    -- few running items, items_running_worker_idx): what a split leaves
    -- over goes to the least held first, so that claims of one item at a
    -- time (a rate-limited provider draining) do not all go to the first
    -- slot while a batch started later holds nothing.
    SELECT array_agg((SELECT count(*)::int FROM batchd.items AS i
                       WHERE i.status = 'running' AND i.worker_id = p_worker
                         AND i.batch_id = o.bid) ORDER BY o.k)
      INTO v_held
      FROM unnest(v_bids) WITH ORDINALITY AS o(bid, k);

    -- (5)
    LOOP
        SELECT count(*)::int INTO v_nopen FROM unnest(v_open) AS o(x) WHERE o.x;
        EXIT WHEN v_left <= 0 OR v_nopen = 0;
        FOR r IN
            WITH a AS (
                SELECT u.k, u.bid, u.prio, u.route, u.cur, u.hi,
                       v_left / v_nopen
                       + CASE WHEN row_number() OVER (ORDER BY u.held, u.k) <= v_left % v_nopen
                              THEN 1 ELSE 0 END AS q
                  FROM unnest(v_bids, v_prio, v_route, v_cur, v_hi, v_open, v_held)
                       WITH ORDINALITY AS u(bid, prio, route, cur, hi, open, held, k)
                 WHERE u.open
            )
            SELECT a.k, a.q, count(x.id)::int AS n, max(x.id) AS last,
                   coalesce(array_agg(x.id) FILTER (WHERE x.id IS NOT NULL), '{}') AS ids
              FROM a
              LEFT JOIN LATERAL (
                    SELECT i.id
                      FROM batchd.items AS i
                     WHERE i.status = 'queued'
                       AND i.priority = a.prio
                       AND i.id > a.cur
                       AND i.id <= a.hi
                       AND i.run_after <= now()
                       AND i.route = a.route
                       AND i.batch_id = a.bid
                     ORDER BY i.priority DESC, i.id
                     LIMIT a.q
                       FOR UPDATE SKIP LOCKED) AS x ON true
             WHERE a.q > 0
             GROUP BY a.k, a.q
        LOOP
            v_ids := v_ids || r.ids;
            v_left := v_left - r.n;
            v_held[r.k] := v_held[r.k] + r.n;
            IF r.n < r.q THEN
                v_open[r.k] := false;      -- drained (for now)
            ELSE
                v_cur[r.k] := r.last;
            END IF;
        END LOOP;
    END LOOP;

    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    -- (6)
    RETURN QUERY
    WITH claimed AS (
        UPDATE batchd.items AS i
           SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
               started_at = now(), finished_at = NULL
         WHERE i.id = ANY (v_ids)
        RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                  i.max_attempts, i.group_key
    ), to_start AS (
        SELECT b.id
          FROM batchd.batches AS b
         WHERE b.id IN (SELECT c.batch_id FROM claimed AS c)
           AND b.status = 'pending'
         ORDER BY b.id
           FOR NO KEY UPDATE
    ), started AS (
        UPDATE batchd.batches AS b
           SET status = 'processing', started_at = now()
          FROM to_start
         WHERE b.id = to_start.id
        RETURNING b.id
    ), started_events AS (
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT s.id, 'started', jsonb_build_object('worker', p_worker)
          FROM started AS s
    )
    SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
      FROM claimed AS c
      JOIN unnest(v_bids) WITH ORDINALITY AS o(bid, k) ON o.bid = c.batch_id
     ORDER BY row_number() OVER (PARTITION BY c.batch_id ORDER BY c.id), o.k;
END
$$;

--
-- Name: FUNCTION claim_batch_slots(p_worker uuid, p_routes text[], p_conc integer[], p_limit integer); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.claim_batch_slots(p_worker uuid, p_routes text[], p_conc integer[], p_limit integer) IS 'Internal (claim_items_shared): claim from at most concurrency[i] batches of each route at once, fleet-wide, sharing the claim between them.';

--
-- Name: claim_items(uuid, text[], integer); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit integer) RETURNS TABLE(id bigint, batch_id uuid, route text, payload jsonb, attempts integer, max_attempts integer, group_key text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    SET plan_cache_mode TO 'force_custom_plan'
    AS $$
#variable_conflict use_column
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    IF cardinality(p_routes) = 1 THEN
        RETURN QUERY
        WITH picked AS (
            SELECT i.id
              FROM batchd.items AS i
             WHERE i.status = 'queued'
               AND i.run_after <= now()
               AND i.route = p_routes[1]
             ORDER BY i.priority DESC, i.id
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE batchd.items AS i
               SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
                   started_at = now(), finished_at = NULL
              FROM picked
             WHERE i.id = picked.id
            RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                      i.max_attempts, i.group_key, i.priority
        ), to_start AS (
            -- Pending batches among those touched, locked in id order. If another
            -- transaction started (or cancelled) the batch meanwhile, the status
            -- test is re-checked on the new row version and the batch is skipped.
            SELECT b.id
              FROM batchd.batches AS b
             WHERE b.id IN (SELECT c.batch_id FROM claimed AS c)
               AND b.status = 'pending'
             ORDER BY b.id
               FOR NO KEY UPDATE
        ), started AS (
            UPDATE batchd.batches AS b
               SET status = 'processing', started_at = now()
              FROM to_start
             WHERE b.id = to_start.id
            RETURNING b.id
        ), started_events AS (
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT s.id, 'started', jsonb_build_object('worker', p_worker)
              FROM started AS s
        )
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM claimed AS c
         ORDER BY c.priority DESC, c.id;
    ELSE
        RETURN QUERY
        WITH picked AS (
            SELECT i.id
              FROM batchd.items AS i
             WHERE i.status = 'queued'
               AND i.run_after <= now()
               AND i.route = ANY (p_routes)
             ORDER BY i.priority DESC, i.id
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE batchd.items AS i
               SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
                   started_at = now(), finished_at = NULL
              FROM picked
             WHERE i.id = picked.id
            RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                      i.max_attempts, i.group_key, i.priority
        ), to_start AS (
            SELECT b.id
              FROM batchd.batches AS b
             WHERE b.id IN (SELECT c.batch_id FROM claimed AS c)
               AND b.status = 'pending'
             ORDER BY b.id
               FOR NO KEY UPDATE
        ), started AS (
            UPDATE batchd.batches AS b
               SET status = 'processing', started_at = now()
              FROM to_start
             WHERE b.id = to_start.id
            RETURNING b.id
        ), started_events AS (
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT s.id, 'started', jsonb_build_object('worker', p_worker)
              FROM started AS s
        )
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM claimed AS c
         ORDER BY c.priority DESC, c.id;
    END IF;
END
$$;

--
-- Name: FUNCTION claim_items(p_worker uuid, p_routes text[], p_limit integer); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit integer) IS 'Claim up to p_limit due queued items of the given routes for a worker (SKIP LOCKED); starts pending batches.';

--
-- Name: claim_items(uuid, text[], integer, integer, bigint); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit integer, p_after_priority integer, p_after_id bigint) RETURNS TABLE(id bigint, batch_id uuid, route text, payload jsonb, attempts integer, max_attempts integer, group_key text, priority integer)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
#variable_conflict use_column
DECLARE
    -- One route: the equality the btree checks on the index tuple, as in the head claim;
    -- several: = ANY, after the heap fetch.
    v_route text := CASE WHEN cardinality(p_routes) = 1 THEN 'i.route = $1[1]'
                         ELSE 'i.route = ANY ($1)' END;
    v_ids   bigint[] := '{}';
    v_more  bigint[];
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    -- (1) From the starting point: same priority, larger id. With the priority
    -- fixed, id order is the claim order, so the planner may read either the
    -- claim index from (priority, id) or the primary key from id (it often
    -- picks the latter); both start at the starting point and stop after
    -- `limit` rows when the items that follow are ours. (Items of routes
    -- this worker does not serve that follow at the same priority are read
    -- and skipped either way, as a claim from the head does.)
    IF p_after_priority IS NOT NULL AND p_after_id IS NOT NULL THEN
        EXECUTE 'SELECT coalesce(array_agg(s.id), ''{}'')
                   FROM (SELECT i.id
                           FROM batchd.items AS i
                          WHERE i.status = ''queued''
                            AND i.priority = $2
                            AND i.id > $3
                            AND i.run_after <= now()
                            AND ' || v_route || '
                          ORDER BY i.priority DESC, i.id
                          LIMIT $4
                            FOR UPDATE SKIP LOCKED) AS s'
           INTO v_ids
          USING p_routes, p_after_priority, p_after_id, p_limit;
    END IF;

    -- (2) The rest from the head, as the head claim does. Rows locked in (1) are still
    -- queued and not skipped (we hold their locks), so they are excluded here.
    IF cardinality(v_ids) < p_limit THEN
        EXECUTE 'SELECT array_agg(s.id)
                   FROM (SELECT i.id
                           FROM batchd.items AS i
                          WHERE i.status = ''queued''
                            AND i.run_after <= now()
                            AND ' || v_route || '
                            AND i.id <> ALL ($2)
                          ORDER BY i.priority DESC, i.id
                          LIMIT $3
                            FOR UPDATE SKIP LOCKED) AS s'
           INTO v_more
          USING p_routes, v_ids, p_limit - cardinality(v_ids);
        v_ids := v_ids || coalesce(v_more, '{}');
    END IF;

    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    -- (3) Claim them and start their pending batches, as the head claim does.
    RETURN QUERY
    WITH claimed AS (
        UPDATE batchd.items AS i
           SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
               started_at = now(), finished_at = NULL
         WHERE i.id = ANY (v_ids)
        RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                  i.max_attempts, i.group_key, i.priority
    ), to_start AS (
        SELECT b.id
          FROM batchd.batches AS b
         WHERE b.id IN (SELECT c.batch_id FROM claimed AS c)
           AND b.status = 'pending'
         ORDER BY b.id
           FOR NO KEY UPDATE
    ), started AS (
        UPDATE batchd.batches AS b
           SET status = 'processing', started_at = now()
          FROM to_start
         WHERE b.id = to_start.id
        RETURNING b.id
    ), started_events AS (
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT s.id, 'started', jsonb_build_object('worker', p_worker)
          FROM started AS s
    )
    SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key,
           c.priority
      FROM claimed AS c
     ORDER BY c.priority DESC, c.id;
END
$_$;

--
-- Name: FUNCTION claim_items(p_worker uuid, p_routes text[], p_limit integer, p_after_priority integer, p_after_id bigint); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit integer, p_after_priority integer, p_after_id bigint) IS 'Claim up to p_limit due queued items like claim_items(worker, routes, limit), first those after (p_after_priority, p_after_id) at that priority; returns each item''s priority.';

--
-- Name: claim_items(uuid, text[], integer, text[], integer[], double precision[]); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit integer, p_group_routes text[], p_group_concurrency integer[], p_group_interval_ms double precision[]) RETURNS TABLE(id bigint, batch_id uuid, route text, payload jsonb, attempts integer, max_attempts integer, group_key text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    SET plan_cache_mode TO 'force_custom_plan'
    AS $$
#variable_conflict use_column
DECLARE
    v_n       int;
    v_lroutes text[];    -- limited routes of this call, with their limits
    v_lconc   int[];
    v_lintv   float8[];
    v_plain   text[];    -- the other routes of this call
    v_nplain  int;
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The group arrays come from the configuration: a mistake there is loud.
    v_n := coalesce(cardinality(p_group_routes), 0);
    IF coalesce(cardinality(p_group_concurrency), 0) <> v_n
       OR coalesce(cardinality(p_group_interval_ms), 0) <> v_n THEN
        RAISE EXCEPTION 'group_routes, group_concurrency and group_interval_ms must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_n > 0 THEN
        -- NaN sorts above every float8 in PostgreSQL, so "< 'Infinity'" also
        -- rejects NaN.
        IF EXISTS (SELECT 1
                     FROM unnest(p_group_routes, p_group_concurrency, p_group_interval_ms)
                          AS u(r, c, ms)
                    WHERE u.r IS NULL OR u.c IS NULL OR u.c < 0
                       OR u.ms IS NULL OR NOT (u.ms >= 0 AND u.ms < 'Infinity'::float8)) THEN
            RAISE EXCEPTION 'group_routes must not contain NULL, group_concurrency must be >= 0 and group_interval_ms finite and >= 0'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(DISTINCT u.r) FROM unnest(p_group_routes) AS u(r)) <> v_n THEN
            RAISE EXCEPTION 'group_routes must not repeat a route'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    SELECT array_agg(u.r ORDER BY u.r), array_agg(u.c ORDER BY u.r), array_agg(u.ms ORDER BY u.r)
      INTO v_lroutes, v_lconc, v_lintv
      FROM unnest(p_group_routes, p_group_concurrency, p_group_interval_ms) AS u(r, c, ms)
     WHERE u.r = ANY (p_routes)
       AND (u.c > 0 OR u.ms > 0);

    -- No limited route among ours: this is the head claim.
    IF v_lroutes IS NULL THEN
        RETURN QUERY
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM batchd.claim_items(p_worker, p_routes, p_limit) AS c;
        RETURN;
    END IF;

    SELECT array_agg(DISTINCT u.r)
      INTO v_plain
      FROM unnest(p_routes) AS u(r)
     WHERE u.r IS NOT NULL
       AND u.r <> ALL (v_lroutes);
    v_nplain := coalesce(cardinality(v_plain), 0);

    -- plan_cache_mode = force_custom_plan: the variables are constants to the
    -- planner, so `v_nplain > 0` and the CASE in `plain` fold away (one route:
    -- the equality the btree checks on the index tuple, as in the head claim).
    RETURN QUERY
    WITH lim AS (
        SELECT u.route, u.conc, u.intv
          FROM unnest(v_lroutes, v_lconc, v_lintv) AS u(route, conc, intv)
    ), heads AS (
        SELECT g.route, g.group_key, g.running, l.conc, l.intv, h.priority, h.id
          FROM lim AS l
          JOIN batchd.groups AS g ON g.route = l.route
         CROSS JOIN LATERAL (
                SELECT i.priority, i.id
                  FROM batchd.items AS i
                 WHERE i.status = 'queued'
                   AND i.route COLLATE "C" = g.route
                   AND i.group_key COLLATE "C" = g.group_key
                   AND i.run_after <= now()
                 ORDER BY i.priority DESC, i.id
                 LIMIT 1) AS h
         WHERE (l.conc = 0 OR g.running < l.conc)
           AND (l.intv = 0 OR g.next_start_at <= now())
         ORDER BY h.priority DESC, h.id
         LIMIT p_limit
    ), grouped1 AS (
        -- One free slot (concurrency 1, or spacing: the usual case): the head
        -- itself, locked by primary key (SKIP LOCKED; re-checked as queued).
        SELECT i.id, i.priority, h.route, h.group_key
          FROM heads AS h
          JOIN batchd.items AS i ON i.id = h.id
         WHERE (h.intv > 0 OR h.conc - h.running = 1)
           AND i.status = 'queued'
           AND i.run_after <= now()
           FOR UPDATE OF i SKIP LOCKED
    ), grouped_n AS (
        -- More free slots: up to that many of the group's first due items.
        SELECT x.id, x.priority, h.route, h.group_key
          FROM heads AS h
         CROSS JOIN LATERAL (
                SELECT i.id, i.priority
                  FROM batchd.items AS i
                 WHERE i.status = 'queued'
                   AND i.route COLLATE "C" = h.route
                   AND i.group_key COLLATE "C" = h.group_key
                   AND i.run_after <= now()
                 ORDER BY i.priority DESC, i.id
                 LIMIT least(h.conc - h.running, p_limit)
                   FOR UPDATE SKIP LOCKED) AS x
         WHERE h.intv = 0
           AND h.conc - h.running > 1
    ), grouped AS (
        SELECT * FROM grouped1
        UNION ALL
        SELECT * FROM grouped_n
    ), ungrouped AS (
        SELECT x.id, x.priority, false AS slot
          FROM lim AS l
         CROSS JOIN LATERAL (
                SELECT i.id, i.priority
                  FROM batchd.items AS i
                 WHERE i.status = 'queued'
                   AND i.route COLLATE "C" = l.route
                   AND i.group_key IS NULL
                   AND i.run_after <= now()
                 ORDER BY i.group_key COLLATE "C", i.priority DESC, i.id
                 LIMIT p_limit
                   FOR UPDATE SKIP LOCKED) AS x
    ), plain AS (
        SELECT i.id, i.priority, false AS slot
          FROM batchd.items AS i
         WHERE v_nplain > 0
           AND i.status = 'queued'
           AND i.run_after <= now()
           AND CASE WHEN v_nplain = 1 THEN i.route = v_plain[1]
                    ELSE i.route = ANY (v_plain) END
         ORDER BY i.priority DESC, i.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), admitted AS (
        -- The group rows of `grouped`, locked SKIP LOCKED (a base-table join by
        -- primary key). Under READ COMMITTED the join is re-checked on the row
        -- version we lock, so the caps are tested against running and
        -- next_start_at as they are now (whatever committed since our snapshot)
        -- as well as in the snapshot: an item is admitted only if both allow it.
        SELECT r.id, r.priority, true AS slot
          FROM (SELECT x.id, x.priority, x.route, x.group_key,
                       row_number() OVER (PARTITION BY x.route, x.group_key
                                          ORDER BY x.priority DESC, x.id) AS n
                  FROM grouped AS x) AS r
          JOIN lim AS l ON l.route = r.route
          JOIN batchd.groups AS g ON g.route = r.route AND g.group_key = r.group_key
         WHERE (l.conc = 0 OR r.n <= l.conc - g.running)
           AND (l.intv = 0 OR (r.n = 1 AND g.next_start_at <= now()))
           FOR NO KEY UPDATE OF g SKIP LOCKED
    ), picked AS (
        SELECT a.id, a.slot
          FROM (SELECT u.id, u.priority, u.slot FROM ungrouped AS u
                UNION ALL
                SELECT p.id, p.priority, p.slot FROM plain AS p
                UNION ALL
                SELECT a.id, a.priority, a.slot FROM admitted AS a) AS a
         ORDER BY a.priority DESC, a.id
         LIMIT p_limit
    ), claimed AS (
        UPDATE batchd.items AS i
           SET status = 'running', worker_id = p_worker, attempts = i.attempts + 1,
               started_at = now(), finished_at = NULL, group_slot = picked.slot
          FROM picked
         WHERE i.id = picked.id
        RETURNING i.id, i.batch_id, i.route, i.payload, i.attempts,
                  i.max_attempts, i.group_key, i.priority, i.group_slot
    ), taken AS (
        -- Rows locked in admitted: no wait here.
        UPDATE batchd.groups AS g
           SET running = g.running + t.n,
               next_start_at = CASE WHEN l.intv > 0
                                    THEN now() + l.intv * interval '1 millisecond'
                                    ELSE g.next_start_at END
          FROM (SELECT c.route, c.group_key, count(*)::int AS n
                  FROM claimed AS c
                 WHERE c.group_slot
                 GROUP BY c.route, c.group_key) AS t
          JOIN lim AS l ON l.route = t.route
         WHERE g.route = t.route
           AND g.group_key = t.group_key
    ), to_start AS (
        -- As in the head claim: pending batches among those touched, locked in id order.
        SELECT b.id
          FROM batchd.batches AS b
         WHERE b.id IN (SELECT c.batch_id FROM claimed AS c)
           AND b.status = 'pending'
         ORDER BY b.id
           FOR NO KEY UPDATE
    ), started AS (
        UPDATE batchd.batches AS b
           SET status = 'processing', started_at = now()
          FROM to_start
         WHERE b.id = to_start.id
        RETURNING b.id
    ), started_events AS (
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT s.id, 'started', jsonb_build_object('worker', p_worker)
          FROM started AS s
    )
    SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
      FROM claimed AS c
     ORDER BY c.priority DESC, c.id;
END
$$;

--
-- Name: FUNCTION claim_items(p_worker uuid, p_routes text[], p_limit integer, p_group_routes text[], p_group_concurrency integer[], p_group_interval_ms double precision[]); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.claim_items(p_worker uuid, p_routes text[], p_limit integer, p_group_routes text[], p_group_concurrency integer[], p_group_interval_ms double precision[]) IS 'Claim like claim_items(worker, routes, limit), honouring per-group concurrency and start spacing of the listed routes fleet-wide.';

--
-- Name: claim_items_shared(uuid, text[], integer, text[], integer[], text[], integer[], double precision[]); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.claim_items_shared(p_worker uuid, p_routes text[], p_limit integer, p_batch_routes text[], p_batch_concurrency integer[], p_group_routes text[], p_group_concurrency integer[], p_group_interval_ms double precision[]) RETURNS TABLE(id bigint, batch_id uuid, route text, payload jsonb, attempts integer, max_attempts integer, group_key text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
#variable_conflict use_column
DECLARE
    v_n      int;
    v_broutes text[];
    v_bconc  int[];
    v_other  text[];
    v_ask    int;
    v_got    int := 0;
    v_got2   int := 0;
    v_nb     int;
    v_no     int;
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_n := coalesce(cardinality(p_batch_routes), 0);
    IF coalesce(cardinality(p_batch_concurrency), 0) <> v_n THEN
        RAISE EXCEPTION 'batch_routes and batch_concurrency must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_n > 0 THEN
        IF EXISTS (SELECT 1 FROM unnest(p_batch_routes, p_batch_concurrency) AS u(r, c)
                    WHERE u.r IS NULL OR u.c IS NULL OR u.c < 0) THEN
            RAISE EXCEPTION 'batch_routes must not contain NULL and batch_concurrency must be >= 0'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(DISTINCT u.r) FROM unnest(p_batch_routes) AS u(r)) <> v_n THEN
            RAISE EXCEPTION 'batch_routes must not repeat a route'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF p_limit IS NULL OR p_limit <= 0 OR p_routes IS NULL OR cardinality(p_routes) = 0 THEN
        RETURN;
    END IF;

    SELECT array_agg(u.r ORDER BY u.r), array_agg(u.c ORDER BY u.r)
      INTO v_broutes, v_bconc
      FROM unnest(p_batch_routes, p_batch_concurrency) AS u(r, c)
     WHERE u.r = ANY (p_routes)
       AND u.c > 0;
    SELECT array_agg(DISTINCT u.r)
      INTO v_other
      FROM unnest(p_routes) AS u(r)
     WHERE u.r IS NOT NULL
       AND (v_broutes IS NULL OR u.r <> ALL (v_broutes));

    IF v_broutes IS NULL THEN
        RETURN QUERY
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM batchd.claim_items(p_worker, v_other, p_limit, coalesce(p_group_routes, '{}'),
                                  coalesce(p_group_concurrency, '{}'),
                                  coalesce(p_group_interval_ms, '{}')) AS c;
        RETURN;
    END IF;

    -- The advisory locks before any row lock.
    FOR k IN 1 .. cardinality(v_broutes) LOOP
        PERFORM pg_advisory_xact_lock(1650549859, hashtext(v_broutes[k]));
    END LOOP;

    v_nb := cardinality(v_broutes);
    v_no := coalesce(cardinality(v_other), 0);
    v_ask := CASE WHEN v_no = 0 THEN p_limit
                  ELSE greatest(1, (p_limit * v_nb + v_nb + v_no - 1) / (v_nb + v_no)) END;
    RETURN QUERY
    SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
      FROM batchd.claim_batch_slots(p_worker, v_broutes, v_bconc, v_ask) AS c;
    GET DIAGNOSTICS v_got = ROW_COUNT;

    IF v_no > 0 AND v_got < p_limit THEN
        RETURN QUERY
        SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
          FROM batchd.claim_items(p_worker, v_other, p_limit - v_got,
                                  coalesce(p_group_routes, '{}'),
                                  coalesce(p_group_concurrency, '{}'),
                                  coalesce(p_group_interval_ms, '{}')) AS c;
        GET DIAGNOSTICS v_got2 = ROW_COUNT;
        IF v_got >= v_ask AND v_got + v_got2 < p_limit THEN
            RETURN QUERY
            SELECT c.id, c.batch_id, c.route, c.payload, c.attempts, c.max_attempts, c.group_key
              FROM batchd.claim_batch_slots(p_worker, v_broutes, v_bconc,
                                            p_limit - v_got - v_got2) AS c;
        END IF;
    END IF;
END
$$;

--
-- Name: FUNCTION claim_items_shared(p_worker uuid, p_routes text[], p_limit integer, p_batch_routes text[], p_batch_concurrency integer[], p_group_routes text[], p_group_concurrency integer[], p_group_interval_ms double precision[]); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.claim_items_shared(p_worker uuid, p_routes text[], p_limit integer, p_batch_routes text[], p_batch_concurrency integer[], p_group_routes text[], p_group_concurrency integer[], p_group_interval_ms double precision[]) IS 'Claim like claim_items(), with at most batch_concurrency[i] batches of each listed route at once, fleet-wide, sharing each claim between them.';

--
-- Name: complete_items(uuid, jsonb); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.complete_items(p_worker uuid, p_items jsonb) RETURNS TABLE(applied integer, fenced integer)
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
    SELECT c.o_applied, c.o_fenced FROM batchd.complete_items_in(p_worker, p_items) AS c;
$$;

--
-- Name: FUNCTION complete_items(p_worker uuid, p_items jsonb); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.complete_items(p_worker uuid, p_items jsonb) IS 'Record outcomes (or deferrals) of items running under this worker (others are fenced), call the route''s result hook, give back group slots, update batch counters, finish batches.';

--
-- Name: complete_items_in(uuid, jsonb); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.complete_items_in(p_worker uuid, p_items jsonb, OUT o_applied integer, OUT o_fenced integer, OUT o_batches uuid[]) RETURNS record
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    SET plan_cache_mode TO 'force_generic_plan'
    AS $_$
#variable_conflict use_column
DECLARE
    v_total     int;
    v_applied   int;
    v_batches   uuid[];
    v_succeeded int[];
    v_failed    int[];
    v_bad       bigint;
    v_ord       bigint;
    v_text      text;
    v_ids       bigint[];
    v_locked    bigint[];
    v_lock_batches uuid[];
    v_slot_ids  bigint[];
    v_hook_routes text[];
    v_hook_fns    text[];
    v_hook_ids    bigint[];
    v_done_ids    bigint[];
    v_item        batchd.items;
    v_user_path   text;
    v_state       text;
    v_msg         text;
    v_bstatus     text;
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_items IS NULL OR jsonb_typeof(p_items) <> 'array' THEN
        RAISE EXCEPTION 'items must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_total := jsonb_array_length(p_items);
    IF v_total = 0 THEN
        o_applied := 0;
        o_fenced := 0;
        RETURN;
    END IF;

    -- Reject a malformed element outright rather than record garbage: this is a
    -- bug in the caller, and the whole call changes nothing.
    SELECT min(e.ord) INTO v_bad
      FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
     WHERE jsonb_typeof(e.v) <> 'object'
        OR jsonb_typeof(e.v -> 'id') IS DISTINCT FROM 'number'
        OR coalesce(e.v ->> 'status', '') NOT IN ('succeeded', 'failed', 'queued');
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'items[%] must be an object with a numeric "id" and "status" "succeeded", "failed" or "queued"', v_bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT min(e.ord) INTO v_bad
      FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
     WHERE jsonb_typeof(e.v -> 'tries') NOT IN ('object', 'null');
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'items[%]: "tries" must be a JSON object', v_bad - 1
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Deferrals need a finite run_after. The cast is tried on all of them at
    -- once; only if one fails do we look for it, one by one.
    IF jsonb_path_exists(p_items, '$[*] ? (@.status == "queued")') THEN
        BEGIN
            SELECT min(e.ord) INTO v_bad
              FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
             WHERE e.v ->> 'status' = 'queued'
               AND (jsonb_typeof(e.v -> 'run_after') IS DISTINCT FROM 'string'
                    OR NOT isfinite((e.v ->> 'run_after')::timestamptz));
        EXCEPTION WHEN data_exception THEN
            v_bad := NULL;
            FOR v_ord, v_text IN
                SELECT e.ord, e.v ->> 'run_after'
                  FROM jsonb_array_elements(p_items) WITH ORDINALITY AS e(v, ord)
                 WHERE e.v ->> 'status' = 'queued'
                 ORDER BY e.ord
            LOOP
                BEGIN
                    PERFORM v_text::timestamptz;
                EXCEPTION WHEN data_exception THEN
                    v_bad := v_ord;
                    EXIT;
                END;
            END LOOP;
        END;
        IF v_bad IS NOT NULL THEN
            RAISE EXCEPTION 'items[%]: a "queued" record needs "run_after", a finite timestamp (timestamptz text)', v_bad - 1
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    -- (1a) Lock the items this call may change: running under this worker, in id
    -- order, by primary key (the only index the condition lets the planner use:
    -- see Plans above). Their group_slot, read under the lock, is current.
    v_ids := ARRAY(SELECT (e.v ->> 'id')::bigint
                     FROM jsonb_array_elements(p_items) AS e(v));
    SELECT array_agg(s.id), array_agg(s.id) FILTER (WHERE s.group_slot),
           array_agg(DISTINCT s.batch_id)
      INTO v_locked, v_slot_ids, v_lock_batches
      FROM (SELECT i.id, i.group_slot, i.batch_id
              FROM batchd.items AS i
             WHERE i.id = ANY (v_ids)
               AND (i.status = 'running' AND i.worker_id = p_worker) IS TRUE
             ORDER BY i.id
               FOR UPDATE) AS s;
    IF v_locked IS NULL THEN
        o_applied := 0;
        o_fenced := v_total;
        RETURN;
    END IF;

    -- (1b) Lock the group rows of the slot holders, in (route, group_key)
    -- order, then (1c) the batch rows of all the locked items, in id order,
    -- before any item changes: a trigger on items may lock batch rows during
    -- the update (items_requeue_cancelled does, for a deferral in a cancelled batch), in row
    -- order; holding them already, it never waits out of order.
    IF v_slot_ids IS NOT NULL THEN
        PERFORM 1
           FROM batchd.groups AS g
          WHERE (g.route, g.group_key) IN (SELECT i.route, i.group_key
                                             FROM batchd.items AS i
                                            WHERE i.id = ANY (v_slot_ids))
          ORDER BY g.route, g.group_key
            FOR NO KEY UPDATE;
    END IF;
    PERFORM 1
       FROM batchd.batches AS b
      WHERE b.id = ANY (v_lock_batches)
      ORDER BY b.id
        FOR NO KEY UPDATE;

    -- Result hooks: one read of batchd.routes per call (a few rows). Only when
    -- a locked item belongs to a route with a hook does the call leave the plain
    -- path.
    SELECT array_agg(r.name ORDER BY r.name), array_agg(r.hook ORDER BY r.name)
      INTO v_hook_routes, v_hook_fns
      FROM batchd.routes AS r
     WHERE r.hook IS NOT NULL;
    IF v_hook_routes IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM batchd.items AS i
                        WHERE i.id = ANY (v_locked) AND i.route = ANY (v_hook_routes)) THEN
        v_hook_routes := NULL;
    END IF;

    IF v_hook_routes IS NULL THEN
        -- (1d) Update exactly the locked rows, give back their group slots,
        -- aggregate per-batch deltas. If an id appears twice, the join matches the
        -- row twice but UPDATE changes it once: the duplicate counts as fenced. (A
        -- deferral that a trigger turns into something else, such as items_requeue_cancelled
        -- 'cancelled', is applied as that; only succeeded and failed move the
        -- counters here.)
        WITH input AS (
            SELECT x.*
              FROM jsonb_to_recordset(p_items) AS x(id bigint, status text, http_status int,
                                                   result jsonb, error text, provider text,
                                                   started_at timestamptz, finished_at timestamptz,
                                                   run_after text, tries jsonb)
        ), done AS (
            UPDATE batchd.items AS i
               SET status      = x.status,
                   http_status = CASE WHEN x.status = 'queued' THEN i.http_status ELSE x.http_status END,
                   result      = CASE WHEN x.status = 'queued' THEN i.result ELSE x.result END,
                   error       = x.error,
                   provider    = x.provider,
                   tries       = nullif(x.tries, 'null'::jsonb),
                   started_at  = CASE WHEN x.status = 'queued' THEN NULL
                                      ELSE coalesce(x.started_at, i.started_at) END,
                   finished_at = CASE WHEN x.status = 'queued' THEN NULL
                                      ELSE coalesce(x.finished_at, now()) END,
                   run_after   = CASE WHEN x.status = 'queued' THEN x.run_after::timestamptz
                                      ELSE i.run_after END,
                   attempts    = CASE WHEN x.status = 'queued' THEN greatest(i.attempts - 1, 0)
                                      ELSE i.attempts END,
                   worker_id   = CASE WHEN x.status = 'queued' THEN NULL ELSE i.worker_id END,
                   group_slot  = false
              FROM input AS x
             WHERE i.id = x.id
               AND i.id = ANY (v_locked)   -- running under p_worker, locked (1a)
            RETURNING i.batch_id, i.status, i.route, i.group_key,
                      i.id = ANY (v_slot_ids) AS had_slot
        ), slots AS (
            SELECT d.route, d.group_key, count(*)::int AS n
              FROM done AS d
             WHERE d.had_slot
             GROUP BY d.route, d.group_key
        ), freed AS (
            -- Rows locked in (1b). greatest(): should the counter ever be low (it
            -- cannot, unless SQL outside these functions touched it), a completion
            -- must still go through; check_groups() shows the drift, gc_groups()
            -- repairs it.
            UPDATE batchd.groups AS g
               SET running = greatest(g.running - s.n, 0)
              FROM slots AS s
             WHERE g.route = s.route
               AND g.group_key = s.group_key
        ), per_batch AS (
            SELECT d.batch_id,
                   count(*)::int                                        AS n,
                   count(*) FILTER (WHERE d.status = 'succeeded')::int  AS succeeded,
                   count(*) FILTER (WHERE d.status = 'failed')::int     AS failed
              FROM done AS d
             GROUP BY d.batch_id
        )
        SELECT coalesce(sum(p.n), 0)::int,
               array_agg(p.batch_id ORDER BY p.batch_id)  FILTER (WHERE p.succeeded + p.failed > 0),
               array_agg(p.succeeded ORDER BY p.batch_id) FILTER (WHERE p.succeeded + p.failed > 0),
               array_agg(p.failed ORDER BY p.batch_id)    FILTER (WHERE p.succeeded + p.failed > 0)
          INTO v_applied, v_batches, v_succeeded, v_failed
          FROM per_batch AS p;
    ELSE
        -- (1d') the plain statement's update of exactly the locked rows, group slots given
        -- back in the same statement; only the recorded ids are collected here,
        -- the deltas are counted after the hooks.
        WITH input AS (
            SELECT x.*
              FROM jsonb_to_recordset(p_items) AS x(id bigint, status text, http_status int,
                                                   result jsonb, error text, provider text,
                                                   started_at timestamptz, finished_at timestamptz,
                                                   run_after text, tries jsonb)
        ), done AS (
            UPDATE batchd.items AS i
               SET status      = x.status,
                   http_status = CASE WHEN x.status = 'queued' THEN i.http_status ELSE x.http_status END,
                   result      = CASE WHEN x.status = 'queued' THEN i.result ELSE x.result END,
                   error       = x.error,
                   provider    = x.provider,
                   tries       = nullif(x.tries, 'null'::jsonb),
                   started_at  = CASE WHEN x.status = 'queued' THEN NULL
                                      ELSE coalesce(x.started_at, i.started_at) END,
                   finished_at = CASE WHEN x.status = 'queued' THEN NULL
                                      ELSE coalesce(x.finished_at, now()) END,
                   run_after   = CASE WHEN x.status = 'queued' THEN x.run_after::timestamptz
                                      ELSE i.run_after END,
                   attempts    = CASE WHEN x.status = 'queued' THEN greatest(i.attempts - 1, 0)
                                      ELSE i.attempts END,
                   worker_id   = CASE WHEN x.status = 'queued' THEN NULL ELSE i.worker_id END,
                   group_slot  = false
              FROM input AS x
             WHERE i.id = x.id
               AND i.id = ANY (v_locked)   -- running under p_worker, locked (1a)
            RETURNING i.id, i.batch_id, i.status, i.route, i.group_key,
                      i.id = ANY (v_slot_ids) AS had_slot
        ), slots AS (
            SELECT d.route, d.group_key, count(*)::int AS n
              FROM done AS d
             WHERE d.had_slot
             GROUP BY d.route, d.group_key
        ), freed AS (
            UPDATE batchd.groups AS g
               SET running = greatest(g.running - s.n, 0)
              FROM slots AS s
             WHERE g.route = s.route
               AND g.group_key = s.group_key
        )
        SELECT count(*)::int,
               array_agg(d.id ORDER BY d.id) FILTER (WHERE d.status IN ('succeeded', 'failed')),
               array_agg(d.id ORDER BY d.id) FILTER (WHERE d.status IN ('succeeded', 'failed')
                                                     AND d.route = ANY (v_hook_routes))
          INTO v_applied, v_done_ids, v_hook_ids
          FROM done AS d;

        -- (1e) The hooks, in item id order, each in a subtransaction. The
        -- item rows (locked since (1a)) are read as just recorded.
        IF v_hook_ids IS NOT NULL THEN
            v_user_path := batchd.session_search_path();
            -- hooks plan as the session would, not as this function does
            PERFORM pg_catalog.set_config('plan_cache_mode',
                                          (SELECT st.reset_val FROM pg_catalog.pg_settings AS st
                                            WHERE st.name = 'plan_cache_mode'), true);
            FOR v_item IN SELECT i.* FROM batchd.items AS i
                           WHERE i.id = ANY (v_hook_ids)
                           ORDER BY i.id LOOP
                BEGIN
                    PERFORM batchd.run_hook(v_hook_fns[array_position(v_hook_routes, v_item.route)],
                                            v_user_path, v_item);
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
                    IF v_state IN ('BDRTY', '40001', '40P01', '55P03')
                       AND v_item.attempts < v_item.max_attempts THEN
                        -- A retry. In a batch cancelled meanwhile, cancelled
                        -- instead (as items_requeue_cancelled does for any requeue); its row is
                        -- locked (1c).
                        SELECT b.status INTO v_bstatus
                          FROM batchd.batches AS b WHERE b.id = v_item.batch_id;
                        IF v_bstatus = 'cancelled' THEN
                            UPDATE batchd.items AS i
                               SET status = 'cancelled', worker_id = NULL, finished_at = now(),
                                   error = 'hook asked for a retry: ' || v_msg
                             WHERE i.id = v_item.id;
                            UPDATE batchd.batches AS b
                               SET cancelled = b.cancelled + 1
                             WHERE b.id = v_item.batch_id;
                        ELSE
                            UPDATE batchd.items AS i
                               SET status = 'queued', worker_id = NULL,
                                   started_at = NULL, finished_at = NULL,
                                   run_after = now() + make_interval(
                                       secs => least(60, power(2, greatest(i.attempts - 1, 0)))),
                                   error = 'hook asked for a retry: ' || v_msg
                             WHERE i.id = v_item.id;
                        END IF;
                    ELSE
                        UPDATE batchd.items AS i
                           SET status = 'failed', error = 'hook failed: ' || v_msg
                         WHERE i.id = v_item.id;
                    END IF;
                END;
            END LOOP;
            PERFORM pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true);
        END IF;

        -- Per-batch deltas from the recorded items' statuses as they are now
        -- (a hook failure counts as failed; a retry as nothing yet).
        SELECT array_agg(p.batch_id ORDER BY p.batch_id),
               array_agg(p.succeeded ORDER BY p.batch_id),
               array_agg(p.failed ORDER BY p.batch_id)
          INTO v_batches, v_succeeded, v_failed
          FROM (SELECT i.batch_id,
                       count(*) FILTER (WHERE i.status = 'succeeded')::int AS succeeded,
                       count(*) FILTER (WHERE i.status = 'failed')::int    AS failed
                  FROM batchd.items AS i
                 WHERE i.id = ANY (v_done_ids)
                 GROUP BY i.batch_id) AS p
         WHERE p.succeeded + p.failed > 0;
    END IF;

    IF v_batches IS NOT NULL THEN
        -- (2) The touched batches are locked (1c). (3) Apply the deltas; finish
        -- the batches that are now complete. This statement's snapshot is taken
        -- after the locks, so it reads the batches' current counters and status.
        WITH delta AS (
            SELECT d.batch_id, d.succeeded, d.failed
              FROM unnest(v_batches, v_succeeded, v_failed) AS d(batch_id, succeeded, failed)
        ), next AS (
            SELECT b.id,
                   b.succeeded + d.succeeded AS succeeded,
                   b.failed + d.failed       AS failed,
                   b.cancelled,
                   CASE
                       WHEN b.status NOT IN ('pending', 'processing')
                         OR b.succeeded + d.succeeded + b.failed + d.failed + b.cancelled < b.total
                           THEN NULL                             -- not finishing now
                       WHEN b.succeeded + d.succeeded = b.total THEN 'completed'
                       WHEN b.succeeded + d.succeeded = 0       THEN 'failed'
                       ELSE 'completed_with_errors'
                   END AS final_status
              FROM batchd.batches AS b
              JOIN delta AS d ON d.batch_id = b.id
        ), upd AS (
            UPDATE batchd.batches AS b
               SET succeeded   = n.succeeded,
                   failed      = n.failed,
                   status      = coalesce(n.final_status, b.status),
                   finished_at = CASE WHEN n.final_status IS NOT NULL THEN now() ELSE b.finished_at END
              FROM next AS n
             WHERE b.id = n.id
        )
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT n.id, n.final_status,
               jsonb_build_object('succeeded', n.succeeded, 'failed', n.failed,
                                  'cancelled', n.cancelled)
          FROM next AS n
         WHERE n.final_status IS NOT NULL
         ORDER BY n.id;
    END IF;

    o_applied := v_applied;
    o_fenced := v_total - v_applied;
    o_batches := v_lock_batches;
END
$_$;

--
-- Name: FUNCTION complete_items_in(p_worker uuid, p_items jsonb, OUT o_applied integer, OUT o_fenced integer, OUT o_batches uuid[]); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.complete_items_in(p_worker uuid, p_items jsonb, OUT o_applied integer, OUT o_fenced integer, OUT o_batches uuid[]) IS 'complete_items() with the ids of the batches it may have changed (those of the items it locked), for record_completions().';

--
-- Name: create_token(text); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.create_token(p_tenant text) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION create_token(p_tenant text); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.create_token(p_tenant text) IS 'Create a REST API token for a tenant; returns the token (shown once, stored only as its SHA-256).';

--
-- Name: delete_batch(text, uuid); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.delete_batch(p_tenant text, p_id uuid) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION delete_batch(p_tenant text, p_id uuid); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.delete_batch(p_tenant text, p_id uuid) IS 'Delete a finished batch of a tenant with its items and events; ok, not_found, not_terminal or running.';

--
-- Name: deregister_worker(uuid); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.deregister_worker(p_id uuid) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
DECLARE
    v_released int;
BEGIN
    v_released := batchd.release_items(p_id, NULL);
    DELETE FROM batchd.workers WHERE id = p_id;
    RETURN v_released;
END
$$;

--
-- Name: FUNCTION deregister_worker(p_id uuid); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.deregister_worker(p_id uuid) IS 'Release a worker''s running items and delete its row; returns the number released.';

--
-- Name: fanout(jsonb, jsonb, integer); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.fanout(p_job jsonb, p_fields jsonb DEFAULT NULL::jsonb, p_max_items integer DEFAULT 10000) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'batchd'
    AS $_$
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
$_$;

--
-- Name: FUNCTION fanout(p_job jsonb, p_fields jsonb, p_max_items integer); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.fanout(p_job jsonb, p_fields jsonb, p_max_items integer) IS 'Expand a job''s list fields into the cross product of items (JSON array); more than max_items raises 22023.';

--
-- Name: gc_groups(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.gc_groups() RETURNS TABLE(created integer, repaired integer, deleted integer)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
#variable_conflict use_column
DECLARE
    v_created  int;
    v_repaired int;
    v_deleted  int;
    v_routes   text[];
    v_keys     text[];
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'batchd.gc_groups() must run in READ COMMITTED'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;

    -- 1. Missing rows. Loose index scan of items_group_claim_idx: the queued
    -- routes, then each route's distinct non-null group keys, one descent each.
    WITH RECURSIVE r(route) AS (
        SELECT (SELECT i.route FROM batchd.items AS i
                 WHERE i.status = 'queued'
                 ORDER BY i.route COLLATE "C" LIMIT 1)
        UNION ALL
        SELECT (SELECT i.route FROM batchd.items AS i
                 WHERE i.status = 'queued' AND i.route COLLATE "C" > r.route
                 ORDER BY i.route COLLATE "C" LIMIT 1)
          FROM r
         WHERE r.route IS NOT NULL
    ), k(route, group_key) AS (
        SELECT r.route,
               (SELECT i.group_key FROM batchd.items AS i
                 WHERE i.status = 'queued' AND i.route COLLATE "C" = r.route
                   AND i.group_key IS NOT NULL
                 ORDER BY i.group_key COLLATE "C" LIMIT 1)
          FROM r
         WHERE r.route IS NOT NULL
        UNION ALL
        SELECT k.route,
               (SELECT i.group_key FROM batchd.items AS i
                 WHERE i.status = 'queued' AND i.route COLLATE "C" = k.route
                   AND i.group_key COLLATE "C" > k.group_key
                 ORDER BY i.group_key COLLATE "C" LIMIT 1)
          FROM k
         WHERE k.group_key IS NOT NULL
    ), ins AS (
        INSERT INTO batchd.groups (route, group_key)
        SELECT k.route, k.group_key
          FROM k
         WHERE k.group_key IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM batchd.groups AS g
                            WHERE g.route = k.route AND g.group_key = k.group_key)
         ORDER BY k.route, k.group_key
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::int INTO v_created FROM ins;

    -- 2. Candidates, locked.
    WITH holders AS (
        SELECT i.route, i.group_key, count(*)::int AS n
          FROM batchd.items AS i
         WHERE i.status = 'running' AND i.group_slot
         GROUP BY i.route, i.group_key
    ), cand AS (
        SELECT g.route, g.group_key
          FROM batchd.groups AS g
          LEFT JOIN holders AS h ON h.route = g.route AND h.group_key = g.group_key
         WHERE g.running <> coalesce(h.n, 0)
            OR (g.running = 0 AND g.next_start_at <= now()
                AND NOT EXISTS (SELECT 1 FROM batchd.items AS i
                                 WHERE i.status = 'queued'
                                   AND i.route COLLATE "C" = g.route
                                   AND i.group_key COLLATE "C" = g.group_key))
           FOR UPDATE OF g SKIP LOCKED
    )
    SELECT array_agg(c.route), array_agg(c.group_key)
      INTO v_routes, v_keys
      FROM cand AS c;

    IF v_routes IS NULL THEN
        RETURN QUERY SELECT v_created, 0, 0;
        RETURN;
    END IF;

    -- 3. Recount, with this statement's (later) snapshot.
    WITH c AS (
        SELECT u.route, u.group_key
          FROM unnest(v_routes, v_keys) AS u(route, group_key)
    ), fixed AS (
        UPDATE batchd.groups AS g
           SET running = h.n
          FROM (SELECT c.route, c.group_key,
                       (SELECT count(*)::int FROM batchd.items AS i
                         WHERE i.status = 'running' AND i.group_slot
                           AND i.route = c.route AND i.group_key = c.group_key) AS n
                  FROM c) AS h
         WHERE g.route = h.route
           AND g.group_key = h.group_key
           AND g.running <> h.n
        RETURNING 1
    )
    SELECT count(*)::int INTO v_repaired FROM fixed;

    -- 4. Delete the idle ones (this statement sees the repaired counters).
    WITH c AS (
        SELECT u.route, u.group_key
          FROM unnest(v_routes, v_keys) AS u(route, group_key)
    ), gone AS (
        DELETE FROM batchd.groups AS g
         USING c
         WHERE g.route = c.route
           AND g.group_key = c.group_key
           AND g.running = 0
           AND g.next_start_at <= now()
           AND NOT EXISTS (SELECT 1 FROM batchd.items AS i
                            WHERE i.status = 'queued'
                              AND i.route COLLATE "C" = g.route
                              AND i.group_key COLLATE "C" = g.group_key)
        RETURNING 1
    )
    SELECT count(*)::int INTO v_deleted FROM gone;

    RETURN QUERY SELECT v_created, v_repaired, v_deleted;
END
$$;

--
-- Name: FUNCTION gc_groups(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.gc_groups() IS 'Create missing group rows, recount drifted group counters, delete idle group rows; returns the three counts.';

--
-- Name: hook_call(text); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.hook_call(p_name text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'batchd'
    AS $_$
DECLARE
    v_parts text[];
BEGIN
    IF p_name IS NULL
       OR p_name !~ '^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$' THEN
        RAISE EXCEPTION 'invalid function name "%" (expected function or schema.function; letters, digits and _, not starting with a digit, at most 63 characters each)', p_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_parts := string_to_array(lower(p_name), '.');
    IF cardinality(v_parts) = 2 THEN
        RETURN format('SELECT %I.%I($1)', v_parts[1], v_parts[2]);
    END IF;
    RETURN format('SELECT %I($1)', v_parts[1]);
END
$_$;

--
-- Name: FUNCTION hook_call(p_name text); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.hook_call(p_name text) IS 'The SELECT that calls a validated hook function name with one argument ($1); raises 22023 on a bad name.';

--
-- Name: intake(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.intake() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $_$
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
$_$;

--
-- Name: FUNCTION intake(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.intake() IS 'Trigger function batchd.intake(route [, options]): submit each new row of a user table as a job (batchd.submit_job), in the inserting transaction.';

--
-- Name: intake_job(text, text, anyelement); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.intake_job(p_fn text, p_path text, p_row anyelement) RETURNS jsonb
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $_$
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
$_$;

--
-- Name: FUNCTION intake_job(p_fn text, p_path text, p_row anyelement); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.intake_job(p_fn text, p_path text, p_row anyelement) IS 'Intake: the job of a row, from the user''s function of the row type (called under the session''s search_path).';

--
-- Name: items_clear_group_slot(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.items_clear_group_slot() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    NEW.group_slot := false;
    RETURN NEW;
END
$$;

--
-- Name: FUNCTION items_clear_group_slot(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.items_clear_group_slot() IS 'Trigger: an item that is not running holds no group slot.';

--
-- Name: items_requeue_cancelled(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.items_requeue_cancelled() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    PERFORM 1 FROM batchd.batches AS b
     WHERE b.id = NEW.batch_id AND b.status = 'cancelled';
    IF FOUND THEN
        NEW.status := 'cancelled';
        NEW.worker_id := NULL;
        NEW.finished_at := now();
        UPDATE batchd.batches AS b
           SET cancelled = b.cancelled + 1
         WHERE b.id = NEW.batch_id;
    END IF;
    RETURN NEW;
END
$$;

--
-- Name: FUNCTION items_requeue_cancelled(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.items_requeue_cancelled() IS 'Trigger: a running item sent back to the queue while its batch is cancelled is cancelled instead.';

--
-- Name: job_summary(uuid); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.job_summary(p_id uuid) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
    SELECT batchd.job_summary_of(b) FROM batchd.batches AS b WHERE b.id = p_id
$$;

--
-- Name: FUNCTION job_summary(p_id uuid); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.job_summary(p_id uuid) IS 'The live summary of a batch (batchd.job_summary_of): counts per job and, for a job with a group field, per group.';

--
-- Name: batches; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.batches (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    tenant text NOT NULL,
    name text,
    route text NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    priority integer DEFAULT 5 NOT NULL,
    max_attempts integer DEFAULT 3 NOT NULL,
    group_key text,
    total integer NOT NULL,
    succeeded integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL,
    cancelled integer DEFAULT 0 NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    idempotency_key text,
    idempotency_hash bytea,
    retries integer DEFAULT 0 NOT NULL,
    job jsonb,
    job_group text,
    summary jsonb,
    on_done text,
    source text,
    source_key text,
    CONSTRAINT batches_cancelled_check CHECK ((cancelled >= 0)),
    CONSTRAINT batches_failed_check CHECK ((failed >= 0)),
    CONSTRAINT batches_idempotency_hash_check CHECK (((idempotency_hash IS NULL) OR ((octet_length(idempotency_hash) = 32) AND (idempotency_key IS NOT NULL)))),
    CONSTRAINT batches_idempotency_key_check CHECK (((char_length(idempotency_key) >= 1) AND (char_length(idempotency_key) <= 200))),
    CONSTRAINT batches_job_check CHECK ((jsonb_typeof(job) = 'object'::text)),
    CONSTRAINT batches_job_group_check CHECK (((char_length(job_group) >= 1) AND (char_length(job_group) <= 200))),
    CONSTRAINT batches_max_attempts_check CHECK (((max_attempts >= 1) AND (max_attempts <= 100))),
    CONSTRAINT batches_metadata_check CHECK ((jsonb_typeof(metadata) = 'object'::text)),
    CONSTRAINT batches_priority_check CHECK (((priority >= 0) AND (priority <= 10))),
    CONSTRAINT batches_retries_check CHECK ((retries >= 0)),
    CONSTRAINT batches_source_check CHECK (((source IS NULL) = (source_key IS NULL))),
    CONSTRAINT batches_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'completed_with_errors'::text, 'failed'::text, 'cancelled'::text]))),
    CONSTRAINT batches_succeeded_check CHECK ((succeeded >= 0)),
    CONSTRAINT batches_total_check CHECK ((total >= 0))
);

--
-- Name: TABLE batches; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.batches IS 'Submitted batches: one row per batch, with live counters';

--
-- Name: COLUMN batches.group_key; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.group_key IS 'Name of the payload field (dotted path such as "account.id" for nested fields) whose value groups items, or NULL';

--
-- Name: COLUMN batches.total; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.total IS 'Number of items submitted; succeeded + failed + cancelled = total when finished';

--
-- Name: COLUMN batches.idempotency_key; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.idempotency_key IS 'Idempotency-Key of the REST submit that created the batch (unique per tenant; a key older than idempotency_ttl moves to the next batch that uses it), or NULL';

--
-- Name: COLUMN batches.idempotency_hash; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.idempotency_hash IS 'SHA-256 of the request that used idempotency_key (route, items, options), or NULL';

--
-- Name: COLUMN batches.retries; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.retries IS 'How many times the batch was retried (retry_batch), at most max_batch_retries';

--
-- Name: COLUMN batches.job; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.job IS 'The job as submitted (batchd.submit_job), before its fan-out into items; NULL for a plain batch';

--
-- Name: COLUMN batches.job_group; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.job_group IS 'The job field whose value groups its items in the summary (submit_job''s group option)';

--
-- Name: COLUMN batches.summary; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.summary IS 'A job''s counts when it ended (batchd.job_summary): total, succeeded, failed, cancelled, and per group';

--
-- Name: COLUMN batches.on_done; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.on_done IS 'The job''s own callback, schema.function(batch batchd.batches), called once per end of the batch';

--
-- Name: COLUMN batches.source; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.source IS 'Intake: the table whose row submitted this batch (schema-qualified, quoted as needed)';

--
-- Name: COLUMN batches.source_key; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.batches.source_key IS 'Intake: the key of that row, as text';

--
-- Name: job_summary_of(batchd.batches); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.job_summary_of(p_batch batchd.batches) RETURNS jsonb
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION job_summary_of(p_batch batchd.batches); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.job_summary_of(p_batch batchd.batches) IS 'A batch''s counts (total, succeeded, failed, cancelled, unfinished), and per group for a job with a group field.';

--
-- Name: purge_finished(bigint, integer, integer); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.purge_finished(p_older_ms bigint, p_max_batches integer DEFAULT 20, p_max_items integer DEFAULT 50000) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
DECLARE
    v_ids uuid[];
    v_n   int;
BEGIN
    SELECT array_agg(s.id)
      INTO v_ids
      FROM (SELECT b.id,
                   sum(b.total) OVER (ORDER BY b.finished_at, b.id) AS running_items,
                   row_number() OVER (ORDER BY b.finished_at, b.id) AS rn
              FROM batchd.batches AS b
             WHERE b.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled')
               AND b.finished_at < now() - make_interval(secs => p_older_ms / 1000.0)
             ORDER BY b.finished_at, b.id
             LIMIT p_max_batches) AS s
     WHERE s.rn = 1 OR s.running_items <= p_max_items;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM batchd.batches AS b
     WHERE b.id = ANY (v_ids)
       AND b.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled');
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;

--
-- Name: FUNCTION purge_finished(p_older_ms bigint, p_max_batches integer, p_max_items integer); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.purge_finished(p_older_ms bigint, p_max_batches integer, p_max_items integer) IS 'Retention: delete up to a chunk of finished batches older than the given age; returns how many.';

--
-- Name: reap_workers(uuid, bigint); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.reap_workers(p_self uuid, p_lease_ms bigint) RETURNS TABLE(workers integer, requeued integer, failed integer)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
DECLARE
    v_worker uuid;
    v_recs   jsonb;
    v_ids    bigint[];
    v_n      int;
BEGIN
    workers := 0;
    requeued := 0;
    failed := 0;
    FOR v_worker IN
        SELECT w.id
          FROM batchd.workers AS w
         WHERE w.heartbeat_at < now() - make_interval(secs => p_lease_ms / 1000.0)
           AND w.id IS DISTINCT FROM p_self
         ORDER BY w.id
           FOR UPDATE SKIP LOCKED
    LOOP
        SELECT jsonb_agg(jsonb_build_object('id', i.id, 'status', 'failed',
                                            'error', 'worker lost',
                                            'finished_at', now()) ORDER BY i.id),
               count(*)
          INTO v_recs, v_n
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.worker_id = v_worker
           AND i.attempts >= i.max_attempts;
        IF v_n > 0 THEN
            PERFORM batchd.complete_items(v_worker, v_recs);
            failed := failed + v_n;
        END IF;

        SELECT array_agg(i.id ORDER BY i.id)
          INTO v_ids
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.worker_id = v_worker;
        IF v_ids IS NOT NULL THEN
            -- release_items refunds the attempt; a lost worker spends it, so
            -- add it back (the rows stay locked by this transaction between
            -- the two statements: nobody can claim them in between).
            v_n := batchd.release_items(v_worker, v_ids);
            -- one 'recovered' event per batch, with the ids requeued (the
            -- first 100; items is the count), so that an operator can see
            -- afterwards which items a dead worker held
            WITH bumped AS (
                UPDATE batchd.items AS i
                   SET attempts = i.attempts + 1
                 WHERE i.id = ANY (v_ids)
                   AND i.status = 'queued'
                RETURNING i.id, i.batch_id
            )
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT b.batch_id, 'recovered',
                   jsonb_build_object('worker', v_worker, 'items', count(*),
                                      'item_ids', to_jsonb((array_agg(b.id ORDER BY b.id))[1:100]),
                                      'item_ids_truncated', count(*) > 100)
              FROM bumped AS b
             GROUP BY b.batch_id
             ORDER BY b.batch_id;
            requeued := requeued + v_n;
        END IF;

        DELETE FROM batchd.workers WHERE id = v_worker;
        workers := workers + 1;
    END LOOP;

    -- Orphans: items running under a worker id that has no row any more (a
    -- worker reaped while alive that claimed, then died before registering
    -- again) and started longer than the lease ago: back to the queue, the
    -- attempt counted and a 'recovered' event written, like any dead
    -- worker's.
    FOR v_worker IN
        SELECT DISTINCT i.worker_id
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.started_at < now() - make_interval(secs => p_lease_ms / 1000.0)
           AND NOT EXISTS (SELECT 1 FROM batchd.workers AS w WHERE w.id = i.worker_id)
    LOOP
        SELECT array_agg(i.id ORDER BY i.id)
          INTO v_ids
          FROM batchd.items AS i
         WHERE i.status = 'running'
           AND i.worker_id = v_worker;
        IF v_ids IS NOT NULL THEN
            v_n := batchd.release_items(v_worker, v_ids);
            WITH bumped AS (
                UPDATE batchd.items AS i
                   SET attempts = i.attempts + 1
                 WHERE i.id = ANY (v_ids)
                   AND i.status = 'queued'
                RETURNING i.id, i.batch_id
            )
            INSERT INTO batchd.batch_events (batch_id, event, detail)
            SELECT b.batch_id, 'recovered',
                   jsonb_build_object('worker', v_worker, 'items', count(*),
                                      'item_ids', to_jsonb((array_agg(b.id ORDER BY b.id))[1:100]),
                                      'item_ids_truncated', count(*) > 100)
              FROM bumped AS b
             GROUP BY b.batch_id
             ORDER BY b.batch_id;
            requeued := requeued + v_n;
        END IF;
    END LOOP;
    RETURN NEXT;
END
$$;

--
-- Name: FUNCTION reap_workers(p_self uuid, p_lease_ms bigint); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.reap_workers(p_self uuid, p_lease_ms bigint) IS 'Requeue (or fail after max_attempts) the items of workers silent longer than the lease, with a recovered event per batch listing them, and delete those workers.';

--
-- Name: record_completions(uuid, jsonb); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.record_completions(p_worker uuid, p_items jsonb) RETURNS TABLE(applied integer, fenced integer, finished jsonb)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
DECLARE
    v_batches uuid[];
BEGIN
    -- the batches of the items it recorded: those this transaction moved to a
    -- terminal status are among them (finished_at = now() is this
    -- transaction's timestamp)
    SELECT c.o_applied, c.o_fenced, c.o_batches INTO applied, fenced, v_batches
      FROM batchd.complete_items_in(p_worker, p_items) AS c;
    SELECT jsonb_agg(jsonb_build_object(
               'id', b.id, 'name', b.name, 'route', b.route, 'status', b.status,
               'total', b.total, 'succeeded', b.succeeded, 'failed', b.failed,
               'cancelled', b.cancelled,
               'seconds', round(extract(epoch FROM b.finished_at - coalesce(b.started_at, b.created_at))::numeric, 3))
             ORDER BY b.id)
      INTO finished
      FROM batchd.batches AS b
     WHERE b.id = ANY (v_batches)
       AND b.finished_at = now()
       AND b.status IN ('completed', 'completed_with_errors', 'failed', 'cancelled');
    RETURN NEXT;
END
$$;

--
-- Name: FUNCTION record_completions(p_worker uuid, p_items jsonb); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.record_completions(p_worker uuid, p_items jsonb) IS 'complete_items() plus the batches it finished (jsonb array), for the worker''s log.';

--
-- Name: release_items(uuid, bigint[]); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.release_items(p_worker uuid, p_ids bigint[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    SET plan_cache_mode TO 'force_custom_plan'
    AS $$
DECLARE
    v_count    int;
    v_routes   text[];
    v_route    text;
    v_locked   bigint[];
    v_slot_ids bigint[];
BEGIN
    IF p_worker IS NULL THEN
        RAISE EXCEPTION 'worker id must not be null' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- (1) Lock the rows to release, in id order, and note which hold a slot.
    SELECT array_agg(s.id), array_agg(s.id) FILTER (WHERE s.group_slot)
      INTO v_locked, v_slot_ids
      FROM (SELECT i.id, i.group_slot
              FROM batchd.items AS i
             WHERE i.status = 'running'
               AND i.worker_id = p_worker
               AND (p_ids IS NULL OR i.id = ANY (p_ids))
             ORDER BY i.id
               FOR UPDATE) AS s;
    IF v_locked IS NULL THEN
        RETURN 0;
    END IF;

    -- (2) Lock the group rows of the slot holders, in (route, group_key) order,
    -- then the batch rows of the items, in id order, before any item changes:
    -- a trigger on items may lock batch rows during the update (items_requeue_cancelled does, for
    -- a cancelled batch), in row order; holding them already, it never waits
    -- out of order.
    IF v_slot_ids IS NOT NULL THEN
        PERFORM 1
           FROM batchd.groups AS g
          WHERE (g.route, g.group_key) IN (SELECT i.route, i.group_key
                                             FROM batchd.items AS i
                                            WHERE i.id = ANY (v_slot_ids))
          ORDER BY g.route, g.group_key
            FOR NO KEY UPDATE;
    END IF;
    PERFORM 1
       FROM batchd.batches AS b
      WHERE b.id IN (SELECT i.batch_id FROM batchd.items AS i WHERE i.id = ANY (v_locked))
      ORDER BY b.id
        FOR NO KEY UPDATE;

    -- (3) Requeue exactly those; give back their slots in the same statement.
    WITH released AS (
        UPDATE batchd.items AS i
           SET status = 'queued', attempts = greatest(i.attempts - 1, 0),
               worker_id = NULL, started_at = NULL, run_after = now(),
               group_slot = false
         WHERE i.id = ANY (v_locked)
           AND i.status = 'running'
           AND i.worker_id = p_worker
        RETURNING i.batch_id, i.route, i.group_key, i.id = ANY (v_slot_ids) AS had_slot
    ), events AS (
        INSERT INTO batchd.batch_events (batch_id, event, detail)
        SELECT r.batch_id, 'released', jsonb_build_object('items', count(*))
          FROM released AS r
         GROUP BY r.batch_id
         ORDER BY r.batch_id
    ), slots AS (
        SELECT r.route, r.group_key, count(*)::int AS n
          FROM released AS r
         WHERE r.had_slot
         GROUP BY r.route, r.group_key
    ), freed AS (
        -- Rows locked in (2).
        UPDATE batchd.groups AS g
           SET running = greatest(g.running - s.n, 0)
          FROM slots AS s
         WHERE g.route = s.route
           AND g.group_key = s.group_key
    )
    SELECT count(*)::int, array_agg(DISTINCT r.route)
      INTO v_count, v_routes
      FROM released AS r;

    IF v_routes IS NOT NULL THEN
        FOREACH v_route IN ARRAY v_routes LOOP
            PERFORM pg_notify('batchd_work', v_route);
        END LOOP;
    END IF;

    RETURN v_count;
END
$$;

--
-- Name: FUNCTION release_items(p_worker uuid, p_ids bigint[]); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.release_items(p_worker uuid, p_ids bigint[]) IS 'Requeue items running under a worker (all when p_ids is NULL) without spending an attempt, giving back group slots; returns the count.';

--
-- Name: release_unheld(uuid, bigint[]); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.release_unheld(p_worker uuid, p_held bigint[]) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(i.id ORDER BY i.id)
      INTO v_ids
      FROM batchd.items AS i
     WHERE i.status = 'running'
       AND i.worker_id = p_worker
       AND NOT (i.id = ANY (coalesce(p_held, '{}')));
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    RETURN batchd.release_items(p_worker, v_ids);
END
$$;

--
-- Name: FUNCTION release_unheld(p_worker uuid, p_held bigint[]); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.release_unheld(p_worker uuid, p_held bigint[]) IS 'Requeue a worker''s running items that it does not hold (lost claims); returns the count.';

--
-- Name: retry_batch(text, uuid, integer); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.retry_batch(p_tenant text, p_id uuid, p_max_retries integer DEFAULT NULL::integer) RETURNS text
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
DECLARE
    v_status    text;
    v_route     text;
    v_failed    int;
    v_cancelled int;
    v_retries   int;
BEGIN
    SELECT b.status, b.route, b.retries INTO v_status, v_route, v_retries
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
    IF p_max_retries IS NOT NULL AND v_retries >= p_max_retries THEN
        RETURN 'retry_limit';
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
    SELECT b.status, b.retries INTO v_status, v_retries
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
           finished_at = NULL,
           retries = b.retries + 1
     WHERE b.id = p_id;

    INSERT INTO batchd.batch_events (batch_id, event, detail)
    VALUES (p_id, 'retried', jsonb_build_object('failed', v_failed, 'cancelled', v_cancelled,
                                                'previous_status', v_status,
                                                'retry', v_retries + 1));

    PERFORM pg_notify('batchd_work', v_route);
    RETURN 'ok';
END
$$;

--
-- Name: FUNCTION retry_batch(p_tenant text, p_id uuid, p_max_retries integer); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.retry_batch(p_tenant text, p_id uuid, p_max_retries integer) IS 'Requeue the failed and cancelled items of a finished batch retried fewer than max_retries times; ok, not_found, not_terminal, running, nothing_to_retry or retry_limit.';

--
-- Name: revoke_token(text); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.revoke_token(p_token text) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION revoke_token(p_token text); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.revoke_token(p_token text) IS 'Revoke a REST API token; true when a live token was revoked.';

--
-- Name: revoke_token_id(bigint); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.revoke_token_id(p_id bigint) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    UPDATE batchd.api_tokens
       SET revoked = true, revoked_at = now()
     WHERE id = p_id
       AND NOT revoked;
    RETURN FOUND;
END
$$;

--
-- Name: FUNCTION revoke_token_id(p_id bigint); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.revoke_token_id(p_id bigint) IS 'Revoke a REST API token by its id; true when a live token was revoked.';

--
-- Name: run_hook(text, text, anyelement); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.run_hook(p_fn text, p_path text, p_arg anyelement) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $_$
DECLARE
    v_call text;
BEGIN
    SELECT format('SELECT %I.%I($1)', n.nspname, p.proname) INTO v_call
      FROM pg_catalog.pg_proc AS p
      JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
     WHERE p.oid = to_regprocedure(p_fn || '(' || pg_typeof(p_arg)::text || ')');
    -- gone since sync_routes: the call names it as configured, and fails
    v_call := coalesce(v_call, batchd.hook_call(p_fn));
    PERFORM pg_catalog.set_config('search_path', coalesce(p_path, ''), true);
    EXECUTE v_call USING p_arg;
END
$_$;

--
-- Name: FUNCTION run_hook(p_fn text, p_path text, p_arg anyelement); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.run_hook(p_fn text, p_path text, p_arg anyelement) IS 'Call a hook or callback function with one argument under the given search_path (the session''s, not batchd''s).';

--
-- Name: session_search_path(); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.session_search_path() RETURNS text
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
    SELECT s.reset_val FROM pg_catalog.pg_settings AS s WHERE s.name = 'search_path'
$$;

--
-- Name: FUNCTION session_search_path(); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.session_search_path() IS 'The search_path a session of the current role starts with (reset value of search_path): the one hooks run with.';

--
-- Name: submit_batch(text, text, jsonb, jsonb); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.submit_batch(p_tenant text, p_route text, p_items jsonb, p_options jsonb DEFAULT '{}'::jsonb) RETURNS uuid
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $_$
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
$_$;

--
-- Name: FUNCTION submit_batch(p_tenant text, p_route text, p_items jsonb, p_options jsonb); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.submit_batch(p_tenant text, p_route text, p_items jsonb, p_options jsonb) IS 'Validate and store a batch with its items; returns the batch id. Bad input raises SQLSTATE 22023 and stores nothing.';

--
-- Name: submit_job(text, text, jsonb, jsonb, text, text); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.submit_job(p_tenant text, p_route text, p_job jsonb, p_options jsonb DEFAULT '{}'::jsonb, p_source text DEFAULT NULL::text, p_source_key text DEFAULT NULL::text) RETURNS uuid
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION submit_job(p_tenant text, p_route text, p_job jsonb, p_options jsonb, p_source text, p_source_key text); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.submit_job(p_tenant text, p_route text, p_job jsonb, p_options jsonb, p_source text, p_source_key text) IS 'Submit one job: its list fields fanned out into items (batchd.fanout), one batch that keeps the job, its group field, its on_done and the row it stands for; bad input raises 22023.';

--
-- Name: sync_routes(jsonb); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.sync_routes(p_routes jsonb) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
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
$$;

--
-- Name: FUNCTION sync_routes(p_routes jsonb); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.sync_routes(p_routes jsonb) IS 'Record the hook and on_batch_done functions of the calling batchd''s routes (validated); returns rows inserted or changed.';

--
-- Name: worker_heartbeat(uuid, integer, bigint); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.worker_heartbeat(p_id uuid, p_inflight integer, p_lease_ms bigint) RETURNS TABLE(registered boolean, shares jsonb)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    UPDATE batchd.workers
       SET heartbeat_at = now(), inflight = coalesce(p_inflight, 0)
     WHERE id = p_id;
    registered := FOUND;
    SELECT coalesce(jsonb_object_agg(s.provider, s.n), '{}'::jsonb)
      INTO shares
      FROM (SELECT p.provider, count(*) AS n
              FROM batchd.workers AS w,
                   unnest(w.providers) AS p(provider)
             WHERE w.heartbeat_at > now() - make_interval(secs => p_lease_ms / 1000.0)
             GROUP BY p.provider) AS s;
    RETURN NEXT;
END
$$;

--
-- Name: FUNCTION worker_heartbeat(p_id uuid, p_inflight integer, p_lease_ms bigint); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.worker_heartbeat(p_id uuid, p_inflight integer, p_lease_ms bigint) IS 'Refresh a worker''s heartbeat; returns whether its row exists and the live workers per provider.';

--
-- Name: worker_register(uuid, text, integer, text, text[], bigint); Type: FUNCTION; Schema: batchd; Owner: -
--

CREATE FUNCTION batchd.worker_register(p_id uuid, p_hostname text, p_pid integer, p_version text, p_providers text[], p_lease_ms bigint) RETURNS TABLE(existed boolean, shares jsonb)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'batchd'
    AS $$
BEGIN
    INSERT INTO batchd.workers AS w (id, hostname, pid, version, providers)
    VALUES (p_id, p_hostname, p_pid, p_version, coalesce(p_providers, '{}'))
    ON CONFLICT (id) DO UPDATE
       SET hostname = excluded.hostname, pid = excluded.pid,
           version = excluded.version, providers = excluded.providers,
           heartbeat_at = now()
    RETURNING (w.xmax <> 0) INTO existed;   -- xmax is set when the row was updated
    SELECT coalesce(jsonb_object_agg(s.provider, s.n), '{}'::jsonb)
      INTO shares
      FROM (SELECT p.provider, count(*) AS n
              FROM batchd.workers AS w,
                   unnest(w.providers) AS p(provider)
             WHERE w.heartbeat_at > now() - make_interval(secs => p_lease_ms / 1000.0)
             GROUP BY p.provider) AS s;
    RETURN NEXT;
END
$$;

--
-- Name: FUNCTION worker_register(p_id uuid, p_hostname text, p_pid integer, p_version text, p_providers text[], p_lease_ms bigint); Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON FUNCTION batchd.worker_register(p_id uuid, p_hostname text, p_pid integer, p_version text, p_providers text[], p_lease_ms bigint) IS 'Insert or refresh a worker row; returns whether it existed and the live workers per provider.';

--
-- Name: api_tokens; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.api_tokens (
    id bigint NOT NULL,
    token_hash bytea NOT NULL,
    tenant text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_used_at timestamp with time zone,
    revoked boolean DEFAULT false NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT api_tokens_tenant_check CHECK (((btrim(tenant) <> ''::text) AND (char_length(tenant) <= 200))),
    CONSTRAINT api_tokens_token_hash_check CHECK ((octet_length(token_hash) = 32))
);

--
-- Name: TABLE api_tokens; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.api_tokens IS 'REST API bearer tokens, stored as SHA-256 hashes; each belongs to one tenant';

--
-- Name: api_tokens_id_seq; Type: SEQUENCE; Schema: batchd; Owner: -
--

ALTER TABLE batchd.api_tokens ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME batchd.api_tokens_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: batch_events; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.batch_events (
    id bigint NOT NULL,
    batch_id uuid NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    event text NOT NULL,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL
);

--
-- Name: TABLE batch_events; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.batch_events IS 'Audit trail of batch state changes, retries and releases';

--
-- Name: batch_events_id_seq; Type: SEQUENCE; Schema: batchd; Owner: -
--

ALTER TABLE batchd.batch_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME batchd.batch_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: batch_slots; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.batch_slots (
    batch_id uuid NOT NULL,
    route text NOT NULL,
    acquired_at timestamp with time zone DEFAULT now() NOT NULL,
    slot_order bigint NOT NULL
);

--
-- Name: TABLE batch_slots; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.batch_slots IS 'Batches that hold one of their route''s batch_concurrency slots (claim_items_shared is the only writer)';

--
-- Name: batch_slots_slot_order_seq; Type: SEQUENCE; Schema: batchd; Owner: -
--

ALTER TABLE batchd.batch_slots ALTER COLUMN slot_order ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME batchd.batch_slots_slot_order_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: items; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.items (
    id bigint NOT NULL,
    batch_id uuid NOT NULL,
    seq integer NOT NULL,
    route text NOT NULL,
    priority integer NOT NULL,
    payload jsonb NOT NULL,
    group_key text,
    status text DEFAULT 'queued'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer NOT NULL,
    run_after timestamp with time zone DEFAULT now() NOT NULL,
    worker_id uuid,
    provider text,
    http_status integer,
    result jsonb,
    error text,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    tries jsonb,
    group_slot boolean DEFAULT false NOT NULL,
    CONSTRAINT items_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT items_seq_check CHECK ((seq >= 0)),
    CONSTRAINT items_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])))
)
WITH (autovacuum_vacuum_scale_factor='0.02', autovacuum_analyze_scale_factor='0.02');

--
-- Name: TABLE items; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.items IS 'Work items, one external call each; a queue claimed with SKIP LOCKED';

--
-- Name: COLUMN items.seq; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.items.seq IS '0-based position of the item in the submitted array';

--
-- Name: COLUMN items.group_key; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.items.group_key IS 'Value of the batch''s group field in this payload, as text, or NULL';

--
-- Name: COLUMN items.worker_id; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.items.worker_id IS 'Worker that claimed the item last (kept after completion for the record)';

--
-- Name: COLUMN items.result; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.items.result IS 'Response body as JSON, or the body as a JSON string when it was not JSON';

--
-- Name: COLUMN items.tries; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.items.tries IS 'Per-provider try counts of the last run, e.g. {"primary": 3, "fallback": 1}, or NULL';

--
-- Name: COLUMN items.group_slot; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.items.group_slot IS 'True while the item, running, holds a slot of its group (counted in batchd.groups.running)';

--
-- Name: batch_status; Type: VIEW; Schema: batchd; Owner: -
--

CREATE VIEW batchd.batch_status AS
 SELECT b.id,
    b.tenant,
    b.name,
    b.route,
    b.status,
    b.priority,
    b.total,
    GREATEST(((((b.total - b.succeeded) - b.failed) - b.cancelled) - run.n), 0) AS queued,
    run.n AS running,
    b.succeeded,
    b.failed,
    b.cancelled,
    b.retries,
        CASE
            WHEN (b.total > 0) THEN round((((((b.succeeded + b.failed) + b.cancelled))::numeric * 100.0) / (b.total)::numeric), 2)
            ELSE 100.00
        END AS percent,
    b.created_at,
    b.started_at,
    b.finished_at,
    (EXTRACT(epoch FROM (COALESCE(b.finished_at, now()) - b.started_at)))::double precision AS duration_s,
    ev.event AS last_event,
    ev.at AS last_event_at
   FROM ((batchd.batches b
     CROSS JOIN LATERAL ( SELECT (count(*))::integer AS n
           FROM batchd.items i
          WHERE ((i.batch_id = b.id) AND (i.status = 'running'::text))) run)
     LEFT JOIN LATERAL ( SELECT e.event,
            e.at
           FROM batchd.batch_events e
          WHERE (e.batch_id = b.id)
          ORDER BY e.id DESC
         LIMIT 1) ev ON (true));

--
-- Name: VIEW batch_status; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON VIEW batchd.batch_status IS 'Operators: one row per batch with queued/running/finished counts, retries, percent, duration and the last event';

--
-- Name: groups; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.groups (
    route text NOT NULL,
    group_key text NOT NULL,
    running integer DEFAULT 0 NOT NULL,
    next_start_at timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    CONSTRAINT groups_running_check CHECK ((running >= 0))
)
WITH (fillfactor='70', autovacuum_vacuum_scale_factor='0.02', autovacuum_analyze_scale_factor='0.02');

--
-- Name: TABLE groups; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.groups IS 'Per-group claim state shared by all workers: items of the group running now, earliest next start';

--
-- Name: COLUMN groups.running; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.groups.running IS 'Items with status running and group_slot true in this group (see batchd.check_groups())';

--
-- Name: COLUMN groups.next_start_at; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.groups.next_start_at IS 'No item of the group may start before this (start spacing); -infinity when not spaced';

--
-- Name: items_id_seq; Type: SEQUENCE; Schema: batchd; Owner: -
--

ALTER TABLE batchd.items ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME batchd.items_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: routes; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.routes (
    name text NOT NULL,
    hook text,
    on_batch_done text,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT routes_hook_check CHECK ((hook ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$'::text)),
    CONSTRAINT routes_on_batch_done_check CHECK ((on_batch_done ~ '^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$'::text))
);

--
-- Name: TABLE routes; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.routes IS 'Routes served by batchd processes, with their SQL hooks (written by batchd.sync_routes at every start and reload)';

--
-- Name: COLUMN routes.hook; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.routes.hook IS 'Function called as hook(item batchd.items) for every recorded outcome of the route, or NULL';

--
-- Name: COLUMN routes.on_batch_done; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.routes.on_batch_done IS 'Function called as on_batch_done(batch batchd.batches) when a batch of the route ends, or NULL';

--
-- Name: schema_functions; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.schema_functions (
    file text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: schema_migrations; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: tenant_stats; Type: VIEW; Schema: batchd; Owner: -
--

CREATE VIEW batchd.tenant_stats AS
 SELECT b.tenant,
    (count(*))::integer AS batches,
    (count(*) FILTER (WHERE (b.status = ANY (ARRAY['pending'::text, 'processing'::text]))))::integer AS active_batches,
    COALESCE(sum(b.total), (0)::bigint) AS items,
    COALESCE(sum((((b.total - b.succeeded) - b.failed) - b.cancelled)) FILTER (WHERE (b.status = ANY (ARRAY['pending'::text, 'processing'::text, 'cancelled'::text]))), (0)::bigint) AS unfinished_items,
    COALESCE(sum(b.succeeded), (0)::bigint) AS succeeded,
    COALESCE(sum(b.failed), (0)::bigint) AS failed,
    COALESCE(sum(b.cancelled), (0)::bigint) AS cancelled,
    COALESCE(sum(b.retries), (0)::bigint) AS retries,
    min(b.created_at) FILTER (WHERE (b.status = ANY (ARRAY['pending'::text, 'processing'::text]))) AS oldest_active_at,
    max(b.created_at) AS last_submit_at
   FROM batchd.batches b
  GROUP BY b.tenant;

--
-- Name: VIEW tenant_stats; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON VIEW batchd.tenant_stats IS 'Operators: per tenant, batches (all, active), items (all, unfinished, succeeded, failed, cancelled), retries, oldest active and last submit';

--
-- Name: workers; Type: TABLE; Schema: batchd; Owner: -
--

CREATE TABLE batchd.workers (
    id uuid NOT NULL,
    hostname text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    heartbeat_at timestamp with time zone DEFAULT now() NOT NULL,
    inflight integer DEFAULT 0 NOT NULL,
    providers text[] DEFAULT '{}'::text[] NOT NULL
);

--
-- Name: TABLE workers; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON TABLE batchd.workers IS 'Live batchd processes; a heartbeat older than lease_timeout means dead';

--
-- Name: COLUMN workers.providers; Type: COMMENT; Schema: batchd; Owner: -
--

COMMENT ON COLUMN batchd.workers.providers IS 'Providers this worker calls; a provider''s rate is shared among its live workers';

--
-- Name: api_tokens api_tokens_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (id);

--
-- Name: api_tokens api_tokens_token_hash_key; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.api_tokens
    ADD CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash);

--
-- Name: batch_events batch_events_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.batch_events
    ADD CONSTRAINT batch_events_pkey PRIMARY KEY (id);

--
-- Name: batch_slots batch_slots_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.batch_slots
    ADD CONSTRAINT batch_slots_pkey PRIMARY KEY (batch_id);

--
-- Name: batches batches_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.batches
    ADD CONSTRAINT batches_pkey PRIMARY KEY (id);

--
-- Name: groups groups_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.groups
    ADD CONSTRAINT groups_pkey PRIMARY KEY (route, group_key);

--
-- Name: items items_batch_seq_key; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.items
    ADD CONSTRAINT items_batch_seq_key UNIQUE (batch_id, seq);

--
-- Name: items items_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.items
    ADD CONSTRAINT items_pkey PRIMARY KEY (id);

--
-- Name: routes routes_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.routes
    ADD CONSTRAINT routes_pkey PRIMARY KEY (name);

--
-- Name: schema_functions schema_functions_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.schema_functions
    ADD CONSTRAINT schema_functions_pkey PRIMARY KEY (file);

--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

--
-- Name: workers workers_pkey; Type: CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (id);

--
-- Name: batch_events_batch_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX batch_events_batch_idx ON batchd.batch_events USING btree (batch_id, id);

--
-- Name: batch_slots_route_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX batch_slots_route_idx ON batchd.batch_slots USING btree (route, slot_order);

--
-- Name: batches_active_route_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX batches_active_route_idx ON batchd.batches USING btree (route, priority DESC, created_at) WHERE (status = ANY (ARRAY['pending'::text, 'processing'::text]));

--
-- Name: batches_source_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX batches_source_idx ON batchd.batches USING btree (source, source_key) WHERE (source IS NOT NULL);

--
-- Name: batches_tenant_created_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX batches_tenant_created_idx ON batchd.batches USING btree (tenant, created_at DESC, id);

--
-- Name: batches_tenant_idempotency_key_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE UNIQUE INDEX batches_tenant_idempotency_key_idx ON batchd.batches USING btree (tenant, idempotency_key) WHERE (idempotency_key IS NOT NULL);

--
-- Name: items_claim_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX items_claim_idx ON batchd.items USING btree (priority DESC, id, run_after, route) WHERE (status = 'queued'::text);

--
-- Name: items_group_claim_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX items_group_claim_idx ON batchd.items USING btree (route COLLATE "C", group_key COLLATE "C", priority DESC, id, run_after) WHERE (status = 'queued'::text);

--
-- Name: items_group_slot_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX items_group_slot_idx ON batchd.items USING btree (route, group_key) WHERE ((status = 'running'::text) AND group_slot);

--
-- Name: items_running_worker_idx; Type: INDEX; Schema: batchd; Owner: -
--

CREATE INDEX items_running_worker_idx ON batchd.items USING btree (worker_id) WHERE (status = 'running'::text);

--
-- Name: batches batches_cancelled_finished; Type: TRIGGER; Schema: batchd; Owner: -
--

CREATE TRIGGER batches_cancelled_finished BEFORE UPDATE ON batchd.batches FOR EACH ROW WHEN (((new.status = 'cancelled'::text) AND (new.finished_at IS NULL) AND (((new.succeeded + new.failed) + new.cancelled) >= new.total))) EXECUTE FUNCTION batchd.batches_cancelled_finished();

--
-- Name: batches batches_job_on_done; Type: TRIGGER; Schema: batchd; Owner: -
--

CREATE TRIGGER batches_job_on_done AFTER UPDATE ON batchd.batches FOR EACH ROW WHEN (((old.finished_at IS NULL) AND (new.finished_at IS NOT NULL) AND (new.on_done IS NOT NULL) AND (new.status = ANY (ARRAY['completed'::text, 'completed_with_errors'::text, 'failed'::text, 'cancelled'::text])))) EXECUTE FUNCTION batchd.batches_job_on_done();

--
-- Name: batches batches_job_summary; Type: TRIGGER; Schema: batchd; Owner: -
--

CREATE TRIGGER batches_job_summary BEFORE UPDATE ON batchd.batches FOR EACH ROW WHEN (((old.finished_at IS NULL) AND (new.finished_at IS NOT NULL) AND (new.job IS NOT NULL) AND (new.status = ANY (ARRAY['completed'::text, 'completed_with_errors'::text, 'failed'::text, 'cancelled'::text])))) EXECUTE FUNCTION batchd.batches_job_summary();

--
-- Name: batches batches_notify_cancel; Type: TRIGGER; Schema: batchd; Owner: -
--

CREATE TRIGGER batches_notify_cancel AFTER UPDATE OF status ON batchd.batches FOR EACH ROW WHEN (((new.status = 'cancelled'::text) AND (old.status IS DISTINCT FROM 'cancelled'::text))) EXECUTE FUNCTION batchd.batches_notify_cancel();

--
-- Name: batches batches_on_done; Type: TRIGGER; Schema: batchd; Owner: -
--

CREATE TRIGGER batches_on_done AFTER UPDATE ON batchd.batches FOR EACH ROW WHEN (((old.finished_at IS NULL) AND (new.finished_at IS NOT NULL) AND (new.status = ANY (ARRAY['completed'::text, 'completed_with_errors'::text, 'failed'::text, 'cancelled'::text])))) EXECUTE FUNCTION batchd.batches_on_done();

--
-- Name: items items_clear_group_slot; Type: TRIGGER; Schema: batchd; Owner: -
--

CREATE TRIGGER items_clear_group_slot BEFORE UPDATE ON batchd.items FOR EACH ROW WHEN ((new.group_slot AND (new.status <> 'running'::text))) EXECUTE FUNCTION batchd.items_clear_group_slot();

--
-- Name: items items_requeue_cancelled; Type: TRIGGER; Schema: batchd; Owner: -
--

CREATE TRIGGER items_requeue_cancelled BEFORE UPDATE OF status ON batchd.items FOR EACH ROW WHEN (((old.status = 'running'::text) AND (new.status = 'queued'::text))) EXECUTE FUNCTION batchd.items_requeue_cancelled();

--
-- Name: batch_events batch_events_batch_id_fkey; Type: FK CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.batch_events
    ADD CONSTRAINT batch_events_batch_id_fkey FOREIGN KEY (batch_id) REFERENCES batchd.batches(id) ON DELETE CASCADE;

--
-- Name: items items_batch_id_fkey; Type: FK CONSTRAINT; Schema: batchd; Owner: -
--

ALTER TABLE ONLY batchd.items
    ADD CONSTRAINT items_batch_id_fkey FOREIGN KEY (batch_id) REFERENCES batchd.batches(id) ON DELETE CASCADE;

--
-- PostgreSQL database dump complete
--
