//! Who runs what. event_crypto works with three identities besides its caller:
//!
//! - the **catalog owner** (the extension's owner), for reads and writes of event_crypto's own tables, which no
//!   other role may write directly ([`as_catalog_owner`]);
//! - the **owner of a user table**, for every statement event_crypto runs on that table on someone's behalf
//!   (forgetting, exporting, re-encrypting, counting, retention). Like PostgreSQL's own VACUUM, ANALYZE and REFRESH
//!   MATERIALIZED VIEW (CVE-2022-1552), the work runs as the table's owner inside a security-restricted operation
//!   with `search_path = pg_catalog, pg_temp` and `row_security = off`, after the caller's own privileges on the
//!   table were checked ([`Table::as_owner`]). Code the table's owner controls (triggers, rules, row-level
//!   security policies, casts, domain checks) therefore never runs with more rights than the owner has;
//! - the **acting role**: whoever called event_crypto, before any of the switches above. Audit rows, `created_by`
//!   and `shredded_by` record it ([`acting_role`]), and the session role beside it.
//!
//! A statement that fails on one table can be confined to it with [`in_subtransaction`], so one table the caller
//! may not touch does not stop work on the others.

use event_crypto_core::{Error, ErrorKind, Result};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::cell::Cell;
use std::ffi::CStr;

thread_local! {
    /// The role that called event_crypto, while one of its identity switches is in effect.
    static OUTER: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// The role event_crypto acts for: the current user before event_crypto switched identity.
pub fn acting_role_oid() -> pg_sys::Oid {
    // SAFETY: GetUserId is valid inside a transaction.
    OUTER
        .with(|o| o.get())
        .unwrap_or_else(|| unsafe { pg_sys::GetUserId() })
}

fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId with noerr = true returns NULL for a role that no longer exists.
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("role {}", oid.to_u32())
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// The name of the acting role (see [`acting_role_oid`]).
pub fn acting_role() -> String {
    role_name(acting_role_oid())
}

/// The name of the session's role (the role that logged in, or SET SESSION AUTHORIZATION's).
pub fn session_role() -> String {
    // SAFETY: GetSessionUserId is valid in a connected backend.
    role_name(unsafe { pg_sys::GetSessionUserId() })
}

/// An identity switch, undone when dropped (also while unwinding from an error; PostgreSQL's transaction and
/// subtransaction abort restore the identity in any case).
struct Switch {
    user: pg_sys::Oid,
    context: i32,
    outermost: bool,
}

impl Switch {
    fn to(user: pg_sys::Oid, add_flags: u32) -> Switch {
        let mut old_user = pg_sys::InvalidOid;
        let mut old_ctx = 0;
        // SAFETY: plain getters and setters of backend-local state.
        unsafe { pg_sys::GetUserIdAndSecContext(&mut old_user, &mut old_ctx) };
        let outermost = OUTER.with(|o| {
            if o.get().is_none() {
                o.set(Some(old_user));
                true
            } else {
                false
            }
        });
        // SAFETY: as above.
        unsafe {
            pg_sys::SetUserIdAndSecContext(
                user,
                old_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32 | add_flags as i32,
            )
        };
        Switch {
            user: old_user,
            context: old_ctx,
            outermost,
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        // SAFETY: restores the values read when switching.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
        if self.outermost {
            OUTER.with(|o| o.set(None));
        }
    }
}

/// Runs `f` with the catalog owner's privileges (for event_crypto's own tables only).
pub fn as_catalog_owner<R>(f: impl FnOnce() -> R) -> R {
    let _switch = Switch::to(crate::keys::catalog().owner, 0);
    // on a Citus worker, in a task: the catalog (reference tables) is read from the node's own placements
    let _citus = crate::citus::CatalogAccess::begin();
    f()
}

/// A privilege on a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    Select,
    Update,
    Trigger,
}

impl Privilege {
    fn mode(self) -> pg_sys::AclMode {
        (match self {
            Privilege::Select => pg_sys::ACL_SELECT,
            Privilege::Update => pg_sys::ACL_UPDATE,
            Privilege::Trigger => pg_sys::ACL_TRIGGER,
        }) as pg_sys::AclMode
    }
    fn name(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Update => "UPDATE",
            Privilege::Trigger => "TRIGGER",
        }
    }
}

