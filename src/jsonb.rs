//! `Jsonb`: a `jsonb` argument/return type converted straight from and to PostgreSQL's binary jsonb.
//!
//! pgrx's own `JsonB` goes through text both ways (`jsonb_out` + a JSON parse in, a JSON print + `jsonb_in` out),
//! which profiles showed to be most of the cost of encrypting a field. Here the binary container is walked with
//! `JsonbIteratorNext` and rebuilt with `pushJsonbValue`; only numbers go through text (`numeric_out` /
//! `numeric_in`), so that serde_json's arbitrary-precision numbers keep the exact digits.

use crate::error::raise;
use event_crypto_core::Error;
use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum as BoxedDatum;
use pgrx::nullable::Nullable;
use pgrx::pgrx_sql_entity_graph::metadata::{ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable};
use pgrx::{direct_function_call, direct_function_call_as_datum, pg_sys, FromDatum, IntoDatum};
use serde_json::{Map, Number, Value};
use std::ffi::{CStr, CString};
use std::str::FromStr;

/// A jsonb value held as a `serde_json::Value`, converted without a text round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Jsonb(pub Value);

enum Frame {
    Array {
        items: Vec<Value>,
        raw_scalar: bool,
    },
    Object {
        map: Map<String, Value>,
        key: Option<String>,
    },
}

fn add(stack: &mut [Frame], v: Value) {
    match stack.last_mut() {
        Some(Frame::Array { items, .. }) => items.push(v),
        Some(Frame::Object { map, key }) => {
            let k = key.take().expect("jsonb iteration yields a key before each value");
            map.insert(k, v);
        }
        None => unreachable!("a scalar outside a container is wrapped in a raw scalar array"),
    }
}

unsafe fn jbv_string(v: &pg_sys::JsonbValue) -> String {
    // SAFETY (caller): v is a jbvString whose val/len describe bytes inside the detoasted jsonb.
    let s = unsafe { v.val.string };
    let bytes = unsafe { std::slice::from_raw_parts(s.val as *const u8, s.len as usize) };
    String::from_utf8(bytes.to_vec()).unwrap_or_else(|_| {
        raise(
            Error::invalid_argument("a jsonb string is not valid UTF-8")
                .with_hint("event_crypto needs a UTF8 database."),
        )
    })
}

unsafe fn jbv_scalar(v: &pg_sys::JsonbValue) -> Value {
    match v.type_ {
        pg_sys::jbvType::jbvNull => Value::Null,
        pg_sys::jbvType::jbvBool => Value::Bool(unsafe { v.val.boolean }),
        pg_sys::jbvType::jbvString => Value::String(unsafe { jbv_string(v) }),
        pg_sys::jbvType::jbvNumeric => {
            // SAFETY: numeric_out of a valid Numeric returns a palloc'd C string.
            let text = unsafe {
                direct_function_call::<&CStr>(pg_sys::numeric_out, &[Some(pg_sys::Datum::from(v.val.numeric))])
            }
            .expect("numeric_out returns text");
            let n = Number::from_str(text.to_str().expect("numeric text is ASCII"))
                .unwrap_or_else(|_| raise(Error::invalid_argument("a jsonb number cannot be represented in JSON")));
            Value::Number(n)
        }
        other => raise(Error::invalid_argument(format!("unexpected jsonb value type {other}"))),
    }
}

/// Reads a (possibly toasted) jsonb datum into a `Value`.
///
/// # Safety
/// `datum` must be a non-null jsonb datum.
pub unsafe fn datum_to_value(datum: pg_sys::Datum) -> Value {
    unsafe {
        let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
        let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            match pg_sys::JsonbIteratorNext(&mut it, &mut v, false) {
                pg_sys::JsonbIteratorToken::WJB_DONE => break,
                pg_sys::JsonbIteratorToken::WJB_BEGIN_ARRAY => stack.push(Frame::Array {
                    items: Vec::with_capacity(v.val.array.nElems.max(0) as usize),
                    raw_scalar: v.val.array.rawScalar,
                }),
                pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT => stack.push(Frame::Object {
                    map: Map::new(),
                    key: None,
                }),
                pg_sys::JsonbIteratorToken::WJB_KEY => {
                    if let Some(Frame::Object { key, .. }) = stack.last_mut() {
                        *key = Some(jbv_string(&v));
                    }
                }
                pg_sys::JsonbIteratorToken::WJB_VALUE | pg_sys::JsonbIteratorToken::WJB_ELEM => {
                    let s = jbv_scalar(&v);
                    add(&mut stack, s);
                }
                pg_sys::JsonbIteratorToken::WJB_END_ARRAY | pg_sys::JsonbIteratorToken::WJB_END_OBJECT => {
                    let done = match stack.pop().expect("balanced jsonb iteration") {
                        Frame::Array {
                            mut items,
                            raw_scalar: true,
                        } if items.len() == 1 => items.pop().expect("one"),
                        Frame::Array { items, .. } => Value::Array(items),
                        Frame::Object { map, .. } => Value::Object(map),
                    };
                    if stack.is_empty() {
                        return done;
                    }
                    add(&mut stack, done);
                }
                other => raise(Error::invalid_argument(format!(
                    "unexpected jsonb iterator token {other}"
                ))),
            }
        }
        Value::Null
    }
}

