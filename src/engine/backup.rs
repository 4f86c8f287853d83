//! Backup: turn directory trees into a snapshot.
//!
//! A backup runs in three phases:
//!
//! 1. **Scan** (one thread): walk the sources in name order, record every
//!    entry's metadata, and compare each file with the parent snapshot (the
//!    newest one of the same paths and host). A file whose size, mtime, ctime
//!    and inode are unchanged reuses its recorded pieces and is not read.
//! 2. **Content** (a pipeline over all cores): readers read and chunk files
//!    that changed and hash each chunk; a chunk not yet in the repository goes
//!    to the sealers, which compress, encrypt, then decrypt, decompress and
//!    re-hash it (a fault in zstd or RAM is caught before anything is
//!    written); one writer appends sealed chunks to packs. Small files of one
//!    directory are read into one shared chunk, so they compress together.
//! 3. **Commit** (one thread): encode the trees bottom-up (unchanged
//!    directories encode to known ids and are not stored again), then write
//!    the index of the new packs, then the snapshot. A run that fails or is
//!    killed before the snapshot leaves only unreferenced packs.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::engine::chunker::Chunker;
use crate::engine::crypto::{Id, Keys, ObjectKind};
use crate::engine::fsmeta::{NameCache, data_regions, name_bytes, read_metadata};
use crate::engine::index::{Index, IndexFile};
use crate::engine::pack::{Checkpoints, PackUploader, PackWriter};
use crate::engine::repository::{KnownBlobs, PackFiles, Repository};
use crate::engine::snapshot::{Snapshot, Summary};
use crate::engine::tree::{Entry, EntryKind, FileContent, Metadata, Piece, Timespec, Tree};
use crate::error::{Error, IoContext, Result};

/// A path to back up, and where it appears inside the snapshot.
#[derive(Debug, Clone)]
pub struct BackupSource {
    pub local: PathBuf,
    /// Absolute path inside the snapshot; usually the same as `local`.
    pub at: PathBuf,
}

impl BackupSource {
    /// Back up `path` under its own absolute path.
    /// Back up `path` under its own absolute path (`.`, `..` and trailing
    /// slashes resolved lexically, symlinks left as they are).
    pub fn same_path(path: &Path) -> Result<BackupSource> {
        let abs = crate::fsutil::normalize(&std::path::absolute(path).at(path)?);
        Ok(BackupSource { local: abs.clone(), at: abs })
    }
}

/// Decides whether a path is left out of a backup.
pub type ExcludeFn = dyn Fn(&Path) -> bool + Send + Sync;

/// What else a backup needs to know.
pub struct BackupOptions {
    pub tags: Vec<String>,
    pub host: String,
    /// Reuse unchanged files from the newest snapshot of the same paths and host.
    pub use_parent: bool,
    pub threads: usize,
    pub exclude: Option<Box<ExcludeFn>>,
    /// Opaque data recorded in the snapshot (the job runner's metadata).
    pub extra: Option<serde_json::Value>,
    /// Set from elsewhere (a signal handler) to stop the backup early.
    pub cancel: Option<Arc<AtomicBool>>,
    /// How often packs uploaded so far are indexed while the backup runs.
    pub checkpoints: Checkpoints,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            tags: Vec::new(),
            host: crate::engine::running::hostname(),
            use_parent: true,
            threads: crate::engine::parallel::cpus(),
            exclude: None,
            extra: None,
            cancel: None,
            checkpoints: Checkpoints::default(),
        }
    }
}

/// The snapshot a backup committed.
#[derive(Debug, Clone)]
pub struct BackupResult {
    pub id: Id,
    pub snapshot: Snapshot,
}

/// Back up `sources` into `repo` as one snapshot.
pub fn backup(repo: &Repository, sources: &[BackupSource], opts: &BackupOptions) -> Result<BackupResult> {
    capture(repo, sources, opts)?.commit(repo, opts.extra.clone())
}

/// Everything of a snapshot but the snapshot itself: its data, trees and
/// index are durable; [`Capture::commit`] makes it exist. A capture that is
/// never committed leaves only unreferenced blobs.
#[derive(Debug)]
pub struct Capture {
    root: Id,
    paths: Vec<String>,
    parent: Option<Id>,
    host: String,
    tags: Vec<String>,
    summary: Summary,
    started: Instant,
    /// Registered as running until the snapshot is committed.
    _running: crate::engine::running::Running,
}

impl Capture {
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Write the snapshot, recording `extra` in it.
    pub fn commit(self, repo: &Repository, extra: Option<serde_json::Value>) -> Result<BackupResult> {
        let mut summary = self.summary;
        summary.duration_secs = self.started.elapsed().as_secs_f64();
        let snapshot = Snapshot {
            time: jiff::Timestamp::now(),
            host: self.host,
            tags: self.tags,
            paths: self.paths,
            root: self.root,
            parent: self.parent,
            summary,
            extra,
            repaired: None,
        };
        let id = repo.write_snapshot(&snapshot)?;
        Ok(BackupResult { id, snapshot })
    }
}

