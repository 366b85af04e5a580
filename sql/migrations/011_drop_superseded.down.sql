-- 011_drop_superseded.down.sql: undo 011_drop_superseded.up.sql.
--
-- Nothing to restore: the functions 011 dropped were not called by the
-- release before it either, and the downs of 001 and 004 drop them only if
-- they exist. (`batchd migrate --down` also forgets the applied function
-- files, so that the next `batchd migrate` applies them all again.)
SELECT 1;
