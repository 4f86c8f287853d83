//! Repair: bring a damaged repository back as far as its packs allow.
//!
//! - [`repair_index`] rebuilds the index from the packs themselves. Every
//!   pack carries a sealed header listing its blobs (see `pack`), bound to
//!   the pack's bytes, so a repository whose index files are all lost comes
//!   back whole: each pack is read, its header authenticated, and one new
//!   index file lists every readable pack; only then do the old index files
//!   go (a repair killed half-way leaves blobs listed twice, which is
//!   harmless). Missing layout directories are recreated.
//! - [`repair_snapshots`] writes, for each snapshot that needs something
//!   that can no longer be read, a new snapshot without it (same time, host,
//!   paths and job record, tagged `repaired`, naming what was lost). The
//!   damaged snapshot stays until the user forgets it.
//!
//! Both have a dry run that changes nothing. Do not run a repair at the
//! same time as a prune of the same repository.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::engine::backend::PACKS;
use crate::engine::crypto::{Id, ObjectKind};
use crate::engine::index::{Index, IndexFile};
use crate::engine::pack::IndexedPack;
use crate::engine::pack::{PackWriter, read_header};
use crate::engine::repository::{PackFiles, Repository};
use crate::engine::snapshot::{Repaired, Snapshot};
use crate::engine::tree::{EntryKind, Tree};
use crate::error::{Error, Result};

/// What `repair index` did (or would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct IndexRepair {
    pub dry_run: bool,
    pub packs_read: usize,
    pub packs_indexed: usize,
    pub blobs_indexed: usize,
    /// Packs that were in no readable index before and are now.
    pub packs_recovered: usize,
    /// Packs whose header could not be read: name and reason.
    pub packs_unreadable: Vec<(String, String)>,
    pub index_files_replaced: usize,
    /// Directories of the layout that were missing (and are made again).
    pub directories_recreated: Vec<String>,
    /// Blobs the snapshots need that are still in no pack that can be read.
    pub blobs_still_missing: usize,
}

/// Rebuild the index from the packs.
pub fn repair_index(repo: &Repository, dry_run: bool) -> Result<IndexRepair> {
    let backend = repo.backend();
    let mut report = IndexRepair { dry_run, ..Default::default() };
    report.directories_recreated = backend.missing_layout()?;
    if !dry_run && !report.directories_recreated.is_empty() {
        backend.create_layout()?;
    }
    let old_files: Vec<String> = backend.list(crate::engine::backend::INDEX)?.into_iter().map(|f| f.name).collect();
    let (before, _) = repo.load_index()?;
    let names: Vec<String> = backend.list(PACKS)?.into_iter().map(|f| f.name).collect();
    report.packs_read = names.len();
    let read = |name: &String| -> Result<IndexedPack> {
        let id = Id::from_hex(name).ok_or_else(|| Error::damaged("pack", format!("unexpected file name {name}")))?;
        let bytes = backend.get(PACKS, name)?;
        Ok(IndexedPack { pack: id, blobs: read_header(&id, &bytes, repo.keys())? })
    };
    let mut packs = Vec::new();
    for (name, result) in repo.read_many(names, backend.parallelism(), read) {
        match result {
            Ok(p) => packs.push(p),
            Err(e) => report.packs_unreadable.push((name, e.to_string())),
        }
    }
    report.packs_indexed = packs.len();
    report.blobs_indexed = packs.iter().map(|p| p.blobs.len()).sum();
    report.packs_recovered = packs.iter().filter(|p| !before.has_pack(&p.pack)).count();
    let rebuilt = Index::from_files([IndexFile { packs: packs.clone() }]);
    report.blobs_still_missing = unreadable_needs(repo, &rebuilt)?.len();
    report.index_files_replaced = old_files.len();
    if dry_run {
        return Ok(report);
    }
    // New index first, durable; then the old files go.
    if !packs.is_empty() {
        repo.write_index_file(&IndexFile { packs })?;
    }
    for name in &old_files {
        match backend.remove(crate::engine::backend::INDEX, name) {
            Err(e) if e.is_not_found() => {}
            other => other?,
        }
    }
    Ok(report)
}

/// Blobs the snapshots need that `index` does not place (counting only
/// what can be walked).
fn unreadable_needs(repo: &Repository, index: &Index) -> Result<HashSet<Id>> {
    let (snaps, _) = repo.snapshots_from_files()?;
    let mut missing = HashSet::new();
    let mut seen: HashSet<Id> = snaps.iter().map(|(_, s)| s.root).collect();
    let roots = seen.iter().map(|id| (*id, ())).collect();
    repo.walk_trees_tolerant(index, roots, |id, tree, ()| {
        let mut next = Vec::new();
        let Ok(tree) = tree else {
            missing.insert(*id);
            return Ok(next);
        };
        for e in &tree.entries {
            match &e.kind {
                EntryKind::Dir { tree } if seen.insert(*tree) => next.push((*tree, ())),
                EntryKind::File(c) => {
                    missing.extend(c.pieces.iter().filter_map(|p| p.chunk()).filter(|id| !index.contains(id)))
                }
                _ => {}
            }
        }
        Ok(next)
    })?;
    Ok(missing)
}

