-- The token vault (issue 17, src/tokens.rs): the value each token stands for, encrypted under the data key of the
-- token's key id (an envelope of format 2, bound to the token as associated data). The key id is named by its
-- handle, which never changes and which a shredded key id's tombstone keeps: nothing here names a key id or a
-- subject. value_digest: a keyed digest of the value (the key id's token key, its own label), by which tokenize()
-- finds the token a value already has. Written by the catalog owner only (tokenize, forget_subject, the
-- maintenance action token_purge); read by detokenize and export_subject.
CREATE TABLE event_crypto.token_vault (
    token        text        PRIMARY KEY CONSTRAINT token_vault_token_check CHECK (pg_catalog.octet_length(token) BETWEEN 1 AND 270),
    key_handle   bigint      NOT NULL CONSTRAINT token_vault_key_handle_check CHECK (key_handle <> 0),
    key_version  integer     NOT NULL CONSTRAINT token_vault_key_version_check CHECK (key_version >= 1),
    format       text        NOT NULL CONSTRAINT token_vault_format_check CHECK (format IN ('opaque', 'card', 'email')),
    value_digest bytea       NOT NULL CONSTRAINT token_vault_value_digest_check CHECK (pg_catalog.octet_length(value_digest) = 32),
    value        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT token_vault_one_token UNIQUE (key_handle, format, value_digest)
);
COMMENT ON TABLE event_crypto.token_vault IS
    'Tokens and the values they stand for, encrypted under the key id (named by its handle). Written only by tokenize(), forget_subject() and the maintenance run.';
SELECT pg_catalog.pg_extension_config_dump('event_crypto.token_vault', '');
