-- What operators watch (docs/operations.md): views over the key catalog, the usage counters (flushed and still in
-- shared memory), the last maintenance run and the audit chain. They show no key material (event_crypto.keys is
-- read by the views' owner; none of its wrapped columns is selected). docs/postgres_exporter/queries.yaml turns
-- them into Prometheus metrics. A caller needs SELECT on the view and, for stats_keys and stats_key_versions,
-- EXECUTE on usage_pending_counts() (functions in a view run with the caller's rights).

-- Per key version: encryptions and decryptions (flushed into key_usage plus those still pending in shared memory),
-- attempts to decrypt under a disabled version, and the share of event_crypto.rotate_after_encryptions used:
-- AES-GCM and ChaCha20-Poly1305 draw random 96-bit nonces, safe for about 2^32 encryptions per key; the maintenance
-- run rotates a version that reaches the setting. Decryptions are the primary's, and statistics (a lower bound:
-- see docs/operations.md). The counts are grouped before they are joined to the key catalog (key versions without
-- counts have zeros), so that a scan of a large catalog hashes the counts, not the catalog.
CREATE VIEW event_crypto.stats_key_versions AS
    SELECT k.key_id, k.version, k.status, k.algorithm, k.created_at,
           COALESCE(n.encryptions, 0) AS encryptions, COALESCE(n.pending_encryptions, 0) AS pending_encryptions,
           COALESCE(n.decryptions, 0) AS decryptions, COALESCE(n.pending_decryptions, 0) AS pending_decryptions,
           COALESCE(n.disabled_decryptions, 0) AS disabled_decryptions, l.rotate_after_encryptions,
           pg_catalog.round(100.0 OPERATOR(pg_catalog.*) COALESCE(n.encryptions, 0)
                            OPERATOR(pg_catalog./) l.rotate_after_encryptions, 3) AS nonce_budget_used_pct
    FROM event_crypto.keys k
    LEFT JOIN (SELECT c.key_id, c.version,
                      pg_catalog.sum(c.encryptions)::pg_catalog.int8 AS encryptions,
                      pg_catalog.sum(c.pending_encryptions)::pg_catalog.int8 AS pending_encryptions,
                      pg_catalog.sum(c.decryptions)::pg_catalog.int8 AS decryptions,
                      pg_catalog.sum(c.pending_decryptions)::pg_catalog.int8 AS pending_decryptions,
                      pg_catalog.sum(c.disabled_decryptions)::pg_catalog.int8 AS disabled_decryptions
               FROM (SELECT u.key_id, u.version, u.encryptions, 0::pg_catalog.int8 AS pending_encryptions,
                            u.decryptions, 0::pg_catalog.int8 AS pending_decryptions, u.disabled_decryptions
                     FROM event_crypto.key_usage u
                     UNION ALL
                     SELECT p.key_id, p.version, p.encryptions, p.encryptions, p.decryptions, p.decryptions,
                            p.disabled_decryptions
                     FROM event_crypto.usage_pending_counts() p) c
               GROUP BY c.key_id, c.version) n
           ON n.key_id OPERATOR(pg_catalog.=) k.key_id AND n.version OPERATOR(pg_catalog.=) k.version
    -- the setting as this session sees it (an integer; through numeric, as 0.1.0 showed it as 2.14748e+09); its default
    -- when the library is not loaded in this session
    CROSS JOIN (SELECT COALESCE(NULLIF(pg_catalog.current_setting('event_crypto.rotate_after_encryptions', true), '')
                                    ::pg_catalog.numeric::pg_catalog.int8,
                                2147483647) AS rotate_after_encryptions) l;
COMMENT ON VIEW event_crypto.stats_key_versions IS
    'Per key version: encryptions and decryptions (flushed and pending), disabled decryption attempts, and the nonce budget used as a percentage of event_crypto.rotate_after_encryptions.';

-- Key versions by status, always one row per status (zero when there is none; a live key id has exactly one active
-- version, so the active row counts live key ids too), with the usage of its versions: encryptions and decryptions
-- (flushed and pending), attempts under disabled versions, the highest share of
-- event_crypto.rotate_after_encryptions a version used, and how many used half of it or all of it (on the active
-- row: due for rotation).
CREATE VIEW event_crypto.stats_keys AS
    SELECT s.status, COALESCE(c.key_versions, 0) AS key_versions, COALESCE(c.encryptions, 0) AS encryptions,
           COALESCE(c.pending_encryptions, 0) AS pending_encryptions,
           COALESCE(c.decryptions, 0) AS decryptions,
           COALESCE(c.disabled_decryptions, 0) AS disabled_decryptions,
           COALESCE(c.nonce_budget_max_used_pct, 0) AS nonce_budget_max_used_pct,
           COALESCE(c.versions_over_half_budget, 0) AS versions_over_half_budget,
           COALESCE(c.versions_at_limit, 0) AS versions_at_limit
    FROM (VALUES (1, 'active'), (2, 'retired'), (3, 'disabled'), (4, 'shredded')) AS s(position, status)
    LEFT JOIN (SELECT v.status, pg_catalog.count(*) AS key_versions,
                      pg_catalog.sum(v.encryptions)::pg_catalog.int8 AS encryptions,
                      pg_catalog.sum(v.pending_encryptions)::pg_catalog.int8 AS pending_encryptions,
                      pg_catalog.sum(v.decryptions)::pg_catalog.int8 AS decryptions,
                      pg_catalog.sum(v.disabled_decryptions)::pg_catalog.int8 AS disabled_decryptions,
                      pg_catalog.max(v.nonce_budget_used_pct) AS nonce_budget_max_used_pct,
                      pg_catalog.count(*) FILTER (WHERE v.encryptions OPERATOR(pg_catalog.*) 2
                                                        OPERATOR(pg_catalog.>=) v.rotate_after_encryptions)
                          AS versions_over_half_budget,
                      pg_catalog.count(*) FILTER (WHERE v.encryptions OPERATOR(pg_catalog.>=) v.rotate_after_encryptions)
                          AS versions_at_limit
               FROM event_crypto.stats_key_versions v
               GROUP BY v.status) c
           ON c.status OPERATOR(pg_catalog.=) s.status
    ORDER BY s.position;
COMMENT ON VIEW event_crypto.stats_keys IS
    'Key versions by status, with their encryptions, decryptions, disabled decryption attempts and nonce budget (the highest share of event_crypto.rotate_after_encryptions used, versions past half of it and at it).';

-- Shredding: key ids shredded whole (shred_key, forget_subject, retention: no version left) and when the last
-- was; apart from them, single versions destroyed by retirement while their key id lives on.
CREATE VIEW event_crypto.stats_shreds AS
    WITH shredded AS MATERIALIZED (
        SELECT k.key_id, k.shredded_at,
               NOT EXISTS (SELECT 1 FROM event_crypto.keys l
                           WHERE l.key_id OPERATOR(pg_catalog.=) k.key_id
                             AND l.status OPERATOR(pg_catalog.<>) 'shredded') AS whole
        FROM event_crypto.keys k WHERE k.status OPERATOR(pg_catalog.=) 'shredded')
    SELECT pg_catalog.count(DISTINCT s.key_id) FILTER (WHERE s.whole) AS shredded_key_ids,
           pg_catalog.max(s.shredded_at) FILTER (WHERE s.whole) AS last_shred_at,
           pg_catalog.count(*) FILTER (WHERE NOT s.whole) AS destroyed_versions,
           pg_catalog.max(s.shredded_at) FILTER (WHERE NOT s.whole) AS last_destroyed_at
    FROM shredded s;
COMMENT ON VIEW event_crypto.stats_shreds IS
    'Key ids shredded whole and the time of the last shred; key versions destroyed by retirement.';

-- The last maintenance run (one row, also before the first run: runs = 0 and the rest NULL).
CREATE VIEW event_crypto.stats_maintenance AS
    SELECT COALESCE(m.runs, 0) AS runs, COALESCE(m.runs_not_ok, 0) AS runs_not_ok,
           m.last_started_at, m.last_finished_at,
           pg_catalog.date_part('epoch', m.last_finished_at OPERATOR(pg_catalog.-) m.last_started_at) AS last_duration_seconds,
           m.last_ok,
           ARRAY(SELECT r.value OPERATOR(pg_catalog.->>) 'action'
                 FROM pg_catalog.jsonb_array_elements(m.last_result) AS r(value)
                 WHERE (r.value OPERATOR(pg_catalog.->>) 'ok') OPERATOR(pg_catalog.=) 'false') AS last_not_ok_actions,
           m.last_run_by, m.last_run_via, m.last_result, m.last_ok_at, m.last_not_ok_at
    FROM (VALUES (true)) AS o(one)
    LEFT JOIN event_crypto.maintenance_status m ON m.one;
COMMENT ON VIEW event_crypto.stats_maintenance IS
    'The last maintenance run: when, how long, whether every action was ok (and which were not), who ran it and how; runs counted.';

-- The head of the audit chain: the position and a prefix of the hash of the newest sealed row (verify_audit_log()
-- gives the whole hash after walking the chain), and when it was sealed.
CREATE VIEW event_crypto.stats_audit AS
    SELECT h.seq AS head_seq, pg_catalog.left(pg_catalog.encode(h.row_hash, 'hex'), 16) AS head_hash_prefix,
           h.sealed_at AS head_sealed_at
    FROM (VALUES (true)) AS o(one)
    LEFT JOIN LATERAL (SELECT a.seq, a.row_hash, a.sealed_at FROM event_crypto.audit_head a
                       ORDER BY a.seq DESC LIMIT 1) h ON o.one;
COMMENT ON VIEW event_crypto.stats_audit IS
    'The audit chain head: position, hash prefix (16 hex digits) and when it was sealed.';
