//! The BEFORE INSERT OR UPDATE row trigger of protected tables (`event_crypto.protect_trigger('<column>')`).
//!
//! For each row it:
//! 1. refuses an UPDATE that would move stored ciphertext to another subject or context;
//! 2. checks every envelope the row brings (anywhere in the document, configured field or not): it must parse,
//!    be under the row's own key (the fixed key id, or a key of the row's subject: a format 2 envelope's handle is
//!    looked up to its key id) and authenticate with the row's context at its own location. An envelope copied
//!    from another subject, stream, field or row, a string that merely starts with `$ec1$` or `$ec2$`, an edited
//!    one: the row is refused (`23514`, `22P02`). Only an envelope under the
//!    row's own *shredded* key cannot be authenticated; it is kept (replays and restores of a forgotten subject's
//!    events), and its blind index values are NULL;
//! 3. computes every blind index column from the plaintext (decrypting the row's own envelopes where the field is
//!    already encrypted): a value supplied with the row is always replaced;
//! 4. encrypts the configured fields that are still plaintext under the row's key, creating the key on first use,
//!    in the envelope format `event_crypto.envelope_format` names (2 by default: the key named by its handle).

use super::config::{config, Col, Config, KeySpec, PiiGuard};
use super::seals;
use crate::jsonb::Jsonb;
use crate::keys::{self, CachedKeys, KeyEntry, KeyUser};
use event_crypto_core::document::{
    check_context, check_envelopes, may_contain_envelope, needs_encryption, value_at, Checked, Encryptor,
};
use event_crypto_core::envelope::{looks_like_envelope, KeyRef};
use event_crypto_core::jsonb::{parse_json, write_json, Parsed, Value as JsonbValue};
use event_crypto_core::path::{FieldPath, Location};
use event_crypto_core::subject::{check_subject, parse_subject_key_id, subject_key_id};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::PgTupleDesc;
use std::ffi::CStr;
use std::rc::Rc;

/// A row being inserted or updated.
pub struct Row {
    pub tuple: *mut pg_sys::HeapTupleData,
    pub tupdesc: pg_sys::TupleDesc,
}

impl Row {
    pub fn datum(&self, col: &Col) -> Option<pg_sys::Datum> {
        // SAFETY: tuple and descriptor come from the firing trigger; attno and type were checked against this
        // descriptor (Config::fits).
        unsafe { pgrx::heap_getattr_raw(self.tuple, col.attno, self.tupdesc) }
    }

    /// The text form of a column (its type's output function). text and varchar are read in place, uuid is
    /// formatted on the stack, other types go through their output function.
    pub fn text(&self, col: &Col) -> Option<ColText<'_>> {
        self.datum(col).map(|d| datum_text(col, d))
    }
}

/// The text of a column of a row, valid while the row is (the trigger call).
pub enum ColText<'a> {
    Borrowed(&'a str),
    Uuid([u8; 36]),
    Owned(String),
}

impl std::ops::Deref for ColText<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            ColText::Borrowed(s) => s,
            // (hex digits and hyphens)
            ColText::Uuid(b) => std::str::from_utf8(b).unwrap_or_default(),
            ColText::Owned(s) => s,
        }
    }
}

impl PartialEq for ColText<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// The text of a non-null datum of `col`'s type: its output function's result (what `format('%s', …)` gives),
/// borrowing the datum for `'a` (private: [`Row::text`] ties it to the row).
fn datum_text<'a>(col: &Col, d: pg_sys::Datum) -> ColText<'a> {
    match col.type_oid {
        // SAFETY: a non-null text/varchar datum (type checked), detoasted (in place, or into memory of the trigger
        // call); the bytes live as long as the row.
        pg_sys::TEXTOID | pg_sys::VARCHAROID => unsafe {
            let p = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
            let b: &'a [u8] = pgrx::varlena::varlena_to_byte_slice(p);
            match std::str::from_utf8(b) {
                Ok(s) => ColText::Borrowed(s),
                Err(_) => ColText::Owned(String::from_utf8_lossy(b).into_owned()),
            }
        },
        pg_sys::UUIDOID => {
            let mut out = [0u8; 36];
            // SAFETY: a uuid datum (type checked) points to its 16 bytes.
            let b = unsafe { std::slice::from_raw_parts(d.cast_mut_ptr::<u8>() as *const u8, 16) };
            uuid_text(b, &mut out);
            ColText::Uuid(out)
        }
        _ => {
            let mut out = Vec::new();
            append_datum_text(col, d, &mut out);
            ColText::Owned(
                String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            )
        }
    }
}

