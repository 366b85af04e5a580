-- activity-batches: domain tables, the result hook and the batch callback.
-- Applied after `batchd migrate` and before batchd starts.

CREATE SCHEMA activity;

-- Each tenant's shipments (activities). Activity ids are the tenant's own:
-- two tenants may use the same id for different shipments.
CREATE TABLE activity.activities (
    tenant      text    NOT NULL,
    activity_id text    NOT NULL,
    mode        text    NOT NULL CHECK (mode IN ('road', 'rail', 'sea', 'air')),
    distance_km numeric NOT NULL,
    weight_t    numeric NOT NULL,
    PRIMARY KEY (tenant, activity_id)
);

-- The computed emissions, per tenant and activity (the hook's output).
CREATE TABLE activity.emissions (
    tenant      text        NOT NULL,
    activity_id text        NOT NULL,
    co2e_kg     numeric(12,1) NOT NULL,
    factor      numeric     NOT NULL,   -- g CO2e per tonne-km, from the API
    batch_id    uuid        NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, activity_id),
    FOREIGN KEY (tenant, activity_id) REFERENCES activity.activities
);

-- One row per batch end (the batch callback).
CREATE TABLE activity.batch_log (
    id        bigserial   PRIMARY KEY,
    batch_id  uuid        NOT NULL,
    tenant    text        NOT NULL,
    name      text,
    status    text        NOT NULL,
    total     int         NOT NULL,
    succeeded int         NOT NULL,
    failed    int         NOT NULL,
    cancelled int         NOT NULL,
    co2e_kg   numeric(12,1),
    ended_at  timestamptz NOT NULL DEFAULT now()
);

-- What the simulated footprint API knows: its emission factor per transport
-- mode (g CO2e per tonne-km), and which activities it has received from the
-- tenants' systems. The mock provider answers an echo of the request
-- ({"id": "<activity id>", ...}); activity.answer() builds the API's answer
-- from these tables. Against the real API they are not used.
CREATE TABLE activity.sandbox_factors (
    mode   text    PRIMARY KEY,
    factor numeric NOT NULL
);
INSERT INTO activity.sandbox_factors VALUES
    ('road', 62), ('rail', 22), ('sea', 8), ('air', 602);

-- The API's answer: {"activity_id", "mode", "distance_km", "weight_t",
-- "factor_g_per_tkm"}; the hook computes the emissions from it.
CREATE FUNCTION activity.answer(result jsonb, p_tenant text) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = activity, pg_catalog
AS $$
    SELECT CASE
               WHEN result ? 'path' AND result ? 'n'      -- the mock's echo
                   THEN (SELECT jsonb_build_object('activity_id', a.activity_id, 'mode', a.mode,
                                                   'distance_km', a.distance_km,
                                                   'weight_t', a.weight_t,
                                                   'factor_g_per_tkm', f.factor)
                           FROM activities AS a JOIN sandbox_factors AS f USING (mode)
                          WHERE a.tenant = p_tenant AND a.activity_id = result ->> 'id')
               ELSE result
           END
$$;

-- The result hook. The tenant is the batch's, i.e. the one whose token
-- submitted it -- never taken from the payload.
CREATE FUNCTION activity.on_footprint(item batchd.items) RETURNS void
LANGUAGE plpgsql
SET search_path = activity, pg_catalog
AS $$
DECLARE
    v_tenant text;
    v_ans    jsonb;
BEGIN
    IF item.status <> 'succeeded' THEN
        RETURN;                 -- the error stays on the item (GET .../items)
    END IF;
    SELECT b.tenant INTO v_tenant FROM batchd.batches AS b WHERE b.id = item.batch_id;
    v_ans := answer(item.result, v_tenant);
    IF v_ans IS NULL OR v_ans ->> 'factor_g_per_tkm' IS NULL THEN
        RAISE EXCEPTION 'no footprint for activity % of %', item.payload ->> 'activity_id', v_tenant;
    END IF;
    INSERT INTO emissions AS e (tenant, activity_id, co2e_kg, factor, batch_id)
    VALUES (v_tenant, item.payload ->> 'activity_id',
            (v_ans ->> 'factor_g_per_tkm')::numeric * (v_ans ->> 'distance_km')::numeric
                * (v_ans ->> 'weight_t')::numeric / 1000,
            (v_ans ->> 'factor_g_per_tkm')::numeric, item.batch_id)
    ON CONFLICT (tenant, activity_id) DO UPDATE
       SET co2e_kg = excluded.co2e_kg, factor = excluded.factor,
           batch_id = excluded.batch_id, computed_at = now();
END
$$;

CREATE FUNCTION activity.on_batch_done(batch batchd.batches) RETURNS void
LANGUAGE sql
SET search_path = activity, pg_catalog
AS $$
    INSERT INTO batch_log (batch_id, tenant, name, status, total, succeeded, failed, cancelled,
                           co2e_kg)
    VALUES (batch.id, batch.tenant, batch.name, batch.status, batch.total, batch.succeeded,
            batch.failed, batch.cancelled,
            (SELECT sum(e.co2e_kg) FROM emissions AS e WHERE e.batch_id = batch.id));
$$;
