//! Consumers outside the database (issue 16, `docs/consumers.md`): `create_consumer`, `revoke_consumer` and
//! `consumer_keys`, which hands a registered consumer the data keys it asks for, each sealed with HPKE to the
//! consumer's X25519 public key (`event_crypto_core::grant`), with an expiry after which the consumer asks again
//! (and then learns of a shred).
//!
//! What a call may do is decided before any key is read: the consumer must exist, not be revoked, and belong to a
//! role the caller has the privileges of; every key id asked for by name must match the consumer's pattern (else
//! the whole call fails, 42501), and a key asked for by handle whose key id does not match is `withheld` (the
//! consumer cannot know the key id behind a handle before asking). Key material is read from the catalog for the
//! call only (never the key cache: the cache keeps ciphers, not key bytes), unwrapped, sealed and wiped. Every call
//! leaves one audit row: the consumer, how many keys it asked for and how each ended, never which keys.

use crate::access::{acting_role, acting_role_oid, as_catalog_owner};
use crate::error::{raise, spi_error, OrRaise};
use crate::keys::{self, Row};
use event_crypto_core::aead::Algorithm;
use event_crypto_core::envelope::KeyHandle;
use event_crypto_core::grant::{self, GrantInfo, Purpose};
use event_crypto_core::hpke::PublicKey;
use event_crypto_core::master::KeyPurpose;
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Keys one call may ask for.
pub const MAX_KEYS: usize = 10_000;
/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| raise(Error::null_argument(name)))
}

/// Registers a consumer: its X25519 public key (`ecpk1:` text form, as `event-crypto keygen` prints it), the LIKE
/// pattern of the key ids it may fetch, how long it may keep a key (1 second to 1 day), and the role that may fetch
/// its keys (default: the calling role).
#[pg_extern(volatile, parallel_unsafe, requires = ["consumers"])]
fn create_consumer(
    name: Option<&str>,
    public_key: Option<&str>,
    key_pattern: default!(Option<&str>, "'%'"),
    ttl: default!(Option<Interval>, "'5 minutes'"),
    role: default!(Option<&str>, "NULL"),
) {
    keys::require_writable("call event_crypto.create_consumer()").or_raise();
    let name = required(name, "name");
    check_name(name).or_raise();
    let public_key = PublicKey::parse_text(required(public_key, "public_key")).or_raise();
    let pattern = required(key_pattern, "key_pattern");
    if pattern.is_empty() || pattern.len() > 255 {
        raise(
            Error::invalid_argument("key_pattern must be 1 to 255 bytes long").with_hint("Use '%' for every key id."),
        );
    }
    let ttl = required(ttl, "ttl");
    let role_oid = match role {
        None => acting_role_oid(),
        Some(r) => role_oid(r).or_raise(),
    };
    let ttl_ok = Spi::get_one_with_args::<bool>(
        "SELECT $1 OPERATOR(pg_catalog.>=) '1 second'::pg_catalog.interval \
            AND $1 OPERATOR(pg_catalog.<=) '1 day'::pg_catalog.interval",
        &[ttl.into()],
    )
    .map_err(spi_error)
    .or_raise()
    .unwrap_or(false);
    if !ttl_ok {
        raise(
            Error::invalid_argument("ttl must be between 1 second and 1 day")
                .with_detail("The ttl is how long a consumer keeps a key: how long a shred takes to reach it.")
                .with_hint("Use e.g. '5 minutes'."),
        );
    }
    let actor = acting_role();
    let inserted = as_catalog_owner(|| {
        crate::catalog::modify(
            "INSERT INTO event_crypto.consumer_registry (name, role, public_key, key_pattern, ttl, created_by) \
             VALUES ($1, $2::pg_catalog.oid::pg_catalog.regrole, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
            &[
                name.into(),
                role_oid.into(),
                public_key.as_bytes().as_slice().into(),
                pattern.into(),
                ttl.into(),
                actor.as_str().into(),
            ],
        )
    })
    .or_raise();
    if inserted == 0 {
        raise(
            Error::new(ErrorKind::DuplicateKey, format!("consumer \"{name}\" already exists"))
                .with_detail("A consumer's name is never registered twice, not even after revoke_consumer().")
                .with_hint("Choose another name."),
        );
    }
    crate::audit::record(
        "create_consumer",
        None,
        &[],
        json!({"consumer": name, "role": role_name(role_oid), "key_pattern": pattern, "ttl": ttl.to_string()}),
    );
}