/// The canonical text of a uuid's 16 bytes (lower-case hex, hyphens after bytes 4, 6, 8 and 10).
fn uuid_text(b: &[u8], out: &mut [u8; 36]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut j = 0;
    for (i, byte) in b.iter().take(16).enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 15) as usize];
        j += 2;
    }
}

/// Appends the text of a non-null datum of `col`'s type to `out` (see [`datum_text`]), without an allocation of
/// its own for text, varchar and uuid.
pub fn append_datum_text(col: &Col, d: pg_sys::Datum, out: &mut Vec<u8>) {
    match col.type_oid {
        // SAFETY: a non-null text/varchar datum (type checked); detoasting keeps a short header, which the slice
        // handles.
        pg_sys::TEXTOID | pg_sys::VARCHAROID => unsafe {
            let p = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
            out.extend_from_slice(pgrx::varlena::varlena_to_byte_slice(p));
        },
        pg_sys::UUIDOID => {
            let mut text = [0u8; 36];
            // SAFETY: a uuid datum (type checked) points to its 16 bytes.
            uuid_text(
                unsafe { std::slice::from_raw_parts(d.cast_mut_ptr::<u8>() as *const u8, 16) },
                &mut text,
            );
            out.extend_from_slice(&text);
        }
        // SAFETY: the output function of the column's own type, applied to a non-null datum of that type.
        _ => unsafe {
            let s = pg_sys::OidOutputFunctionCall(col.output, d);
            out.extend_from_slice(CStr::from_ptr(s).to_bytes());
        },
    }
}

/// Whether `key_id` is a key of `subject` under `prefix`: its name says so, and (in a catalog upgraded from
/// 0.1.0 that kept ambiguous names) the record of who it belongs to agrees.
pub fn key_belongs_to(prefix: &str, subject: &str, key_id: &str) -> bool {
    if !keys::legacy_keys_exist() {
        return parse_subject_key_id(prefix, key_id).is_some_and(|(s, _)| s == subject);
    }
    keys::lookup(key_id).is_ok_and(|e| e.belongs_to(prefix, subject))
}

/// The keys envelopes of a row may be under: the configured key id, or the keys of the row's subject. A format 1
/// envelope names its key id; a format 2 envelope its handle, whose key id is looked up in the catalog (without
/// unwrapping anything): both are judged by key id. A handle no key id has is under no key the row may use.
pub fn row_binding<'a>(cfg: &'a Config, subject: Option<&'a str>) -> impl Fn(KeyRef<'_>) -> bool + 'a {
    move |k: KeyRef<'_>| {
        let allowed = |key_id: &str| match (&cfg.key, subject) {
            (KeySpec::Fixed(id), _) => key_id == id,
            (KeySpec::Column { prefix, .. }, Some(s)) => key_belongs_to(prefix, s, key_id),
            (KeySpec::Column { .. }, None) => false,
        };
        match k {
            KeyRef::Id(key_id) => allowed(key_id),
            // (a row without a subject holds no key: nothing to look up)
            KeyRef::Handle(_) if matches!((&cfg.key, subject), (KeySpec::Column { .. }, None)) => false,
            KeyRef::Handle(h) => match keys::key_id_of_handle(h) {
                // a key id shredded whole keeps its handle under its tombstone (a digest of the key id)
                Some(name) if name.starts_with(event_crypto_core::digest::PREFIX) => {
                    tombstone_allowed(cfg, subject, &name)
                }
                Some(key_id) => allowed(&key_id),
                None => false,
            },
        }
    }
}

