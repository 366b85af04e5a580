-- 010_claim_resume.down.sql: revert 010_claim_resume.up.sql.
DROP FUNCTION batchd.claim_items(uuid, text[], int, int, bigint);
