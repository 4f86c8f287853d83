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
//! prune killed at any moment leaves at worst unindexed packs.
//!
//! "Unreferenced" means *keeps no blob*: a blob stored in several packs is
//! kept by one of them, chosen the same way by every prune (see
//! [`keepers`]). That is what lets space come back from packs that are only
//! partly garbage. **Repacking** writes the blobs such a pack keeps into new
//! packs, indexes them, and only then marks the old pack, which from then
//! on keeps nothing and goes the two-phase way above. It runs until unused
//! bytes are at most `max_unused` of the repository, emptiest packs first.
//! Killed before its index is written, it leaves unindexed packs (swept as
//! leftovers); killed before its marks, duplicates (the next prune marks the
//! old packs). Readers prefer a blob's copy in an unmarked pack.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::engine::backend::{INDEX, MARKS, PACKS, SNAPSHOTS, TMP};
use crate::engine::copy::transfer_blobs;
use crate::engine::crypto::Id;
use crate::engine::index::{BlobLocation, Index, IndexBuilder, IndexFile};
use crate::engine::pack::IndexedPack;
use crate::engine::progress::Progress;
use crate::engine::repository::{Repository, Unreadable};
use crate::engine::running::{marked_packs, oldest_running_backup};
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::EntryKind;
use crate::error::{Error, Result};

/// A backup that started this soon after a mark's recorded time may not have
/// seen the mark yet (the mark file appears a moment after its time is
/// taken); it protects the pack like one that started before.
const MARK_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// More index files than this are merged into one by a prune (each
/// backup writes one; every command that loads the index reads them all).
const CONSOLIDATE_INDEX_FILES: usize = 32;

/// A pack smaller than the pack size over this is small: every backup
/// leaves one or two (its last chunks, its trees). Once there are
/// [`MERGE_SMALL_PACKS`] of them, a prune merges them into full-size packs,
/// as it merges index files: a long history otherwise leaves thousands of
/// small packs, and every walk of it (prune, find, restore) reads each.
const SMALL_PACK_SHARE: u64 = 4;
const MERGE_SMALL_PACKS: usize = 32;

/// Leftovers (unindexed packs, `tmp/` files) younger than this are never
/// removed, whatever the grace period: a backup writes its first temporary
/// file a moment before it registers as running.
const LEFTOVER_MIN_AGE: jiff::SignedDuration = jiff::SignedDuration::from_secs(3600);

/// Remove `dir/name`; already gone is fine (an interrupted prune, or one
/// running at the same time, got there first).
fn remove_if_there(repo: &Repository, dir: crate::engine::backend::Dir, name: &str) -> Result<()> {
    match repo.backend().remove(dir, name) {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// Remove snapshots (they are the only thing a forget touches). One that
/// is gone already (a concurrent prune forgot it too) is forgotten.
pub fn forget(repo: &Repository, ids: &[Id]) -> Result<()> {
    for id in ids {
        remove_if_there(repo, SNAPSHOTS, &id.to_hex())?;
    }
    Ok(())
}

/// How a garbage collection runs.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Delete a marked pack only when it was marked this long ago.
    pub grace: Duration,
    /// Repack partly used packs until unused bytes are at most this share
    /// of the repository (restic's `--max-unused`); 1.0 never repacks.
    pub max_unused: f64,
    /// Say what would happen; change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { grace: Duration::from_secs(3600), max_unused: 0.05, dry_run: false }
    }
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
    /// Partly used packs whose used blobs were written to new packs (the
    /// old ones are marked, and a later prune deletes them).
    pub packs_repacked: usize,
    /// Of those, small packs merged into full-size ones.
    pub packs_merged: usize,
    /// Bytes of used blobs written again by repacking.
    pub bytes_repacked: u64,
    /// Bytes in packs that no snapshot needs and that stay after this
    /// prune (counting packs marked for a later prune to delete).
    pub bytes_unused_left: u64,
}

