//! Partitioned tables. A partition tree is protected at its root: `protect()` on the partitioned table covers every
//! partition, present and future (PostgreSQL clones the row trigger onto each, and the trigger finds the root's
//! configuration, [`super::config`]). The rules that keep it so:
//!
//! - `protect()`, `unprotect()`, `add_blind_index()` and `drop_blind_index()` on a partition are refused (`42809`):
//!   a partition with a configuration of its own would disagree with its tree (fields encrypted in one partition
//!   and not in the next, `forget_subject` reaching half of a subject's rows);
//! - `protect()` on a partitioned table is refused (`55000`) while a partition below it has its own
//!   configuration of the column (made by 0.1.0, or before it was attached): unprotect it first (its rows keep
//!   their ciphertext), in the same transaction;
//! - `ATTACH PARTITION` under a protected tree ([`ddl_partitions_changed`]) is refused (`55000`) for a table that
//!   has its own configuration of a protected column, and (`23514`) for a table holding a row whose configured
//!   fields are in plaintext: attaching must never leave configured fields readable as plaintext. Encrypt such a
//!   table first (protect it with the same settings, `CALL reencrypt_table`, unprotect it: the ciphertext stays),
//!   then attach it;
//! - `DETACH PARTITION` keeps the detached table protected: it gets its own copy of the configuration it had
//!   (blind indexes included, no decrypted view) and its own trigger, so later inserts are still encrypted and
//!   `forget_subject` still reaches its rows.

use super::admin::{create_protect_trigger, protect_trigger_of};
use super::config::{ConfigRow, KeySpec};
use super::trigger::row_binding;
use crate::access::{as_catalog_owner, Table};
use crate::catalog::{get, ANCESTORS, DESCENDANTS};
use crate::error::{spi_error, OrRaise};
use crate::jsonb::Jsonb;
use crate::keys::CachedKeys;
use event_crypto_core::document::{check_context, check_envelopes, needs_encryption, OnInvalid};
use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use serde_json::json;

/// The name of the root of the partition tree `relid` belongs to, if it is a partition.
fn partition_root(relid: pg_sys::Oid) -> Result<Option<String>> {
    crate::catalog::one::<String>(
        "SELECT pg_catalog.pg_partition_root(c.oid)::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c \
         WHERE c.oid OPERATOR(pg_catalog.=) $1 AND c.relispartition",
        &[relid.into()],
    )
}

/// Refuses `what` on a partition: the configuration of a partition tree lives at its root.
pub fn refuse_partition(t: &Table, what: &str) -> Result<()> {
    let Some(root) = partition_root(t.oid)? else {
        return Ok(());
    };
    Err(Error::new(
        ErrorKind::WrongObjectType,
        format!("{} is a partition of {root}", t.name),
    )
    .with_detail("A partition is protected by the configuration of the partitioned table at the root of its tree.")
    .with_hint(format!(
        "Call {what} on {root}: its protection covers every partition, present and future."
    )))
}

/// The partitions below `relid` (at any depth) that have their own configuration of `column`.
fn partitions_with_own_config(relid: pg_sys::Oid, column: &str) -> Result<Vec<String>> {
    as_catalog_owner(|| {
        crate::catalog::all::<String>(
            &format!(
                "{DESCENDANTS}SELECT DISTINCT p.table_name::pg_catalog.text FROM down d \
                 JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.oid \
                 JOIN event_crypto.protected_columns p ON p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) d.oid \
                 WHERE c.relispartition AND p.column_name OPERATOR(pg_catalog.=) $2::pg_catalog.name ORDER BY 1"
            ),
            &[relid.into(), column.into()],
            "table_name",
        )
    })
}

/// Refuses to protect `column` of `t` while a partition below it has its own configuration of it.
pub fn refuse_own_config_below(t: &Table, column: &str) -> Result<()> {
    let own = partitions_with_own_config(t.oid, column)?;
    if own.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::NotReady,
        format!(
            "partitions of {} have their own protection of column \"{column}\": {}",
            t.name,
            own.join(", ")
        ),
    )
    .with_detail("A partition tree is protected at its root only.")
    .with_hint(
        "Call event_crypto.unprotect() on those partitions (their rows keep their ciphertext) and protect() on the \
         partitioned table, in one transaction.",
    ))
}

