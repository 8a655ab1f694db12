//! In-process tests of internals (the SQL API is covered by pg_regress, several sessions by the integration tests).
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::error::sqlstate;
    use crate::keys;
    use event_crypto_core::ErrorKind;
    use pgrx::prelude::*;
    use pgrx::IntoDatum;
    use pgrx::PgSqlErrorCode;

    #[pg_test]
    fn master_key_is_loaded_from_the_command() {
        let id = Spi::get_one::<String>("SELECT event_crypto.master_key_id()")
            .unwrap()
            .unwrap();
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[pg_test]
    fn the_cache_serves_repeat_lookups_and_is_dropped_when_the_catalog_changes() {
        Spi::run("SELECT event_crypto.create_key('cache-1'), event_crypto.create_key('cache-2')").unwrap();
        keys::invalidate_keys();
        let a = keys::lookup("cache-1").unwrap();
        let b = keys::lookup("cache-1").unwrap();
        assert!(
            std::rc::Rc::ptr_eq(&a, &b),
            "the second lookup is served from the cache"
        );
        keys::lookup("cache-2").unwrap();
        assert_eq!(keys::cached_count(), 2);
        // Any change to the catalog, even one made by hand, fires the statement trigger.
        Spi::run("UPDATE event_crypto.keys SET created_by = created_by WHERE key_id = 'cache-2'").unwrap();
        assert_eq!(keys::cached_count(), 0);
        keys::lookup("cache-1").unwrap();
        Spi::run("SELECT event_crypto.shred_key('cache-1')").unwrap();
        assert_eq!(keys::cached_count(), 0);
        assert!(keys::lookup("cache-1").unwrap().shredded);
    }

    #[pg_test]
    fn unknown_keys_are_not_cached() {
        keys::invalidate_keys();
        let e = keys::lookup("never-created").err().expect("unknown");
        assert_eq!(e.kind(), ErrorKind::UnknownKey);
        assert_eq!(keys::cached_count(), 0);
    }

    #[pg_test]
    fn nonces_never_repeat_within_one_insert_select() {
        Spi::run("SELECT event_crypto.create_key('nonce')").unwrap();
        let distinct = Spi::get_one::<i64>(
            "SELECT count(DISTINCT substr(p->>'v', 1, 40)) FROM (
               SELECT event_crypto.encrypt_fields('{\"v\":\"same\"}', '{v}', 'nonce') AS p FROM generate_series(1, 5000)) s",
        )
        .unwrap()
        .unwrap();
        // the first 40 characters cover the header and the nonce
        assert_eq!(distinct, 5000);
    }

    #[pg_test]
    fn no_error_kind_maps_to_an_internal_error() {
        for k in ErrorKind::ALL {
            assert_ne!(sqlstate(k), PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "{k:?}");
        }
    }

    /// The binary jsonb conversion agrees with PostgreSQL's text form both ways, on documents that exercise every
    /// JSON type, numbers PostgreSQL keeps digit for digit, escapes, unicode, empty containers and scalar roots.
    #[pg_test]
    fn binary_jsonb_conversion_matches_the_text_form() {
        use crate::jsonb::datum_to_value;
        let samples = [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#,
            r#"{"n":12.50,"big":123456789012345678901234567890.000001,"neg":-0.0,"exp":1e-7,"int":-42}"#,
            r#"{"s":"quote \" backslash \\ tab \t newline \n unicode \u00e9 ✓ \ud83d\ude00"}"#,
            r#"{"":"empty key","a.b":{"[*]":[]},"z":{},"arr":[[],[{}],[[1]]]}"#,
            r#"[1,"two",{"three":3},[4]]"#,
            r#""just a string""#,
            r#"3.14159265358979323846264338327950288"#,
            r#"true"#,
            r#"null"#,
            r#"{"long":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ];
        for text in samples {
            let datum = Spi::get_one_with_args::<pgrx::JsonB>("SELECT $1::jsonb", &[text.into()])
                .unwrap()
                .unwrap();
            let via_text = datum.0;
            let original: pgrx::pg_sys::Datum = pgrx::JsonB(via_text.clone()).into_datum().unwrap();
            // SAFETY: a non-null jsonb datum built just above.
            let via_binary = unsafe { datum_to_value(original) };
            assert_eq!(via_binary, via_text, "{text}");
            // The parameter is built by value_to_datum (Jsonb's IntoDatum).
            let rebuilt = crate::jsonb::Jsonb(via_binary.clone());
            let same = Spi::get_one_with_args::<bool>(
                "SELECT $1::jsonb = $2::jsonb AND $1::jsonb::text = $2::jsonb::text",
                &[text.into(), rebuilt.into()],
            )
            .unwrap()
            .unwrap();
            assert!(same, "{text}");
        }
    }

    #[pg_test(error = "encryption key \"tenant-x\" does not exist")]
    fn encrypting_with_an_unknown_key_raises() {
        Spi::run("SELECT event_crypto.encrypt_fields('{\"a\":1}', '{a}', 'tenant-x')").unwrap();
    }
}
