//! event_crypto_client: decrypts event_crypto documents outside PostgreSQL, as a registered consumer.
//!
//! The database hands a consumer (`event_crypto.create_consumer`) the data keys its key pattern allows, each sealed
//! to the consumer's X25519 public key (HPKE) and valid for the consumer's TTL (`event_crypto.consumer_keys`). A
//! [`Consumer`] holds the private key, fetches the keys a batch of documents needs in one call, opens the grants,
//! caches the keys until they expire ([`cache::KeyCache`]) and decrypts with the core's JSON decryptor: the same
//! envelope code, `on_shredded` policies and context binding as the SQL function `decrypt_fields`.
//!
//! Nothing here writes a key or a plaintext into an error message.

pub mod cache;

pub use cache::{KeyCache, Status};
pub use event_crypto_core::document::OnShredded;
pub use event_crypto_core::hpke::{PrivateKey, PublicKey};
pub use event_crypto_core::json::{envelope_keys, OnWithheld, OwnedKeyRef};

use event_crypto_core::envelope::KeyHandle;
use event_crypto_core::grant::{self, GrantInfo, Purpose};
use event_crypto_core::json::JsonDecryptor;
use event_crypto_core::{Algorithm, Cipher};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// At most this many keys are asked for in one `consumer_keys` call (the function's own limit).
pub const MAX_KEYS_PER_CALL: usize = 10_000;

