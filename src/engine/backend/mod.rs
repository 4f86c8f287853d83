//! Where repository files live: a local directory ([`local`]) or an
//! S3-compatible bucket ([`s3`]).
//!
//! The engine sees a repository as a few directories of write-once files,
//! most named by the hash of their bytes. [`Backend`] is everything it asks
//! of the storage underneath; each implementation is the only place that
//! knows how a file reaches its medium safely. The contract:
//!
//! - [`Backend::put_new`] never replaces an existing file. Since names are
//!   hashes of contents, "already there" means "already stored" — and a
//!   backup needs no right to overwrite or delete anything (put-only
//!   credentials, see the README).
//! - A `put_new` that returned is durable: a snapshot is written only after
//!   everything it references was.
//! - Nothing builds the index from a listing: index files are the truth;
//!   listings serve `check`, `prune` and the repository's own bookkeeping.

mod local;
mod s3;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

pub use local::{LocalBackend, sync_dir};
pub use s3::{S3Backend, S3Settings, s3_url};

use crate::error::Result;

/// Directory names inside a repository ("" is the top level).
pub const ROOT: &str = "";
pub const PACKS: &str = "packs";
pub const INDEX: &str = "index";
pub const SNAPSHOTS: &str = "snapshots";
pub const KEYS: &str = "keys";
pub const TMP: &str = "tmp";
/// Packs marked for deletion by prune (see `engine::gc`).
pub const MARKS: &str = "marks";
/// One file per backup in progress (see `engine::gc`).
pub const RUNNING: &str = "running";

/// One listed file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    /// Last modification, where the medium tells it.
    pub modified: Option<jiff::Timestamp>,
}

/// Whether [`Backend::put_new`] stored the bytes or found the name taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    AlreadyThere,
}

/// The storage under a repository.
pub trait Backend: Send + Sync {
    /// Where it is, for messages: a path or an `s3://` URL (never a secret).
    fn location(&self) -> String;

    /// How many transfers are worth having in flight at once.
    fn parallelism(&self) -> usize;

    /// True when every request waits on a network round trip: callers
    /// fetch ahead what they will need, many small files at once.
    fn is_remote(&self) -> bool {
        false
    }

    /// True when a backup must not delete anything here, because its
    /// credentials may only read and add (object storage; see the README).
    fn put_only_backups(&self) -> bool {
        false
    }

    /// True when nothing is stored there yet (`init` refuses otherwise).
    fn is_empty(&self) -> Result<bool>;

    /// Prepare a new repository's layout (directories, where there are any);
    /// also recreates missing ones in an existing repository (`repair`).
    fn create_layout(&self) -> Result<()>;

    /// The layout's directories that are missing (a medium without
    /// directories has none to miss).
    fn missing_layout(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Store `bytes` as `dir/name`, durably, unless that name exists. Takes
    /// the buffer: a 16 MiB pack goes to the network without a copy.
    fn put_new(&self, dir: &str, name: &str, bytes: Vec<u8>) -> Result<Stored>;

    /// Store or replace a small state file (prune's marks, `running/`
    /// records). Never called on the backup path for an existing name.
    fn put_state(&self, dir: &str, name: &str, bytes: &[u8]) -> Result<()>;

    fn get(&self, dir: &str, name: &str) -> Result<Vec<u8>>;

    /// The bytes `range` of `dir/name`; `cache` belongs to one thread.
    /// `worth` (which contains `range`) is what the caller will probably
    /// read next: a remote backend may fetch it in one request and serve
    /// later reads from `cache` (a local one ignores it).
    fn get_range(
        &self,
        dir: &str,
        name: &str,
        range: Range<u64>,
        worth: Range<u64>,
        cache: &mut ReadCache,
    ) -> Result<Vec<u8>>;

    /// The files in `dir` (for packs, across the fan-out), sorted by name.
    fn list(&self, dir: &str) -> Result<Vec<FileInfo>>;

    fn remove(&self, dir: &str, name: &str) -> Result<()>;
}

/// Per-thread state for repeated reads: open local files, or the last few
/// stretches fetched from a remote object; one per thread
/// (`ReadCache::default()`).
#[derive(Default)]
pub struct ReadCache {
    pub(crate) files: std::collections::HashMap<String, std::fs::File>,
    /// (object, offset, bytes) fetched ahead, newest last.
    pub(crate) windows: Vec<(String, u64, Vec<u8>)>,
    /// Where the previous read of this thread ended (object, offset).
    pub(crate) last_end: Option<(String, u64)>,
}

/// Where a repository is, with what is needed to reach it.
#[derive(Clone)]
pub enum Location {
    Local(PathBuf),
    S3(S3Settings),
}

impl Location {
    /// Connect to the storage (no key needed).
    pub fn open_backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Local(path) => Arc::new(LocalBackend::new(path.clone())),
            Location::S3(settings) => Arc::new(S3Backend::connect(settings)?),
        })
    }

    /// The local directory, if it is one.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(s) => write!(f, "{}", s.url()),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

/// Total bytes stored (for metrics and `status`).
pub fn stored_bytes(backend: &dyn Backend) -> Result<u64> {
    let mut total = 0;
    for dir in [PACKS, INDEX, SNAPSHOTS, KEYS] {
        total += backend.list(dir)?.iter().map(|f| f.size).sum::<u64>();
    }
    Ok(total)
}

/// The object's name under a directory: packs fan out by two hex digits.
pub fn relative_path(dir: &str, name: &str) -> String {
    if dir == PACKS && name.len() > 2 {
        format!("{dir}/{}/{name}", &name[..2])
    } else if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}
