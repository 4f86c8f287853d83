//! The index: which pack holds each blob.
//!
//! Every backup writes one index file listing the packs it wrote and their
//! blobs, after the packs and before the snapshot. The in-memory [`Index`] is
//! the union of all index files; a blob listed twice (two concurrent backups
//! stored the same chunk) may be read from either pack. Packs that no index
//! lists are leftovers of an interrupted run: nothing refers to them.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

use crate::engine::crypto::{Id, Keys, ObjectKind};
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
/// locations would. A big repository's entries stay on disk instead
/// ([`DiskEntries`], built by `engine::index_cache`): `blobs` then holds
/// only what was indexed since the cache was built.
#[derive(Debug, Default)]
pub struct Index {
    blobs: Vec<IndexEntry>,
    packs: PackTable,
    /// Where each bucket of ids (by their leading bits) starts in `blobs`:
    /// ids are uniformly random, so a bucket holds a handful of entries
    /// and a lookup is one small binary search.
    buckets: Buckets,
    disk: Option<DiskEntries>,
    /// Pack numbers whose entries on disk no longer count (`without_packs`).
    excluded: HashSet<u32>,
    /// Marked packs: an entry in `blobs` there gives way to one on disk.
    avoid: HashSet<u32>,
}

#[derive(Debug, Default)]
pub(crate) struct Buckets {
    pub(crate) bits: u32,
    pub(crate) starts: Vec<u32>,
}

impl Buckets {
    /// Buckets of about `per_bucket` entries over `ids`, sorted.
    pub(crate) fn over(ids: impl ExactSizeIterator<Item = Id>, per_bucket: usize) -> Buckets {
        let n = ids.len();
        let mut filler = BucketFiller::new(n, per_bucket);
        for (i, id) in ids.enumerate() {
            filler.entry(&id, i);
        }
        filler.finish(n)
    }

    /// The entries of `id`'s bucket.
    fn range(&self, id: &Id) -> Option<std::ops::Range<usize>> {
        let b = bucket_of(id, self.bits) as usize;
        Some(*self.starts.get(b)? as usize..*self.starts.get(b + 1)? as usize)
    }
}

/// Builds [`Buckets`] as entries go by in id order.
pub(crate) struct BucketFiller {
    buckets: Buckets,
    next: u64,
}

impl BucketFiller {
    /// For about `n` entries, `per_bucket` to a bucket.
    pub(crate) fn new(n: usize, per_bucket: usize) -> BucketFiller {
        let bits = (usize::BITS - (n / per_bucket.max(1)).leading_zeros()).min(24);
        BucketFiller { buckets: Buckets { bits, starts: Vec::with_capacity((1 << bits) + 1) }, next: 0 }
    }

    /// Entry number `i` has id `id`.
    pub(crate) fn entry(&mut self, id: &Id, i: usize) {
        let bucket = bucket_of(id, self.buckets.bits);
        while self.next <= bucket {
            self.buckets.starts.push(i as u32);
            self.next += 1;
        }
    }

    /// The buckets, after the last of `n` entries.
    pub(crate) fn finish(mut self, n: usize) -> Buckets {
        while self.next <= 1u64 << self.buckets.bits {
            self.buckets.starts.push(n as u32);
            self.next += 1;
        }
        self.buckets
    }
}

/// Every pack an index names: a number each (entries refer to packs by
/// number) and the end of its last indexed blob.
#[derive(Debug, Default)]
pub(crate) struct PackTable {
    ids: Vec<Id>,
    info: HashMap<Id, PackInfo>,
}

#[derive(Debug, Clone, Copy)]
struct PackInfo {
    number: u32,
    end: u64,
}

impl PackTable {
    /// A table whose pack `i` is `packs[i]` (as a cache recorded it).
    pub(crate) fn from_list(packs: &[(Id, u64)]) -> PackTable {
        let mut table = PackTable::default();
        for &(id, end) in packs {
            table.number(id, end);
        }
        table
    }

    /// Every pack with its end, in number order.
    pub(crate) fn list(&self) -> Vec<(Id, u64)> {
        self.ids.iter().map(|id| (*id, self.info.get(id).map_or(0, |i| i.end))).collect()
    }

    fn number(&mut self, pack: Id, end: u64) -> u32 {
        let next = self.ids.len() as u32;
        let info = self.info.entry(pack).or_insert(PackInfo { number: next, end });
        info.end = info.end.max(end);
        if info.number == next {
            self.ids.push(pack);
        }
        info.number
    }

