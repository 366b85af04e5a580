-- 014_intake.up.sql: jobs (one submitted object fanned out into items), their
-- per-job and per-group summary, and the link from a batch to the row of a
-- user table that submitted it (intake). The functions are in
-- functions/intake.sql: batchd.fanout(), batchd.submit_job(),
-- batchd.job_summary(), the trigger function batchd.intake(), and the triggers
-- on batchd.batches that write the summary and call a job's on_done.
ALTER TABLE batchd.batches
    ADD COLUMN job jsonb
        CONSTRAINT batches_job_check CHECK (jsonb_typeof(job) = 'object'),
    ADD COLUMN job_group text
        CONSTRAINT batches_job_group_check CHECK (char_length(job_group) BETWEEN 1 AND 200),
    ADD COLUMN summary jsonb,
    ADD COLUMN on_done text,
    ADD COLUMN source text,
    ADD COLUMN source_key text,
    ADD CONSTRAINT batches_source_check CHECK ((source IS NULL) = (source_key IS NULL));

COMMENT ON COLUMN batchd.batches.job IS
    'The job as submitted (batchd.submit_job), before its fan-out into items; NULL for a plain batch';
COMMENT ON COLUMN batchd.batches.job_group IS
    'The job field whose value groups its items in the summary (submit_job''s group option)';
COMMENT ON COLUMN batchd.batches.summary IS
    'A job''s counts when it ended (batchd.job_summary): total, succeeded, failed, cancelled, and per group';
COMMENT ON COLUMN batchd.batches.on_done IS
    'The job''s own callback, schema.function(batch batchd.batches), called once per end of the batch';
COMMENT ON COLUMN batchd.batches.source IS
    'Intake: the table whose row submitted this batch (schema-qualified, quoted as needed)';
COMMENT ON COLUMN batchd.batches.source_key IS
    'Intake: the key of that row, as text';

-- From a row of a user table to its batches.
CREATE INDEX batches_source_idx ON batchd.batches (source, source_key)
    WHERE source IS NOT NULL;
