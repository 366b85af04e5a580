-- registry-verification: domain tables, the nightly selection, the result
-- hook and the batch callback. Applied after `batchd migrate` (it uses the
-- batchd schema's types) and before batchd starts (batchd checks at start
-- that the functions named in batchd.ini exist).

CREATE SCHEMA registry;

-- The fleet. A truck is due for verification when it was never verified or
-- not for stale_days (7) days.
CREATE TABLE registry.trucks (
    id                serial      PRIMARY KEY,
    plate             text        NOT NULL UNIQUE,
    vin               text        NOT NULL UNIQUE,
    owner_name        text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'verified', 'flagged', 'unknown')),
    verified_at       timestamptz,            -- last answer from the registry
    checked_at        timestamptz,            -- last attempt, answered or not
    verified_by       text,                   -- provider that answered
    insurance_expires date,
    fitness_expires   date,
    blacklisted       boolean,
    registry_owner    text,
    last_error        text
);

-- Compliance flags raised from the registry's answers; one open flag per
-- (truck, kind), resolved when a later answer no longer shows it.
CREATE TABLE registry.compliance_flags (
    id          bigserial   PRIMARY KEY,
    truck_id    int         NOT NULL REFERENCES registry.trucks,
    kind        text        NOT NULL CHECK (kind IN ('expired_insurance', 'expired_fitness',
                                                     'blacklisted', 'owner_mismatch')),
    severity    text        NOT NULL CHECK (severity IN ('warning', 'severe')),
    detail      jsonb       NOT NULL DEFAULT '{}',
    batch_id    uuid,
    raised_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE UNIQUE INDEX compliance_flags_open_key
    ON registry.compliance_flags (truck_id, kind) WHERE resolved_at IS NULL;

-- Tickets for the compliance team: one open ticket per truck with a severe flag.
CREATE TABLE registry.tickets (
    id        bigserial   PRIMARY KEY,
    truck_id  int         NOT NULL REFERENCES registry.trucks,
    reason    text        NOT NULL,
    flags     text[]      NOT NULL,
    batch_id  uuid,
    status    text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    opened_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tickets_open_key ON registry.tickets (truck_id) WHERE status = 'open';

-- One row per nightly run (per batch end; a retried batch updates its row).
CREATE TABLE registry.runs (
    batch_id       uuid        PRIMARY KEY,
    name           text,
    status         text        NOT NULL,
    total          int         NOT NULL,
    succeeded      int         NOT NULL,
    failed         int         NOT NULL,
    success_rate   numeric(5,1),
    flags_raised   int         NOT NULL,
    tickets_opened int         NOT NULL,
    by_provider    jsonb       NOT NULL,
    seconds        numeric(10,1),
    finished_at    timestamptz NOT NULL
);

-- Alerts from the runbook, raised by the batch callback at the end of a run
-- and by registry.check_running() (the nightly timer or cron calls it every
-- few minutes) while one runs. One alert of a kind per run: a retried batch
-- that still breaks a threshold does not raise it twice. The thresholds are
-- the rows of registry.alert_thresholds. Breaker state is not in the
-- database: "breaker open longer than 30 minutes" is a Prometheus rule
-- (contrib/prometheus/batchd-alerts.yml), beside the same runbook's others.
CREATE TABLE registry.alerts (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    kind     text        NOT NULL,
    message  text        NOT NULL,
    batch_id uuid
);
CREATE UNIQUE INDEX alerts_once_per_run ON registry.alerts (batch_id, kind);

CREATE TABLE registry.alert_thresholds (
    kind        text    PRIMARY KEY,
    threshold   numeric NOT NULL,
    description text    NOT NULL
);
INSERT INTO registry.alert_thresholds VALUES
    ('low_success_rate',  90, 'fewer than this % of the due trucks verified'),
    ('nothing_processed',  0, 'a run that verified or failed no truck at all'),
    ('high_failure_rate', 20, 'more than this % of the run''s trucks failed'),
    ('long_run',          60, 'a run still going, or that took, longer than this many minutes'),
    ('many_flagged',      20, 'more than this % of the trucks checked were flagged'),
    ('many_tickets',      10, 'more than this % of the trucks checked got a ticket');

-- What the simulated registry knows, by VIN (seed data). The mock provider
-- answers every request with an echo of it ({"id": "<vin>", "path": ...});
-- registry.answer() turns that echo into the registry's answer from this
-- table. Against the real registry the table is not used.
CREATE TABLE registry.sandbox (
    vin    text  PRIMARY KEY,
    answer jsonb NOT NULL
);

-- The registry's answer: {"vin", "owner", "insurance_valid_until",
-- "fitness_valid_until", "blacklisted", "blacklist_reason"}.
CREATE FUNCTION registry.answer(result jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = registry, pg_catalog
AS $$
    SELECT CASE
               WHEN result ? 'path' AND result ? 'n' AND NOT result ? 'vin'   -- the mock's echo
                   THEN (SELECT s.answer FROM sandbox AS s WHERE s.vin = result ->> 'id')
               ELSE result
           END
$$;

-- The nightly selection, submitted by the timer (see README):
--   SELECT registry.submit_nightly(7);
-- One batch of every truck never verified or not verified for stale_days;
-- NULL (nothing submitted) when none is due.
CREATE FUNCTION registry.submit_nightly(stale_days int DEFAULT 7) RETURNS uuid
LANGUAGE sql VOLATILE
SET search_path = registry, pg_catalog
AS $$
    SELECT batchd.submit_batch(
               'fleet', 'registry',
               jsonb_agg(jsonb_build_object('truck_id', t.id, 'vin', t.vin, 'plate', t.plate)
                         ORDER BY t.id),
               jsonb_build_object('name', 'nightly verification ' || current_date,
                                  'metadata', jsonb_build_object('stale_days', stale_days)))
      FROM trucks AS t
     WHERE t.verified_at IS NULL
        OR t.verified_at < now() - make_interval(days => stale_days)
    HAVING count(*) > 0
$$;

-- Owner names compare without case, punctuation or company suffixes.
CREATE FUNCTION registry.norm_owner(name text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT btrim(regexp_replace(regexp_replace(lower(coalesce(name, '')),
                                               '[^a-z0-9 ]', ' ', 'g'),
                                '\m(pvt|private|ltd|limited|llp|inc|co)\M|\s+', ' ', 'g'))
$$;

-- The result hook: called by batchd for every recorded item of route
-- "registry", succeeded or failed, in the transaction that records it.
-- Raising fails this item alone (error "hook failed: ...").
CREATE FUNCTION registry.on_result(item batchd.items) RETURNS void
LANGUAGE plpgsql
SET search_path = registry, pg_catalog
AS $$
DECLARE
    v_truck   trucks;
    v_ans     jsonb;
    v_flags   text[] := '{}';
    v_severe  text[] := '{}';
    v_new     jsonb := '[]';
    v_id      int := (item.payload ->> 'truck_id')::int;
BEGIN
    IF item.status <> 'succeeded' THEN
        -- no answer: the truck stays due; a VIN the registry does not know
        -- (404) is marked for the fleet team
        UPDATE trucks
           SET checked_at = now(), last_error = item.error,
               status = CASE WHEN item.http_status = 404 THEN 'unknown' ELSE status END
         WHERE id = v_id;
        RETURN;
    END IF;

    v_ans := answer(item.result);
    IF v_ans IS NULL
       OR NOT v_ans ?& ARRAY['vin', 'owner', 'insurance_valid_until', 'fitness_valid_until',
                             'blacklisted'] THEN
        RAISE EXCEPTION 'registry answer for % is incomplete: %', item.payload ->> 'vin',
                        left(coalesce(v_ans::text, item.result::text), 200);
    END IF;
    IF v_ans ->> 'vin' <> item.payload ->> 'vin' THEN
        RAISE EXCEPTION 'registry answered for VIN % instead of %', v_ans ->> 'vin',
                        item.payload ->> 'vin';
    END IF;

    UPDATE trucks
       SET verified_at = now(), checked_at = now(), verified_by = item.provider,
           insurance_expires = (v_ans ->> 'insurance_valid_until')::date,
           fitness_expires = (v_ans ->> 'fitness_valid_until')::date,
           blacklisted = (v_ans ->> 'blacklisted')::boolean,
           registry_owner = v_ans ->> 'owner',
           last_error = NULL
     WHERE id = v_id
    RETURNING * INTO v_truck;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no truck %', v_id;
    END IF;

    -- the flags this answer shows
    IF v_truck.insurance_expires < current_date THEN
        v_new := v_new || jsonb_build_object('kind', 'expired_insurance', 'severity', 'severe',
            'detail', jsonb_build_object('expired_on', v_truck.insurance_expires));
    END IF;
    IF v_truck.fitness_expires < current_date THEN
        v_new := v_new || jsonb_build_object('kind', 'expired_fitness', 'severity', 'severe',
            'detail', jsonb_build_object('expired_on', v_truck.fitness_expires));
    END IF;
    IF v_truck.blacklisted THEN
        v_new := v_new || jsonb_build_object('kind', 'blacklisted', 'severity', 'severe',
            'detail', jsonb_build_object('reason', v_ans ->> 'blacklist_reason'));
    END IF;
    IF norm_owner(v_truck.registry_owner) <> norm_owner(v_truck.owner_name) THEN
        v_new := v_new || jsonb_build_object('kind', 'owner_mismatch', 'severity', 'warning',
            'detail', jsonb_build_object('ours', v_truck.owner_name,
                                         'registry', v_truck.registry_owner));
    END IF;
    SELECT coalesce(array_agg(f.kind ORDER BY f.kind), '{}'),
           coalesce(array_agg(f.kind ORDER BY f.kind) FILTER (WHERE f.severity = 'severe'), '{}')
      INTO v_flags, v_severe
      FROM jsonb_to_recordset(v_new) AS f(kind text, severity text);

    -- resolve what is gone, raise what is new
    UPDATE compliance_flags
       SET resolved_at = now()
     WHERE truck_id = v_id AND resolved_at IS NULL AND kind <> ALL (v_flags);
    INSERT INTO compliance_flags (truck_id, kind, severity, detail, batch_id)
    SELECT v_id, f.kind, f.severity, f.detail, item.batch_id
      FROM jsonb_to_recordset(v_new) AS f(kind text, severity text, detail jsonb)
    ON CONFLICT (truck_id, kind) WHERE resolved_at IS NULL DO NOTHING;

    UPDATE trucks
       SET status = CASE WHEN cardinality(v_flags) > 0 THEN 'flagged' ELSE 'verified' END
     WHERE id = v_id;

    IF cardinality(v_severe) > 0 THEN
        INSERT INTO tickets (truck_id, reason, flags, batch_id)
        VALUES (v_id, format('truck %s (%s): %s', v_truck.plate, v_truck.vin,
                             array_to_string(v_severe, ', ')),
                v_severe, item.batch_id)
        ON CONFLICT (truck_id) WHERE status = 'open' DO NOTHING;
    END IF;
END
$$;

-- The batch callback: once per end of a nightly run.
CREATE FUNCTION registry.on_run_done(batch batchd.batches) RETURNS void
LANGUAGE plpgsql
SET search_path = registry, pg_catalog
AS $$
DECLARE
    v_rate numeric;
BEGIN
    v_rate := round(100.0 * batch.succeeded / nullif(batch.total - batch.cancelled, 0), 1);
    INSERT INTO runs AS r (batch_id, name, status, total, succeeded, failed, success_rate,
                           flags_raised, tickets_opened, by_provider, seconds, finished_at)
    VALUES (batch.id, batch.name, batch.status, batch.total, batch.succeeded, batch.failed,
            v_rate,
            (SELECT count(*) FROM compliance_flags AS f WHERE f.batch_id = batch.id),
            (SELECT count(*) FROM tickets AS t WHERE t.batch_id = batch.id),
            (SELECT coalesce(jsonb_object_agg(p.provider, p.n), '{}')
               FROM (SELECT coalesce(i.provider, '-') AS provider, count(*) AS n
                       FROM batchd.items AS i
                      WHERE i.batch_id = batch.id AND i.status = 'succeeded'
                      GROUP BY 1) AS p),
            round(extract(epoch FROM batch.finished_at
                                     - coalesce(batch.started_at, batch.created_at))::numeric, 1),
            batch.finished_at)
    ON CONFLICT (batch_id) DO UPDATE
       SET status = excluded.status, succeeded = excluded.succeeded, failed = excluded.failed,
           success_rate = excluded.success_rate, flags_raised = excluded.flags_raised,
           tickets_opened = excluded.tickets_opened, by_provider = excluded.by_provider,
           seconds = excluded.seconds, finished_at = excluded.finished_at;
    PERFORM registry.raise_run_alerts(batch.id);
END
$$;

-- Raise the alerts that one finished run (its registry.runs row) breaks;
-- returns how many were new.
CREATE FUNCTION registry.raise_run_alerts(p_batch uuid) RETURNS int
LANGUAGE plpgsql
SET search_path = registry, pg_catalog
AS $$
DECLARE
    r         runs;
    v_name    text;
    v_done    int;      -- trucks checked: succeeded + failed
    v_flagged int;      -- trucks of this run with an open flag
    v_n       int := 0;
    t         record;
    v_pct     numeric;
    v_msg     text;
BEGIN
    SELECT * INTO r FROM runs WHERE batch_id = p_batch;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    v_name := coalesce(r.name, r.batch_id::text);
    v_done := r.succeeded + r.failed;
    SELECT count(DISTINCT f.truck_id) INTO v_flagged
      FROM compliance_flags AS f WHERE f.batch_id = p_batch;
    FOR t IN SELECT * FROM alert_thresholds LOOP
        v_msg := NULL;
        CASE t.kind
        WHEN 'low_success_rate' THEN
            IF coalesce(r.success_rate, 0) < t.threshold THEN
                v_msg := format('%s: %s%% of %s trucks verified (threshold %s%%)', v_name,
                                coalesce(r.success_rate, 0), r.total, t.threshold);
            END IF;
        WHEN 'nothing_processed' THEN
            IF v_done <= t.threshold THEN
                v_msg := format('%s: no truck was checked (%s submitted)', v_name, r.total);
            END IF;
        WHEN 'high_failure_rate' THEN
            v_pct := round(100.0 * r.failed / nullif(v_done, 0), 1);
            IF v_pct > t.threshold THEN
                v_msg := format('%s: %s%% of %s checked trucks failed (threshold %s%%)',
                                v_name, v_pct, v_done, t.threshold);
            END IF;
        WHEN 'long_run' THEN
            IF r.seconds > t.threshold * 60 THEN
                v_msg := format('%s: the run took %s min (threshold %s min)', v_name,
                                round(r.seconds / 60, 1), t.threshold);
            END IF;
        WHEN 'many_flagged' THEN
            v_pct := round(100.0 * v_flagged / nullif(v_done, 0), 1);
            IF v_pct > t.threshold THEN
                v_msg := format('%s: %s%% of %s checked trucks flagged (threshold %s%%)',
                                v_name, v_pct, v_done, t.threshold);
            END IF;
        WHEN 'many_tickets' THEN
            v_pct := round(100.0 * r.tickets_opened / nullif(v_done, 0), 1);
            IF v_pct > t.threshold THEN
                v_msg := format('%s: %s%% of %s checked trucks got a ticket (threshold %s%%)',
                                v_name, v_pct, v_done, t.threshold);
            END IF;
        ELSE
            NULL;
        END CASE;
        IF v_msg IS NOT NULL THEN
            INSERT INTO alerts (kind, message, batch_id) VALUES (t.kind, v_msg, p_batch)
            ON CONFLICT (batch_id, kind) DO NOTHING;
            IF FOUND THEN
                v_n := v_n + 1;
            END IF;
        END IF;
    END LOOP;
    RETURN v_n;
END
$$;

-- While a run goes on: a registry run processing for longer than the
-- long_run threshold raises its alert now, not at its end. Returns how many
-- alerts were raised. Call it every few minutes (timer, cron, pg_cron).
CREATE FUNCTION registry.check_running() RETURNS int
LANGUAGE sql
SET search_path = registry, pg_catalog
AS $$
    WITH late AS (
        INSERT INTO alerts (kind, message, batch_id)
        SELECT 'long_run',
               format('%s: still running after %s min (threshold %s min; %s of %s done)',
                      coalesce(b.name, b.id::text),
                      round(extract(epoch FROM now() - coalesce(b.started_at, b.created_at)) / 60),
                      t.threshold, b.succeeded + b.failed + b.cancelled, b.total),
               b.id
          FROM batchd.batches AS b, alert_thresholds AS t
         WHERE t.kind = 'long_run' AND b.route = 'registry'
           AND b.status IN ('pending', 'processing')
           AND now() - coalesce(b.started_at, b.created_at) > t.threshold * interval '1 minute'
        ON CONFLICT (batch_id, kind) DO NOTHING
        RETURNING 1)
    SELECT count(*)::int FROM late;
$$;
