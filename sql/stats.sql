-- What operators watch (docs/operations.md): views over the key catalog, the usage counters (flushed and still in
-- shared memory), the last maintenance run and the audit chain. They show no key material (event_crypto.keys is
-- read by the views' owner; none of its wrapped columns is selected). docs/postgres_exporter/queries.yaml turns
-- them into Prometheus metrics. A caller needs SELECT on the view and, for the two usage views, EXECUTE on
-- usage_pending() (functions in a view run with the caller's rights).

-- Per key version: encryptions (flushed into key_usage plus those still pending in shared memory), attempts to
-- decrypt under a disabled version, and the share of event_crypto.rotate_after_encryptions used: AES-GCM and
-- ChaCha20-Poly1305 draw random 96-bit nonces, safe for about 2^32 encryptions per key; the maintenance run
-- rotates a version that reaches the setting (by default 2^31 - 1).
CREATE VIEW event_crypto.stats_key_versions AS
    SELECT k.key_id, k.version, k.status, k.algorithm, k.created_at,
           e.encryptions, COALESCE(p.pending, 0) AS pending_encryptions,
           COALESCE(u.disabled_decryptions, 0) AS disabled_decryptions,
           l.rotate_after_encryptions,
           pg_catalog.round(100.0 OPERATOR(pg_catalog.*) e.encryptions OPERATOR(pg_catalog./) l.rotate_after_encryptions, 3)
               AS nonce_budget_used_pct
    FROM event_crypto.keys k
    LEFT JOIN event_crypto.key_usage u
           ON u.key_id OPERATOR(pg_catalog.=) k.key_id AND u.version OPERATOR(pg_catalog.=) k.version
    LEFT JOIN event_crypto.usage_pending() p
           ON p.key_id OPERATOR(pg_catalog.=) k.key_id AND p.version OPERATOR(pg_catalog.=) k.version
    CROSS JOIN LATERAL (SELECT COALESCE(u.encryptions, 0) OPERATOR(pg_catalog.+) COALESCE(p.pending, 0) AS encryptions) e
    -- the setting as this session sees it (through numeric: a real setting is shown as 2.14748e+09); its default
    -- when the library is not loaded in this session
    CROSS JOIN (SELECT COALESCE(NULLIF(pg_catalog.current_setting('event_crypto.rotate_after_encryptions', true), '')
                                    ::pg_catalog.numeric::pg_catalog.int8,
                                2147483648) AS rotate_after_encryptions) l;
COMMENT ON VIEW event_crypto.stats_key_versions IS
    'Per key version: encryptions (flushed and pending), disabled decryption attempts, and the nonce budget used as a percentage of event_crypto.rotate_after_encryptions.';

-- Key versions by status, always one row per status (zero when there is none), with the key ids that have a
-- version in it and the usage counts summed over its versions.
CREATE VIEW event_crypto.stats_keys AS
    SELECT s.status, pg_catalog.count(v.key_id) AS key_versions, pg_catalog.count(DISTINCT v.key_id) AS key_ids,
           COALESCE(pg_catalog.sum(v.encryptions), 0)::pg_catalog.int8 AS encryptions,
           COALESCE(pg_catalog.sum(v.disabled_decryptions), 0)::pg_catalog.int8 AS disabled_decryptions
    FROM (VALUES (1, 'active'), (2, 'retired'), (3, 'disabled'), (4, 'shredded')) AS s(position, status)
    LEFT JOIN event_crypto.stats_key_versions v ON v.status OPERATOR(pg_catalog.=) s.status
    GROUP BY s.position, s.status
    ORDER BY s.position;
COMMENT ON VIEW event_crypto.stats_keys IS
    'Key versions and key ids by status, with their encryptions and disabled decryption attempts.';

-- Shredding: key ids shredded whole (shred_key, forget_subject, retention: no version left) and when the last
-- was; apart from them, single versions destroyed by retirement while their key id lives on.
CREATE VIEW event_crypto.stats_shreds AS
    SELECT pg_catalog.count(*) FILTER (WHERE NOT g.live) AS shredded_key_ids,
           pg_catalog.max(g.last_shredded_at) FILTER (WHERE NOT g.live) AS last_shred_at,
           COALESCE(pg_catalog.sum(g.shredded) FILTER (WHERE g.live), 0)::pg_catalog.int8 AS destroyed_versions,
           pg_catalog.max(g.last_shredded_at) FILTER (WHERE g.live) AS last_destroyed_at
    FROM (SELECT k.key_id, pg_catalog.bool_or(k.status OPERATOR(pg_catalog.<>) 'shredded') AS live,
                 pg_catalog.count(*) FILTER (WHERE k.status OPERATOR(pg_catalog.=) 'shredded') AS shredded,
                 pg_catalog.max(k.shredded_at) AS last_shredded_at
          FROM event_crypto.keys k GROUP BY k.key_id) g;
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
