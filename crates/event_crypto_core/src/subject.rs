//! The key ids of subjects. A protected table keyed per subject encrypts the rows of subject `s` under
//! `prefix + escape(s)` (generation 1) and, once that key was shredded and the table accepts new keys for
//! forgotten subjects, under `prefix + escape(s) + "#" + n` (generation n ≥ 2).
//!
//! `escape` writes `%` as `%25` and `#` as `%23` and leaves every other character alone, so a subject id without
//! those two characters keeps the key id it always had, and `#` appears in the part after the prefix only as the
//! generation separator. The naming is injective: two different (subject, generation) pairs never share a key id
//! under one prefix ([`parse_subject_key_id`] inverts it), and prefixes that are not prefixes of one another
//! ([`prefixes_overlap`]) never share a key id either. Before this naming, `subject:dave#2` was both the first
//! key of subject `dave#2` and the second generation of `dave`, and forgetting `dave` destroyed the other's data.

use crate::envelope::{check_key_id, MAX_KEY_ID_LEN};
use crate::error::{Error, Result};
use std::borrow::Cow;

/// The separator between a subject's escaped id and its generation number.
pub const GENERATION_SEPARATOR: char = '#';

/// The longest key prefix, in bytes (a key id holds at most 255).
pub const MAX_PREFIX_LEN: usize = 128;

/// The highest generation number a subject key can have.
pub const MAX_GENERATION: u32 = 1_000_000;

