-- 006_cancelled_release.down.sql: revert 006_cancelled_release.up.sql.
DROP TRIGGER items_requeue_cancelled ON batchd.items;
DROP FUNCTION batchd.items_requeue_cancelled();
