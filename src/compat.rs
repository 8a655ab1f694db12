//! C symbols that the SQL objects of earlier releases name and this release no longer implements.
//!
//! Between installing a new build and `ALTER EXTENSION event_crypto UPDATE`, a database still has the SQL objects
//! of the release it was created with, and they call into the new library by symbol name. Every symbol an earlier
//! release's script references stays defined (tests/upgrade.sh checks it against the previous release's script):
//! those still implemented under the same name keep working, and those whose function was removed raise a clear
//! error here instead of PostgreSQL's "could not find function" or worse.

use crate::error::raise;
use event_crypto_core::{Error, ErrorKind};
use pgrx::pg_sys;

/// The version-1 calling convention record PostgreSQL looks up as `pg_finfo_<symbol>`.
static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

fn removed(function: &str, release: &str, why: &str) -> ! {
    raise(
        Error::new(
            ErrorKind::NotReady,
            format!("event_crypto.{function}() was removed in event_crypto {release}"),
        )
        .with_detail(why.to_string())
        .with_hint("The server runs a newer event_crypto library than this database's SQL objects: run ALTER EXTENSION event_crypto UPDATE."),
    )
}

/// 0.1.0's `record_maintenance(text, text[], jsonb)`: removed in 0.2.0 (any caller could write audit rows).
#[no_mangle]
pub extern "C" fn pg_finfo_record_maintenance_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1
}

/// See [`pg_finfo_record_maintenance_wrapper`].
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo`, which is not used.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn record_maintenance_wrapper(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    removed(
        "record_maintenance",
        "0.2.0",
        "Audit rows are written only by the functions whose actions they describe.",
    )
}

/// Calls `target`, the function of this release behind an SQL function whose signature gained trailing parameters
/// since an earlier release, for that release's SQL objects (which call the old symbol with `old` arguments): the
/// arguments given, then `defaults` (the new parameters' default values, `None` for NULL). Any other number of
/// arguments is refused with the hint to update.
///
/// # Safety
/// `fcinfo` is a valid call of the old SQL function; `target` is a pgrx wrapper whose parameters are the old ones
/// followed by those `defaults` stand for, with the same types.
unsafe fn forward(
    fcinfo: pg_sys::FunctionCallInfo,
    function: &str,
    old: usize,
    defaults: &[Option<pg_sys::Datum>],
    target: unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
) -> pg_sys::Datum {
    // SAFETY: per the contract, fcinfo is valid.
    let given = unsafe { (*fcinfo).nargs } as usize;
    if given != old {
        raise(
            Error::new(
                ErrorKind::NotReady,
                format!("event_crypto.{function}() is called with {given} arguments, which this library does not take"),
            )
            .with_hint("The server runs a newer event_crypto library than this database's SQL objects: run ALTER EXTENSION event_crypto UPDATE."),
        );
    }
    let total = old + defaults.len();
    let size =
        std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>() + total * std::mem::size_of::<pg_sys::NullableDatum>();
    // SAFETY: a zeroed allocation of the size PostgreSQL's SizeForFunctionCallInfo(total) gives, in the current
    // memory context; the header is copied from the valid call, the arguments from its `old` ones and `defaults`.
    unsafe {
        let call = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
        (*call).flinfo = (*fcinfo).flinfo;
        (*call).context = (*fcinfo).context;
        (*call).resultinfo = (*fcinfo).resultinfo;
        (*call).fncollation = (*fcinfo).fncollation;
        (*call).nargs = total as i16;
        let from = (*fcinfo).args.as_slice(old);
        let to = (*call).args.as_mut_slice(total);
        to[..old].copy_from_slice(from);
        for (slot, d) in to[old..].iter_mut().zip(defaults) {
            *slot = match d {
                Some(value) => pg_sys::NullableDatum {
                    value: *value,
                    isnull: false,
                },
                None => pg_sys::NullableDatum {
                    value: pg_sys::Datum::from(0usize),
                    isnull: true,
                },
            };
        }
        let result = target(call);
        (*fcinfo).isnull = (*call).isnull;
        result
    }
}

/// 0.2.0's `protect(regclass, name, text[], text, name, text, name, name, jsonb, text, name, boolean)`: the 0.3.0
/// function with the defaults of the parameters it gained (`unprotected_pii => 'ignore'`, `compress => 'none'`,
/// `tokenize_fields => NULL`).
#[no_mangle]
pub extern "C" fn pg_finfo_protect_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1
}

/// See [`pg_finfo_protect_wrapper`].
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo` of 0.2.0's `protect()`.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn protect_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pgrx::IntoDatum;
    // SAFETY: forwarded as the contract of `forward` asks: 0.3.0's protect() is 0.2.0's plus trailing parameters.
    unsafe {
        forward(
            fcinfo,
            "protect",
            12,
            &["ignore".into_datum(), "none".into_datum(), None],
            crate::protect::admin::protect_0_3_wrapper,
        )
    }
}

/// 0.2.0's `encrypt_fields(jsonb, text[], text, text)`: the 0.3.0 function with `compress => 'none'`.
#[no_mangle]
pub extern "C" fn pg_finfo_encrypt_fields_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1
}

/// See [`pg_finfo_encrypt_fields_wrapper`].
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo` of 0.2.0's `encrypt_fields()`.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn encrypt_fields_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pgrx::IntoDatum;
    // SAFETY: 0.3.0's encrypt_fields() is 0.2.0's plus a trailing parameter.
    unsafe {
        forward(
            fcinfo,
            "encrypt_fields",
            4,
            &["none".into_datum()],
            crate::api::encrypt_fields_0_3_wrapper,
        )
    }
}

/// 0.2.0's `encrypt_value(jsonb, text, text)`: the 0.3.0 function with `compress => 'none'`.
#[no_mangle]
pub extern "C" fn pg_finfo_encrypt_value_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1
}

/// See [`pg_finfo_encrypt_value_wrapper`].
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo` of 0.2.0's `encrypt_value()`.
#[no_mangle]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn encrypt_value_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pgrx::IntoDatum;
    // SAFETY: 0.3.0's encrypt_value() is 0.2.0's plus a trailing parameter.
    unsafe {
        forward(
            fcinfo,
            "encrypt_value",
            3,
            &["none".into_datum()],
            crate::api::encrypt_value_0_3_wrapper,
        )
    }
}
