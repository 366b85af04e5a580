-- account-sync: domain tables, the submission and the result hook. Applied
-- after `batchd migrate` and before batchd starts.

CREATE SCHEMA saas;

CREATE TABLE saas.accounts (
    id   text PRIMARY KEY,
    name text NOT NULL
);

-- Our copy of the SaaS jobs, keyed by (account, uuid).
CREATE TABLE saas.jobs (
    account_id        text        NOT NULL REFERENCES saas.accounts,
    uuid              uuid        NOT NULL,
    title             text,
    state             text,
    remote_updated_at timestamptz,
    synced_at         timestamptz,
    sync_count        int         NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, uuid)
);

-- Jobs changed on the SaaS side since the last sync (its change feed or
-- webhooks fill this; seed data here).
CREATE TABLE saas.changes (
    account_id text NOT NULL REFERENCES saas.accounts,
    uuid       uuid NOT NULL,
    PRIMARY KEY (account_id, uuid)
);

-- What each call did (the hook writes it): the proof that calls of one
-- account never overlapped and were spaced by a second.
CREATE TABLE saas.sync_log (
    item_id     bigint      PRIMARY KEY,
    account_id  text        NOT NULL,
    uuid        uuid        NOT NULL,
    outcome     text        NOT NULL,     -- inserted, updated, deleted_remotely
    attempts    int         NOT NULL,
    tries       int,                      -- calls to the API for this result
    started_at  timestamptz,
    finished_at timestamptz
);

-- What the simulated SaaS API knows, by job uuid. The mock provider answers
-- an echo of the request ({"id": "<uuid>", "path": ...}); saas.answer()
-- turns it into the API's answer from this table. Not used against the real API.
CREATE TABLE saas.sandbox (
    uuid   uuid  PRIMARY KEY,
    answer jsonb NOT NULL
);

CREATE FUNCTION saas.answer(result jsonb) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = saas, pg_catalog
AS $$
    SELECT CASE
               WHEN result ? 'path' AND result ? 'n' AND NOT result ? 'uuid'   -- the mock's echo
                   THEN (SELECT s.answer FROM sandbox AS s WHERE s.uuid::text = result ->> 'id')
               ELSE result
           END
$$;

-- One batch of every changed job, grouped by account: the route's
-- group_concurrency and group_rate then apply per account.
CREATE FUNCTION saas.submit_sync() RETURNS uuid
LANGUAGE sql VOLATILE
SET search_path = saas, pg_catalog
AS $$
    SELECT batchd.submit_batch(
               'ops', 'saas_jobs',
               jsonb_agg(jsonb_build_object('account_id', c.account_id, 'uuid', c.uuid)
                         ORDER BY c.uuid),
               '{"name": "job sync", "group_key": "account_id"}')
      FROM changes AS c
    HAVING count(*) > 0
$$;

-- The result hook: upsert the job; a job the API no longer has (404) is
-- marked deleted_remotely.
CREATE FUNCTION saas.on_job(item batchd.items) RETURNS void
LANGUAGE plpgsql
SET search_path = saas, pg_catalog
AS $$
DECLARE
    v_ans      jsonb;
    v_account  text := item.payload ->> 'account_id';
    v_uuid     uuid := (item.payload ->> 'uuid')::uuid;
    v_inserted boolean;
    v_outcome  text;
BEGIN
    IF item.status = 'failed' THEN
        IF item.http_status <> 404 THEN
            RETURN;                     -- the error stays on the item
        END IF;
        UPDATE jobs SET state = 'deleted_remotely', synced_at = now(),
                        sync_count = sync_count + 1
         WHERE account_id = v_account AND uuid = v_uuid;
        v_outcome := 'deleted_remotely';
    ELSE
        v_ans := answer(item.result);
        IF v_ans IS NULL OR v_ans ->> 'uuid' IS DISTINCT FROM v_uuid::text THEN
            RAISE EXCEPTION 'unexpected answer for job %: %', v_uuid, left(item.result::text, 200);
        END IF;
        INSERT INTO jobs AS j (account_id, uuid, title, state, remote_updated_at, synced_at,
                               sync_count)
        VALUES (v_account, v_uuid, v_ans ->> 'title', v_ans ->> 'state',
                (v_ans ->> 'updated_at')::timestamptz, now(), 1)
        ON CONFLICT (account_id, uuid) DO UPDATE
           SET title = excluded.title, state = excluded.state,
               remote_updated_at = excluded.remote_updated_at, synced_at = now(),
               sync_count = j.sync_count + 1
        RETURNING (xmax = 0) INTO v_inserted;
        v_outcome := CASE WHEN v_inserted THEN 'inserted' ELSE 'updated' END;
    END IF;
    DELETE FROM changes WHERE account_id = v_account AND uuid = v_uuid;
    INSERT INTO sync_log (item_id, account_id, uuid, outcome, attempts, tries, started_at,
                          finished_at)
    VALUES (item.id, v_account, v_uuid, v_outcome, item.attempts,
            (item.tries ->> item.provider)::int, item.started_at, item.finished_at);
END
$$;
