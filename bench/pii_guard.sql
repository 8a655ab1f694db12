-- The PII guard's per-row cost (docs/pii.md): 20,000 protected inserts each with unprotected_pii => 'ignore' and 'warn'.
-- psql -X -q -f bench/pii_guard.sql in an empty database of a server with event_crypto preloaded and a master key.
CREATE EXTENSION event_crypto;
CREATE TABLE g (id bigserial PRIMARY KEY, subject text, payload jsonb);
SELECT count(*) FROM event_crypto.protect('g', 'payload', fields => ARRAY['email'], key_column => 'subject');
SET client_min_messages = error;
\timing on
\echo ignore
INSERT INTO g (subject, payload) SELECT 's' || (i % 100), jsonb_build_object('email', 'u' || i || '@example.com', 'amount', i, 'type', 'OrderPlaced', 'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'qty', 2)), 'note', 'delivered to the front desk') FROM generate_series(1, 20000) i;
INSERT INTO g (subject, payload) SELECT 's' || (i % 100), jsonb_build_object('email', 'u' || i || '@example.com', 'amount', i, 'type', 'OrderPlaced', 'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'qty', 2)), 'note', 'delivered to the front desk') FROM generate_series(1, 20000) i;
INSERT INTO g (subject, payload) SELECT 's' || (i % 100), jsonb_build_object('email', 'u' || i || '@example.com', 'amount', i, 'phone', '+31 6 1234' || lpad((i % 10000)::text, 4, '0'), 'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'qty', 2)), 'note', 'delivered to the front desk') FROM generate_series(1, 20000) i;
\timing off
SELECT count(*) FROM event_crypto.protect('g', 'payload', fields => ARRAY['email'], key_column => 'subject', unprotected_pii => 'warn');
\timing on
\echo warn
INSERT INTO g (subject, payload) SELECT 's' || (i % 100), jsonb_build_object('email', 'u' || i || '@example.com', 'amount', i, 'type', 'OrderPlaced', 'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'qty', 2)), 'note', 'delivered to the front desk') FROM generate_series(1, 20000) i;
INSERT INTO g (subject, payload) SELECT 's' || (i % 100), jsonb_build_object('email', 'u' || i || '@example.com', 'amount', i, 'type', 'OrderPlaced', 'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'qty', 2)), 'note', 'delivered to the front desk') FROM generate_series(1, 20000) i;
\echo warn_with_findings
INSERT INTO g (subject, payload) SELECT 's' || (i % 100), jsonb_build_object('email', 'u' || i || '@example.com', 'amount', i, 'phone', '+31 6 1234' || lpad((i % 10000)::text, 4, '0'), 'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || i, 'qty', 2)), 'note', 'delivered to the front desk') FROM generate_series(1, 20000) i;
