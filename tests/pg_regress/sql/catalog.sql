-- Catalog audit: volatility, strictness, parallel safety, security, grants and placement of every function.
SELECT p.proname, p.pronargs AS nargs,
       p.provolatile AS vol, p.proparallel AS par, p.prosecdef AS secdef, p.proisstrict AS strict
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' ORDER BY 1, 2;
-- nothing that draws randomness or reads keys is IMMUTABLE: only pure functions are (argument checkers, the audit
-- chain hash, the key id naming; uses_key_version() reads key handles from the catalog, so it is STABLE)
SELECT p.proname AS immutable_functions FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' AND p.provolatile = 'i' ORDER BY 1;
-- plpgsql functions pin their search_path
SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = 'event_crypto' AND l.lanname = 'plpgsql' ORDER BY 1;
-- no function or procedure is executable by PUBLIC
SELECT p.proname AS public_executable FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' AND has_function_privilege('public', p.oid, 'EXECUTE');
-- SECURITY DEFINER only for the audit chain (seal, verify), each with a pinned search_path
SELECT p.proname AS security_definer, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' AND p.prosecdef ORDER BY 1;
-- who may execute what
SELECT r.rolname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
CROSS JOIN (VALUES ('event_crypto_admin'), ('event_crypto_encryptor'), ('event_crypto_decryptor'), ('event_crypto_consumer')) AS r(rolname)
WHERE n.nspname = 'event_crypto' AND has_function_privilege(r.rolname, p.oid, 'EXECUTE') ORDER BY 1, 2;
-- no table or view privileges for PUBLIC
SELECT c.relname, c.relacl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'event_crypto' AND c.relkind IN ('r', 'v') ORDER BY 1;
-- the cache-invalidation triggers: per statement (always), and per row in replica mode (logical replication apply)
SELECT tgrelid::regclass, tgname, tgtype, tgenabled FROM pg_trigger
WHERE tgrelid IN ('event_crypto.keys'::regclass, 'event_crypto.protected_columns'::regclass, 'event_crypto.blind_indexes'::regclass)
  AND NOT tgisinternal ORDER BY 1, 2;
-- GUCs: the master key ones postmaster-level (and superuser-only to read), audit_decrypt superuser-only to set
SELECT name, context, setting <> '' AS is_set FROM pg_settings WHERE name LIKE 'event_crypto.%' ORDER BY 1;