/// A user table event_crypto works on.
#[derive(Clone, Debug)]
pub struct Table {
    pub oid: pg_sys::Oid,
    pub owner: pg_sys::Oid,
    /// `schema.table`, each part quoted as needed: safe to splice into SQL.
    pub name: String,
    /// The schema's oid and the table's own (unquoted) name.
    pub namespace: pg_sys::Oid,
    pub relname: String,
    /// Row-level security is enabled.
    pub rls: bool,
    /// A partitioned table (its rows are in its partitions).
    pub partitioned: bool,
}

impl Table {
    /// Looks a table up by oid. `None` if it no longer exists; an error if it is not a table (a view, a foreign
    /// table, ...: event_crypto never works on those, whose definitions could run their owner's functions).
    pub fn lookup(oid: pg_sys::Oid) -> Result<Option<Table>> {
        Table::lookup_kinds(oid, b"rp")
    }

    /// [`Table::lookup`] that also takes materialized views (whose rows can be read, not written).
    pub fn lookup_any(oid: pg_sys::Oid) -> Result<Option<Table>> {
        Table::lookup_kinds(oid, b"rpm")
    }

    fn lookup_kinds(oid: pg_sys::Oid, kinds: &[u8]) -> Result<Option<Table>> {
        let row = Spi::connect(|c| {
            c.select(
                "SELECT c.relowner, c.relkind::pg_catalog.text, \
                        pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname), \
                        c.relrowsecurity, c.relnamespace, c.relname::pg_catalog.text \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE c.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[oid.into()],
            )
            .map_err(crate::error::spi_error)?
            .next()
            .map(|r| -> Result<_> {
                Ok((
                    crate::catalog::get::<pg_sys::Oid>(&r, 1, "relowner")?,
                    crate::catalog::get::<String>(&r, 2, "relkind")?,
                    crate::catalog::get::<String>(&r, 3, "name")?,
                    crate::catalog::get::<bool>(&r, 4, "relrowsecurity")?,
                    crate::catalog::get::<pg_sys::Oid>(&r, 5, "relnamespace")?,
                    crate::catalog::get::<String>(&r, 6, "relname")?,
                ))
            })
            .transpose()
        })?;
        let Some((owner, kind, name, rls, namespace, relname)) = row else {
            return Ok(None);
        };
        let kind = kind.as_bytes().first().copied().unwrap_or(b'?');
        if !kinds.contains(&kind) {
            return Err(Error::new(ErrorKind::WrongObjectType, format!("{name} is not a table"))
                .with_detail("event_crypto works on tables and partitioned tables only."));
        }
        Ok(Some(Table {
            oid,
            owner,
            name,
            namespace,
            relname,
            rls,
            partitioned: kind == b'p',
        }))
    }

    /// [`Table::lookup`], with a table that does not exist as an error.
    pub fn open(oid: pg_sys::Oid) -> Result<Table> {
        Table::lookup(oid)?.ok_or_else(|| {
            Error::new(
                ErrorKind::WrongObjectType,
                format!("relation with OID {} does not exist", oid.to_u32()),
            )
        })
    }

    /// Whether the acting role holds every privilege in `privileges` on the table (directly, through a role it
    /// belongs to, or as the owner).
    pub fn caller_has(&self, privileges: &[Privilege]) -> bool {
        let user = acting_role_oid();
        privileges.iter().all(|p| {
            // SAFETY: a plain catalog check for an existing relation.
            unsafe { pg_sys::pg_class_aclcheck(self.oid, user, p.mode()) == pg_sys::AclResult::ACLCHECK_OK }
        })
    }

