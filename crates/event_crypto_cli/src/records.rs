//! The input formats of `event-crypto decrypt`: where the documents to decrypt sit in each line, under which
//! context, and how they are written back.
//!
//! - plain: each line is a document;
//! - wal2json (format-version 2): `columns` (new row) and `identity` (old row, with REPLICA IDENTITY FULL) are arrays
//!   of `{"name", "type", "value"}`; a jsonb or json column's value is its text, a JSON string, which is parsed,
//!   decrypted and written back as a string;
//! - Debezium change events: `before` and `after` (at the top level, or under `payload` when the converter adds
//!   schemas) hold the row's columns; a jsonb column is a JSON string (io.debezium.data.Json) or, with other
//!   converters, the value itself.
//!
//! The context of a row (a protected table's context column, see protect()) is the column's text value as
//! PostgreSQL's output function writes it: a string as it is, a number as its JSON text (the digits as stored), a
//! boolean as `t` or `f`.

use serde_json::Value;

/// How lines are read.
#[derive(Debug, Clone)]
pub enum InputFormat {
    Plain,
    Wal2json {
        column: String,
        context_column: Option<String>,
        /// Only records of this table (`name` or `schema.name`); None: every record with the column.
        table: Option<String>,
    },
    Debezium {
        field: String,
        context_column: Option<String>,
    },
}

/// A document taken out of a record for decryption, and where it goes back.
pub struct Slot {
    /// The line (index into the batch) it came from.
    pub line: usize,
    /// JSON pointer into the line's record ("" for the record itself).
    pub pointer: String,
    /// The value was a JSON string holding the document's text: write it back as a string.
    pub as_string: bool,
    pub context: Option<Vec<u8>>,
}

/// A JSON pointer token (RFC 6901).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The text of a context column's value; None for SQL NULL.
fn context_text(v: &Value) -> Result<Option<Vec<u8>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        Value::Number(n) => Ok(Some(n.to_string().into_bytes())),
        // boolean's output function writes t and f
        Value::Bool(b) => Ok(Some(if *b { b"t".to_vec() } else { b"f".to_vec() })),
        _ => Ok(Some(v.to_string().into_bytes())),
    }
}

/// Takes a document value out of `slot_value`: a string is parsed (its text is the document), a container is
/// taken as it is; None for null or a scalar (nothing to decrypt... a scalar string envelope is a document too).
fn take_document(v: &mut Value, what: &str) -> Result<Option<(Value, bool)>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => {
            if event_crypto_core::envelope::looks_like_envelope(s.as_bytes()) {
                // a document that is one envelope (its root encrypted), not a JSON text
                return Ok(Some((v.take(), false)));
            }
            event_crypto_client::check_nesting(s.as_bytes(), event_crypto_client::MAX_NESTING)
                .map_err(|e| format!("{what}: {e}"))?;
            let doc: Value =
                serde_json::from_str(s).map_err(|e| format!("{what} is a string that holds no JSON document ({e})"))?;
            Ok(Some((doc, true)))
        }
        _ => Ok(Some((v.take(), false))),
    }
}