/// Revokes a consumer: from now on `consumer_keys` refuses it. Keys it fetched before stay with it until their
/// expiry (docs/consumers.md). Returns false when it was revoked already.
#[pg_extern(volatile, parallel_unsafe, requires = ["consumers"])]
fn revoke_consumer(name: Option<&str>) -> bool {
    keys::require_writable("call event_crypto.revoke_consumer()").or_raise();
    let name = required(name, "name");
    let actor = acting_role();
    let (exists, revoked) = as_catalog_owner(|| -> Result<(bool, usize)> {
        let exists = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM event_crypto.consumer_registry WHERE name OPERATOR(pg_catalog.=) $1)",
            &[name.into()],
        )
        .map_err(spi_error)?
        .unwrap_or(false);
        let n = crate::catalog::modify(
            "UPDATE event_crypto.consumer_registry SET revoked_at = pg_catalog.now(), revoked_by = $2 \
             WHERE name OPERATOR(pg_catalog.=) $1 AND revoked_at IS NULL",
            &[name.into(), actor.as_str().into()],
        )?;
        Ok((exists, n))
    })
    .or_raise();
    if !exists {
        raise(Error::new(
            ErrorKind::UnknownKey,
            format!("consumer \"{name}\" does not exist"),
        ));
    }
    if revoked > 0 {
        crate::audit::record("revoke_consumer", None, &[], json!({"consumer": name}));
    }
    revoked > 0
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
        return Err(Error::invalid_argument(
            "a consumer name must be 1 to 63 bytes without control characters",
        ));
    }
    Ok(())
}

fn role_oid(role: &str) -> Result<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT (SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1)",
        &[role.into()],
    )
    .map_err(spi_error)?
    .ok_or_else(|| Error::new(ErrorKind::UnknownKey, format!("role \"{role}\" does not exist")))
}

fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a catalog lookup by OID; `true`: a missing role gives NULL instead of an error.
    let p = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    if p.is_null() {
        format!("role {}", u32::from(oid))
    } else {
        // SAFETY: a NUL-terminated string palloc'd by GetUserNameFromId.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// A registered consumer, as `consumer_keys` needs it.
struct Consumer {
    public_key: PublicKey,
    pattern: String,
    ttl_us: i64,
}

/// The consumer `name`, if the calling role may fetch its keys; 42501 otherwise (unknown, another role's, revoked).
fn consumer_for_caller(name: &str) -> Result<Consumer> {
    let caller = acting_role_oid();
    type ConsumerRow = (pg_sys::Oid, Vec<u8>, String, i64, bool);
    let row: Option<ConsumerRow> = as_catalog_owner(|| {
        Spi::connect(|client| -> Result<Option<ConsumerRow>> {
            let t = client
                .select(
                    "SELECT role::pg_catalog.oid, public_key, key_pattern, \
                            (pg_catalog.extract('epoch', ttl) OPERATOR(pg_catalog.*) 1000000)::pg_catalog.int8, \
                            revoked_at IS NOT NULL \
                     FROM event_crypto.consumer_registry WHERE name OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[name.into()],
                )
                .map_err(spi_error)?;
            match t.into_iter().next() {
                None => Ok(None),
                Some(r) => {
                    use crate::catalog::get;
                    Ok(Some((
                        get(&r, 1, "role")?,
                        get(&r, 2, "public_key")?,
                        get(&r, 3, "key_pattern")?,
                        get(&r, 4, "ttl")?,
                        get(&r, 5, "revoked")?,
                    )))
                }
            }
        })
    })?;
    let refused = || {
        Error::new(
            ErrorKind::PermissionDenied,
            format!("no consumer \"{name}\" is registered to role \"{}\"", acting_role()),
        )
        .with_hint("An event_crypto_admin registers consumers with event_crypto.create_consumer(..., role => ...).")
    };
    let Some((role, public_key, pattern, ttl_us, revoked)) = row else {
        return Err(refused());
    };
    // SAFETY: a catalog lookup of role membership (superusers have every role's privileges).
    if !unsafe { pg_sys::has_privs_of_role(caller, role) } {
        return Err(refused());
    }
    if revoked {
        return Err(
            Error::new(ErrorKind::PermissionDenied, format!("consumer \"{name}\" was revoked")).with_hint(
                "Register the consumer again under a new name with a new key pair if it should decrypt again.",
            ),
        );
    }
    let public_key: [u8; 32] = public_key.try_into().map_err(|_| {
        Error::new(
            ErrorKind::CatalogAccess,
            "a consumer's public key in the catalog is not 32 bytes",
        )
        .with_hint("The catalog was changed by hand or is damaged.")
    })?;
    Ok(Consumer {
        public_key: PublicKey::from_bytes(public_key),
        pattern,
        ttl_us,
    })
}

/// What one element of the request asks for.
enum Asked {
    Id(String),
    Handle(KeyHandle),
}

struct Request {
    asked: Asked,
    version: Option<u32>,
    purpose: Purpose,
}

fn bad_request(i: usize, what: &str) -> Error {
    Error::invalid_argument(format!("element {i} of keys is not a valid key request: {what}")).with_hint(
        "keys is a JSON array of objects such as {\"handle\": \"0123456789abcdef\", \"version\": 1} or \
         {\"key_id\": \"subject:alice\", \"version\": 1}, optionally with \"purpose\": \"blind_index\".",
    )
}

fn parse_requests(keys: &Value) -> Result<Vec<Request>> {
    let Value::Array(items) = keys else {
        return Err(Error::invalid_argument("keys must be a JSON array"));
    };
    if items.len() > MAX_KEYS {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!("at most {MAX_KEYS} keys can be asked for in one call"),
        )
        .with_detail(format!("{} were asked for.", items.len()))
        .with_hint("Ask in batches."));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            return Err(bad_request(i, "not an object"));
        };
        if let Some(k) = o
            .keys()
            .find(|k| !matches!(k.as_str(), "key_id" | "handle" | "version" | "purpose"))
        {
            return Err(bad_request(i, &format!("unknown member \"{}\"", truncate(k))));
        }
        let asked = match (o.get("key_id"), o.get("handle")) {
            (Some(Value::String(id)), None) => {
                event_crypto_core::envelope::check_key_id(id).map_err(|_| bad_request(i, "invalid key_id"))?;
                Asked::Id(id.clone())
            }
            (None, Some(Value::String(h))) => Asked::Handle(
                parse_handle(h)
                    .ok_or_else(|| bad_request(i, "handle must be 16 lowercase hexadecimal digits, not all zero"))?,
            ),
            (Some(_), Some(_)) => return Err(bad_request(i, "both key_id and handle")),
            (None, None) => return Err(bad_request(i, "neither key_id nor handle")),
            _ => return Err(bad_request(i, "key_id and handle must be strings")),
        };
        let purpose = match o.get("purpose") {
            None => Purpose::Data,
            Some(Value::String(p)) if p == "data" => Purpose::Data,
            Some(Value::String(p)) if p == "blind_index" => Purpose::BlindIndex,
            Some(_) => return Err(bad_request(i, "purpose must be \"data\" or \"blind_index\"")),
        };
        let version = match o.get("version") {
            None if purpose == Purpose::BlindIndex => None,
            None => return Err(bad_request(i, "version is missing")),
            Some(v) => Some(
                v.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| (1..=i32::MAX as u32).contains(v))
                    .ok_or_else(|| bad_request(i, "version must be an integer from 1 to 2147483647"))?,
            ),
        };
        out.push(Request {
            asked,
            version,
            purpose,
        });
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    event_crypto_core::aead::truncate_for_message(s)
}