/// Every blob (chunks and trees) the repository's snapshots reference.
/// Fails if any snapshot or tree cannot be read, or if a referenced blob is
/// in no index: never delete when unsure. (A lost index file leaves its
/// packs looking unreferenced and unindexed; deleting them would lose data
/// that `repair index` can bring back.)
fn referenced_blobs(
    repo: &Repository,
    (snaps, unreadable): &(Vec<(Id, Snapshot)>, Unreadable),
    index: &Index,
    progress: Option<&Progress>,
) -> Result<HashSet<Id>> {
    if let Some((name, e)) = unreadable.first() {
        return Err(Error::Invalid(format!(
            "snapshot {} cannot be read ({e}); not collecting garbage (nothing was deleted). \
             `holdfast check` says more; if it is beyond repair: {}",
            crate::engine::backend::short_name(name),
            crate::engine::backend::removing_snapshot_file(name)
        )));
    }
    let mut seen: HashSet<Id> = snaps.iter().map(|(_, s)| s.root).collect();
    let roots = seen.iter().map(|id| (*id, ())).collect();
    let mut unreadable_trees = Vec::new();
    let mut trees_read = 0u64;
    repo.walk_trees_tolerant(index, roots, |id, tree, ()| {
        let mut subtrees = Vec::new();
        trees_read += 1;
        if let Some(p) = progress.filter(|_| trees_read.is_multiple_of(64)) {
            p.at(Path::new(&format!("{trees_read} trees read")));
        }
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

/// Which pack keeps each referenced blob. A blob stored in several packs
/// (repacked, or stored twice by concurrent backups) is kept by one: a pack
/// stored whole before one that is missing or cut short, a pack not marked
/// for deletion before a marked one, then the pack with the larger share of
/// referenced bytes, then the lower id. Every prune ranks the same way, so
/// a pack that keeps nothing stays that way until a backup references a
/// blob only it holds, and then it is unmarked.
fn keepers(
    packs: &HashMap<Id, &IndexedPack>,
    referenced: &HashSet<Id>,
    marked: &HashSet<Id>,
    whole: &dyn Fn(&Id) -> bool,
) -> HashMap<Id, Id> {
    let share = |p: &IndexedPack| {
        let (mut used, mut all) = (0u64, 0u64);
        for b in &p.blobs {
            all += b.length as u64;
            if referenced.contains(&b.id) {
                used += b.length as u64;
            }
        }
        (used as u128 * 1_000_000 / all.max(1) as u128) as u64
    };
    type Rank = (bool, bool, std::cmp::Reverse<u64>, Id);
    let rank: HashMap<Id, Rank> = packs
        .iter()
        .map(|(id, p)| (*id, (!whole(id), marked.contains(id), std::cmp::Reverse(share(p)), *id)))
        .collect();
    let mut keeper: HashMap<Id, Id> = HashMap::new();
    for (id, p) in packs {
        for b in p.blobs.iter().filter(|b| referenced.contains(&b.id)) {
            let best = keeper.entry(b.id).or_insert(*id);
            if rank[id] < rank[best] {
                *best = *id;
            }
        }
    }
    keeper
}

/// Mark packs that keep no referenced blob, delete marked ones that are
/// safe to delete, and repack partly used packs (see the module's doc).
pub fn collect_garbage(repo: &Repository, opts: &GcOptions, progress: Option<&Progress>) -> Result<GcReport> {
    let dry_run = opts.dry_run;
    let mut report = GcReport::default();
    let now = jiff::Timestamp::now();
    let grace = jiff::SignedDuration::try_from(opts.grace).unwrap_or(jiff::SignedDuration::MAX);
    // Order matters. Marks and running backups are read first: a backup
    // still running now is protected; one that ends after this point has
    // committed before the snapshots are read below, so its references count.
    let mut marks = HashMap::new();
    for (pack, marked_at) in marked_packs(repo)? {
        // Marks are not authenticated: one whose time does not read, or lies
        // ahead of this clock, is stamped again now, so its grace starts
        // once instead of never running out (a later stamp only waits longer).
        let marked_at = match marked_at {
            Some(at) if at <= now => at,
            _ if dry_run => now,
            _ => mark(repo, &pack)?,
        };
        marks.insert(pack, marked_at);
    }
    let oldest_running = oldest_running_backup(repo)?;
    // The snapshots before the index: a backup writes its index file before
    // its snapshot, so every snapshot read has its trees in an index file
    // listed after it. (The other order fails when a backup commits in
    // between; a backup that commits after this listing is not counted,
    // which at worst marks its new packs, and the next prune unmarks them.)
    let snapshots = repo.snapshots()?;
    // Read the index file by file: the ones read are the ones rewritten.
    let mut files: Vec<(String, IndexFile)> = Vec::new();
    let mut index = IndexBuilder::default();
    for name in repo.backend().list_names(INDEX)? {
        let f = repo.read_index_file(&name).map_err(|e| {
            Error::Invalid(format!(
                "{e}; not collecting garbage (nothing was deleted): run `holdfast repair index`, then prune again"
            ))
        })?;
        index.add(&f);
        files.push((name, f));
    }
    let index = index.finish();
    if let Some(p) = progress {
        p.phase("prune: reading the snapshots' trees");
    }
    // The packs are listed (after the index, for the leftover sweep below)
    // while the trees are walked: on a bucket a long listing takes pages.
    let (referenced, listed_packs) = std::thread::scope(|s| {
        let listing = s.spawn(|| repo.backend().list(PACKS));
        let referenced = referenced_blobs(repo, &snapshots, &index, progress);
        (referenced, crate::engine::parallel::joined(listing))
    });
    let (referenced, listed_packs) = (referenced?, listed_packs?);
    // Each pack as the first index file that lists it says.
    let mut packs: HashMap<Id, &IndexedPack> = HashMap::new();
    for (_, f) in &files {
        for p in &f.packs {
            packs.entry(p.pack).or_insert(p);
        }
    }
    let stored: HashMap<Id, u64> = listed_packs.iter().filter_map(|f| Some((Id::from_hex(&f.name)?, f.size))).collect();
    let whole = |pack: &Id| index.pack_end(pack).is_some_and(|end| stored.get(pack).is_some_and(|size| *size >= end));
    let marked: HashSet<Id> = marks.keys().copied().collect();
    let keeper = keepers(&packs, &referenced, &marked, &whole);
    let keeps = |pack: &Id, blob: &Id| keeper.get(blob) == Some(pack);
    // (kept, not kept) bytes of a pack's blobs.
    let kept_bytes = |p: &IndexedPack| -> (u64, u64) {
        let (mut kept, mut not) = (0, 0);
        for b in &p.blobs {
            if keeps(&p.pack, &b.id) { kept += b.length as u64 } else { not += b.length as u64 }
        }
        (kept, not)
    };
    let mut delete: HashSet<Id> = HashSet::new();
    // Packs this prune already removed (so the leftover sweep skips them).
    let mut removed: HashSet<Id> = HashSet::new();
    for (pack, marked_at) in &marks {
        let Some(p) = packs.get(pack) else {
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
                remove_if_there(repo, MARKS, &name)?;
            }
            continue;
        };
        if p.blobs.iter().any(|b| keeps(pack, &b.id)) {
            // A backup referenced again a blob that only this pack holds.
            report.packs_unmarked += 1;
            if !dry_run {
                remove_if_there(repo, MARKS, &pack.to_hex())?;
            }
        } else if now.duration_since(*marked_at) >= grace
            && oldest_running.is_none_or(|r| marked_at.checked_add(MARK_MARGIN).is_ok_and(|m| r > m))
        {
            delete.insert(*pack);
        } else {
            report.packs_waiting += 1;
            report.bytes_unused_left += stored.get(pack).copied().unwrap_or(0);
        }
    }
    // Unmarked packs: those that keep nothing are marked; the rest are
    // candidates for repacking, by how much of them is unused.
    let mut used = 0u64;
    let mut partly_used: Vec<(Id, u64, u64)> = Vec::new();
    let mut small: Vec<Id> = Vec::new();
    let small_size = repo.config().pack_size as u64 / SMALL_PACK_SHARE;
    for (pack, p) in &packs {
        if marks.contains_key(pack) {
            continue;
        }
        let (kept, unused) = kept_bytes(p);
        let size = stored.get(pack).copied().unwrap_or(0);
        if kept == 0 {
            report.packs_marked += 1;
            report.bytes_unused_left += size;
            if !dry_run {
                mark(repo, pack)?;
            }
            continue;
        }
        used += kept;
        // Only a pack stored whole can be read for repacking.
        if unused > 0 && whole(pack) {
            partly_used.push((*pack, unused, kept + unused));
        }
        if size < small_size && whole(pack) {
            small.push(*pack);
        }
    }
    report.packs_deleted += delete.len();
    let mut repack = choose_repacks(partly_used, used, opts.max_unused, &mut report.bytes_unused_left);
    if opts.max_unused < 1.0 {
        let merged = small_packs_to_merge(small, &repack);
        for pack in &merged {
            let unused = packs.get(pack).map_or(0, |p| kept_bytes(p).1);
            report.bytes_unused_left = report.bytes_unused_left.saturating_sub(unused);
        }
        report.packs_merged = merged.len();
        repack.extend(merged);
    }
    if dry_run {
        report.packs_repacked = repack.len();
        report.bytes_repacked = repack.iter().filter_map(|p| packs.get(p)).map(|p| kept_bytes(p).0).sum();
        return Ok(report);
    }
    // Every backup adds an index file: many small ones are merged into one
    // (the same way, and as safely, as dropping packs from the index).
    if let Some(p) = progress {
        p.phase("prune: deleting");
        p.add_total(delete.len() as u64, delete.iter().filter_map(|pack| stored.get(pack)).sum());
        p.total_known();
    }
    if !delete.is_empty() || files.len() > CONSOLIDATE_INDEX_FILES {
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
            // Gone already: a prune running at the same time merged it too.
            remove_if_there(repo, INDEX, name)?;
        }
        for pack in &delete {
            report.bytes_deleted += stored.get(pack).copied().unwrap_or(0);
            match repo.backend().remove(PACKS, &pack.to_hex()) {
                // Already gone: an earlier, interrupted prune got this far.
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
            let _ = repo.backend().remove(MARKS, &pack.to_hex());
            if let Some(p) = progress {
                p.done(1, stored.get(pack).copied().unwrap_or(0));
            }
        }
    }
    // Leftovers of interrupted runs: unindexed packs and tmp files older
    // than the grace period and than every backup still running.
    // Times out of range (a running record's, a grace of centuries) leave
    // nothing old enough.
    let cutoff = oldest_running
        .map_or(now, |r| r.min(now))
        .checked_sub(grace.max(LEFTOVER_MIN_AGE))
        .unwrap_or(jiff::Timestamp::MIN);
    let tmp = repo.backend().list(TMP).unwrap_or_default();
    for (dir, candidates) in [(PACKS, listed_packs), (TMP, tmp)] {
        for file in candidates {
            let id = Id::from_hex(&file.name);
            if dir == PACKS
                && id.is_some_and(|id| packs.contains_key(&id) || removed.contains(&id) || delete.contains(&id))
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
    if !repack.is_empty() {
        // 1. The blobs these packs keep go to new packs, 2. an index names
        // them, 3. the old packs are marked: a crash before 3 leaves
        // duplicates, which the next prune marks; before 2, unindexed packs,
        // which the leftover sweep takes. Registered like a backup, so a
        // prune elsewhere does not sweep the new packs before they are indexed.
        let _running = crate::engine::running::register_backup(repo)?;
        let needed: Vec<(Id, BlobLocation)> = repack
            .iter()
            .filter_map(|pack| packs.get(pack))
            .flat_map(|p| {
                p.blobs.iter().filter(|b| keeps(&p.pack, &b.id)).map(|b| {
                    let at = BlobLocation {
                        pack: p.pack,
                        kind: b.kind,
                        offset: b.offset,
                        length: b.length,
                        raw_length: b.raw_length,
                    };
                    (b.id, at)
                })
            })
            .collect();
        if let Some(p) = progress {
            p.phase("prune: repacking");
        }
        let moved = transfer_blobs(repo, repo, needed, progress).map_err(|e| {
            Error::Invalid(format!("repacking failed: {e}; nothing of it was deleted (`holdfast check` says more)"))
        })?;
        for pack in &repack {
            mark(repo, pack)?;
        }
        report.packs_repacked = repack.len();
        report.packs_marked += repack.len();
        report.bytes_repacked = moved.bytes;
    }
    Ok(report)
}

/// The small packs to merge into full-size ones: all of them once there
/// are [`MERGE_SMALL_PACKS`] (besides those repacked anyway), else none.
fn small_packs_to_merge(mut small: Vec<Id>, repacked: &[Id]) -> Vec<Id> {
    let repacked: HashSet<&Id> = repacked.iter().collect();
    small.retain(|p| !repacked.contains(p));
    if small.len() < MERGE_SMALL_PACKS {
        return Vec::new();
    }
    small.sort();
    small
}

/// Mark `pack` for deletion by a later prune, stamped when written (not
/// when the prune began): a backup that starts after this time finds it.
fn mark(repo: &Repository, pack: &Id) -> Result<jiff::Timestamp> {
    let stamp = jiff::Timestamp::now();
    repo.backend().put_state(MARKS, &pack.to_hex(), stamp.to_string().as_bytes())?;
    Ok(stamp)
}

/// The partly used packs (id, unused bytes, blob bytes) to repack so that unused
/// bytes are at most `max_unused` of the repository: the emptiest first.
/// `unused_left` grows by what stays unused.
fn choose_repacks(mut partly_used: Vec<(Id, u64, u64)>, used: u64, max_unused: f64, unused_left: &mut u64) -> Vec<Id> {
    let mut unused: u64 = partly_used.iter().map(|(_, u, _)| u).sum();
    // unused / (used + unused) <= max_unused
    let allowed = if max_unused >= 1.0 {
        u64::MAX
    } else {
        (max_unused.max(0.0) / (1.0 - max_unused.max(0.0)) * used as f64) as u64
    };
    partly_used.sort_by_key(|&(id, unused, size)| (std::cmp::Reverse(unused as u128 * 1_000_000 / size as u128), id));
    let mut chosen = Vec::new();
    for (id, pack_unused, _) in partly_used {
        if unused <= allowed {
            break;
        }
        chosen.push(id);
        unused -= pack_unused;
    }
    *unused_left += unused;
    chosen
}

/// The backup ↔ prune protocol, on a repository in memory.
#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::engine::backend::{Backend, Dir, MemoryBackend};
    use crate::engine::backup::{BackupOptions, BackupSource, backup};
    use crate::engine::crypto::ObjectKind;

    fn repository() -> (Arc<MemoryBackend>, Repository) {
        Repository::in_memory()
    }

    /// A directory holding one file of 300 kB made from `seed`.
    fn files(seed: u8) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        // Incompressible, so sizes are what the test says.
        let mut bytes = vec![0u8; 300_000];
        blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut bytes);
        std::fs::write(dir.path().join("data"), bytes).unwrap();
        dir
    }

    fn back_up(repo: &Repository, dir: &Path) -> Id {
        let opts = BackupOptions { use_parent: false, ..Default::default() };
        backup(repo, &[BackupSource::same_path(dir).unwrap()], &opts).unwrap().id
    }

    /// Delete at once, repack beyond 5% unused.
    fn now() -> GcOptions {
        GcOptions { grace: Duration::ZERO, ..Default::default() }
    }

    fn healthy(repo: &Repository) -> bool {
        crate::engine::check::check(repo, true, 2, None).unwrap().healthy()
    }

    #[test]
    fn forgetting_a_snapshot_a_concurrent_prune_forgot_first_is_no_error() {
        let (_, repo) = repository();
        let dir = files(1);
        let id = back_up(&repo, dir.path());
        forget(&repo, &[id]).unwrap();
        forget(&repo, &[id]).unwrap();
        assert!(repo.snapshots().unwrap().0.is_empty());
    }

    #[test]
    fn a_snapshot_listed_but_not_found_when_read_stops_the_collection() {
        let (store, repo) = repository();
        let (a, b) = (files(1), files(2));
        back_up(&repo, a.path());
        let lost = back_up(&repo, b.path());
        // A bucket that lists the snapshot object but answers 404 for it.
        store.stop_serving(SNAPSHOTS, &lost.to_hex());
        let repo = Repository::open_on(store.clone(), b"test passphrase").unwrap();
        let (good, bad) = repo.snapshots().unwrap();
        assert_eq!((good.len(), bad.len()), (1, 1));
        let refused = collect_garbage(&repo, &now(), None).unwrap_err().to_string();
        assert!(refused.contains("cannot be read") && refused.contains("nothing was deleted"), "{refused}");
        assert_eq!(store.names(Dir::Marks), Vec::<String>::new(), "nothing marked");
    }

    #[test]
    fn a_mark_a_concurrent_prune_removed_after_the_listing_is_not_stamped_again() {
        let (store, repo) = repository();
        let dir = files(1);
        let id = back_up(&repo, dir.path());
        forget(&repo, &[id]).unwrap();
        collect_garbage(&repo, &GcOptions::default(), None).unwrap();
        let marks = store.names(Dir::Marks);
        assert!(!marks.is_empty());
        let stamped: Vec<_> = marks.iter().map(|m| store.get(Dir::Marks, m).unwrap()).collect();
        // Listed, gone when read: another prune took it away meanwhile.
        store.stop_serving(Dir::Marks, &marks[0]);
        let marked = crate::engine::running::marked_packs(&repo).unwrap();
        assert_eq!(marked.len(), marks.len() - 1);
        assert!(!marked.contains_key(&Id::from_hex(&marks[0]).unwrap()));
        collect_garbage(&repo, &GcOptions { dry_run: true, ..Default::default() }, None).unwrap();
        let after: Vec<_> = marks.iter().skip(1).map(|m| store.get(Dir::Marks, m).unwrap()).collect();
        assert_eq!(after, stamped[1..], "the other marks keep their times");
    }

    #[test]
    fn a_pack_marked_while_a_backup_runs_is_deleted_only_after_that_backup_ended() {
        let (store, repo) = repository();
        let dir = files(1);
        let first = back_up(&repo, dir.path());
        forget(&repo, &[first]).unwrap();
        let running = crate::engine::running::register_backup(&repo).unwrap();
        let marked = collect_garbage(&repo, &now(), None).unwrap();
        assert!(marked.packs_marked > 0 && marked.packs_deleted == 0, "{marked:?}");
        let waiting = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(waiting.packs_deleted, 0, "a backup that started before the mark may still reference them");
        assert!(waiting.packs_waiting > 0, "{waiting:?}");
        drop(running);
        let deleted = collect_garbage(&repo, &now(), None).unwrap();
        assert!(deleted.packs_deleted > 0, "{deleted:?}");
        assert!(store.names(Dir::Packs).is_empty() && store.names(Dir::Marks).is_empty());
        assert!(healthy(&repo));
    }

    #[test]
    fn a_backup_stores_again_what_only_a_marked_pack_holds_and_prune_deletes_the_old_copy() {
        let (store, repo) = repository();
        let dir = files(2);
        let first = back_up(&repo, dir.path());
        forget(&repo, &[first]).unwrap();
        assert!(collect_garbage(&repo, &now(), None).unwrap().packs_marked > 0);
        let marked = store.names(Dir::Marks);
        // The same content again: its blobs are only in marked packs, so
        // the backup writes packs of its own instead of reusing them.
        let packs_before = store.names(Dir::Packs).len();
        let second = back_up(&repo, dir.path());
        assert!(store.names(Dir::Packs).len() >= packs_before + marked.len(), "no blob of a marked pack reused");
        // The new packs keep the blobs the snapshot needs; the marked ones
        // keep nothing, so they go.
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!((report.packs_unmarked, report.packs_deleted), (0, marked.len()), "{report:?}");
        assert!(store.names(Dir::Marks).is_empty());
        assert_eq!(store.names(Dir::Packs).len(), packs_before, "one copy of each blob");
        assert!(healthy(&repo), "snapshot {second:?} must read whole");
    }

    #[test]
    fn a_mark_dated_ahead_or_unreadable_gets_its_grace_from_now_instead_of_forever() {
        let (store, repo) = repository();
        let first = back_up(&repo, files(9).path());
        forget(&repo, &[first]).unwrap();
        let week = GcOptions { grace: Duration::from_secs(7 * 86400), ..Default::default() };
        assert!(collect_garbage(&repo, &week, None).unwrap().packs_marked >= 2);
        let marks = store.names(Dir::Marks);
        store.put_state(Dir::Marks, &marks[0], b"2999-01-01T00:00:00Z").unwrap();
        store.put_state(Dir::Marks, &marks[1], b"not a time").unwrap();
        let report = collect_garbage(&repo, &week, None).unwrap();
        assert_eq!(report.packs_deleted, 0, "a week's grace has not passed: {report:?}");
        for name in &marks[..2] {
            let stamp: jiff::Timestamp =
                String::from_utf8(store.get(Dir::Marks, name).unwrap()).unwrap().parse().unwrap();
            assert!(stamp <= jiff::Timestamp::now(), "restamped now, not kept at {stamp}");
        }
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(report.packs_deleted, marks.len(), "{report:?}");
        assert!(healthy(&repo));
    }

    /// Bytes in `packs/`.
    fn pack_bytes(store: &MemoryBackend) -> u64 {
        store.list(Dir::Packs).unwrap().iter().map(|f| f.size).sum()
    }

    /// Two snapshots sharing file `a`: the first with `b`, the second with
    /// `c`. Forgetting the first leaves its data pack half used.
    fn half_used_pack() -> (Arc<MemoryBackend>, Repository, tempfile::TempDir) {
        let (store, repo) = repository();
        let dir = files(4);
        std::fs::copy(files(5).path().join("data"), dir.path().join("b")).unwrap();
        let first = back_up(&repo, dir.path());
        std::fs::remove_file(dir.path().join("b")).unwrap();
        std::fs::copy(files(6).path().join("data"), dir.path().join("c")).unwrap();
        back_up(&repo, dir.path());
        forget(&repo, &[first]).unwrap();
        (store, repo, dir)
    }

    /// What a fresh backup of `dir` stores.
    fn fresh_size(dir: &Path) -> u64 {
        let (store, repo) = repository();
        back_up(&repo, dir);
        pack_bytes(&store)
    }

    #[test]
    fn forgetting_half_the_history_gives_the_space_back_by_repacking() {
        let (store, repo, dir) = half_used_pack();
        let dry = collect_garbage(&repo, &GcOptions { dry_run: true, ..now() }, None).unwrap();
        assert_eq!(dry.packs_repacked, 1, "{dry:?}");
        assert!(store.names(Dir::Marks).is_empty(), "a dry run changes nothing");
        let repacked = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(repacked.packs_repacked, 1, "{repacked:?}");
        assert!(repacked.bytes_repacked >= 300_000 && repacked.bytes_repacked < 400_000, "{repacked:?}");
        assert!(healthy(&repo), "the marked pack and its copy both read");
        let deleted = collect_garbage(&repo, &now(), None).unwrap();
        assert!(deleted.packs_deleted >= 1 && deleted.packs_repacked == 0, "{deleted:?}");
        assert!(healthy(&repo));
        let (left, fresh) = (pack_bytes(&store), fresh_size(dir.path()));
        assert!(left as f64 <= fresh as f64 * 1.1, "{left} bytes left, a fresh backup stores {fresh}");
        let again = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!((again.packs_marked, again.packs_repacked, again.packs_deleted), (0, 0, 0), "{again:?}");
    }

    #[test]
    fn a_partly_used_pack_stays_when_unused_space_is_within_the_limit() {
        let (store, repo, _dir) = half_used_pack();
        let report = collect_garbage(&repo, &GcOptions { max_unused: 1.0, ..now() }, None).unwrap();
        assert_eq!(report.packs_repacked, 0, "{report:?}");
        assert!(report.bytes_unused_left >= 300_000, "{report:?}");
        // Half of the data pack is unused, a third of the repository.
        let report = collect_garbage(&repo, &GcOptions { max_unused: 0.4, ..now() }, None).unwrap();
        assert_eq!(report.packs_repacked, 0, "{report:?}");
        assert!(store.names(Dir::Marks).len() <= 1, "only the unreferenced tree pack");
    }

    #[test]
    fn a_repack_cut_short_before_its_marks_leaves_copies_that_the_next_prune_clears() {
        let (store, repo, _dir) = half_used_pack();
        // What a repack does before it marks: the used blobs of the half
        // used pack go to a new pack, and an index names it.
        let (index, _) = repo.load_index().unwrap();
        let referenced = referenced_blobs(&repo, &repo.snapshots().unwrap(), &index, None).unwrap();
        // (Chunk boundaries depend on the repository's secret gear seed: a
        // file may be one chunk or two.)
        let half_used = index.iter().find(|(id, at)| at.kind == ObjectKind::Chunk && !referenced.contains(id));
        let half_used = half_used.map(|(_, at)| at.pack).expect("b's chunks are unreferenced");
        let needed: Vec<(Id, BlobLocation)> =
            index.iter().filter(|(id, at)| at.pack == half_used && referenced.contains(id)).collect();
        assert!(!needed.is_empty(), "file a, in the pack it shares with b");
        transfer_blobs(&repo, &repo, needed, None).unwrap();
        assert!(healthy(&repo));
        // The old pack now keeps nothing (its used blob has a fuller home):
        // marked, not repacked again; then deleted.
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(report.packs_repacked, 0, "{report:?}");
        assert_eq!(report.packs_marked, 2, "the old data pack and the first snapshot's tree pack: {report:?}");
        let before = store.names(Dir::Packs).len();
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(report.packs_deleted, 2, "{report:?}");
        assert_eq!(store.names(Dir::Packs).len(), before - 2);
        assert!(healthy(&repo));
    }

    #[test]
    fn a_lost_new_copy_never_costs_the_old_one() {
        let (store, repo, _dir) = half_used_pack();
        let packs_before: HashSet<String> = store.names(Dir::Packs).into_iter().collect();
        assert_eq!(collect_garbage(&repo, &now(), None).unwrap().packs_repacked, 1);
        // The pack the repack wrote is lost (a disk, a careless admin).
        for name in store.names(Dir::Packs).into_iter().filter(|n| !packs_before.contains(n)) {
            store.remove(Dir::Packs, &name).unwrap();
        }
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(report.packs_unmarked, 1, "the old pack holds the only copy there is: {report:?}");
        collect_garbage(&repo, &now(), None).unwrap();
        assert!(healthy(&repo), "every snapshot reads whole");
    }

    #[test]
    fn a_blob_a_running_backup_reused_from_a_repacked_pack_keeps_that_pack() {
        let (store, repo, dir) = half_used_pack();
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(report.packs_repacked, 1, "{report:?}");
        // A backup that read the index before the repack's marks appeared
        // reuses b, which was not repacked (no snapshot needed it then).
        let marks: Vec<(String, Vec<u8>)> =
            store.names(Dir::Marks).into_iter().map(|n| (n.clone(), store.get(Dir::Marks, &n).unwrap())).collect();
        for (name, _) in &marks {
            store.remove(Dir::Marks, name).unwrap();
        }
        std::fs::copy(files(5).path().join("data"), dir.path().join("b")).unwrap();
        let packs_before = store.names(Dir::Packs).len();
        back_up(&repo, dir.path());
        for (name, stamp) in &marks {
            store.put_state(Dir::Marks, name, stamp).unwrap();
        }
        let new_packs = store.names(Dir::Packs).len() - packs_before;
        assert_eq!(new_packs, 1, "only a tree pack: b's chunk was reused from the half used pack");
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(report.packs_unmarked, 1, "the half used pack holds the only copy of b: {report:?}");
        assert!(healthy(&repo));
    }

    #[test]
    fn many_small_packs_are_merged_into_full_size_ones_and_every_snapshot_still_reads() {
        let (store, repo) = repository();
        let dir = files(7);
        for i in 0..MERGE_SMALL_PACKS / 2 - 1 {
            std::fs::write(dir.path().join("counter"), i.to_string()).unwrap();
            back_up(&repo, dir.path());
        }
        // Each backup left a small data pack and a small tree pack: not yet many.
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!((report.packs_merged, report.packs_marked), (0, 0), "{report:?}");
        std::fs::write(dir.path().join("counter"), "last").unwrap();
        back_up(&repo, dir.path());
        let before = store.names(Dir::Packs).len();
        assert!(before >= MERGE_SMALL_PACKS);
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!(report.packs_merged, before, "{report:?}");
        assert_eq!(report.packs_marked, before, "the old packs are marked, not yet deleted");
        assert!(healthy(&repo));
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!((report.packs_merged, report.packs_deleted), (0, before), "merged once: {report:?}");
        let after = store.names(Dir::Packs).len();
        assert!(after <= 2, "chunks and trees, apart: {after} packs");
        assert!(healthy(&repo), "every snapshot reads from the merged packs");
        assert_eq!(repo.snapshots().unwrap().0.len(), MERGE_SMALL_PACKS / 2);
    }

    #[test]
    fn many_index_files_are_merged_into_one() {
        let (store, repo) = repository();
        let dir = files(7);
        for i in 0..=CONSOLIDATE_INDEX_FILES {
            std::fs::write(dir.path().join("counter"), i.to_string()).unwrap();
            back_up(&repo, dir.path());
        }
        assert!(store.names(Dir::Index).len() > CONSOLIDATE_INDEX_FILES);
        let (before, _) = repo.load_index().unwrap();
        // (`unlimited`: the small packs stay where they are.)
        let report = collect_garbage(&repo, &GcOptions { max_unused: 1.0, ..now() }, None).unwrap();
        assert_eq!(report.packs_marked, 0, "every snapshot is kept: {report:?}");
        assert_eq!(store.names(Dir::Index).len(), 1);
        let (after, _) = repo.load_index().unwrap();
        assert!(before.iter().eq(after.iter()), "the same blobs in the same places");
        assert!(healthy(&repo));
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
        let refused = collect_garbage(&repo, &now(), None).unwrap_err().to_string();
        assert!(refused.contains("repair"), "{refused}");
        assert_eq!(store.names(Dir::Packs), packs, "nothing deleted");
        crate::engine::repair::repair_index(&repo, false).unwrap();
        let report = collect_garbage(&repo, &now(), None).unwrap();
        assert_eq!((report.packs_marked, report.packs_deleted), (0, 0), "{report:?}");
        assert!(healthy(&repo));
    }
}
