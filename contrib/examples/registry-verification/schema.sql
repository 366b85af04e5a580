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

CREATE TABLE registry.alerts (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    kind     text        NOT NULL,
    message  text        NOT NULL,
    batch_id uuid
);

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
    IF v_rate IS NULL OR v_rate < 90 THEN
        INSERT INTO alerts (kind, message, batch_id)
        VALUES ('low_success_rate',
                format('%s: %s%% of %s trucks verified (threshold 90%%)',
                       coalesce(batch.name, batch.id::text), coalesce(v_rate, 0),
                       batch.total - batch.cancelled),
                batch.id);
    END IF;
END
$$;
