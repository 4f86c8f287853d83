//! holdfast: application-consistent backup jobs into an encrypted,
//! deduplicating repository.
//!
//! The crate is a library with a thin command-line shell (`main.rs`, `cli`).
//! [`engine`] is the repository (it knows nothing about jobs); the job runner
//! and its parts build on it.

pub mod cli;
pub mod config;
pub mod diff;
pub mod dump;
pub mod engine;
pub mod error;
pub mod exit;
pub mod filter;
pub mod find;
pub mod fsutil;
pub mod hooks;
pub mod journal;
pub mod listing;
pub mod mount;
pub mod notify;
pub mod plan;
pub mod process;
pub mod prune;
pub mod record;
pub mod restore;
pub mod retention;
pub mod runner;
pub mod secrets;
pub mod spool;
pub mod state;
pub mod stats;
pub mod status;
pub mod systemd;
pub mod template;
pub mod units;
pub mod validate;
pub mod verify;

pub use error::{Error, Result};
