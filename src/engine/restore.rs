//! Restore: recreate a snapshot's files, or part of them, under a directory.
//!
//! The snapshot's trees are walked once (directories are created as they are
//! met); file contents are then written by all cores, each file with
//! positioned writes so holes stay holes (a sparse file is restored sparse).
//! Hard links, symlinks and special files follow, and directory metadata is
//! applied last, deepest first, so writing into a directory does not spoil
//! its restored mtime. Every chunk is authenticated and its id re-checked
//! before its bytes reach a file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::stat::SFlag;

use crate::engine::crypto::Id;
use crate::engine::fsmeta::{NameCache, apply_metadata, make_node};
use crate::engine::index::Index;
use crate::engine::repository::{PackFiles, Repository};
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
    entry: Entry,
}

/// Restore `snapshot` according to `opts`.
pub fn restore(repo: &Repository, snapshot: &Snapshot, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let (index, _) = repo.load_index()?;
    std::fs::create_dir_all(&opts.target).at(&opts.target)?;
    let include: Vec<Vec<Vec<u8>>> = opts.include.iter().map(|p| components(p)).collect();
    let mut walk = Walk {
        repo,
        index: &index,
        packs: PackFiles::default(),
        include,
        files: Vec::new(),
        links: Vec::new(),
        others: Vec::new(),
        dirs: Vec::new(),
        seen_links: HashMap::new(),
        summary: RestoreSummary::default(),
    };
    walk.dir(&snapshot.root, &opts.target, &mut Vec::new())?;
    if walk.files.is_empty() && walk.others.is_empty() && walk.dirs.is_empty() && !opts.include.is_empty() {
        return Err(Error::Invalid(format!(
            "none of {} is in the snapshot",
            opts.include.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let Walk { files, links, others, dirs, mut summary, .. } = walk;

    write_files(repo, &index, files, opts.threads.max(1))?;

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
        apply_metadata(&path, &entry.meta, is_link, &mut names)?;
    }
    for (path, meta) in dirs.iter().rev() {
        apply_metadata(path, meta, false, &mut names)?;
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
struct Walk<'a> {
    repo: &'a Repository,
    index: &'a Index,
    packs: PackFiles,
    include: Vec<Vec<Vec<u8>>>,
    files: Vec<FileJob>,
    links: Vec<(PathBuf, PathBuf)>,
    others: Vec<(PathBuf, Entry)>,
    dirs: Vec<(PathBuf, Metadata)>,
    seen_links: HashMap<u64, PathBuf>,
    summary: RestoreSummary,
}

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

    fn dir(&mut self, tree_id: &Id, target: &Path, path: &mut Vec<Vec<u8>>) -> Result<()> {
        let tree: Tree = self.repo.load_tree(self.index, tree_id, &mut self.packs)?;
        for entry in tree.entries {
            if entry.name.is_empty() || entry.name == b"." || entry.name == b".." || entry.name.contains(&b'/') {
                return Err(Error::damaged(format!("tree {}", tree_id.short()), "an entry has an unsafe name"));
            }
            path.push(entry.name.clone());
            let selected = self.select(path);
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
                    let tree = *tree;
                    self.dir(&tree, &dest, path)?;
                    self.dirs.push((dest, entry.meta));
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
                    self.files.push(FileJob { path: dest, entry });
                }
                (Selected::All, _) => {
                    self.summary.other += 1;
                    self.others.push((dest, entry));
                }
            }
            path.pop();
        }
        Ok(())
    }
}

/// Write file contents with all threads. Files sharing a chunk (small files
/// of one directory) go to the same thread, which keeps that chunk.
fn write_files(repo: &Repository, index: &Index, files: Vec<FileJob>, threads: usize) -> Result<()> {
    let mut groups: Vec<Vec<FileJob>> = Vec::new();
    let mut last_chunk: Option<Id> = None;
    for f in files {
        let first = match &f.entry.kind {
            EntryKind::File(c) => match c.pieces.first() {
                Some(Piece::Slice { id, .. }) => Some(*id),
                _ => None,
            },
            _ => None,
        };
        match (first, last_chunk, groups.last_mut()) {
            (Some(a), Some(b), Some(g)) if a == b => g.push(f),
            _ => groups.push(vec![f]),
        }
        last_chunk = first;
    }
    let queue = Mutex::new(groups.into_iter());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut packs = PackFiles::default();
                let mut cache: Option<(Id, Arc<Vec<u8>>)> = None;
                let mut names = NameCache::default();
                loop {
                    let group = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(group) = group else { break };
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    for job in group {
                        if let Err(e) = write_file(repo, index, &job, &mut packs, &mut cache, &mut names) {
                            if let Ok(mut fe) = first_error.lock() {
                                fe.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

fn write_file(
    repo: &Repository,
    index: &Index,
    job: &FileJob,
    packs: &mut PackFiles,
    cache: &mut Option<(Id, Arc<Vec<u8>>)>,
    names: &mut NameCache,
) -> Result<()> {
    let EntryKind::File(content) = &job.entry.kind else {
        return Ok(());
    };
    let file: File = OpenOptions::new().write(true).create(true).truncate(true).open(&job.path).at(&job.path)?;
    let mut pos = 0u64;
    for piece in &content.pieces {
        match piece {
            Piece::Hole { len } => pos += len,
            Piece::Chunk { id, .. } | Piece::Slice { id, .. } => {
                let data = match cache {
                    Some((cid, data)) if cid == id => data.clone(),
                    _ => {
                        let loc = index
                            .get(id)
                            .ok_or_else(|| Error::damaged(format!("chunk {}", id.short()), "not in the index"))?;
                        let data = Arc::new(repo.read_blob(id, loc, packs)?);
                        *cache = Some((*id, data.clone()));
                        data
                    }
                };
                let bytes = match piece {
                    Piece::Slice { offset, len, .. } => data
                        .get(*offset as usize..(*offset + *len) as usize)
                        .ok_or_else(|| Error::damaged(format!("chunk {}", id.short()), "slice out of range"))?,
                    _ => &data[..],
                };
                file.write_all_at(bytes, pos).at(&job.path)?;
                pos += bytes.len() as u64;
            }
        }
    }
    file.set_len(pos).at(&job.path)?;
    drop(file);
    apply_metadata(&job.path, &job.entry.meta, false, names)
}
