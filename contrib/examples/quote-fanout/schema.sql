-- quote-fanout: a quote request is a row of quotes.quote_jobs; batchd's
-- intake (the trigger below) submits it, in the inserting transaction, as one
-- job whose lists fan out into one item per vehicle x term x mileage; the
-- result hook stores each quote; the job's on_done closes the row with its
-- counts, per job and per vehicle. Applied after `batchd migrate` and before
-- batchd starts.

CREATE SCHEMA quotes;

-- A customer's request: every combination of these vehicles, terms and
-- annual mileages, with one deposit. Inserting the row submits it (the
-- trigger quote_jobs_intake); batch_id is set by the intake, the rest by
-- quotes.on_job_done when all its quotes have ended.
CREATE TABLE quotes.quote_jobs (
    id           serial      PRIMARY KEY,
    customer     text        NOT NULL,
    vehicles     text[]      NOT NULL CHECK (cardinality(vehicles) > 0),
    terms        int[]       NOT NULL CHECK (cardinality(terms) > 0),
    mileages     int[]       NOT NULL CHECK (cardinality(mileages) > 0),
    deposit      numeric(10,2) NOT NULL DEFAULT 0,
    status       text        NOT NULL DEFAULT 'submitted'
                 CHECK (status IN ('submitted', 'completed', 'failed', 'cancelled')),
    batch_id     uuid        UNIQUE,
    items        int,
    succeeded    int,
    failed       int,
    by_vehicle   jsonb,      -- {"VW-GOLF-8": {"total", "succeeded", "failed", ...}, ...}
    duration_s   numeric(10,1),
    submitted_at timestamptz NOT NULL DEFAULT now(),
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

-- The job of a request: its lists under the names each item carries (the
-- provider's body template uses {vehicle}, {term}, {mileage}); batchd.intake
-- fans them out into one item per combination.
CREATE FUNCTION quotes.job_of(j quotes.quote_jobs) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = quotes, pg_catalog
AS $$
    SELECT jsonb_build_object('job_id', j.id, 'vehicle', to_jsonb(j.vehicles),
                              'term', to_jsonb(j.terms), 'mileage', to_jsonb(j.mileages),
                              'deposit', j.deposit)
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

-- The job's on_done: all its quotes have ended -- completed when at least
-- one came back (partial failures are counted, not fatal), failed when none
-- did. batch.summary holds the counts per job and per vehicle (the intake's
-- group); batch.source_key is the row's id.
CREATE FUNCTION quotes.on_job_done(batch batchd.batches) RETURNS void
LANGUAGE sql
SET search_path = quotes, pg_catalog
AS $$
    UPDATE quote_jobs
       SET status = CASE WHEN batch.status = 'cancelled' THEN 'cancelled'
                         WHEN batch.succeeded > 0 THEN 'completed' ELSE 'failed' END,
           items = (batch.summary ->> 'total')::int,
           succeeded = (batch.summary ->> 'succeeded')::int,
           failed = (batch.summary ->> 'failed')::int,
           by_vehicle = batch.summary -> 'groups',
           duration_s = round(extract(epoch FROM batch.finished_at - batch.created_at)::numeric, 1),
           completed_at = batch.finished_at
     WHERE id = batch.source_key::int;
$$;

-- Intake: every inserted request is submitted as one job, in the inserting
-- transaction (a rolled-back INSERT submits nothing), and its commit wakes
-- batchd. The job is quotes.job_of(row); its lists fan out in this order
-- (vehicle slowest), grouped per vehicle in the summary; the batch id goes
-- to batch_id; quotes.on_job_done runs when all its items have ended.
CREATE TRIGGER quote_jobs_intake
    AFTER INSERT ON quotes.quote_jobs
    FOR EACH ROW EXECUTE FUNCTION batchd.intake('quotes', '{
        "tenant": "dealer",
        "job": "quotes.job_of",
        "fanout": ["vehicle", "term", "mileage"],
        "group": "vehicle",
        "batch_column": "batch_id",
        "on_done": "quotes.on_job_done"
    }');
