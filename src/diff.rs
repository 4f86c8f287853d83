//! `diff`: what changed between two snapshots — added, removed, modified,
//! type and metadata-only changes — found by comparing trees.
//!
//! A directory whose tree id is the same on both sides is unchanged with
//! everything below it and is not read, so two snapshots of a big tree that
//! differ in a few places cost a few directory reads. Files compare by
//! their chunk ids, without reading data, except small files stored as
//! slices of a shared chunk: a touched small file is stored again in a new
//! chunk, so when such a file's size is unchanged its bytes are compared.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::engine::crypto::Id;
use crate::engine::index::Index;
use crate::engine::repository::{PackFiles, Repository, TreePacks, tree_not_indexed};
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::{Entry, EntryKind, FLAGS_UNKNOWN, FileContent, Metadata, Piece, Tree};
use crate::error::Error;
use crate::listing::base64_unless_utf8;

/// How an entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    /// The content differs (a file's bytes, a link's target, a device's number).
    Modified,
    /// A file became a directory, a link, …: shown once, with what was
    /// below a directory on either side listed as removed or added.
    Type,
    /// Same content; mode, owner, times, attributes or flags differ.
    Metadata,
}

impl Change {
    /// The one-character mark of a text listing.
    pub fn mark(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Type => 'T',
            Change::Metadata => 'U',
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DiffEntry {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_base64: Option<String>,
    #[serde(skip)]
    pub path_bytes: Vec<u8>,
    pub change: Change,
    /// The entry's type (after the change; before it, when removed).
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_after: Option<u64>,
    /// Which metadata differs: mode, owner, group, mtime, xattrs, flags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<&'static str>,
}

/// Counts of one kind of change.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    /// Size of the files (for modified files: after).
    pub bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct DiffStat {
    pub added: Counts,
    pub removed: Counts,
    pub modified: Counts,
    pub type_changed: u64,
    pub metadata_only: u64,
    /// Directories read on both sides together (unchanged ones are not).
    pub directories_read: u64,
}

#[derive(Debug, Serialize)]
pub struct Diff {
    pub from: String,
    pub to: String,
    pub changes: Vec<DiffEntry>,
    pub stat: DiffStat,
}

/// What changed from `from` to `to`, only at or below `under` when given;
/// changes sorted by path.
pub fn diff(repo: &Repository, from: (&Id, &Snapshot), to: (&Id, &Snapshot), under: Option<&Path>) -> Result<Diff> {
    let (index, _) = repo.load_index()?;
    // A path in neither snapshot is a mistake (a typo, a path from another
    // host), not "no changes".
    if let Some(u) = under
        && u.components().any(|c| !matches!(c, std::path::Component::RootDir))
    {
        let there = |s: &Snapshot| crate::engine::restore::find_entry(repo, &index, s, u).map(|e| e.is_some());
        if !there(from.1)? && !there(to.1)? {
            return Err(Error::Invalid(format!("{} is in neither snapshot", u.display())).into());
        }
    }
    let mut walk = Walk {
        repo,
        index: &index,
        under: under.map(|u| Path::new("/").join(u)),
        changes: Vec::new(),
        stat: DiffStat::default(),
        packs: PackFiles::default(),
        blobs: HashMap::new(),
    };
    let mut kept = TreePacks::default();
    let empty = Tree::default();
    let mut level = Vec::new();
    if from.1.root != to.1.root {
        level.push(Pair { before: Some(from.1.root), after: Some(to.1.root), dir: PathBuf::from("/") });
    }
    while !level.is_empty() {
        let ids = level.iter().flat_map(|p| [p.before, p.after]).flatten();
        let trees = repo.load_trees(&index, ids, &mut kept);
        let tree = |id: Option<Id>| -> Result<&Tree> {
            match id {
                None => Ok(&empty),
                Some(id) => match trees.get(&id) {
                    Some(loaded) => Ok(loaded.as_ref().map_err(Error::clone)?),
                    None => Err(tree_not_indexed(&id).into()),
                },
            }
        };
        let mut next = Vec::new();
        for pair in level {
            let (before, after) = (tree(pair.before)?, tree(pair.after)?);
            walk.stat.directories_read += pair.before.is_some() as u64 + pair.after.is_some() as u64;
            walk.compare_dirs(&pair.dir, before, after, &mut next)?;
        }
        level = next;
    }
    walk.changes.sort_by(|a, b| a.path_bytes.cmp(&b.path_bytes));
    Ok(Diff { from: from.0.to_hex(), to: to.0.to_hex(), changes: walk.changes, stat: walk.stat })
}

/// Two directories at one path to compare (one side absent: everything on
/// the other side was added or removed).
struct Pair {
    before: Option<Id>,
    after: Option<Id>,
    dir: PathBuf,
}

struct Walk<'a> {
    repo: &'a Repository,
    index: &'a Index,
    under: Option<PathBuf>,
    changes: Vec<DiffEntry>,
    stat: DiffStat,
    packs: PackFiles,
    /// Chunks read to compare small files (a directory's small files share
    /// a few), dropped when it grows past a few dozen.
    blobs: HashMap<Id, Vec<u8>>,
}

impl Walk<'_> {
    fn compare_dirs(&mut self, dir: &Path, before: &Tree, after: &Tree, next: &mut Vec<Pair>) -> Result<()> {
        let (mut i, mut j) = (0, 0);
        while i < before.entries.len() || j < after.entries.len() {
            let (b, a) = match (before.entries.get(i), after.entries.get(j)) {
                (Some(b), Some(a)) if b.name == a.name => (Some(b), Some(a)),
                (Some(b), Some(a)) if b.name < a.name => (Some(b), None),
                (Some(_), Some(a)) => (None, Some(a)),
                (b, a) => (b, a),
            };
            i += b.is_some() as usize;
            j += a.is_some() as usize;
            let name = b.or(a).map(|e| e.name.as_slice()).unwrap_or_default();
            let path = dir.join(OsStr::from_bytes(name));
            let wanted = self.under.as_ref().is_none_or(|u| path.starts_with(u));
            let leads_there = self.under.as_ref().is_some_and(|u| u.starts_with(&path));
            if !wanted && !leads_there {
                continue;
            }
            let subtree = |e: Option<&Entry>| match e.map(|e| &e.kind) {
                Some(EntryKind::Dir { tree }) => Some(*tree),
                _ => None,
            };
            let (tb, ta) = (subtree(b), subtree(a));
            if let (Some(b), Some(a)) = (b, a) {
                if wanted {
                    self.compare_entries(&path, b, a)?;
                }
                // Unchanged below when the trees are the same.
                if tb != ta {
                    next.push(Pair { before: tb, after: ta, dir: path });
                }
                continue;
            }
            if wanted {
                match (b, a) {
                    (Some(b), None) => self.record(&path, Change::Removed, b, Vec::new(), Some(b.meta.size), None),
                    (None, Some(a)) => self.record(&path, Change::Added, a, Vec::new(), None, Some(a.meta.size)),
                    _ => {}
                }
            }
            if tb.is_some() || ta.is_some() {
                next.push(Pair { before: tb, after: ta, dir: path });
            }
        }
        Ok(())
    }

