-- Field encryption: round trips of every JSON type under both algorithms, paths, NULLs, bad input.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('aes');
SELECT event_crypto.create_key('chacha', 'chacha20-poly1305');
CREATE TEMP TABLE docs (name text, doc jsonb);
INSERT INTO docs VALUES ('all-types', '{"s":"a@x.io","n":12.50,"i":-7,"big":123456789012345678901234567890.000001,"t":true,"f":false,"z":null,"e":"","o":{"k":[1,{"x":"y"}]},"a":[1,"two",null],"u":"ünïcødé ✓","keep":"plain"}');
CREATE TEMP TABLE enc AS
SELECT k AS key_id, event_crypto.encrypt_fields(doc, ARRAY['s','n','i','big','t','f','z','e','o','a','u'], k) AS doc
FROM docs, unnest(ARRAY['aes','chacha']) AS k;
-- every selected field is an envelope string, the others are untouched
SELECT key_id, (SELECT count(*) FROM jsonb_each(doc) WHERE jsonb_typeof(value) = 'string' AND value->>0 LIKE '$ec2$%') AS envelopes,
       doc->'keep' AS keep
FROM enc ORDER BY key_id;
-- round trip restores the exact document (types and numeric text preserved)
SELECT e.key_id, event_crypto.decrypt_fields(e.doc) = d.doc AS round_trip,
       event_crypto.decrypt_fields(e.doc)->'n' AS n, event_crypto.decrypt_fields(e.doc)->'big' AS big
FROM enc e, docs d ORDER BY e.key_id;
-- no plaintext remains in the stored form
-- (sentinels hold characters outside the base64url alphabet, so ciphertext cannot match them by chance)
SELECT key_id, doc::text LIKE '%a@x.io%' OR doc::text LIKE '%ünïcødé%' OR doc::text LIKE '%"two"%' AS leaks FROM enc ORDER BY 1;
-- the same value twice gives different ciphertexts
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'aes') <> event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'aes') AS differs;
SELECT count(DISTINCT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'aes')) AS distinct_of_1000 FROM generate_series(1, 1000);

-- paths: nested, wildcard, index, quoted keys with dots, absent paths, top-level arrays
SELECT event_crypto.decrypt_fields(p) = '{"a":{"b":"1","c":"2"},"items":[{"card":"4111"},{"card":"5500","qty":2},{"x":1}],"a.b":{"c":"d"},"l":[0,1,2]}' AS ok,
       (p->'a'->>'b') LIKE '$ec2$%' AS nested, (p->'a'->>'c') = '2' AS sibling_untouched,
       (p->'items'->0->>'card') LIKE '$ec2$%' AND (p->'items'->1->>'card') LIKE '$ec2$%' AS wildcard,
       p->'items'->1->'qty' AS qty, (p->'a.b'->>'c') LIKE '$ec2$%' AS quoted,
       (p->'l'->>1) LIKE '$ec2$%' AND (p->'l'->>0) = '0' AS indexed
FROM (SELECT event_crypto.encrypt_fields(
        '{"a":{"b":"1","c":"2"},"items":[{"card":"4111"},{"card":"5500","qty":2},{"x":1}],"a.b":{"c":"d"},"l":[0,1,2]}',
        ARRAY['a.b', 'items[*].card', '"a.b".c', 'l[1]', 'missing', 'a.b.c.d', 'items[7].card', 'a[*]'], 'aes') AS p) s;
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('[{"e":"x"},{"e":"y"}]', ARRAY['[*].e'], 'aes')) AS top_level_array;
-- an envelope is never encrypted twice (replays, restores, overlapping paths)
SELECT event_crypto.encrypt_fields(p, '{s}', 'aes') = p AS unchanged, event_crypto.encrypt_fields(p, '{s}', 'chacha') = p AS unchanged_other_key
FROM (SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'aes') AS p) s;
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{"a":{"b":"x"}}', ARRAY['a','a.b'], 'aes')) AS parent_then_child;
-- empty field list and empty documents
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{}', 'aes') AS no_fields, event_crypto.encrypt_fields('{}', '{s}', 'aes') AS empty_object,
       event_crypto.decrypt_fields('{}') AS decrypt_empty, event_crypto.decrypt_fields('{"plain":"$ec is just text"}') AS not_an_envelope;

-- contexts
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'aes', 'stream-1'), 'stream-1') AS with_context;

-- single values
SELECT event_crypto.decrypt_value(event_crypto.encrypt_value(v, 'chacha', 'c'), 'c') = v AS ok, jsonb_typeof(v)
FROM unnest(ARRAY['"s"', '1.50', 'true', 'null', '{"a":[1]}', '[]', '""']::jsonb[]) AS v;
SELECT event_crypto.encrypt_value('"x"', 'aes') LIKE '$ec2$%' AS envelope;

