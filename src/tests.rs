//! In-process tests of internals (the SQL API is covered by pg_regress, sessions by the integration tests).
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn master_key_is_loaded_from_the_command() {
        let id = Spi::get_one::<String>("SELECT event_crypto.master_key_id()")
            .unwrap()
            .unwrap();
        assert_eq!(id.len(), 16);
    }
}
