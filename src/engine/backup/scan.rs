//! The scan of a backup, which is also where trees are written.
//!
//! One thread walks the sources depth first in name order (the directories
//! it enters next are listed ahead by [`super::listahead`]), reads every
//! entry's metadata and compares each file with the parent snapshot's entry
//! (size, mtime, ctime, inode): an unchanged file keeps its pieces and is
//! not opened; a changed one goes to the content pipeline. A directory is
//! *open* while its entries are not all known; when its scan is done and
//! its last file has come back from the readers, its tree is written and
//! the directory is forgotten. What is held is the path being walked plus
//! the directories waiting for files in flight — not the whole tree — so
//! memory does not grow with the number of files. The parent snapshot is
//! walked in step: only the parent's trees along the current path are held.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::content::{BlobStats, Failure, Feed, FileJob, FileOutcome, Task, ship, stopped};
use super::listahead::{ListAhead, Listed, Listing, list_one};
use crate::engine::crypto::{Id, ObjectKind};
use crate::engine::fsmeta::{NODUMP_FLAG, NameCache, Stat, name_bytes, read_metadata};
use crate::engine::index::Index;
use crate::engine::pack::{PackUploader, PackWriter};
use crate::engine::progress::Progress;
use crate::engine::repository::{KnownBlobs, PackFiles, Repository};
use crate::engine::select::{Contents, NODUMP_REASON, Selector};
use crate::engine::snapshot::Summary;
use crate::engine::tree::{Entry, EntryKind, FileContent, Piece, Tree};
use crate::error::{Error, Result};

/// Where a scanned entry goes once it is known: a place in an open
/// directory, or the entry of a source itself.
#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    InDir(usize, usize),
    Source(usize),
}

/// A directory whose tree is written when its scan is done and no entry
/// in it is still waiting.
struct OpenDir {
    name: Vec<u8>,
    meta: crate::engine::tree::Metadata,
    slot: Slot,
    /// In name order; `None` while waiting, or for an entry left out.
    entries: Vec<Option<Entry>>,
    waiting: usize,
    scanned: bool,
}

/// A hard-linked inode: the first link is read, the others take its
/// content.
struct Link {
    group: u64,
    state: LinkState,
}

/// Content of a read file: pieces, size, changed while read.
type Content = (Vec<Piece>, u64, bool);

enum LinkState {
    /// The first link is being read; these links wait (slot, path, size).
    Reading(Vec<(Slot, PathBuf, u64)>),
    /// Known (`None`: the first link could not be read).
    Known(Option<Content>),
}

/// Small files of one directory gathered into one task.
#[derive(Default)]
struct Batch {
    jobs: Vec<FileJob>,
    bytes: u64,
}

/// What the scan found, once every file has been read.
pub(super) struct Scanned<'a> {
    pub summary: Summary,
    /// Each source's entry (`None`: it could not be read).
    pub sources: Vec<Option<Entry>>,
    /// Every scanned directory's tree is written; the writer is handed back
    /// for the directories above the sources.
    pub trees: TreeWriter<'a>,
}

pub(super) struct Scanner<'a, 'f> {
    index: &'a Index,
    ahead: &'f ListAhead<'a>,
    parent_trees: ParentTrees<'a>,
    names: NameCache,
    trees: TreeWriter<'a>,
    feed: Feed,
    failure: &'f Failure,
    dirs: HashMap<usize, OpenDir>,
    next_dir: usize,
    links: HashMap<(u64, u64), Link>,
    sources: Vec<Option<Entry>>,
    small_limit: u64,
    batch_target: u64,
    summary: Summary,
    select: Selector<'a>,
    /// The device of the source being scanned (`one_file_system`).
    source_dev: u64,
    progress: Option<&'a Progress>,
    cancel: Option<&'a AtomicBool>,
    /// Entries stored beforehand (streamed dumps), by the directory they
    /// go in, sorted by name.
    injected: HashMap<PathBuf, Vec<Entry>>,
}

