//! A repository: open or create one, and read and write its objects.
//!
//! Layout of a repository directory:
//!
//! ```text
//! holdfast-repository   plaintext marker: format and repository id (no secrets)
//! config                sealed: chunker parameters, compression level, pack size
//! keys/<hash>           key files (master key wrapped under a passphrase)
//! packs/ab/<hash>       packs of sealed blobs (chunks or trees)
//! index/<hash>          sealed index files: blob -> pack, offset, length
//! snapshots/<hash>      sealed snapshots; the hash is the snapshot id
//! tmp/                  files being written; leftovers of interrupted runs
//! ```
//!
//! Index files, snapshots and the config are "repository files": a cleartext
//! header (`holdfast`, format version, object kind, a 32-byte object id) and
//! the sealed payload, with the header bound as associated data.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::engine::backend::short_name as short;
use crate::engine::backend::{
    Backend, FileInfo, INDEX, KEYS, Location, MARKS, PACKS, ROOT, ReadCache, SNAPSHOTS, Stored,
};
use crate::engine::cache::SnapshotCache;
use crate::engine::chunker::{Chunker, ChunkerParams};
use crate::engine::crypto::{FORMAT_VERSION, Id, Keys, MasterKey, ObjectKind};
use crate::engine::early_reads::EarlyReads;
use crate::engine::file_cache::{self, CACHED_TREE_PACK, FileCache};
use crate::engine::index::{BlobLocation, Index, IndexBuilder, IndexFile};
use crate::engine::index_cache::IndexCache;
use crate::engine::keyfile::KeyFile;
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::Tree;
use crate::error::{Error, Result};

const MARKER: &str = "holdfast-repository";
const CONFIG: &str = "config";
const FILE_MAGIC: &[u8; 8] = b"holdfast";
const FILE_HEADER_LEN: usize = 8 + 1 + 1 + 32;

/// The cleartext marker that says "this directory is a holdfast repository".
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    holdfast_repository: u8,
    id: Id,
}

/// Settings fixed when the repository is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u8,
    pub id: Id,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u32,
}

impl RepoConfig {
    /// Values only holdfast's `init` makes: anything else is damage.
    pub fn check(&self) -> Result<()> {
        self.chunker.check().map_err(|e| Error::damaged("config", e))?;
        if !(-7..=22).contains(&self.compression_level) {
            return Err(Error::damaged("config", format!("compression level {}", self.compression_level)));
        }
        if !((64 << 10)..=(256 << 20)).contains(&self.pack_size) {
            return Err(Error::damaged("config", format!("pack size {}", self.pack_size)));
        }
        Ok(())
    }
}

/// Options for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub compression_level: i32,
    pub chunker: ChunkerParams,
    pub pack_size: u32,
    /// Use this master key instead of a new one (`init --copy-params-from`):
    /// the repositories then share chunk ids, chunker and encryption, so
    /// `copy` moves sealed blobs between them as they are.
    pub master: Option<MasterKey>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { compression_level: 3, chunker: ChunkerParams::default(), pack_size: 16 << 20, master: None }
    }
}

/// Repository files that could not be read: name and reason.
pub type Unreadable = Vec<(String, Error)>;

/// An unlocked repository.
pub struct Repository {
    backend: Arc<dyn Backend>,
    keys: Arc<Keys>,
    master: MasterKey,
    config: RepoConfig,
    /// The key file that unlocked it (its name under `keys/`).
    key_name: String,
    /// A remote repository's tree packs and index files on local disk.
    tree_packs: Option<FileCache>,
    index_files: Option<FileCache>,
    /// Snapshots this process has read and authenticated, by file name. A
    /// snapshot file's name is the hash of its bytes, so reading it again
    /// (prune reads the list twice: to decide, then after its marks) can
    /// only give the same snapshot.
    snapshots_read: Mutex<HashMap<String, Snapshot>>,
    /// A local repository's snapshot files, read while the key was unwrapped.
    early_reads: EarlyReads,
}

impl Repository {
    /// Create a repository at `location` (which must not exist or be empty).
    pub fn init(location: &Location, passphrase: &[u8], opts: &InitOptions) -> Result<Repository> {
        Repository::init_on(location.open_backend()?, passphrase, opts)
    }

    /// A new repository in memory, for the engine's tests.
    #[cfg(test)]
    pub(crate) fn in_memory() -> (Arc<crate::engine::backend::MemoryBackend>, Repository) {
        let store = Arc::new(crate::engine::backend::MemoryBackend::default());
        match Repository::init_on(store.clone(), b"test passphrase", &InitOptions::default()) {
            Ok(repo) => (store, repo),
            Err(e) => panic!("a repository in memory: {e}"),
        }
    }

    /// Create a repository on `backend` (which must hold nothing yet).
    pub fn init_on(backend: Arc<dyn Backend>, passphrase: &[u8], opts: &InitOptions) -> Result<Repository> {
        if !backend.is_empty()? {
            return Err(Error::AlreadyExists(backend.location().into()));
        }
        if !(-7..=22).contains(&opts.compression_level) {
            return Err(Error::Invalid(format!(
                "compression level must be between -7 and 22, not {}",
                opts.compression_level
            )));
        }
        if !((64 << 10)..=(256 << 20)).contains(&opts.pack_size) {
            return Err(Error::Invalid(format!(
                "pack size must be between 64 KiB and 256 MiB, not {}",
                opts.pack_size
            )));
        }
        backend.create_layout()?;
        let master = match &opts.master {
            Some(m) => m.clone(),
            None => MasterKey::generate()?,
        };
        let keys = Keys::derive(&master);
        let id = Id::random()?;
        let config = RepoConfig {
            version: FORMAT_VERSION,
            id,
            chunker: opts.chunker,
            compression_level: opts.compression_level,
            pack_size: opts.pack_size,
        };
        let json = serde_json::to_vec(&config).map_err(|e| Error::Invalid(e.to_string()))?;
        write_once(&*backend, CONFIG, &seal_file(&keys, ObjectKind::Config, &id, &json)?)?;
        let key = KeyFile::create(passphrase, &id, &master)?;
        let key_name = write_named_by_hash(&*backend, KEYS, key.to_json().as_bytes())?.to_hex();
        let marker = Marker { holdfast_repository: FORMAT_VERSION, id };
        // The marker goes last: a location without it is not a repository yet.
        write_once(&*backend, MARKER, &serde_json::to_vec_pretty(&marker).unwrap_or_default())?;
        Ok(Repository::new(backend, keys, master, config, key_name))
    }

    /// Open the repository at `location` with `passphrase`. A key file that
    /// cannot be used is never mistaken for a wrong passphrase: when no key
    /// opens and some are damaged, the error names them and says what to do.
    pub fn open(location: &Location, passphrase: &[u8]) -> Result<Repository> {
        // The key file that opened a remote repository last time is
        // unwrapped while the connection opens and the repository answers
        // (argon2 takes a round trip or more).
        let remembered = match location.local_path() {
            Some(_) => None,
            None => file_cache::remembered_key(&location.to_string()),
        };
        std::thread::scope(|s| {
            let guess = remembered.map(|bytes| s.spawn(move || KeyGuess::unwrap(bytes, passphrase)));
            Repository::open_guessing(location.open_backend()?, guess, passphrase)
        })
    }

    /// Open the repository on `backend` with `passphrase` (see [`Repository::open`]).
    pub fn open_on(backend: Arc<dyn Backend>, passphrase: &[u8]) -> Result<Repository> {
        Repository::open_guessing(backend, None, passphrase)
    }