/// Finds the documents of one record and takes them out of it (the record keeps nulls in their places until
/// [`put_back`]). `line` is the record's index in its batch.
pub fn extract(
    fmt: &InputFormat,
    record: &mut Value,
    line: usize,
    docs: &mut Vec<Value>,
    slots: &mut Vec<Slot>,
) -> Result<(), String> {
    match fmt {
        InputFormat::Plain => {
            if let Some((doc, _)) = take_document(record, "the line")? {
                docs.push(doc);
                slots.push(Slot {
                    line,
                    pointer: String::new(),
                    as_string: false,
                    context: None,
                });
            }
            Ok(())
        }
        InputFormat::Wal2json {
            column,
            context_column,
            table,
        } => {
            let Value::Object(obj) = record else {
                return Err("a wal2json record is a JSON object".into());
            };
            if obj.contains_key("change") {
                return Err("this is wal2json format-version 1; run pg_recvlogical with -o format-version=2".into());
            }
            if let Some(t) = table {
                let name = obj.get("table").and_then(Value::as_str).unwrap_or("");
                let schema = obj.get("schema").and_then(Value::as_str).unwrap_or("");
                if t != name && *t != format!("{schema}.{name}") {
                    return Ok(());
                }
            }
            for array in ["columns", "identity"] {
                let Some(Value::Array(cols)) = obj.get_mut(array) else {
                    continue;
                };
                let find = |cols: &[Value], n: &str| {
                    cols.iter()
                        .position(|c| c.get("name").and_then(Value::as_str) == Some(n))
                };
                let Some(i) = find(cols, column) else { continue };
                let context = match context_column {
                    None => None,
                    Some(cc) => match find(cols, cc) {
                        Some(j) => context_text(cols[j].get("value").unwrap_or(&Value::Null))?,
                        None => {
                            return Err(format!(
                                "the record's {array} hold column \"{column}\" but not the context column \"{cc}\""
                            ))
                        }
                    },
                };
                let Some(v) = cols[i].get_mut("value") else {
                    return Err(format!("column \"{column}\" in {array} has no value"));
                };
                if let Some((doc, as_string)) = take_document(v, &format!("column \"{column}\""))? {
                    docs.push(doc);
                    slots.push(Slot {
                        line,
                        pointer: format!("/{array}/{i}/value"),
                        as_string,
                        context,
                    });
                }
            }
            Ok(())
        }
        InputFormat::Debezium { field, context_column } => {
            if record.is_null() {
                // a tombstone (the value Kafka's log compaction removes a key with) passes through
                return Ok(());
            }
            let Value::Object(obj) = record else {
                return Err("a Debezium change event is a JSON object".into());
            };
            // with schemas (JsonConverter schemas.enable=true) the event is under "payload"
            let wrapped = !obj.contains_key("after")
                && !obj.contains_key("before")
                && obj
                    .get("payload")
                    .is_some_and(|p| p.get("after").is_some() || p.get("before").is_some());
            let (root, prefix) = if wrapped {
                (obj.get_mut("payload").expect("checked above"), "/payload")
            } else {
                (record, "")
            };
            for side in ["before", "after"] {
                let Some(Value::Object(row)) = root.get_mut(side) else {
                    continue;
                };
                if !row.contains_key(field.as_str()) {
                    continue;
                }
                let context = match context_column {
                    None => None,
                    Some(cc) => match row.get(cc.as_str()) {
                        Some(v) => context_text(v)?,
                        None => {
                            return Err(format!(
                                "the event's {side} holds field \"{field}\" but not the context column \"{cc}\""
                            ))
                        }
                    },
                };
                let v = row.get_mut(field.as_str()).expect("checked above");
                if let Some((doc, as_string)) = take_document(v, &format!("field \"{field}\""))? {
                    docs.push(doc);
                    slots.push(Slot {
                        line,
                        pointer: format!("{prefix}/{side}/{}", token(field)),
                        as_string,
                        context,
                    });
                }
            }
            Ok(())
        }
    }
}