/// Read `sources` into `repo` (packs, trees, index) without committing.
pub fn capture(repo: &Repository, sources: &[BackupSource], opts: &BackupOptions) -> Result<Capture> {
    let started = Instant::now();
    if sources.is_empty() {
        return Err(Error::Invalid("nothing to back up: no paths given".into()));
    }
    for s in sources {
        if !s.at.is_absolute() {
            return Err(Error::Invalid(format!("{} is not an absolute path", s.at.display())));
        }
    }
    // A path given twice, or inside another given path, is backed up once.
    let mut sorted: Vec<&BackupSource> = sources.iter().collect();
    sorted.sort_by(|a, b| a.at.cmp(&b.at));
    let mut kept: Vec<&BackupSource> = Vec::new();
    for s in sorted {
        match kept.iter().find(|k| s.at.starts_with(&k.at)) {
            Some(k) if k.at == s.at && k.local != s.local => {
                return Err(Error::Invalid(format!(
                    "{} and {} would both be stored as {}",
                    k.local.display(),
                    s.local.display(),
                    s.at.display()
                )));
            }
            Some(k) if k.local == k.at && s.local == s.at => {}
            Some(k) => {
                return Err(Error::Invalid(format!("{} overlaps {}", s.at.display(), k.at.display())));
            }
            None => kept.push(s),
        }
    }
    let sources: Vec<BackupSource> = kept.into_iter().cloned().collect();
    let sources = &sources[..];
    let paths: Vec<String> = sources.iter().map(|s| s.at.to_string_lossy().into_owned()).collect();

    // Register first, then read marks and index: a prune deletes no pack
    // marked after this backup started until it has finished.
    let running = crate::engine::running::register_backup(repo)?;
    let marked: std::collections::HashSet<Id> = crate::engine::running::marked_packs(repo)?.into_keys().collect();
    let (index, _damaged) = repo.load_index()?;
    // Blobs are reused only from packs that are there, whole: a pack lost
    // or cut short since it was indexed makes its blobs stored again.
    let listed = repo.backend().list(crate::engine::backend::PACKS)?;
    let sizes: HashMap<Id, u64> = listed.iter().filter_map(|f| Some((Id::from_hex(&f.name)?, f.size))).collect();
    let unusable: std::collections::HashSet<Id> = index
        .packs()
        .iter()
        .filter(|(p, end)| sizes.get(*p).is_none_or(|size| size < *end))
        .map(|(p, _)| *p)
        .chain(marked.iter().copied())
        .collect();
    let mut index = index.without_packs(&unusable);
    let adopted = crate::engine::running::adopt_recent_leftovers(repo, &running, &index, &marked, &listed)?;
    index.add_file(&IndexFile { packs: adopted.clone() });
    let parent = if opts.use_parent { find_parent(repo, &paths, &opts.host)? } else { None };
    let mut parent_trees = ParentTrees::new(repo, &index, parent.as_ref().map(|(_, snap)| snap.root));
    let parent_root = parent.as_ref().and_then(|(_, snap)| parent_trees.get(&snap.root));

    // Phase 1: scan.
    let mut scan = Scanner {
        index: &index,
        parent_trees,
        names: NameCache::default(),
        files: Vec::new(),
        tasks: Vec::new(),
        hardlinks: HashMap::new(),
        small_limit: repo.config().chunker.min_size as u64,
        batch_target: repo.config().chunker.avg_size as u64,
        summary: Summary::default(),
        exclude: opts.exclude.as_deref(),
        cancel: opts.cancel.as_deref(),
    };
    let mut root = DirNode::synthetic();
    for s in sources {
        scan.add_source(&mut root, s, parent_root.as_ref())?;
    }

    // Phase 2: content.
    let known = Arc::new(KnownBlobs::new(index.blob_ids()));
    let files = std::mem::take(&mut scan.files);
    let tasks = std::mem::take(&mut scan.tasks);
    let mut summary = std::mem::take(&mut scan.summary);
    let uploader = PackUploader::start(repo.shared_backend(), repo.backend().parallelism(), opts.checkpoints);
    let content =
        read_contents(repo, &uploader, files, tasks, known.clone(), opts.threads.max(1), opts.cancel.as_deref())?;
    summary.bytes_read = content.bytes_read;
    summary.warnings.extend(content.warnings);
    for rec in content.files.iter().filter(|r| r.skipped) {
        summary.files -= 1;
        summary.bytes -= rec.entry.meta.size;
    }
    summary.skipped = content.skipped;
    // Anything not backed up as it was (unreadable, vanished, changed while
    // read) makes the snapshot incomplete: the run says so (exit code 3).
    summary.incomplete = !summary.warnings.is_empty();
    let mut stats = content.stats;

    // Phase 3: commit — trees, index, snapshot.
    let mut trees = TreeWriter { repo, uploader: &uploader, known: &known, pack: None, stats: &mut stats };
    let mut files = content.files;
    let root_id = trees.write_dir(root, &mut files)?;
    trees.finish()?;
    let mut new_packs = adopted;
    new_packs.extend(uploader.finish()?);
    if !new_packs.is_empty() {
        repo.write_index_file(&IndexFile { packs: new_packs })?;
    }
    summary.blobs_added = stats.blobs;
    summary.bytes_new = stats.raw_bytes;
    summary.bytes_added = stats.sealed_bytes;
    Ok(Capture {
        root: root_id,
        paths,
        parent: parent.map(|(id, _)| id),
        host: opts.host.clone(),
        tags: opts.tags.clone(),
        summary,
        started,
        _running: running,
    })
}

