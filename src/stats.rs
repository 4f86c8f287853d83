//! `stats`: what a set of snapshots holds and what storing it costs —
//! logical size, the distinct chunks behind it, their stored size, and the
//! ratios deduplication and compression give.

use std::collections::HashSet;

use anyhow::Result;
use serde::Serialize;

use crate::engine::crypto::Id;
use crate::engine::index::Index;
use crate::engine::repository::Repository;
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::EntryKind;

/// Figures of some snapshots.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub snapshots: usize,
    /// Files over all the snapshots (a file in ten snapshots counts ten times).
    pub files: u64,
    /// What restoring every one of the snapshots would write.
    pub logical_bytes: u64,
    /// Distinct chunks the snapshots reference, and their plaintext size
    /// (each chunk whole: a chunk small files share counts in full).
    pub chunks: u64,
    pub unique_bytes: u64,
    /// Distinct directories (trees).
    pub trees: u64,
    /// Chunks and trees as stored: compressed, encrypted.
    pub stored_bytes: u64,
    /// logical / unique: how much deduplication saves.
    pub dedup_ratio: f64,
    /// unique / the chunks' stored size: how much compression saves.
    pub compression_ratio: f64,
}

/// Figures of the repository as a whole.
#[derive(Debug, Serialize)]
pub struct RepositoryStats {
    pub packs: u64,
    /// Every pack's size: what the repository takes on its storage.
    pub pack_bytes: u64,
    pub blobs_indexed: u64,
    /// Stored bytes no snapshot references (a later `prune` frees them).
    pub unreferenced_bytes: u64,
}

/// The distinct trees and chunks some snapshots reference.
#[derive(Debug, Default)]
pub struct Referenced {
    trees: HashSet<Id>,
    chunks: HashSet<Id>,
}

impl Referenced {
    /// Walk the distinct trees of `snapshots` (each once).
    pub fn walk(repo: &Repository, index: &Index, snapshots: &[&(Id, Snapshot)]) -> Result<Referenced> {
        let mut out = Referenced::default();
        let Referenced { trees, chunks } = &mut out;
        let roots: Vec<(Id, ())> =
            snapshots.iter().filter(|(_, s)| trees.insert(s.root)).map(|(_, s)| (s.root, ())).collect();
        repo.walk_trees(index, roots, |_, tree, ()| {
            let mut next = Vec::new();
            for e in &tree.entries {
                match &e.kind {
                    EntryKind::Dir { tree } if trees.insert(*tree) => next.push((*tree, ())),
                    EntryKind::File(content) => chunks.extend(content.pieces.iter().filter_map(|p| p.chunk().copied())),
                    _ => {}
                }
            }
            Ok(next)
        })?;
        Ok(out)
    }

    /// Add what `other` references (groups of snapshots to their union,
    /// without walking again).
    pub fn extend(&mut self, other: &Referenced) {
        self.trees.extend(&other.trees);
        self.chunks.extend(&other.chunks);
    }
}

/// The figures of `snapshots`, which reference `referenced`.
pub fn stats(index: &Index, snapshots: &[&(Id, Snapshot)], referenced: &Referenced) -> Stats {
    let mut out = Stats { snapshots: snapshots.len(), ..Stats::default() };
    for (_, s) in snapshots {
        out.files += s.summary.files;
        out.logical_bytes += s.summary.bytes;
    }
    let Referenced { trees, chunks } = referenced;
    out.trees = trees.len() as u64;
    out.chunks = chunks.len() as u64;
    let mut stored_chunks = 0u64;
    for loc in chunks.iter().filter_map(|id| index.get(id)) {
        out.unique_bytes += loc.raw_length as u64;
        stored_chunks += loc.length as u64;
    }
    let stored_trees: u64 = trees.iter().filter_map(|id| index.get(id)).map(|loc| loc.length as u64).sum();
    out.stored_bytes = stored_chunks + stored_trees;
    out.dedup_ratio = ratio(out.logical_bytes, out.unique_bytes);
    out.compression_ratio = ratio(out.unique_bytes, stored_chunks);
    out
}

/// The repository's packs and what of them `referenced` (stats of every
/// snapshot) does not account for.
pub fn repository_stats(repo: &Repository, index: &Index, referenced: &Stats) -> Result<RepositoryStats> {
    let packs = repo.backend().list(crate::engine::backend::PACKS)?;
    let pack_bytes: u64 = packs.iter().map(|p| p.size).sum();
    let indexed: u64 = index.iter().map(|(_, loc)| loc.length as u64).sum();
    Ok(RepositoryStats {
        packs: packs.len() as u64,
        pack_bytes,
        blobs_indexed: index.len() as u64,
        unreferenced_bytes: indexed.saturating_sub(referenced.stored_bytes),
    })
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}