/// Puts a decrypted document back where [`extract`] took it from.
pub fn put_back(record: &mut Value, slot: &Slot, doc: Value) {
    let v = if slot.as_string {
        Value::String(doc.to_string())
    } else {
        doc
    };
    match record.pointer_mut(&slot.pointer) {
        Some(place) => *place = v,
        None => unreachable!("extract took the document from this place"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(fmt: &InputFormat, mut rec: Value) -> (Value, Vec<Value>, Vec<Slot>) {
        let (mut docs, mut slots) = (vec![], vec![]);
        extract(fmt, &mut rec, 0, &mut docs, &mut slots).unwrap();
        (rec, docs, slots)
    }

    fn wal2json(context: Option<&str>) -> InputFormat {
        InputFormat::Wal2json {
            column: "payload".into(),
            context_column: context.map(String::from),
            table: None,
        }
    }

    #[test]
    fn wal2json_columns_and_identity_round_trip() {
        let rec = json!({"action": "U", "schema": "public", "table": "events",
            "columns": [{"name": "id", "type": "bigint", "value": 5},
                        {"name": "stream_id", "type": "uuid", "value": "6f1c"},
                        {"name": "payload", "type": "jsonb", "value": "{\"a\": \"$ec2$x\", \"n\": 1.50}"}],
            "identity": [{"name": "id", "type": "bigint", "value": 5},
                         {"name": "stream_id", "type": "uuid", "value": "6f1c"},
                         {"name": "payload", "type": "jsonb", "value": "[1]"}]});
        let (mut rec, docs, slots) = run(&wal2json(Some("stream_id")), rec);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].to_string(), r#"{"a":"$ec2$x","n":1.50}"#);
        assert_eq!(slots[0].pointer, "/columns/2/value");
        assert_eq!(slots[0].context.as_deref(), Some(&b"6f1c"[..]));
        assert!(slots[0].as_string);
        assert_eq!(slots[1].pointer, "/identity/2/value");
        put_back(&mut rec, &slots[0], json!({"a": "plain", "n": 1}));
        put_back(&mut rec, &slots[1], json!([2]));
        assert_eq!(rec["columns"][2]["value"], json!(r#"{"a":"plain","n":1}"#));
        assert_eq!(rec["identity"][2]["value"], json!("[2]"));
        assert_eq!(rec["columns"][0]["value"], json!(5));
    }

    #[test]
    fn wal2json_records_without_the_column_pass_through() {
        for rec in [
            json!({"action": "B"}),
            json!({"action": "C"}),
            json!({"action": "I", "table": "t", "columns": [{"name": "x", "value": 1}]}),
            json!({"action": "I", "table": "t", "columns": [{"name": "payload", "value": null}]}),
        ] {
            let (out, docs, _) = run(&wal2json(None), rec.clone());
            assert!(docs.is_empty());
            assert_eq!(out, rec);
        }
        // a table filter leaves other tables alone
        let fmt = InputFormat::Wal2json {
            column: "payload".into(),
            context_column: None,
            table: Some("public.ev".into()),
        };
        let rec = json!({"action": "I", "schema": "public", "table": "other",
                         "columns": [{"name": "payload", "value": "{}"}]});
        assert!(run(&fmt, rec).1.is_empty());
        let rec = json!({"action": "I", "schema": "public", "table": "ev",
                         "columns": [{"name": "payload", "value": "{}"}]});
        assert_eq!(run(&fmt, rec).1.len(), 1);
    }

    #[test]
    fn wal2json_errors_are_clear() {
        let mut rec = json!({"change": []});
        let e = extract(&wal2json(None), &mut rec, 0, &mut vec![], &mut vec![]).unwrap_err();
        assert!(e.contains("format-version=2"), "{e}");
        let mut rec = json!({"action": "I", "columns": [{"name": "payload", "value": "{}"}]});
        let e = extract(&wal2json(Some("stream_id")), &mut rec, 0, &mut vec![], &mut vec![]).unwrap_err();
        assert!(e.contains("context column \"stream_id\""), "{e}");
        let mut rec = json!({"action": "I", "columns": [{"name": "payload", "value": "{not json"}]});
        let e = extract(&wal2json(None), &mut rec, 0, &mut vec![], &mut vec![]).unwrap_err();
        assert!(e.contains("holds no JSON"), "{e}");
        assert!(!e.contains("not json"), "the value is not echoed: {e}");
    }

    #[test]
    fn debezium_before_and_after_with_or_without_schemas() {
        let fmt = InputFormat::Debezium {
            field: "payload".into(),
            context_column: Some("stream_id".into()),
        };
        let event = json!({"before": null,
            "after": {"id": 1, "stream_id": 42, "payload": "{\"email\": \"$ec2$x\"}"}, "op": "c"});
        let (mut rec, docs, slots) = run(&fmt, event.clone());
        assert_eq!(docs, vec![json!({"email": "$ec2$x"})]);
        assert_eq!(slots[0].pointer, "/after/payload");
        assert_eq!(slots[0].context.as_deref(), Some(&b"42"[..]));
        put_back(&mut rec, &slots[0], json!({"email": "a@x.io"}));
        assert_eq!(rec["after"]["payload"], json!(r#"{"email":"a@x.io"}"#));

        let (tombstone, docs, _) = run(&fmt, Value::Null);
        assert!(tombstone.is_null() && docs.is_empty());
        assert!(extract(&fmt, &mut json!([1]), 0, &mut vec![], &mut vec![]).is_err());

        let wrapped = json!({"schema": {}, "payload": {"before": {"stream_id": "s", "payload": {"e": 1}},
                                                          "after": {"stream_id": "s", "payload": {"e": 2}}}});
        let (mut rec, docs, slots) = run(&fmt, wrapped);
        assert_eq!(docs, vec![json!({"e": 1}), json!({"e": 2})]);
        assert_eq!(slots[1].pointer, "/payload/after/payload");
        assert!(!slots[1].as_string);
        put_back(&mut rec, &slots[1], json!({"e": 3}));
        assert_eq!(rec["payload"]["after"]["payload"], json!({"e": 3}));
    }

    #[test]
    fn contexts_are_the_text_output_of_the_column() {
        let t = |v: Value| context_text(&v).unwrap();
        assert_eq!(t(json!("6f1c")), Some(b"6f1c".to_vec()));
        assert_eq!(t(json!(42)), Some(b"42".to_vec()));
        assert_eq!(t(serde_json::from_str("1.50").unwrap()), Some(b"1.50".to_vec()));
        assert_eq!(t(json!(true)), Some(b"t".to_vec()));
        assert_eq!(t(Value::Null), None);
    }

    #[test]
    fn plain_lines_are_documents_and_pointers_are_escaped() {
        let (rec, docs, slots) = run(&InputFormat::Plain, json!({"a": 1}));
        assert_eq!((rec, docs.len(), slots[0].pointer.as_str()), (Value::Null, 1, ""));
        assert_eq!(token("a/b~c"), "a~1b~0c");
        let fmt = InputFormat::Debezium {
            field: "a/b".into(),
            context_column: None,
        };
        let (mut rec, _, slots) = run(&fmt, json!({"after": {"a/b": {"x": 1}}}));
        put_back(&mut rec, &slots[0], json!(2));
        assert_eq!(rec, json!({"after": {"a/b": 2}}));
    }
}
