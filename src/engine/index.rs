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

/// The union of the repository's index files, held compactly: one array of
/// 48-byte entries sorted by blob id (binary search; no hash table, no
/// per-entry allocation) and a table of packs, so a repository of 20
/// million chunks needs about 1 GB rather than the ~6 GB a map of
/// locations would.
#[derive(Debug, Default)]
pub struct Index {
    blobs: Vec<IndexEntry>,
    /// Pack number (as stored in an entry) → pack id.
    pack_ids: Vec<Id>,
    /// Pack id → its number and the end of its last blob.
    packs: HashMap<Id, PackInfo>,
    /// Where each bucket of ids (by their leading bits) starts in `blobs`:
    /// ids are uniformly random, so a bucket holds a handful of entries
    /// and a lookup is one small binary search.
    buckets: Buckets,
}

#[derive(Debug, Default)]
struct Buckets {
    bits: u32,
    starts: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct PackInfo {
    number: u32,
    end: u64,
}

/// One blob: its id, its pack's number and kind (packed into one word),
/// and where it sits.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    id: Id,
    /// Pack number << 4 | object kind.
    pack_kind: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
}

const KIND_BITS: u32 = 4;

/// Gathers index files as they are read, then sorts once.
#[derive(Debug, Default)]
pub struct IndexBuilder(Index);

impl IndexBuilder {
    pub fn add(&mut self, file: &IndexFile) {
        self.0.append(file);
    }

    /// The index; a blob listed twice keeps one of its locations (either
    /// is valid). Sorted in place: no second copy of the entries.
    pub fn finish(self) -> Index {
        self.finish_avoiding(&HashSet::new())
    }

    /// The index; a blob listed twice keeps a location outside `avoid`
    /// (packs marked for deletion, whose blobs prune repacked elsewhere)
    /// where it has one, else the one of the packs with the lowest id.
    pub fn finish_avoiding(self, avoid: &HashSet<Id>) -> Index {
        let mut index = self.0;
        let avoid: HashSet<u32> = avoid.iter().filter_map(|p| index.packs.get(p)).map(|i| i.number).collect();
        let pack_ids = &index.pack_ids;
        let rank = |e: &IndexEntry| {
            let number = e.pack_kind >> KIND_BITS;
            (avoid.contains(&number), pack_ids[number as usize])
        };
        index.blobs.sort_unstable_by(|a, b| a.id.cmp(&b.id).then_with(|| rank(a).cmp(&rank(b))));
        index.blobs.dedup_by(|later, first| later.id == first.id);
        index.blobs.shrink_to_fit();
        index.rebucket();
        index
    }
}

impl Index {
    /// The union of `files`.
    pub fn from_files(files: impl IntoIterator<Item = IndexFile>) -> Index {
        let mut builder = IndexBuilder::default();
        for file in files {
            builder.add(&file);
        }
        builder.finish()
    }