fn palloc_str(s: &str) -> (*mut std::ffi::c_char, i32) {
    // SAFETY: palloc raises on failure; the copy fits the allocation.
    unsafe {
        let p = pg_sys::palloc(s.len().max(1)) as *mut u8;
        std::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        (p as *mut std::ffi::c_char, s.len() as i32)
    }
}

fn string_jbv(s: &str) -> pg_sys::JsonbValue {
    // SAFETY: an all-zero JsonbValue is valid; a jbvString needs only len and val.
    let mut out: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    out.type_ = pg_sys::jbvType::jbvString;
    let (val, len) = palloc_str(s);
    out.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 { len, val };
    out
}

fn scalar_jbv(v: &Value) -> pg_sys::JsonbValue {
    // SAFETY: an all-zero JsonbValue is a valid jbvNull; the fields set below match the type tag.
    let mut out: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    match v {
        Value::Null => out.type_ = pg_sys::jbvType::jbvNull,
        Value::Bool(b) => {
            out.type_ = pg_sys::jbvType::jbvBool;
            out.val.boolean = *b;
        }
        Value::String(s) => return string_jbv(s),
        Value::Number(n) => {
            out.type_ = pg_sys::jbvType::jbvNumeric;
            let text = CString::new(n.to_string()).expect("a JSON number has no NUL byte");
            // SAFETY: numeric_in(cstring, typioparam, typmod) on a valid JSON number text.
            let d = unsafe {
                direct_function_call_as_datum(
                    pg_sys::numeric_in,
                    &[
                        Some(pg_sys::Datum::from(text.as_ptr())),
                        Some(pg_sys::InvalidOid.into()),
                        Some((-1i32).into()),
                    ],
                )
            }
            .expect("numeric_in returns a value");
            out.val.numeric = d.cast_mut_ptr();
        }
        Value::Array(_) | Value::Object(_) => unreachable!("containers are pushed, not converted as scalars"),
    }
    out
}

unsafe fn push(
    state: &mut *mut pg_sys::JsonbParseState,
    v: &Value,
    token: pg_sys::JsonbIteratorToken::Type,
) -> *mut pg_sys::JsonbValue {
    unsafe {
        match v {
            Value::Object(map) => {
                pg_sys::pushJsonbValue(
                    state,
                    pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT,
                    std::ptr::null_mut(),
                );
                // Push the keys in jsonb's own order (shorter first, then bytewise): PostgreSQL sorts each object's
                // keys when it closes, and its sort returns at once on presorted input.
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| {
                    a.0.len()
                        .cmp(&b.0.len())
                        .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
                });
                for (k, child) in entries {
                    let mut key = string_jbv(k);
                    pg_sys::pushJsonbValue(state, pg_sys::JsonbIteratorToken::WJB_KEY, &mut key);
                    push(state, child, pg_sys::JsonbIteratorToken::WJB_VALUE);
                }
                pg_sys::pushJsonbValue(state, pg_sys::JsonbIteratorToken::WJB_END_OBJECT, std::ptr::null_mut())
            }
            Value::Array(items) => {
                pg_sys::pushJsonbValue(state, pg_sys::JsonbIteratorToken::WJB_BEGIN_ARRAY, std::ptr::null_mut());
                for child in items {
                    push(state, child, pg_sys::JsonbIteratorToken::WJB_ELEM);
                }
                pg_sys::pushJsonbValue(state, pg_sys::JsonbIteratorToken::WJB_END_ARRAY, std::ptr::null_mut())
            }
            scalar => {
                let mut jbv = scalar_jbv(scalar);
                pg_sys::pushJsonbValue(state, token, &mut jbv)
            }
        }
    }
}

/// Builds a jsonb datum (in the current memory context) from a `Value`.
pub fn value_to_datum(v: &Value) -> pg_sys::Datum {
    // SAFETY: pushJsonbValue/JsonbValueToJsonb build a new jsonb from well-formed tokens; scalars at the top level
    // are converted directly (JsonbValueToJsonb wraps them in a raw scalar array).
    unsafe {
        let root = match v {
            Value::Object(_) | Value::Array(_) => {
                let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
                push(&mut state, v, pg_sys::JsonbIteratorToken::WJB_VALUE)
            }
            scalar => Box::into_raw(Box::new(scalar_jbv(scalar))),
        };
        let jb = pg_sys::JsonbValueToJsonb(root);
        if !matches!(v, Value::Object(_) | Value::Array(_)) {
            drop(Box::from_raw(root));
        }
        pg_sys::Datum::from(jb)
    }
}

impl FromDatum for Jsonb {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Jsonb> {
        if is_null {
            None
        } else {
            Some(Jsonb(unsafe { datum_to_value(datum) }))
        }
    }
}

impl IntoDatum for Jsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(value_to_datum(&self.0))
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