/// One snapshot `repair snapshots` looked at and found damaged.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRepair {
    pub snapshot: String,
    /// The new snapshot written without what was lost (none in a dry run,
    /// or when the snapshot file itself cannot be read).
    pub repaired_as: Option<String>,
    /// Paths inside the snapshot that could not be read.
    pub lost: Vec<String>,
    /// Why it could not be repaired at all.
    pub error: Option<String>,
}

/// Write a repaired copy of every snapshot that needs what cannot be read:
/// blobs in no index, in a missing or truncated pack, or (with `read_data`,
/// which reads every pack) whose bytes do not authenticate.
pub fn repair_snapshots(repo: &Repository, dry_run: bool, read_data: bool) -> Result<Vec<SnapshotRepair>> {
    let (index, damaged_index) = repo.load_index()?;
    let on_disk: HashMap<Id, u64> =
        repo.backend().list(PACKS)?.into_iter().filter_map(|f| Some((Id::from_hex(&f.name)?, f.size))).collect();
    // What looks lost may only be unindexed: never drop it from a snapshot
    // while the index itself is in doubt.
    let unindexed = on_disk.keys().filter(|p| !index.has_pack(p)).count();
    let index_in_doubt = (!damaged_index.is_empty() || unindexed > 0).then(|| {
        format!(
            "{} index file(s) cannot be read and {unindexed} pack(s) are in no index: what looks lost may only be \
             unindexed. Run `holdfast repair index` first, then `holdfast repair snapshots`",
            damaged_index.len()
        )
    });
    let mut bad_packs: HashSet<Id> =
        index.packs().filter(|(p, end)| on_disk.get(*p).is_none_or(|size| size < end)).map(|(p, _)| *p).collect();
    let mut bad_blobs: HashSet<Id> = HashSet::new();
    if read_data {
        let threads = crate::engine::parallel::cpus().max(repo.backend().parallelism());
        let (packs, blobs, _) = crate::engine::check::read_all_packs(repo, &index, &on_disk, threads, None);
        bad_packs.extend(packs.into_keys());
        bad_blobs.extend(blobs.into_keys());
    }
    let readable = |id: &Id| !bad_blobs.contains(id) && index.get(id).is_some_and(|loc| !bad_packs.contains(&loc.pack));
    let (snaps, unreadable) = repo.snapshots_from_files()?;
    let already: HashSet<Id> = snaps.iter().filter_map(|(_, s)| s.repaired.as_ref().map(|r| r.from)).collect();
    let mut out: Vec<SnapshotRepair> = unreadable
        .into_iter()
        .map(|(name, e)| SnapshotRepair {
            snapshot: name.clone(),
            repaired_as: None,
            lost: Vec::new(),
            error: Some(format!(
                "the snapshot itself cannot be read ({e}); nothing to repair from: {}",
                crate::engine::backend::removing_snapshot_file(&name)
            )),
        })
        .collect();
    if let Some(why) = &index_in_doubt {
        let mut probe = Rewriter::new(repo, &index, &readable, true);
        for (_, snap) in &snaps {
            if !probe.tree(&snap.root)?.1.is_empty() {
                return Err(Error::Invalid(format!("{why}; nothing was written")));
            }
        }
    }
    let mut rewriter = Rewriter::new(repo, &index, &readable, dry_run);
    for (id, snap) in &snaps {
        if already.contains(id) {
            continue;
        }
        let (root, lost) = rewriter.tree(&snap.root)?;
        if lost.is_empty() {
            continue;
        }
        let lost: Vec<String> = lost.into_iter().map(|p| format!("/{p}")).collect();
        let Some(root) = root else {
            out.push(SnapshotRepair {
                snapshot: id.to_hex(),
                repaired_as: None,
                lost,
                error: Some(format!(
                    "its root tree {} cannot be read (in no index, or its pack is missing or damaged): nothing \
                     is left to keep; `holdfast repair index` if an index file was lost, else `holdfast forget {}`",
                    snap.root.short(),
                    id.short()
                )),
            });
            continue;
        };
        let repaired_as = if dry_run {
            None
        } else {
            rewriter.flush()?;
            let mut summary = snap.summary.clone();
            summary.warnings.push(format!("repaired from snapshot {}: {} path(s) lost", id.short(), lost.len()));
            let mut tags = snap.tags.clone();
            if !tags.iter().any(|t| t == "repaired") {
                tags.push("repaired".into());
            }
            let new = Snapshot {
                root,
                tags,
                summary,
                repaired: Some(Repaired { from: *id, lost: lost.clone() }),
                ..snap.clone()
            };
            Some(repo.write_snapshot(&new)?.to_hex())
        };
        out.push(SnapshotRepair { snapshot: id.to_hex(), repaired_as, lost, error: None });
    }
    Ok(out)
}

