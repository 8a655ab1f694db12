-- Catalog audit: volatility, strictness, parallel safety, security, grants and placement of every function.
SELECT p.proname, p.pronargs AS nargs,
       p.provolatile AS vol, p.proparallel AS par, p.prosecdef AS secdef, p.proisstrict AS strict
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' ORDER BY 1, 2;
-- nothing that draws randomness or reads keys is IMMUTABLE: only the pure argument checkers are
SELECT p.proname AS immutable_functions FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' AND p.provolatile = 'i' ORDER BY 1;
-- plpgsql functions pin their search_path
SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = 'event_crypto' AND l.lanname = 'plpgsql' ORDER BY 1;
-- no function is executable by PUBLIC; nothing is SECURITY DEFINER
SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'event_crypto' AND (has_function_privilege('public', p.oid, 'EXECUTE') OR p.prosecdef);
-- who may execute what
SELECT r.rolname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
CROSS JOIN (VALUES ('event_crypto_admin'), ('event_crypto_encryptor'), ('event_crypto_decryptor')) AS r(rolname)
WHERE n.nspname = 'event_crypto' AND has_function_privilege(r.rolname, p.oid, 'EXECUTE') ORDER BY 1, 2;
-- no table or view privileges for PUBLIC
SELECT c.relname, c.relacl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'event_crypto' AND c.relkind IN ('r', 'v') ORDER BY 1;
-- the cache-invalidation trigger is in place
SELECT tgrelid::regclass, tgname, tgtype FROM pg_trigger
WHERE tgrelid IN ('event_crypto.keys'::regclass, 'event_crypto.protected_columns'::regclass, 'event_crypto.blind_indexes'::regclass)
  AND NOT tgisinternal ORDER BY 1, 2;
-- GUCs: postmaster context, superuser only
SELECT name, context, setting <> '' AS is_set FROM pg_settings WHERE name LIKE 'event_crypto.%' ORDER BY 1;
