//! Field paths. A *pattern* (`address.street`, `items[*].card`, `"a.b".c`, `lines[0].sku`) selects fields of a
//! document; a *location* is the concrete place of one field (`items[2].card`), encoded in bytes for the AEAD's
//! associated data so an envelope cannot be moved to another field.
//!
//! Grammar of a pattern:
//! ```text
//! path    := first ( '.' key | '[' index ']' )*
//! first   := key | '[' index ']'
//! key     := bare | quoted
//! bare    := one or more characters other than . [ ] " and control characters
//! quoted  := '"' ( any character but " and \ | '\"' | '\\' )* '"'
//! index   := '*' | decimal digits
//! ```

use crate::error::{Error, ErrorKind, Result};

/// One step of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    Wildcard,
}

/// A parsed field path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    steps: Vec<Step>,
}

/// The longest pattern accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

fn path_error(text: &str, reason: &str) -> Error {
    let shown = crate::aead::truncate_for_message(text);
    Error::new(ErrorKind::InvalidPath, format!("invalid field path \"{shown}\""))
        .with_detail(reason.to_string())
        .with_hint("Use dotted keys (address.street), array steps ([*] or [0]) and double quotes around keys that contain dots, brackets or quotes (\"a.b\".c).")
}

impl FieldPath {
    pub fn parse(text: &str) -> Result<FieldPath> {
        if text.is_empty() {
            return Err(path_error(text, "the path is empty"));
        }
        if text.len() > MAX_PATH_LEN {
            return Err(path_error(text, "the path is longer than 4096 bytes"));
        }
        let b = text.as_bytes();
        let mut i = 0;
        let mut steps = Vec::new();
        let mut first = true;
        while i < b.len() {
            match b[i] {
                b'[' => {
                    let close = text[i + 1..]
                        .find(']')
                        .map(|p| p + i + 1)
                        .ok_or_else(|| path_error(text, "an opening [ has no closing ]"))?;
                    let inner = &text[i + 1..close];
                    if inner == "*" {
                        steps.push(Step::Wildcard);
                    } else if !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit()) {
                        let n: usize = inner
                            .parse()
                            .map_err(|_| path_error(text, "an array index is out of range"))?;
                        steps.push(Step::Index(n));
                    } else {
                        return Err(path_error(
                            text,
                            "an array step must be [*] or [N] with a non-negative integer N",
                        ));
                    }
                    i = close + 1;
                }
                b'.' if !first => {
                    i += 1;
                    let (key, next) = parse_key(text, i)?;
                    steps.push(Step::Key(key));
                    i = next;
                }
                b'.' => return Err(path_error(text, "the path starts with a dot")),
                _ if first => {
                    let (key, next) = parse_key(text, i)?;
                    steps.push(Step::Key(key));
                    i = next;
                }
                _ => return Err(path_error(text, "expected . or [ between steps")),
            }
            first = false;
        }
        Ok(FieldPath {
            text: text.to_string(),
            steps,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
    /// Whether the pattern can select more than one field.
    pub fn has_wildcard(&self) -> bool {
        self.steps.contains(&Step::Wildcard)
    }
}

fn parse_key(text: &str, start: usize) -> Result<(String, usize)> {
    let b = text.as_bytes();
    if start >= b.len() {
        return Err(path_error(text, "the path ends with a dot"));
    }
    if b[start] == b'"' {
        let mut out = String::new();
        let mut chars = text[start + 1..].char_indices();
        while let Some((off, c)) = chars.next() {
            match c {
                '"' => return Ok((out, start + 1 + off + 1)),
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    _ => {
                        return Err(path_error(
                            text,
                            "only \\\" and \\\\ may be escaped inside a quoted key",
                        ))
                    }
                },
                c => out.push(c),
            }
        }
        return Err(path_error(text, "a quoted key has no closing quote"));
    }
    let mut end = start;
    for (off, c) in text[start..].char_indices() {
        if matches!(c, '.' | '[' | ']' | '"') || c.is_control() {
            if c == ']' || c == '"' || c.is_control() {
                return Err(path_error(
                    text,
                    "unexpected character in a key; quote keys that contain . [ ] or \"",
                ));
            }
            break;
        }
        end = start + off + c.len_utf8();
    }
    if end == start {
        return Err(path_error(
            text,
            "a key is empty (two dots in a row, or a dot before [)",
        ));
    }
    Ok((text[start..end].to_string(), end))
}

/// The concrete location of a field while walking a document, kept in its associated-data encoding:
/// per step `0x01 u32be(len) key-bytes` or `0x02 u32be(index)`. The root location is empty.
/// A set of patterns compiled into a tree, so a document is walked once however many patterns there are.
///
/// A node is *selected* when a pattern ends there; a selected node's whole value is encrypted as one, so a
/// pattern below it (`address` and `address.street`) adds nothing. An index step (`items[0]`) also receives
/// everything a wildcard step (`items[*]`) at the same place selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    root: SelectorNode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectorNode {
    selected: bool,
    keys: Vec<(String, SelectorNode)>,
    indexes: Vec<(usize, SelectorNode)>,
    wildcard: Option<Box<SelectorNode>>,
}

