//! Protected event tables.
//!
//! - [`config`]: the configuration of a protected column, read once per backend and checked against the table;
//! - [`trigger`]: the row trigger that checks incoming envelopes, fills blind indexes and encrypts;
//! - [`admin`]: protect(), unprotect(), add_blind_index(), drop_blind_index() and the validation of every
//!   configuration row;
//! - [`partitions`]: partitioned tables are protected at their root; ATTACH and DETACH PARTITION;
//! - [`seals`]: the key, cipher and version the trigger encrypts a subject's rows with, remembered per subject;
//! - [`target`]: which configured table a relation's protection comes from (a Citus shard's distributed table);
//! - [`subjects`]: subject key ids, forget_subject(), export_subject(), decrypt_row() (the decrypted views).

pub mod admin;
pub mod config;
pub mod partitions;
pub mod seals;
pub mod subjects;
pub mod target;
pub mod trigger;

pub use config::invalidate as invalidate_config;
pub(crate) use trigger::protect_row;