/// The newest snapshot of exactly these paths from this host.
fn find_parent(repo: &Repository, paths: &[String], host: &str) -> Result<Option<(Id, Snapshot)>> {
    let (snaps, _) = repo.snapshots()?;
    Ok(snaps.into_iter().rev().find(|(_, s)| s.host == host && s.paths == paths))
}

// ---------------------------------------------------------------- scan

/// A directory being assembled in memory.
struct DirNode {
    meta: Metadata,
    children: BTreeMap<Vec<u8>, Node>,
}

enum Node {
    Dir(DirNode),
    /// A file: an index into the file records.
    File(usize),
    Other(Entry),
}

impl DirNode {
    /// A directory that exists only inside the snapshot (a mount point for a
    /// source stored under another path, or the root). Fixed metadata keeps
    /// its encoding, and so its id, the same from run to run.
    fn synthetic() -> DirNode {
        DirNode {
            meta: Metadata {
                mode: 0o755,
                uid: 0,
                gid: 0,
                user: None,
                group: None,
                mtime: Timespec { secs: 0, nanos: 0 },
                ctime: Timespec { secs: 0, nanos: 0 },
                inode: 0,
                size: 0,
                xattrs: Vec::new(),
            },
            children: BTreeMap::new(),
        }
    }
}

/// A file's entry and how its content is obtained.
struct FileRecord {
    path: PathBuf,
    entry: Entry,
    /// The device the scan saw it on (with `entry.meta.inode`: which file
    /// the reader must find when it opens the path).
    dev: u64,
    /// Index of an earlier record of the same inode (a hard link).
    same_as: Option<usize>,
    /// It could not be read (vanished, unreadable, replaced since the
    /// scan): left out of the snapshot, which is then incomplete.
    skipped: bool,
}

/// A unit of reading for the content phase.
enum Task {
    /// One file, chunked on its own.
    Large(usize),
    /// Small files of one directory, read into one shared chunk.
    Batch(Vec<usize>),
}

struct Scanner<'a> {
    index: &'a Index,
    parent_trees: ParentTrees<'a>,
    names: NameCache,
    files: Vec<FileRecord>,
    tasks: Vec<(u64, Task)>,
    hardlinks: HashMap<(u64, u64), (u64, usize)>,
    small_limit: u64,
    batch_target: u64,
    summary: Summary,
    exclude: Option<&'a ExcludeFn>,
    cancel: Option<&'a AtomicBool>,
}

/// The parent snapshot's trees, which tell the scan which files are
/// unchanged. From a bucket they are all fetched before the scan, a
/// directory level at a time (one round trip per level rather than one per
/// tree pack); each is handed out as often as the parent refers to it, then
/// dropped. From a local repository, and for any tree that could not be
/// fetched, the scan reads them as it reaches them. A tree that cannot be
/// read at all means no parent there: those files are read in full.
struct ParentTrees<'a> {
    repo: &'a Repository,
    index: &'a Index,
    packs: PackFiles,
    /// Fetched tree and how many more times the parent refers to it.
    fetched: HashMap<Id, (Tree, usize)>,
}

impl<'a> ParentTrees<'a> {
    fn new(repo: &'a Repository, index: &'a Index, root: Option<Id>) -> Self {
        let mut fetched = HashMap::new();
        if let Some(root) = root
            && repo.backend().is_remote()
        {
            let mut uses: HashMap<Id, usize> = HashMap::from([(root, 1)]);
            // A tree that cannot be fetched is left out (nor are its subtrees
            // fetched); the visit itself never fails.
            let _ = repo.walk_trees_tolerant(index, vec![(root, ())], |id, tree, ()| {
                let mut subtrees = Vec::new();
                let Ok(tree) = tree else { return Ok(subtrees) };
                for entry in &tree.entries {
                    if let EntryKind::Dir { tree: sub } = entry.kind {
                        let n = uses.entry(sub).or_default();
                        *n += 1;
                        if *n == 1 {
                            subtrees.push((sub, ()));
                        }
                    }
                }
                fetched.insert(*id, (tree.clone(), 0));
                Ok(subtrees)
            });
            for (id, (_, left)) in fetched.iter_mut() {
                *left = uses.get(id).copied().unwrap_or(1);
            }
        }
        ParentTrees { repo, index, packs: PackFiles::default(), fetched }
    }

