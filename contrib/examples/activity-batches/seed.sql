-- activity-batches seed data: two tenants' shipments. Both use ids
-- ACT-0001...; acme has 120, globex 40 (ACT-0036..0040 are "late": the
-- footprint API does not know them yet, see run).
INSERT INTO activity.activities (tenant, activity_id, mode, distance_km, weight_t)
SELECT 'acme', 'ACT-' || lpad(g::text, 4, '0'),
       (ARRAY['road', 'rail', 'sea', 'air'])[1 + g % 4], 100 + g * 37 % 900, 1 + g % 20
  FROM generate_series(1, 120) AS g;
INSERT INTO activity.activities (tenant, activity_id, mode, distance_km, weight_t)
SELECT 'globex', 'ACT-' || lpad(g::text, 4, '0'),
       (ARRAY['rail', 'road', 'road', 'sea'])[1 + g % 4], 50 + g * 53 % 700, 2 + g % 7
  FROM generate_series(1, 40) AS g;