fn parse_handle(h: &str) -> Option<KeyHandle> {
    if h.len() != 16 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    KeyHandle::from_i64(u64::from_str_radix(h, 16).ok()? as i64)
}

/// How one request ended.
struct Answer {
    key_id: Option<String>,
    handle: Option<String>,
    version: Option<i32>,
    purpose: Purpose,
    status: &'static str,
    algorithm: Option<String>,
    grant: Option<Vec<u8>>,
}

impl Answer {
    fn without_key(req: &Request, status: &'static str, key_id: Option<String>, handle: Option<KeyHandle>) -> Answer {
        Answer {
            key_id,
            handle: handle.map(|h| h.to_string()),
            version: req.version.map(|v| v as i32),
            purpose: req.purpose,
            status,
            algorithm: None,
            grant: None,
        }
    }
}

/// Hands consumer `name` the keys it asks for (see the module comment and docs/consumers.md): one row per element
/// of `keys`, in order.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe, requires = ["consumers"])]
fn consumer_keys(
    name: Option<&str>,
    keys: Option<pgrx::JsonB>,
) -> TableIterator<
    'static,
    (
        name!(key_id, Option<String>),
        name!(handle, Option<String>),
        name!(version, Option<i32>),
        name!(purpose, String),
        name!(status, String),
        name!(algorithm, Option<String>),
        name!(grant_data, Option<Vec<u8>>),
        name!(issued_at, Option<TimestampWithTimeZone>),
        name!(expires_at, Option<TimestampWithTimeZone>),
    ),
> {
    let name = required(name, "name");
    let pgrx::JsonB(keys) = required(keys, "keys");
    // every call is audited: on the primary only
    keys::require_writable("call event_crypto.consumer_keys()").or_raise();
    let consumer = consumer_for_caller(name).or_raise();
    let requests = parse_requests(&keys).or_raise();
    let answers = answer(name, &consumer, &requests).or_raise();

    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for a in &answers.0 {
        *counts.entry(a.status).or_default() += 1;
    }
    crate::audit::record(
        "consumer_keys",
        None,
        &[],
        json!({
            "consumer": name,
            "keys": requests.len(),
            "granted": counts.get("granted").copied().unwrap_or(0),
            "shredded": counts.get("shredded").copied().unwrap_or(0),
            "disabled": counts.get("disabled").copied().unwrap_or(0),
            "unknown": counts.get("unknown").copied().unwrap_or(0),
            "withheld": counts.get("withheld").copied().unwrap_or(0),
        }),
    );
    let (list, issued, expires) = answers;
    let issued = timestamp(issued);
    let expires = timestamp(expires);
    TableIterator::new(list.into_iter().map(move |a| {
        let granted = a.grant.is_some();
        (
            a.key_id,
            a.handle,
            a.version,
            match a.purpose {
                Purpose::Data => "data",
                Purpose::BlindIndex => "blind_index",
            }
            .to_string(),
            a.status.to_string(),
            a.algorithm,
            a.grant,
            granted.then_some(issued),
            granted.then_some(expires),
        )
    }))
}

fn timestamp(unix_us: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(unix_us - PG_EPOCH_UNIX_US)
        .unwrap_or_else(|_| raise(Error::new(ErrorKind::InvalidArgument, "timestamp out of range")))
}