    fn open_guessing(
        backend: Arc<dyn Backend>,
        guess: Option<std::thread::ScopedJoinHandle<'_, Option<KeyGuess>>>,
        passphrase: &[u8],
    ) -> Result<Repository> {
        // The marker, the key files and the config are fetched at once (and
        // the config while the passphrase is checked): one round trip to a
        // remote repository instead of four.
        std::thread::scope(|s| {
            let config = s.spawn(|| backend.get(ROOT, CONFIG));
            let keys = s.spawn(|| backend.list(KEYS));
            let marker = read_marker(&*backend)?;
            let early_reads = (!backend.is_remote()).then(|| EarlyReads::start(backend.clone()));
            let listed = crate::engine::parallel::joined(keys);
            let guess = guess.and_then(|thread| thread.join().ok().flatten());
            let mut repo = Repository::unlock(backend.clone(), marker, listed, config, guess, passphrase)?;
            repo.early_reads = early_reads.unwrap_or_default();
            Ok(repo)
        })
    }

    /// Open with the first key file `passphrase` unlocks (`guess`, when the
    /// repository lists it, without fetching it or unwrapping it again).
    fn unlock(
        backend: Arc<dyn Backend>,
        marker: Marker,
        listed: Result<Vec<FileInfo>>,
        config: std::thread::ScopedJoinHandle<'_, Result<Vec<u8>>>,
        mut guess: Option<KeyGuess>,
        passphrase: &[u8],
    ) -> Result<Repository> {
        let mut config = Some(config);
        let listed = match listed {
            Ok(files) => files,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "cannot list the key files of the repository at {} ({e}); nothing was changed",
                    backend.location()
                )));
            }
        };
        let mut names: Vec<String> = listed.into_iter().map(|f| f.name).collect();
        names.retain(|n| !n.starts_with('.'));
        if names.is_empty() {
            return Err(Error::NotARepository {
                path: backend.location().into(),
                reason: "it has no key files; restore one with `holdfast key import`".into(),
            });
        }
        // The remembered key file first, when it is still listed.
        if let Some(at) = guess.as_ref().and_then(|g| names.iter().position(|n| *n == g.name)) {
            names[..=at].rotate_right(1);
        } else if guess.take().is_some() {
            // Removed from the repository: the old passphrase must not keep
            // a copy of the key alive here.
            file_cache::forget_key(&backend.location());
        }
        let mut unusable: Vec<String> = Vec::new();
        for name in names {
            // The guess was unwrapped already; any other key file is fetched
            // and unwrapped below.
            let (bytes, kf, unlocked) = match guess.take().filter(|g| g.name == name) {
                Some(g) => (g.bytes, g.key_file, Some(g.unlocked)),
                None => {
                    let bytes = match backend.get(KEYS, &name) {
                        Ok(b) => b,
                        Err(e) => {
                            unusable.push(format!("{} (cannot be read: {e})", short(&name)));
                            continue;
                        }
                    };
                    let kf = match KeyFile::from_json(&bytes) {
                        Ok(kf) => kf,
                        Err(e) => {
                            unusable.push(format!("{} ({e})", short(&name)));
                            continue;
                        }
                    };
                    (bytes, kf, None)
                }
            };
            let renamed = Id::of_bytes(&bytes).to_hex() != name;
            if kf.repo_id().ok() != Some(marker.id) {
                unusable.push(format!("{} (belongs to another repository)", short(&name)));
                continue;
            }
            match unlocked.unwrap_or_else(|| kf.unlock(passphrase)) {
                Ok(Some(master)) => {
                    let keys = Keys::derive(&master);
                    let fetched = match config.take() {
                        Some(thread) => crate::engine::parallel::joined(thread),
                        None => backend.get(ROOT, CONFIG),
                    };
                    let sealed = fetched.map_err(|e| {
                        Error::damaged(
                            "config",
                            format!("cannot be read ({e}); the repository cannot be used without it"),
                        )
                    })?;
                    let json = open_file(&keys, ObjectKind::Config, &sealed, Some(&marker.id))?;
                    let config: RepoConfig = serde_json::from_slice(&json).map_err(|e| Error::damaged("config", e))?;
                    config.check()?;
                    if config.id != marker.id {
                        return Err(Error::damaged(
                            "config",
                            "belongs to another repository (its id differs from the marker's)",
                        ));
                    }
                    if backend.is_remote() {
                        file_cache::remember_key(&backend.location(), &bytes);
                    }
                    return Ok(Repository::new(backend, keys, master, config, name));
                }
                // The content no longer matches the name it was stored
                // under: damaged, not (necessarily) the wrong passphrase.
                Ok(None) if renamed => {
                    unusable.push(format!("{} (its content does not match its name: damaged)", short(&name)))
                }
                Ok(None) => {}
                Err(e) => unusable.push(format!("{} ({e})", short(&name))),
            }
        }
        if unusable.is_empty() {
            return Err(Error::WrongPassphrase(backend.location().into()));
        }
        Err(Error::KeyUnusable(format!(
            "no key file of the repository at {} opens with this passphrase, and key file(s) {} cannot be used, \
             so the passphrase may be right: import an exported key with `holdfast key import` \
             (`holdfast check` cannot run without a key)",
            backend.location(),
            unusable.join(", ")
        )))
    }

    fn new(backend: Arc<dyn Backend>, keys: Keys, master: MasterKey, config: RepoConfig, key_name: String) -> Self {
        let cache = |kind| if backend.is_remote() { FileCache::open(&config.id, kind) } else { None };
        let (tree_packs, index_files) = (cache("tree-packs"), cache("index-files"));
        Repository {
            backend,
            keys: Arc::new(keys),
            master,
            config,
            key_name,
            tree_packs,
            index_files,
            snapshots_read: Mutex::default(),
            early_reads: EarlyReads::default(),
        }
    }

    /// Read trees and index files from the repository itself, never from
    /// the local cache of its files: `check` and `repair` judge what the
    /// repository holds.
    pub fn read_directly(&mut self) {
        self.tree_packs = None;
        self.index_files = None;
        self.early_reads.stop();
    }

    /// Keep a tree pack just uploaded in the local cache of a remote
    /// repository's tree packs (the next backup compares against it).
    pub(crate) fn keep_tree_pack(&self, pack: &Id, bytes: &[u8]) {
        if let Some(cache) = &self.tree_packs
            && bytes.len() as u64 <= CACHED_TREE_PACK
        {
            cache.keep(pack, bytes);
        }
    }

    /// Where it is: a path or an `s3://` URL.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The backend, for threads that outlive a borrow (uploads).
    pub fn shared_backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn chunker(&self) -> Chunker {
        Chunker::new(self.config.chunker, self.keys.chunker_seed())
    }

    // ----- repository files: index, snapshots -----

    /// Read every index file. Damaged ones are skipped and returned by name
    /// with the reason, so a backup still works (it stores again what they
    /// listed) and `check` can report them.
    /// The union of the repository's index files, and those that cannot be
    /// read. A big repository's index is kept in the local index cache
    /// (`engine::index_cache`) rather than in memory, and so is a remote
    /// one's (its index files are then fetched once, not on every run),
    /// when there is a cache directory; a cache that cannot be used costs
    /// only memory and time.
    pub fn load_index(&self) -> Result<(Index, Unreadable)> {
        // A blob prune repacked is read from its new pack, not from the
        // marked one that a later prune deletes.
        let (listed, marked) = std::thread::scope(|s| {
            let marks = s.spawn(|| self.backend.list_names(MARKS));
            (self.backend.list(INDEX), crate::engine::parallel::joined(marks))
        });
        let listed = listed?;
        let marked: HashSet<Id> = match marked {
            Ok(names) => names.iter().filter_map(|name| Id::from_hex(name)).collect(),
            Err(_) => HashSet::new(),
        };
        let bytes: u64 = listed.iter().map(|f| f.size).sum();
        if (bytes >= crate::engine::index_cache::threshold() || self.backend.is_remote())
            && let Some(root) = crate::engine::cache::cache_root()
        {
            let cache = IndexCache::new(&root, &self.config.id, self.keys.clone());
            match self.load_index_cached(&cache, &listed, &marked) {
                Ok(loaded) => return Ok(loaded),
                Err(e) => tracing::warn!(
                    "the index cache under {} cannot be used ({e}); holding the index in memory",
                    root.display()
                ),
            }
        }
        let builder = IndexBuilder::default();
        let names = listed.into_iter().map(|f| f.name).collect();
        let (builder, damaged) = self.read_index_files_into(names, builder, |b, _, file| b.add(file));
        Ok((builder.finish_avoiding(&marked), damaged))
    }

    pub(crate) fn load_index_cached(
        &self,
        cache: &IndexCache,
        listed: &[FileInfo],
        marked: &HashSet<Id>,
    ) -> Result<(Index, Unreadable)> {
        let mut damaged = Vec::new();
        let cached = match cache.open(listed, marked) {
            Some(cached) => cached,
            None => {
                let names = listed.iter().map(|f| f.name.clone()).collect();
                let (builder, unread) =
                    self.read_index_files_into(names, cache.builder(marked)?, |b, name, file| b.add(name, file));
                builder.finish()?;
                damaged = unread;
                cache
                    .open(listed, marked)
                    .ok_or_else(|| Error::Invalid("the index cache just built does not open".into()))?
            }
        };
        let added = listed
            .iter()
            .map(|f| &f.name)
            .filter(|name| !cached.files.contains(*name) && !damaged.iter().any(|(d, _)| d == *name))
            .cloned()
            .collect();
        let builder = IndexBuilder::on_disk(cached.disk, &cached.packs);
        let (builder, unread) = self.read_index_files_into(added, builder, |b, _, file| b.add(file));
        damaged.extend(unread);
        Ok((builder.finish_avoiding(marked), damaged))
    }

    /// Read index files `names` (several at a time) into `into` as each is
    /// read: only what `into` keeps is held.
    fn read_index_files_into<B: Send>(
        &self,
        names: Vec<String>,
        into: B,
        add: impl Fn(&mut B, &str, &IndexFile) + Sync,
    ) -> (B, Unreadable) {
        let into = Mutex::new(into);
        let read = |name: &String| -> Result<()> {
            let file = self.read_index_file(name)?;
            add(&mut into.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), name, &file);
            Ok(())
        };
        let damaged = self
            .read_many(names, self.small_reads(), read)
            .into_iter()
            .filter_map(|(n, r)| Some((n, r.err()?)))
            .collect();
        (into.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()), damaged)
    }

    pub fn read_index_file(&self, name: &str) -> Result<IndexFile> {
        let bytes = match (&self.index_files, Id::from_hex(name)) {
            (Some(cache), Some(id)) => cache.get_or_fetch(&id, || self.read_repo_file(INDEX, name))?,
            _ => Arc::new(self.read_repo_file(INDEX, name)?),
        };
        let plain = open_file(&self.keys, ObjectKind::Index, &bytes, None)?;
        postcard::from_bytes(&plain).map_err(|e| Error::damaged(format!("index {}", short(name)), e))
    }

    pub fn write_index_file(&self, file: &IndexFile) -> Result<Id> {
        let plain = postcard::to_stdvec(file).map_err(|e| Error::Invalid(e.to_string()))?;
        let sealed = seal_file(&self.keys, ObjectKind::Index, &Id::random()?, &plain)?;
        let id = write_named_by_hash(&*self.backend, INDEX, &sealed)?;
        if let Some(cache) = &self.index_files {
            cache.keep(&id, &sealed);
        }
        Ok(id)
    }

    pub fn write_snapshot(&self, snapshot: &Snapshot) -> Result<Id> {
        let json = serde_json::to_vec(snapshot).map_err(|e| Error::Invalid(e.to_string()))?;
        let sealed = seal_file(&self.keys, ObjectKind::Snapshot, &Id::random()?, &json)?;
        write_named_by_hash(&*self.backend, SNAPSHOTS, &sealed)
    }

    pub fn read_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let name = id.to_hex();
        let bytes = match self.early_reads.take(&name) {
            Some(bytes) => bytes,
            None => self.read_repo_file(SNAPSHOTS, &name)?,
        };
        self.open_snapshot(id, &bytes)
    }

    /// Read snapshot `id` from its file now (not from an early read).
    fn read_snapshot_file(&self, id: &Id) -> Result<Snapshot> {
        self.open_snapshot(id, &self.read_repo_file(SNAPSHOTS, &id.to_hex())?)
    }

    fn open_snapshot(&self, id: &Id, bytes: &[u8]) -> Result<Snapshot> {
        let json = open_file(&self.keys, ObjectKind::Snapshot, bytes, None)?;
        serde_json::from_slice(&json).map_err(|e| Error::damaged(format!("snapshot {}", id.short()), e))
    }

    /// Every snapshot, oldest first, and the files that cannot be read.
    /// On a remote repository, snapshots read before come from the local
    /// cache (see `engine::cache`).
    pub fn snapshots(&self) -> Result<(Vec<(Id, Snapshot)>, Unreadable)> {
        self.read_snapshots(false)
    }

    /// Every snapshot read from its file and authenticated, never from the
    /// cache or an earlier read: for `check` and `repair`.
    pub fn snapshots_from_files(&self) -> Result<(Vec<(Id, Snapshot)>, Unreadable)> {
        self.read_snapshots(true)
    }

    fn read_snapshots(&self, from_files: bool) -> Result<(Vec<(Id, Snapshot)>, Unreadable)> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        // A local repository's snapshots are read by name alone (only the
        // snapshot cache of a remote one needs sizes and times).
        let listed = match self.backend.is_remote() {
            true => self.backend.list(SNAPSHOTS)?,
            false => self.backend.list_names(SNAPSHOTS)?.into_iter().map(FileInfo::named).collect(),
        };
        let mut cache =
            (!from_files && self.backend.is_remote()).then(|| SnapshotCache::load(&self.config.id, &self.keys));
        let mut unread = Vec::new();
        {
            let read_before = self.snapshots_read.lock().map_err(|_| Error::Invalid("snapshots read".into()))?;
            for file in &listed {
                let known = read_before
                    .get(&file.name)
                    .filter(|_| !from_files)
                    .or_else(|| cache.as_ref().and_then(|c| c.get(file)));
                match (known, Id::from_hex(&file.name)) {
                    (Some(snapshot), Some(id)) => good.push((id, snapshot.clone())),
                    _ => unread.push(file),
                }
            }
        }
        // What was read early, and the rest now on every core.
        let early = if from_files { Default::default() } else { self.early_reads.stop() };
        let read = |file: &&FileInfo| match (Id::from_hex(&file.name), early.get(&file.name)) {
            (Some(id), Some(bytes)) => self.open_snapshot(&id, bytes).map(|s| (id, s)),
            (Some(id), None) => self.read_snapshot_file(&id).map(|s| (id, s)),
            (None, _) => Err(Error::damaged("snapshot", format!("unexpected file {}", file.name))),
        };
        let read = self.read_many(unread, self.small_reads(), read);
        drop(early);
        // A file gone since the listing was forgotten meanwhile (by a
        // concurrent prune) only if a new listing agrees; otherwise it is
        // unreadable, and gc will not run (a bucket can answer "not found"
        // for an object it lists).
        let gone: HashSet<&str> = match read.iter().any(|(_, r)| r.as_ref().is_err_and(Error::is_not_found)) {
            true => {
                let now = self.backend.list_names(SNAPSHOTS)?;
                let now: HashSet<&str> = now.iter().map(String::as_str).collect();
                read.iter().map(|(file, _)| file.name.as_str()).filter(|name| !now.contains(name)).collect()
            }
            false => HashSet::new(),
        };
        let mut read_before = self.snapshots_read.lock().map_err(|_| Error::Invalid("snapshots read".into()))?;
        for (file, result) in read {
            match result {
                Err(e) if e.is_not_found() && gone.contains(file.name.as_str()) => {}
                Ok(found) => {
                    if let Some(c) = &mut cache {
                        c.put(file, &found.1);
                    }
                    read_before.insert(file.name.clone(), found.1.clone());
                    good.push(found);
                }
                Err(e) => bad.push((file.name.clone(), e)),
            }
        }
        if let Some(c) = cache {
            c.save(&listed);
        }
        good.sort_by_key(history_order);
        Ok((good, bad))
    }

    /// The newest readable snapshot that is `wanted` (in the order
    /// [`Repository::snapshots`] gives), for a backup's parent. In a local
    /// repository, files are read newest first by modification time, and
    /// the search stops once the rest were written more than
    /// [`CLOCK_SLACK`] before the best match began: with a long history
    /// that is a few files instead of all. A file's time is when it was
    /// written, after its snapshot began, so only a clock that jumped back
    /// further than the slack can hide a newer match, and then the parent
    /// is an older snapshot: a backup reads more, never less. A repository
    /// in a bucket takes the list from the snapshot cache instead.
    pub fn newest_snapshot_where(&self, wanted: impl Fn(&Snapshot) -> bool) -> Result<Option<(Id, Snapshot)>> {
        if self.backend.is_remote() {
            let (snaps, _) = self.snapshots()?;
            return Ok(snaps.into_iter().rev().find(|(_, s)| wanted(s)));
        }
        let mut listed = self.backend.list(SNAPSHOTS)?;
        // Newest first; files without a time last (and all of them read).
        listed.sort_by_key(|f| std::cmp::Reverse(f.modified));
        let mut best: Option<(Id, Snapshot)> = None;
        for file in &listed {
            if let (Some(found), Some(written)) = (&best, file.modified)
                && found.1.time.checked_sub(CLOCK_SLACK).is_ok_and(|since| written < since)
            {
                break;
            }
            let Some(id) = Id::from_hex(&file.name) else { continue };
            // An unreadable snapshot is no parent; `check` reports it.
            let Ok(snapshot) = self.read_snapshot(&id) else { continue };
            let candidate = (id, snapshot);
            if wanted(&candidate.1) && best.as_ref().is_none_or(|b| history_order(&candidate) > history_order(b)) {
                best = Some(candidate);
            }
        }
        Ok(best)
    }

    /// Resolve `latest` or a unique id prefix. `latest` fails while some
    /// snapshot cannot be read (it may be the newest) unless
    /// `skip_damaged`; then it is the newest readable one.
    pub fn find_snapshot(&self, spec: &str, skip_damaged: bool) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            let (all, bad) = self.snapshots()?;
            return newest(all, &bad, skip_damaged, |_| true).ok_or_else(|| Error::NoSuchSnapshot(spec.into()))?;
        }
        let id = self.snapshot_id(spec)?;
        let snapshot = self.read_snapshot(&id).map_err(|e| {
            Error::damaged(
                format!("snapshot {}", id.short()),
                format!(
                    "cannot be read ({e}); `holdfast check` says more, `holdfast forget {}` removes it",
                    id.short()
                ),
            )
        })?;
        Ok((id, snapshot))
    }

    /// The snapshot whose id starts with `spec` (read or not: a damaged
    /// snapshot can still be named, to forget it).
    pub fn snapshot_id(&self, spec: &str) -> Result<Id> {
        let spec_lc = spec.to_ascii_lowercase();
        if spec_lc.is_empty() || !spec_lc.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NoSuchSnapshot(spec.into()));
        }
        let matches: Vec<String> =
            self.backend.list(SNAPSHOTS)?.into_iter().map(|f| f.name).filter(|n| n.starts_with(&spec_lc)).collect();
        match matches.as_slice() {
            [] => Err(Error::NoSuchSnapshot(spec.into())),
            [one] => Id::from_hex(one).ok_or_else(|| Error::NoSuchSnapshot(spec.into())),
            many => {
                Err(Error::AmbiguousSnapshot(spec.into(), many.iter().map(|n| short(n)).collect::<Vec<_>>().join(", ")))
            }
        }
    }

    /// Reads of small files (index files, snapshots) worth having in flight:
    /// a bucket answers each slowly and many at once quickly, and they hold
    /// little memory.
    fn small_reads(&self) -> usize {
        let n = self.backend.parallelism();
        if self.backend.is_remote() { (4 * n).max(16) } else { n }
    }

    /// Apply `read` to every item on up to `threads` threads (each waiting
    /// on its own request); results in item order.
    pub(crate) fn read_many<I: Sync, T: Send>(
        &self,
        items: Vec<I>,
        threads: usize,
        read: impl Fn(&I) -> Result<T> + Sync,
    ) -> Vec<(I, Result<T>)> {
        let threads = threads.min(items.len()).max(1);
        if threads == 1 {
            return items
                .into_iter()
                .map(|item| {
                    let r = read(&item);
                    (item, r)
                })
                .collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<T>>>> = items.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let r = read(item);
                        if let Ok(mut slot) = results[i].lock() {
                            *slot = Some(r);
                        }
                    }
                });
            }
        });
        items
            .into_iter()
            .zip(results)
            .map(|(item, slot)| {
                let r =
                    slot.into_inner().ok().flatten().unwrap_or_else(|| {
                        Err(Error::Invalid("a read did not finish (a reading thread failed)".into()))
                    });
                (item, r)
            })
            .collect()
    }

    /// Read a repository file and check that its bytes hash to its name.
    fn read_repo_file(&self, dir: crate::engine::backend::Dir, name: &str) -> Result<Vec<u8>> {
        let bytes = self.backend.get(dir, name)?;
        if Id::of_bytes(&bytes).to_hex() != name {
            let what = format!("{} {}", dir.one(), short(name));
            return Err(Error::damaged(what, "contents do not match the file name (hash)"));
        }
        Ok(bytes)
    }

    // ----- blobs -----

    /// Read, authenticate and decompress one blob; checks its id.
    pub fn read_blob(&self, id: &Id, loc: &BlobLocation, packs: &mut PackFiles) -> Result<Vec<u8>> {
        let sealed = self.read_sealed(loc, packs)?;
        self.open_blob(id, loc, &sealed)
    }

    /// Like [`Repository::read_blob`], for a reader that goes on through the
    /// pack (restore): a remote backend reads ahead.
    pub fn read_blob_ahead(
        &self,
        id: &Id,
        loc: &BlobLocation,
        index: &Index,
        packs: &mut PackFiles,
    ) -> Result<Vec<u8>> {
        let range = blob_range(loc);
        let sealed = self.backend.get_range(
            PACKS,
            &loc.pack.to_hex(),
            range.clone(),
            range.start..pack_end(index, loc),
            packs,
        )?;
        self.open_blob(id, loc, &sealed)
    }

    /// The sealed bytes of a blob, as stored (not yet authenticated).
    fn read_sealed(&self, loc: &BlobLocation, packs: &mut PackFiles) -> Result<Vec<u8>> {
        let range = blob_range(loc);
        self.backend.get_range(PACKS, &loc.pack.to_hex(), range.clone(), range, packs)
    }

    /// The bytes one [`PackRead`] fetches, as stored.
    pub fn read_pack_range(&self, read: &PackRead, packs: &mut PackFiles) -> Result<Vec<u8>> {
        let range = read.start..read.end;
        self.backend.get_range(PACKS, &read.pack.to_hex(), range.clone(), range, packs)
    }

    /// Authenticate and decompress a sealed blob; checks its id.
    pub fn open_blob(&self, id: &Id, loc: &BlobLocation, sealed: &[u8]) -> Result<Vec<u8>> {
        let what = || format!("{} {} in pack {}", loc.kind.name(), id.short(), loc.pack.short());
        let plain = self.keys.open(loc.kind, id, sealed).map_err(|e| {
            Error::damaged(what(), format!("{}; `holdfast check --read-data` finds what depends on it", e.detail()))
        })?;
        if self.keys.blob_id(&plain) != *id {
            return Err(Error::damaged(
                what(),
                "content does not match its id; `holdfast check --read-data` says more",
            ));
        }
        Ok(plain)
    }

    /// One tree, for a walk that follows a single path (`find_entry`) or
    /// reads trees as it needs them (a backup's parent, locally).
    pub fn load_tree(&self, index: &Index, id: &Id, packs: &mut PackFiles) -> Result<Tree> {
        let loc = index.get(id).ok_or_else(|| tree_not_indexed(id))?;
        let range = blob_range(&loc);
        let end = pack_end(index, &loc);
        if let Some(cache) = self.tree_pack_cache(&loc, end) {
            let bytes = self.cached_tree_pack(cache, &loc.pack).map_err(|e| tree_pack_unreadable(id, &loc.pack, &e))?;
            let sealed = bytes.get(range.start as usize..range.end as usize);
            return self.open_tree(id, &loc, sealed.ok_or_else(|| Error::damaged("pack", "short read")));
        }
        // A remote backend fetches a small tree pack whole, once: the next
        // tree on the path is probably in it.
        let worth = if end <= WHOLE_TREE_PACK { 0..end } else { range.clone() };
        let sealed = self
            .backend
            .get_range(PACKS, &loc.pack.to_hex(), range, worth, packs)
            .map_err(|e| tree_pack_unreadable(id, &loc.pack, &e))?;
        Tree::decode(&self.open_blob(id, &loc, &sealed)?)
    }

    /// Several trees at once, each with its own outcome. Small tree packs are fetched whole and kept in
    /// `kept` for the next call (the next level's trees are mostly in the
    /// same packs); other trees are grouped into pack reads. The reads run
    /// on several threads.
    pub fn load_trees(
        &self,
        index: &Index,
        ids: impl IntoIterator<Item = Id>,
        kept: &mut TreePacks,
    ) -> HashMap<Id, Result<Tree>> {
        let mut out = HashMap::new();
        let mut from_kept = Vec::new();
        let mut whole: HashMap<Id, PackRead> = HashMap::new();
        let mut ranged = Vec::new();
        let mut room = TREE_PACKS_KEPT.saturating_sub(kept.bytes);
        let ids: std::collections::HashSet<Id> = ids.into_iter().collect();
        for id in ids {
            let Some(loc) = index.get(&id) else {
                out.insert(id, Err(tree_not_indexed(&id)));
                continue;
            };
            if kept.packs.contains_key(&loc.pack) {
                from_kept.push((id, loc));
            } else if let Some(read) = whole.get_mut(&loc.pack) {
                read.blobs.push((id, loc));
            } else if let end = pack_end(index, &loc)
                && (end <= WHOLE_TREE_PACK || self.tree_pack_cache(&loc, end).is_some())
                && end <= room
            {
                room -= end;
                whole.insert(loc.pack, PackRead { pack: loc.pack, start: 0, end, blobs: vec![(id, loc)] });
            } else {
                ranged.push((id, loc));
            }
        }
        // Whole packs in flight are bounded by `room`; ranged reads (up to
        // 8 MiB each) by the backend's transfers.
        let threads = if ranged.is_empty() { self.small_reads() } else { self.backend.parallelism() };
        // Each read: whether it is of a whole pack (kept for the next
        // call), and the cache of tree packs it goes through, if any.
        let reads: Vec<((bool, Option<&FileCache>), PackRead)> = whole
            .into_values()
            .map(|read| ((true, read.blobs.first().and_then(|(_, loc)| self.tree_pack_cache(loc, read.end))), read))
            .chain(plan_pack_reads(ranged).into_iter().map(|read| ((false, None), read)))
            .collect();
        let fetched = self.read_many(reads, threads, |((_, cache), read)| match cache {
            Some(cache) => self.cached_tree_pack(cache, &read.pack),
            None => Ok(Arc::new(self.read_pack_range(read, &mut PackFiles::default())?)),
        });
        let mut read_packs = Vec::new();
        for (((keep, _), read), result) in fetched {
            match result {
                Ok(bytes) => read_packs.push((keep, read, bytes)),
                Err(e) => {
                    out.extend(read.blobs.iter().map(|(id, _)| (*id, Err(tree_pack_unreadable(id, &read.pack, &e)))))
                }
            }
        }
        // Every tree out of its sealed bytes, on all cores: with a long
        // history a walk opens thousands (prune, find).
        // (A blob whose bytes lie past what was read has none.)
        let mut sealed: Vec<(Id, BlobLocation, Option<&[u8]>)> = Vec::new();
        for (_, read, bytes) in &read_packs {
            sealed.extend(sealed_blobs(read, bytes).map(|(id, loc, bytes)| (*id, *loc, bytes.ok())));
        }
        for (id, loc) in from_kept {
            let bytes = kept.packs.get(&loc.pack).map(|b| b.as_slice()).unwrap_or_default();
            let range = blob_range(&loc);
            sealed.push((id, loc, bytes.get(range.start as usize..range.end as usize)));
        }
        let open = |part: &[(Id, BlobLocation, Option<&[u8]>)]| -> Vec<(Id, Result<Tree>)> {
            let short = || Error::damaged("pack", "short read");
            part.iter().map(|(id, loc, bytes)| (*id, self.open_tree(id, loc, bytes.ok_or_else(short)))).collect()
        };
        let chunk = sealed.len().div_ceil(crate::engine::parallel::cpus()).max(TREES_PER_THREAD);
        // A panic (a bug) fails the trees of its part, not the process.
        let failed = |part: &[(Id, BlobLocation, Option<&[u8]>)]| -> Vec<(Id, Result<Tree>)> {
            let bug = |id: &Id| Error::Invalid(format!("tree {} could not be opened (a bug in holdfast)", id.short()));
            part.iter().map(|(id, ..)| (*id, Err(bug(id)))).collect()
        };
        std::thread::scope(|s| {
            let mut parts = sealed.chunks(chunk);
            let first = parts.next().unwrap_or_default();
            let others: Vec<_> = parts.map(|part| (part, s.spawn(move || open(part)))).collect();
            let here = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open(first)));
            out.extend(here.unwrap_or_else(|_| failed(first)));
            for (part, thread) in others {
                out.extend(thread.join().unwrap_or_else(|_| failed(part)));
            }
        });
        drop(sealed);
        for (keep, read, bytes) in read_packs {
            if keep {
                kept.bytes += bytes.len() as u64;
                kept.packs.insert(read.pack, bytes);
            }
        }
        out
    }

    /// The local cache of a remote repository's tree packs, when the pack
    /// holding `loc` (its blobs ending at `end`) is read whole through it.
    fn tree_pack_cache(&self, loc: &BlobLocation, end: u64) -> Option<&FileCache> {
        let cache = self.tree_packs.as_ref()?;
        (loc.kind == ObjectKind::Tree && end <= CACHED_TREE_PACK && cache.keeps(end)).then_some(cache)
    }

    /// A whole tree pack, through `cache`.
    fn cached_tree_pack(&self, cache: &FileCache, pack: &Id) -> Result<Arc<Vec<u8>>> {
        cache.get_or_fetch(pack, || self.backend.get(PACKS, &pack.to_hex()))
    }

    /// A tree out of its sealed bytes.
    fn open_tree(&self, id: &Id, loc: &BlobLocation, sealed: Result<&[u8]>) -> Result<Tree> {
        Tree::decode(&self.open_blob(id, loc, sealed?)?)
    }

    /// Walk trees breadth first from `roots`, a level at a time: each
    /// level's trees are loaded together ([`Repository::load_trees`]), so a
    /// walk over a bucket waits about one round trip per level of
    /// directories instead of one per tree pack. `visit` gets each tree
    /// with the context its parent gave it and returns the subtrees to visit
    /// next (with theirs). The first tree that cannot be read ends the walk.
    pub fn walk_trees<C>(
        &self,
        index: &Index,
        roots: Vec<(Id, C)>,
        mut visit: impl FnMut(&Id, &Tree, C) -> Result<Vec<(Id, C)>>,
    ) -> Result<()> {
        self.walk_trees_tolerant(index, roots, |id, tree, context| visit(id, tree.map_err(Error::clone)?, context))
    }

    /// Like [`Repository::walk_trees`], but `visit` also gets the trees
    /// that cannot be read, with the reason, and the walk goes on (`check`
    /// names every damaged tree; a backup does without a parent's tree).
    pub fn walk_trees_tolerant<C>(
        &self,
        index: &Index,
        roots: Vec<(Id, C)>,
        mut visit: impl FnMut(&Id, std::result::Result<&Tree, &Error>, C) -> Result<Vec<(Id, C)>>,
    ) -> Result<()> {
        let mut kept = TreePacks::default();
        let mut level = roots;
        while !level.is_empty() {
            let trees = self.load_trees(index, level.iter().map(|(id, _)| *id), &mut kept);
            let mut next = Vec::new();
            for (id, context) in level {
                let missing;
                let tree = match trees.get(&id) {
                    Some(loaded) => loaded.as_ref(),
                    None => {
                        missing = tree_not_indexed(&id);
                        Err(&missing)
                    }
                };
                next.extend(visit(&id, tree, context)?);
            }
            level = next;
        }
        Ok(())
    }

    // ----- keys -----

    /// Add a key file for another passphrase; returns its name.
    pub fn add_key(&self, passphrase: &[u8]) -> Result<String> {
        Ok(self.write_key(passphrase)?.0)
    }

    /// A new key file for `passphrase`, written: its name and bytes.
    fn write_key(&self, passphrase: &[u8]) -> Result<(String, Vec<u8>)> {
        let bytes = KeyFile::create(passphrase, &self.config.id, &self.master)?.to_json().into_bytes();
        Ok((write_named_by_hash(&*self.backend, KEYS, &bytes)?.to_hex(), bytes))
    }

    /// Replace the key file that unlocked this repository with one for
    /// `new_passphrase`: the new one is durable before the old one goes.
    pub fn change_passphrase(&mut self, new_passphrase: &[u8]) -> Result<()> {
        let (new_name, bytes) = self.write_key(new_passphrase)?;
        self.backend.remove(KEYS, &self.key_name)?;
        self.key_name = new_name;
        // The key file kept in the local cache is the new one, never the one
        // the old passphrase opens.
        if self.backend.is_remote() {
            file_cache::remember_key(&self.backend.location(), &bytes);
        }
        Ok(())
    }

    /// The master key, for `init --copy-params-from` (never printed).
    pub fn master_key(&self) -> &MasterKey {
        &self.master
    }

    /// Whether `other` has the same keys and chunker: sealed blobs can move
    /// between the two as they are.
    pub fn shares_keys_with(&self, other: &Repository) -> bool {
        let probe = b"holdfast: do these repositories share keys?";
        self.keys.blob_id(probe) == other.keys.blob_id(probe) && self.config.chunker == other.config.chunker
    }

    /// The key file that unlocked this repository.
    pub fn key_file(&self) -> Result<KeyFile> {
        KeyFile::from_json(&self.backend.get(KEYS, &self.key_name)?)
    }
}