    /// Number `file`'s packs and append its entries to `out`, unsorted.
    pub(crate) fn append(&mut self, file: &IndexFile, out: &mut Vec<IndexEntry>) {
        for p in &file.packs {
            let end = p.blobs.iter().map(|b| b.offset as u64 + b.length as u64).max().unwrap_or(0);
            let number = self.number(p.pack, end);
            out.extend(p.blobs.iter().map(|b| IndexEntry {
                id: b.id,
                pack_kind: (number << KIND_BITS) | b.kind as u32,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
            }));
        }
    }

    /// The numbers of `packs` that the table holds.
    pub(crate) fn numbers(&self, packs: &HashSet<Id>) -> HashSet<u32> {
        packs.iter().filter_map(|p| self.info.get(p)).map(|i| i.number).collect()
    }

    /// Which of two entries of the same blob is kept: outside `avoid`
    /// first, then the pack with the lower id (every run, every host, the
    /// same choice).
    pub(crate) fn rank(&self, e: &IndexEntry, avoid: &HashSet<u32>) -> (bool, Id) {
        let number = e.pack_number();
        (avoid.contains(&number), self.ids.get(number as usize).copied().unwrap_or(Id([0; 32])))
    }

    /// Sort `entries` by id and keep one entry per blob (by [`rank`]).
    pub(crate) fn sort_and_dedup(&self, entries: &mut Vec<IndexEntry>, avoid: &HashSet<u32>) {
        entries.sort_unstable_by(|a, b| a.id.cmp(&b.id).then_with(|| self.rank(a, avoid).cmp(&self.rank(b, avoid))));
        entries.dedup_by(|later, first| later.id == first.id);
    }
}

/// One blob: its id, its pack's number and kind (packed into one word),
/// and where it sits. On disk (the index cache) as 48 little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub(crate) id: Id,
    /// Pack number << 4 | object kind.
    pack_kind: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
}

/// Bytes of one entry on disk.
pub(crate) const ENTRY_LEN: usize = 48;

impl IndexEntry {
    pub(crate) fn pack_number(&self) -> u32 {
        self.pack_kind >> KIND_BITS
    }

    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..32].copy_from_slice(&self.id.0);
        for (i, word) in [self.pack_kind, self.offset, self.length, self.raw_length].into_iter().enumerate() {
            out[32 + 4 * i..36 + 4 * i].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// The entry in `bytes` (exactly [`ENTRY_LEN`] of them).
    pub(crate) fn decode(bytes: &[u8]) -> Option<IndexEntry> {
        let word = |i: usize| Some(u32::from_le_bytes(bytes.get(32 + 4 * i..36 + 4 * i)?.try_into().ok()?));
        Some(IndexEntry {
            id: Id(bytes.get(..32)?.try_into().ok()?),
            pack_kind: word(0)?,
            offset: word(1)?,
            length: word(2)?,
            raw_length: word(3)?,
        })
    }
}

const KIND_BITS: u32 = 4;

/// Gathers index files as they are read, then sorts once.
#[derive(Debug, Default)]
pub struct IndexBuilder(Index);

impl IndexBuilder {
    /// Start from a cache's entries on disk and the packs they number.
    pub(crate) fn on_disk(disk: DiskEntries, packs: &[(Id, u64)]) -> IndexBuilder {
        IndexBuilder(Index { packs: PackTable::from_list(packs), disk: Some(disk), ..Index::default() })
    }

    pub fn add(&mut self, file: &IndexFile) {
        self.0.packs.append(file, &mut self.0.blobs);
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
        index.avoid = index.packs.numbers(avoid);
        index.packs.sort_and_dedup(&mut index.blobs, &index.avoid);
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
        self.buckets = Buckets::over(self.blobs.iter().map(|e| e.id), 4);
    }

    fn find_in_memory(&self, id: &Id) -> Option<&IndexEntry> {
        let slice = self.blobs.get(self.buckets.range(id)?)?;
        slice.binary_search_by(|e| e.id.cmp(id)).ok().map(|i| &slice[i])
    }