/// Whether the tombstone `name` (the digest of a key id shredded whole) is that of a key the row may use: the
/// configured key id, or one of the subject's key generations (computed in turn, while the catalog has the
/// generation live or tombstoned: at most one catalog query per generation, none when the first matches), or a key
/// recorded as the subject's under 0.1.0's naming.
fn tombstone_allowed(cfg: &Config, subject: Option<&str>, name: &str) -> bool {
    let is = |key_id: &str| {
        crate::tombstones::tombstone_id(key_id)
            .ok()
            .flatten()
            .is_some_and(|t| t == name)
    };
    match (&cfg.key, subject) {
        (KeySpec::Fixed(id), _) => is(id),
        (KeySpec::Column { .. }, None) => false,
        (KeySpec::Column { prefix, .. }, Some(s)) => {
            if keys::legacy_keys_exist() && keys::lookup(name).is_ok_and(|e| e.belongs_to(prefix, s)) {
                return true;
            }
            for g in 1..=event_crypto_core::subject::MAX_GENERATION {
                let Ok(k) = subject_key_id(prefix, s, g) else {
                    return false;
                };
                if is(&k) {
                    return true;
                }
                pgrx::check_for_interrupts!();
                // a generation is made only once the one before it is shredded: past the first that is
                // neither live nor tombstoned, there are none
                let present = keys::lookup(&k).is_ok();
                if !present {
                    return false;
                }
            }
            false
        }
    }
}

fn null_key_column(cfg: &Config, col: &Col) -> Error {
    Error::new(
        ErrorKind::NullArgument,
        format!("key column \"{}\" of protected table {} is NULL", col.name, cfg.table),
    )
    .with_detail("The row's fields cannot be encrypted or checked without a subject; it is refused rather than stored in plaintext.")
}

/// A row whose type the configuration has no field list for: refused, never stored as it came (fail closed).
fn unlisted_type(cfg: &Config, col: &Col, ty: Option<&str>) -> Error {
    let what = match ty {
        None => format!("type column \"{}\" of protected table {} is NULL", col.name, cfg.table),
        Some(t) => {
            // the type is the row's own (unencrypted) column, but bound its length in the message
            let shown: String = t.chars().take(64).collect();
            let more = if shown.len() < t.len() { "…" } else { "" };
            format!(
                "protected table {} has no field list for type \"{shown}{more}\" (column \"{}\")",
                cfg.table, col.name
            )
        }
    };
    Error::new(ErrorKind::UnlistedType, what)
        .with_detail("fields_by_type names the types whose fields are encrypted; a row of any other type is refused rather than stored in plaintext (types are compared exactly, case included).")
        .with_hint("Add the type to fields_by_type, add a \"*\" entry (the fields of every other type), or protect() the column again with allow_unlisted_types => true (other types get the common fields only).")
}

fn null_context_column(cfg: &Config, col: &Col) -> Error {
    Error::new(
        ErrorKind::NullArgument,
        format!(
            "context column \"{}\" of protected table {} is NULL",
            col.name, cfg.table
        ),
    )
    .with_detail("The row's fields are bound to their context; the row is refused rather than stored in plaintext.")
}

/// The subject key of a row: generation 1 of the subject, or (forgotten subject, `on_forgotten = 'new_key'`) the
/// first generation that is not shredded.
fn subject_key(
    cfg: &Config,
    col: &Col,
    prefix: &str,
    subject: &str,
    user: &KeyUser<'_>,
) -> Result<(String, Rc<KeyEntry>)> {
    check_subject(subject).map_err(|e| {
        Error::invalid_argument(format!(
            "key column \"{}\" of protected table {} holds an unusable subject id",
            col.name, cfg.table
        ))
        .with_detail(e.message().to_string())
    })?;
    let key_id = subject_key_id(prefix, subject, 1)?;
    let e = keys::ensure_key(&key_id, user)?;
    if !e.belongs_to(prefix, subject) {
        return Err(taken(&key_id, subject, e.shredded));
    }
    if !e.shredded {
        return Ok((key_id, e));
    }
    if !cfg.new_key_when_forgotten {
        // Neither the subject id nor its key id: once forgotten, they are not written anywhere, server log included.
        return Err(Error::new(
            ErrorKind::SubjectForgotten,
            format!(
                "the subject of this row has been forgotten: its key was shredded (key column \"{}\")",
                col.name
            ),
        )
        .with_detail(format!("New data for a forgotten subject is refused in {}.", cfg.table))
        .with_hint("To accept new events of forgotten subjects under a fresh key, call event_crypto.protect() with on_forgotten => 'new_key'."));
    }
    // A fresh key generation: "<key id>#2", "#3", ... (forget_subject shreds every generation).
    for n in 2..=10_000u32 {
        let next = subject_key_id(prefix, subject, n)?;
        let e = keys::ensure_key(&next, user)?;
        if e.belongs_to(prefix, subject) && !e.shredded {
            return Ok((next, e));
        }
    }
    Err(Error::new(
        ErrorKind::SubjectForgotten,
        format!(
            "the subject of this row has no usable key generation left (key column \"{}\" of {})",
            col.name, cfg.table
        ),
    ))
}

