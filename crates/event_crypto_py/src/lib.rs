//! The Python package `event_crypto`: [`event_crypto_client::Consumer`] for Python programs.
//!
//! ```python
//! import event_crypto
//! public_key = event_crypto.keygen("/etc/myapp/consumer.key")   # register it with create_consumer
//! c = event_crypto.Consumer("host=db user=analytics dbname=app", "analytics", "/etc/myapp/consumer.key")
//! doc = c.decrypt(row["payload"], context=str(row["stream_id"]))
//! ```
//! Documents go through Python's `json` module on the way in and out, so they decrypt to the same Python values
//! `json.loads` gives.

use event_crypto_client::{
    parse_on_shredded, parse_on_withheld, read_key_file, write_new_key_file, Consumer as Inner, ConsumerConfig,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::path::PathBuf;

create_exception!(event_crypto, Error, PyException, "Any failure of event_crypto.");
create_exception!(event_crypto, ConfigError, Error, "A bad key file, policy or argument.");
create_exception!(
    event_crypto,
    ConnectionError,
    Error,
    "The database could not be reached."
);
create_exception!(
    event_crypto,
    KeysRefused,
    Error,
    "The database refused to hand out keys (revoked or unknown consumer, key id outside the pattern)."
);
create_exception!(event_crypto, DecryptError, Error, "A document did not decrypt.");

fn to_py(e: event_crypto_client::Error) -> PyErr {
    use event_crypto_client::Error as E;
    let m = e.to_string();
    match e {
        E::Config(_) => ConfigError::new_err(m),
        E::Connect(_) => ConnectionError::new_err(m),
        E::Refused(_) => KeysRefused::new_err(m),
        E::Fetch(_) | E::Grant(_) => Error::new_err(m),
        E::Decrypt(_) => DecryptError::new_err(m),
    }
}

/// A consumer registered with event_crypto.create_consumer: decrypts documents with the keys the database grants
/// it, fetched in batches and cached until their grants expire.
#[pyclass(unsendable, module = "event_crypto")]
struct Consumer {
    inner: Inner,
}

/// The JSON text of a document given as a Python object or as JSON text.
fn doc_text(py: Python<'_>, doc: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    let text: String = if doc.is_instance_of::<PyString>() {
        doc.extract()?
    } else {
        py.import("json")?.call_method1("dumps", (doc,))?.extract()?
    };
    event_crypto_client::parse_document(text.as_bytes()).map_err(to_py)
}

fn to_object(py: Python<'_>, v: &serde_json::Value) -> PyResult<PyObject> {
    Ok(py.import("json")?.call_method1("loads", (v.to_string(),))?.unbind())
}

#[pymethods]
impl Consumer {
    #[new]
    #[pyo3(signature = (dsn, consumer, key_file, on_shredded = "null", on_withheld = "keep"))]
    fn new(dsn: &str, consumer: &str, key_file: PathBuf, on_shredded: &str, on_withheld: &str) -> PyResult<Self> {
        let key = read_key_file(&key_file).map_err(to_py)?;
        let mut config = ConsumerConfig::new(dsn, consumer, key);
        config.on_shredded = parse_on_shredded(on_shredded).map_err(to_py)?;
        config.on_withheld = parse_on_withheld(on_withheld).map_err(to_py)?;
        Ok(Consumer {
            inner: Inner::new(config),
        })
    }

    /// Decrypts one document (a dict or list, or its JSON text) bound to `context` (the protected table's context
    /// column as text, or None); returns the decrypted document as Python objects.
    #[pyo3(signature = (doc, context = None))]
    fn decrypt(&mut self, py: Python<'_>, doc: &Bound<'_, PyAny>, context: Option<&str>) -> PyResult<PyObject> {
        let mut v = doc_text(py, doc)?;
        self.inner.decrypt(&mut v, context.map(str::as_bytes)).map_err(to_py)?;
        to_object(py, &v)
    }

    /// Decrypts many documents with one key fetch; `contexts` is None or one context (or None) per document.
    #[pyo3(signature = (docs, contexts = None))]
    fn decrypt_many(
        &mut self,
        py: Python<'_>,
        docs: Vec<Bound<'_, PyAny>>,
        contexts: Option<Vec<Option<String>>>,
    ) -> PyResult<Vec<PyObject>> {
        let mut values = docs.iter().map(|d| doc_text(py, d)).collect::<PyResult<Vec<_>>>()?;
        let ctx: Vec<Option<&[u8]>> = contexts
            .iter()
            .flatten()
            .map(|c| c.as_deref().map(str::as_bytes))
            .collect();
        let results = self.inner.decrypt_batch(&mut values, &ctx).map_err(to_py)?;
        for (i, r) in results.into_iter().enumerate() {
            r.map_err(|e| DecryptError::new_err(format!("document {i}: {e}")))?;
        }
        values.iter().map(|v| to_object(py, v)).collect()
    }

    /// Counters: envelopes decrypted, shredded, withheld; key fetches and keys fetched.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats;
        let d = PyDict::new(py);
        d.set_item("decrypted", s.decrypted)?;
        d.set_item("shredded", s.shredded)?;
        d.set_item("withheld", s.withheld)?;
        d.set_item("fetches", s.fetches)?;
        d.set_item("keys_fetched", s.keys_fetched)?;
        Ok(d)
    }

    /// Forgets every cached key: the next documents fetch their keys again.
    fn clear_cache(&mut self) {
        *self.inner.cache_mut() = event_crypto_client::KeyCache::new(self.inner.config().status_ttl);
    }
}

/// Writes a new private key file (mode 0600; never over an existing file) and returns the public key text
/// (`ecpk1:...`) to register with event_crypto.create_consumer.
#[pyfunction]
fn keygen(path: PathBuf) -> PyResult<String> {
    let key = write_new_key_file(&path).map_err(to_py)?;
    Ok(key.public_key().to_text())
}

/// The public key text of a private key file.
#[pyfunction]
fn public_key(key_file: PathBuf) -> PyResult<String> {
    Ok(read_key_file(&key_file).map_err(to_py)?.public_key().to_text())
}

#[pymodule]
fn event_crypto(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Consumer>()?;
    m.add_function(wrap_pyfunction!(keygen, m)?)?;
    m.add_function(wrap_pyfunction!(public_key, m)?)?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("ConnectionError", py.get_type::<ConnectionError>())?;
    m.add("KeysRefused", py.get_type::<KeysRefused>())?;
    m.add("DecryptError", py.get_type::<DecryptError>())?;
    Ok(())
}