    /// One name on both sides.
    fn compare_entries(&mut self, path: &Path, b: &Entry, a: &Entry) -> Result<()> {
        let sizes = (Some(b.meta.size), Some(a.meta.size));
        if std::mem::discriminant(&b.kind) != std::mem::discriminant(&a.kind) {
            self.record(path, Change::Type, a, Vec::new(), sizes.0, sizes.1);
            return Ok(());
        }
        let metadata = metadata_changes(&b.meta, &a.meta);
        let same_content = match (&b.kind, &a.kind) {
            (EntryKind::File(cb), EntryKind::File(ca)) => self.same_file_content(cb, ca, b.meta.size, a.meta.size)?,
            (EntryKind::Dir { .. }, EntryKind::Dir { .. }) => true,
            (kb, ka) => kb == ka,
        };
        if !same_content {
            self.record(path, Change::Modified, a, metadata, sizes.0, sizes.1);
        } else if !metadata.is_empty() {
            self.record(path, Change::Metadata, a, metadata, sizes.0, sizes.1);
        }
        Ok(())
    }

    fn same_file_content(&mut self, b: &FileContent, a: &FileContent, size_b: u64, size_a: u64) -> Result<bool> {
        if b.pieces == a.pieces {
            return Ok(true);
        }
        if size_b != size_a {
            return Ok(false);
        }
        // Different chunk ids, same size: only a small file stored as a
        // slice of a shared chunk on at least one side is worth reading to
        // tell (the same bytes may be a slice in one snapshot and a chunk of
        // their own in the other). Whole chunks alone differ when their ids do.
        let has_slice = |c: &FileContent| c.pieces.iter().any(|p| matches!(p, Piece::Slice { .. }));
        let has_hole = |c: &FileContent| c.pieces.iter().any(|p| p.chunk().is_none());
        if size_b > SMALL_FILE || !(has_slice(b) || has_slice(a)) || has_hole(b) || has_hole(a) {
            return Ok(false);
        }
        Ok(self.bytes_of(&b.pieces)? == self.bytes_of(&a.pieces)?)
    }