    fn get(&mut self, id: &Id) -> Option<Tree> {
        match self.fetched.get_mut(id) {
            Some((tree, left)) if *left > 1 => {
                *left -= 1;
                Some(tree.clone())
            }
            Some(_) => self.fetched.remove(id).map(|(tree, _)| tree),
            None => self.repo.load_tree(self.index, id, &mut self.packs).ok(),
        }
    }
}

impl Scanner<'_> {
    fn add_source(&mut self, root: &mut DirNode, source: &BackupSource, parent_root: Option<&Tree>) -> Result<()> {
        let md = std::fs::symlink_metadata(&source.local).at(&source.local)?;
        let components: Vec<Vec<u8>> = source
            .at
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(name_bytes(n)),
                _ => None,
            })
            .collect();
        let Some((last, ancestors)) = components.split_last() else {
            return Err(Error::Invalid(format!("cannot back up {} as the root itself", source.at.display())));
        };
        let same_path = source.at == source.local;
        let mut dir = root;
        let mut parent_tree = parent_root.cloned();
        let mut real = PathBuf::from("/");
        for name in ancestors {
            real.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
            let meta = if same_path {
                let md = std::fs::symlink_metadata(&real).at(&real)?;
                read_metadata(&real, &md, None, &mut self.names)
            } else {
                DirNode::synthetic().meta
            };
            parent_tree = self.child_tree(parent_tree.as_ref(), name);
            let node = dir
                .children
                .entry(name.clone())
                .or_insert_with(|| Node::Dir(DirNode { meta, children: BTreeMap::new() }));
            dir = match node {
                Node::Dir(d) => d,
                _ => {
                    return Err(Error::Invalid(format!("{} overlaps another source", source.at.display())));
                }
            };
        }
        let parent_entry = parent_tree.as_ref().and_then(|t| t.find(last)).cloned();
        let mut batch = Batch::default();
        if let Some(node) = self.scan_entry(&source.local, last.clone(), &md, parent_entry.as_ref(), &mut batch)? {
            dir.children.insert(last.clone(), node);
        }
        self.flush_batch(&mut batch);
        Ok(())
    }

    /// Child tree `name` of `tree`, when it is a directory there.
    fn child_tree(&mut self, tree: Option<&Tree>, name: &[u8]) -> Option<Tree> {
        match &tree?.find(name)?.kind {
            EntryKind::Dir { tree } => self.parent_trees.get(tree),
            _ => None,
        }
    }

    fn scan_dir(&mut self, path: &Path, meta: Metadata, parent: Option<&Tree>) -> Result<DirNode> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let mut node = DirNode { meta, children: BTreeMap::new() };
        let mut names: Vec<(Vec<u8>, PathBuf)> = Vec::new();
        match std::fs::read_dir(path) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => names.push((name_bytes(&e.file_name()), e.path())),
                        Err(e) => self.warn(path, &e),
                    }
                }
            }
            Err(e) => {
                self.warn(path, &e);
                return Ok(node);
            }
        }
        names.sort();
        let mut batch = Batch::default();
        for (name, child) in names {
            if self.exclude.is_some_and(|ex| ex(&child)) {
                continue;
            }
            let md = match std::fs::symlink_metadata(&child) {
                Ok(md) => md,
                Err(e) => {
                    self.warn(&child, &e);
                    continue;
                }
            };
            let prev = parent.and_then(|t| t.find(&name));
            if let Some(n) = self.scan_entry(&child, name.clone(), &md, prev, &mut batch)? {
                node.children.insert(name, n);
            }
        }
        self.flush_batch(&mut batch);
        Ok(node)
    }

    fn scan_entry(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        md: &std::fs::Metadata,
        prev: Option<&Entry>,
        batch: &mut Batch,
    ) -> Result<Option<Node>> {
        let meta = read_metadata(path, md, prev.map(|e| &e.meta), &mut self.names);
        let ft = md.file_type();
        let other = |kind| Some(Node::Other(Entry { name: name.clone(), kind, meta: meta.clone() }));
        if ft.is_dir() {
            self.summary.dirs += 1;
            let prev_tree = match prev.map(|e| &e.kind) {
                Some(EntryKind::Dir { tree }) => self.parent_trees.get(tree),
                _ => None,
            };
            return Ok(Some(Node::Dir(self.scan_dir(path, meta, prev_tree.as_ref())?)));
        }
        if ft.is_file() {
            return Ok(Some(Node::File(self.add_file(path, name, meta, md, prev, batch))));
        }
        self.summary.other += 1;
        Ok(if ft.is_symlink() {
            match std::fs::read_link(path) {
                Ok(t) => other(EntryKind::Symlink { target: name_bytes(t.as_os_str()) }),
                Err(e) => {
                    self.warn(path, &e);
                    None
                }
            }
        } else if ft.is_fifo() {
            other(EntryKind::Fifo)
        } else if ft.is_char_device() {
            other(EntryKind::CharDevice { rdev: md.rdev() })
        } else if ft.is_block_device() {
            other(EntryKind::BlockDevice { rdev: md.rdev() })
        } else {
            other(EntryKind::Socket)
        })
    }

    fn add_file(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        meta: Metadata,
        md: &std::fs::Metadata,
        prev: Option<&Entry>,
        batch: &mut Batch,
    ) -> usize {
        self.summary.files += 1;
        self.summary.bytes += md.len();
        let idx = self.files.len();
        let mut content = FileContent::default();
        let mut same_as = None;
        if md.nlink() > 1 {
            let next_group = self.hardlinks.len() as u64;
            let (group, first) = *self.hardlinks.entry((md.dev(), md.ino())).or_insert((next_group, idx));
            content.hardlink = Some(group);
            if first != idx {
                same_as = Some(first);
            }
        }
        let unchanged = match prev {
            Some(Entry { kind: EntryKind::File(old), meta: old_meta, .. }) => {
                !old.changed_while_read
                    && old_meta.size == meta.size
                    && old_meta.mtime == meta.mtime
                    && old_meta.ctime == meta.ctime
                    && old_meta.inode == meta.inode
                    && old.pieces.iter().all(|p| p.chunk().is_none_or(|id| self.index.contains(id)))
            }
            _ => false,
        };
        if unchanged && let Some(EntryKind::File(old)) = prev.map(|e| &e.kind) {
            content.pieces = old.pieces.clone();
            self.summary.files_unchanged += 1;
        }
        let needs_read = !unchanged && same_as.is_none() && meta.size > 0;
        let size = meta.size;
        self.files.push(FileRecord {
            path: path.to_path_buf(),
            entry: Entry { name, kind: EntryKind::File(content), meta },
            dev: md.dev(),
            same_as,
            skipped: false,
        });
        if needs_read {
            if size < self.small_limit {
                batch.files.push(idx);
                batch.bytes += size;
                if batch.bytes >= self.batch_target {
                    self.flush_batch(batch);
                }
            } else {
                self.tasks.push((size, Task::Large(idx)));
            }
        }
        idx
    }

    fn flush_batch(&mut self, batch: &mut Batch) {
        if !batch.files.is_empty() {
            let b = std::mem::take(batch);
            self.tasks.push((b.bytes, Task::Batch(b.files)));
        }
    }

    fn warn(&mut self, path: &Path, e: &dyn std::fmt::Display) {
        self.summary.warnings.push(format!("{}: {e}", path.display()));
    }
}

