//! Where repository files live: a local directory ([`local`]), an
//! S3-compatible bucket ([`s3`]), or another host over SSH ([`ssh`], served
//! there by [`serve`]).
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
mod memory;
pub mod protocol;
mod s3;
pub mod serve;
mod ssh;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

pub use local::{LocalBackend, sync_dir};
pub use memory::MemoryBackend;
pub use s3::{S3Backend, S3Settings, s3_url};
pub use ssh::{SshBackend, SshSettings};

use crate::error::Result;

/// The kinds of file a repository holds, each in its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dir {
    /// The top level: the marker and the config.
    Root,
    Packs,
    Index,
    Snapshots,
    Keys,
    /// Files being written (renamed into place when complete).
    Tmp,
    /// Packs marked for deletion by prune (see `engine::gc`).
    Marks,
    /// One file per backup in progress (see `engine::running`).
    Running,
}

impl Dir {
    /// Every directory of a repository's layout (all but the top level).
    pub const LAYOUT: [Dir; 7] =
        [Dir::Packs, Dir::Index, Dir::Snapshots, Dir::Keys, Dir::Tmp, Dir::Marks, Dir::Running];

    /// Its name inside the repository ("" for the top level).
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Root => "",
            Dir::Packs => "packs",
            Dir::Index => "index",
            Dir::Snapshots => "snapshots",
            Dir::Keys => "keys",
            Dir::Tmp => "tmp",
            Dir::Marks => "marks",
            Dir::Running => "running",
        }
    }
}

impl Dir {
    /// The most a whole-file read of this directory takes in: far above
    /// what holdfast writes there, so that a file someone planted (or a
    /// damaged file system) cannot make a command allocate without bound.
    pub fn largest_file(self) -> u64 {
        match self {
            Dir::Root | Dir::Keys | Dir::Marks | Dir::Running => 1 << 20,
            Dir::Packs | Dir::Tmp => protocol::MAX_REQUEST_BODY,
            // A merged index of a very large repository.
            Dir::Index | Dir::Snapshots => protocol::MAX_RESPONSE_BODY,
        }
    }

    /// What one file of it is called in messages ("pack", "snapshot").
    pub fn one(self) -> &'static str {
        self.as_str().trim_end_matches('s')
    }
}

impl AsRef<std::path::Path> for Dir {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(self.as_str())
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most transfers a remote repository may keep in flight: each holds
/// up to a pack in memory, and more than this only queues at the server.
pub const MAX_CONNECTIONS: usize = 64;

pub const ROOT: Dir = Dir::Root;
pub const PACKS: Dir = Dir::Packs;
pub const INDEX: Dir = Dir::Index;
pub const SNAPSHOTS: Dir = Dir::Snapshots;
pub const KEYS: Dir = Dir::Keys;
pub const TMP: Dir = Dir::Tmp;
pub const MARKS: Dir = Dir::Marks;
pub const RUNNING: Dir = Dir::Running;

/// One listed file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub name: String,
    pub size: u64,
    /// Last modification, where the medium tells it.
    pub modified: Option<jiff::Timestamp>,
    /// What changes whenever the object's bytes do, where the medium has
    /// one (an S3 ETag).
    pub tag: Option<String>,
}

impl FileInfo {
    /// A file known by its name alone.
    pub fn named(name: String) -> FileInfo {
        FileInfo { name, size: 0, modified: None, tag: None }
    }
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
    fn put_new(&self, dir: Dir, name: &str, bytes: Vec<u8>) -> Result<Stored>;

    /// Store or replace a small state file (prune's marks, `running/`
    /// records). Never called on the backup path for an existing name.
    fn put_state(&self, dir: Dir, name: &str, bytes: &[u8]) -> Result<()>;

    fn get(&self, dir: Dir, name: &str) -> Result<Vec<u8>>;

    /// The bytes `range` of `dir/name`; `cache` belongs to one thread.
    /// `worth` (which contains `range`) is what the caller will probably
    /// read next: a remote backend may fetch it in one request and serve
    /// later reads from `cache` (a local one ignores it).
    fn get_range(
        &self,
        dir: Dir,
        name: &str,
        range: Range<u64>,
        worth: Range<u64>,
        cache: &mut ReadCache,
    ) -> Result<Vec<u8>>;

    /// The files in `dir` (for packs, across the fan-out), sorted by name.
    fn list(&self, dir: Dir) -> Result<Vec<FileInfo>>;

    /// The names of the files in `dir`, sorted: [`Backend::list`] without
    /// sizes and times, which a local directory must look up file by file.
    fn list_names(&self, dir: Dir) -> Result<Vec<String>> {
        Ok(self.list(dir)?.into_iter().map(|f| f.name).collect())
    }

    fn remove(&self, dir: Dir, name: &str) -> Result<()>;
}

