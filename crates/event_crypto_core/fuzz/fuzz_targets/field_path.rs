//! Field path parsing and selection on arbitrary text: never a panic; a path that parses round-trips through
//! its own text and compiles into a selector.
#![no_main]

use event_crypto_core::path::{FieldPath, Selector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let paths: Vec<FieldPath> = text.split('\n').filter_map(|t| FieldPath::parse(t).ok()).collect();
    for p in &paths {
        let again = FieldPath::parse(p.text()).expect("a parsed path parses again");
        assert_eq!(again.steps(), p.steps());
    }
    let selector = match Selector::new(&paths) {
        Ok(s) => s,
        // only a selection that would grow past the node limit is refused
        Err(e) => {
            assert_eq!(e.kind(), event_crypto_core::ErrorKind::TooLarge, "{e}");
            return;
        }
    };
    assert!(selector.node_count() <= event_crypto_core::path::MAX_SELECTOR_NODES + 1);
    let root = selector.root();
    let _ = root.is_selected();
    let _ = root.key(b"email");
    let _ = root.index(0);
});