/// How far a snapshot file's modification time may lag its snapshot's own
/// time (clocks of different hosts, or one set back) before the newest-first
/// search for a parent stops looking.
pub(crate) const CLOCK_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Where a snapshot sorts in a history, oldest first: by its time, and a
/// repaired snapshot just after its original.
fn history_order((id, s): &(Id, Snapshot)) -> (jiff::Timestamp, bool, Id) {
    (s.time, s.repaired.is_some(), *id)
}

/// The newest of `snapshots` that `wanted` accepts. `None` when there is
/// none; an error when some snapshot could not be read (`unreadable`) and
/// so might be the newest, unless `skip_damaged`.
pub fn newest(
    snapshots: Vec<(Id, Snapshot)>,
    unreadable: &Unreadable,
    skip_damaged: bool,
    wanted: impl Fn(&Snapshot) -> bool,
) -> Option<Result<(Id, Snapshot)>> {
    if let Some((name, e)) = unreadable.first()
        && !skip_damaged
    {
        return Some(Err(Error::damaged(
            format!("snapshot {}", short(name)),
            format!(
                "cannot be read ({e}); it may be the newest, so `latest` is not certain: \
                 name a snapshot, pass --skip-damaged to take the newest readable one, \
                 or `holdfast forget {}` if it is beyond repair{}",
                short(name),
                if unreadable.len() > 1 {
                    format!(" ({} snapshots cannot be read)", unreadable.len())
                } else {
                    String::new()
                }
            ),
        )));
    }
    snapshots.into_iter().rev().find(|(_, s)| wanted(s)).map(Ok)
}