/// The leading part of PostgreSQL's `CollectedCommand` (tcop/deparse_utility.h) for an `SCT_AlterTable` command:
/// the command type, and the ALTER TABLE member of its union. pgrx's bindings do not include that header; the
/// layout is PostgreSQL 15's (the only version this extension builds for).
#[repr(C)]
struct CollectedAlterTable {
    kind: std::ffi::c_int,
    in_extension: bool,
    parsetree: *mut pg_sys::Node,
    object_id: pg_sys::Oid,
    class_id: pg_sys::Oid,
    subcmds: *mut pg_sys::List,
}

/// PostgreSQL's `CollectedATSubcmd`: the object a subcommand affected and the subcommand.
#[repr(C)]
struct CollectedATSubcmd {
    address: pg_sys::ObjectAddress,
    parsetree: *mut pg_sys::Node,
}

/// `SCT_AlterTable` of `CollectedCommandType`.
const SCT_ALTER_TABLE: std::ffi::c_int = 1;

/// A partition an ALTER TABLE command attached or detached, as the command named it.
struct PartitionChange {
    attached: bool,
    schema: Option<String>,
    name: String,
}

/// The partitions an ALTER TABLE command attached or detached, by the names its subcommands gave (PostgreSQL 15
/// collects no object address for these subcommands).
///
/// # Safety
/// `command` must be a `pg_ddl_command` datum from `pg_event_trigger_ddl_commands()` of the running event trigger.
unsafe fn partition_changes(command: &CollectedAlterTable) -> Vec<PartitionChange> {
    let mut out = Vec::new();
    if command.kind != SCT_ALTER_TABLE || command.class_id != pg_sys::RelationRelationId {
        return out;
    }
    let list = command.subcmds;
    if list.is_null() {
        return out;
    }
    let text =
        |p: *const std::ffi::c_char| (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned());
    for i in 0..(*list).length.max(0) as usize {
        let sub = (*(*list).elements.add(i)).ptr_value as *const CollectedATSubcmd;
        if sub.is_null() {
            continue;
        }
        let sub = &*sub;
        if sub.parsetree.is_null() || !pgrx::is_a(sub.parsetree, pg_sys::NodeTag::T_AlterTableCmd) {
            continue;
        }
        let cmd = &*(sub.parsetree as *const pg_sys::AlterTableCmd);
        let attached = match cmd.subtype {
            pg_sys::AlterTableType::AT_AttachPartition => true,
            pg_sys::AlterTableType::AT_DetachPartition | pg_sys::AlterTableType::AT_DetachPartitionFinalize => false,
            _ => continue,
        };
        if cmd.def.is_null() || !pgrx::is_a(cmd.def, pg_sys::NodeTag::T_PartitionCmd) {
            continue;
        }
        let rv = (*(cmd.def as *const pg_sys::PartitionCmd)).name;
        if rv.is_null() {
            continue;
        }
        let Some(name) = text((*rv).relname) else { continue };
        out.push(PartitionChange {
            attached,
            schema: text((*rv).schemaname),
            name,
        });
    }
    out
}

/// The tables a change names: for an attach, the partitions of `parent` of that name; for a detach, the tables of
/// that name that are no longer partitions and whose catalog row this transaction changed (the detach did).
fn changed_tables(parent: pg_sys::Oid, change: &PartitionChange) -> Result<Vec<pg_sys::Oid>> {
    let sql = if change.attached {
        "SELECT c.oid, NULL::pg_catalog.text FROM pg_catalog.pg_inherits i \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE i.inhparent OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
           AND ($3::pg_catalog.name IS NULL OR n.nspname OPERATOR(pg_catalog.=) $3::pg_catalog.name)"
    } else {
        "SELECT c.oid, c.xmin::pg_catalog.text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE $1::pg_catalog.oid IS NOT NULL AND c.relname OPERATOR(pg_catalog.=) $2::pg_catalog.name AND NOT c.relispartition \
           AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}') \
           AND ($3::pg_catalog.name IS NULL OR n.nspname OPERATOR(pg_catalog.=) $3::pg_catalog.name)"
    };
    let rows: Vec<(pg_sys::Oid, Option<String>)> = Spi::connect(|c| {
        c.select(
            sql,
            None,
            &[
                parent.into(),
                change.name.as_str().into(),
                change.schema.as_deref().into(),
            ],
        )
        .map_err(spi_error)?
        .map(|r| {
            Ok((
                get::<pg_sys::Oid>(&r, 1, "oid")?,
                r.get::<String>(2).map_err(spi_error)?,
            ))
        })
        .collect::<Result<Vec<_>>>()
    })?;
    Ok(rows
        .into_iter()
        .filter(|(_, xmin)| match xmin {
            None => true,
            Some(x) => x.parse::<u32>().is_ok_and(|x| {
                // SAFETY: a plain lookup of this backend's transaction state.
                unsafe { pg_sys::TransactionIdIsCurrentTransactionId(x.into()) }
            }),
        })
        .map(|(oid, _)| oid)
        .collect())
}