    fn find(&self, id: &Id) -> Option<IndexEntry> {
        let in_memory = self.find_in_memory(id).copied();
        let Some(disk) = &self.disk else { return in_memory };
        if let Some(e) = in_memory
            && !self.avoid.contains(&e.pack_number())
        {
            return Some(e);
        }
        disk.find(id).filter(|e| !self.excluded.contains(&e.pack_number())).or(in_memory)
    }

    /// Add one more index file (a few packs: adoption, repair).
    pub fn add_file(&mut self, file: &IndexFile) {
        if file.packs.is_empty() {
            return;
        }
        self.packs.append(file, &mut self.blobs);
        // The stable sort finds the sorted run already there and merges
        // the new entries into it; equal ids keep their order.
        self.blobs.sort_by_key(|e| e.id);
        self.blobs.dedup_by(|later, first| later.id == first.id);
        self.rebucket();
    }

    /// Drop every blob located in one of `packs` (a backup must not reuse
    /// blobs from packs marked for deletion).
    pub fn without_packs(mut self, packs: &HashSet<Id>) -> Index {
        let numbers = self.packs.numbers(packs);
        if !numbers.is_empty() {
            self.blobs.retain(|e| !numbers.contains(&e.pack_number()));
            self.packs.info.retain(|p, _| !packs.contains(p));
            self.excluded.extend(numbers);
            self.rebucket();
        }
        self
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id).map(|e| self.location(&e))
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }

    fn location(&self, e: &IndexEntry) -> BlobLocation {
        BlobLocation {
            pack: self.packs.ids.get(e.pack_number() as usize).copied().unwrap_or(Id([0; 32])),
            kind: kind_from_bits(e.pack_kind & ((1 << KIND_BITS) - 1)),
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }

    /// Packs named by some index, with the end of their last blob.
    pub fn packs(&self) -> impl Iterator<Item = (&Id, u64)> {
        self.packs.info.iter().map(|(id, info)| (id, info.end))
    }

    pub fn has_pack(&self, pack: &Id) -> bool {
        self.packs.info.contains_key(pack)
    }

    /// The end of `pack`'s last indexed blob.
    pub fn pack_end(&self, pack: &Id) -> Option<u64> {
        self.packs.info.get(pack).map(|i| i.end)
    }

    /// Entries (a blob indexed both on disk and since counts twice).
    pub fn len(&self) -> usize {
        self.blobs.len() + self.disk.as_ref().map_or(0, |d| d.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the entries are on disk (the index cache), not in memory.
    pub fn is_on_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Every blob in id order.
    pub fn iter(&self) -> impl Iterator<Item = (Id, BlobLocation)> + '_ {
        let on_disk = self.disk.iter().flat_map(|d| d.iter()).filter(|e| !self.excluded.contains(&e.pack_number()));
        let mut memory = self.blobs.iter().copied().peekable();
        let mut on_disk = on_disk.peekable();
        std::iter::from_fn(move || {
            let next = match (memory.peek(), on_disk.peek()) {
                (Some(m), Some(d)) if d.id < m.id => on_disk.next(),
                (Some(m), Some(d)) if d.id == m.id => {
                    on_disk.next();
                    memory.next()
                }
                (Some(_), _) => memory.next(),
                (None, _) => on_disk.next(),
            }?;
            Some((next.id, self.location(&next)))
        })
    }

    /// Bytes of memory the index holds (entries, pack table), for figures.
    pub fn heap_bytes(&self) -> usize {
        self.blobs.capacity() * std::mem::size_of::<IndexEntry>()
            + self.packs.ids.capacity() * std::mem::size_of::<Id>()
            + self.packs.info.capacity() * (std::mem::size_of::<Id>() + std::mem::size_of::<PackInfo>() + 1)
            + self.buckets.starts.capacity() * 4
            + self.disk.as_ref().map_or(0, |d| d.heap_bytes())
    }
}

/// Entries per block of a cache's entries file: each block has its own
/// tag and is checked when a lookup first reads from it.
pub(crate) const BLOCK_ENTRIES: usize = 1024;

/// A cache's sorted entries, read from its file where lookups land
/// (positioned reads: nothing is mapped or held but the buckets and the
/// block tags). A block is believed only once it matches its tag; a block
/// that does not is treated as holding nothing (a backup stores those
/// blobs again, a restore reports them missing), said once, and the cache
/// is dropped so the next run rebuilds it.
pub struct DiskEntries {
    file: std::fs::File,
    /// Names the file; bound into every block's tag.
    file_id: Id,
    count: usize,
    buckets: Buckets,
    tags: Vec<[u8; 32]>,
    /// Per block: 0 not read yet, 1 good, 2 damaged.
    checked: Box<[AtomicU8]>,
    keys: Arc<Keys>,
    /// The cache's files (head, entries): removed when a block is found
    /// damaged, so the next run rebuilds them.
    paths: [PathBuf; 2],
    said: AtomicBool,
}

impl std::fmt::Debug for DiskEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskEntries").field("file", &self.paths[1]).field("count", &self.count).finish()
    }
}

