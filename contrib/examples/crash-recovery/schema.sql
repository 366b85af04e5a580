-- crash-recovery: invoices rendered to PDF by an API; domain tables, the
-- result hook and the batch callback. Applied after `batchd migrate` and
-- before batchd starts.

CREATE SCHEMA docs;

CREATE TABLE docs.invoices (
    id          int         PRIMARY KEY,
    customer    text        NOT NULL,
    amount      numeric(10,2) NOT NULL,
    rendered_at timestamptz
);

-- One document per invoice. A plain INSERT in the hook: were an invoice
-- ever recorded twice, the primary key would fail the hook loudly.
CREATE TABLE docs.documents (
    invoice_id  int         PRIMARY KEY REFERENCES docs.invoices,
    url         text        NOT NULL,
    pages       int         NOT NULL,
    item_id     bigint      NOT NULL,
    worker_id   uuid        NOT NULL,     -- the batchd process that recorded it
    attempts    int         NOT NULL,
    rendered_at timestamptz NOT NULL DEFAULT now()
);

-- One row per batch end (the batch callback).
CREATE TABLE docs.batch_log (
    id        bigserial   PRIMARY KEY,
    batch_id  uuid        NOT NULL,
    status    text        NOT NULL,
    succeeded int         NOT NULL,
    failed    int         NOT NULL,
    documents int         NOT NULL,
    ended_at  timestamptz NOT NULL DEFAULT now()
);

-- The renderer answers {"url": ..., "pages": n}. The mock provider answers
-- an echo of the request ({"id": "<invoice id>", ...}): docs.answer() makes
-- the answer the renderer would give from it.
CREATE FUNCTION docs.answer(result jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
               WHEN result ? 'path' AND result ? 'n' AND NOT result ? 'url'   -- the mock's echo
                   THEN jsonb_build_object(
                            'url', 'https://docs.example.com/invoices/' || (result ->> 'id') || '.pdf',
                            'pages', 1 + (result ->> 'id')::int % 3)
               ELSE result
           END
$$;

CREATE FUNCTION docs.submit_pending() RETURNS uuid
LANGUAGE sql VOLATILE
SET search_path = docs, pg_catalog
AS $$
    SELECT batchd.submit_batch(
               'billing', 'invoices',
               jsonb_agg(jsonb_build_object('invoice_id', i.id, 'customer', i.customer,
                                            'amount', i.amount) ORDER BY i.id),
               '{"name": "render invoices"}')
      FROM invoices AS i
     WHERE i.rendered_at IS NULL
    HAVING count(*) > 0
$$;

CREATE FUNCTION docs.on_rendered(item batchd.items) RETURNS void
LANGUAGE plpgsql
SET search_path = docs, pg_catalog
AS $$
DECLARE
    v_ans jsonb;
    v_id  int := (item.payload ->> 'invoice_id')::int;
BEGIN
    IF item.status <> 'succeeded' THEN
        RETURN;
    END IF;
    v_ans := answer(item.result);
    INSERT INTO documents (invoice_id, url, pages, item_id, worker_id, attempts)
    VALUES (v_id, v_ans ->> 'url', (v_ans ->> 'pages')::int, item.id, item.worker_id,
            item.attempts);
    UPDATE invoices SET rendered_at = now() WHERE id = v_id;
END
$$;

CREATE FUNCTION docs.on_batch_done(batch batchd.batches) RETURNS void
LANGUAGE sql
SET search_path = docs, pg_catalog
AS $$
    INSERT INTO batch_log (batch_id, status, succeeded, failed, documents)
    VALUES (batch.id, batch.status, batch.succeeded, batch.failed,
            (SELECT count(*) FROM documents AS d
               JOIN batchd.items AS i ON i.id = d.item_id
              WHERE i.batch_id = batch.id));
$$;
