-- quote-fanout: quote jobs expanded into one item per vehicle x term x
-- mileage; the result hook and the batch callback. Applied after
-- `batchd migrate` and before batchd starts.

CREATE SCHEMA quotes;

-- A customer's request: every combination of these vehicles, terms and
-- annual mileages, with one deposit.
CREATE TABLE quotes.quote_jobs (
    id           serial      PRIMARY KEY,
    customer     text        NOT NULL,
    vehicles     text[]      NOT NULL CHECK (cardinality(vehicles) > 0),
    terms        int[]       NOT NULL CHECK (cardinality(terms) > 0),
    mileages     int[]       NOT NULL CHECK (cardinality(mileages) > 0),
    deposit      numeric(10,2) NOT NULL DEFAULT 0,
    status       text        NOT NULL DEFAULT 'new'
                 CHECK (status IN ('new', 'submitted', 'completed', 'failed', 'cancelled')),
    batch_id     uuid        UNIQUE,
    items        int,
    succeeded    int,
    failed       int,
    duration_s   numeric(10,1),
    submitted_at timestamptz,
    completed_at timestamptz
);

CREATE TABLE quotes.quotes (
    job_id         int         NOT NULL REFERENCES quotes.quote_jobs,
    vehicle        text        NOT NULL,
    term_months    int         NOT NULL,
    annual_mileage int         NOT NULL,
    monthly_price  numeric(10,2) NOT NULL,
    quoted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, vehicle, term_months, annual_mileage)
);

CREATE TABLE quotes.quote_errors (
    job_id         int         NOT NULL REFERENCES quotes.quote_jobs,
    vehicle        text        NOT NULL,
    term_months    int         NOT NULL,
    annual_mileage int         NOT NULL,
    http_status    int,
    error          text,
    PRIMARY KEY (job_id, vehicle, term_months, annual_mileage)
);

-- What the simulated quote API prices from: its vehicle catalogue. The
-- mock provider answers an echo of the request (the body under "body");
-- quotes.answer() prices it from this table. Not used against the real API.
CREATE TABLE quotes.sandbox_vehicles (
    code       text          PRIMARY KEY,
    list_price numeric(10,2) NOT NULL
);

-- The API's answer: {"monthly_price": 412.50, "currency": "EUR"}.
CREATE FUNCTION quotes.answer(result jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = quotes, pg_catalog
AS $$
    SELECT CASE
               WHEN result ? 'path' AND result ? 'n' AND NOT result ? 'monthly_price'
                   THEN (SELECT jsonb_build_object(
                                    'monthly_price',
                                    -- (price - deposit - residual value) over the term, plus
                                    -- interest; the residual falls with term and mileage
                                    round((v.list_price - (b ->> 'deposit')::numeric
                                           - v.list_price * greatest(0.25, 0.62
                                               - 0.06 * (b ->> 'term_months')::int / 12
                                               - (b ->> 'annual_mileage')::int / 100000.0))
                                          * (1 + 0.045 * (b ->> 'term_months')::int / 12)
                                          / (b ->> 'term_months')::int, 2),
                                    'currency', 'EUR')
                           FROM sandbox_vehicles AS v, (SELECT result -> 'body' AS b) AS r
                          WHERE v.code = b ->> 'vehicle')
               ELSE result
           END
$$;

-- Expand a job into one item per vehicle x term x mileage, submit it as one
-- batch, and mark the job submitted.
CREATE FUNCTION quotes.submit_job(p_job int) RETURNS uuid
LANGUAGE plpgsql
SET search_path = quotes, pg_catalog
AS $$
DECLARE
    v_job   quote_jobs;
    v_items jsonb;
    v_batch uuid;
BEGIN
    SELECT * INTO v_job FROM quote_jobs WHERE id = p_job AND status = 'new' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no new quote job %', p_job;
    END IF;
    SELECT jsonb_agg(jsonb_build_object('job_id', v_job.id, 'vehicle', v.vehicle,
                                        'term', t.term, 'mileage', m.mileage,
                                        'deposit', v_job.deposit)
                     ORDER BY v.ord, t.ord, m.ord)
      INTO v_items
      FROM unnest(v_job.vehicles) WITH ORDINALITY AS v(vehicle, ord),
           unnest(v_job.terms) WITH ORDINALITY AS t(term, ord),
           unnest(v_job.mileages) WITH ORDINALITY AS m(mileage, ord);
    v_batch := batchd.submit_batch('dealer', 'quotes', v_items,
                                   jsonb_build_object('name', 'quote job ' || v_job.id,
                                                      'metadata', jsonb_build_object('job_id', v_job.id)));
    UPDATE quote_jobs
       SET status = 'submitted', batch_id = v_batch, items = jsonb_array_length(v_items),
           submitted_at = now()
     WHERE id = p_job;
    RETURN v_batch;
END
$$;

-- The result hook: a quote, or the reason there is none.
CREATE FUNCTION quotes.on_quote(item batchd.items) RETURNS void
LANGUAGE plpgsql
SET search_path = quotes, pg_catalog
AS $$
DECLARE
    v_ans jsonb;
    p     jsonb := item.payload;
BEGIN
    IF item.status = 'succeeded' THEN
        v_ans := answer(item.result);
        IF v_ans ->> 'monthly_price' IS NULL THEN
            RAISE EXCEPTION 'no price in the answer for %', p ->> 'vehicle';
        END IF;
        INSERT INTO quotes (job_id, vehicle, term_months, annual_mileage, monthly_price)
        VALUES ((p ->> 'job_id')::int, p ->> 'vehicle', (p ->> 'term')::int,
                (p ->> 'mileage')::int, (v_ans ->> 'monthly_price')::numeric)
        ON CONFLICT (job_id, vehicle, term_months, annual_mileage) DO UPDATE
           SET monthly_price = excluded.monthly_price, quoted_at = now();
    ELSE
        INSERT INTO quote_errors (job_id, vehicle, term_months, annual_mileage, http_status, error)
        VALUES ((p ->> 'job_id')::int, p ->> 'vehicle', (p ->> 'term')::int,
                (p ->> 'mileage')::int, item.http_status, left(item.error, 300))
        ON CONFLICT (job_id, vehicle, term_months, annual_mileage) DO UPDATE
           SET http_status = excluded.http_status, error = excluded.error;
    END IF;
END
$$;

-- The batch callback: the job is done -- completed when at least one quote
-- came back (partial failures are counted, not fatal), failed when none did.
CREATE FUNCTION quotes.on_job_done(batch batchd.batches) RETURNS void
LANGUAGE sql
SET search_path = quotes, pg_catalog
AS $$
    UPDATE quote_jobs
       SET status = CASE WHEN batch.status = 'cancelled' THEN 'cancelled'
                         WHEN batch.succeeded > 0 THEN 'completed' ELSE 'failed' END,
           succeeded = batch.succeeded, failed = batch.failed,
           duration_s = round(extract(epoch FROM batch.finished_at - batch.created_at)::numeric, 1),
           completed_at = batch.finished_at
     WHERE batch_id = batch.id;
$$;
