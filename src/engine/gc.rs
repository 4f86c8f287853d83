//! Garbage collection that never blocks a backup and never deletes what a
//! backup running at the same time is about to reference.
//!
//! Two phases, across two prunes:
//!
//! 1. **Mark.** A prune computes the blobs every snapshot references. An
//!    indexed pack none of whose blobs is referenced gets a mark
//!    (`marks/<pack>`, holding the time of marking). Nothing is deleted.
//! 2. **Delete.** A later prune deletes a marked pack only when (a) the mark
//!    is older than the grace period, (b) no backup that started before the
//!    mark is still running (`running/` holds one file per backup in
//!    progress), and (c) the pack is *still* unreferenced now — a backup that
//!    reused one of its blobs before seeing the mark has committed by then,
//!    and its snapshot unmarks the pack instead.
//!
//! Backups register in `running/` before they read marks and the index, and
//! never reuse a blob whose only copy is in a marked pack (they store it
//! again). Deletion rewrites the index first (new consolidated file, then the
//! old files go), and removes packs only after no index names them, so a
//! prune killed at any moment leaves at worst unindexed packs. Packs that
//! only partly hold garbage are kept whole (no repacking yet).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::engine::backend::{INDEX, MARKS, PACKS, SNAPSHOTS, TMP};
use crate::engine::crypto::Id;
use crate::engine::index::{Index, IndexBuilder, IndexFile};
use crate::engine::pack::IndexedPack;
use crate::engine::repository::Repository;
use crate::engine::running::{marked_packs, oldest_running_backup};
use crate::engine::tree::EntryKind;
use crate::error::{Error, Result};

/// A backup that started this soon after a mark's recorded time may not have
/// seen the mark yet (the mark file appears a moment after its time is
/// taken); it protects the pack like one that started before.
const MARK_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// Leftovers (unindexed packs, `tmp/` files) younger than this are never
/// removed, whatever the grace period: a backup writes its first temporary
/// file a moment before it registers as running.
const LEFTOVER_MIN_AGE: jiff::SignedDuration = jiff::SignedDuration::from_secs(3600);