/// The answers to `requests`, with the issue and expiry times of the grants (microseconds since the Unix epoch).
fn answer(consumer_name: &str, consumer: &Consumer, requests: &[Request]) -> Result<(Vec<Answer>, i64, i64)> {
    // SAFETY: reads the clock.
    let issued_at = unsafe { pg_sys::GetCurrentTimestamp() } + PG_EPOCH_UNIX_US;
    let expires_at = issued_at + consumer.ttl_us;
    let mut ids: Vec<String> = Vec::new();
    let mut handles: Vec<i64> = Vec::new();
    for r in requests {
        match &r.asked {
            Asked::Id(id) => ids.push(id.clone()),
            Asked::Handle(h) => handles.push(h.to_i64()),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    handles.sort_unstable();
    handles.dedup();

    let read = as_catalog_owner(|| read_catalog(&ids, &handles, &consumer.pattern))?;
    if let Some(outside) = read.outside_pattern.first() {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "consumer \"{consumer_name}\" may not fetch key \"{}\"",
                truncate(outside)
            ),
        )
        .with_detail(format!(
            "{} of the key ids asked for are outside the consumer's key pattern.",
            read.outside_pattern.len()
        ))
        .with_hint("An event_crypto_admin sets the pattern when registering the consumer."));
    }

    let mut out = Vec::with_capacity(requests.len());
    for req in requests {
        pgrx::check_for_interrupts!();
        let (key_id, rows) = match &req.asked {
            Asked::Id(id) => match read.by_id.get(id) {
                Some(rows) => (id.clone(), rows),
                None => {
                    let status = if read.tombstoned.contains(id) {
                        "shredded"
                    } else {
                        "unknown"
                    };
                    out.push(Answer::without_key(req, status, None, None));
                    continue;
                }
            },
            Asked::Handle(h) => match read.by_handle.get(&h.to_i64()) {
                Some(id) => (id.clone(), &read.by_id[id]),
                None => {
                    out.push(Answer::without_key(req, "unknown", None, Some(*h)));
                    continue;
                }
            },
        };
        let handle = rows.iter().find_map(|r| r.handle);
        if event_crypto_core::digest::is_digest(&key_id) {
            // a key id shredded whole: only its tombstone is left
            out.push(Answer::without_key(req, "shredded", None, handle));
            continue;
        }
        if matches!(req.asked, Asked::Handle(_)) && !read.allowed.contains(&key_id) {
            out.push(Answer::without_key(req, "withheld", None, handle));
            continue;
        }
        let row = match req.version {
            Some(v) => rows.iter().find(|r| r.version == v),
            // the blind-index root of the newest live version (every version of a key id carries the same root)
            None => rows.iter().rev().find(|r| r.status != "shredded").or(rows.last()),
        };
        let Some(row) = row else {
            out.push(Answer::without_key(req, "unknown", Some(key_id), handle));
            continue;
        };
        let mut answer = Answer::without_key(req, "", Some(key_id.clone()), handle);
        answer.version = Some(row.version as i32);
        match row.status.as_str() {
            "shredded" => answer.status = "shredded",
            "disabled" => answer.status = "disabled",
            _ => {
                let Some(handle) = handle else {
                    return Err(
                        Error::new(ErrorKind::CatalogAccess, "the key catalog has no handle for a key id")
                            .with_hint("Run ALTER EXTENSION event_crypto UPDATE."),
                    );
                };
                let algorithm = Algorithm::from_name(&row.algorithm)?;
                let purpose = match req.purpose {
                    Purpose::Data => KeyPurpose::Data,
                    Purpose::BlindIndex => KeyPurpose::BlindIndex,
                };
                let key = keys::unwrap_row(&key_id, row, purpose)?;
                let info = GrantInfo {
                    consumer: consumer_name,
                    key_id: &key_id,
                    handle,
                    version: row.version,
                    purpose: req.purpose,
                    algorithm,
                    issued_at,
                    expires_at,
                };
                answer.grant = Some(grant::seal_grant(&consumer.public_key, &info, &key)?);
                answer.status = "granted";
                answer.algorithm = Some(algorithm.name().to_string());
            }
        }
        out.push(answer);
    }
    Ok((out, issued_at, expires_at))
}

