//! Restore: recreate a snapshot's files, or part of them, under a directory.
//!
//! The snapshot's trees are walked once (directories are created as they are
//! met); file contents are then written pack by pack on several threads —
//! each blob fetched once, a few MiB per read, and written with positioned
//! writes wherever it goes, so holes stay holes (a sparse file is restored
//! sparse).
//! Hard links, symlinks and special files follow, and directory metadata is
//! applied last, deepest first, so writing into a directory does not spoil
//! its restored mtime. Files' inode flags come after every file and link is
//! in place (an immutable file can be neither renamed nor linked), a
//! directory's after its own metadata. Every chunk is authenticated and its id re-checked
//! before its bytes reach a file.
//!
//! Safety, by construction:
//! - every path is resolved beneath the target through [`Beneath`]: nothing
//!   already in the target (a symlink on the way, a FIFO where a file goes)
//!   is followed or opened; non-directories in the way are replaced;
//! - everything is created private (files 0600, directories 0700) and gets
//!   its recorded mode only when complete, so another user never reads a
//!   0600 file while it is written;
//! - files, links and special files are made under temporary names
//!   (`.hf-<run>-<n>`) and renamed into place when complete: an interrupted
//!   restore leaves no full-size file with partial content under a real
//!   name (and removes its temporary files when it can).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use nix::sys::stat::SFlag;

use crate::engine::beneath::{self, Beneath, Found, name};
use crate::engine::crypto::Id;
use crate::engine::fsmeta::{KEPT_FLAGS, NameCache, apply_flags, apply_to_file, apply_to_special, make_node};
use crate::engine::index::Index;
use crate::engine::parallel::for_each_parallel_with;
use crate::engine::progress::Progress;
use crate::engine::repository::{PackFiles, PackRead, Repository, plan_pack_reads, sealed_blobs};
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::{Entry, EntryKind, Metadata, Piece, Tree};
use crate::error::{Error, IoContext, Result};

/// What to restore and where.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (with everything under them);
    /// empty means everything.
    pub include: Vec<PathBuf>,
    pub threads: usize,
    /// Set from elsewhere (a signal handler) to stop the restore early; its
    /// temporary files are removed.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Files and bytes written, for a display.
    pub progress: Option<Arc<Progress>>,
}

/// Figures of a restore.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
    /// Something could not be put back as it was (an attribute, inode
    /// flags, a device node as non-root); `warnings` says what, per file.
    pub incomplete: bool,
}

/// A directory of the restore, relative to the target.
struct DirPlan {
    rel: PathBuf,
    /// Its recorded metadata (none for the target itself).
    meta: Option<Metadata>,
}

/// A file to write: in directory `dir`, as `tmp` until complete, then `name`.
struct FileJob {
    dir: usize,
    tmp: Vec<u8>,
    /// Its entry (with its name) as the snapshot has it.
    entry: Entry,
}

/// A hard link to the file `first` (an index into the files), or a
/// symlink / special file: made as `tmp`, renamed to `name` in `dir`.
struct NodeJob {
    dir: usize,
    name: Vec<u8>,
    tmp: Vec<u8>,
    kind: NodeKind,
}

enum NodeKind {
    Link { first: usize },
    Other(Entry),
}