#[derive(Default)]
struct Batch {
    files: Vec<usize>,
    bytes: u64,
}

// ---------------------------------------------------------------- content

/// Figures about blobs written by this run.
#[derive(Default)]
struct BlobStats {
    blobs: u64,
    raw_bytes: u64,
    sealed_bytes: u64,
}

struct ContentResult {
    files: Vec<FileRecord>,
    bytes_read: u64,
    warnings: Vec<String>,
    /// Files left out of the snapshot (could not be read).
    skipped: Vec<String>,
    stats: BlobStats,
}

/// A chunk on its way to be sealed and stored.
struct PlainBlob {
    id: Id,
    data: Vec<u8>,
}

struct SealedBlob {
    id: Id,
    sealed: Vec<u8>,
    raw_len: usize,
}

/// The first error of any pipeline thread; the others stop when it is set.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Failure {
    fn set(&self, e: Error) {
        if let Ok(mut f) = self.first.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    fn is_set(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
    fn take(&self) -> Option<Error> {
        self.first.lock().ok().and_then(|mut f| f.take())
    }
}

fn read_contents(
    repo: &Repository,
    uploader: &PackUploader,
    mut files: Vec<FileRecord>,
    mut tasks: Vec<(u64, Task)>,
    known: Arc<KnownBlobs>,
    threads: usize,
    cancel: Option<&AtomicBool>,
) -> Result<ContentResult> {
    // Largest first, so one big file does not run alone at the end.
    tasks.sort_by_key(|t| std::cmp::Reverse(t.0));
    let queue = Mutex::new(tasks.into_iter().map(|(_, t)| t));
    let failure = Failure::default();
    let chunker = repo.chunker();
    let keys = repo.keys().clone();
    let level = repo.config().compression_level;
    let pack_size = repo.config().pack_size as u64;
    let (plain_tx, plain_rx) = sync_channel::<PlainBlob>(threads * 2);
    let (sealed_tx, sealed_rx) = sync_channel::<SealedBlob>(threads * 2);
    let plain_rx = Mutex::new(plain_rx);
    let files_ref = &files;

    let (outcomes, stats) = std::thread::scope(|s| {
        let writer = s.spawn(|| write_packs(repo, uploader, sealed_rx, pack_size, &failure));
        let mut sealers = Vec::new();
        for _ in 0..threads {
            let tx = sealed_tx.clone();
            let (keys, rx, failure) = (&keys, &plain_rx, &failure);
            sealers.push(s.spawn(move || seal_blobs(keys, level, rx, tx, failure)));
        }
        drop(sealed_tx);
        let mut readers = Vec::new();
        for _ in 0..threads {
            let tx = plain_tx.clone();
            let (queue, chunker, keys, known, failure) = (&queue, &chunker, &keys, &known, &failure);
            readers.push(s.spawn(move || {
                let mut reader = FileReader { chunker, keys, known, tx, buf: Vec::new(), cancel };
                let mut out = Vec::new();
                loop {
                    let task = match queue.lock() {
                        Ok(mut q) => q.next(),
                        Err(_) => None,
                    };
                    let Some(task) = task else { break };
                    if failure.is_set() {
                        break;
                    }
                    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        failure.set(Error::Interrupted);
                        break;
                    }
                    match reader.run(task, files_ref) {
                        Ok(mut o) => out.append(&mut o),
                        Err(e) => failure.set(e),
                    }
                }
                out
            }));
        }
        drop(plain_tx);
        let mut outcomes = Vec::new();
        for r in readers {
            match r.join() {
                Ok(mut o) => outcomes.append(&mut o),
                Err(_) => failure.set(Error::Invalid("a reader thread panicked".into())),
            }
        }
        for h in sealers {
            if h.join().is_err() {
                failure.set(Error::Invalid("a sealer thread panicked".into()));
            }
        }
        let stats = match writer.join() {
            Ok(r) => r,
            Err(_) => {
                failure.set(Error::Invalid("the pack writer panicked".into()));
                BlobStats::default()
            }
        };
        (outcomes, stats)
    });
    if let Some(e) = failure.take() {
        return Err(e);
    }
    let mut bytes_read = 0;
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    for o in outcomes {
        bytes_read += o.bytes_read;
        let rec = &mut files[o.file];
        if let Some(why) = o.skipped {
            rec.skipped = true;
            warnings.push(format!("{}: {why}; not backed up (left out of the snapshot)", rec.path.display()));
            skipped.push(rec.path.display().to_string());
            continue;
        }
        if let EntryKind::File(c) = &mut rec.entry.kind {
            c.pieces = o.pieces;
            c.changed_while_read = o.changed;
        }
        rec.entry.meta.size = o.size;
        if o.changed {
            warnings.push(format!("{}: changed while it was read; stored as read and marked", rec.path.display()));
        }
    }
    // Hard links share the content of the first link read (and its fate).
    for i in 0..files.len() {
        if let Some(first) = files[i].same_as {
            if files[first].skipped {
                files[i].skipped = true;
                skipped.push(files[i].path.display().to_string());
                continue;
            }
            let (kind, size) = (files[first].entry.kind.clone(), files[first].entry.meta.size);
            if let (EntryKind::File(src), EntryKind::File(dst)) = (kind, &mut files[i].entry.kind) {
                dst.pieces = src.pieces;
                dst.changed_while_read = src.changed_while_read;
                files[i].entry.meta.size = size;
            }
        }
    }
    Ok(ContentResult { files, bytes_read, warnings, skipped, stats })
}