    /// Recompute the buckets after `blobs` changed: about four entries each.
    fn rebucket(&mut self) {
        let n = self.blobs.len();
        let bits = (usize::BITS - (n / 4).leading_zeros()).min(24);
        let mut starts = Vec::with_capacity((1 << bits) + 1);
        let mut i = 0;
        for bucket in 0..(1u64 << bits) {
            while i < n && bucket_of(&self.blobs[i].id, bits) < bucket {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts.push(n as u32);
        self.buckets = Buckets { bits, starts };
    }

    fn find(&self, id: &Id) -> Option<&IndexEntry> {
        let b = bucket_of(id, self.buckets.bits) as usize;
        let (start, end) = (*self.buckets.starts.get(b)? as usize, *self.buckets.starts.get(b + 1)? as usize);
        let slice = self.blobs.get(start..end)?;
        slice.binary_search_by(|e| e.id.cmp(id)).ok().map(|i| &slice[i])
    }

    /// Add one more index file (a few packs: adoption, repair).
    pub fn add_file(&mut self, file: &IndexFile) {
        if file.packs.is_empty() {
            return;
        }
        self.append(file);
        // The stable sort finds the sorted run already there and merges
        // the new entries into it; equal ids keep their order.
        self.blobs.sort_by_key(|e| e.id);
        self.blobs.dedup_by(|later, first| later.id == first.id);
        self.rebucket();
    }

    /// Entries of `file` at the end, unsorted.
    fn append(&mut self, file: &IndexFile) {
        for p in &file.packs {
            let end = p.blobs.iter().map(|b| b.offset as u64 + b.length as u64).max().unwrap_or(0);
            let next = self.pack_ids.len() as u32;
            let info = self.packs.entry(p.pack).or_insert(PackInfo { number: next, end });
            info.end = info.end.max(end);
            let number = info.number;
            if number == next {
                self.pack_ids.push(p.pack);
            }
            self.blobs.extend(p.blobs.iter().map(|b| IndexEntry {
                id: b.id,
                pack_kind: (number << KIND_BITS) | b.kind as u32,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
            }));
        }
    }

    /// Drop every blob located in one of `packs` (a backup must not reuse
    /// blobs from packs marked for deletion).
    pub fn without_packs(mut self, packs: &HashSet<Id>) -> Index {
        let numbers: HashSet<u32> = packs.iter().filter_map(|p| self.packs.get(p)).map(|i| i.number).collect();
        if !numbers.is_empty() {
            self.blobs.retain(|e| !numbers.contains(&(e.pack_kind >> KIND_BITS)));
            self.packs.retain(|p, _| !packs.contains(p));
            self.rebucket();
        }
        self
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id).map(|e| self.location(e))
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    fn location(&self, e: &IndexEntry) -> BlobLocation {
        BlobLocation {
            pack: self.pack_ids[(e.pack_kind >> KIND_BITS) as usize],
            kind: kind_from_bits(e.pack_kind & ((1 << KIND_BITS) - 1)),
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }

    /// Packs named by some index, with the end of their last blob.
    pub fn packs(&self) -> impl Iterator<Item = (&Id, u64)> {
        self.packs.iter().map(|(id, info)| (id, info.end))
    }

    pub fn has_pack(&self, pack: &Id) -> bool {
        self.packs.contains_key(pack)
    }

    /// The end of `pack`'s last indexed blob.
    pub fn pack_end(&self, pack: &Id) -> Option<u64> {
        self.packs.get(pack).map(|i| i.end)
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every blob in id order.
    pub fn iter(&self) -> impl Iterator<Item = (Id, BlobLocation)> + '_ {
        self.blobs.iter().map(|e| (e.id, self.location(e)))
    }

    /// Bytes of memory the index holds (entries, pack table), for figures.
    pub fn heap_bytes(&self) -> usize {
        self.blobs.capacity() * std::mem::size_of::<IndexEntry>()
            + self.pack_ids.capacity() * std::mem::size_of::<Id>()
            + self.packs.capacity() * (std::mem::size_of::<Id>() + std::mem::size_of::<PackInfo>() + 1)
            + self.buckets.starts.capacity() * 4
    }
}

/// The leading `bits` bits of an id.
fn bucket_of(id: &Id, bits: u32) -> u64 {
    if bits == 0 {
        return 0;
    }
    let lead = u64::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3], id.0[4], id.0[5], id.0[6], id.0[7]]);
    lead >> (64 - bits)
}