/// Restore `snapshot` according to `opts`.
pub fn restore(repo: &Repository, snapshot: &Snapshot, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let (index, _) = repo.load_index()?;
    crate::fsutil::create_dir_all(&opts.target, crate::fsutil::PRIVATE_DIR)?;
    let target = Beneath::open(&opts.target)?;
    let mut walk = Walk {
        target: &target,
        include: opts.include.iter().map(|p| components(p)).collect(),
        tag: Id::random()?.short(),
        temporaries: 0,
        dirs: vec![DirPlan { rel: PathBuf::new(), meta: None }],
        files: Vec::new(),
        nodes: Vec::new(),
        seen_links: HashMap::new(),
        summary: RestoreSummary::default(),
        selected: 0,
        cancel: opts.cancel.as_deref(),
    };
    let root = (snapshot.root, (0usize, Vec::new()));
    repo.walk_trees(&index, vec![root], |id, tree, (dir, path)| walk.dir(id, tree, dir, path))?;
    if walk.selected == 0 && !opts.include.is_empty() {
        return Err(Error::Invalid(format!(
            "{} is not in the snapshot; nothing was written",
            opts.include.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let Walk { files, nodes, dirs, mut summary, .. } = walk;
    let done: Vec<AtomicBool> = files.iter().map(|_| AtomicBool::new(false)).collect();
    let notes = Mutex::new(Vec::new());
    if let Some(p) = &opts.progress {
        p.add_total(summary.files, summary.bytes);
        p.total_known();
    }
    let job = RestoreJob {
        repo,
        target: &target,
        dirs: &dirs,
        files: &files,
        done: &done,
        notes: &notes,
        cancel: opts.cancel.as_deref(),
        progress: opts.progress.as_deref(),
    };
    let result = job
        .write_files(&index, opts.threads.max(1), opts.threads.max(repo.backend().parallelism()))
        .and_then(|()| job.make_nodes(&nodes))
        .and_then(|()| job.flag_files())
        .and_then(|()| job.finish_dirs());
    if result.is_err() {
        job.remove_temporaries(&nodes);
    }
    result?;
    let notes = notes.into_inner().unwrap_or_else(|p| p.into_inner());
    summary.incomplete = !notes.is_empty();
    summary.warnings.extend(notes);
    Ok(summary)
}

fn components(p: &Path) -> Vec<Vec<u8>> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// The walk over the snapshot's trees that plans the restore (and creates
/// its directories).
struct Walk<'a> {
    target: &'a Beneath,
    include: Vec<Vec<Vec<u8>>>,
    /// This restore's mark in temporary names.
    tag: String,
    temporaries: u64,
    /// Directories in the order they were created (parents first).
    dirs: Vec<DirPlan>,
    files: Vec<FileJob>,
    nodes: Vec<NodeJob>,
    seen_links: HashMap<u64, usize>,
    summary: RestoreSummary,
    /// Entries inside the included paths (not counting their ancestors).
    selected: u64,
    cancel: Option<&'a AtomicBool>,
}

/// Where a directory of the snapshot goes (its index in the plan), and its
/// path in the snapshot.
type DirContext = (usize, Vec<Vec<u8>>);

enum Selected {
    /// Inside an included path: restore it and everything below.
    All,
    /// An ancestor of an included path: create it, look inside.
    Ancestor,
    No,
}

impl Walk<'_> {
    fn select(&self, path: &[Vec<u8>]) -> Selected {
        if self.include.is_empty() {
            return Selected::All;
        }
        let mut sel = Selected::No;
        for inc in &self.include {
            if path.len() >= inc.len() && path[..inc.len()] == inc[..] {
                return Selected::All;
            }
            if inc.len() > path.len() && inc[..path.len()] == path[..] {
                sel = Selected::Ancestor;
            }
        }
        sel
    }

    /// A new temporary name, short whatever the final name's length.
    fn temporary(&mut self) -> Vec<u8> {
        self.temporaries += 1;
        format!(".hf-{}-{}", self.tag, self.temporaries).into_bytes()
    }

    /// Plan one directory (index `dir`) whose tree is `tree`: create its
    /// subdirectories and return them, to be walked next.
    fn dir(&mut self, tree_id: &Id, tree: &Tree, dir: usize, mut path: Vec<Vec<u8>>) -> Result<Vec<(Id, DirContext)>> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let rel = self.dirs[dir].rel.clone();
        let parent = self.target.dir(&rel)?;
        let mut subdirs = Vec::new();
        for entry in &tree.entries {
            let unsafe_name = entry.name.is_empty()
                || entry.name == b"."
                || entry.name == b".."
                || entry.name.contains(&b'/')
                || entry.name.contains(&0);
            if unsafe_name {
                return Err(Error::damaged(format!("tree {}", tree_id.short()), "an entry has an unsafe name"));
            }
            path.push(entry.name.clone());
            let selected = self.select(&path);
            if matches!(selected, Selected::All) {
                self.selected += 1;
            }
            let dest = rel.join(name(&entry.name));
            let shown = self.target.display(&dest);
            match (&selected, &entry.kind) {
                (Selected::No, _) | (Selected::Ancestor, EntryKind::File(_)) => {}
                (_, EntryKind::Dir { tree }) => {
                    beneath::ensure_dir(beneath::fd(&parent), name(&entry.name), &shown)?;
                    self.summary.dirs += 1;
                    self.dirs.push(DirPlan { rel: dest, meta: Some(entry.meta.clone()) });
                    subdirs.push((*tree, (self.dirs.len() - 1, path.clone())));
                }
                (Selected::Ancestor, _) => {}
                (Selected::All, EntryKind::File(content)) => {
                    // A directory where the snapshot has a file: say so now,
                    // before any content is written.
                    if beneath::lookup(beneath::fd(&parent), name(&entry.name), &shown)? == Found::Dir {
                        return Err(Error::Invalid(format!(
                            "{}: a directory is in the way of a file of the snapshot; remove it or restore elsewhere",
                            shown.display()
                        )));
                    }
                    self.summary.files += 1;
                    self.summary.bytes += entry.meta.size;
                    let tmp = self.temporary();
                    if let Some(group) = content.hardlink {
                        if let Some(first) = self.seen_links.get(&group) {
                            let kind = NodeKind::Link { first: *first };
                            self.nodes.push(NodeJob { dir, name: entry.name.clone(), tmp, kind });
                            path.pop();
                            continue;
                        }
                        self.seen_links.insert(group, self.files.len());
                    }
                    self.files.push(FileJob { dir, tmp, entry: entry.clone() });
                }
                (Selected::All, EntryKind::Socket) => {
                    self.summary.warnings.push(format!(
                        "{}: a socket; not restored (the program that listens on it creates it)",
                        shown.display()
                    ));
                }
                (Selected::All, _) => {
                    self.summary.other += 1;
                    let tmp = self.temporary();
                    self.nodes.push(NodeJob {
                        dir,
                        name: entry.name.clone(),
                        tmp,
                        kind: NodeKind::Other(entry.clone()),
                    });
                }
            }
            path.pop();
        }
        Ok(subdirs)
    }
}

/// Where some bytes of a blob's plaintext go.
struct Target {
    file: usize,
    /// Offset in the file.
    at: u64,
    /// The part of the blob (offset, length); `None` for all of it.
    slice: Option<(u32, u32)>,
}

/// What the phases after the walk share.
struct RestoreJob<'a> {
    repo: &'a Repository,
    target: &'a Beneath,
    dirs: &'a [DirPlan],
    files: &'a [FileJob],
    /// Files renamed to their final name.
    done: &'a [AtomicBool],
    /// What could not be put back as it was (attributes, device nodes).
    notes: &'a Mutex<Vec<String>>,
    cancel: Option<&'a AtomicBool>,
    progress: Option<&'a Progress>,
}