    /// The error for a caller that lacks one of `privileges`.
    pub fn require(&self, privileges: &[Privilege], what: &str) -> Result<()> {
        if self.caller_has(privileges) {
            return Ok(());
        }
        let names: Vec<&str> = privileges.iter().map(|p| p.name()).collect();
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("permission denied for table {}", self.name),
        )
        .with_detail(format!(
            "{what} needs the {} privilege on the table.",
            names.join(" and ")
        ))
        .with_hint(format!(
            "GRANT {} ON {} TO {};",
            names.join(", "),
            self.name,
            acting_role()
        )))
    }

    /// Whether row-level security would filter what the acting role reads from the table (its policies exist and
    /// apply to the role: not the owner or a member of it, unless forced; not a superuser or BYPASSRLS role).
    pub fn rls_applies_to_caller(&self) -> bool {
        if !self.rls {
            return false;
        }
        let user = acting_role_oid();
        // SAFETY: check_enable_rls with noError = true only reads the catalogs.
        unsafe { pg_sys::check_enable_rls(self.oid, user, true) == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 }
    }

    /// Runs `f` (statements on this table) as the table's owner inside a security-restricted operation, with
    /// `search_path = pg_catalog, pg_temp` and `row_security = off` (a statement that row-level security would
    /// filter even for the owner fails instead of seeing less: maintenance never takes what it cannot see as
    /// absent). Check the caller's privileges first with [`Table::require`].
    pub fn as_owner<R>(&self, f: impl FnOnce() -> R) -> R {
        as_restricted(self.owner, true, f)
    }
}

/// Runs `f` as `owner` inside a security-restricted operation with `search_path = pg_catalog, pg_temp` (and
/// `row_security = off` when `whole`): how event_crypto acts on an object on behalf of a caller whose own
/// privileges it has checked (a table's rows, a table's trigger, a view it created).
pub fn as_restricted<R>(owner: pg_sys::Oid, whole: bool, f: impl FnOnce() -> R) -> R {
    let switch = Switch::to(owner, pg_sys::SECURITY_RESTRICTED_OPERATION);
    // SAFETY: a new GUC nesting level, popped below (or by the (sub)transaction abort on error).
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    set_local(c"search_path", c"pg_catalog, pg_temp");
    if whole {
        set_local(c"row_security", c"off");
    }
    let r = f();
    // SAFETY: pops the level pushed above, restoring the settings.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    drop(switch);
    r
}

/// Runs `f` (statements of event_crypto's own, as the caller: DDL on a table it protects) with
/// `search_path = pg_catalog, pg_temp`, whatever the caller's search_path is.
pub fn with_safe_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a new GUC nesting level, popped below (or by the (sub)transaction abort on error).
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    set_local(c"search_path", c"pg_catalog, pg_temp");
    let r = f();
    // SAFETY: pops the level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, nest) };
    r
}

/// Sets a setting at the current GUC nest level (undone when the level is popped); call after `NewGUCNestLevel`.
pub(crate) fn set_local(name: &CStr, value: &CStr) {
    // SAFETY: sets a user-settable GUC for the current nesting level; errors are raised as usual.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// An error caught inside [`in_subtransaction`]: its SQLSTATE and message (never its detail, which for some
/// errors quotes a failing row).
#[derive(Clone, Debug)]
pub struct Caught {
    pub sqlstate: String,
    pub message: String,
}

/// Runs `f` in a subtransaction: its effects are kept if it returns, rolled back if it raises (the error is
/// returned, the transaction goes on). Like PL/pgSQL's `BEGIN ... EXCEPTION WHEN OTHERS`.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> std::result::Result<R, Caught> {
    // SAFETY: the standard internal-subtransaction dance (as PL/pgSQL does it): remember the memory context and
    // resource owner, begin, and on either outcome release or roll back and restore both.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let f = std::panic::AssertUnwindSafe(f);
        let r = PgTryBuilder::new(move || {
            let f = f;
            Ok((f.0)())
        })
        .catch_others(|e| Err(caught(e)))
        .execute();
        match r {
            Ok(v) => {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(cxt);
                pg_sys::CurrentResourceOwner = owner;
                Ok(v)
            }
            Err(c) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(cxt);
                pg_sys::CurrentResourceOwner = owner;
                Err(c)
            }
        }
    }
}

fn caught(e: pg_sys::panic::CaughtError) -> Caught {
    use pg_sys::panic::CaughtError;
    let report = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => r,
    };
    Caught {
        sqlstate: sqlstate_text(report.sql_error_code() as i32),
        message: report.message().to_string(),
    }
}

/// The five-character form of an encoded SQLSTATE.
pub fn sqlstate_text(code: i32) -> String {
    (0..5)
        .map(|i| char::from(b'0' + ((code >> (6 * i)) & 0x3F) as u8))
        .collect()
}
