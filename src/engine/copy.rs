//! Copy snapshots from one repository to another that shares its keys
//! (created with `init --copy-params-from`): only the blobs the target lacks
//! move, read pack by pack, as sealed bytes (authenticated on the way, never
//! re-chunked or re-encrypted); then the target's index, then its snapshots — the same
//! write order as a backup, so an interrupted copy leaves only unreferenced
//! packs and the next copy catches up.

use std::collections::HashSet;
use std::sync::Mutex;

use serde::Serialize;

use crate::engine::backup::ship;
use crate::engine::crypto::{Id, ObjectKind};
use crate::engine::index::{BlobLocation, IndexFile};
use crate::engine::pack::{Checkpoints, PackUploader, PackWriter};
use crate::engine::parallel::for_each_parallel_with;
use crate::engine::progress::Progress;
use crate::engine::repository::{PackFiles, Repository, plan_pack_reads, sealed_blobs};
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::EntryKind;
use crate::error::{Error, Result};

#[derive(Debug, Default, Clone, Serialize)]
pub struct CopyReport {
    pub snapshots_copied: usize,
    pub snapshots_present: usize,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    /// Ids of the new snapshots in the target, oldest first.
    pub copied: Vec<String>,
}

/// What makes two copies of a snapshot the same snapshot (their files differ:
/// each is sealed with its own nonce).
fn identity(s: &Snapshot) -> (jiff::Timestamp, String, Id, Vec<String>) {
    (s.time, s.host.clone(), s.root, s.paths.clone())
}

/// Copy every snapshot of `from` that `wanted` selects and `to` lacks.
pub fn copy_snapshots(
    from: &Repository,
    to: &Repository,
    wanted: &dyn Fn(&Snapshot) -> bool,
    progress: Option<&Progress>,
) -> Result<CopyReport> {
    if !from.shares_keys_with(to) {
        return Err(Error::Invalid(format!(
            "{} and {} do not share keys and chunker parameters; create the target with \
             `holdfast init --copy-params-from SOURCE` to copy between them",
            from.location(),
            to.location()
        )));
    }
    // Like a backup: registered before reading marks and the index.
    let _running = crate::engine::running::register_backup(to)?;
    let marked: HashSet<Id> = crate::engine::running::marked_packs(to)?.into_keys().collect();
    let (target_index, _) = to.load_index()?;
    let target_index = target_index.without_packs(&marked);
    let (source_index, _) = from.load_index()?;
    let (have, _) = to.snapshots()?;
    let have: HashSet<_> = have.iter().map(|(_, s)| identity(s)).collect();
    let (snaps, _) = from.snapshots()?;
    let mut report = CopyReport::default();
    // Blobs the target has, or that this copy already plans to move.
    let mut planned: HashSet<Id> = HashSet::new();
    let mut needed = Vec::new();
    let mut todo = Vec::new();
    for (_, snap) in snaps.iter().filter(|(_, s)| wanted(s)) {
        if have.contains(&identity(snap)) {
            report.snapshots_present += 1;
        } else {
            todo.push(snap.clone());
        }
    }
    // Every tree is walked, even one the target has: a tree in the index
    // does not prove that every chunk below it still is.
    let mut walked: HashSet<Id> = todo.iter().map(|s| s.root).collect();
    let roots = walked.iter().map(|id| (*id, ())).collect();
    from.walk_trees(&source_index, roots, |tree_id, tree, ()| {
        let mut want = |id: Id| -> Result<()> {
            if !target_index.contains(&id) && planned.insert(id) {
                let loc = source_index
                    .get(&id)
                    .ok_or_else(|| Error::damaged(format!("blob {}", id.short()), "not in the source index"))?;
                needed.push((id, loc));
            }
            Ok(())
        };
        let mut subtrees = Vec::new();
        for e in &tree.entries {
            match &e.kind {
                EntryKind::Dir { tree } if walked.insert(*tree) => subtrees.push((*tree, ())),
                EntryKind::File(c) => c.pieces.iter().filter_map(|p| p.chunk()).try_for_each(|id| want(*id))?,
                _ => {}
            }
        }
        want(*tree_id)?;
        Ok(subtrees)
    })?;

    let moved = transfer_blobs(from, to, needed, progress)?;
    report.blobs_copied = moved.blobs;
    report.bytes_copied = moved.bytes;
    for snap in &todo {
        report.copied.push(to.write_snapshot(snap)?.to_hex());
        report.snapshots_copied += 1;
    }
    Ok(report)
}