/// Open directories of the restore, per thread (a few, reused).
struct DirHandles {
    open: HashMap<usize, OwnedFd>,
}

impl DirHandles {
    fn new() -> Self {
        DirHandles { open: HashMap::new() }
    }

    fn get(&mut self, job: &RestoreJob, dir: usize) -> Result<&OwnedFd> {
        if !self.open.contains_key(&dir) {
            if self.open.len() >= 64 {
                self.open.clear();
            }
            self.open.insert(dir, job.target.dir(&job.dirs[dir].rel)?);
        }
        self.open.get(&dir).ok_or_else(|| Error::Invalid("directory handle".into()))
    }
}

impl RestoreJob<'_> {
    /// File `i`'s path inside the snapshot, for messages.
    fn in_snapshot(&self, i: usize) -> String {
        let f = &self.files[i];
        Path::new("/").join(&self.dirs[f.dir].rel).join(name(&f.entry.name)).display().to_string()
    }

    fn note(&self, mut notes: Vec<String>) {
        if !notes.is_empty() {
            self.notes.lock().unwrap_or_else(|p| p.into_inner()).append(&mut notes);
        }
    }

    fn cancelled(&self) -> Result<()> {
        match self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }

    /// Where a file or node of the plan is, for messages.
    fn shown(&self, dir: usize, file_name: &[u8]) -> PathBuf {
        self.target.display(&self.dirs[dir].rel.join(name(file_name)))
    }

    /// A complete file gets its metadata through the descriptor that wrote
    /// it, then its final name.
    fn complete(&self, i: usize, file: &File, dirs: &mut DirHandles, names: &mut NameCache) -> Result<()> {
        let job = &self.files[i];
        let shown = self.shown(job.dir, &job.entry.name);
        self.note(apply_to_file(file, &job.entry.meta, names, &shown)?);
        let parent = dirs.get(self, job.dir)?;
        beneath::rename_into_place(beneath::fd(parent), name(&job.tmp), name(&job.entry.name), &shown)?;
        self.done[i].store(true, Ordering::Release);
        if let Some(p) = self.progress {
            p.done(1, 0);
            p.at(&shown);
        }
        Ok(())
    }

    /// Write file contents, pack by pack: every needed blob is read once, in
    /// pack order, a few MiB per request, and written to every place it goes
    /// — what makes a restore from object storage as fast as from a disk.
    /// Files are created at their final length first (holes stay holes); a
    /// file is completed by the thread that writes its last piece. File
    /// system work uses `threads`, reads `transfers` threads (more for a
    /// bucket, whose requests wait on the network).
    fn write_files(&self, index: &Index, threads: usize, transfers: usize) -> Result<()> {
        let files = self.files;
        let mut targets: HashMap<Id, Vec<Target>> = HashMap::new();
        let mut lengths = Vec::with_capacity(files.len());
        let mut pieces_left = Vec::with_capacity(files.len());
        for (i, job) in files.iter().enumerate() {
            let (mut pos, mut pieces) = (0u64, 0u32);
            if let EntryKind::File(content) = &job.entry.kind {
                for piece in &content.pieces {
                    let (id, slice) = match piece {
                        Piece::Hole { .. } => (None, None),
                        Piece::Chunk { id, .. } => (Some(id), None),
                        Piece::Slice { id, offset, len } => (Some(id), Some((*offset, *len))),
                    };
                    if let Some(id) = id {
                        targets.entry(*id).or_default().push(Target { file: i, at: pos, slice });
                        pieces += 1;
                    }
                    pos += piece.len();
                }
            }
            lengths.push(pos);
            pieces_left.push(AtomicU32::new(pieces));
        }
        let mut blobs = Vec::with_capacity(targets.len());
        for (id, t) in &targets {
            let loc = index.get(id).ok_or_else(|| {
                let of = t.first().map(|t| self.in_snapshot(t.file)).unwrap_or_default();
                Error::damaged(
                    format!("chunk {} (of {of})", id.short()),
                    "not in the index; run `holdfast check`, then `holdfast repair index`",
                )
            })?;
            blobs.push((*id, loc));
        }
        let reads = plan_pack_reads(blobs);

        let state: Vec<Mutex<(DirHandles, NameCache)>> =
            (0..threads).map(|_| Mutex::new((DirHandles::new(), NameCache::default()))).collect();
        for_each_parallel_with(files.len(), &state, FILES_PER_GRAB, |i, (dirs, names)| {
            self.cancelled()?;
            let job = &files[i];
            let shown = self.shown(job.dir, &job.entry.name);
            let parent = dirs.get(self, job.dir)?;
            let file = beneath::create_file(beneath::fd(parent), name(&job.tmp), &shown)?;
            file.set_len(lengths[i]).map_err(|e| Error::io(&shown, e))?;
            if pieces_left[i].load(Ordering::Relaxed) == 0 {
                self.complete(i, &file, dirs, names)?;
            }
            Ok(())
        })?;
        let writers = Writers { job: self, targets: &targets, pieces_left: &pieces_left };
        let caches: Vec<Mutex<WriterState>> = (0..transfers).map(|_| Mutex::new(WriterState::default())).collect();
        for_each_parallel_with(reads.len(), &caches, 1, |i, state| writers.write_read(&reads[i], state))
    }

    /// Hard links, symlinks, FIFOs and device nodes (as root), each made
    /// under its temporary name, given its metadata, then renamed into place.
    fn make_nodes(&self, nodes: &[NodeJob]) -> Result<()> {
        let mut dirs = DirHandles::new();
        let mut names = NameCache::default();
        for node in nodes {
            self.cancelled()?;
            let shown = self.shown(node.dir, &node.name);
            let tmp = name(&node.tmp);
            let io = |e: nix::Error| Error::io(&shown, std::io::Error::from(e));
            let parent =
                beneath::fd(dirs.get(self, node.dir)?).try_clone_to_owned().map_err(|e| Error::io(&shown, e))?;
            let parent = beneath::fd(&parent);
            match &node.kind {
                NodeKind::Link { first } => {
                    let f = &self.files[*first];
                    let from = dirs.get(self, f.dir)?;
                    nix::unistd::linkat(
                        beneath::fd(from),
                        name(&f.entry.name),
                        parent,
                        tmp,
                        nix::fcntl::AtFlags::empty(),
                    )
                    .map_err(io)?;
                }
                NodeKind::Other(entry) => {
                    match &entry.kind {
                        EntryKind::Symlink { target } => {
                            nix::unistd::symlinkat(OsStr::from_bytes(target), parent, tmp).map_err(io)?
                        }
                        EntryKind::Fifo => make_node(parent, tmp, SFlag::S_IFIFO, 0, &shown)?,
                        EntryKind::CharDevice { rdev } | EntryKind::BlockDevice { rdev } => {
                            if !nix::unistd::geteuid().is_root() {
                                let why = "device node recreated only when restoring as root";
                                self.note(vec![format!("{}: {why}", shown.display())]);
                                continue;
                            }
                            let kind = if matches!(entry.kind, EntryKind::CharDevice { .. }) {
                                SFlag::S_IFCHR
                            } else {
                                SFlag::S_IFBLK
                            };
                            make_node(parent, tmp, kind, *rdev, &shown)?
                        }
                        _ => continue,
                    }
                    let is_link = matches!(entry.kind, EntryKind::Symlink { .. });
                    self.note(apply_to_special(parent, tmp, &entry.meta, is_link, &mut names, &shown)?);
                }
            }
            beneath::rename_into_place(parent, tmp, name(&node.name), &shown)?;
        }
        Ok(())
    }

    /// Inode flags of the files, once every file and link is in place
    /// (an immutable file can be neither renamed nor linked), through one
    /// of their links, while the directories are still private to the
    /// restore (nobody can swap a name for another file meanwhile). A flag
    /// that cannot be set (not root, a file system without it) is said per
    /// file.
    fn flag_files(&self) -> Result<()> {
        let mut dirs = DirHandles::new();
        let files = self.files.iter().filter(|f| f.entry.meta.flags & KEPT_FLAGS != 0);
        for f in files {
            let shown = self.shown(f.dir, &f.entry.name);
            let parent = dirs.get(self, f.dir)?;
            let file = beneath::open_file(beneath::fd(parent), name(&f.entry.name), &shown)?;
            self.flags_on(std::os::fd::AsFd::as_fd(&file), f.entry.meta.flags, &shown);
        }
        Ok(())
    }

    /// Directory metadata, deepest first (created parents come first in
    /// the plan; reversed, every directory comes before its parent), each
    /// through a handle opened beneath the target; a directory's inode
    /// flags right after its metadata (an immutable directory takes no
    /// more).
    fn finish_dirs(&self) -> Result<()> {
        let mut names = NameCache::default();
        for plan in self.dirs.iter().rev() {
            let Some(meta) = &plan.meta else { continue };
            let dir = File::from(self.target.dir(&plan.rel)?);
            let shown = self.target.display(&plan.rel);
            self.note(apply_to_file(&dir, meta, &mut names, &shown)?);
            if meta.flags & KEPT_FLAGS != 0 {
                self.flags_on(std::os::fd::AsFd::as_fd(&dir), meta.flags, &shown);
            }
        }
        Ok(())
    }

    fn flags_on(&self, fd: std::os::fd::BorrowedFd, flags: u32, shown: &Path) {
        if let Err(e) = apply_flags(fd, flags) {
            let what = crate::engine::fsmeta::flag_letters(flags);
            self.note(vec![format!("{}: inode flags {what} not restored: {e}", shown.display())]);
        }
    }

    /// After a failure: remove the temporary names of what was not finished.
    fn remove_temporaries(&self, nodes: &[NodeJob]) {
        let mut dirs = DirHandles::new();
        let unfinished = self
            .files
            .iter()
            .zip(self.done)
            .filter(|(_, done)| !done.load(Ordering::Acquire))
            .map(|(f, _)| (f.dir, &f.tmp))
            .chain(nodes.iter().map(|n| (n.dir, &n.tmp)));
        for (dir, tmp) in unfinished {
            if let Ok(parent) = dirs.get(self, dir) {
                beneath::remove_temporary(beneath::fd(parent), name(tmp));
            }
        }
    }
}

