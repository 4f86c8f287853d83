//! The index: which pack holds each blob.
//!
//! Every backup writes one index file listing the packs it wrote and their
//! blobs, after the packs and before the snapshot. The in-memory [`Index`] is
//! the union of all index files; a blob listed twice (two concurrent backups
//! stored the same chunk) may be read from either pack. Packs that no index
//! lists are leftovers of an interrupted run: nothing refers to them.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::engine::crypto::{Id, ObjectKind};
use crate::engine::pack::IndexedPack;

/// One index file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    pub packs: Vec<IndexedPack>,
}

/// Where to find a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub kind: ObjectKind,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

/// The union of the repository's index files.
#[derive(Debug, Default)]
pub struct Index {
    blobs: HashMap<Id, BlobLocation>,
    packs: HashMap<Id, u64>,
}

impl Index {
    pub fn add_file(&mut self, file: &IndexFile) {
        for p in &file.packs {
            let mut end = 0u64;
            for b in &p.blobs {
                end = end.max(b.offset as u64 + b.length as u64);
                self.blobs.entry(b.id).or_insert(BlobLocation {
                    pack: p.pack,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    raw_length: b.raw_length,
                });
            }
            self.packs.insert(p.pack, end);
        }
    }

    /// Drop every blob located in one of `packs` (a backup must not reuse
    /// blobs from packs marked for deletion).
    pub fn without_packs(mut self, packs: &std::collections::HashSet<Id>) -> Index {
        if !packs.is_empty() {
            self.blobs.retain(|_, loc| !packs.contains(&loc.pack));
            self.packs.retain(|p, _| !packs.contains(p));
        }
        self
    }

    pub fn get(&self, id: &Id) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    /// Packs named by some index, with the end of their last blob.
    pub fn packs(&self) -> &HashMap<Id, u64> {
        &self.packs
    }

    pub fn blob_ids(&self) -> HashSet<Id> {
        self.blobs.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter()
    }
}
