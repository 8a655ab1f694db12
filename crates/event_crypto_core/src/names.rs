//! Names of the objects event_crypto makes beside a user's table (the protect trigger of a column): PostgreSQL
//! truncates identifiers to 63 bytes, so `prefix + column` for a long column name would be cut, and two long
//! column names could end up with the same trigger name. A name that does not fit keeps as much of the column
//! name as fits and ends in a digest of the whole column name, so it is unique and stable.

use sha2::{Digest, Sha256};

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER: usize = 63;

/// `prefix` followed by `name`, or, when that is longer than [`MAX_IDENTIFIER`] bytes, by as much of `name` as
/// fits (whole characters), `_` and 8 hex digits of SHA-256(`name`).
pub fn derived_name(prefix: &str, name: &str) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= MAX_IDENTIFIER {
        return full;
    }
    let digest = Sha256::digest(name.as_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let room = MAX_IDENTIFIER.saturating_sub(prefix.len() + 1 + tag.len());
    let mut cut = room.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}_{tag}", &name[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept() {
        assert_eq!(
            derived_name("event_crypto_protect_", "payload"),
            "event_crypto_protect_payload"
        );
        let fits = "x".repeat(MAX_IDENTIFIER - 21);
        assert_eq!(derived_name("event_crypto_protect_", &fits).len(), MAX_IDENTIFIER);
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = format!("{}_a", "payload_of_a_very_long_column_name_indeed_".repeat(2));
        let b = format!("{}_b", "payload_of_a_very_long_column_name_indeed_".repeat(2));
        let (na, nb) = (
            derived_name("event_crypto_protect_", &a),
            derived_name("event_crypto_protect_", &b),
        );
        assert!(na.len() <= MAX_IDENTIFIER && nb.len() <= MAX_IDENTIFIER);
        assert_ne!(na, nb);
        assert_eq!(na, derived_name("event_crypto_protect_", &a), "stable");
    }

    #[test]
    fn multibyte_names_are_cut_on_character_boundaries() {
        let n = "é".repeat(40);
        let d = derived_name("event_crypto_protect_", &n);
        assert!(d.len() <= MAX_IDENTIFIER);
        assert!(d.starts_with("event_crypto_protect_é"));
    }
}
