-- quote-fanout seed data: the simulated API's vehicle catalogue, and four
-- quote requests (:short = 1 makes them smaller, for the test suite), as
-- customers' requests would arrive: inserting a row submits it (the intake
-- trigger quotes.quote_jobs_intake), nothing else is called. XX-UNKNOWN is
-- not a vehicle the API knows: its quotes fail (HTTP 422), alone. They are
-- inserted in one statement: the route's batch_concurrency = 3 runs the
-- first three at once, the fourth when one of them has ended.
INSERT INTO quotes.sandbox_vehicles (code, list_price) VALUES
    ('VW-GOLF-8', 32500), ('FORD-FOCUS', 28900), ('SKODA-OCTAVIA', 31900),
    ('TESLA-M3', 42990), ('BMW-I4', 57900);

INSERT INTO quotes.quote_jobs (customer, vehicles, terms, mileages, deposit)
SELECT * FROM (VALUES
    ('Fleet GmbH', '{VW-GOLF-8,FORD-FOCUS,SKODA-OCTAVIA}'::text[], '{24,36,48}'::int[],
     '{10000,15000}'::int[], 3000),
    ('Muster AG', '{TESLA-M3,BMW-I4,XX-UNKNOWN}', '{36,48}', '{10000}', 5000),
    ('Nord KG', '{SKODA-OCTAVIA}', '{24}', '{10000,15000}', 2000),
    ('Sued eG', '{BMW-I4}', '{36,48}', '{15000}', 4000)) AS j
 WHERE :short = 0
UNION ALL
SELECT * FROM (VALUES
    ('Fleet GmbH', '{VW-GOLF-8,FORD-FOCUS}'::text[], '{24,36}'::int[], '{10000,15000}'::int[], 3000),
    ('Muster AG', '{TESLA-M3,XX-UNKNOWN}', '{36}', '{10000,20000}', 5000),
    ('Nord KG', '{SKODA-OCTAVIA}', '{24}', '{10000,15000}', 2000),
    ('Sued eG', '{BMW-I4}', '{36,48}', '{15000}', 4000)) AS j
 WHERE :short = 1;