/// Rewrites trees without what cannot be read; each tree once.
struct Rewriter<'a, F: Fn(&Id) -> bool> {
    repo: &'a Repository,
    index: &'a Index,
    readable: &'a F,
    /// Tree -> its rewrite (`None`: unreadable) and the paths lost below it.
    done: HashMap<Id, (Option<Id>, Vec<String>)>,
    pack: Option<PackWriter>,
    /// Packs written, to be indexed.
    packs: Vec<IndexedPack>,
    /// Trees stored by this repair.
    stored: HashSet<Id>,
    dry_run: bool,
}

impl<'a, F: Fn(&Id) -> bool> Rewriter<'a, F> {
    fn new(repo: &'a Repository, index: &'a Index, readable: &'a F, dry_run: bool) -> Self {
        Rewriter {
            repo,
            index,
            readable,
            done: HashMap::new(),
            pack: None,
            packs: Vec::new(),
            stored: HashSet::new(),
            dry_run,
        }
    }

    /// The tree `id` without what cannot be read: its new id (the same when
    /// nothing was lost; `None` when the tree itself cannot be read) and the
    /// lost paths, relative to it.
    fn tree(&mut self, id: &Id) -> Result<(Option<Id>, Vec<String>)> {
        if let Some(done) = self.done.get(id) {
            return Ok(done.clone());
        }
        let loaded = if (self.readable)(id) {
            self.repo.load_tree(self.index, id, &mut PackFiles::default()).ok()
        } else {
            None
        };
        let Some(tree) = loaded else {
            self.done.insert(*id, (None, vec![String::new()]));
            return Ok((None, vec![String::new()]));
        };
        let mut lost = Vec::new();
        let mut entries = Vec::with_capacity(tree.entries.len());
        for mut entry in tree.entries {
            let name = String::from_utf8_lossy(&entry.name).into_owned();
            match &mut entry.kind {
                EntryKind::Dir { tree: sub } => {
                    let (new, below) = self.tree(sub)?;
                    lost.extend(below.iter().map(|p| if p.is_empty() { name.clone() } else { format!("{name}/{p}") }));
                    match new {
                        Some(new) => *sub = new,
                        None => continue,
                    }
                }
                EntryKind::File(c) if !c.pieces.iter().filter_map(|p| p.chunk()).all(|id| (self.readable)(id)) => {
                    lost.push(name);
                    continue;
                }
                _ => {}
            }
            entries.push(entry);
        }
        let result = if lost.is_empty() { Some(*id) } else { Some(self.store(&Tree { entries })?) };
        self.done.insert(*id, (result, lost.clone()));
        Ok((result, lost))
    }

    /// Store a rewritten tree (unless the repository has it).
    fn store(&mut self, tree: &Tree) -> Result<Id> {
        let bytes = tree.encode();
        let keys = self.repo.keys();
        let id = keys.blob_id(&bytes);
        if self.dry_run || self.index.contains(&id) || !self.stored.insert(id) {
            return Ok(id);
        }
        let sealed = keys.seal(ObjectKind::Tree, &id, &bytes, self.repo.config().compression_level)?;
        let w = self.pack.get_or_insert_with(PackWriter::new);
        w.add(id, ObjectKind::Tree, &sealed, bytes.len());
        if w.size() >= self.repo.config().pack_size as u64 {
            self.flush_pack()?;
        }
        Ok(id)
    }

    fn flush_pack(&mut self) -> Result<()> {
        if let Some(w) = self.pack.take().filter(|w| !w.is_empty()) {
            let pack = w.finish(self.repo.keys())?;
            self.repo.backend().put_new(PACKS, &pack.id.to_hex(), pack.bytes)?;
            self.packs.push(IndexedPack { pack: pack.id, blobs: pack.blobs });
        }
        Ok(())
    }

    /// Make every tree written so far durable and indexed (before a
    /// snapshot refers to them).
    fn flush(&mut self) -> Result<()> {
        self.flush_pack()?;
        if !self.packs.is_empty() {
            self.repo.write_index_file(&IndexFile { packs: std::mem::take(&mut self.packs) })?;
        }
        Ok(())
    }
}