/// The subject id as it appears in key ids: `%` → `%25`, `#` → `%23`, everything else unchanged.
pub fn escape_subject(subject: &str) -> Cow<'_, str> {
    if !subject.contains(['%', '#']) {
        return Cow::Borrowed(subject);
    }
    let mut out = String::with_capacity(subject.len() + 8);
    for c in subject.chars() {
        match c {
            '%' => out.push_str("%25"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Checks a subject id: not empty, no control characters (key ids cannot hold them).
pub fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty() {
        return Err(Error::invalid_argument("a subject id must not be an empty string"));
    }
    if subject.chars().any(char::is_control) {
        return Err(Error::invalid_argument(
            "a subject id must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a key prefix of a protected table: 1 to 128 bytes without control characters.
pub fn check_key_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(Error::invalid_argument("key_prefix must not be empty")
            .with_detail(
                "With an empty prefix the key id of a subject is its bare id, which any other key id can equal.",
            )
            .with_hint("Use a prefix such as 'subject:' or 'tenant:'."));
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(Error::invalid_argument(format!(
            "key_prefix is {} bytes long; the limit is {MAX_PREFIX_LEN}",
            prefix.len()
        )));
    }
    if prefix.chars().any(char::is_control) {
        return Err(Error::invalid_argument(
            "key_prefix must not contain control characters",
        ));
    }
    Ok(())
}

/// Whether two different prefixes could name the same key id (one is a prefix of the other, as `tenant:` and
/// `tenant:eu:` are: subject `eu:7` of the first and subject `7` of the second would both be `tenant:eu:7`).
pub fn prefixes_overlap(a: &str, b: &str) -> bool {
    a != b && (a.starts_with(b) || b.starts_with(a))
}

/// The key id of generation `generation` (1 for the first key) of `subject` under `prefix`.
pub fn subject_key_id(prefix: &str, subject: &str, generation: u32) -> Result<String> {
    check_subject(subject)?;
    if !(1..=MAX_GENERATION).contains(&generation) {
        return Err(Error::invalid_argument(format!(
            "a key generation must be between 1 and {MAX_GENERATION}"
        )));
    }
    let escaped = escape_subject(subject);
    let mut id = String::with_capacity(prefix.len() + escaped.len() + 8);
    id.push_str(prefix);
    id.push_str(&escaped);
    if generation > 1 {
        id.push(GENERATION_SEPARATOR);
        id.push_str(&generation.to_string());
    }
    if id.len() > MAX_KEY_ID_LEN {
        return Err(Error::invalid_argument(format!(
            "the key id of this subject would be {} bytes long; the limit is {MAX_KEY_ID_LEN}",
            id.len()
        ))
        .with_hint("Use shorter subject ids (an opaque id rather than personal data) or a shorter key_prefix."));
    }
    check_key_id(&id)?;
    Ok(id)
}

/// The subject and generation a key id names under `prefix`, or `None` when it is not a key id
/// [`subject_key_id`] makes (another prefix, an escape other than `%23`/`%25`, a bare `#`, a generation number
/// that is not canonical, below 2 or too high).
pub fn parse_subject_key_id(prefix: &str, key_id: &str) -> Option<(String, u32)> {
    let rest = key_id.strip_prefix(prefix)?;
    let (escaped, generation) = match rest.split_once(GENERATION_SEPARATOR) {
        None => (rest, 1),
        Some((s, n)) => {
            let canonical = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0');
            let g: u32 = if canonical { n.parse().ok()? } else { return None };
            if !(2..=MAX_GENERATION).contains(&g) {
                return None;
            }
            (s, g)
        }
    };
    let mut subject = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => match (chars.next(), chars.next()) {
                (Some('2'), Some('5')) => subject.push('%'),
                (Some('2'), Some('3')) => subject.push('#'),
                _ => return None,
            },
            '#' => return None,
            c => subject.push(c),
        }
    }
    if subject.is_empty() || subject.chars().any(char::is_control) {
        return None;
    }
    Some((subject, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn plain_subjects_keep_their_key_ids() {
        assert_eq!(subject_key_id("subject:", "alice", 1).unwrap(), "subject:alice");
        assert_eq!(subject_key_id("subject:", "alice", 2).unwrap(), "subject:alice#2");
        assert_eq!(subject_key_id("tenant:", "42", 17).unwrap(), "tenant:42#17");
    }

    #[test]
    fn the_collision_of_the_old_naming_is_gone() {
        // dave's second generation and subject "dave#2" used to be the same key id
        let gen2 = subject_key_id("subject:", "dave", 2).unwrap();
        let other = subject_key_id("subject:", "dave#2", 1).unwrap();
        assert_eq!(gen2, "subject:dave#2");
        assert_eq!(other, "subject:dave%232");
        assert_ne!(gen2, other);
        assert_eq!(parse_subject_key_id("subject:", &gen2), Some(("dave".into(), 2)));
        assert_eq!(parse_subject_key_id("subject:", &other), Some(("dave#2".into(), 1)));
    }

    #[test]
    fn non_canonical_key_ids_belong_to_no_subject() {
        for k in [
            "subject:",
            "subject:a#",
            "subject:a#1",
            "subject:a#01",
            "subject:a#0",
            "subject:a#x",
            "subject:a#2#3",
            "subject:#2",
            "subject:a%",
            "subject:a%2",
            "subject:a%41",
            "subject:a%2a",
            "subject:a%23#",
            "other:alice",
            "subject:a#99999999999",
        ] {
            assert_eq!(parse_subject_key_id("subject:", k), None, "{k}");
        }
    }

    #[test]
    fn bad_subjects_and_prefixes_are_refused() {
        assert!(subject_key_id("subject:", "", 1).is_err());
        assert!(subject_key_id("subject:", "a\nb", 1).is_err());
        assert!(subject_key_id("subject:", "a", 0).is_err());
        assert!(subject_key_id("subject:", &"x".repeat(247), 1).is_ok());
        assert!(subject_key_id("subject:", &"x".repeat(248), 1).is_err());
        assert!(subject_key_id("subject:", &"#".repeat(100), 1).is_err()); // 300 bytes once escaped
        assert!(check_key_prefix("").is_err());
        assert!(check_key_prefix("a\tb").is_err());
        assert!(check_key_prefix(&"p".repeat(129)).is_err());
        assert!(check_key_prefix("subject:").is_ok());
        assert!(prefixes_overlap("tenant:", "tenant:eu:"));
        assert!(prefixes_overlap("tenant:eu:", "tenant:"));
        assert!(!prefixes_overlap("tenant:", "tenant:"));
        assert!(!prefixes_overlap("tenant:", "subject:"));
    }

    /// Every subject id over an alphabet full of the characters that matter, every generation up to 4: no two
    /// share a key id, and parsing gives back the pair.
    #[test]
    fn injective_over_adversarial_subject_ids() {
        let alphabet = ['a', '#', '%', '2', '3', '5', '0', 'é', ':'];
        let mut subjects = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..5 {
            let mut next = Vec::new();
            for s in &subjects {
                for c in alphabet {
                    let mut t = s.clone();
                    t.push(c);
                    next.push(t);
                }
            }
            all.extend(next.iter().cloned());
            subjects = next;
        }
        let mut seen: HashMap<String, (String, u32)> = HashMap::new();
        for s in &all {
            for g in 1..=4 {
                let id = subject_key_id("subject:", s, g).unwrap();
                assert_eq!(parse_subject_key_id("subject:", &id), Some((s.clone(), g)), "{id}");
                if let Some(prev) = seen.insert(id.clone(), (s.clone(), g)) {
                    panic!("{id} names both {prev:?} and {:?}", (s, g));
                }
            }
        }
        assert_eq!(seen.len(), all.len() * 4);
    }
}
