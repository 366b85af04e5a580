-- registry-verification seed data: :trucks trucks (psql -v trucks=N), and
-- what the simulated registry knows about them (registry.sandbox).
--
-- Trucks: every 10th was verified 2 days ago (not due tonight), every 10th
-- + 1 30 days ago (due), the others never (pending, due).
-- Registry answers (by truck number g), so that each kind of finding shows:
--   g % 17 = 3   insurance expired              -> severe flag, ticket
--   g % 19 = 4   fitness certificate expired    -> severe flag, ticket
--   g % 29 = 5   blacklisted                    -> severe flag, ticket
--   g % 13 = 6   registered to another owner    -> warning flag
--   g % 37 = 7   VIN unknown to the registry    -> HTTP 404, item failed
--   g % 53 = 8   incomplete answer              -> the hook raises, item failed
--   g %  4 = 0   owner spelled differently (case, "Pvt Ltd"): not a mismatch

INSERT INTO registry.trucks (plate, vin, owner_name, status, verified_at)
SELECT 'TRK-' || lpad(g::text, 4, '0'),
       'MA1TRK' || lpad(g::text, 11, '0'),
       (ARRAY['Sharma Logistics Pvt Ltd', 'Kaveri Transport', 'Northline Carriers LLP',
              'R K Roadways', 'Deccan Freight Co'])[1 + g % 5],
       CASE WHEN g % 10 IN (0, 1) THEN 'verified' ELSE 'pending' END,
       CASE g % 10 WHEN 0 THEN now() - interval '2 days'
                   WHEN 1 THEN now() - interval '30 days' END
  FROM generate_series(1, :trucks) AS g
 ORDER BY g;

INSERT INTO registry.sandbox (vin, answer)
SELECT t.vin,
       CASE WHEN t.g % 53 = 8 THEN
                jsonb_build_object('vin', t.vin, 'status', 'ERR-RECORD-LOCKED',
                                   'message', 'record locked for update, try later')
            ELSE jsonb_build_object(
                'vin', t.vin,
                'owner', CASE WHEN t.g % 13 = 6 THEN 'Unknown Traders'
                              WHEN t.g % 4 = 0 THEN upper(replace(t.owner_name, ' Pvt Ltd', ''))
                              ELSE t.owner_name END,
                'insurance_valid_until',
                    CASE WHEN t.g % 17 = 3 THEN current_date - (5 + t.g % 40)
                         ELSE current_date + (30 + t.g * 7 % 300) END,
                'fitness_valid_until',
                    CASE WHEN t.g % 19 = 4 THEN current_date - (3 + t.g % 20)
                         ELSE current_date + (60 + t.g * 11 % 500) END,
                'blacklisted', t.g % 29 = 5,
                'blacklist_reason', CASE WHEN t.g % 29 = 5 THEN 'stolen vehicle report' END)
       END
  FROM (SELECT id AS g, vin, owner_name FROM registry.trucks) AS t
 WHERE t.g % 37 <> 7;