/// What the scan is told.
pub(super) struct ScanSettings<'a> {
    pub index: &'a Index,
    pub parent_trees: ParentTrees<'a>,
    pub sources: usize,
    pub select: Selector<'a>,
    pub progress: Option<&'a Progress>,
    pub cancel: Option<&'a AtomicBool>,
    /// Entries already stored, by the local directory they are added to.
    pub injected: HashMap<PathBuf, Vec<Entry>>,
}

impl<'a, 'f> Scanner<'a, 'f> {
    pub fn new(
        repo: &Repository,
        settings: ScanSettings<'a>,
        trees: TreeWriter<'a>,
        feed: Feed,
        failure: &'f Failure,
        ahead: &'f ListAhead<'a>,
    ) -> Scanner<'a, 'f> {
        Scanner {
            index: settings.index,
            ahead,
            parent_trees: settings.parent_trees,
            names: NameCache::default(),
            trees,
            feed,
            failure,
            dirs: HashMap::new(),
            next_dir: 0,
            links: HashMap::new(),
            sources: vec![None; settings.sources],
            small_limit: repo.config().chunker.min_size as u64,
            batch_target: repo.config().chunker.avg_size as u64,
            summary: Summary::default(),
            select: settings.select,
            source_dev: 0,
            progress: settings.progress,
            cancel: settings.cancel,
            injected: settings.injected,
        }
    }

    /// Scan source number `i`, stored under `name` (its last component);
    /// `prev` is its entry in the parent snapshot. `within`: the file
    /// system it counts as on (an entry of `/` is within `/`'s; else its own).
    pub fn scan_source(
        &mut self,
        i: usize,
        local: &Path,
        name: Vec<u8>,
        prev: Option<&Entry>,
        within: Option<u64>,
    ) -> Result<()> {
        let md = Stat::of_path(local).map_err(|e| Error::io(local, e))?;
        self.source_dev = within.unwrap_or(md.dev);
        let mut batch = Batch::default();
        self.scan_entry(local, None, name, &md, self.source_dev, prev, Slot::Source(i), &mut batch)?;
        self.flush_batch(&mut batch)
    }

