-- Usage counts, rotation and retention policies, and run_maintenance(): what the background worker (or pg_cron)
-- runs every event_crypto.worker_interval.

-- Encryptions per key version, moved here from shared memory by event_crypto.flush_usage().
CREATE TABLE event_crypto.key_usage (
    key_id      text        NOT NULL,
    version     integer     NOT NULL,
    encryptions bigint      NOT NULL DEFAULT 0 CHECK (encryptions >= 0),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- attempts to decrypt under the version while retire_key_version had it disabled
    disabled_decryptions bigint NOT NULL DEFAULT 0 CHECK (disabled_decryptions >= 0),
    -- fields decrypted under the version (on the primary; statistics: see docs/operations.md)
    decryptions bigint NOT NULL DEFAULT 0 CHECK (decryptions >= 0),
    PRIMARY KEY (key_id, version)
);
COMMENT ON TABLE event_crypto.key_usage IS 'Encryptions and decryptions per key version (flushed by the maintenance run).';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.key_usage', '');

CREATE VIEW event_crypto.key_info AS
    SELECT k.key_id, k.version, k.algorithm, k.status, k.master_key_id, k.created_at, k.created_by, k.retired_at,
           k.shredded_at, k.shredded_by, k.wrapped_key IS NOT NULL AS has_key_material,
           COALESCE(u.encryptions, 0) OPERATOR(pg_catalog.+) COALESCE(p.pending, 0) AS encryptions,
           k.destroy_after, COALESCE(u.disabled_decryptions, 0) AS disabled_decryptions
    FROM event_crypto.keys k
    LEFT JOIN event_crypto.key_usage u
           ON u.key_id OPERATOR(pg_catalog.=) k.key_id AND u.version OPERATOR(pg_catalog.=) k.version
    LEFT JOIN event_crypto.usage_pending() p
           ON p.key_id OPERATOR(pg_catalog.=) k.key_id AND p.version OPERATOR(pg_catalog.=) k.version;
COMMENT ON VIEW event_crypto.key_info IS
    'The key catalog without the wrapped key material, with the encryptions counted per version (flushed and pending).';

-- Scheduled rotation: active versions of key ids matching key_pattern (LIKE) older than rotate_every are rotated.
CREATE TABLE event_crypto.rotation_policies (
    key_pattern  text        PRIMARY KEY CHECK (key_pattern <> ''),
    rotate_every interval    NOT NULL CHECK (rotate_every > interval '0'),
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by   name        NOT NULL DEFAULT CURRENT_USER
);
COMMENT ON TABLE event_crypto.rotation_policies IS 'Scheduled rotation: key ids LIKE key_pattern are rotated every rotate_every.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.rotation_policies', '');

-- Set through event_crypto.set_rotation() (src/policies.rs).

-- Retention: shred keys older than older_than (key_pattern), or, per protected table keyed by subject, forget
-- subjects whose key is older than older_than or who have had no event for inactive_for (by time_column).
CREATE TABLE event_crypto.retention_policies (
    id           bigserial   PRIMARY KEY,
    key_pattern  text        CHECK (key_pattern <> ''),
    table_name   regclass,
    older_than   interval    CHECK (older_than > interval '0'),
    inactive_for interval    CHECK (inactive_for > interval '0'),
    time_column  name,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by   name        NOT NULL DEFAULT CURRENT_USER,
    CONSTRAINT retention_one_target CHECK ((key_pattern IS NULL) <> (table_name IS NULL)),
    CONSTRAINT retention_some_limit CHECK (older_than IS NOT NULL OR inactive_for IS NOT NULL),
    CONSTRAINT retention_inactivity_needs_table CHECK (inactive_for IS NULL OR (table_name IS NOT NULL AND time_column IS NOT NULL))
);
CREATE UNIQUE INDEX retention_policies_pattern ON event_crypto.retention_policies (key_pattern) WHERE key_pattern IS NOT NULL;
CREATE UNIQUE INDEX retention_policies_table ON event_crypto.retention_policies (table_name) WHERE table_name IS NOT NULL;
COMMENT ON TABLE event_crypto.retention_policies IS 'Retention: which keys or subjects enforce_retention() shreds.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.retention_policies', '');
SELECT pg_catalog.pg_extension_config_dump('event_crypto.retention_policies_id_seq', '');

-- Set through event_crypto.set_retention() and drop_retention(), enforced by event_crypto.enforce_retention()
-- (src/policies.rs).

-- One maintenance run: flush usage counters, rotate key versions past the usage limit, rotate on schedule,
-- enforce retention, destroy the key versions retire_key_version() disabled once event_crypto.retire_wait passed.
-- event_crypto.run_maintenance() (src/maintenance.rs) runs each action (event_crypto.maintenance_action,
-- src/policies.rs) in its own subtransaction: a failure is reported in its row (and logged by the worker) and the
-- other actions still run; an action that could not do everything (a key that did not rotate, a retention policy
-- it could not apply) is reported with ok = false and says what it skipped. Rotations are capped at 1,000 key ids
-- per action and run.
COMMENT ON FUNCTION event_crypto.run_maintenance() IS
    'Flushes usage counters, rotates key versions past the usage limit or due by schedule, enforces retention, destroys retired key versions whose wait is over.';

-- The last maintenance run (whoever ran it: the background worker, pg_cron, a session), written by
-- run_maintenance() as the extension's owner at the end of each run that could write: its result per action, when
-- a run was last ok and last not ok, and how many runs there were. One row; not dumped (it describes this
-- database's maintenance, not data). event_crypto.stats_maintenance shows it.
CREATE TABLE event_crypto.maintenance_status (
    one              boolean     PRIMARY KEY DEFAULT true CHECK (one),
    runs             bigint      NOT NULL CHECK (runs >= 1),
    -- runs with an action that failed or could not do everything
    runs_not_ok      bigint      NOT NULL CHECK (runs_not_ok >= 0),
    last_started_at  timestamptz NOT NULL,
    last_finished_at timestamptz NOT NULL,
    last_ok          boolean     NOT NULL,
    -- the acting role, and the background worker's type or the session's application_name
    last_run_by      name        NOT NULL,
    last_run_via     text        NOT NULL,
    -- [{"action": ..., "ok": ..., "detail": ...}, ...]: what run_maintenance() returned
    last_result      jsonb       NOT NULL,
    last_ok_at       timestamptz,
    last_not_ok_at   timestamptz
);
COMMENT ON TABLE event_crypto.maintenance_status IS
    'The last maintenance run and its result, with the number of runs (written by run_maintenance()).';
