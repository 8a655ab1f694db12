-- Edge values: a 100 MB field, a field past jsonb's string limit, arrays of 100,000 elements, duplicate keys,
-- Unicode normalisation forms.
\set VERBOSITY sqlstate
\set ON_ERROR_ROLLBACK on
BEGIN;
SELECT event_crypto.create_key('edge');
-- a 100 MB string field: encrypted (the envelope is ~133 MB of base64) and decrypted back
CREATE TEMP TABLE big AS
SELECT event_crypto.encrypt_fields(jsonb_build_object('blob', repeat('x', 100000000), 'small', 's'), '{blob}', 'edge') AS p;
SELECT octet_length(p->>'blob') AS envelope_bytes, p->>'small' AS small FROM big;
SELECT length(d->>'blob') AS blob_length, md5(d->>'blob') = md5(repeat('x', 100000000)) AS same
FROM (SELECT event_crypto.decrypt_fields(p) AS d FROM big) s;
DROP TABLE big;
-- 210 MB: its envelope would not fit a jsonb string (268,435,455 bytes): refused cleanly
SELECT event_crypto.encrypt_fields(jsonb_build_object('blob', repeat('x', 210000000)), '{blob}', 'edge') IS NULL;  -- 54000
SELECT event_crypto.encrypt_value(to_jsonb(repeat('x', 210000000)), 'edge') IS NULL;                              -- 54000
-- arrays of 100,000 elements: every element's field encrypted, each bound to its own index
CREATE TEMP TABLE wide AS
SELECT jsonb_build_object('items', jsonb_agg(jsonb_build_object('card', 'c' || i, 'qty', i) ORDER BY i)) AS doc
FROM generate_series(1, 100000) i;
CREATE TEMP TABLE wide_enc AS SELECT event_crypto.encrypt_fields(doc, '{items[*].card}', 'edge') AS p FROM wide;
SELECT jsonb_array_length(p->'items') AS elements,
       (SELECT count(*) FROM jsonb_array_elements(p->'items') e WHERE e->>'card' LIKE '$ec2$%') AS encrypted,
       (SELECT count(DISTINCT e->>'card') FROM jsonb_array_elements(p->'items') e) AS distinct_envelopes
FROM wide_enc;
SELECT event_crypto.decrypt_fields(p) = (SELECT doc FROM wide) AS round_trip FROM wide_enc;
-- two elements swapped: each envelope is bound to its index
SELECT event_crypto.decrypt_fields(jsonb_set(jsonb_set(p, '{items,0,card}', p#>'{items,1,card}'), '{items,1,card}', p#>'{items,0,card}'))
FROM wide_enc;                                                                    -- XX001
-- an array of 100,000 strings encrypted as one value and as 100,000 values
SELECT length(event_crypto.encrypt_fields(jsonb_build_object('a', (SELECT jsonb_agg(i::text) FROM generate_series(1, 100000) i)), '{a}', 'edge')->>'a') > 100000 AS one_envelope;
SELECT jsonb_array_length(event_crypto.encrypt_fields(jsonb_build_object('a', (SELECT jsonb_agg(i::text) FROM generate_series(1, 100000) i)), '{a[*]}', 'edge')->'a') AS envelopes;
-- duplicate keys: jsonb keeps the last one, and that is what is encrypted and comes back
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{"email": "first@x.io", "email": "last@x.io"}', '{email}', 'edge')) AS last_wins;
-- Unicode: values are encrypted byte for byte, never normalised: NFC and NFD forms of the same text decrypt to
-- their own bytes, and their blind index values differ unless the application normalises (documented)
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields(jsonb_build_object('n', normalize('é', NFD)), '{n}', 'edge'))->>'n' = normalize('é', NFD) AS nfd_kept,
       event_crypto.decrypt_fields(event_crypto.encrypt_fields(jsonb_build_object('n', normalize('é', NFC)), '{n}', 'edge'))->>'n' = normalize('é', NFC) AS nfc_kept,
       event_crypto.blind_index(normalize('é', NFC), 'edge') = event_crypto.blind_index(normalize('é', NFD), 'edge') AS index_equal_unnormalised,
       event_crypto.blind_index(normalize(normalize('é', NFD), NFC), 'edge') = event_crypto.blind_index(normalize('é', NFC), 'edge') AS index_equal_normalised;
-- keys and paths in other scripts, emoji, NUL-free control characters as values
SELECT event_crypto.decrypt_fields(event_crypto.encrypt_fields('{"名前": "山田", "emoji": "🔐👍", "ctl": "a\u0001b\tc"}', '{名前,emoji,ctl}', 'edge'))
     = '{"名前": "山田", "emoji": "🔐👍", "ctl": "a\u0001b\tc"}' AS round_trip;
ROLLBACK;