/// Put a key file into a repository that lost its `keys/` (or add one).
/// Checks that the key belongs to the repository and opens its config.
pub fn import_key(location: &Location, key: &KeyFile, passphrase: &[u8]) -> Result<()> {
    let backend = location.open_backend()?;
    let marker = read_marker(&*backend)?;
    if key.repo_id()? != marker.id {
        return Err(Error::Invalid(format!(
            "this key belongs to repository {}, not to {} ({})",
            key.repo_id()?.short(),
            backend.location(),
            marker.id.short()
        )));
    }
    let master = key.unlock(passphrase)?.ok_or_else(|| Error::WrongPassphrase(backend.location().into()))?;
    let sealed = backend.get(ROOT, CONFIG)?;
    open_file(&Keys::derive(&master), ObjectKind::Config, &sealed, Some(&marker.id))?;
    if let Some(path) = location.local_path() {
        let keys_dir = path.join(KEYS);
        std::fs::create_dir_all(&keys_dir).map_err(|e| Error::io(&keys_dir, e))?;
    }
    write_named_by_hash(&*backend, KEYS, key.to_json().as_bytes())?;
    Ok(())
}

/// A key file remembered from an earlier run, unwrapped with this run's
/// passphrase while the repository answers.
struct KeyGuess {
    /// The hash of its bytes: the name the repository must list it under.
    name: String,
    bytes: Vec<u8>,
    key_file: KeyFile,
    unlocked: Result<Option<MasterKey>>,
}