/// What reading one file produced.
#[derive(Default)]
struct FileOutcome {
    file: usize,
    pieces: Vec<Piece>,
    size: u64,
    bytes_read: u64,
    changed: bool,
    /// Why it could not be read (it is left out of the snapshot).
    skipped: Option<String>,
}

struct FileReader<'a> {
    chunker: &'a Chunker,
    keys: &'a Keys,
    known: &'a KnownBlobs,
    tx: SyncSender<PlainBlob>,
    buf: Vec<u8>,
    cancel: Option<&'a AtomicBool>,
}

impl FileReader<'_> {
    fn run(&mut self, task: Task, files: &[FileRecord]) -> Result<Vec<FileOutcome>> {
        match task {
            Task::Large(i) => Ok(vec![self.read_large(i, &files[i])?]),
            Task::Batch(list) => self.read_batch(&list, files),
        }
    }

    /// Hand a chunk to the sealers if no one stored it yet.
    fn store(&self, id: Id, data: &[u8]) -> Result<()> {
        if self.known.claim(id) {
            self.tx
                .send(PlainBlob { id, data: data.to_vec() })
                .map_err(|_| Error::Invalid("backup pipeline stopped".into()))?;
        }
        Ok(())
    }

    fn read_large(&mut self, idx: usize, rec: &FileRecord) -> Result<FileOutcome> {
        let mut out = FileOutcome { file: idx, ..Default::default() };
        let (mut file, before) = match open_for_backup(rec) {
            Ok(f) => f,
            Err(e) => {
                out.skipped = Some(e.to_string());
                return Ok(out);
            }
        };
        let regions = data_regions(&file, &before);
        let sparse = regions.is_some();
        let mut pos = 0u64;
        let mut pieces = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let this = &*self;
        let mut chunk_region =
            |file: &mut File, start: u64, len: Option<u64>, pieces: &mut Vec<Piece>| -> Result<u64> {
                if start > pos {
                    pieces.push(Piece::Hole { len: start - pos });
                }
                file.seek(SeekFrom::Start(start)).at(&rec.path)?;
                let reader: Box<dyn Read> = match len {
                    Some(l) => Box::new(Read::by_ref(file).take(l)),
                    None => Box::new(Read::by_ref(file)),
                };
                let n = this.chunker.chunk_stream(reader, &mut buf, |chunk| -> Result<()> {
                    if this.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        return Err(Error::Interrupted);
                    }
                    let id = this.keys.blob_id(chunk);
                    pieces.push(Piece::Chunk { id, len: chunk.len() as u32 });
                    this.store(id, chunk)
                })?;
                pos = start + n;
                Ok(n)
            };
        let mut read = 0;
        let result = match regions {
            Some(regions) => regions.into_iter().try_for_each(|(start, end)| {
                read += chunk_region(&mut file, start, Some(end - start), &mut pieces)?;
                Ok(())
            }),
            None => chunk_region(&mut file, 0, None, &mut pieces).map(|n| read += n),
        };
        self.buf = buf;
        match result {
            Ok(()) => {}
            // A file that cannot be read to its end (an I/O error, a file
            // system that went away) is left out; the backup goes on.
            Err(Error::Io { error, .. }) => {
                out.skipped = Some(format!("reading failed: {error}"));
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        if sparse && before.len() > pos {
            pieces.push(Piece::Hole { len: before.len() - pos });
            pos = before.len();
        }
        let after = file.metadata().at(&rec.path)?;
        out.changed = changed(&before, &after) || pos != before.len();
        out.pieces = pieces;
        out.size = pos;
        out.bytes_read = read;
        Ok(out)
    }

    fn read_batch(&mut self, list: &[usize], files: &[FileRecord]) -> Result<Vec<FileOutcome>> {
        let mut data: Vec<u8> = Vec::new();
        let mut outs = Vec::new();
        let limit = self.chunker.params().max_size as u64;
        for &idx in list {
            let rec = &files[idx];
            let mut out = FileOutcome { file: idx, ..Default::default() };
            match open_for_backup(rec) {
                Ok((file, before)) => {
                    let start = data.len();
                    match (&file).take(limit).read_to_end(&mut data) {
                        Ok(_) => {
                            let after = file.metadata();
                            let len = (data.len() - start) as u64;
                            out.size = len;
                            out.bytes_read = len;
                            out.changed = after.map_or(true, |a| changed(&before, &a)) || len != before.len();
                            out.pieces = vec![Piece::Slice { id: Id::ZERO, offset: start as u32, len: len as u32 }];
                        }
                        Err(e) => {
                            data.truncate(start);
                            out.skipped = Some(format!("reading failed: {e}"));
                        }
                    }
                }
                Err(e) => out.skipped = Some(e.to_string()),
            }
            outs.push(out);
        }
        let id = self.keys.blob_id(&data);
        for o in &mut outs {
            for p in &mut o.pieces {
                if let Piece::Slice { id: slot, len, .. } = p {
                    if *len == 0 {
                        o.pieces.clear();
                        break;
                    }
                    *slot = id;
                }
            }
        }
        if !data.is_empty() {
            self.store(id, &data)?;
        }
        Ok(outs)
    }
}