/// What the catalog holds for one call's key ids and handles.
struct CatalogRead {
    /// Each key id's version rows, in version order.
    by_id: HashMap<String, Vec<Row>>,
    /// The key id of each handle found.
    by_handle: HashMap<i64, String>,
    /// Key ids (of those read) that match the consumer's pattern.
    allowed: std::collections::HashSet<String>,
    /// Key ids asked for by name that do not match the pattern.
    outside_pattern: Vec<String>,
    /// Key ids asked for by name that have no rows but a tombstone (shredded whole).
    tombstoned: std::collections::HashSet<String>,
}

fn read_catalog(ids: &[String], handles: &[i64], pattern: &str) -> Result<CatalogRead> {
    Spi::connect(|client| {
        let outside: Vec<String> = client
            .select(
                "SELECT x FROM pg_catalog.unnest($1::pg_catalog.text[]) x \
                 WHERE NOT (x OPERATOR(pg_catalog.~~) $2) ORDER BY x",
                None,
                &[ids.to_vec().into(), pattern.into()],
            )
            .map_err(spi_error)?
            .map(|r| crate::catalog::get::<String>(&r, 1, "key_id"))
            .collect::<Result<_>>()?;
        let mut read = CatalogRead {
            by_id: HashMap::new(),
            by_handle: HashMap::new(),
            allowed: Default::default(),
            outside_pattern: outside,
            tombstoned: Default::default(),
        };
        if !read.outside_pattern.is_empty() {
            return Ok(read);
        }
        // Both halves find their rows through an index: the primary key (key_id, version), and keys_handle (the
        // partial unique index on version 1 rows).
        let t = client
            .select(
                "SELECT k.version, k.algorithm, k.status, k.wrapped_key, k.wrapped_index_key, k.master_key_id, \
                        k.handle, k.key_id, k.key_id OPERATOR(pg_catalog.~~) $3 \
                 FROM event_crypto.keys k WHERE k.key_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]) \
                 UNION \
                 SELECT k.version, k.algorithm, k.status, k.wrapped_key, k.wrapped_index_key, k.master_key_id, \
                        k.handle, k.key_id, k.key_id OPERATOR(pg_catalog.~~) $3 \
                 FROM event_crypto.keys k WHERE k.key_id OPERATOR(pg_catalog.=) ANY (ARRAY( \
                     SELECT h.key_id FROM event_crypto.keys h \
                     WHERE h.handle OPERATOR(pg_catalog.=) ANY ($2::pg_catalog.int8[]) AND h.version OPERATOR(pg_catalog.=) 1)) \
                 ORDER BY 8, 1",
                None,
                &[ids.to_vec().into(), handles.to_vec().into(), pattern.into()],
            )
            .map_err(spi_error)?;
        for r in t {
            pgrx::check_for_interrupts!();
            let row = keys::parse_row(&r)?;
            let allowed = crate::catalog::get::<bool>(&r, 9, "allowed")?;
            if allowed {
                read.allowed.insert(row.key_id.clone());
            }
            if let Some(h) = row.handle {
                read.by_handle.insert(h.to_i64(), row.key_id.clone());
            }
            read.by_id.entry(row.key_id.clone()).or_default().push(row);
        }
        for id in ids {
            if read.by_id.contains_key(id) {
                continue;
            }
            // a key id shredded whole is kept as its tombstone (rows under the key id's digest)
            if let Some(t) = crate::tombstones::tombstone_id(id)? {
                if !keys::read_named_rows(client, &t).is_empty() {
                    read.tombstoned.insert(id.clone());
                }
            }
        }
        Ok(read)
    })
}