impl KeyGuess {
    fn unwrap(bytes: Vec<u8>, passphrase: &[u8]) -> Option<KeyGuess> {
        let key_file = KeyFile::from_json(&bytes).ok()?;
        let unlocked = key_file.unlock(passphrase);
        Some(KeyGuess { name: Id::of_bytes(&bytes).to_hex(), bytes, key_file, unlocked })
    }
}

fn read_marker(backend: &dyn Backend) -> Result<Marker> {
    let not_repo = |reason: &str| Error::NotARepository { path: backend.location().into(), reason: reason.into() };
    let bytes = match backend.get(ROOT, MARKER) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(not_repo(if backend.is_empty().unwrap_or(false) {
                "nothing is there; `holdfast init` creates one"
            } else {
                "no holdfast-repository file"
            }));
        }
        Err(e) => return Err(e),
    };
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|_| not_repo("unreadable holdfast-repository file"))?;
    if marker.holdfast_repository != FORMAT_VERSION {
        return Err(not_repo(&format!("format {} is not supported", marker.holdfast_repository)));
    }
    Ok(marker)
}

/// Write `bytes` as `dir/<hash of bytes>` and return that hash.
fn write_named_by_hash(backend: &dyn Backend, dir: crate::engine::backend::Dir, bytes: &[u8]) -> Result<Id> {
    let id = Id::of_bytes(bytes);
    backend.put_new(dir, &id.to_hex(), bytes.to_vec())?;
    Ok(id)
}