/// What [`transfer_blobs`] stored.
#[derive(Debug, Default)]
pub(crate) struct Transferred {
    pub blobs: u64,
    pub bytes: u64,
}

/// Store the sealed blobs `needed` (read from `from` where the locations
/// say) in new packs of `to`: read pack by pack, a few MiB per read, on
/// several threads, each blob authenticated on the way and moved as it is.
/// Then an index file names the new packs (after them, as in a backup).
/// Used by `copy` and by prune's repacking (where `from` is `to`).
pub(crate) fn transfer_blobs(
    from: &Repository,
    to: &Repository,
    needed: Vec<(Id, BlobLocation)>,
    progress: Option<&Progress>,
) -> Result<Transferred> {
    let uploader = PackUploader::start(to.shared_backend(), to.backend().parallelism(), Checkpoints::default());
    let writers =
        Mutex::new(Writers { to, uploader: &uploader, data: None, trees: None, moved: Transferred::default() });
    let reads = plan_pack_reads(needed);
    if let Some(p) = progress {
        p.add_total(0, reads.iter().map(|r| r.end - r.start).sum());
        p.total_known();
    }
    let threads = crate::engine::parallel::cpus();
    let caches: Vec<Mutex<PackFiles>> =
        (0..threads.max(from.backend().parallelism())).map(|_| Mutex::new(PackFiles::default())).collect();
    for_each_parallel_with(reads.len(), &caches, 1, |i, packs| {
        let bytes = from.read_pack_range(&reads[i], packs)?;
        if let Some(p) = progress {
            p.done(0, bytes.len() as u64);
        }
        for (id, loc, sealed) in sealed_blobs(&reads[i], &bytes) {
            let sealed = sealed?;
            let plain = from.open_blob(id, loc, sealed)?;
            let mut writers = writers.lock().map_err(|_| Error::Invalid("a copy thread panicked".into()))?;
            writers.add(id, loc, sealed, plain.len())?;
        }
        Ok(())
    })?;
    let writers = writers.into_inner().map_err(|_| Error::Invalid("a copy thread panicked".into()))?;
    let moved = writers.finish()?;
    let packs = uploader.finish()?;
    if !packs.is_empty() {
        to.write_index_file(&IndexFile { packs })?;
    }
    Ok(moved)
}

/// The target's open packs: chunks and trees apart, as in a backup.
struct Writers<'a> {
    to: &'a Repository,
    uploader: &'a PackUploader,
    data: Option<PackWriter>,
    trees: Option<PackWriter>,
    moved: Transferred,
}

impl Writers<'_> {
    /// Add one sealed blob (already checked to open to its id).
    fn add(&mut self, id: &Id, loc: &BlobLocation, sealed: &[u8], raw_length: usize) -> Result<()> {
        let size = self.to.config().pack_size as u64;
        let slot = if loc.kind == ObjectKind::Tree { &mut self.trees } else { &mut self.data };
        let w = slot.get_or_insert_with(|| {
            if loc.kind == ObjectKind::Tree { PackWriter::new() } else { PackWriter::for_size(size) }
        });
        w.add(*id, loc.kind, sealed, raw_length);
        self.moved.blobs += 1;
        self.moved.bytes += sealed.len() as u64;
        if w.size() >= size
            && let Some(w) = slot.take()
        {
            ship(self.to, self.uploader, w)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Transferred> {
        for w in [self.data.take(), self.trees.take()].into_iter().flatten() {
            ship(self.to, self.uploader, w)?;
        }
        Ok(self.moved)
    }
}