impl SelectorNode {
    pub fn is_selected(&self) -> bool {
        self.selected
    }
    /// The node for an object member.
    pub fn key(&self, key: &[u8]) -> Option<&SelectorNode> {
        self.keys.iter().find(|(k, _)| k.as_bytes() == key).map(|(_, n)| n)
    }
    /// The node for an array element.
    pub fn index(&self, i: usize) -> Option<&SelectorNode> {
        self.indexes
            .iter()
            .find(|(n, _)| *n == i)
            .map(|(_, n)| n)
            .or(self.wildcard.as_deref())
    }
    /// The object members the node looks into.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &SelectorNode)> {
        self.keys.iter().map(|(k, n)| (k.as_str(), n))
    }
    /// Whether the node looks into arrays or objects at all.
    pub fn has_children(&self) -> bool {
        !self.keys.is_empty() || !self.indexes.is_empty() || self.wildcard.is_some()
    }
    /// Whether the node looks into objects (some pattern continues with a key step).
    pub fn has_key_children(&self) -> bool {
        !self.keys.is_empty()
    }
    /// Whether the node looks into arrays (some pattern continues with `[*]` or `[N]`).
    pub fn has_index_children(&self) -> bool {
        !self.indexes.is_empty() || self.wildcard.is_some()
    }
    /// Whether the node's patterns can look into this kind of value. A node that looks into arrays only, given an
    /// object (or a scalar, or the reverse), does not fit: the value is encrypted whole rather than skipped.
    pub fn fits(&self, is_object: bool, is_array: bool) -> bool {
        (is_object && self.has_key_children()) || (is_array && self.has_index_children())
    }

    /// The number of nodes of this subtree, counting no further than `limit`.
    fn size_up_to(&self, limit: usize) -> usize {
        let mut n = 1;
        for c in self
            .keys
            .iter()
            .map(|(_, n)| n)
            .chain(self.indexes.iter().map(|(_, n)| n))
            .chain(self.wildcard.as_deref())
        {
            if n > limit {
                break;
            }
            n += c.size_up_to(limit - n);
        }
        n
    }

    fn insert(&mut self, steps: &[Step], budget: &mut Budget) -> Result<()> {
        let Some((step, rest)) = steps.split_first() else {
            self.selected = true;
            return Ok(());
        };
        let child = match step {
            Step::Key(k) => match self.keys.iter().position(|(x, _)| x == k) {
                Some(p) => &mut self.keys[p].1,
                None => {
                    budget.take(1)?;
                    self.keys.push((k.clone(), SelectorNode::default()));
                    &mut self.keys.last_mut().expect("just pushed").1
                }
            },
            Step::Index(i) => match self.indexes.iter().position(|(x, _)| x == i) {
                Some(p) => &mut self.indexes[p].1,
                None => {
                    budget.take(1)?;
                    self.indexes.push((*i, SelectorNode::default()));
                    &mut self.indexes.last_mut().expect("just pushed").1
                }
            },
            Step::Wildcard => {
                if self.wildcard.is_none() {
                    budget.take(1)?;
                }
                self.wildcard.get_or_insert_with(Default::default)
            }
        };
        child.insert(rest, budget)
    }

    /// Adds `other`'s selections to this node. Every node it copies is taken from `budget`, so patterns whose
    /// wildcards and indexes interleave (each index step receives what the wildcard beside it selects) cannot
    /// make the tree grow without bound: they fail with [`ErrorKind::TooLarge`] instead.
    fn merge(&mut self, other: &SelectorNode, budget: &mut Budget) -> Result<()> {
        crate::check_interrupts();
        self.selected |= other.selected;
        for (k, n) in &other.keys {
            match self.keys.iter_mut().find(|(x, _)| x == k) {
                Some((_, mine)) => mine.merge(n, budget)?,
                None => {
                    budget.take(n.size_up_to(budget.left))?;
                    self.keys.push((k.clone(), n.clone()))
                }
            }
        }
        for (i, n) in &other.indexes {
            match self.indexes.iter_mut().find(|(x, _)| x == i) {
                Some((_, mine)) => mine.merge(n, budget)?,
                None => {
                    budget.take(n.size_up_to(budget.left))?;
                    self.indexes.push((*i, n.clone()))
                }
            }
        }
        if let Some(w) = &other.wildcard {
            match self.wildcard.as_deref_mut() {
                Some(mine) => mine.merge(w, budget)?,
                None => {
                    budget.take(w.size_up_to(budget.left))?;
                    self.wildcard = Some(w.clone());
                }
            }
        }
        Ok(())
    }

    /// Folds the wildcard's subtree into each explicit index, then does the same below.
    fn normalize(&mut self, budget: &mut Budget) -> Result<()> {
        if self.selected {
            // the whole value is encrypted: nothing below matters
            self.keys.clear();
            self.indexes.clear();
            self.wildcard = None;
            return Ok(());
        }
        if let Some(w) = self.wildcard.as_deref() {
            for (_, n) in self.indexes.iter_mut() {
                n.merge(w, budget)?;
            }
        }
        for n in self
            .keys
            .iter_mut()
            .map(|(_, n)| n)
            .chain(self.indexes.iter_mut().map(|(_, n)| n))
        {
            n.normalize(budget)?;
        }
        if let Some(w) = self.wildcard.as_deref_mut() {
            w.normalize(budget)?;
        }
        Ok(())
    }
}