/// Write a top-level file with a fixed name (config, marker); it must be new.
fn write_once(backend: &dyn Backend, name: &str, bytes: &[u8]) -> Result<()> {
    match backend.put_new(ROOT, name, bytes.to_vec())? {
        Stored::New => Ok(()),
        Stored::AlreadyThere => Err(Error::AlreadyExists(backend.location().into())),
    }
}

/// A tree pack up to this size is fetched whole: by a remote backend on a
/// single tree's path, by every backend in a walk.
const WHOLE_TREE_PACK: u64 = 16 << 20;

/// Tree packs one walk fetched whole, kept until it ends, up to
/// [`TREE_PACKS_KEPT`] bytes (beyond that, trees are read range by range).
#[derive(Default)]
pub struct TreePacks {
    packs: HashMap<Id, Arc<Vec<u8>>>,
    bytes: u64,
}

const TREE_PACKS_KEPT: u64 = 64 << 20;

/// Fewer trees than this are opened on one thread (a thread costs more).
const TREES_PER_THREAD: usize = 64;

/// Where the last indexed blob of `loc`'s pack ends.
fn pack_end(index: &Index, loc: &BlobLocation) -> u64 {
    let end = blob_range(loc).end;
    index.pack_end(&loc.pack).unwrap_or(end).max(end)
}

