-- 008_register.up.sql: registration that tells the worker what it needs to
-- know at (re)connect:
--   existed: whether its row was still there; false after a reconnect means
--            another worker declared it dead and requeued its items, so it
--            must drop the work it was still holding (their results would be
--            fenced anyway, and calling the provider again only wastes its
--            rate);
--   shares:  live workers per provider (as worker_heartbeat returns), so a
--            process joining a busy fleet starts at its share of each rate
--            instead of the whole rate.

CREATE FUNCTION batchd.worker_register(p_id uuid, p_hostname text, p_pid int,
                                       p_version text, p_providers text[], p_lease_ms bigint)
RETURNS TABLE (existed boolean, shares jsonb)
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, batchd
AS $fn$
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
$fn$;

COMMENT ON FUNCTION batchd.worker_register(uuid, text, int, text, text[], bigint) IS
    'Insert or refresh a worker row; returns whether it existed and the live workers per provider.';