/// The protected columns of the tree `relid` belongs to, as seen from `relid` itself (depth 0 included): each
/// column with the configuration row of its nearest protected ancestor and that ancestor's oid.
fn protected_from(relid: pg_sys::Oid) -> Result<Vec<(pg_sys::Oid, String, ConfigRow)>> {
    as_catalog_owner(|| {
        Spi::connect(|c| {
            c.select(
                &format!(
                    "{ANCESTORS}SELECT DISTINCT ON (p.column_name) p.table_name::pg_catalog.oid, p.column_name::pg_catalog.text, \
                            {columns} \
                     FROM event_crypto.protected_columns p JOIN up ON p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) up.oid \
                     ORDER BY p.column_name, up.depth",
                    columns = super::config::config_row_columns(),
                ),
                None,
                &[relid.into()],
            )
            .map_err(spi_error)?
            .map(|r| {
                Ok((
                    get::<pg_sys::Oid>(&r, 1, "table_name")?,
                    get::<String>(&r, 2, "column_name")?,
                    ConfigRow::from_spi(&r, 3)?,
                ))
            })
            .collect()
        })
    })
}

/// What an attached table holds that its new tree would not let in.
enum Unfit {
    /// A configured field in plaintext.
    Plaintext,
    /// An envelope not bound to its row (another subject's, another context's, malformed, failing to open).
    Unbound(Error),
}

/// Reads every row of `t` (a table being attached) as the protect trigger would check it: a configured field in
/// plaintext, or an envelope not bound to its row, is reported. Reads the table as its owner, in a
/// security-restricted operation, with row security off (a table whose row-level security applies to its owner
/// too fails rather than being half seen), a batch of rows at a time.
fn first_unfit_row(t: &Table, column: &str, root: pg_sys::Oid) -> Result<Option<Unfit>> {
    let fields = crate::reencrypt::all_fields(root, column)?;
    let Some(cfg) = super::config::config_of_table(t.oid, column)? else {
        return Ok(None);
    };
    let text_of = |c: Option<&super::config::Col>| match c {
        Some(c) => format!("pg_catalog.format('%s', t.{})", quote_identifier(&c.name)),
        None => "NULL::pg_catalog.text".to_string(),
    };
    let key_col = match &cfg.key {
        KeySpec::Column { col, .. } => Some(col),
        KeySpec::Fixed(_) => None,
    };
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(t.{col}), {key}, {ctx} FROM {tbl} t WHERE t.{col} IS NOT NULL",
        col = quote_identifier(column),
        key = text_of(key_col),
        ctx = text_of(cfg.context.as_ref()),
        tbl = t.name
    );
    let mut keys = CachedKeys::default();
    t.as_owner(|| {
        Spi::connect(|c| {
            let mut cursor = c.open_cursor(&sql, &[]);
            loop {
                pgrx::check_for_interrupts!();
                let batch = cursor.fetch(1000).map_err(spi_error)?;
                if batch.is_empty() {
                    return Ok(None);
                }
                for r in batch {
                    let Some(doc) = r.get::<Jsonb>(1).map_err(spi_error)? else {
                        continue;
                    };
                    let subject: Option<String> = r.get(2).map_err(spi_error)?;
                    let ctx: Option<String> = r.get(3).map_err(spi_error)?;
                    let doc = doc.document();
                    if needs_encryption(&doc, &fields)? {
                        return Ok(Some(Unfit::Plaintext));
                    }
                    let context = match check_context(ctx.as_deref().filter(|c| !c.is_empty())) {
                        Ok(c) => c,
                        Err(e) => return Ok(Some(Unfit::Unbound(e))),
                    };
                    let binding = row_binding(&cfg, subject.as_deref());
                    match check_envelopes(&doc, &mut keys, context, &binding, |_, _| Ok(())) {
                        Ok(_) => {}
                        Err(e) if OnInvalid::applies_to(e.kind()) => return Ok(Some(Unfit::Unbound(e))),
                        Err(e) => return Err(e),
                    }
                }
            }
        })
    })
}