/// What the threads writing file contents share.
struct Writers<'a> {
    job: &'a RestoreJob<'a>,
    targets: &'a HashMap<Id, Vec<Target>>,
    /// Pieces of each file not written yet; whoever writes the last one
    /// completes the file.
    pieces_left: &'a [AtomicU32],
}

/// One writing thread's own state: its reads, its open files, its names.
struct WriterState {
    packs: PackFiles,
    open: HashMap<usize, File>,
    names: NameCache,
    dirs: DirHandles,
}

impl Default for WriterState {
    fn default() -> Self {
        WriterState {
            packs: PackFiles::default(),
            open: HashMap::new(),
            names: NameCache::default(),
            dirs: DirHandles::new(),
        }
    }
}

impl Writers<'_> {
    /// Fetch one pack read, open each blob (authenticated, id checked) and
    /// write it wherever it goes.
    fn write_read(&self, read: &PackRead, state: &mut WriterState) -> Result<()> {
        let job = self.job;
        job.cancelled()?;
        let files = job.files;
        let first_file =
            |id: &Id| self.targets.get(id).and_then(|t| t.first()).map(|t| job.in_snapshot(t.file)).unwrap_or_default();
        let bytes = job.repo.read_pack_range(read, &mut state.packs).map_err(|e| {
            let needed = read.blobs.first().map(|(id, _)| first_file(id)).unwrap_or_default();
            Error::damaged(
                format!("pack {}", read.pack.short()),
                format!("cannot be read ({e}); {needed} and others need it; run `holdfast check`"),
            )
        })?;
        for (id, loc, sealed) in sealed_blobs(read, &bytes) {
            let places = self.targets.get(id).map(Vec::as_slice).unwrap_or_default();
            let of = |e: Error| match e {
                Error::Damaged { what, detail } => {
                    Error::Damaged { what: format!("{what} (of {})", first_file(id)), detail }
                }
                other => other,
            };
            let sealed = sealed.map_err(of)?;
            let plain = job.repo.open_blob(id, loc, sealed).map_err(of)?;
            for t in places {
                let data = match t.slice {
                    Some((offset, len)) => plain
                        .get(offset as usize..(offset + len) as usize)
                        .ok_or_else(|| of(Error::damaged(format!("chunk {}", id.short()), "slice out of range")))?,
                    None => &plain[..],
                };
                if state.open.len() >= 128 && !state.open.contains_key(&t.file) {
                    state.open.clear();
                }
                let f = &files[t.file];
                let shown = job.shown(f.dir, &f.entry.name);
                let file = match state.open.entry(t.file) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let parent = state.dirs.get(job, f.dir)?;
                        e.insert(beneath::reopen_file(beneath::fd(parent), name(&f.tmp), &shown)?)
                    }
                };
                file.write_all_at(data, t.at).map_err(|e| Error::io(&shown, e))?;
                if let Some(p) = job.progress {
                    p.done(0, data.len() as u64);
                }
                if self.pieces_left[t.file].fetch_sub(1, Ordering::AcqRel) == 1 {
                    let file = state.open.remove(&t.file).ok_or_else(|| Error::Invalid("open file".into()))?;
                    job.complete(t.file, &file, &mut state.dirs, &mut state.names)?;
                }
            }
        }
        Ok(())
    }
}

