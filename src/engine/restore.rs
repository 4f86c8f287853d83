//! Restore: recreate a snapshot's files, or part of them, under a directory.
//!
//! The snapshot's trees are walked once (directories are created as they are
//! met); file contents are then written pack by pack on several threads —
//! each blob fetched once, a few MiB per read, and written with positioned
//! writes wherever it goes, so holes stay holes (a sparse file is restored
//! sparse).
//! Hard links, symlinks and special files follow, and directory metadata is
//! applied last, deepest first, so writing into a directory does not spoil
//! its restored mtime. Every chunk is authenticated and its id re-checked
//! before its bytes reach a file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::stat::SFlag;

use crate::engine::crypto::Id;
use crate::engine::fsmeta::{NameCache, apply_metadata, make_node};
use crate::engine::index::Index;
use crate::engine::parallel::for_each_parallel_with;
use crate::engine::repository::{PackFiles, PackRead, Repository, plan_pack_reads, sealed_blobs};
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::{Entry, EntryKind, Metadata, Piece, Tree};
use crate::error::{Error, IoContext, Result};

/// What to restore and where.
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (with everything under them);
    /// empty means everything.
    pub include: Vec<PathBuf>,
    pub threads: usize,
}

/// Figures of a restore.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// A file to write.
struct FileJob {
    path: PathBuf,
    /// Its path inside the snapshot, for messages.
    in_snapshot: PathBuf,
    entry: Entry,
}

