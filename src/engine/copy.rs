//! Copy snapshots from one repository to another that shares its keys
//! (created with `init --copy-params-from`): only the blobs the target lacks
//! move, as sealed bytes (authenticated on the way, never re-chunked or
//! re-encrypted); then the target's index, then its snapshots — the same
//! write order as a backup, so an interrupted copy leaves only unreferenced
//! packs and the next copy catches up.

use std::collections::HashSet;

use serde::Serialize;

use crate::engine::backup::ship;
use crate::engine::crypto::{Id, ObjectKind};
use crate::engine::index::{Index, IndexFile};
use crate::engine::pack::{Checkpoints, PackUploader, PackWriter};
use crate::engine::repository::{PackFiles, Repository};
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
pub fn copy_snapshots(from: &Repository, to: &Repository, wanted: &dyn Fn(&Snapshot) -> bool) -> Result<CopyReport> {
    if !from.shares_keys_with(to) {
        return Err(Error::Invalid(format!(
            "{} and {} do not share keys and chunker parameters; create the target with \
             `holdfast init --copy-params-from SOURCE` to copy between them",
            from.location(),
            to.location()
        )));
    }
    // Like a backup: registered before reading marks and the index.
    let _running = crate::engine::gc::register_backup(to)?;
    let marked: HashSet<Id> = crate::engine::gc::marked_packs(to)?.into_keys().collect();
    let (target_index, _) = to.load_index()?;
    let target_index = target_index.without_packs(&marked);
    let (source_index, _) = from.load_index()?;
    let (have, _) = to.snapshots()?;
    let have: HashSet<_> = have.iter().map(|(_, s)| identity(s)).collect();
    let (snaps, _) = from.snapshots()?;
    let mut report = CopyReport::default();
    let mut known: HashSet<Id> = target_index.blob_ids();
    let uploader = PackUploader::start(to.shared_backend(), to.backend().parallelism(), Checkpoints::default());
    let mut writer = Writers { to, uploader: &uploader, data: None, trees: None };
    let mut source_packs = PackFiles::default();
    let mut todo = Vec::new();
    for (_, snap) in snaps.iter().filter(|(_, s)| wanted(s)) {
        if have.contains(&identity(snap)) {
            report.snapshots_present += 1;
            continue;
        }
        let mut stack = vec![snap.root];
        let mut walked: HashSet<Id> = HashSet::new();
        while let Some(tree_id) = stack.pop() {
            // Every tree is walked, even one the target has: a tree in the
            // index does not prove that every chunk below it still is.
            if !walked.insert(tree_id) {
                continue;
            }
            let tree = from.load_tree(&source_index, &tree_id, &mut source_packs)?;
            for e in &tree.entries {
                match &e.kind {
                    EntryKind::Dir { tree } => stack.push(*tree),
                    EntryKind::File(c) => {
                        for id in c.pieces.iter().filter_map(|p| p.chunk()) {
                            if known.insert(*id) {
                                copy_blob(from, &source_index, id, &mut source_packs, &mut writer, &mut report)?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            if known.insert(tree_id) {
                copy_blob(from, &source_index, &tree_id, &mut source_packs, &mut writer, &mut report)?;
            }
        }
        todo.push(snap.clone());
    }
    writer.finish()?;
    let packs = uploader.finish()?;
    if !packs.is_empty() {
        to.write_index_file(&IndexFile { packs })?;
    }
    for snap in &todo {
        report.copied.push(to.write_snapshot(snap)?.to_hex());
        report.snapshots_copied += 1;
    }
    Ok(report)
}

/// The target's open packs: chunks and trees apart, as in a backup.
struct Writers<'a> {
    to: &'a Repository,
    uploader: &'a PackUploader,
    data: Option<PackWriter>,
    trees: Option<PackWriter>,
}

impl Writers<'_> {
    fn finish(mut self) -> Result<()> {
        for w in [self.data.take(), self.trees.take()].into_iter().flatten() {
            ship(self.to, self.uploader, w)?;
        }
        Ok(())
    }
}

/// Move one sealed blob, after checking that it opens to its id.
fn copy_blob(
    from: &Repository,
    index: &Index,
    id: &Id,
    packs: &mut PackFiles,
    writers: &mut Writers,
    report: &mut CopyReport,
) -> Result<()> {
    let loc = index.get(id).ok_or_else(|| Error::damaged(format!("blob {}", id.short()), "not in the source index"))?;
    let sealed = from.read_sealed(loc, packs)?;
    let plain = from.keys().open(loc.kind, id, &sealed)?;
    if from.keys().blob_id(&plain) != *id {
        return Err(Error::damaged(format!("blob {}", id.short()), "content does not match its id"));
    }
    let slot = if loc.kind == ObjectKind::Tree { &mut writers.trees } else { &mut writers.data };
    let size = writers.to.config().pack_size as u64;
    let w = slot.get_or_insert_with(|| {
        if loc.kind == ObjectKind::Tree { PackWriter::new() } else { PackWriter::for_size(size) }
    });
    w.add(*id, loc.kind, &sealed, plain.len());
    report.blobs_copied += 1;
    report.bytes_copied += sealed.len() as u64;
    if w.size() >= writers.to.config().pack_size as u64
        && let Some(w) = slot.take()
    {
        ship(writers.to, writers.uploader, w)?;
    }
    Ok(())
}