fn taken(key_id: &str, subject: &str, shredded: bool) -> Error {
    // a shredded key id is another subject's that was forgotten: named neither by key id nor by subject
    let what = if shredded {
        "the key id of this row's subject belongs to another subject, and was shredded".to_string()
    } else {
        format!("key id \"{key_id}\" of subject \"{subject}\" belongs to another subject")
    };
    Error::new(ErrorKind::NotReady, what)
    .with_detail("It was made by event_crypto 0.1.0, whose key ids were ambiguous, for another subject (event_crypto.legacy_subject_keys).")
    .with_hint("Events of this subject cannot be encrypted until that key id is free; see docs/security.md.")
}

/// The blind index value of a plaintext (the JSON text of a value): a string's own text, other values' compact
/// JSON text.
fn index_text(plaintext: &[u8]) -> Result<String> {
    if plaintext.first() == Some(&b'"') {
        if let Parsed::String(s) = parse_json(plaintext)? {
            return String::from_utf8(s).map_err(|_| Error::invalid_argument("a jsonb string is not UTF-8"));
        }
    }
    String::from_utf8(plaintext.to_vec()).map_err(|_| Error::invalid_argument("a jsonb string is not UTF-8"))
}

/// The trigger's work for one row; returns the replacement tuple, or None to keep the row as it is.
pub(crate) fn protect_row(trigger: &PgTrigger<'_>) -> Result<Option<*mut pg_sys::HeapTupleData>> {
    let td = trigger.trigger_data();
    // SAFETY: PostgreSQL hands us valid trigger data for a row trigger on an open relation.
    let (rel, event) = unsafe { (&*td.tg_relation, td.tg_event) };
    let is_row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
    let is_before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
    let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
    if !is_row || !is_before || !(op == pg_sys::TRIGGER_EVENT_INSERT || op == pg_sys::TRIGGER_EVENT_UPDATE) {
        return Err(Error::invalid_argument(
            "event_crypto.protect_trigger() must run BEFORE INSERT OR UPDATE FOR EACH ROW",
        ));
    }
    // The trigger's first argument, read in place (pgrx's extra_args() copies every argument into a String).
    // SAFETY: tg_trigger is valid during the call; tgargs has tgnargs NUL-terminated strings.
    let column = unsafe {
        let t = &*td.tg_trigger;
        (t.tgnargs > 0).then(|| CStr::from_ptr(*t.tgargs).to_str().unwrap_or(""))
    };
    let Some(column) = column else {
        return Err(Error::invalid_argument(
            "event_crypto.protect_trigger() needs the protected column as its argument",
        ));
    };
    let tupdesc = rel.rd_att;
    // SAFETY: the relation's descriptor lives as long as the relation is open (the whole trigger call).
    let desc = unsafe { PgTupleDesc::from_pg_unchecked(tupdesc) };
    let cfg = config(rel.rd_id, column, &desc)?;
    let user = KeyUser {
        relid: rel.rd_id,
        column,
    };
    let is_update = op == pg_sys::TRIGGER_EVENT_UPDATE;
    let new = Row {
        tuple: if is_update { td.tg_newtuple } else { td.tg_trigtuple },
        tupdesc,
    };
    let key_col = match &cfg.key {
        KeySpec::Column { col, .. } => Some(col),
        KeySpec::Fixed(_) => None,
    };

    let mut payload_unchanged = false;
    if is_update {
        // Stored envelopes are bound to the key and context of the row: changing either is refused.
        let old = Row {
            tuple: td.tg_trigtuple,
            tupdesc,
        };
        for col in key_col.into_iter().chain(cfg.context.as_ref()) {
            if old.text(col) != new.text(col) && new.datum(&cfg.payload).is_some() {
                return Err(Error::new(
                    ErrorKind::RebindRefused,
                    format!(
                        "column \"{}\" of protected table {} cannot be changed",
                        col.name, cfg.table
                    ),
                )
                .with_detail(format!(
                    "The encrypted fields of column \"{}\" are bound to it.",
                    cfg.payload.name
                ))
                .with_hint(
                    "Insert a new row (event) instead of moving encrypted data to another subject or context.",
                ));
            }
        }
        // SAFETY: both datums are non-null datums of the checked payload column (jsonb, or json: text).
        payload_unchanged = match (old.datum(&cfg.payload), new.datum(&cfg.payload)) {
            (Some(a), Some(b)) => unsafe {
                let bytes = |d: pg_sys::Datum| {
                    pgrx::varlena::varlena_to_byte_slice(pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr()))
                };
                bytes(a) == bytes(b)
            },
            _ => false,
        };
    }

    let Some(datum) = new.datum(&cfg.payload) else {
        // no payload: nothing to encrypt, and no blind index value can stand
        return finish(&new, cfg.blind.iter().map(|b| (&b.target, None)).collect());
    };
    // SAFETY: a non-null datum of the payload column (type checked), detoasted for the duration of this call; a
    // json column's text is parsed into the binary form, worked on as jsonb and stored back as JSON text.
    let json = cfg.payload.type_oid == pg_sys::JSONOID;
    let payload = if json {
        unsafe { Jsonb::from_json_datum(datum)? }
    } else {
        unsafe { Jsonb::from_datum_packed(datum) }
    };
    // 0.: tokenization (tokenize_fields) comes first: the rest of the trigger sees the tokens as plain strings
    let tokenized = tokenize_row(&cfg, &new, &user, &payload.document())?;
    let doc = match &tokenized {
        Some(t) => t.document(),
        None => payload.document(),
    };
    let into_datum = |j: Jsonb| -> Result<Option<pg_sys::Datum>> {
        Ok(if json {
            Some(j.into_json_datum()?)
        } else {
            j.into_datum()
        })
    };
    let selector = match &cfg.type_col {
        None => &cfg.fields,
        Some(c) => {
            let ty = new.text(c);
            match ty.as_deref().and_then(|t| cfg.by_type.get(t)).or(cfg.unlisted.as_ref()) {
                Some(s) => s,
                None => return Err(unlisted_type(&cfg, c, ty.as_deref())),
            }
        }
    };
    // Where the fields go, for a row with something to encrypt: a key this backend already encrypted with under
    // the key cache's generation (the usual case of a bulk insert, see `seals`) is used as it is, and what the seal
    // will read (the key schedule, the entry, its counter) is asked into the CPU's caches now, while the row's
    // envelopes, context and blind indexes are looked at; otherwise the key is resolved (or created) below. A row
    // whose fields are all envelopes (replays of a forgotten subject's events) neither needs nor makes a key.
    let which = match &cfg.key {
        KeySpec::Fixed(k) => Some(seals::Which::Fixed(k)),
        KeySpec::Column { col, prefix } => new.datum(col).map(|_| seals::Which::Subject {
            new_key_when_forgotten: cfg.new_key_when_forgotten,
            prefix,
        }),
    };
    let subject_text = |out: &mut Vec<u8>| {
        if let (KeySpec::Column { col, .. }, Some(d)) = (&cfg.key, key_col.and_then(|c| new.datum(c))) {
            append_datum_text(col, d, out);
        }
    };
    let needs = needs_encryption(&doc, selector)?;
    let known = match &which {
        Some(w) if needs => seals::known(w, subject_text),
        _ => None,
    };
    if let Some(seal) = &known {
        seal.entry.prefetch(&seal.cipher);
    }
    let may_hold_envelope = may_contain_envelope(&doc);
    // Most rows of an event table: nothing to encrypt, no envelope, no blind index. Nothing to read or check.
    if !needs && cfg.blind.is_empty() && !may_hold_envelope {
        guard(&cfg, &doc)?;
        return match tokenized {
            Some(t) => finish(&new, vec![(&cfg.payload, into_datum(t)?)]),
            None => Ok(None),
        };
    }

    // The subject's text is needed for the envelopes the row brings and for the long way to its key.
    let subject = if known.is_none() || may_hold_envelope {
        key_col.and_then(|c| new.text(c))
    } else {
        None
    };
    // A NULL context (like a NULL subject) only matters once something has to be bound to it.
    let context_text = cfg.context.as_ref().and_then(|col| new.text(col));
    let context = check_context(context_text.as_deref())?;
    let missing = |e: Error| -> Error {
        if e.kind() != ErrorKind::EnvelopeNotBound {
            return e;
        }
        match (key_col, &subject, &cfg.context, &context_text) {
            (Some(col), None, _, _) => null_key_column(&cfg, col),
            (_, _, Some(col), None) => null_context_column(&cfg, col),
            _ => e,
        }
    };

    // 2. and 3.: the envelopes the row brings, and the blind index values they hold. (A datum without the bytes
    // `$ec` holds no envelope: jsonb keeps strings verbatim.)
    let mut from_envelopes: Vec<Option<Option<String>>> = vec![None; cfg.blind.len()];
    if may_hold_envelope && !(payload_unchanged && cfg.blind.is_empty()) {
        let binding = row_binding(&cfg, subject.as_deref());
        let checked = check_envelopes(&doc, &mut CachedKeys::default(), context, &binding, |loc, c| {
            for (i, b) in cfg.blind.iter().enumerate() {
                if b.location.encoded() == loc.encoded() {
                    from_envelopes[i] = Some(match c {
                        Checked::Opened(pt) => Some(
                            keys::ensure_key(&b.key_id, &user)?
                                .indexer()?
                                .digest(&index_text(pt)?, b.normalize),
                        ),
                        Checked::Shredded => None,
                    });
                }
            }
            Ok(())
        });
        let found = checked.map_err(missing)?;
        if let (true, Some(col), None) = (found > 0, &cfg.context, &context_text) {
            // envelopes in a table bound to contexts need the row's context, even ones bound to none
            return Err(null_context_column(&cfg, col));
        }
    }

    let mut replace: Vec<(&Col, Option<pg_sys::Datum>)> = Vec::with_capacity(cfg.blind.len() + 1);
    for (i, b) in cfg.blind.iter().enumerate() {
        let digest = match value_at(&doc, &b.path)? {
            None | Some(JsonbValue::Null) => None,
            Some(JsonbValue::String(s)) if looks_like_envelope(s) => from_envelopes[i].take().flatten(),
            Some(JsonbValue::String(s)) => {
                let s = std::str::from_utf8(s).map_err(|_| Error::invalid_argument("a jsonb string is not UTF-8"))?;
                Some(keys::ensure_key(&b.key_id, &user)?.indexer()?.digest(s, b.normalize))
            }
            Some(v) => {
                // numbers, booleans and containers are indexed by their compact JSON text
                let mut text = Vec::new();
                write_json(&v, &mut text, 0)?;
                Some(
                    keys::ensure_key(&b.key_id, &user)?
                        .indexer()?
                        .digest(&index_text(&text)?, b.normalize),
                )
            }
        };
        replace.push((&b.target, digest.and_then(IntoDatum::into_datum)));
    }

    // 4.: encryption of the configured fields still in plaintext.
    if needs {
        if let (Some(col), None) = (&cfg.context, &context_text) {
            return Err(null_context_column(&cfg, col));
        }
        let seal = match known {
            Some(seal) => seal,
            None => {
                let generation = keys::cache_generation();
                let entry = match &cfg.key {
                    KeySpec::Fixed(k) => keys::ensure_key(k, &user)?,
                    KeySpec::Column { col, prefix } => {
                        let s = subject.as_deref().ok_or_else(|| null_key_column(&cfg, col))?;
                        subject_key(&cfg, col, prefix, s, &user)?.1
                    }
                };
                let (version, cipher) = entry.encryption_key()?;
                let seal = seals::Seal { entry, cipher, version };
                if let Some(w) = &which {
                    seals::remember(w, subject_text, generation, &seal);
                }
                seal
            }
        };
        // the format event_crypto.envelope_format names (format 2: the key named by its handle)
        let key = seal.entry.key_ref(keys::write_format())?;
        let encrypted = Jsonb::build(|out| {
            let n = Encryptor::new(&seal.cipher, key, seal.version, context)
                .compress(crate::guc::compression(&cfg.compress)?)
                .encrypt_document(&doc, selector, out)?;
            seal.entry.note_encrypted(seal.version, n);
            Ok(n > 0)
        });
        match &encrypted {
            // the document as it will be stored: configured fields are envelopes now
            Some(e) => guard(&cfg, &e.document())?,
            None => guard(&cfg, &doc)?,
        }
        if let Some(e) = encrypted.or(tokenized) {
            replace.push((&cfg.payload, into_datum(e)?));
        }
    } else {
        guard(&cfg, &doc)?;
        if let Some(t) = tokenized {
            replace.push((&cfg.payload, into_datum(t)?));
        }
    }
    finish(&new, replace)
}

