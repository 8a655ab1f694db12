//! `event-crypto inspect`: the header of every envelope in an envelope text or a JSON document (or JSON lines),
//! read with the core's envelope parser. No key is needed and nothing is decrypted.

use event_crypto_core::envelope::{looks_like_envelope, Envelope, KeyRef};
use event_crypto_core::path::Location;
use serde_json::{json, Value};
use std::io::Read;
use std::process::ExitCode;

/// One envelope's header, or why it does not parse.
pub struct Header {
    pub path: String,
    pub result: Result<Envelope, String>,
}

/// Every string of `v` that claims to be an envelope, with its location.
pub fn headers(v: &Value, loc: &mut Location, out: &mut Vec<Header>) {
    match v {
        Value::String(s) if looks_like_envelope(s.as_bytes()) => out.push(Header {
            path: loc.display(),
            result: Envelope::parse(s, loc).map_err(|e| e.to_string()),
        }),
        Value::Object(m) => {
            for (k, child) in m {
                let mark = loc.push_key(k);
                headers(child, loc, out);
                loc.truncate(mark);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let mark = loc.push_index(i);
                headers(child, loc, out);
                loc.truncate(mark);
            }
        }
        _ => {}
    }
}

/// The headers of an input: one envelope text, a JSON document, or JSON lines.
pub fn inspect_text(text: &str) -> Result<Vec<Header>, String> {
    let t = text.trim();
    let mut out = Vec::new();
    event_crypto_client::check_nesting(t.as_bytes(), event_crypto_client::MAX_NESTING + 8)
        .map_err(|e| e.to_string())?;
    if t.starts_with("$ec") {
        headers(&Value::String(t.to_string()), &mut Location::root(), &mut out);
        if out.is_empty() {
            return Err("the input starts like an envelope but is not one ($ec<digits>$...)".into());
        }
        return Ok(out);
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v) => headers(&v, &mut Location::root(), &mut out),
        Err(whole) => {
            // JSON lines
            for (i, line) in t.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    if i == 0 {
                        format!("the input is neither an envelope nor JSON ({whole})")
                    } else {
                        format!("line {}: not JSON ({e})", i + 1)
                    }
                })?;
                let before = out.len();
                headers(&v, &mut Location::root(), &mut out);
                for h in &mut out[before..] {
                    h.path = format!("line {}: {}", i + 1, if h.path.is_empty() { "(root)" } else { &h.path });
                }
            }
        }
    }
    Ok(out)
}

fn describe(e: &Envelope) -> (String, Value) {
    let (key_text, key_json) = match e.key() {
        KeyRef::Handle(h) => (format!("key handle {h}"), json!({"key_handle": h.to_string()})),
        KeyRef::Id(id) => (format!("key id \"{id}\""), json!({"key_id": id})),
    };
    let text = format!(
        "format {}, {}, {key_text}, version {}, context {}",
        e.format.number(),
        e.algorithm.name(),
        e.key_version,
        if e.has_context() { "bound" } else { "not bound" }
    );
    let mut obj = json!({
        "format": e.format.number(),
        "algorithm": e.algorithm.name(),
        "version": e.key_version,
        "context_bound": e.has_context(),
    });
    if let (Value::Object(o), Value::Object(k)) = (&mut obj, key_json) {
        o.extend(k);
    }
    (text, obj)
}

pub fn run(text: Option<String>, as_json: bool) -> Result<ExitCode, String> {
    let text = match text {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            s
        }
    };
    let found = inspect_text(&text)?;
    if found.is_empty() {
        eprintln!("event-crypto: no envelope in the input");
        return Ok(ExitCode::SUCCESS);
    }
    let mut bad = 0;
    for h in &found {
        let path = if h.path.is_empty() { "(root)" } else { &h.path };
        match &h.result {
            Ok(e) => {
                let (line, mut obj) = describe(e);
                if as_json {
                    obj["path"] = json!(path);
                    println!("{obj}");
                } else {
                    println!("{path}: {line}");
                }
            }
            Err(m) => {
                bad += 1;
                if as_json {
                    println!("{}", json!({"path": path, "error": m}));
                } else {
                    println!("{path}: not a valid envelope: {m}");
                }
            }
        }
    }
    if bad > 0 {
        eprintln!("event-crypto: {bad} of {} envelopes do not parse", found.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    // the frozen vectors of docs/format.md
    const V2: &str = "$ec2$EF7C8A0AAAAHBwEBAQEBAQEBAQEBAQ_I9n-6Pe7v2K7cEOtDOebyGcmkjtHUrg";
    const V1: &str = "$ec1$AQAKZnJvemVuLWtleQAAAAcBAQEBAQEBAQEBAQEPyPZ_uj3u7_E_eerlbwW1bzF98bCu3XQ";

    #[test]
    fn an_envelope_text_shows_its_header() {
        let h = inspect_text(&format!("  {V2}\n")).unwrap();
        let (line, obj) = describe(h[0].result.as_ref().unwrap());
        assert_eq!(
            line,
            "format 2, aes-256-gcm, key handle 5ec2f00d00000007, version 7, context not bound"
        );
        assert_eq!(obj["key_handle"], "5ec2f00d00000007");
        let h = inspect_text(V1).unwrap();
        let (line, _) = describe(h[0].result.as_ref().unwrap());
        assert_eq!(
            line,
            "format 1, aes-256-gcm, key id \"frozen-key\", version 7, context not bound"
        );
    }

    #[test]
    fn documents_and_json_lines_are_walked() {
        let doc = format!(r#"{{"email": "{V2}", "items": [{{"card": "{V1}"}}], "n": 1, "s": "$ec2$bad"}}"#);
        let h = inspect_text(&doc).unwrap();
        let paths: Vec<_> = h.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, ["email", "items[0].card", "s"]);
        assert!(h[2].result.is_err());
        let lines = format!("{{\"a\": \"{V2}\"}}\n\n{{\"b\": 1}}\n\"{V1}\"\n");
        let h = inspect_text(&lines).unwrap();
        let paths: Vec<_> = h.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, ["line 1: a", "line 4: (root)"]);
        assert!(inspect_text("{oops").is_err());
        assert!(inspect_text("$ecx").is_err());
    }
}