/// Files a thread takes at a time when creating them or setting their
/// metadata: neighbours share a directory, and threads working in one
/// directory contend for its lock.
const FILES_PER_GRAB: usize = 64;

/// The entry at `path` (absolute, inside the snapshot), if there is one.
pub fn find_entry(repo: &Repository, index: &Index, snapshot: &Snapshot, path: &Path) -> Result<Option<Entry>> {
    let mut packs = PackFiles::default();
    let mut tree = repo.load_tree(index, &snapshot.root, &mut packs)?;
    let parts = components(path);
    for (i, name) in parts.iter().enumerate() {
        let Some(entry) = tree.find(name).cloned() else { return Ok(None) };
        if i + 1 == parts.len() {
            return Ok(Some(entry));
        }
        match entry.kind {
            EntryKind::Dir { tree: id } => tree = repo.load_tree(index, &id, &mut packs)?,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Write the content of the file at `path` in the snapshot to `out`
/// (authenticated chunk by chunk); returns its size.
pub fn extract_file(repo: &Repository, snapshot: &Snapshot, path: &Path, out: &mut dyn std::io::Write) -> Result<u64> {
    let (index, _) = repo.load_index()?;
    let entry = find_entry(repo, &index, snapshot, path)?
        .ok_or_else(|| Error::Invalid(format!("{} is not in the snapshot", path.display())))?;
    let EntryKind::File(content) = &entry.kind else {
        return Err(Error::Invalid(format!("{} is not a regular file in the snapshot", path.display())));
    };
    let mut reader = ContentReader::new(repo, &index, &content.pieces);
    let mut written = 0u64;
    while reader.next_bytes()? {
        out.write_all(reader.bytes()).at(path)?;
        written += reader.bytes().len() as u64;
    }
    Ok(written)
}

/// A file's bytes read back out of the repository piece by piece, each
/// blob authenticated as it is read and a hole given as zeros: for
/// [`extract_file`], and as a [`std::io::Read`] for storing a file again
/// (a streamed dump into a job's other repositories).
pub struct ContentReader<'r> {
    repo: &'r Repository,
    index: &'r Index,
    pieces: std::slice::Iter<'r, Piece>,
    packs: PackFiles,
    /// Zeros of a hole still to give.
    hole_left: u64,
    buf: Vec<u8>,
    /// What of `buf` is the current piece's, and how far `read` got in it.
    range: std::ops::Range<usize>,
    at: usize,
}

impl<'r> ContentReader<'r> {
    pub fn new(repo: &'r Repository, index: &'r Index, pieces: &'r [Piece]) -> Self {
        ContentReader {
            repo,
            index,
            pieces: pieces.iter(),
            packs: PackFiles::default(),
            hole_left: 0,
            buf: Vec::new(),
            range: 0..0,
            at: 0,
        }
    }

    /// Move to the next bytes (a piece, or up to 64 KiB of a hole);
    /// `false` at the end.
    pub fn next_bytes(&mut self) -> Result<bool> {
        const ZEROS: u64 = 1 << 16;
        if self.hole_left == 0 {
            match self.pieces.next() {
                None => return Ok(false),
                Some(Piece::Hole { len }) => self.hole_left = *len,
                Some(piece @ (Piece::Chunk { id, .. } | Piece::Slice { id, .. })) => {
                    let loc = self
                        .index
                        .get(id)
                        .ok_or_else(|| Error::damaged(format!("chunk {}", id.short()), "not in the index"))?;
                    self.buf = self.repo.read_blob_ahead(id, &loc, self.index, &mut self.packs)?;
                    self.range = match piece {
                        Piece::Slice { offset, len, .. } => {
                            let (from, to) = (*offset as usize, *offset as usize + *len as usize);
                            if to > self.buf.len() {
                                return Err(Error::damaged(format!("chunk {}", id.short()), "slice out of range"));
                            }
                            from..to
                        }
                        _ => 0..self.buf.len(),
                    };
                    self.at = self.range.start;
                    return Ok(true);
                }
            }
        }
        let n = self.hole_left.min(ZEROS) as usize;
        self.hole_left -= n as u64;
        self.buf.clear();
        self.buf.resize(n, 0);
        self.range = 0..n;
        self.at = 0;
        Ok(true)
    }

    /// The bytes [`ContentReader::next_bytes`] moved to.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

impl std::io::Read for ContentReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.range.end {
            if !self.next_bytes().map_err(std::io::Error::other)? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.range.end - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Refuse a restore target that is inside one of `protected` (`(what,
/// path)`: the repository, the spool, the config in use) or, when it is to
/// be replaced (`replaced`), holds one; returns the target as it will be
/// written (the name itself, not where a symlink there points).
pub fn refuse_protected(target: &Path, protected: &[(String, PathBuf)], replaced: bool) -> Result<PathBuf> {
    let resolved = if replaced {
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let Some(file_name) = target.file_name() else {
            return Err(Error::Invalid(format!("{}: restore into a named directory", target.display())));
        };
        resolved_as_far_as_it_exists(parent).join(file_name)
    } else {
        // Written into, not replaced: through a link at the target too.
        resolved_as_far_as_it_exists(target)
    };
    for (what, path) in protected {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        if replaced && path.starts_with(&resolved) {
            return Err(Error::Invalid(format!(
                "{} holds {what} ({}); restoring there would destroy it; restore elsewhere",
                target.display(),
                path.display()
            )));
        }
        if resolved.starts_with(&path) {
            return Err(Error::Invalid(format!(
                "{} is {}{what} ({}); restoring there would damage it; restore elsewhere",
                target.display(),
                if resolved == path { "" } else { "inside " },
                path.display()
            )));
        }
    }
    Ok(resolved)
}

/// `path` made absolute with the links of the part that exists resolved,
/// and the rest (not made yet) appended as written.
fn resolved_as_far_as_it_exists(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        let here = if existing.as_os_str().is_empty() { Path::new(".") } else { existing };
        if let Ok(found) = std::fs::canonicalize(here) {
            return missing.iter().rev().fold(found, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            // `..` in the missing part: resolved by its words.
            _ => return crate::fsutil::normalize(&std::env::current_dir().unwrap_or_default().join(path)),
        }
    }
}

/// Restore into `opts.target` so that an interrupted restore never leaves a
/// half-old tree: everything is written into a private staging directory
/// beside the target, which then takes the target's place in one rename (an
/// atomic exchange when the target exists and `overwrite` allows replacing
/// it). Refused before anything moves: an existing target without
/// `overwrite` (a non-empty directory, or anything that is not a
/// directory), and any target that holds one of `protected` (the
/// repository, the spool, the config in use: `(what, path)`).
pub fn restore_staged(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    overwrite: bool,
    protected: &[(String, PathBuf)],
) -> Result<RestoreSummary> {
    let target = &opts.target;
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let resolved = refuse_protected(target, protected, true)?;
    let file_name = resolved.file_name().unwrap_or(target.as_os_str());
    let existing = match std::fs::symlink_metadata(target) {
        Ok(md) => Some(md),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(target, e)),
    };
    match &existing {
        Some(md) if md.is_dir() => {
            let non_empty =
                std::fs::read_dir(target).map(|mut d| d.next().is_some()).map_err(|e| Error::io(target, e))?;
            if non_empty && !overwrite {
                return Err(Error::Invalid(format!(
                    "{} exists and is not empty; pass --overwrite to replace it, or restore elsewhere",
                    target.display()
                )));
            }
            refuse_mounts_below(target, &resolved)?;
        }
        Some(md) if !overwrite => {
            let kind = if md.file_type().is_symlink() { "a symlink" } else { "not a directory" };
            return Err(Error::Invalid(format!(
                "{} exists and is {kind}; pass --overwrite to replace it (the {} itself, not what it points to), \
                 or restore elsewhere",
                target.display(),
                if md.file_type().is_symlink() { "link" } else { "file" }
            )));
        }
        _ => {}
    }
    crate::fsutil::create_dir_all(parent, crate::fsutil::PRIVATE_DIR)?;
    let shown_name = file_name.to_string_lossy();
    let staging = parent.join(format!(".{shown_name}.holdfast-partial-{}", Id::random()?.short()));
    let staged = RestoreOptions { target: staging.clone(), ..opts.clone() };
    let mut summary = match restore(repo, snapshot, &staged) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // Say where things are once the restore is done, not where they were staged.
    let (from, to) = (staging.display().to_string(), target.display().to_string());
    for w in &mut summary.warnings {
        *w = w.replace(&from, &to);
    }
    if existing.is_some() {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &staging,
            nix::fcntl::AT_FDCWD,
            target,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| Error::io(target, std::io::Error::from(e)))?;
        // What was there now sits at the staging path; a file system
        // mounted inside it since the check above moved with it and is
        // never emptied.
        let old_was_dir = existing.as_ref().is_some_and(|md| md.is_dir());
        if old_was_dir {
            let moved = std::fs::canonicalize(&staging).unwrap_or_else(|_| staging.clone());
            refuse_mounts_below(&staging, &moved).map_err(|e| {
                Error::Invalid(format!("the restore is in place at {}; the old tree was kept: {e}", target.display()))
            })?;
            std::fs::remove_dir_all(&staging)
        } else {
            std::fs::remove_file(&staging)
        }
        .map_err(|e| Error::io(&staging, e))?;
    } else {
        std::fs::rename(&staging, target).map_err(|e| Error::io(target, e))?;
    }
    crate::engine::backend::sync_dir(parent)?;
    Ok(summary)
}

/// Refuse to replace directory `shown` (at `resolved`) while another file
/// system is mounted below it: replacing the tree would delete what is on
/// that file system (which the snapshot may not even hold, as with
/// `one_file_system`) and move the mount aside.
fn refuse_mounts_below(shown: &Path, resolved: &Path) -> Result<()> {
    let mounts = crate::engine::select::mounts_below(resolved);
    let Some((first, kind)) = mounts.first() else {
        return Ok(());
    };
    Err(Error::Invalid(format!(
        "{} has a file system mounted below it ({kind} at {}{}); --overwrite would delete what is on it: \
         unmount it first, or restore elsewhere and move what you need",
        shown.display(),
        first.display(),
        if mounts.len() > 1 { format!(" and {} more", mounts.len() - 1) } else { String::new() }
    )))
}

/// Figures of a comparison of restored files with their snapshot.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Comparison {
    pub files: u64,
    pub bytes: u64,
    pub mismatches: Vec<String>,
}

/// Read back every file restored under `root` (the snapshot's `include`
/// paths) and compare its size and content with the chunk hashes recorded at
/// backup time.
pub fn compare_restored(
    repo: &Repository,
    snapshot: &Snapshot,
    include: &[PathBuf],
    root: &Path,
) -> Result<Comparison> {
    use std::io::Read;
    let (index, _) = repo.load_index()?;
    let mut cmp = Comparison::default();
    let wanted = |p: &Path| include.is_empty() || include.iter().any(|i| p.starts_with(i));
    let leads = |p: &Path| include.iter().any(|i| i.starts_with(p));
    let root_dir = (snapshot.root, PathBuf::from("/"));
    repo.walk_trees(&index, vec![root_dir], |_, tree, dir| {
        let mut subdirs = Vec::new();
        for e in &tree.entries {
            let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            match &e.kind {
                EntryKind::Dir { tree } if wanted(&path) || leads(&path) => subdirs.push((*tree, path)),
                EntryKind::File(content) if wanted(&path) => {
                    cmp.files += 1;
                    let local = root.join(path.strip_prefix("/").unwrap_or(&path));
                    let mut f = match File::open(&local) {
                        Ok(f) => f,
                        Err(err) => {
                            cmp.mismatches.push(format!("{}: {err}", path.display()));
                            continue;
                        }
                    };
                    let mut buf = Vec::new();
                    let mut bad = None;
                    for piece in &content.pieces {
                        if let Piece::Hole { len } = piece {
                            // Read holes in blocks: they may be gigabytes long.
                            let mut left = *len;
                            while left > 0 && bad.is_none() {
                                buf.resize(left.min(1 << 20) as usize, 0);
                                match f.read_exact(&mut buf) {
                                    Ok(()) if buf.iter().all(|b| *b == 0) => left -= buf.len() as u64,
                                    Ok(()) => bad = Some("a hole holds data".to_string()),
                                    Err(err) => bad = Some(format!("shorter than recorded ({err})")),
                                }
                            }
                            if bad.is_some() {
                                break;
                            }
                            cmp.bytes += len;
                            continue;
                        }
                        buf.resize(piece.len() as usize, 0);
                        if let Err(err) = f.read_exact(&mut buf) {
                            bad = Some(format!("shorter than recorded ({err})"));
                            break;
                        }
                        cmp.bytes += piece.len();
                        let ok = match piece {
                            Piece::Chunk { id, .. } => repo.keys().blob_id(&buf) == *id,
                            Piece::Hole { .. } => true,
                            // Slices were authenticated as part of their chunk when restored.
                            Piece::Slice { .. } => true,
                        };
                        if !ok {
                            bad = Some("content does not match the hash recorded at backup time".into());
                            break;
                        }
                    }
                    if bad.is_none() && f.read(&mut [0u8; 1]).map(|n| n > 0).unwrap_or(false) {
                        bad = Some("longer than recorded".into());
                    }
                    if let Some(why) = bad {
                        cmp.mismatches.push(format!("{}: {why}", path.display()));
                    }
                }
                _ => {}
            }
        }
        Ok(subdirs)
    })?;
    Ok(cmp)
}
