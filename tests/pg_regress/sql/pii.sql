-- Issue 17: PII detection. detect_pii on many shapes, suggest_protection with privileges and another owner's table,
-- the guard (unprotected_pii) in each mode; no payload value appears in any message.
\set VERBOSITY sqlstate
BEGIN;
-- shapes
SELECT * FROM event_crypto.detect_pii('{"email": "alice@example.com", "phone": "+31 6 12345678", "amount": 12.5}') ORDER BY 1, 2;
SELECT * FROM event_crypto.detect_pii('{"items": [{"card": "4111 1111 1111 1111"}, {"card": "5555555555554444"}], "iban": "NL91ABNA0417164300"}') ORDER BY 1, 2;
SELECT * FROM event_crypto.detect_pii('{"ssn": "123-45-6789", "nino": "AB123456C", "bsn": "123456782", "dni": "12345678Z", "pnr": "811218-9876"}') ORDER BY 1, 2;
SELECT * FROM event_crypto.detect_pii('{"client_ip": "203.0.113.9", "v6": "2001:db8::1", "dob": "1985-03-12", "first_name": "Alice", "customer": {"name": "Bob Smith"}, "address": {"street": "221B Baker Street"}}') ORDER BY 1, 2;
SELECT * FROM event_crypto.detect_pii('{"a.b": {"x y": ["+14155552671"]}, "note": "write to bob@example.org or call +44 20 7946 0958"}') ORDER BY 1, 2;
-- look-alikes: order ids without a valid checksum, versions, timestamps, prices, uuids, product names, bad checksums
SELECT count(*) AS look_alikes FROM event_crypto.detect_pii('{"order_id": "4111111111111112", "version": "1.2.3.4", "created_at": "2024-01-15T12:30:45Z",
  "price": "1,299.00", "id": "9f1c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b", "product": {"name": "Premium Plan"}, "iban": "NL92ABNA0417164300",
  "dni": "12345678A", "ssn": "666-12-3456", "ts": 1705321845, "type": "CustomerCreated"}');
-- scalars, NULL, empty, numbers
SELECT * FROM event_crypto.detect_pii('"alice@example.com"');
SELECT * FROM event_crypto.detect_pii('{"card": 4111111111111111, "phone": 31612345678}') ORDER BY 1, 2;
SELECT count(*) FROM event_crypto.detect_pii(NULL);
SELECT count(*) FROM event_crypto.detect_pii('{}');
SELECT count(*) FROM event_crypto.detect_pii('[]');
SELECT count(*) FROM event_crypto.detect_pii('null');
-- envelopes are not personal data
SELECT count(*) FROM event_crypto.detect_pii('{"email": "$ec2$AAAAAAAA"}');
-- huge: 20,000 values are inspected up to the limit (a NOTICE says so), a 1 MB string only in its beginning
SELECT count(*) FROM event_crypto.detect_pii((SELECT jsonb_agg('x'::text) FROM generate_series(1, 20000)));
SELECT count(*) FROM event_crypto.detect_pii(jsonb_build_object('note', repeat('x', 1000000) || ' a@example.com'));
-- deeply nested
SELECT length(path), path LIKE '[*][*]%.email' AS under_arrays, kind FROM event_crypto.detect_pii((repeat('[', 500) || '{"email": "a@example.com"}' || repeat(']', 500))::jsonb);
-- every path is one protect() takes
SELECT event_crypto.validate_fields(array_agg(path)) FROM event_crypto.detect_pii('{"a.b": {"c\"d": "a@example.com"}, "x": [[{"ip": "10.0.0.1"}]]}');
-- pure: immutable and parallel safe
SELECT provolatile, proparallel FROM pg_proc WHERE oid = 'event_crypto.detect_pii'::regproc;