    fn bytes_of(&mut self, pieces: &[Piece]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for p in pieces {
            let (id, offset, len) = match p {
                Piece::Slice { id, offset, len } => (id, offset, len),
                Piece::Chunk { id, len } => (id, &0, len),
                Piece::Hole { .. } => continue,
            };
            if !self.blobs.contains_key(id) {
                if self.blobs.len() >= 64 {
                    self.blobs.clear();
                }
                let loc = self
                    .index
                    .get(id)
                    .ok_or_else(|| Error::damaged(format!("chunk {}", id.short()), "not in the index"))?;
                self.blobs.insert(*id, self.repo.read_blob(id, &loc, &mut self.packs)?);
            }
            let data = self.blobs.get(id).map(Vec::as_slice).unwrap_or_default();
            let slice = data
                .get(*offset as usize..(*offset as usize).saturating_add(*len as usize))
                .ok_or_else(|| Error::damaged(format!("chunk {}", id.short()), "slice out of range"))?;
            out.extend_from_slice(slice);
        }
        Ok(out)
    }

    fn record(
        &mut self,
        path: &Path,
        change: Change,
        e: &Entry,
        metadata: Vec<&'static str>,
        size_before: Option<u64>,
        size_after: Option<u64>,
    ) {
        let counts = match change {
            Change::Added => Some(&mut self.stat.added),
            Change::Removed => Some(&mut self.stat.removed),
            Change::Modified => Some(&mut self.stat.modified),
            Change::Type => {
                self.stat.type_changed += 1;
                None
            }
            Change::Metadata => {
                self.stat.metadata_only += 1;
                None
            }
        };
        if let Some(c) = counts {
            match &e.kind {
                EntryKind::File(_) => {
                    c.files += 1;
                    c.bytes += e.meta.size;
                }
                EntryKind::Dir { .. } => c.dirs += 1,
                _ => c.other += 1,
            }
        }
        let path_bytes = path.as_os_str().as_bytes().to_vec();
        let (size_before, size_after) = match (&e.kind, change) {
            (EntryKind::File(_), Change::Added) => (None, size_after),
            (EntryKind::File(_), Change::Removed) => (size_before, None),
            (EntryKind::File(_), _) => (size_before, size_after),
            _ => (None, None),
        };
        self.changes.push(DiffEntry {
            path: path.to_string_lossy().into_owned(),
            path_base64: base64_unless_utf8(&path_bytes),
            path_bytes,
            change,
            kind: e.kind.name(),
            size_before,
            size_after,
            metadata,
        });
    }
}

/// Files up to this size stored as slices are read to compare them.
const SMALL_FILE: u64 = 4 << 20;

/// What differs between two entries' metadata that a restore would bring
/// back (not the change time or inode, which no restore keeps).
fn metadata_changes(b: &Metadata, a: &Metadata) -> Vec<&'static str> {
    let mut out = Vec::new();
    if b.mode != a.mode {
        out.push("mode");
    }
    if b.uid != a.uid || b.user != a.user {
        out.push("owner");
    }
    if b.gid != a.gid || b.group != a.group {
        out.push("group");
    }
    if b.mtime != a.mtime {
        out.push("mtime");
    }
    if b.xattrs != a.xattrs {
        out.push("xattrs");
    }
    if (b.flags | a.flags) & FLAGS_UNKNOWN == 0 && b.flags != a.flags {
        out.push("flags");
    }
    out
}
