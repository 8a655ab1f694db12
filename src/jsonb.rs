//! `Jsonb`: a `jsonb` argument or result kept in PostgreSQL's binary form.
//!
//! pgrx's own `JsonB` goes through text both ways (`jsonb_out` and a JSON parse in, a JSON print and `jsonb_in`
//! out), which profiles showed to be most of the cost of encrypting a field. Here an argument is only detoasted
//! (a short inline value is not even copied) and read in place by the core's binary reader, and a result is the
//! core's binary output copied once into a palloc'd datum. No per-token call into PostgreSQL happens at all.

use crate::error::{raise, OrRaise};
use event_crypto_core::jsonb::Document;
use event_crypto_core::Error;
use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum as BoxedDatum;
use pgrx::nullable::Nullable;
use pgrx::pgrx_sql_entity_graph::metadata::{ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable};
use pgrx::{pg_sys, FromDatum, IntoDatum};
use std::cell::{Cell, RefCell};

/// A jsonb datum (detoasted, possibly with a short header) valid for the current function call.
pub struct Jsonb {
    ptr: *const u8,
    len: usize,
}

thread_local! {
    static UTF8: Cell<Option<bool>> = const { Cell::new(None) };
    /// The output buffer, reused from row to row.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Field values become JSON text inside envelopes, which is UTF-8: other database encodings are refused rather
/// than producing envelopes that could not be read back.
fn require_utf8() {
    let ok = UTF8.with(|c| match c.get() {
        Some(ok) => ok,
        None => {
            // SAFETY: reads the database encoding fixed at backend start.
            let ok = unsafe { pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 };
            c.set(Some(ok));
            ok
        }
    });
    if !ok {
        raise(
            Error::invalid_argument("event_crypto needs a database with UTF8 encoding")
                .with_detail("Encrypted values hold the JSON text of the original value, which is UTF-8.")
                .with_hint("Create the database with ENCODING 'UTF8'."),
        );
    }
}

impl Jsonb {
    /// # Safety
    /// `datum` must be a non-null jsonb datum.
    pub unsafe fn from_datum_packed(datum: pg_sys::Datum) -> Jsonb {
        // SAFETY (caller): a jsonb varlena; detoasting keeps a short header, which the core reads.
        unsafe {
            let p = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            Jsonb {
                ptr: p as *const u8,
                len: pgrx::varlena::varsize_any(p),
            }
        }
    }

    /// A `json` datum's text parsed into the binary form (a json payload column is worked on as jsonb).
    ///
    /// # Safety
    /// `datum` must be a non-null json (text) datum.
    pub unsafe fn from_json_datum(datum: pg_sys::Datum) -> event_crypto_core::Result<Jsonb> {
        require_utf8();
        // SAFETY (caller): a text varlena; detoasting keeps a short header, which the slice handles.
        let bytes = unsafe {
            let p = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            pgrx::varlena::varlena_to_byte_slice(p)
        };
        let text =
            std::str::from_utf8(bytes).map_err(|_| Error::invalid_argument("a json value is not valid UTF-8"))?;
        Ok(Jsonb::from_bytes(&event_crypto_core::jsonb::from_json_text(text)?))
    }

    /// The JSON text of the document, as a `json` datum.
    pub fn into_json_datum(self) -> event_crypto_core::Result<pg_sys::Datum> {
        let text = event_crypto_core::jsonb::to_json_text(self.bytes())?;
        Ok(text.into_datum().expect("a string is never NULL"))
    }

    /// Copies a datum built by the core (4-byte header included) into the current memory context.
    pub fn from_bytes(bytes: &[u8]) -> Jsonb {
        // SAFETY: palloc raises on failure; the copy fits the allocation.
        unsafe {
            let p = pg_sys::palloc(bytes.len()) as *mut u8;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            Jsonb {
                ptr: p,
                len: bytes.len(),
            }
        }
    }

    /// Runs `f` with the reusable output buffer; its contents become the result when `f` returns true.
    pub fn build(f: impl FnOnce(&mut Vec<u8>) -> event_crypto_core::Result<bool>) -> Option<Jsonb> {
        OUT.with(|cell| {
            let mut out = cell.borrow_mut();
            let built = f(&mut out).or_raise();
            let result = built.then(|| Jsonb::from_bytes(&out));
            if out.capacity() > 1 << 20 {
                // do not keep a huge buffer for the rest of the session
                *out = Vec::new();
            }
            result
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe a detoasted or palloc'd datum that lives for the current call.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The document, read in place.
    pub fn document(&self) -> Document<'_> {
        require_utf8();
        Document::from_datum(self.bytes()).or_raise()
    }
}

impl FromDatum for Jsonb {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Jsonb> {
        if is_null {
            None
        } else {
            Some(unsafe { Jsonb::from_datum_packed(datum) })
        }
    }
}

impl IntoDatum for Jsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.ptr))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for Jsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

unsafe impl BoxRet for Jsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> BoxedDatum<'fcx> {
        match self.into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

unsafe impl SqlTranslatable for Jsonb {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Jsonb);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}