    /// Wait for every file still being read; then every tree is written.
    pub fn finish(mut self) -> Result<Scanned<'a>> {
        self.feed.close();
        if let Some(p) = self.progress {
            p.total_known();
        }
        while let Some(o) = self.feed.wait() {
            self.take_outcome(o)?;
        }
        if !self.dirs.is_empty() && !self.failure.is_set() {
            return Err(Error::Invalid(format!("{} directories were never completed (a bug)", self.dirs.len())));
        }
        if let Some(dir) = self.injected.keys().next() {
            return Err(Error::Invalid(format!(
                "{} was not backed up, so a stored file had no place in it",
                dir.display()
            )));
        }
        Ok(Scanned { summary: self.summary, sources: self.sources, trees: self.trees })
    }

    /// Scan one entry, in a directory on device `parent_dev`.
    #[allow(clippy::too_many_arguments)]
    fn scan_entry(
        &mut self,
        path: &Path,
        dir: Option<BorrowedFd>,
        name: Vec<u8>,
        md: &Stat,
        parent_dev: u64,
        prev: Option<&Entry>,
        slot: Slot,
        batch: &mut Batch,
    ) -> Result<()> {
        let meta = read_metadata(path, dir, md, prev.map(|e| &e.meta), &mut self.names);
        if self.select.selection.exclude_nodump && meta.flags & NODUMP_FLAG != 0 && !matches!(slot, Slot::Source(_)) {
            self.summary.left_out.push(format!("{}: {NODUMP_REASON}", path.display()));
            if md.is_dir() {
                self.ahead.forget(path);
            }
            return self.settle(slot, None);
        }
        if md.is_dir() {
            self.summary.dirs += 1;
            let (contents, why) = self.select.contents(path, md, parent_dev, self.source_dev);
            if contents != Contents::All {
                self.summary.left_out.push(format!("{}: {why}", path.display()));
            }
            let prev_tree = match prev.map(|e| &e.kind) {
                Some(EntryKind::Dir { tree }) => self.parent_trees.get(tree),
                _ => None,
            };
            return self.scan_dir(path, OpenDir::new(name, meta, slot), md.dev, contents, prev_tree.as_ref());
        }
        if md.is_file() {
            return self.add_file(
                path,
                Entry { name, kind: EntryKind::File(FileContent::default()), meta },
                md,
                prev,
                slot,
                batch,
            );
        }
        self.summary.other += 1;
        let kind = if md.is_symlink() {
            match std::fs::read_link(path) {
                Ok(t) => EntryKind::Symlink { target: name_bytes(t.as_os_str()) },
                Err(e) => {
                    self.warn(path, &e);
                    return self.settle(slot, None);
                }
            }
        } else if md.is_fifo() {
            EntryKind::Fifo
        } else if md.is_char_device() {
            EntryKind::CharDevice { rdev: md.rdev }
        } else if md.is_block_device() {
            EntryKind::BlockDevice { rdev: md.rdev }
        } else {
            EntryKind::Socket
        };
        self.settle(slot, Some(Entry { name, kind, meta }))
    }

    /// Scan directory `path` (on device `dev`), as much of it as
    /// `contents` says.
    fn scan_dir(
        &mut self,
        path: &Path,
        dir: OpenDir,
        dev: u64,
        contents: Contents,
        parent: Option<&Tree>,
    ) -> Result<()> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        if self.failure.is_set() {
            return Err(stopped());
        }
        let key = self.next_dir;
        self.next_dir += 1;
        self.dirs.insert(key, dir);
        if let Some(p) = self.progress {
            p.at(path);
        }
        let selection = self.select.selection;
        let exclude = &selection.exclude;
        let listing = match contents {
            Contents::All => self.ahead.take(path),
            Contents::Only(name) => {
                self.ahead.forget(path);
                list_one(path, &name, exclude)
            }
            Contents::Nothing => {
                self.ahead.forget(path);
                Listing::default()
            }
        };
        // Unreadable: stored as what could be read (empty), with a warning.
        if let Some(e) = &listing.error {
            self.warn(path, e);
        }
        // The subdirectories this walk will enter, listed ahead of it.
        self.ahead.want(
            listing
                .entries
                .iter()
                .filter(|e| {
                    e.stat.as_ref().is_ok_and(|md| md.is_dir() && md.dev == dev && self.select.own(md).is_none())
                })
                .map(|e| e.path.clone())
                .collect(),
        );
        let mut batch = Batch::default();
        let mut injected = self.injected.remove(path).unwrap_or_default().into_iter().peekable();
        let Listing { entries, dir: open, .. } = listing;
        let open = open.as_ref().and_then(|d| d.fd().ok());
        for Listed { name, path: child, stat } in entries {
            while let Some(e) = injected.next_if(|e| e.name < name) {
                self.add_injected(key, e)?;
            }
            let md = match stat {
                Ok(md) => md,
                Err(e) => {
                    self.warn(&child, &e);
                    continue;
                }
            };
            if let Some(why) = self.select.own(&md) {
                self.summary.left_out.push(format!("{}: {why}", child.display()));
                continue;
            }
            let prev = parent.and_then(|t| t.find(&name));
            let slot = self.open_slot(key)?;
            self.scan_entry(&child, open, name, &md, dev, prev, slot, &mut batch)?;
        }
        for e in injected {
            self.add_injected(key, e)?;
        }
        self.flush_batch(&mut batch)?;
        while let Some(o) = self.feed.ready() {
            self.take_outcome(o)?;
        }
        let dir = self.dirs.get_mut(&key).ok_or_else(lost_dir)?;
        dir.scanned = true;
        if dir.waiting == 0 { self.complete(key) } else { Ok(()) }
    }

    /// An entry stored before the scan, added to open directory `key`.
    fn add_injected(&mut self, key: usize, entry: Entry) -> Result<()> {
        self.summary.files += 1;
        self.summary.bytes += entry.meta.size;
        let slot = self.open_slot(key)?;
        self.settle(slot, Some(entry))
    }

    /// A new place in open directory `key`, waiting until settled.
    fn open_slot(&mut self, key: usize) -> Result<Slot> {
        let dir = self.dirs.get_mut(&key).ok_or_else(lost_dir)?;
        dir.entries.push(None);
        dir.waiting += 1;
        Ok(Slot::InDir(key, dir.entries.len() - 1))
    }

    /// The entry waiting at `slot`, taken out.
    fn take_waiting(&mut self, slot: Slot) -> Option<Entry> {
        match slot {
            Slot::Source(i) => self.sources.get_mut(i)?.take(),
            Slot::InDir(d, s) => self.dirs.get_mut(&d)?.entries.get_mut(s)?.take(),
        }
    }

    /// Put a waiting entry at `slot` (it is not settled yet).
    fn park(&mut self, slot: Slot, entry: Entry) -> Result<()> {
        let cell = match slot {
            Slot::Source(i) => self.sources.get_mut(i),
            Slot::InDir(d, s) => self.dirs.get_mut(&d).and_then(|dir| dir.entries.get_mut(s)),
        };
        *cell.ok_or_else(lost_dir)? = Some(entry);
        Ok(())
    }

    /// `slot`'s entry is known (`None`: left out); its directory is written
    /// when that was the last one it waited for.
    fn settle(&mut self, slot: Slot, entry: Option<Entry>) -> Result<()> {
        match slot {
            Slot::Source(i) => {
                *self.sources.get_mut(i).ok_or_else(lost_dir)? = entry;
                Ok(())
            }
            Slot::InDir(d, s) => {
                let dir = self.dirs.get_mut(&d).ok_or_else(lost_dir)?;
                *dir.entries.get_mut(s).ok_or_else(lost_dir)? = entry;
                dir.waiting -= 1;
                if dir.scanned && dir.waiting == 0 { self.complete(d) } else { Ok(()) }
            }
        }
    }

    /// Write open directory `key`'s tree and settle its own entry.
    fn complete(&mut self, key: usize) -> Result<()> {
        let dir = self.dirs.remove(&key).ok_or_else(lost_dir)?;
        let tree = self.trees.write(dir.entries.into_iter().flatten().collect())?;
        self.settle(dir.slot, Some(Entry { name: dir.name, kind: EntryKind::Dir { tree }, meta: dir.meta }))
    }

    fn add_file(
        &mut self,
        path: &Path,
        mut entry: Entry,
        md: &Stat,
        prev: Option<&Entry>,
        slot: Slot,
        batch: &mut Batch,
    ) -> Result<()> {
        self.summary.files += 1;
        self.summary.bytes += md.size;
        if let Some(p) = self.progress {
            p.add_total(1, md.size);
        }
        let meta = &entry.meta;
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
        let size = meta.size;
        let EntryKind::File(content) = &mut entry.kind else {
            return Err(Error::Invalid("a file entry that is not a file".into()));
        };
        if unchanged && let Some(EntryKind::File(old)) = prev.map(|e| &e.kind) {
            content.pieces = old.pieces.clone();
            self.summary.files_unchanged += 1;
        }
        // A hard-linked inode is read once, through its first link.
        let mut first_link = None;
        if md.nlink > 1 {
            let key = (md.dev, md.ino);
            let next_group = self.links.len() as u64;
            match self.links.get_mut(&key) {
                Some(link) => {
                    content.hardlink = Some(link.group);
                    return match &mut link.state {
                        LinkState::Reading(waiting) => {
                            waiting.push((slot, path.to_path_buf(), size));
                            self.park(slot, entry)
                        }
                        LinkState::Known(known) => {
                            let known = known.clone();
                            self.fill(slot, entry, known.as_ref(), path, size)
                        }
                    };
                }
                None => {
                    content.hardlink = Some(next_group);
                    let state = if unchanged || size == 0 {
                        LinkState::Known(Some((content.pieces.clone(), size, false)))
                    } else {
                        LinkState::Reading(Vec::new())
                    };
                    self.links.insert(key, Link { group: next_group, state });
                    first_link = Some(key);
                }
            }
        }
        if unchanged || size == 0 {
            if let Some(p) = self.progress {
                p.done(1, size);
            }
            return self.settle(slot, Some(entry));
        }
        self.park(slot, entry)?;
        let job = FileJob { slot, path: path.to_path_buf(), dev: md.dev, inode: md.ino, size, link: first_link };
        if size < self.small_limit {
            batch.jobs.push(job);
            batch.bytes += size;
            if batch.bytes >= self.batch_target {
                self.flush_batch(batch)?;
            }
            Ok(())
        } else {
            self.feed.send(Task::Large(job))
        }
    }

    fn flush_batch(&mut self, batch: &mut Batch) -> Result<()> {
        if batch.jobs.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(batch);
        self.feed.send(Task::Batch(b.jobs))
    }

    /// A file came back from the readers.
    fn take_outcome(&mut self, o: FileOutcome) -> Result<()> {
        self.summary.bytes_read += o.bytes_read;
        let FileJob { slot, path, size, link, .. } = o.job;
        let content = match o.skipped {
            Some(why) => {
                self.summary
                    .warnings
                    .push(format!("{}: {why}; not backed up (left out of the snapshot)", path.display()));
                None
            }
            None => {
                if o.changed {
                    self.summary
                        .warnings
                        .push(format!("{}: changed while it was read; stored as read and marked", path.display()));
                }
                Some((o.pieces, o.size, o.changed))
            }
        };
        let entry = self.take_waiting(slot).ok_or_else(lost_dir)?;
        self.fill(slot, entry, content.as_ref(), &path, size)?;
        if let Some(key) = link
            && let Some(l) = self.links.get_mut(&key)
        {
            let LinkState::Reading(waiting) = std::mem::replace(&mut l.state, LinkState::Known(content.clone())) else {
                return Ok(());
            };
            for (slot, path, size) in waiting {
                let entry = self.take_waiting(slot).ok_or_else(lost_dir)?;
                self.fill(slot, entry, content.as_ref(), &path, size)?;
            }
        }
        Ok(())
    }

    /// Give a file entry its content and settle it, or leave it out when
    /// there is none (the reason is said once, for the link that was read).
    fn fill(&mut self, slot: Slot, mut entry: Entry, content: Option<&Content>, path: &Path, size: u64) -> Result<()> {
        if let Some(p) = self.progress {
            p.done(1, size);
        }
        let Some((pieces, read_size, changed)) = content else {
            self.summary.files -= 1;
            self.summary.bytes -= size;
            self.summary.skipped.push(path.display().to_string());
            return self.settle(slot, None);
        };
        if let EntryKind::File(c) = &mut entry.kind {
            c.pieces = pieces.clone();
            c.changed_while_read = *changed;
        }
        entry.meta.size = *read_size;
        self.settle(slot, Some(entry))
    }

    fn warn(&mut self, path: &Path, e: &dyn std::fmt::Display) {
        self.summary.warnings.push(format!("{}: {e}", path.display()));
    }
}