/// Everything that can go wrong for a consumer. Messages never hold key bytes or plaintext.
#[derive(Debug)]
pub enum Error {
    /// A bad setting: the key file, a policy name.
    Config(String),
    /// The database could not be reached.
    Connect(String),
    /// The database refused to hand out keys (revoked or unknown consumer, another role's consumer, a key id
    /// outside the pattern: SQLSTATE 42501).
    Refused(String),
    /// The key fetch failed otherwise.
    Fetch(String),
    /// A grant did not open with the consumer's private key, or the answer was not what the protocol says.
    Grant(String),
    /// Decrypting a document failed (the core's error: malformed envelope, wrong context, failed authentication,
    /// unknown or withheld key under the `error` policies).
    Decrypt(event_crypto_core::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "{m}"),
            Error::Connect(m) => write!(f, "cannot connect to the database: {m}"),
            Error::Refused(m) => write!(f, "the database refused to hand out keys: {m}"),
            Error::Fetch(m) => write!(f, "fetching keys failed: {m}"),
            Error::Grant(m) => write!(f, "a key grant is not valid: {m}"),
            Error::Decrypt(e) => {
                write!(f, "{}", e.message())?;
                if let Some(d) = e.detail() {
                    write!(f, " ({d})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<event_crypto_core::Error> for Error {
    fn from(e: event_crypto_core::Error) -> Self {
        Error::Decrypt(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// How deep a document read from text may nest: jsonb's limit (the core's decryptor refuses deeper documents).
pub const MAX_NESTING: usize = event_crypto_core::jsonb::MAX_DEPTH;

/// Checks that the JSON text `t` nests at most `limit` levels (arrays and objects) before it is parsed: the JSON
/// parser recurses once per level, and input from outside must not exhaust the stack.
pub fn check_nesting(t: &[u8], limit: usize) -> Result<()> {
    // every level takes a byte; the core's scan is the one its JSON decryptor applies to plaintexts
    if t.len() > limit && event_crypto_core::json::nesting(t, limit + 1) > limit {
        return Err(Error::Config(format!(
            "the JSON text nests more than {limit} levels deep"
        )));
    }
    Ok(())
}

/// Parses a document from JSON text, its nesting checked first ([`MAX_NESTING`]).
pub fn parse_document(t: &[u8]) -> Result<serde_json::Value> {
    check_nesting(t, MAX_NESTING)?;
    serde_json::from_slice(t).map_err(|e| Error::Config(format!("not a JSON document ({e})")))
}

/// Reads a private key file (`ecsk1:` + base64, as `event-crypto keygen` writes it). Refuses a file that other
/// users may read.
pub fn read_key_file(path: &Path) -> Result<PrivateKey> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Config(format!("cannot read the key file {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::Config(format!(
                "the key file {} may be read by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
    }
    let _ = meta;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read the key file {}: {e}", path.display())))?,
    );
    PrivateKey::parse_text(&text).map_err(|e| {
        Error::Config(format!(
            "the key file {} does not hold a private key: {}",
            path.display(),
            e.message()
        ))
    })
}

/// Writes a new private key to `path` (mode 0600, never over an existing file); returns it.
pub fn write_new_key_file(path: &Path) -> Result<PrivateKey> {
    use std::io::Write;
    let key = PrivateKey::generate().map_err(|e| Error::Config(format!("cannot generate a key: {}", e.message())))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Config(format!(
            "{} exists already; a key file is never overwritten",
            path.display()
        )),
        _ => Error::Config(format!("cannot create {}: {e}", path.display())),
    })?;
    let text = key.to_text();
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok(key)
}

/// How to connect and decrypt as one consumer.
pub struct ConsumerConfig {
    /// libpq-style connection string (`host=... port=... user=... dbname=...`) or `postgresql://` URL.
    pub dsn: String,
    /// The consumer's name, as registered by `create_consumer`.
    pub consumer: String,
    pub private_key: PrivateKey,
    pub on_shredded: OnShredded,
    pub on_withheld: OnWithheld,
    /// How long answers other than granted and shredded (disabled, withheld, unknown) are cached.
    pub status_ttl: Duration,
}

impl ConsumerConfig {
    pub fn new(dsn: impl Into<String>, consumer: impl Into<String>, private_key: PrivateKey) -> ConsumerConfig {
        ConsumerConfig {
            dsn: dsn.into(),
            consumer: consumer.into(),
            private_key,
            on_shredded: OnShredded::Null,
            on_withheld: OnWithheld::Keep,
            status_ttl: Duration::from_secs(60),
        }
    }
}

/// Parses an `on_withheld` policy name: keep, null or error.
pub fn parse_on_withheld(s: &str) -> Result<OnWithheld> {
    match s {
        "keep" => Ok(OnWithheld::Keep),
        "null" => Ok(OnWithheld::Null),
        "error" => Ok(OnWithheld::Error),
        _ => Err(Error::Config(
            "unknown on_withheld policy; use 'keep', 'null' or 'error'".into(),
        )),
    }
}

/// Parses an `on_shredded` policy name: null, keep or error.
pub fn parse_on_shredded(s: &str) -> Result<OnShredded> {
    OnShredded::parse(s).map_err(|_| Error::Config("unknown on_shredded policy; use 'null', 'keep' or 'error'".into()))
}

/// Counters over everything a consumer decrypted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Envelopes decrypted.
    pub decrypted: u64,
    /// Envelopes under shredded (or disabled) keys.
    pub shredded: u64,
    /// Envelopes under keys withheld from this consumer.
    pub withheld: u64,
    /// `consumer_keys` calls made.
    pub fetches: u64,
    /// Keys asked for in them.
    pub keys_fetched: u64,
}

/// A consumer: its connection, its keys, its policies.
pub struct Consumer {
    config: ConsumerConfig,
    client: Option<postgres::Client>,
    cache: KeyCache,
    pub stats: Stats,
}

impl Consumer {
    /// A consumer that connects on its first key fetch.
    pub fn new(config: ConsumerConfig) -> Consumer {
        let cache = KeyCache::new(config.status_ttl);
        Consumer {
            config,
            client: None,
            cache,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// The cache itself: to seed it, or to empty it (`*consumer.cache_mut() = KeyCache::default()`).
    pub fn cache_mut(&mut self) -> &mut KeyCache {
        &mut self.cache
    }

    /// Connects now (otherwise the first fetch does).
    pub fn connect(&mut self) -> Result<()> {
        self.client()?;
        Ok(())
    }

    fn client(&mut self) -> Result<&mut postgres::Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let c = postgres::Client::connect(&self.config.dsn, postgres::NoTls)
                .map_err(|e| Error::Connect(e.to_string()))?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Decrypts one document in place; `context` is the value the envelopes are bound to (a protected table's
    /// context column, as text), or None.
    pub fn decrypt(&mut self, doc: &mut serde_json::Value, context: Option<&[u8]>) -> Result<()> {
        let mut r = self.decrypt_batch(std::slice::from_mut(doc), &[context])?;
        r.pop().expect("one result per document")
    }

    /// Decrypts a batch of documents in place: fetches every key the batch needs and the cache lacks (or holds
    /// expired) in one `consumer_keys` call per 10,000 keys, then decrypts each document under its context
    /// (`contexts` is empty for no context at all, or has one entry per document).
    ///
    /// The outer error is a failure of the key fetch (nothing was decrypted); each document has its own result.
    pub fn decrypt_batch(
        &mut self,
        docs: &mut [serde_json::Value],
        contexts: &[Option<&[u8]>],
    ) -> Result<Vec<Result<()>>> {
        if !contexts.is_empty() && contexts.len() != docs.len() {
            return Err(Error::Config(format!(
                "{} contexts for {} documents: give one per document, or none",
                contexts.len(),
                docs.len()
            )));
        }
        let mut wanted = HashSet::new();
        for d in docs.iter() {
            envelope_keys(d, &mut wanted);
        }
        let now = Instant::now();
        let missing: Vec<(OwnedKeyRef, u32)> = wanted
            .into_iter()
            .filter(|(k, v)| self.cache.needs(k, *v, now))
            .collect();
        if !missing.is_empty() {
            self.cache.purge(now);
            self.fetch(&missing)?;
        }
        // the cache as it stood when the batch's keys were known fresh: a grant that expires while the batch is
        // decrypted is still used for it
        let at = now;
        let (on_shredded, on_withheld) = (self.config.on_shredded, self.config.on_withheld);
        let mut results = Vec::with_capacity(docs.len());
        let mut src = self.cache.at(at);
        for (i, d) in docs.iter_mut().enumerate() {
            let ctx = contexts.get(i).copied().flatten();
            let mut dec = JsonDecryptor::new(&mut src, ctx, on_shredded).on_withheld(on_withheld);
            let r = dec.decrypt(d);
            self.stats.decrypted += dec.decrypted as u64;
            self.stats.shredded += dec.shredded as u64;
            self.stats.withheld += dec.withheld as u64;
            results.push(r.map_err(Error::Decrypt));
        }
        Ok(results)
    }

    /// Fetches (key, version) pairs into the cache, 10,000 per call.
    pub fn fetch(&mut self, keys: &[(OwnedKeyRef, u32)]) -> Result<()> {
        for chunk in keys.chunks(MAX_KEYS_PER_CALL) {
            self.fetch_chunk(chunk)?;
        }
        Ok(())
    }

    fn fetch_chunk(&mut self, keys: &[(OwnedKeyRef, u32)]) -> Result<()> {
        let request = serde_json::Value::Array(
            keys.iter()
                .map(|(k, v)| match k {
                    OwnedKeyRef::Handle(h) => serde_json::json!({"handle": h.to_string(), "version": v}),
                    OwnedKeyRef::Id(id) => serde_json::json!({"key_id": id, "version": v}),
                })
                .collect(),
        )
        .to_string();
        let consumer = self.config.consumer.clone();
        let requested_at = Instant::now();
        let rows = self
            .client()?
            .query(
                "SELECT key_id, handle, version, purpose, status, algorithm, grant_data, issued_at, expires_at \
                 FROM event_crypto.consumer_keys($1, $2::text::jsonb)",
                &[&consumer, &request],
            )
            .map_err(|e| fetch_error(&consumer, e))?;
        self.stats.fetches += 1;
        self.stats.keys_fetched += keys.len() as u64;
        if rows.len() != keys.len() {
            return Err(Error::Grant(format!(
                "consumer_keys answered {} rows for {} keys",
                rows.len(),
                keys.len()
            )));
        }
        for ((key, version), row) in keys.iter().zip(rows.iter()) {
            let status: String = row.try_get("status").map_err(|e| Error::Grant(e.to_string()))?;
            let key_id: Option<String> = row.try_get("key_id").map_err(|e| Error::Grant(e.to_string()))?;
            let (status, lifetime) = match status.as_str() {
                "granted" => self.open(key, *version, row)?,
                "shredded" => (Status::Shredded, Duration::ZERO),
                "disabled" => (Status::Disabled, Duration::ZERO),
                "withheld" => (Status::Withheld, Duration::ZERO),
                "unknown" => (Status::Unknown, Duration::ZERO),
                other => return Err(Error::Grant(format!("unknown status {other:?} from consumer_keys"))),
            };
            self.cache
                .insert(key, *version, status, key_id.as_deref(), requested_at, lifetime);
        }
        Ok(())
    }

    /// Opens one granted row: checks that it answers what was asked, then opens the grant with the private key.
    fn open(&self, asked: &OwnedKeyRef, version: u32, row: &postgres::Row) -> Result<(Status, Duration)> {
        let bad = |what: &str| Error::Grant(format!("a granted row has {what}"));
        let key_id: String = row
            .try_get::<_, Option<String>>("key_id")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no key id"))?;
        let handle_text: String = row
            .try_get::<_, Option<String>>("handle")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no handle"))?;
        let handle = (handle_text.len() == 16)
            .then(|| u64::from_str_radix(&handle_text, 16).ok())
            .flatten()
            .and_then(KeyHandle::new)
            .ok_or_else(|| bad("a malformed handle"))?;
        let got_version: i32 = row
            .try_get::<_, Option<i32>>("version")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no version"))?;
        let purpose: String = row
            .try_get::<_, Option<String>>("purpose")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no purpose"))?;
        let algorithm: String = row
            .try_get::<_, Option<String>>("algorithm")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no algorithm"))?;
        let grant_data: Vec<u8> = row
            .try_get::<_, Option<Vec<u8>>>("grant_data")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no grant"))?;
        let issued_at: SystemTime = row
            .try_get::<_, Option<SystemTime>>("issued_at")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no issued_at"))?;
        let expires_at: SystemTime = row
            .try_get::<_, Option<SystemTime>>("expires_at")
            .ok()
            .flatten()
            .ok_or_else(|| bad("no expires_at"))?;
        let matches = match asked {
            OwnedKeyRef::Handle(h) => *h == handle,
            OwnedKeyRef::Id(id) => *id == key_id,
        };
        if !matches || got_version as i64 != version as i64 || purpose != "data" {
            return Err(bad("another key than the one asked for"));
        }
        let algorithm = Algorithm::from_name(&algorithm).map_err(|_| bad("an unknown algorithm"))?;
        let (issued, expires) = (micros(issued_at), micros(expires_at));
        if expires <= issued {
            return Err(bad("expires_at not after issued_at"));
        }
        let info = GrantInfo {
            consumer: &self.config.consumer,
            key_id: &key_id,
            handle,
            version,
            purpose: Purpose::Data,
            algorithm,
            issued_at: issued,
            expires_at: expires,
        };
        let key = grant::open_grant(&self.config.private_key, &info, &grant_data).map_err(|e| {
            Error::Grant(format!(
                "the grant of key \"{key_id}\" version {version} does not open with this consumer's private key ({})",
                e.message()
            ))
        })?;
        let cipher = Cipher::new(algorithm, &key);
        Ok((
            Status::Granted(Rc::new(cipher)),
            Duration::from_micros((expires - issued) as u64),
        ))
    }
}

/// Microseconds since the Unix epoch (negative before it), as the grant's associated data holds them.
fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

fn fetch_error(consumer: &str, e: postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) if db.code().code() == "42501" => {
            let mut m = if db.message().contains(&format!("\"{consumer}\"")) {
                db.message().to_string()
            } else {
                format!("consumer \"{consumer}\": {}", db.message())
            };
            if let Some(h) = db.hint() {
                m.push_str(&format!(" ({h})"));
            }
            Error::Refused(m)
        }
        Some(db) => Error::Fetch(format!("{} (SQLSTATE {})", db.message(), db.code().code())),
        None if e.is_closed() => Error::Connect(e.to_string()),
        None => Error::Fetch(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_crypto_core::envelope::{seal, KeyRef, Scratch, SealKey};
    use event_crypto_core::path::Location;
    use serde_json::json;

    const KEY: [u8; 32] = [9u8; 32];
    const HANDLE: u64 = 0x5ec2_f00d_0000_0007;

    fn handle() -> OwnedKeyRef {
        OwnedKeyRef::Handle(KeyHandle::new(HANDLE).unwrap())
    }

    /// An envelope of `plaintext` (JSON text) at object key `field`, as the extension writes it.
    fn envelope(field: &str, plaintext: &str, context: Option<&[u8]>) -> String {
        let cipher = Cipher::new(Algorithm::ChaCha20Poly1305, &KEY);
        let key = SealKey {
            cipher: &cipher,
            key: KeyRef::Handle(KeyHandle::new(HANDLE).unwrap()),
            version: 1,
        };
        let mut loc = Location::root();
        loc.push_key(field);
        seal(
            &key,
            &loc,
            context,
            plaintext.as_bytes(),
            &[3u8; 12],
            &mut Scratch::default(),
        )
        .unwrap()
    }

    /// A consumer whose database cannot be reached: any fetch fails with a connection error.
    fn offline() -> Consumer {
        let mut c = Consumer::new(ConsumerConfig::new(
            "host=127.0.0.1 port=1 user=nobody connect_timeout=2",
            "test",
            PrivateKey::from_bytes(&[1u8; 32]),
        ));
        c.config.status_ttl = Duration::from_secs(60);
        c
    }

    fn grant(c: &mut Consumer, lifetime: Duration) {
        let cipher = Cipher::new(Algorithm::ChaCha20Poly1305, &KEY);
        c.cache_mut().insert(
            &handle(),
            1,
            Status::Granted(Rc::new(cipher)),
            Some("subject:alice"),
            Instant::now(),
            lifetime,
        );
    }

    #[test]
    fn a_batch_whose_keys_are_cached_decrypts_without_a_fetch() {
        let mut c = offline();
        grant(&mut c, Duration::from_secs(60));
        let mut docs = vec![
            json!({"email": envelope("email", r#""a@x.io""#, Some(b"s1")), "n": 1}),
            json!({"email": envelope("email", "12.50", Some(b"s2"))}),
            json!({"plain": true}),
        ];
        let r = c.decrypt_batch(&mut docs, &[Some(b"s1"), Some(b"s2"), None]).unwrap();
        assert!(r.iter().all(|r| r.is_ok()));
        assert_eq!(docs[0], json!({"email": "a@x.io", "n": 1}));
        // numbers keep their digits
        assert_eq!(docs[1].to_string(), r#"{"email":12.50}"#);
        assert_eq!(docs[2], json!({"plain": true}));
        assert_eq!((c.stats.decrypted, c.stats.fetches), (2, 0));
    }

    #[test]
    fn each_document_has_its_own_result() {
        let mut c = offline();
        grant(&mut c, Duration::from_secs(60));
        let good = envelope("email", r#""a@x.io""#, Some(b"s1"));
        let mut docs = vec![
            json!({"email": good.clone()}),
            json!({"email": good.clone()}),
            json!({"other": good}),
        ];
        // the second is read under another context, the third at another field: both fail authentication
        let r = c
            .decrypt_batch(&mut docs, &[Some(b"s1"), Some(b"s9"), Some(b"s1")])
            .unwrap();
        assert!(r[0].is_ok());
        assert!(r[1].is_err() && r[2].is_err());
        let msg = r[1].as_ref().unwrap_err().to_string();
        assert!(!msg.contains("a@x.io"), "{msg}");
        assert_eq!(docs[0], json!({"email": "a@x.io"}));
        // a context count that does not match is refused
        assert!(matches!(c.decrypt_batch(&mut docs, &[None]), Err(Error::Config(_))));
    }

    #[test]
    fn an_expired_grant_is_fetched_again() {
        let mut c = offline();
        grant(&mut c, Duration::ZERO);
        let mut docs = vec![json!({"email": envelope("email", "1", None)})];
        match c.decrypt_batch(&mut docs, &[]) {
            Err(Error::Connect(_)) => {}
            other => panic!("expected a connection error, got {:?}", other.map(|_| ())),
        }
        // nothing was decrypted
        assert!(docs[0]["email"].as_str().unwrap().starts_with("$ec2$"));
    }

    #[test]
    fn shredded_and_withheld_keys_follow_the_policies() {
        let env = envelope("email", r#""a@x.io""#, None);
        let run = |status: Status, on_shredded: OnShredded, on_withheld: OnWithheld| {
            let mut c = offline();
            c.config.on_shredded = on_shredded;
            c.config.on_withheld = on_withheld;
            c.cache_mut()
                .insert(&handle(), 1, status, None, Instant::now(), Duration::ZERO);
            let mut docs = vec![json!({"email": env.clone()})];
            let r = c.decrypt_batch(&mut docs, &[]).unwrap().pop().unwrap();
            (r.is_ok(), docs.pop().unwrap(), c.stats)
        };
        let (ok, doc, stats) = run(Status::Shredded, OnShredded::Null, OnWithheld::Keep);
        assert!(ok && doc == json!({"email": null}) && stats.shredded == 1);
        let (ok, doc, _) = run(Status::Shredded, OnShredded::Keep, OnWithheld::Keep);
        assert!(ok && doc == json!({"email": env.clone()}));
        assert!(!run(Status::Shredded, OnShredded::Error, OnWithheld::Keep).0);
        let (ok, doc, stats) = run(Status::Withheld, OnShredded::Null, OnWithheld::Keep);
        assert!(ok && doc == json!({"email": env.clone()}) && stats.withheld == 1);
        let (ok, doc, _) = run(Status::Withheld, OnShredded::Null, OnWithheld::Null);
        assert!(ok && doc == json!({"email": null}));
        assert!(!run(Status::Withheld, OnShredded::Null, OnWithheld::Error).0);
        assert!(!run(Status::Unknown, OnShredded::Null, OnWithheld::Keep).0);
    }

    #[test]
    fn nesting_is_checked_before_parsing() {
        assert!(check_nesting(b"[[[1]]]", 3).is_ok());
        assert!(check_nesting(b"[[[[1]]]]", 3).is_err());
        // brackets inside strings do not count, escaped quotes do not end them
        assert!(check_nesting(br#"[{"a": "[[[[\"[[[["}]"#, 2).is_ok());
        assert!(check_nesting(b"[1],[2],[3],[4]", 1).is_ok());
        let deep = "[".repeat(100_000);
        assert!(matches!(parse_document(deep.as_bytes()), Err(Error::Config(m)) if m.contains("levels deep")));
        assert_eq!(parse_document(br#"{"n": 1.50}"#).unwrap().to_string(), r#"{"n":1.50}"#);
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("ec-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("consumer.key");
        let _ = std::fs::remove_file(&path);
        let key = write_new_key_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(write_new_key_file(&path), Err(Error::Config(m)) if m.contains("never overwritten")));
        assert_eq!(read_key_file(&path).unwrap().public_key(), key.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(read_key_file(&path), Err(Error::Config(m)) if m.contains("chmod 600")));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