/// Tokenization (`tokenize_fields`): every string value at a tokenized path is replaced by its token under the
/// row's key (the key its fields are encrypted with: the fixed key id, or the subject's key, created on first use as
/// encryption creates it), recorded in the token vault by the catalog owner (`crate::tokens::tokenize_with`). A
/// value that already is a token of this key in the path's format is kept (replays, restores, updates). JSON null
/// is kept; any other value that is not a string refuses the row (23514), naming the path, never the value.
/// Returns the new document, or `None` when nothing was replaced.
fn tokenize_row(
    cfg: &Config,
    new: &Row,
    user: &KeyUser<'_>,
    doc: &event_crypto_core::jsonb::Document<'_>,
) -> Result<Option<Jsonb>> {
    if cfg.tokenize.is_empty() {
        return Ok(None);
    }
    let mut entry: Option<Rc<KeyEntry>> = None;
    let mut row_key = || -> Result<Rc<KeyEntry>> {
        if let Some(e) = &entry {
            return Ok(e.clone());
        }
        let e = match &cfg.key {
            KeySpec::Fixed(k) => keys::ensure_key(k, user)?,
            KeySpec::Column { col, prefix } => {
                let s = new.text(col).ok_or_else(|| null_key_column(cfg, col))?;
                subject_key(cfg, col, prefix, &s, user)?.1
            }
        };
        entry = Some(e.clone());
        Ok(e)
    };
    let mut current: Option<Jsonb> = None;
    let mut out = Vec::new();
    for (format, selector) in &cfg.tokenize {
        let d = match &current {
            Some(j) => j.document(),
            None => *doc,
        };
        let mut f = |loc: &Location, v: &JsonbValue<'_>| -> Result<Option<String>> {
            let path = loc.display();
            let JsonbValue::String(s) = v else {
                return Err(Error::new(
                    ErrorKind::PlaintextRows,
                    format!(
                        "field \"{path}\" of column \"{}\" of protected table {} is a JSON {}, not a string: it cannot be tokenized",
                        cfg.payload.name,
                        cfg.table,
                        v.type_name()
                    ),
                )
                .with_detail("tokenize_fields replaces string values by their tokens; the row is refused rather than stored in plaintext.")
                .with_hint("Store the value as a JSON string, or move the path from tokenize_fields to fields (encrypted)."));
            };
            let s = std::str::from_utf8(s).map_err(|_| Error::invalid_argument("a jsonb string is not UTF-8"))?;
            let e = row_key()?;
            if crate::tokens::is_token_of(&e, s, *format)? {
                return Ok(None);
            }
            crate::tokens::tokenize_with(&e, s, *format).map(Some).map_err(|err| {
                let mut e2 = Error::new(
                    err.kind(),
                    format!(
                        "field \"{path}\" of column \"{}\" of protected table {} cannot be tokenized as {}: {}",
                        cfg.payload.name,
                        cfg.table,
                        format.name(),
                        err.message()
                    ),
                );
                if let Some(d) = err.detail() {
                    e2 = e2.with_detail(d.to_string());
                }
                if let Some(h) = err.hint() {
                    e2 = e2.with_hint(h.to_string());
                }
                e2
            })
        };
        let n = event_crypto_core::document::replace_selected(&d, selector, &mut f, &mut out)?;
        if n > 0 {
            current = Some(Jsonb::from_bytes(&out));
        }
    }
    Ok(current)
}