impl OpenDir {
    fn new(name: Vec<u8>, meta: crate::engine::tree::Metadata, slot: Slot) -> OpenDir {
        OpenDir { name, meta, slot, entries: Vec::new(), waiting: 0, scanned: false }
    }
}

fn lost_dir() -> Error {
    Error::Invalid("backup scan lost track of a directory (a bug)".into())
}

/// The parent snapshot's trees, which tell the scan which files are
/// unchanged. From a bucket they are fetched before the scan, a directory
/// level at a time (one round trip per level rather than one per tree
/// pack), up to [`PREFETCH_ENTRIES`] entries so that memory stays bounded
/// however big the parent is; each is handed out as often as the parent
/// refers to it, then dropped. From a local repository, beyond that bound,
/// and for any tree that could not be fetched, the scan reads them as it
/// reaches them. A tree that cannot be read at all means no parent there:
/// those files are read in full.
/// Entries of the parent's trees fetched ahead from a bucket (a few
/// hundred bytes each in memory).
const PREFETCH_ENTRIES: usize = 200_000;

pub(super) struct ParentTrees<'a> {
    repo: &'a Repository,
    index: &'a Index,
    packs: PackFiles,
    /// Fetched tree and how many more times the parent refers to it.
    fetched: HashMap<Id, (Tree, usize)>,
}