/// Where a blob's sealed bytes are in its pack.
fn blob_range(loc: &BlobLocation) -> std::ops::Range<u64> {
    loc.offset as u64..loc.offset as u64 + loc.length as u64
}

/// A tree whose pack could not be read: names both, and what to do.
fn tree_pack_unreadable(id: &Id, pack: &Id, e: &Error) -> Error {
    Error::damaged(
        format!("tree {} in pack {}", id.short(), pack.short()),
        format!("the pack cannot be read ({e}); `holdfast check` says which snapshots need it"),
    )
}

pub(crate) fn tree_not_indexed(id: &Id) -> Error {
    Error::damaged(
        format!("tree {}", id.short()),
        "not in the index; `holdfast check` says more, `holdfast repair index` may bring it back",
    )
}

/// Seal a repository file: cleartext header, then the sealed payload.
pub(crate) fn seal_file(keys: &Keys, kind: ObjectKind, id: &Id, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(FILE_HEADER_LEN + plain.len());
    out.extend_from_slice(FILE_MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&keys.seal(kind, id, plain, 3)?);
    Ok(out)
}

/// Open a repository file of `kind`; with `expect_id`, its object id must match.
pub(crate) fn open_file(keys: &Keys, kind: ObjectKind, bytes: &[u8], expect_id: Option<&Id>) -> Result<Vec<u8>> {
    let what = format!("{kind:?}").to_lowercase();
    if bytes.len() < FILE_HEADER_LEN || &bytes[..8] != FILE_MAGIC {
        return Err(Error::damaged(what, "not a holdfast object"));
    }
    if bytes[8] != FORMAT_VERSION || bytes[9] != kind as u8 {
        return Err(Error::damaged(what, "wrong format version or object kind"));
    }
    let id = Id(bytes[10..42].try_into().unwrap_or_default());
    if expect_id.is_some_and(|e| *e != id) {
        return Err(Error::damaged(what, "belongs to another repository"));
    }
    keys.open(kind, &id, &bytes[FILE_HEADER_LEN..])
}

/// Per-thread read state for blob reads (see [`ReadCache`]).
pub type PackFiles = ReadCache;

/// Blobs of one pack that one read fetches: bytes `start..end` of the pack.
/// Restore and copy read pack by pack, a few MiB per request, instead of
/// blob by blob: what keeps them fast from object storage.
pub struct PackRead {
    pub pack: Id,
    pub start: u64,
    pub end: u64,
    pub blobs: Vec<(Id, BlobLocation)>,
}

/// Blobs closer than this are fetched with one read (the gap comes along).
const READ_GAP: u64 = 1 << 20;
/// The most one read fetches (per thread in memory at once).
const READ_MAX: u64 = 8 << 20;

/// The reads that fetch every one of `blobs`: per pack, in offset order,
/// neighbours merged up to [`READ_MAX`].
pub fn plan_pack_reads(blobs: impl IntoIterator<Item = (Id, BlobLocation)>) -> Vec<PackRead> {
    let mut by_pack: HashMap<Id, Vec<(Id, BlobLocation)>> = HashMap::new();
    for (id, loc) in blobs {
        by_pack.entry(loc.pack).or_default().push((id, loc));
    }
    let mut reads = Vec::new();
    let mut packs: Vec<_> = by_pack.into_iter().collect();
    packs.sort_by_key(|(pack, _)| *pack);
    for (pack, mut blobs) in packs {
        blobs.sort_by_key(|(_, loc)| loc.offset);
        let mut current: Option<PackRead> = None;
        for (id, loc) in blobs {
            let (start, end) = (loc.offset as u64, loc.offset as u64 + loc.length as u64);
            match current.as_mut() {
                Some(read) if start <= read.end + READ_GAP && end - read.start <= READ_MAX => {
                    read.end = read.end.max(end);
                    read.blobs.push((id, loc));
                }
                _ => {
                    reads.extend(current.take());
                    current = Some(PackRead { pack, start, end, blobs: vec![(id, loc)] });
                }
            }
        }
        reads.extend(current);
    }
    reads
}

