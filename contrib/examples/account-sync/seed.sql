-- account-sync seed data: :accounts accounts with :jobs changed jobs each
-- (psql -v accounts=N -v jobs=M). Odd-numbered jobs are already in our copy
-- (stale: title and state as of last week): the sync updates them; the
-- even-numbered ones are new: the sync inserts them.
INSERT INTO saas.accounts (id, name)
SELECT 'acct-' || lpad(a::text, 2, '0'), 'Customer ' || a
  FROM generate_series(1, :accounts) AS a;

CREATE TEMP TABLE seed_jobs AS
SELECT 'acct-' || lpad(a::text, 2, '0') AS account_id, n,
       md5('acct-' || a || '/job-' || n)::uuid AS uuid
  FROM generate_series(1, :accounts) AS a, generate_series(1, :jobs) AS n;

INSERT INTO saas.jobs (account_id, uuid, title, state, remote_updated_at, synced_at, sync_count)
SELECT account_id, uuid, 'Job ' || n || ' (old title)', 'open',
       now() - interval '8 days', now() - interval '7 days', 1
  FROM seed_jobs WHERE n % 2 = 1;

INSERT INTO saas.changes (account_id, uuid)
SELECT account_id, uuid FROM seed_jobs;

INSERT INTO saas.sandbox (uuid, answer)
SELECT uuid, jsonb_build_object(
           'uuid', uuid, 'account_id', account_id,
           'title', 'Job ' || n || ' for ' || account_id,
           'state', (ARRAY['open', 'in_progress', 'done'])[1 + n % 3],
           'updated_at', now() - make_interval(hours => n))
  FROM seed_jobs;
