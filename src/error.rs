//! Errors of the holdfast library.
//!
//! Policy: the engine returns [`Error`], a typed enum for the failures a caller
//! (the CLI, the job runner) reacts to differently: a wrong passphrase, a path
//! that is not a repository, damaged data, an unknown snapshot. Everything that
//! comes from the operating system carries the path it concerns
//! ([`Error::Io`]). The CLI wraps these in `anyhow` only at the top, prints the
//! chain once and maps it to an exit code. No error message ever contains a
//! passphrase or key material.

use std::path::{Path, PathBuf};

/// The result type of the holdfast library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message includes the cause, so it is not also exposed as a
    /// `source` (which would print it twice in an error chain).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("wrong passphrase: no key file of the repository at {0} opens with it")]
    WrongPassphrase(PathBuf),
    /// No key file could be used, and at least one is damaged: the
    /// passphrase may well be right. Says which and what to do.
    #[error("{0}")]
    KeyUnusable(String),
    #[error("{} is not a holdfast repository ({reason})", path.display())]
    NotARepository { path: PathBuf, reason: String },
    #[error("{} already exists and is not empty; refusing to create a repository there", .0.display())]
    AlreadyExists(PathBuf),
    /// No passphrase could be had: names the variable (or option) to set.
    #[error("no passphrase given: {0}")]
    NoPassphrase(String),
    #[error("damaged {what}: {detail}")]
    Damaged { what: String, detail: String },
    #[error("no snapshot matches {0:?}")]
    NoSuchSnapshot(String),
    #[error("{0:?} matches several snapshots: {1}; give more characters")]
    AmbiguousSnapshot(String, String),
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// True when a file or object is not there (removed, or never written).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
    }

    /// True for the errors about keys and passphrases (exit code 4).
    pub fn is_key_problem(&self) -> bool {
        matches!(self, Error::WrongPassphrase(_) | Error::KeyUnusable(_) | Error::NoPassphrase(_))
    }

    /// The message without the object it names, for a caller that names
    /// the object itself (`check`'s "DAMAGED tree X: ...").
    pub fn detail(&self) -> String {
        match self {
            Error::Damaged { detail, .. } => detail.clone(),
            other => other.to_string(),
        }
    }

    /// An I/O error about `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), error: source }
    }

    /// Data that failed authentication or decoding.
    pub fn damaged(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Damaged { what: what.into(), detail: detail.to_string() }
    }
}

/// A copy for each of several callers one failure concerns (the trees of one
/// pack read that failed). An I/O error keeps its kind and message.
impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::Io { path, error } => {
                Error::Io { path: path.clone(), error: std::io::Error::new(error.kind(), error.to_string()) }
            }
            Error::WrongPassphrase(p) => Error::WrongPassphrase(p.clone()),
            Error::KeyUnusable(s) => Error::KeyUnusable(s.clone()),
            Error::NotARepository { path, reason } => {
                Error::NotARepository { path: path.clone(), reason: reason.clone() }
            }
            Error::AlreadyExists(p) => Error::AlreadyExists(p.clone()),
            Error::NoPassphrase(how) => Error::NoPassphrase(how.clone()),
            Error::Damaged { what, detail } => Error::Damaged { what: what.clone(), detail: detail.clone() },
            Error::NoSuchSnapshot(s) => Error::NoSuchSnapshot(s.clone()),
            Error::AmbiguousSnapshot(s, m) => Error::AmbiguousSnapshot(s.clone(), m.clone()),
            Error::Interrupted => Error::Interrupted,
            Error::Invalid(s) => Error::Invalid(s.clone()),
        }
    }
}

/// An I/O error whose path the caller attaches later (see `IoContext`).
impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { path: PathBuf::new(), error: source }
    }
}

/// Attach a path to `std::io::Result`s.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
