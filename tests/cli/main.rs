//! The `holdfast` command line, tested end to end: every test drives the real
//! binary against its own repository in its own temporary directory, so the
//! tests run in parallel and read as examples of use.
//!
//! - `roundtrip`: what goes in comes back, byte for byte and metadata for
//!   metadata; unchanged data is not read or stored again.
//! - `tamper`: damage to any repository file is found and named.
//! - `crash`: a backup killed at any moment leaves a usable repository.
//! - `bad_input`: wrong passphrases, paths and ids fail clearly and harmlessly.
//! - `keys`: exporting, importing and changing keys.
//! - `s3`: repositories in a real Garage cluster (started by `garage`).
//! - `ssh`: repositories on another host through a real OpenSSH sshd and
//!   `holdfast serve` (append-only keys included).
//!
//! One binary (not one per file) so the suite links once; shared helpers are
//! in `util`.

mod util;

mod bad_input;
mod big_databases;
mod cache;
mod copy;
mod crash;
mod keys;
mod roundtrip;
mod tamper;

mod jobs;
mod jobs_config;
mod jobs_consistency;
mod jobs_hooks;
mod jobs_notify;
mod jobs_secrets;
mod jobs_spool;
mod jobs_util;

mod hold;
mod p34_util;
mod restore_attacks;
mod restore_jobs;
mod verify_jobs;

mod hardening;
mod hostile_input;
mod operations;
mod prune;
mod secret_audit;
mod signals;
mod validate;

mod faults;
mod finding;
mod format_fixture;
mod layout;
mod mount;

mod garage;
mod package;
mod s3;
mod ssh;
mod whole_system;