/// Checks a table just attached to a partitioned table: refused if it (or a partition below it) has its own
/// protection configuration, or if it holds configured fields of its new tree in plaintext.
fn check_attached(relid: pg_sys::Oid) -> Result<usize> {
    let Some(t) = Table::lookup(relid)? else { return Ok(0) };
    let own: Vec<String> = as_catalog_owner(|| {
        crate::catalog::all::<String>(
            &format!(
                "{DESCENDANTS}SELECT DISTINCT p.table_name::pg_catalog.text OPERATOR(pg_catalog.||) '.' \
                        OPERATOR(pg_catalog.||) pg_catalog.quote_ident(p.column_name::pg_catalog.text) \
                 FROM down d JOIN event_crypto.protected_columns p ON p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) d.oid \
                 ORDER BY 1"
            ),
            &[relid.into()],
            "table_name",
        )
    })?;
    if !own.is_empty() {
        return Err(Error::new(
            ErrorKind::NotReady,
            format!(
                "{} cannot be attached as a partition: it has its own protection ({})",
                t.name,
                own.join(", ")
            ),
        )
        .with_detail("A partition tree is protected at its root only.")
        .with_hint(
            "Call event_crypto.unprotect() on it first (its rows keep their ciphertext) and protect the partitioned \
             table; then attach it.",
        ));
    }
    let mut checked = 0;
    for (owner, column, cfg) in protected_from(relid)? {
        let unfit = first_unfit_row(&t, &column, owner)?;
        if let Some(Unfit::Unbound(e)) = unfit {
            return Err(Error::new(
                ErrorKind::EnvelopeNotBound,
                format!(
                    "{} cannot be attached under {}: a row holds an envelope in column \"{column}\" that is not bound to it",
                    t.name, cfg.table
                ),
            )
            .with_detail(format!("The protect trigger would refuse that row: {}", e.message()))
            .with_hint("Remove or correct the row (an envelope copied from another subject, context or field), then attach the table."));
        }
        if let Some(Unfit::Plaintext) = unfit {
            return Err(Error::new(
                ErrorKind::PlaintextRows,
                format!(
                    "{} cannot be attached under {}: it holds rows whose configured fields of column \"{column}\" are in plaintext",
                    t.name, cfg.table
                ),
            )
            .with_detail("Attached, they would be readable as plaintext in a protected table.")
            .with_hint(format!(
                "Encrypt them first: event_crypto.protect() on {} with the settings of {}, CALL \
                 event_crypto.reencrypt_table() on it, event_crypto.unprotect() on it (the ciphertext stays); then attach it.",
                t.name, cfg.table
            )));
        }
        checked += 1;
    }
    Ok(checked)
}

