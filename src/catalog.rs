//! Typed reads of catalog rows. A row that is not what the code expects (a NULL where the table forbids one, a
//! value of another type) raises `CatalogAccess` (55000) naming the column; it never reads as a default
//! (version 0, "no key material", an empty name).

use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::spi::SpiHeapTupleData;
use pgrx::{FromDatum, IntoDatum};

fn bad(column: &str, why: String) -> Error {
    Error::new(
        ErrorKind::CatalogAccess,
        format!("the event_crypto catalog holds an unexpected value in column \"{column}\""),
    )
    .with_detail(why)
    .with_hint("The extension's tables were changed by hand or are damaged; restore them from a backup.")
}

/// Column `i` (1-based) of a row, which must not be NULL.
pub fn get<T: IntoDatum + FromDatum>(row: &SpiHeapTupleData<'_>, i: usize, column: &str) -> Result<T> {
    get_opt(row, i, column)?.ok_or_else(|| bad(column, "it is NULL".to_string()))
}

/// Column `i` (1-based) of a row, NULL as `None`.
pub fn get_opt<T: IntoDatum + FromDatum>(row: &SpiHeapTupleData<'_>, i: usize, column: &str) -> Result<Option<T>> {
    row.get::<T>(i).map_err(|e| bad(column, e.to_string()))
}

/// The first column of every row of a query (read-only SPI), in the query's order.
pub fn all<T: IntoDatum + FromDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid<'_>],
    column: &str,
) -> Result<Vec<T>> {
    pgrx::Spi::connect(|c| {
        c.select(sql, None, args)
            .map_err(crate::error::spi_error)?
            .map(|r| get::<T>(&r, 1, column))
            .collect()
    })
}

/// Runs a writing statement (INSERT, UPDATE, DELETE); returns how many rows it affected.
pub fn modify(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<usize> {
    pgrx::Spi::connect_mut(|c| {
        c.update(sql, None, args)
            .map(|t| t.len())
            .map_err(crate::error::spi_error)
    })
}

/// The first column of the first row of a query (read-only SPI), or `None` when it returns no row or NULL.
pub fn one<T: IntoDatum + FromDatum>(sql: &str, args: &[pgrx::datum::DatumWithOid<'_>]) -> Result<Option<T>> {
    pgrx::Spi::connect(|c| {
        let t = c.select(sql, Some(1), args).map_err(crate::error::spi_error)?;
        match t.into_iter().next() {
            Some(r) => get_opt::<T>(&r, 1, "value"),
            None => Ok(None),
        }
    })
}

/// `WITH RECURSIVE up(oid, depth)`: the relation `$1` (depth 0) and every relation it inherits from (INHERITS or
/// as a partition), nearest first. Prefix a query that reads `up`.
pub const ANCESTORS: &str = "WITH RECURSIVE up(oid, depth) AS ( \
     SELECT $1::pg_catalog.oid, 0 \
     UNION ALL \
     SELECT i.inhparent, u.depth OPERATOR(pg_catalog.+) 1 FROM up u \
     JOIN pg_catalog.pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) u.oid \
     WHERE u.depth OPERATOR(pg_catalog.<) 64) ";

/// `WITH RECURSIVE down(oid, depth)`: the relation `$1` (depth 0) and every relation that inherits from it, at any
/// depth. Prefix a query that reads `down`.
pub const DESCENDANTS: &str = "WITH RECURSIVE down(oid, depth) AS ( \
     SELECT $1::pg_catalog.oid, 0 \
     UNION ALL \
     SELECT i.inhrelid, d.depth OPERATOR(pg_catalog.+) 1 FROM down d \
     JOIN pg_catalog.pg_inherits i ON i.inhparent OPERATOR(pg_catalog.=) d.oid \
     WHERE d.depth OPERATOR(pg_catalog.<) 64) ";
