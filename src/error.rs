//! The single mapping from the core's error kinds to SQLSTATEs, and the one place errors are raised.

use event_crypto_core::{Error, ErrorKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub fn sqlstate(kind: ErrorKind) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match kind {
        ErrorKind::NullArgument => ERRCODE_NULL_VALUE_NOT_ALLOWED, // 22004
        ErrorKind::InvalidArgument => ERRCODE_INVALID_PARAMETER_VALUE, // 22023
        ErrorKind::InvalidPath => ERRCODE_SYNTAX_ERROR,            // 42601
        ErrorKind::MalformedEnvelope => ERRCODE_INVALID_TEXT_REPRESENTATION, // 22P02
        ErrorKind::UnsupportedVersion => ERRCODE_FEATURE_NOT_SUPPORTED, // 0A000
        ErrorKind::ContextMismatch => ERRCODE_DATA_EXCEPTION,      // 22000
        ErrorKind::AuthenticationFailed => ERRCODE_DATA_CORRUPTED, // XX001
        ErrorKind::UnknownKey => ERRCODE_UNDEFINED_OBJECT,         // 42704
        ErrorKind::DuplicateKey => ERRCODE_DUPLICATE_OBJECT,       // 42710
        ErrorKind::KeyShredded => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
        ErrorKind::MasterKeyUnavailable => ERRCODE_CONFIG_FILE_ERROR, // F0000
        ErrorKind::MasterKeyMismatch => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, // 28000
        ErrorKind::WrappedKeyCorrupt => ERRCODE_DATA_CORRUPTED,    // XX001
        ErrorKind::TooLarge => ERRCODE_PROGRAM_LIMIT_EXCEEDED,     // 54000
        ErrorKind::RandomSource => ERRCODE_SYSTEM_ERROR,           // 58000
        ErrorKind::SubjectForgotten => ERRCODE_CHECK_VIOLATION,    // 23514
        ErrorKind::RebindRefused => ERRCODE_FEATURE_NOT_SUPPORTED, // 0A000
        ErrorKind::ConfigColumn => ERRCODE_UNDEFINED_COLUMN,       // 42703
        ErrorKind::CatalogAccess => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
        ErrorKind::KeyInUse => ERRCODE_OBJECT_IN_USE,              // 55006
        ErrorKind::EnvelopeNotBound => ERRCODE_CHECK_VIOLATION,    // 23514
        ErrorKind::PermissionDenied => ERRCODE_INSUFFICIENT_PRIVILEGE, // 42501
        ErrorKind::WrongObjectType => ERRCODE_WRONG_OBJECT_TYPE,   // 42809
        ErrorKind::WrongColumnType => ERRCODE_DATATYPE_MISMATCH,   // 42804
        ErrorKind::NotReady => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, // 55000
        ErrorKind::Unsupported => ERRCODE_FEATURE_NOT_SUPPORTED,   // 0A000
        ErrorKind::UnlistedType => ERRCODE_CHECK_VIOLATION,        // 23514
        // no standard code says "this key is disabled": reading data not permitted, raised by an external routine
        ErrorKind::KeyDisabled => ERRCODE_E_R_E_READING_SQL_DATA_NOT_PERMITTED, // 38004
        ErrorKind::PlaintextRows => ERRCODE_CHECK_VIOLATION,                    // 23514
        ErrorKind::ReadOnly => ERRCODE_READ_ONLY_SQL_TRANSACTION,               // 25006
        ErrorKind::KeyHandleConflict => ERRCODE_UNIQUE_VIOLATION,               // 23505
    }
}

/// Raises `e` as a PostgreSQL ERROR with its SQLSTATE, message, detail and hint. Never returns.
pub fn raise(e: Error) -> ! {
    let mut report = ErrorReport::new(sqlstate(e.kind()), e.message().to_string(), "event_crypto");
    if let Some(d) = e.detail() {
        report = report.set_detail(d.to_string());
    }
    if let Some(h) = e.hint() {
        report = report.set_hint(h.to_string());
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) does not return")
}

/// Reports `e` as a WARNING with its SQLSTATE, message, detail and hint, and goes on.
pub fn warn(e: &Error) {
    let mut report = ErrorReport::new(sqlstate(e.kind()), e.message().to_string(), "event_crypto");
    if let Some(d) = e.detail() {
        report = report.set_detail(d.to_string());
    }
    if let Some(h) = e.hint() {
        report = report.set_hint(h.to_string());
    }
    report.report(PgLogLevel::WARNING);
}

/// Unwraps a core result or raises its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e),
        }
    }
}

/// An SPI failure on the extension's own tables as an error (see [`spi_failed`]).
pub fn spi_error(e: pgrx::spi::SpiError) -> Error {
    Error::new(ErrorKind::CatalogAccess, "accessing the event_crypto catalog failed")
        .with_detail(e.to_string())
        .with_hint("Check that the extension is installed in this database and its tables are intact.")
}

/// Raises an SPI failure on the extension's own tables (a status error, not an ERROR PostgreSQL raised itself:
/// those propagate with their own SQLSTATE).
pub fn spi_failed(e: pgrx::spi::SpiError) -> ! {
    raise(spi_error(e))
}