/// The PII guard (`unprotected_pii`): personal data in the document as it will be stored (its configured fields
/// are envelopes by then, so whatever is found is outside them) is reported by path and kind, never by value, as
/// a WARNING (`warn`) or by refusing the row (`error`, 23514). Keys that could be personal data themselves are
/// shown as `…`.
fn guard(cfg: &Config, doc: &event_crypto_core::jsonb::Document<'_>) -> Result<()> {
    if cfg.guard == PiiGuard::Ignore {
        return Ok(());
    }
    let mut report = event_crypto_core::pii::detect(doc)?;
    // what is found at a tokenized path is a token (e-mail and card tokens look like what they stand for)
    if !cfg.token_paths.is_empty() {
        report.findings.retain(|f| {
            FieldPath::parse(&f.path).map_or(true, |p| {
                !cfg.token_paths.iter().any(|t| super::config::paths_overlap(t, &p))
            })
        });
    }
    if report.findings.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 10;
    let mut list: Vec<String> = report
        .findings
        .iter()
        .take(SHOWN)
        .map(|f| {
            let p = event_crypto_core::pii::redacted_path(&f.path);
            format!(
                "{} ({})",
                if p.is_empty() {
                    "the whole document".into()
                } else {
                    format!("\"{p}\"")
                },
                f.kind.as_str()
            )
        })
        .collect();
    if report.findings.len() > SHOWN {
        list.push(format!("and {} more", report.findings.len() - SHOWN));
    }
    let message = format!(
        "column \"{}\" of protected table {} holds personal data outside its protected fields: {}",
        cfg.payload.name,
        cfg.table,
        list.join(", ")
    );
    let hint = "Add the paths to the fields of event_crypto.protect() (event_crypto.suggest_protection() lists them), or protect() the column again with unprotected_pii => 'ignore' if they are not personal data.";
    match cfg.guard {
        PiiGuard::Error => Err(Error::new(ErrorKind::PlaintextRows, message)
            .with_detail(
                "unprotected_pii => 'error' refuses rows with personal data the configuration leaves in plaintext.",
            )
            .with_hint(hint)),
        _ => {
            pgrx::pg_sys::panic::ErrorReport::new(pgrx::PgSqlErrorCode::ERRCODE_WARNING, message, "")
                .set_hint(hint)
                .report(pgrx::PgLogLevel::WARNING);
            Ok(())
        }
    }
}

/// The row with columns replaced, or None when nothing changes.
fn finish(row: &Row, replace: Vec<(&Col, Option<pg_sys::Datum>)>) -> Result<Option<*mut pg_sys::HeapTupleData>> {
    if replace.is_empty() {
        return Ok(None);
    }
    let mut cols: Vec<i32> = replace.iter().map(|(c, _)| c.attno.get() as i32).collect();
    let mut values: Vec<pg_sys::Datum> = replace
        .iter()
        .map(|(_, v)| v.unwrap_or(pg_sys::Datum::from(0usize)))
        .collect();
    let mut nulls: Vec<bool> = replace.iter().map(|(_, v)| v.is_none()).collect();
    // SAFETY: the arrays have one entry per replaced column (types checked); the tuple and descriptor belong to
    // this trigger call.
    let tuple = unsafe {
        pg_sys::heap_modify_tuple_by_cols(
            row.tuple,
            row.tupdesc,
            cols.len() as i32,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        )
    };
    Ok(Some(tuple))
}