-- suggest_protection
CREATE ROLE pii_owner;
CREATE ROLE pii_admin IN ROLE event_crypto_admin;
CREATE ROLE pii_reader IN ROLE event_crypto_admin;
GRANT CREATE, USAGE ON SCHEMA public TO pii_owner;
SET ROLE pii_owner;
CREATE TABLE pii_events (id serial PRIMARY KEY, subject_id text, payload jsonb, secret text);
INSERT INTO pii_events (subject_id, payload)
SELECT 's' || i, jsonb_build_object('email', 'user' || i || '@example.com', 'amount', i,
                                    'contact', CASE WHEN i % 2 = 0 THEN jsonb_build_object('phone', '+31 6 1234' || lpad(i::text, 4, '0')) END,
                                    'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'card', '4111111111111111')))
FROM generate_series(1, 20) i;
-- a policy the owner wrote: the caller's rights apply (the reader sees only some rows)
ALTER TABLE pii_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY p ON pii_events FOR SELECT USING (id <= 10);
GRANT SELECT (id, payload) ON pii_events TO pii_reader;
RESET ROLE;
-- no SELECT on the column: 42501
SET ROLE pii_admin;
SAVEPOINT s;
SELECT * FROM event_crypto.suggest_protection('pii_events', 'payload');
ROLLBACK TO s;
RESET ROLE;
-- SELECT on the column: reads as the caller, row security applies (10 rows seen)
SET ROLE pii_reader;
SELECT path, kind, rows, share FROM event_crypto.suggest_protection('pii_events', 'payload');
SELECT DISTINCT protect_call FROM event_crypto.suggest_protection('pii_events', 'payload', sample_rows => 4);
-- a column without the privilege
SAVEPOINT s;
SELECT * FROM event_crypto.suggest_protection('pii_events', 'secret');
ROLLBACK TO s;
RESET ROLE;
-- bad arguments
SAVEPOINT s;
SELECT * FROM event_crypto.suggest_protection('pii_events', 'payload', 0);
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM event_crypto.suggest_protection('pii_events', 'payload', 1000000);
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM event_crypto.suggest_protection('pii_events', 'nope');
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM event_crypto.suggest_protection('pii_events', 'subject_id');
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM event_crypto.suggest_protection(NULL, 'payload');
ROLLBACK TO s;
-- a name that needs quoting, and json
CREATE TABLE "PII ""odd"" table" ("the column" json, subject text);
INSERT INTO "PII ""odd"" table" VALUES ('{"mail": "x@example.com"}', 's');
SELECT path, kind, rows, protect_call FROM event_crypto.suggest_protection('"PII ""odd"" table"', 'the column');
-- a table already protected: the configuration with the new paths
SELECT count(*) FROM event_crypto.protect('pii_events', 'payload', fields => ARRAY['email'], key_column => 'subject_id');
INSERT INTO pii_events (subject_id, payload) VALUES ('t1', '{"email": "t1@example.com", "phone": "+31 6 12345678"}');
SELECT path, kind, rows, protect_call FROM event_crypto.suggest_protection('pii_events', 'payload') WHERE path = 'phone';
SELECT unprotected_pii FROM event_crypto.protected_columns WHERE table_name = 'pii_events'::regclass;

-- the guard
CREATE TABLE pii_g (id serial PRIMARY KEY, subject text, payload jsonb);
SELECT unprotected_pii FROM event_crypto.protect('pii_g', 'payload', fields => ARRAY['email'], key_column => 'subject');
-- ignore (the default): stored as it came
INSERT INTO pii_g (subject, payload) VALUES ('a', '{"email": "a@example.com", "phone": "+31 6 12345678"}');
-- warn: a WARNING with path and kind, never the value; the row is stored
SELECT unprotected_pii FROM event_crypto.protect('pii_g', 'payload', fields => ARRAY['email'], key_column => 'subject', unprotected_pii => 'warn');
\set VERBOSITY default
INSERT INTO pii_g (subject, payload) VALUES ('a', '{"email": "a@example.com", "phone": "+31 6 12345678", "cards": [{"n": "4111111111111111"}]}');
-- a key that could be personal data itself is not shown
INSERT INTO pii_g (subject, payload) VALUES ('a', '{"by_contact": {"bob@example.com": {"tel": "+31 6 12345678"}}}');
-- nothing outside the fields: no warning
INSERT INTO pii_g (subject, payload) VALUES ('a', '{"email": "a@example.com", "amount": 3}');
-- UPDATE is checked too
UPDATE pii_g SET payload = payload || '{"ip": "203.0.113.9"}' WHERE id = 3;
\set VERBOSITY sqlstate
SELECT count(*) FROM pii_g;
-- error: 23514, the row is refused
SELECT unprotected_pii FROM event_crypto.protect('pii_g', 'payload', fields => ARRAY['email'], key_column => 'subject', unprotected_pii => 'error');
SAVEPOINT s;
INSERT INTO pii_g (subject, payload) VALUES ('a', '{"email": "a@example.com", "iban": "NL91ABNA0417164300"}');
ROLLBACK TO s;
\set VERBOSITY default
SAVEPOINT s;
INSERT INTO pii_g (subject, payload) VALUES ('a', '{"email": "a@example.com", "iban": "NL91ABNA0417164300"}');
ROLLBACK TO s;
\set VERBOSITY sqlstate
-- the configured fields are encrypted first: nothing is left outside them
INSERT INTO pii_g (subject, payload) VALUES ('a', '{"email": "b@example.com", "amount": 3}');
SELECT count(*) FROM pii_g;
-- an invalid mode: 22023; NULL: 22004
SAVEPOINT s;
SELECT count(*) FROM event_crypto.protect('pii_g', 'payload', fields => ARRAY['email'], key_column => 'subject', unprotected_pii => 'loud');
ROLLBACK TO s;
SAVEPOINT s;
SELECT count(*) FROM event_crypto.protect('pii_g', 'payload', fields => ARRAY['email'], key_column => 'subject', unprotected_pii => NULL);
ROLLBACK TO s;
ROLLBACK;