impl DiskEntries {
    pub(crate) fn new(
        file: std::fs::File,
        file_id: Id,
        count: usize,
        buckets: Buckets,
        tags: Vec<[u8; 32]>,
        keys: Arc<Keys>,
        paths: [PathBuf; 2],
    ) -> DiskEntries {
        let checked = (0..tags.len()).map(|_| AtomicU8::new(0)).collect();
        DiskEntries { file, file_id, count, buckets, tags, checked, keys, paths, said: AtomicBool::new(false) }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.starts.capacity() * 4 + self.tags.capacity() * 33
    }

    fn find(&self, id: &Id) -> Option<IndexEntry> {
        let range = self.buckets.range(id)?;
        if range.is_empty() || range.end > self.count {
            return None;
        }
        let blocks = range.start / BLOCK_ENTRIES..=(range.end - 1) / BLOCK_ENTRIES;
        if !blocks.clone().all(|b| self.block_is_good(b)) {
            return None;
        }
        // A bucket holds about 16 entries: read into the stack unless
        // this one is unusually full.
        let mut stack = [0u8; 64 * ENTRY_LEN];
        let mut heap = Vec::new();
        let bytes = match stack.get_mut(..range.len() * ENTRY_LEN) {
            Some(part) => part,
            None => {
                heap.resize(range.len() * ENTRY_LEN, 0);
                &mut heap[..]
            }
        };
        if let Err(e) = self.file.read_exact_at(bytes, (range.start * ENTRY_LEN) as u64) {
            self.damaged(&format!("reading it failed: {e}"));
            return None;
        }
        let (mut lo, mut hi) = (0, range.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = &bytes[mid * ENTRY_LEN..(mid + 1) * ENTRY_LEN];
            match at[..32].cmp(&id.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return IndexEntry::decode(at),
            }
        }
        None
    }

    /// Whether block `b` matches its tag (read and checked once).
    fn block_is_good(&self, b: usize) -> bool {
        let Some(state) = self.checked.get(b) else { return false };
        match state.load(Ordering::Acquire) {
            1 => true,
            2 => false,
            _ => {
                let good = self.read_block(b).is_some();
                state.store(if good { 1 } else { 2 }, Ordering::Release);
                good
            }
        }
    }

    /// Block `b`'s bytes, when they match its tag.
    fn read_block(&self, b: usize) -> Option<Vec<u8>> {
        let first = b * BLOCK_ENTRIES;
        let n = BLOCK_ENTRIES.min(self.count.saturating_sub(first));
        let mut bytes = vec![0u8; n * ENTRY_LEN];
        if let Err(e) = self.file.read_exact_at(&mut bytes, (first * ENTRY_LEN) as u64) {
            self.damaged(&format!("reading block {b} failed: {e}"));
            return None;
        }
        if self.tags.get(b) != Some(&self.keys.cache_tag(&self.file_id, b as u64, &bytes)) {
            self.damaged(&format!("block {b} does not match its tag"));
            return None;
        }
        Some(bytes)
    }

    fn damaged(&self, what: &str) {
        if !self.said.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the index cache {} is damaged ({what}); the blobs it lists there are treated as absent, and it will be rebuilt",
                self.paths[1].display()
            );
            for path in &self.paths {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Every entry in id order, block by block (a damaged block is skipped,
    /// and said).
    fn iter(&self) -> impl Iterator<Item = IndexEntry> + '_ {
        (0..self.tags.len()).filter_map(|b| self.read_block(b)).flat_map(|bytes| {
            (0..bytes.len() / ENTRY_LEN)
                .filter_map(|i| IndexEntry::decode(&bytes[i * ENTRY_LEN..(i + 1) * ENTRY_LEN]))
                .collect::<Vec<_>>()
        })
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