impl<'a> ParentTrees<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index, root: Option<Id>) -> Self {
        let mut fetched = HashMap::new();
        if let Some(root) = root
            && repo.backend().is_remote()
        {
            let mut uses: HashMap<Id, usize> = HashMap::from([(root, 1)]);
            let mut held = 0;
            // A tree that cannot be fetched, or that would pass the bound, is
            // left out (nor are its subtrees fetched); the visit never fails.
            let _ = repo.walk_trees_tolerant(index, vec![(root, ())], |id, tree, ()| {
                let mut subtrees = Vec::new();
                let Ok(tree) = tree else { return Ok(subtrees) };
                held += tree.entries.len();
                if held > PREFETCH_ENTRIES {
                    return Ok(subtrees);
                }
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

    pub fn get(&mut self, id: &Id) -> Option<Tree> {
        match self.fetched.get_mut(id) {
            Some((tree, left)) if *left > 1 => {
                *left -= 1;
                Some(tree.clone())
            }
            Some(_) => self.fetched.remove(id).map(|(tree, _)| tree),
            None => self.repo.load_tree(self.index, id, &mut self.packs).ok(),
        }
    }

    /// Child tree `name` of `tree`, when it is a directory there.
    pub fn child(&mut self, tree: Option<&Tree>, name: &[u8]) -> Option<Tree> {
        match &tree?.find(name)?.kind {
            EntryKind::Dir { tree } => self.get(tree),
            _ => None,
        }
    }
}

/// Encodes directories and stores the trees not yet stored (an unchanged
/// directory encodes to a known id and costs nothing).
pub(super) struct TreeWriter<'a> {
    repo: &'a Repository,
    uploader: &'a PackUploader,
    known: &'a KnownBlobs<'a>,
    pack: Option<PackWriter>,
    stats: BlobStats,
    /// Entries written so far that carry extended attributes.
    entries_with_xattrs: u64,
}

impl<'a> TreeWriter<'a> {
    pub fn new(repo: &'a Repository, uploader: &'a PackUploader, known: &'a KnownBlobs) -> Self {
        TreeWriter { repo, uploader, known, pack: None, stats: BlobStats::default(), entries_with_xattrs: 0 }
    }

    /// Store a directory's entries (in name order) as a tree.
    pub fn write(&mut self, entries: Vec<Entry>) -> Result<Id> {
        self.entries_with_xattrs += entries.iter().filter(|e| !e.meta.xattrs.is_empty()).count() as u64;
        let bytes = Tree { entries }.encode();
        let keys = self.repo.keys();
        let id = keys.blob_id(&bytes);
        if self.known.claim(id) {
            let sealed = keys.seal_proven(ObjectKind::Tree, &id, &bytes, self.repo.config().compression_level)?;
            let w = self.pack.get_or_insert_with(PackWriter::new);
            w.add(id, ObjectKind::Tree, &sealed, bytes.len());
            self.stats.add(bytes.len(), sealed.len());
            if w.size() >= self.repo.config().pack_size as u64
                && let Some(w) = self.pack.take()
            {
                ship(self.repo, self.uploader, w)?;
            }
        }
        Ok(id)
    }

    /// Ship the last tree pack; what was stored, and how many of the
    /// entries written carry extended attributes.
    pub fn finish(mut self) -> Result<(BlobStats, u64)> {
        if let Some(w) = self.pack.take() {
            ship(self.repo, self.uploader, w)?;
        }
        Ok((self.stats, self.entries_with_xattrs))
    }
}