/// The sealed bytes of each blob of `read`, out of the bytes it fetched.
pub fn sealed_blobs<'a>(
    read: &'a PackRead,
    bytes: &'a [u8],
) -> impl Iterator<Item = (&'a Id, &'a BlobLocation, Result<&'a [u8]>)> {
    read.blobs.iter().map(move |(id, loc)| {
        let at = (loc.offset as u64 - read.start) as usize;
        let sealed = bytes.get(at..at + loc.length as usize).ok_or_else(|| Error::damaged("pack", "short read"));
        (id, loc, sealed)
    })
}

/// A set of blob ids shared by the threads of one backup: the ones already in
/// the repository or being stored by this run, so each is stored once.
pub struct KnownBlobs<'a> {
    index: &'a Index,
    /// Claimed by this run (not in the index).
    new: Mutex<std::collections::HashSet<Id>>,
}

impl<'a> KnownBlobs<'a> {
    pub fn new(index: &'a Index) -> Self {
        KnownBlobs { index, new: Mutex::default() }
    }

    /// True when the caller is the first to claim `id` and must store it.
    pub fn claim(&self, id: Id) -> bool {
        if self.index.contains(&id) {
            return false;
        }
        // A poisoned lock only means another thread panicked; storing a blob
        // twice is harmless, skipping one is not.
        match self.new.lock() {
            Ok(mut s) => s.insert(id),
            Err(poisoned) => poisoned.into_inner().insert(id),
        }
    }
}

/// Absolute path without touching the filesystem's symlinks for the last part.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_backups_parent_is_the_newest_match_and_old_files_are_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        let repo = Repository::init(&Location::Local(root.clone()), b"pw", &InitOptions::default()).expect("init");
        let now = jiff::Timestamp::now();
        let day = jiff::SignedDuration::from_hours(24);
        // A snapshot of `host`, begun `age` days ago, its file written `written` days ago.
        let add = |host: &str, age: i32, written: u64| {
            let snapshot = Snapshot { time: now - day * age, ..empty_snapshot(host) };
            let id = repo.write_snapshot(&snapshot).expect("write");
            let file =
                std::fs::File::options().write(true).open(root.join("snapshots").join(id.to_hex())).expect("open");
            let t = SystemTime::now() - Duration::from_secs(written * 86_400);
            file.set_modified(t).expect("mtime");
            id
        };
        add("web", 30, 30);
        let parent = add("web", 1, 1);
        add("db", 0, 0);
        // Begun after `parent`, but its file was written a month ago: the
        // search has stopped before it (only a clock set back by more than
        // CLOCK_SLACK makes such a file).
        add("web", 0, 30);
        // A damaged file, newest of all, is passed over.
        std::fs::write(root.join("snapshots").join(Id::of_bytes(b"x").to_hex()), b"rotten").expect("write");

        let found = repo.newest_snapshot_where(|s| s.host == "web").expect("lookup").expect("a parent");
        assert_eq!(found.0, parent);
        assert!(repo.newest_snapshot_where(|s| s.host == "mail").expect("lookup").is_none());
    }

    /// A snapshot of `host` with nothing in it.
    fn empty_snapshot(host: &str) -> Snapshot {
        Snapshot { time: jiff::Timestamp::now(), paths: vec!["/srv".into()], ..Snapshot::blank(host) }
    }

    #[test]
    fn snapshot_files_read_at_open_count_only_while_listed_and_only_when_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        let location = Location::Local(root.clone());
        let repo = Repository::init(&location, b"pw", &InitOptions::default()).expect("init");
        let [forgotten, kept, damaged] =
            ["a", "b", "c"].map(|h| repo.write_snapshot(&empty_snapshot(h)).expect("write"));
        drop(repo);
        let file = |id: &Id| root.join("snapshots").join(id.to_hex());
        std::fs::write(file(&damaged), b"rotten").expect("damage");

        // The files are read while the key is unwrapped; then another
        // process forgets one.
        let repo = Repository::open(&location, b"pw").expect("open");
        std::fs::remove_file(file(&forgotten)).expect("forget");

        let (good, bad) = repo.snapshots().expect("snapshots");
        assert_eq!(good.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [kept]);
        assert_eq!(bad.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(), [damaged.to_hex()]);
        assert!(bad[0].1.to_string().contains("do not match"), "{}", bad[0].1);
        // `check` reads the files themselves.
        let (good, _) = repo.snapshots_from_files().expect("from files");
        assert_eq!(good.len(), 1);
    }

    #[test]
    fn many_trees_open_together_and_a_damaged_one_is_named_alone() {
        let files = tempfile::tempdir().expect("tempdir");
        for i in 0..150 {
            let sub = files.path().join(format!("d{i:03}"));
            std::fs::create_dir(&sub).expect("mkdir");
            std::fs::write(sub.join("f"), format!("file {i}")).expect("write");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let location = Location::Local(dir.path().join("repo"));
        let repo = Repository::init(&location, b"pw", &InitOptions::default()).expect("init");
        let source = crate::engine::backup::BackupSource::same_path(files.path()).expect("source");
        let snapshot = crate::engine::backup::backup(&repo, &[source], &Default::default()).expect("backup");
        let (index, _) = repo.load_index().expect("index");
        let root = repo.read_snapshot(&snapshot.id).expect("snapshot").root;
        let subtree = |e: &crate::engine::tree::Entry| match e.kind {
            crate::engine::tree::EntryKind::Dir { tree } => Some(tree),
            _ => None,
        };
        // Trees read and not read, and the directory of 150 entries.
        let walk = |repo: &Repository| {
            let (mut good, mut bad, mut big) = (0, Vec::new(), None);
            repo.walk_trees_tolerant(&index, vec![(root, ())], |id, tree, ()| {
                let Ok(tree) = tree else {
                    bad.push(*id);
                    return Ok(vec![]);
                };
                good += 1;
                if tree.entries.len() == 150 {
                    big = Some(tree.clone());
                }
                Ok(tree.entries.iter().filter_map(subtree).map(|t| (t, ())).collect())
            })
            .expect("walk");
            (good, bad, big)
        };
        let (trees, bad, big) = walk(&repo);
        // The 150 directories, theirs, and the path down to it.
        assert!(trees > 151 && bad.is_empty(), "{trees} {bad:?}");

        // Damage one subtree's sealed bytes in its pack.
        let victim = subtree(&big.expect("the directory").entries[77]).expect("a directory");
        let at = index.get(&victim).expect("indexed");
        let pack = crate::engine::backend::LocalBackend::new(dir.path().join("repo")).path_of(PACKS, &at.pack.to_hex());
        let mut bytes = std::fs::read(&pack).expect("pack");
        bytes[at.offset as usize + at.length as usize / 2] ^= 1;
        std::fs::write(&pack, bytes).expect("damage");
        let repo = Repository::open(&location, b"pw").expect("open");
        let (read, bad, _) = walk(&repo);
        assert_eq!((read, bad), (trees - 1, vec![victim]));
    }
}
