-- 014_intake.down.sql: undo 014_intake.up.sql.
--
-- The objects of functions/intake.sql go first: the triggers on
-- batchd.batches read the dropped columns. A trigger of a user table that
-- calls batchd.intake() makes this down fail (the function cannot be dropped
-- while it is used; nothing is reverted): drop those triggers first.
DROP TRIGGER IF EXISTS batches_job_summary ON batchd.batches;
DROP TRIGGER IF EXISTS batches_job_on_done ON batchd.batches;
DROP FUNCTION IF EXISTS batchd.batches_job_summary();
DROP FUNCTION IF EXISTS batchd.batches_job_on_done();
DROP FUNCTION IF EXISTS batchd.intake();
DROP FUNCTION IF EXISTS batchd.intake_job(text, text, anyelement);
DROP FUNCTION IF EXISTS batchd.submit_job(text, text, jsonb, jsonb, text, text);
DROP FUNCTION IF EXISTS batchd.job_summary(uuid);
DROP FUNCTION IF EXISTS batchd.job_summary_of(batchd.batches);
DROP FUNCTION IF EXISTS batchd.fanout(jsonb, jsonb, integer);
DROP INDEX batchd.batches_source_idx;
ALTER TABLE batchd.batches
    DROP CONSTRAINT batches_source_check,
    DROP COLUMN source_key,
    DROP COLUMN source,
    DROP COLUMN on_done,
    DROP COLUMN summary,
    DROP COLUMN job_group,
    DROP COLUMN job;
