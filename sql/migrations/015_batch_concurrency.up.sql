-- 015_batch_concurrency.up.sql: the batch slots of routes with
-- batch_concurrency = N (man batchd.ini(5)).
--
-- A route with batch_concurrency = N > 0 runs at most N of its batches at
-- once, fleet-wide: a batch has items claimed only while it holds one of the
-- route's N slots, a row here. batchd.claim_items_shared() (functions/claim.sql)
-- is the only writer, under a transaction-scoped advisory lock per route, so
-- that claimers on several hosts never hand out N + 1 slots. A slot goes when
-- its batch has ended (finished_at set: completed, failed, or cancelled with
-- nothing left running) or is gone (deleted, purged): no foreign key, so that
-- deleting a batch never waits for a claim. Routes without
-- batch_concurrency never read or write this table.
CREATE TABLE batchd.batch_slots (
    batch_id    uuid PRIMARY KEY,
    route       text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    -- the order the slots were handed out (several in one claim share acquired_at)
    slot_order  bigint GENERATED ALWAYS AS IDENTITY
);

COMMENT ON TABLE batchd.batch_slots IS
    'Batches that hold one of their route''s batch_concurrency slots (claim_items_shared is the only writer)';

-- The slots of a route, oldest first (the order in which their batches are served).
CREATE INDEX batch_slots_route_idx ON batchd.batch_slots (route, slot_order);