/// The most nodes a compiled set of field paths may have. Real configurations use a few hundred; the limit stops
/// pathological patterns (interleaved `[*]` and `[N]` steps double the tree at every level) in bounded time.
pub const MAX_SELECTOR_NODES: usize = 50_000;

/// What is left of [`MAX_SELECTOR_NODES`] while a selector is built.
struct Budget {
    left: usize,
}

impl Budget {
    fn take(&mut self, n: usize) -> Result<()> {
        if n > self.left {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("the field paths expand to more than {MAX_SELECTOR_NODES} selector nodes"),
            )
            .with_detail("Array steps [*] and [N] at the same place each receive what the other selects, so interleaving them doubles the selection at every level.")
            .with_hint("Use fewer or shorter paths; [*] alone already covers every index."));
        }
        self.left -= n;
        Ok(())
    }
}

impl Selector {
    /// Compiles field paths into one tree. Fails with [`ErrorKind::TooLarge`] (SQLSTATE 54000) when the paths
    /// would expand beyond [`MAX_SELECTOR_NODES`] nodes; the work done is bounded by that limit.
    pub fn new(paths: &[FieldPath]) -> Result<Selector> {
        let mut budget = Budget {
            left: MAX_SELECTOR_NODES,
        };
        let mut root = SelectorNode::default();
        for (i, p) in paths.iter().enumerate() {
            crate::check_interrupts_every(i);
            root.insert(p.steps(), &mut budget)?;
        }
        root.normalize(&mut budget)?;
        Ok(Selector { root })
    }
    pub fn root(&self) -> &SelectorNode {
        &self.root
    }
    /// The number of nodes of the compiled tree (the root included).
    pub fn node_count(&self) -> usize {
        self.root.size_up_to(usize::MAX - 1)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Location {
    enc: Vec<u8>,
}

impl Location {
    pub fn root() -> Location {
        Location { enc: Vec::new() }
    }
    /// Appends a step and returns the length to truncate back to.
    pub fn push_key(&mut self, key: &str) -> usize {
        self.push_key_bytes(key.as_bytes())
    }
    pub fn push_key_bytes(&mut self, key: &[u8]) -> usize {
        let mark = self.enc.len();
        self.enc.push(0x01);
        self.enc.extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.enc.extend_from_slice(key);
        mark
    }
    pub fn push_index(&mut self, index: usize) -> usize {
        let mark = self.enc.len();
        self.enc.push(0x02);
        self.enc.extend_from_slice(&(index as u32).to_be_bytes());
        mark
    }
    pub fn truncate(&mut self, mark: usize) {
        self.enc.truncate(mark);
    }
    /// The associated-data encoding (without the terminating 0x00 the envelope adds).
    pub fn encoded(&self) -> &[u8] {
        &self.enc
    }
    /// Builds a location from steps (for tests and single values).
    pub fn from_steps(steps: &[LocStep<'_>]) -> Location {
        let mut l = Location::root();
        for s in steps {
            match s {
                LocStep::Key(k) => l.push_key(k),
                LocStep::Index(i) => l.push_index(*i),
            };
        }
        l
    }
    /// The location a wildcard-free pattern names (`None` for a pattern with `[*]`).
    pub fn of_path(path: &FieldPath) -> Option<Location> {
        let mut l = Location::root();
        for s in path.steps() {
            match s {
                Step::Key(k) => l.push_key(k),
                Step::Index(i) => l.push_index(*i),
                Step::Wildcard => return None,
            };
        }
        Some(l)
    }
    /// Human-readable form, in the pattern syntax (`items[2].card`, `"a.b".c`); empty for the root.
    pub fn display(&self) -> String {
        let mut out = String::new();
        let e = &self.enc;
        let mut i = 0;
        while i + 5 <= e.len() {
            let n = u32::from_be_bytes([e[i + 1], e[i + 2], e[i + 3], e[i + 4]]) as usize;
            if e[i] == 0x01 {
                push_key(&mut out, &e[i + 5..i + 5 + n]);
                i += 5 + n;
            } else {
                out.push_str(&format!("[{n}]"));
                i += 5;
            }
        }
        out
    }
}

/// Appends an object key to a path in the pattern syntax `protect()` takes: after a `.` unless the path is empty,
/// bare when it can be, double-quoted (with `"` and `\\` escaped) otherwise.
pub fn push_key(path: &mut String, key: &[u8]) {
    let key = String::from_utf8_lossy(key);
    if !path.is_empty() {
        path.push('.');
    }
    let bare = !key.is_empty()
        && !key
            .chars()
            .any(|c| matches!(c, '.' | '[' | ']' | '"' | '\\') || c.is_control());
    if bare {
        path.push_str(&key);
    } else {
        path.push('"');
        for c in key.chars() {
            if c == '"' || c == '\\' {
                path.push('\\');
            }
            path.push(c);
        }
        path.push('"');
    }
}

/// A step of a concrete location, for building one by hand.
#[derive(Debug, Clone, Copy)]
pub enum LocStep<'a> {
    Key(&'a str),
    Index(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(p: &str) -> Vec<Step> {
        FieldPath::parse(p).unwrap().steps().to_vec()
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(steps("email"), vec![Step::Key("email".into())]);
        assert_eq!(
            steps("address.street"),
            vec![Step::Key("address".into()), Step::Key("street".into())]
        );
        assert_eq!(
            steps("items[*].card"),
            vec![Step::Key("items".into()), Step::Wildcard, Step::Key("card".into())]
        );
        assert_eq!(
            steps("lines[12].sku"),
            vec![Step::Key("lines".into()), Step::Index(12), Step::Key("sku".into())]
        );
        assert_eq!(steps("\"a.b\".c"), vec![Step::Key("a.b".into()), Step::Key("c".into())]);
        assert_eq!(steps("\"q\\\"x\\\\\""), vec![Step::Key("q\"x\\".into())]);
        assert_eq!(steps("\"\""), vec![Step::Key("".into())]);
        assert_eq!(steps("[*]"), vec![Step::Wildcard]);
        assert_eq!(steps("[*][*]"), vec![Step::Wildcard, Step::Wildcard]);
        assert_eq!(
            steps("m[*][0]"),
            vec![Step::Key("m".into()), Step::Wildcard, Step::Index(0)]
        );
        assert_eq!(
            steps("ünïcode.ключ"),
            vec![Step::Key("ünïcode".into()), Step::Key("ключ".into())]
        );
        assert_eq!(steps("with space"), vec![Step::Key("with space".into())]);
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a[",
            "a[]",
            "a[x]",
            "a[-1]",
            "a]",
            "a\"b",
            "\"open",
            "a.[*]",
            "a[*]b",
            "\"a\"b",
            "a[99999999999999999999999]",
            "a\u{1}b",
            "\"\\n\"",
        ] {
            let e = FieldPath::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidPath, "{bad:?}");
        }
        assert!(FieldPath::parse(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
    }

    #[test]
    fn locations_display_in_pattern_syntax() {
        let l = Location::from_steps(&[LocStep::Key("items"), LocStep::Index(2), LocStep::Key("card")]);
        assert_eq!(l.display(), "items[2].card");
        let l = Location::from_steps(&[LocStep::Key("a.b"), LocStep::Key("c")]);
        assert_eq!(l.display(), "\"a.b\".c");
        assert_eq!(Location::root().display(), "");
        // A location displayed as a pattern parses back to the same steps.
        let p = FieldPath::parse(&l.display()).unwrap();
        assert_eq!(p.steps(), &[Step::Key("a.b".into()), Step::Key("c".into())]);
    }

    #[test]
    fn encodings_are_unambiguous() {
        let a = Location::from_steps(&[LocStep::Key("a.b")]);
        let b = Location::from_steps(&[LocStep::Key("a"), LocStep::Key("b")]);
        let c = Location::from_steps(&[LocStep::Key("0")]);
        let d = Location::from_steps(&[LocStep::Index(0)]);
        assert_ne!(a.encoded(), b.encoded());
        assert_ne!(c.encoded(), d.encoded());
    }
}
