-- pg_partman (Debian's postgresql-15-partman, 4.7) managing the partitions of a protected event table (issue 13):
-- the partitions it premakes when the table is set up and those its maintenance run makes later are protected
-- (it makes each as a copy of the parent and attaches it: the tree's trigger reaches it, and the attach finds no
-- plaintext in it); rows land encrypted in each, the decrypted view reads through all of them, and retention
-- dropping an old partition leaves nothing of it in event_crypto's configuration. Dates are relative to today,
-- so the output shows counts, not partition names.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE SCHEMA partman;
CREATE EXTENSION pg_partman SCHEMA partman;
CREATE SCHEMA pm;
SET search_path = pm, public;
CREATE TABLE events (id bigserial, subject text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), payload jsonb)
    PARTITION BY RANGE (created_at);
SELECT count(*) FROM event_crypto.protect('events', 'payload', fields => '{email,address.street}',
                                          key_column => 'subject', key_prefix => 'pm:');
-- daily partitions, 3 days ahead and 3 back, plus the default partition
SELECT partman.create_parent('pm.events', 'created_at', 'native', 'daily', p_premake := 3,
                             p_start_partition := (now() - interval '3 days')::date::text);
SELECT count(*) AS partitions FROM pg_partition_tree('events') WHERE isleaf;
-- every partition has the tree's trigger, and no configuration of its own
SELECT count(*) FILTER (WHERE t.tgname IS NOT NULL) AS with_trigger, count(*) AS leaves
FROM pg_partition_tree('events') p
LEFT JOIN pg_trigger t ON t.tgrelid = p.relid AND t.tgfoid = 'event_crypto.protect_trigger()'::regprocedure
WHERE p.isleaf;
SELECT count(*) AS own_configurations FROM event_crypto.protected_columns c JOIN pg_partition_tree('events') p ON p.relid = c.table_name WHERE p.level > 0;
INSERT INTO events (subject, created_at, payload)
SELECT 's' || (i % 5), now() - (i % 4) * interval '1 day' + (i % 3) * interval '1 day',
       jsonb_build_object('email', 'u' || i || '@x.io', 'address', jsonb_build_object('street', i || ' Main St', 'city', 'Oslo'))
FROM generate_series(1, 40) i;
SELECT count(DISTINCT tableoid) > 3 AS spread, bool_and(payload->>'email' LIKE '$ec2$%') AS emails_encrypted,
       bool_and(payload#>>'{address,street}' LIKE '$ec2$%') AS streets_encrypted, bool_and(payload#>>'{address,city}' = 'Oslo') AS city_plain
FROM events;
SELECT count(*) AS readable FROM events_decrypted WHERE payload->>'email' LIKE 'u%@x.io' AND payload#>>'{address,street}' LIKE '% Main St';
-- maintenance later: the window moves 5 days on, so pg_partman makes new partitions; they are protected too
UPDATE partman.part_config SET premake = 8 WHERE parent_table = 'pm.events';
SELECT partman.run_maintenance('pm.events');
SELECT count(*) AS partitions_after FROM pg_partition_tree('events') WHERE isleaf;
INSERT INTO events (subject, created_at, payload) VALUES ('s1', now() + interval '7 days', '{"email":"future@x.io"}');
SELECT tableoid::regclass::text LIKE 'events_p%' AS in_new_partition, payload->>'email' LIKE '$ec2$%' AS encrypted
FROM events WHERE created_at > now() + interval '6 days';
SELECT count(*) FILTER (WHERE t.tgname IS NULL) AS leaves_without_trigger
FROM pg_partition_tree('events') p
LEFT JOIN pg_trigger t ON t.tgrelid = p.relid AND t.tgfoid = 'event_crypto.protect_trigger()'::regprocedure
WHERE p.isleaf;
-- retention: pg_partman detaches and drops partitions older than a day; the configuration never points at them
UPDATE partman.part_config SET retention = '1 day', retention_keep_table = false WHERE parent_table = 'pm.events';
SELECT partman.run_maintenance('pm.events');
SELECT count(*) AS partitions_after_retention FROM pg_partition_tree('events') WHERE isleaf;
SELECT count(*) AS configurations_of_dropped_tables FROM event_crypto.protected_columns c
WHERE c.table_name::oid NOT IN (SELECT oid FROM pg_class);
SELECT count(*) AS detached_kept_protected FROM event_crypto.protected_columns c WHERE c.table_name::text LIKE 'events_p%';
-- forget_subject reaches every partition pg_partman made
SELECT r->>'complete' AS complete FROM event_crypto.forget_subject('s1', key_prefix => 'pm:') r;
SELECT count(*) FILTER (WHERE d.payload->>'email' IS NULL) AS s1_unreadable, count(*) AS s1_rows
FROM events_decrypted d WHERE d.subject = 's1';
ROLLBACK;