/// Open a file for reading, safely whatever it became since the scan:
/// `O_NOFOLLOW` (a symlink swapped in is not followed), `O_NONBLOCK` and
/// `O_NOCTTY` (a FIFO or terminal swapped in neither blocks the backup nor
/// becomes its terminal), `O_NOATIME` where the kernel allows it; then the
/// open file must be the regular file the scan saw (same device and inode).
fn open_for_backup(rec: &FileRecord) -> std::io::Result<(File, std::fs::Metadata)> {
    use nix::libc::{O_NOATIME, O_NOCTTY, O_NOFOLLOW, O_NONBLOCK};
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(&rec.path);
    let base = O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
    let file = match open(base | O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(base),
        other => other,
    }
    .map_err(|e| match e.raw_os_error() {
        Some(nix::libc::ELOOP) => std::io::Error::other("replaced by a symlink since it was scanned"),
        Some(nix::libc::ENOENT) => std::io::Error::other("vanished since it was scanned"),
        _ => e,
    })?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other("replaced by something that is not a regular file since it was scanned"));
    }
    if md.dev() != rec.dev || md.ino() != rec.entry.meta.inode {
        return Err(std::io::Error::other("replaced by another file since it was scanned"));
    }
    Ok((file, md))
}

fn changed(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    before.len() != after.len()
        || before.mtime() != after.mtime()
        || before.mtime_nsec() != after.mtime_nsec()
        || before.ctime() != after.ctime()
        || before.ctime_nsec() != after.ctime_nsec()
}