-- NULL in, NULL out; NULL where a value is required is an error
SELECT event_crypto.encrypt_fields(NULL, '{s}', 'aes') IS NULL AS null_payload, event_crypto.decrypt_fields(NULL) IS NULL AS null_decrypt,
       event_crypto.encrypt_value(NULL, 'aes') IS NULL AS null_value, event_crypto.decrypt_value(NULL) IS NULL AS null_envelope;
SELECT event_crypto.encrypt_fields('{"s":null}', '{s}', 'aes')->>'s' LIKE '$ec2$%' AS json_null_is_encrypted;
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', NULL);          -- 22004
SELECT event_crypto.encrypt_fields('{"s":"x"}', NULL, 'aes');          -- 22004
SELECT event_crypto.encrypt_fields('{"s":"x"}', ARRAY['s', NULL], 'aes'); -- 22004
SELECT event_crypto.encrypt_value('1', NULL);                          -- 22004
SELECT event_crypto.decrypt_fields('{}', NULL, NULL);                  -- 22004

-- bad input
SELECT event_crypto.encrypt_fields('"a string"', '{s}', 'aes');        -- 22023 not an object or array
SELECT event_crypto.encrypt_fields('42', '{s}', 'aes');                -- 22023
SELECT event_crypto.encrypt_fields('null', '{s}', 'aes');              -- 22023
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', '');            -- 22023 empty key id
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'nope');        -- 42704 unknown key
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'aes', '');     -- 22023 empty context
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{""}', 'aes');        -- 42601 empty path
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{a..b}', 'aes');      -- 42601
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{"a["}', 'aes');      -- 42601
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{"a[x]"}', 'aes');    -- 42601
SELECT event_crypto.encrypt_fields('{"s":"x"}', '{s}', 'aes'::text, 42::text) IS NOT NULL AS ok;
SELECT event_crypto.encrypt_fields('{"s":"x"}'::text, '{s}', 'aes');   -- 42883 wrong type
SELECT event_crypto.encrypt_fields('{"s":"x"}', 's', 'aes');           -- 22P02 not an array literal
SELECT event_crypto.decrypt_fields('{}', NULL, 'drop');                -- 22023 unknown policy
SELECT event_crypto.decrypt_value('not an envelope');                  -- 22P02
SELECT event_crypto.decrypt_value('');                                 -- 22P02
SELECT event_crypto.decrypt_fields('{"s":"$ec1$"}');                   -- 22P02 claims to be an envelope
SELECT event_crypto.decrypt_fields('{"s":"$ec2$"}');                   -- 22P02 claims to be an envelope
SELECT event_crypto.decrypt_fields('{"s":"$ec7$AAAA"}');               -- 0A000 unknown format version

-- huge values: a 10 MB string round trips
SELECT length(event_crypto.decrypt_fields(event_crypto.encrypt_fields(jsonb_build_object('s', repeat('x', 10000000)), '{s}', 'aes'))->>'s') AS len;
-- deeply nested path
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{"a":{"b":{"c":{"d":{"e":"deep"}}}}}', '{a.b.c.d.e}', 'aes')) AS deep;
-- numbers keep their exact digits and numeric value: large and small exponents, trailing zeros, negative zero,
-- every jsonb number form PostgreSQL accepts; the decrypted document equals the original byte for byte (text)
WITH d(doc) AS (VALUES ('{"a":1e400,"b":-1.5e-300,"c":0.000100,"d":-0.0,"e":12345678901234567890123456789,"f":[1E2,2.50e+1]}'::jsonb))
SELECT doc::text, event_crypto.decrypt_fields(event_crypto.encrypt_fields(doc, '{a,b,c,d,e,f}', 'aes'))::text = doc::text AS same
FROM d;
-- strings that need escaping, and wide objects and arrays (more than 32 members: jsonb stores offsets, not lengths)
WITH d(doc) AS (SELECT jsonb_build_object('s', E'quote " backslash \\ tab \t nl \n \u0001 ünï ✓',
                                          'wide', (SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 70) i),
                                          'arr', (SELECT jsonb_agg(jsonb_build_object('v', 'x' || i)) FROM generate_series(1, 70) i)))
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields(doc, '{s,wide.k33,arr[*].v,arr[40]}', 'aes')) = doc AS same,
       (SELECT count(*) FROM jsonb_path_query(event_crypto.encrypt_fields(doc, '{s,wide.k33,arr[*].v}', 'aes'), 'strict $.**') v
        WHERE v #>> '{}' LIKE '$ec2$%') AS envelopes
FROM d;
-- nesting beyond 1,000 levels is refused, not a crash
SELECT event_crypto.encrypt_fields(jsonb_build_object('a', (repeat('[', 1200) || repeat(']', 1200))::jsonb), '{a}', 'aes');  -- 54000
SELECT event_crypto.decrypt_fields((repeat('[', 1200) || repeat(']', 1200))::jsonb);  -- 54000
SELECT jsonb_array_length(event_crypto.encrypt_fields((repeat('[', 900) || repeat(']', 900))::jsonb, '{[5]}', 'aes')) AS kept;
ROLLBACK;