/// Per-thread state for repeated reads, owned by one thread
/// (`ReadCache::default()`) and kept by the backend that reads with it:
/// open local files, or stretches of a remote object fetched ahead.
#[derive(Default)]
pub struct ReadCache {
    state: Option<Box<dyn std::any::Any + Send>>,
}

impl ReadCache {
    /// The reading backend's own state, made on first use (a cache handed
    /// to another kind of backend starts afresh).
    pub fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.state.as_ref().is_some_and(|s| s.is::<T>()) {
            self.state = Some(Box::new(T::default()));
        }
        self.state.as_mut().and_then(|s| s.downcast_mut::<T>()).expect("the state was just made of this type")
    }
}

/// A remote backend's reads for one thread: stretches of objects fetched
/// ahead (what the caller said it was `worth`, or more of an object read in
/// order), served from memory while they last.
#[derive(Default)]
pub(crate) struct ReadAhead {
    /// (object, offset, bytes) fetched ahead, newest last.
    windows: Vec<(String, u64, Vec<u8>)>,
    /// Where the previous read ended (object, offset).
    last_end: Option<(String, u64)>,
}

impl ReadAhead {
    /// The most a sequential reader fetches in one request.
    const READ_AHEAD: u64 = 8 << 20;

    /// Bytes read ahead that one thread keeps (the newest stretch always).
    const KEEP_BYTES: usize = 24 << 20;

    /// The bytes `range` of `name`: from a stretch fetched earlier, or
    /// through `fetch` (which must return exactly the range it is given).
    pub(crate) fn read(
        &mut self,
        name: &str,
        range: Range<u64>,
        worth: Range<u64>,
        fetch: impl FnOnce(Range<u64>) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let cached = self
            .windows
            .iter()
            .find(|(n, start, bytes)| n == name && range.start >= *start && range.end <= start + bytes.len() as u64);
        if let Some((_, start, bytes)) = cached {
            let at = (range.start - start) as usize;
            let out = bytes[at..at + (range.end - range.start) as usize].to_vec();
            self.last_end = Some((name.to_string(), range.end));
            return Ok(out);
        }
        let in_order = self.last_end.as_ref().is_some_and(|(n, end)| n == name && *end == range.start);
        self.last_end = Some((name.to_string(), range.end));
        let span = if worth.start < range.start {
            worth
        } else if in_order {
            range.start..worth.end.min(range.start + Self::READ_AHEAD).max(range.end)
        } else {
            range.clone()
        };
        let bytes = fetch(span.clone())?;
        if span == range {
            return Ok(bytes);
        }
        let at = (range.start - span.start) as usize;
        let out = bytes[at..at + (range.end - range.start) as usize].to_vec();
        self.windows.push((name.to_string(), span.start, bytes));
        while self.windows.iter().map(|(_, _, b)| b.len()).sum::<usize>() > Self::KEEP_BYTES {
            self.windows.remove(0);
        }
        Ok(out)
    }
}

/// Where a repository is, with what is needed to reach it.
#[derive(Clone)]
pub enum Location {
    Local(PathBuf),
    S3(S3Settings),
    /// Another host, through `ssh` and `holdfast serve` there.
    Ssh(SshSettings),
}

impl Location {
    /// Connect to the storage (no key needed).
    pub fn open_backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Local(path) => Arc::new(LocalBackend::new(path.clone())),
            Location::S3(settings) => Arc::new(S3Backend::connect(settings)?),
            Location::Ssh(settings) => Arc::new(SshBackend::connect(settings)?),
        })
    }

    /// The local directory, if it is one.
    pub fn local_path(&self) -> Option<&std::path::Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3(_) | Location::Ssh(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(s) => write!(f, "{}", s.url()),
            Location::Ssh(s) => write!(f, "{}", s.url()),
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

/// The first eight characters of a stored file's name, for messages. Names
/// are hex ids, but a stray file may be called anything (so characters,
/// not bytes).
pub fn short_name(name: &str) -> &str {
    name.char_indices().nth(8).map_or(name, |(i, _)| &name[..i])
}

/// How to get rid of snapshot file `name` that cannot be read: `forget`
/// when it is named as holdfast names snapshots; otherwise it is no
/// snapshot of ours (`forget` by its first characters could match a real
/// one), so moving the file out of the repository.
pub fn removing_snapshot_file(name: &str) -> String {
    match crate::engine::crypto::Id::from_hex(name) {
        Some(_) => format!("`holdfast forget {}`", short_name(name)),
        None => format!("it is not a file holdfast wrote: move snapshots/{name} out of the repository"),
    }
}

/// The object's name under a directory: packs fan out by two hex digits.
pub fn relative_path(dir: Dir, name: &str) -> String {
    // `get`: a stray name listed in a pack directory may not start with
    // two one-byte characters.
    match name.get(..2) {
        Some(fan) if dir == PACKS && name.len() > 2 => format!("{dir}/{fan}/{name}"),
        _ if dir == Dir::Root => name.to_string(),
        _ => format!("{dir}/{name}"),
    }
}