/// Seal chunks: compress, encrypt, and prove the result opens to the same
/// bytes before it is passed on to be written.
fn seal_blobs(keys: &Keys, level: i32, rx: &Mutex<Receiver<PlainBlob>>, tx: SyncSender<SealedBlob>, failure: &Failure) {
    loop {
        let blob = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(blob) = blob else { return };
        if failure.is_set() {
            continue; // drain so readers are not blocked
        }
        match seal_verified(keys, ObjectKind::Chunk, &blob.id, &blob.data, level) {
            Ok(sealed) => {
                if tx.send(SealedBlob { id: blob.id, sealed, raw_len: blob.data.len() }).is_err() {
                    return;
                }
            }
            Err(e) => failure.set(e),
        }
    }
}

/// Seal `data` and check that it opens again to data with the same id.
fn seal_verified(keys: &Keys, kind: ObjectKind, id: &Id, data: &[u8], level: i32) -> Result<Vec<u8>> {
    let sealed = keys.seal(kind, id, data, level)?;
    let back = keys.open(kind, id, &sealed)?;
    if keys.blob_id(&back) != *id {
        return Err(Error::damaged(
            format!("{kind:?} {}", id.short()),
            "sealed blob did not read back identically (memory or compressor fault); nothing was written",
        ));
    }
    Ok(sealed)
}

fn write_packs(
    repo: &Repository,
    uploader: &PackUploader,
    rx: Receiver<SealedBlob>,
    pack_size: u64,
    failure: &Failure,
) -> BlobStats {
    let mut stats = BlobStats::default();
    let mut current = PackWriter::for_size(pack_size);
    let mut run = || -> Result<()> {
        for blob in rx.iter() {
            if failure.is_set() {
                continue;
            }
            current.add(blob.id, ObjectKind::Chunk, &blob.sealed, blob.raw_len);
            stats.blobs += 1;
            stats.raw_bytes += blob.raw_len as u64;
            stats.sealed_bytes += blob.sealed.len() as u64;
            if current.size() >= pack_size {
                ship(repo, uploader, std::mem::replace(&mut current, PackWriter::for_size(pack_size)))?;
            }
        }
        if !failure.is_set() && !current.is_empty() {
            ship(repo, uploader, std::mem::take(&mut current))?;
        }
        Ok(())
    };
    if let Err(e) = run() {
        failure.set(e);
        for _ in rx.iter() {}
    }
    stats
}

/// Finish a pack, hand it to the uploader, and write a checkpoint index
/// when one is due.
pub(crate) fn ship(repo: &Repository, uploader: &PackUploader, pack: PackWriter) -> Result<()> {
    uploader.submit(pack.finish(repo.keys())?)?;
    if let Some(packs) = uploader.checkpoint() {
        repo.write_index_file(&IndexFile { packs })?;
    }
    Ok(())
}

// ---------------------------------------------------------------- commit

/// Encodes directories bottom-up and stores the trees not yet stored.
struct TreeWriter<'a> {
    repo: &'a Repository,
    uploader: &'a PackUploader,
    known: &'a KnownBlobs,
    pack: Option<PackWriter>,
    stats: &'a mut BlobStats,
}

impl TreeWriter<'_> {
    fn write_dir(&mut self, dir: DirNode, files: &mut [FileRecord]) -> Result<Id> {
        let mut entries = Vec::with_capacity(dir.children.len());
        for (name, node) in dir.children {
            entries.push(match node {
                Node::Dir(d) => {
                    let meta = d.meta.clone();
                    Entry { name, kind: EntryKind::Dir { tree: self.write_dir(d, files)? }, meta }
                }
                Node::File(i) if files[i].skipped => continue,
                Node::File(i) => {
                    let mut e = files[i].entry.clone();
                    e.name = name;
                    e
                }
                Node::Other(e) => e,
            });
        }
        let bytes = Tree { entries }.encode();
        let keys = self.repo.keys();
        let id = keys.blob_id(&bytes);
        if self.known.claim(id) {
            let sealed = seal_verified(keys, ObjectKind::Tree, &id, &bytes, self.repo.config().compression_level)?;
            let w = self.pack.get_or_insert_with(PackWriter::new);
            w.add(id, ObjectKind::Tree, &sealed, bytes.len());
            self.stats.blobs += 1;
            self.stats.raw_bytes += bytes.len() as u64;
            self.stats.sealed_bytes += sealed.len() as u64;
            if w.size() >= self.repo.config().pack_size as u64
                && let Some(w) = self.pack.take()
            {
                ship(self.repo, self.uploader, w)?;
            }
        }
        Ok(id)
    }

    fn finish(mut self) -> Result<()> {
        match self.pack.take() {
            Some(w) => ship(self.repo, self.uploader, w),
            None => Ok(()),
        }
    }
}