fn kind_from_bits(bits: u32) -> ObjectKind {
    match bits {
        2 => ObjectKind::Tree,
        3 => ObjectKind::PackHeader,
        4 => ObjectKind::Index,
        5 => ObjectKind::Snapshot,
        6 => ObjectKind::Config,
        7 => ObjectKind::MasterKey,
        _ => ObjectKind::Chunk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pack::{IndexedPack, PackBlob};

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    fn file(pack: u8, blobs: &[(u8, ObjectKind, u32)]) -> IndexFile {
        IndexFile {
            packs: vec![IndexedPack {
                pack: id(pack),
                blobs: blobs
                    .iter()
                    .map(|&(b, kind, offset)| PackBlob { id: id(b), kind, offset, length: 10, raw_length: 20 })
                    .collect(),
            }],
        }
    }

    #[test]
    fn finds_every_blob_with_its_pack_kind_and_place() {
        let index = Index::from_files([
            file(200, &[(3, ObjectKind::Chunk, 0), (1, ObjectKind::Tree, 10)]),
            file(201, &[(2, ObjectKind::Chunk, 0)]),
        ]);
        assert_eq!(index.len(), 3);
        let loc = index.get(&id(1)).expect("indexed");
        assert_eq!(
            (loc.pack, loc.kind, loc.offset, loc.length, loc.raw_length),
            (id(200), ObjectKind::Tree, 10, 10, 20)
        );
        assert_eq!(index.get(&id(2)).map(|l| l.pack), Some(id(201)));
        assert!(index.get(&id(9)).is_none() && !index.contains(&id(9)));
        assert_eq!(index.pack_end(&id(200)), Some(20));
        let ids: Vec<Id> = index.iter().map(|(i, _)| i).collect();
        assert_eq!(ids, vec![id(1), id(2), id(3)], "in id order");
    }

    #[test]
    fn a_blob_listed_twice_keeps_one_place_and_a_later_file_does_not_move_it() {
        let index =
            Index::from_files([file(200, &[(5, ObjectKind::Chunk, 0)]), file(201, &[(5, ObjectKind::Chunk, 30)])]);
        assert_eq!(index.len(), 1);
        let first = index.get(&id(5)).map(|l| l.pack);
        assert!(first == Some(id(200)) || first == Some(id(201)));
        let mut index = Index::from_files([file(200, &[(5, ObjectKind::Chunk, 0)])]);
        index
            .add_file(&file(202, &[(4, ObjectKind::Chunk, 0), (6, ObjectKind::Chunk, 10), (5, ObjectKind::Chunk, 20)]));
        assert_eq!(index.len(), 3);
        assert_eq!(index.get(&id(5)).map(|l| l.pack), Some(id(200)));
        assert_eq!(index.get(&id(6)).map(|l| l.pack), Some(id(202)));
        let without = index.without_packs(&HashSet::from([id(200)]));
        assert!(!without.contains(&id(5)) && without.contains(&id(4)) && !without.has_pack(&id(200)));
    }

    #[test]
    fn a_blob_also_in_a_pack_to_avoid_is_found_in_the_other() {
        for avoided in [200, 201] {
            let mut builder = IndexBuilder::default();
            builder.add(&file(200, &[(5, ObjectKind::Chunk, 0), (7, ObjectKind::Chunk, 10)]));
            builder.add(&file(201, &[(5, ObjectKind::Chunk, 30)]));
            let index = builder.finish_avoiding(&HashSet::from([id(avoided)]));
            let kept = if avoided == 200 { 201 } else { 200 };
            assert_eq!(index.get(&id(5)).map(|l| l.pack), Some(id(kept)));
            assert_eq!(index.get(&id(7)).map(|l| l.pack), Some(id(200)), "its only place, avoided or not");
        }
    }

    #[test]
    fn many_random_ids_are_all_found_and_others_are_not() {
        let ids: Vec<Id> = (0..20_000u32).map(|i| Id(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
        let (inside, outside) = ids.split_at(15_000);
        let files = inside.chunks(1000).enumerate().map(|(n, part)| IndexFile {
            packs: vec![IndexedPack {
                pack: Id([n as u8; 32]),
                blobs: part
                    .iter()
                    .map(|&id| PackBlob { id, kind: ObjectKind::Chunk, offset: 0, length: 1, raw_length: 1 })
                    .collect(),
            }],
        });
        let index = Index::from_files(files);
        assert_eq!(index.len(), inside.len());
        assert!(inside.iter().all(|id| index.contains(id)));
        assert!(!outside.iter().any(|id| index.contains(id)));
        assert!(index.heap_bytes() < inside.len() * 60, "{} bytes for {} blobs", index.heap_bytes(), inside.len());
    }

    #[test]
    fn an_entry_is_48_bytes() {
        assert_eq!(std::mem::size_of::<IndexEntry>(), 48);
    }
}