/// Restore `snapshot` according to `opts`.
pub fn restore(repo: &Repository, snapshot: &Snapshot, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let (index, _) = repo.load_index()?;
    std::fs::create_dir_all(&opts.target).at(&opts.target)?;
    let include: Vec<Vec<Vec<u8>>> = opts.include.iter().map(|p| components(p)).collect();
    let mut walk = Walk {
        include,
        files: Vec::new(),
        links: Vec::new(),
        others: Vec::new(),
        dirs: Vec::new(),
        seen_links: HashMap::new(),
        summary: RestoreSummary::default(),
        selected: 0,
    };
    let root = (snapshot.root, (opts.target.clone(), Vec::new()));
    repo.walk_trees(&index, vec![root], |id, tree, (target, path)| walk.dir(id, tree, &target, path))?;
    if walk.selected == 0 && !opts.include.is_empty() {
        return Err(Error::Invalid(format!(
            "{} is not in the snapshot; nothing was written",
            opts.include.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let Walk { files, links, others, dirs, mut summary, .. } = walk;

    write_files(repo, &index, files, opts.threads.max(1), opts.threads.max(repo.backend().parallelism()))?;

    let mut names = NameCache::default();
    for (path, first) in links {
        std::fs::hard_link(&first, &path).at(&path)?;
    }
    for (path, entry) in others {
        let made = match &entry.kind {
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).at(&path)
            }
            EntryKind::Fifo => make_node(&path, SFlag::S_IFIFO, 0),
            EntryKind::CharDevice { rdev } | EntryKind::BlockDevice { rdev } => {
                if !nix::unistd::geteuid().is_root() {
                    summary
                        .warnings
                        .push(format!("{}: device node recreated only when restoring as root", path.display()));
                    continue;
                }
                let kind =
                    if matches!(entry.kind, EntryKind::CharDevice { .. }) { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
                make_node(&path, kind, *rdev)
            }
            _ => continue,
        };
        made?;
        let is_link = matches!(entry.kind, EntryKind::Symlink { .. });
        apply_metadata(&path, None, &entry.meta, is_link, &mut names)?;
    }
    // Created parents first; reversed, every directory comes before its parent.
    for (path, meta) in dirs.iter().rev() {
        apply_metadata(path, None, meta, false, &mut names)?;
    }
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

/// The walk over the snapshot's trees that plans the restore.
struct Walk {
    include: Vec<Vec<Vec<u8>>>,
    files: Vec<FileJob>,
    links: Vec<(PathBuf, PathBuf)>,
    others: Vec<(PathBuf, Entry)>,
    /// Directories in the order they were created (parents first).
    dirs: Vec<(PathBuf, Metadata)>,
    seen_links: HashMap<u64, PathBuf>,
    summary: RestoreSummary,
    /// Entries inside the included paths (not counting their ancestors).
    selected: u64,
}

/// Where a directory of the snapshot goes, and its path in the snapshot.
type DirContext = (PathBuf, Vec<Vec<u8>>);

enum Selected {
    /// Inside an included path: restore it and everything below.
    All,
    /// An ancestor of an included path: create it, look inside.
    Ancestor,
    No,
}

impl Walk {
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

    /// Plan one directory whose tree is `tree`: create its subdirectories
    /// and return them, to be walked next.
    fn dir(
        &mut self,
        tree_id: &Id,
        tree: &Tree,
        target: &Path,
        mut path: Vec<Vec<u8>>,
    ) -> Result<Vec<(Id, DirContext)>> {
        let mut subdirs = Vec::new();
        for entry in &tree.entries {
            if entry.name.is_empty() || entry.name == b"." || entry.name == b".." || entry.name.contains(&b'/') {
                return Err(Error::damaged(format!("tree {}", tree_id.short()), "an entry has an unsafe name"));
            }
            path.push(entry.name.clone());
            let selected = self.select(&path);
            if matches!(selected, Selected::All) {
                self.selected += 1;
            }
            let dest = target.join(std::ffi::OsStr::from_bytes(&entry.name));
            match (&selected, &entry.kind) {
                (Selected::No, _) => {}
                (_, EntryKind::Dir { tree }) => {
                    match std::fs::create_dir(&dest) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
                        Err(e) => return Err(Error::io(&dest, e)),
                    }
                    self.summary.dirs += 1;
                    self.dirs.push((dest.clone(), entry.meta.clone()));
                    subdirs.push((*tree, (dest, path.clone())));
                }
                (Selected::Ancestor, _) => {}
                (Selected::All, EntryKind::File(content)) => {
                    self.summary.files += 1;
                    self.summary.bytes += entry.meta.size;
                    if let Some(group) = content.hardlink {
                        if let Some(first) = self.seen_links.get(&group) {
                            self.links.push((dest, first.clone()));
                            path.pop();
                            continue;
                        }
                        self.seen_links.insert(group, dest.clone());
                    }
                    let in_snapshot: PathBuf = std::iter::once(Path::new("/").to_path_buf())
                        .chain(path.iter().map(|c| PathBuf::from(std::ffi::OsStr::from_bytes(c))))
                        .collect();
                    self.files.push(FileJob { path: dest, in_snapshot, entry: entry.clone() });
                }
                (Selected::All, _) => {
                    self.summary.other += 1;
                    self.others.push((dest, entry.clone()));
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

/// Write file contents, pack by pack: every needed blob is read once, in
/// pack order, a few MiB per request, and written to every place it goes —
/// what makes a restore from object storage as fast as from a disk. Files
/// are created at their final length first (holes stay holes); a file gets
/// its metadata from the thread that writes its last piece, through the
/// descriptor that wrote it. File system work uses `threads`, reads
/// `transfers` threads (more for a bucket, whose requests wait on the network).
fn write_files(repo: &Repository, index: &Index, files: Vec<FileJob>, threads: usize, transfers: usize) -> Result<()> {
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
            let of = t.first().map(|t| files[t.file].in_snapshot.display().to_string()).unwrap_or_default();
            Error::damaged(format!("chunk {} (of {of})", id.short()), "not in the index")
        })?;
        blobs.push((*id, *loc));
    }
    let reads = plan_pack_reads(blobs);

    let names: Vec<Mutex<NameCache>> = (0..threads).map(|_| Mutex::new(NameCache::default())).collect();
    for_each_parallel_with(files.len(), &names, FILES_PER_GRAB, |i, names| {
        let FileJob { path, entry, .. } = &files[i];
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(path).at(path)?;
        file.set_len(lengths[i]).at(path)?;
        if pieces_left[i].load(Ordering::Relaxed) == 0 {
            apply_metadata(path, Some(&file), &entry.meta, false, names)?;
        }
        Ok(())
    })?;
    let writers = Writers { targets: &targets, files: &files, pieces_left: &pieces_left };
    let caches: Vec<Mutex<WriterState>> = (0..transfers).map(|_| Mutex::new(WriterState::default())).collect();
    for_each_parallel_with(reads.len(), &caches, 1, |i, state| writers.write_read(repo, &reads[i], state))
}

/// What the threads writing file contents share.
struct Writers<'a> {
    targets: &'a HashMap<Id, Vec<Target>>,
    files: &'a [FileJob],
    /// Pieces of each file not written yet; whoever writes the last one
    /// applies the file's metadata.
    pieces_left: &'a [AtomicU32],
}

/// One writing thread's own state: its reads, its open files, its names.
#[derive(Default)]
struct WriterState {
    packs: PackFiles,
    open: HashMap<usize, File>,
    names: NameCache,
}

impl Writers<'_> {
    /// Fetch one pack read, open each blob (authenticated, id checked) and
    /// write it wherever it goes.
    fn write_read(&self, repo: &Repository, read: &PackRead, state: &mut WriterState) -> Result<()> {
        let files = self.files;
        let bytes = repo.read_pack_range(read, &mut state.packs)?;
        for (id, loc, sealed) in sealed_blobs(read, &bytes) {
            let places = self.targets.get(id).map(Vec::as_slice).unwrap_or_default();
            let of = |e: Error| match e {
                Error::Damaged { what, detail } => Error::Damaged {
                    what: format!(
                        "{what} (of {})",
                        places.first().map(|t| files[t.file].in_snapshot.display().to_string()).unwrap_or_default()
                    ),
                    detail,
                },
                other => other,
            };
            let sealed = sealed.map_err(of)?;
            let plain = repo.open_blob(id, loc, sealed).map_err(of)?;
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
                let FileJob { path, entry, .. } = &files[t.file];
                let file = match state.open.entry(t.file) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(OpenOptions::new().write(true).open(path).at(path)?)
                    }
                };
                file.write_all_at(data, t.at).at(path)?;
                if self.pieces_left[t.file].fetch_sub(1, Ordering::AcqRel) == 1 {
                    apply_metadata(path, Some(file), &entry.meta, false, &mut state.names)?;
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
    let mut packs = PackFiles::default();
    let mut written = 0u64;
    let zeros = vec![0u8; 1 << 16];
    for piece in &content.pieces {
        match piece {
            Piece::Hole { len } => {
                let mut left = *len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    out.write_all(&zeros[..n]).at(path)?;
                    left -= n as u64;
                }
            }
            Piece::Chunk { id, .. } | Piece::Slice { id, .. } => {
                let loc =
                    index.get(id).ok_or_else(|| Error::damaged(format!("chunk {}", id.short()), "not in the index"))?;
                let data = repo.read_blob_ahead(id, loc, &index, &mut packs)?;
                let bytes = match piece {
                    Piece::Slice { offset, len, .. } => data
                        .get(*offset as usize..(*offset + *len) as usize)
                        .ok_or_else(|| Error::damaged(format!("chunk {}", id.short()), "slice out of range"))?,
                    _ => &data[..],
                };
                out.write_all(bytes).at(path)?;
            }
        }
        written += piece.len();
    }
    Ok(written)
}

/// Restore into `opts.target` so that an interrupted restore never leaves a
/// half-old tree: everything is written into a staging directory beside the
/// target, which then takes the target's place in one rename (an atomic
/// exchange when the target exists and `overwrite` allows replacing it).
pub fn restore_staged(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    overwrite: bool,
) -> Result<RestoreSummary> {
    let target = &opts.target;
    let non_empty = std::fs::read_dir(target).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && !overwrite {
        return Err(Error::Invalid(format!(
            "{} exists and is not empty; pass --overwrite to replace it, or restore elsewhere",
            target.display()
        )));
    }
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).at(parent)?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "restore".into());
    let staging = parent.join(format!(".{name}.holdfast-partial-{}", Id::random()?.short()));
    let staged = RestoreOptions { target: staging.clone(), include: opts.include.clone(), threads: opts.threads };
    let summary = match restore(repo, snapshot, &staged) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if target.exists() {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &staging,
            nix::fcntl::AT_FDCWD,
            target,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| Error::io(target, std::io::Error::from(e)))?;
        // The old tree now sits at the staging path.
        std::fs::remove_dir_all(&staging).at(&staging)?;
    } else {
        std::fs::rename(&staging, target).at(target)?;
    }
    crate::engine::backend::sync_dir(parent)?;
    Ok(summary)
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