/// Remove `dir/name`; already gone is fine (an interrupted prune, or one
/// running at the same time, got there first).
fn remove_if_there(repo: &Repository, dir: crate::engine::backend::Dir, name: &str) -> Result<()> {
    match repo.backend().remove(dir, name) {
        Err(Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The names of the files in `dir`.
fn names(repo: &Repository, dir: crate::engine::backend::Dir) -> Result<Vec<String>> {
    Ok(repo.backend().list(dir)?.into_iter().map(|f| f.name).collect())
}

/// Remove snapshots (they are the only thing a forget touches).
pub fn forget(repo: &Repository, ids: &[Id]) -> Result<()> {
    for id in ids {
        repo.backend().remove(SNAPSHOTS, &id.to_hex())?;
    }
    Ok(())
}

/// What a garbage collection did (or, dry, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub packs_marked: usize,
    pub packs_unmarked: usize,
    pub packs_deleted: usize,
    pub packs_waiting: usize,
    pub leftovers_deleted: usize,
    pub bytes_deleted: u64,
}

/// Every blob (chunks and trees) the repository's snapshots reference.
/// Fails if any snapshot or tree cannot be read, or if a referenced blob is
/// in no index: never delete when unsure. (A lost index file leaves its
/// packs looking unreferenced and unindexed; deleting them would lose data
/// that `repair index` can bring back.)
fn referenced_blobs(repo: &Repository, index: &Index) -> Result<HashSet<Id>> {
    let (snaps, unreadable) = repo.snapshots()?;
    if let Some((name, e)) = unreadable.first() {
        return Err(Error::Invalid(format!(
            "snapshot {} cannot be read ({e}); not collecting garbage (nothing was deleted). \
             `holdfast check` says more; `holdfast forget {}` removes it if it is beyond repair",
            &name[..name.len().min(8)],
            &name[..name.len().min(8)]
        )));
    }
    let mut seen: HashSet<Id> = snaps.iter().map(|(_, s)| s.root).collect();
    let roots = seen.iter().map(|id| (*id, ())).collect();
    let mut unreadable_trees = Vec::new();
    repo.walk_trees_tolerant(index, roots, |id, tree, ()| {
        let mut subtrees = Vec::new();
        let tree = match tree {
            Ok(t) => t,
            Err(e) => {
                unreadable_trees.push(format!("tree {} ({e})", id.short()));
                return Ok(subtrees);
            }
        };
        for e in &tree.entries {
            match &e.kind {
                EntryKind::Dir { tree } if seen.insert(*tree) => subtrees.push((*tree, ())),
                EntryKind::File(c) => seen.extend(c.pieces.iter().filter_map(|p| p.chunk().copied())),
                _ => {}
            }
        }
        Ok(subtrees)
    })?;
    let unplaced = seen.iter().filter(|id| !index.contains(id)).count();
    if !unreadable_trees.is_empty() || unplaced > 0 {
        let mut what = Vec::new();
        if unplaced > 0 {
            what.push(format!("{unplaced} blob(s) that snapshots need are in no readable index"));
        }
        if !unreadable_trees.is_empty() {
            what.push(format!(
                "{} tree(s) cannot be read: {}",
                unreadable_trees.len(),
                unreadable_trees.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        return Err(Error::Invalid(format!(
            "{}; not collecting garbage (nothing was deleted): packs that look unused may hold them. \
             Run `holdfast repair index` (rebuilds the index from the packs), then `holdfast check`",
            what.join("; ")
        )));
    }
    Ok(seen)
}

/// Mark newly unreferenced packs; delete marked ones that are safe to delete.
pub fn collect_garbage(repo: &Repository, grace: Duration, dry_run: bool) -> Result<GcReport> {
    let mut report = GcReport::default();
    let now = jiff::Timestamp::now();
    let grace = jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX);
    // Order matters. Marks and running backups are read first: a backup
    // still running now is protected; one that ends after this point has
    // committed before the snapshots are read below, so its references count.
    let marks = marked_packs(repo)?;
    let oldest_running = oldest_running_backup(repo)?;
    // Read the index file by file: the ones read are the ones rewritten.
    let mut files: Vec<(String, IndexFile)> = Vec::new();
    let mut index = IndexBuilder::default();
    for name in names(repo, INDEX)? {
        let f = repo.read_index_file(&name).map_err(|e| {
            Error::Invalid(format!(
                "{e}; not collecting garbage (nothing was deleted): run `holdfast repair index`, then prune again"
            ))
        })?;
        index.add(&f);
        files.push((name, f));
    }
    let index = index.finish();
    let referenced = referenced_blobs(repo, &index)?;
    let mut blobs_of: HashMap<Id, Vec<Id>> = HashMap::new();
    for (_, f) in &files {
        for p in &f.packs {
            blobs_of.entry(p.pack).or_default().extend(p.blobs.iter().map(|b| b.id));
        }
    }
    let listed_packs = repo.backend().list(PACKS)?;
    let stored: HashMap<Id, u64> = listed_packs.iter().filter_map(|f| Some((Id::from_hex(&f.name)?, f.size))).collect();
    let mut delete: HashSet<Id> = HashSet::new();
    // Packs this prune already removed (so the leftover sweep skips them).
    let mut removed: HashSet<Id> = HashSet::new();
    for (pack, marked_at) in &marks {
        let Some(blobs) = blobs_of.get(pack) else {
            // Marked and in no index: an interrupted prune already took it
            // out of the index (after all the checks below), so no backup can
            // reuse it any more. Finish the job: the pack, then its mark.
            if !dry_run {
                let name = pack.to_hex();
                if let Some(size) = stored.get(pack) {
                    remove_if_there(repo, PACKS, &name)?;
                    removed.insert(*pack);
                    report.bytes_deleted += size;
                    report.packs_deleted += 1;
                }
                repo.backend().remove(MARKS, &name)?;
            }
            continue;
        };
        if blobs.iter().any(|b| referenced.contains(b)) {
            report.packs_unmarked += 1;
            if !dry_run {
                repo.backend().remove(MARKS, &pack.to_hex())?;
            }
        } else if now.duration_since(*marked_at) >= grace && oldest_running.is_none_or(|r| r > *marked_at + MARK_MARGIN)
        {
            delete.insert(*pack);
        } else {
            report.packs_waiting += 1;
        }
    }
    for (pack, blobs) in &blobs_of {
        if !marks.contains_key(pack) && !blobs.iter().any(|b| referenced.contains(b)) {
            report.packs_marked += 1;
            if !dry_run {
                // Stamped when written, not when the prune began: a backup
                // that starts after this time finds the mark.
                let stamp = jiff::Timestamp::now();
                repo.backend().put_state(MARKS, &pack.to_hex(), stamp.to_string().as_bytes())?;
            }
        }
    }
    report.packs_deleted += delete.len();
    if dry_run {
        return Ok(report);
    }
    if !delete.is_empty() {
        // 1. A new index without the doomed packs, 2. the old files go, 3. the packs go.
        let mut kept: Vec<IndexedPack> = Vec::new();
        let mut listed: HashSet<Id> = HashSet::new();
        for (_, f) in &files {
            for p in &f.packs {
                if !delete.contains(&p.pack) && listed.insert(p.pack) {
                    kept.push(p.clone());
                }
            }
        }
        if !kept.is_empty() {
            repo.write_index_file(&IndexFile { packs: kept })?;
        }
        for (name, _) in &files {
            repo.backend().remove(INDEX, name)?;
        }
        for pack in &delete {
            report.bytes_deleted += stored.get(pack).copied().unwrap_or(0);
            match repo.backend().remove(PACKS, &pack.to_hex()) {
                // Already gone: an earlier, interrupted prune got this far.
                Err(Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
            let _ = repo.backend().remove(MARKS, &pack.to_hex());
        }
    }
    // Leftovers of interrupted runs: unindexed packs and tmp files older
    // than the grace period and than every backup still running.
    let cutoff = oldest_running.map_or(now, |r| r.min(now)) - grace.max(LEFTOVER_MIN_AGE);
    let tmp = repo.backend().list(TMP).unwrap_or_default();
    for (dir, candidates) in [(PACKS, listed_packs), (TMP, tmp)] {
        for file in candidates {
            let id = Id::from_hex(&file.name);
            if dir == PACKS
                && id.is_some_and(|id| blobs_of.contains_key(&id) || removed.contains(&id) || delete.contains(&id))
            {
                continue;
            }
            if file.modified.is_some_and(|m| m < cutoff) {
                report.bytes_deleted += file.size;
                remove_if_there(repo, dir, &file.name)?;
                report.leftovers_deleted += 1;
            }
        }
    }
    Ok(report)
}

/// The backup ↔ prune protocol, on a repository in memory.
#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::engine::backend::{Backend, Dir, MemoryBackend};
    use crate::engine::backup::{BackupOptions, BackupSource, backup};
    use crate::engine::repository::InitOptions;

    fn repository() -> (Arc<MemoryBackend>, Repository) {
        let store = Arc::new(MemoryBackend::default());
        let repo = Repository::init_on(store.clone(), b"test passphrase", &InitOptions::default()).unwrap();
        (store, repo)
    }

    /// A directory holding one file of `seed`-made bytes.
    fn files(seed: u8) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed).collect();
        std::fs::write(dir.path().join("data"), bytes).unwrap();
        dir
    }

    fn back_up(repo: &Repository, dir: &Path) -> Id {
        let opts = BackupOptions { use_parent: false, ..Default::default() };
        backup(repo, &[BackupSource::same_path(dir).unwrap()], &opts).unwrap().id
    }

    fn healthy(repo: &Repository) -> bool {
        crate::engine::check::check(repo, true, 2).unwrap().healthy()
    }

    #[test]
    fn a_pack_marked_while_a_backup_runs_is_deleted_only_after_that_backup_ended() {
        let (store, repo) = repository();
        let dir = files(1);
        let first = back_up(&repo, dir.path());
        forget(&repo, &[first]).unwrap();
        let running = crate::engine::running::register_backup(&repo).unwrap();
        let marked = collect_garbage(&repo, Duration::ZERO, false).unwrap();
        assert!(marked.packs_marked > 0 && marked.packs_deleted == 0, "{marked:?}");
        let waiting = collect_garbage(&repo, Duration::ZERO, false).unwrap();
        assert_eq!(waiting.packs_deleted, 0, "a backup that started before the mark may still reference them");
        assert!(waiting.packs_waiting > 0, "{waiting:?}");
        drop(running);
        let deleted = collect_garbage(&repo, Duration::ZERO, false).unwrap();
        assert!(deleted.packs_deleted > 0, "{deleted:?}");
        assert!(store.names(Dir::Packs).is_empty() && store.names(Dir::Marks).is_empty());
        assert!(healthy(&repo));
    }

    #[test]
    fn a_backup_stores_again_what_only_a_marked_pack_holds_and_prune_keeps_both() {
        let (store, repo) = repository();
        let dir = files(2);
        let first = back_up(&repo, dir.path());
        forget(&repo, &[first]).unwrap();
        assert!(collect_garbage(&repo, Duration::ZERO, false).unwrap().packs_marked > 0);
        let marked = store.names(Dir::Marks);
        // The same content again: its blobs are only in marked packs, so
        // the backup writes packs of its own instead of reusing them.
        let packs_before = store.names(Dir::Packs).len();
        let second = back_up(&repo, dir.path());
        assert!(store.names(Dir::Packs).len() >= packs_before + marked.len(), "no blob of a marked pack reused");
        // The old packs' blobs are referenced again (by id), so prune keeps
        // them and takes the marks away: nothing is lost, at the cost of the
        // duplicates (repacking is not built yet).
        let report = collect_garbage(&repo, Duration::ZERO, false).unwrap();
        assert_eq!((report.packs_unmarked, report.packs_deleted), (marked.len(), 0), "{report:?}");
        assert!(store.names(Dir::Marks).is_empty());
        assert!(healthy(&repo), "snapshot {second:?} must read whole");
    }

    #[test]
    fn prune_refuses_while_a_kept_blob_is_in_no_index_and_repair_brings_the_index_back() {
        let (store, repo) = repository();
        let dir = files(3);
        back_up(&repo, dir.path());
        let packs = store.names(Dir::Packs);
        for name in store.names(Dir::Index) {
            store.remove(Dir::Index, &name).unwrap();
        }
        let refused = collect_garbage(&repo, Duration::ZERO, false).unwrap_err().to_string();
        assert!(refused.contains("repair"), "{refused}");
        assert_eq!(store.names(Dir::Packs), packs, "nothing deleted");
        crate::engine::repair::repair_index(&repo, false).unwrap();
        let report = collect_garbage(&repo, Duration::ZERO, false).unwrap();
        assert_eq!((report.packs_marked, report.packs_deleted), (0, 0), "{report:?}");
        assert!(healthy(&repo));
    }
}