/// Gives a table just detached from a protected tree its own copy of the configuration it had (found from its
/// former parent), its blind indexes and its own protect trigger. Returns the columns it now protects.
fn keep_detached_protected(relid: pg_sys::Oid, former_parent: pg_sys::Oid) -> Result<Vec<String>> {
    let Some(t) = Table::lookup(relid)? else {
        return Ok(Vec::new());
    };
    let mut kept = Vec::new();
    for (owner, column, cfg) in protected_from(former_parent)? {
        let has_column = crate::reencrypt::column_type(relid, &column).is_some();
        if !has_column || protected_from(relid)?.iter().any(|(_, c, _)| *c == column) {
            continue;
        }
        as_catalog_owner(|| {
            // (the SQL objects of a release before 0.3.0 have neither the PII guard's column nor compress nor
            // tokenize_fields)
            let pii = if crate::keys::catalog().pii_guard {
                " unprotected_pii, compress, tokenize_fields,"
            } else {
                ""
            };
            let p_pii = if pii.is_empty() {
                ""
            } else {
                " p.unprotected_pii, p.compress, p.tokenize_fields,"
            };
            crate::catalog::modify(
                &format!(
                    "INSERT INTO event_crypto.protected_columns \
                        (table_name, column_name, fields, key_id, key_column, key_prefix, context_column, type_column, \
                         fields_by_type, on_forgotten, allow_unlisted_types,{pii} protected_by) \
                     SELECT $1::pg_catalog.oid::pg_catalog.regclass, p.column_name, p.fields, p.key_id, p.key_column, p.key_prefix, \
                            p.context_column, p.type_column, p.fields_by_type, p.on_forgotten, p.allow_unlisted_types,{p_pii} p.protected_by \
                     FROM event_crypto.protected_columns p \
                     WHERE p.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $2 AND p.column_name OPERATOR(pg_catalog.=) $3::pg_catalog.name"
                ),
                &[relid.into(), owner.into(), column.as_str().into()],
            )?;
            crate::catalog::modify(
                "INSERT INTO event_crypto.blind_indexes (table_name, column_name, field, target_column, key_id, normalize) \
                 SELECT $1::pg_catalog.oid::pg_catalog.regclass, b.column_name, b.field, b.target_column, b.key_id, b.normalize \
                 FROM event_crypto.blind_indexes b \
                 WHERE b.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $2 AND b.column_name OPERATOR(pg_catalog.=) $3::pg_catalog.name",
                &[relid.into(), owner.into(), column.as_str().into()],
            )
        })?;
        if protect_trigger_of(relid, &column).is_none() {
            as_catalog_owner(|| create_protect_trigger(&t.name, &column));
        }
        crate::audit::record(
            "protect",
            None,
            &cfg.key_id.iter().cloned().collect::<Vec<_>>(),
            json!({"tables": [t.name], "column": column, "detached_from": cfg.table, "automatic": true}),
        );
        kept.push(column);
    }
    Ok(kept)
}

/// Internal, called by the extension's event trigger at the end of every ALTER TABLE: checks each partition the
/// command attached under a protected tree (refusing the command if it has its own protection, or plaintext in
/// configured fields), and keeps each partition it detached from one protected. Returns how many partitions it
/// looked at. Not granted to anyone: only the event trigger runs it.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION event_crypto."ddl_partitions_changed"("command" pg_catalog.pg_ddl_command) RETURNS INT
VOLATILE PARALLEL UNSAFE STRICT
LANGUAGE c
AS 'MODULE_PATHNAME', 'ddl_partitions_changed_wrapper';
"#
)]
fn ddl_partitions_changed(command: pgrx::datum::Internal) -> i32 {
    // SAFETY: the event trigger passes the `command` column of pg_event_trigger_ddl_commands(), a pointer to the
    // CollectedCommand of the ALTER TABLE it reports.
    let (parent, changes) = unsafe {
        match command.get::<CollectedAlterTable>() {
            Some(c) => (c.object_id, partition_changes(c)),
            None => return 0,
        }
    };
    let mut n = 0;
    for change in changes {
        let tables = changed_tables(parent, &change).or_raise();
        if change.attached {
            for relid in tables {
                check_attached(relid).or_raise();
                n += 1;
            }
        } else if tables.len() > 1 {
            let report = pgrx::pg_sys::panic::ErrorReport::new(
                pgrx::PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "event_crypto: several tables named \"{}\" changed in this transaction; the detached one keeps no protection",
                    change.name
                ),
                "event_crypto",
            )
            .set_hint("Protect the detached table with event_crypto.protect(), or detach it by its schema-qualified name.");
            report.report(pgrx::PgLogLevel::WARNING);
        } else {
            for relid in tables {
                keep_detached_protected(relid, parent).or_raise();
                n += 1;
            }
        }
    }
    if n > 0 {
        crate::protect::invalidate_config(None);
    }
    n
}
