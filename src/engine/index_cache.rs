//! The index of a big or remote repository kept on local disk, so that its
//! size in memory does not grow with the repository (a command that looks
//! up a few blobs, to restore one file or back up a small tree, reads a few
//! blocks) and a bucket's index files are fetched once, not on every run.
//!
//! Two files per repository in its cache directory (`engine::cache`, 0700):
//!
//! - `index-<id>.entries`: every blob's 48-byte entry (`engine::index`),
//!   sorted by id, one entry per blob (the same choice `IndexBuilder` makes);
//! - `index`: sealed with the repository's keys (so it opens for no other
//!   repository and not at all once changed): which index files and marked
//!   packs the entries were built from, the pack table they number, the
//!   buckets (where each id prefix starts) and a keyed tag per block of
//!   entries. A block is read and checked against its tag before any lookup
//!   believes it (`DiskEntries`): a damaged cache never makes a backup skip a
//!   blob it must store.
//!
//! The cache is used while every index file it was built from is still
//! listed and the marks are the same; index files added since (other
//! backups) are read into memory beside it, until they hold more than an
//! eighth of it. Otherwise it is rebuilt with bounded memory: index files
//! are read in turn, their entries sorted in runs of a million and spilled
//! to temporary files, then merged. Both files are written whole before the
//! head is renamed into place, so a crash or a concurrent run leaves one
//! complete version. Any failure only costs memory: the index is then held
//! in memory as before.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::backend::FileInfo;
use crate::engine::crypto::{Id, Keys, ObjectKind};
use crate::engine::index::{
    BLOCK_ENTRIES, BucketFiller, Buckets, DiskEntries, ENTRY_LEN, IndexEntry, IndexFile, PackTable,
};
use crate::error::{Error, IoContext, Result};

const FORMAT: u32 = 1;
/// Entries sorted in memory before a run is spilled (48 MiB).
const RUN_ENTRIES: usize = 1 << 20;
/// Entries per bucket on disk: one lookup reads about this many.
const PER_BUCKET: usize = 16;
/// Bytes of an index file per entry, about (to size what was added).
const INDEX_FILE_BYTES_PER_ENTRY: u64 = 40;

/// The bytes of index files above which a repository's index is kept on
/// disk: `$HOLDFAST_INDEX_CACHE_ABOVE` (bytes), else 64 MiB (about 1.6
/// million blobs, 80 MiB in memory).
pub fn threshold() -> u64 {
    std::env::var("HOLDFAST_INDEX_CACHE_ABOVE").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(64 << 20)
}

/// The cache head, sealed.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    format: u32,
    entries_file: Id,
    /// Index files the entries hold, sorted.
    files: Vec<String>,
    /// Marked packs when they were built, sorted.
    marks: Vec<Id>,
    packs: Vec<(Id, u64)>,
    count: u64,
    bucket_bits: u32,
    bucket_starts: Vec<u32>,
    tags: Vec<[u8; 32]>,
}

/// What an open cache gives: its entries and pack table, and which index
/// files they already hold.
pub struct Cached {
    pub disk: DiskEntries,
    pub packs: Vec<(Id, u64)>,
    pub files: HashSet<String>,
}

/// One repository's index cache.
pub struct IndexCache {
    dir: PathBuf,
    repo_id: Id,
    keys: Arc<Keys>,
    /// Entries sorted in memory before a run is spilled.
    pub(crate) run_entries: usize,
}

impl IndexCache {
    /// The cache of repository `repo_id` under the cache root `root`.
    pub fn new(root: &Path, repo_id: &Id, keys: Arc<Keys>) -> IndexCache {
        IndexCache { dir: root.join(repo_id.to_hex()), repo_id: *repo_id, keys, run_entries: RUN_ENTRIES }
    }

    fn head_path(&self) -> PathBuf {
        self.dir.join("index")
    }

    fn entries_path(&self, id: &Id) -> PathBuf {
        self.dir.join(format!("index-{}.entries", id.to_hex()))
    }

    /// The cache, if it still describes the repository whose index files
    /// are `listed` and whose marked packs are `marked`.
    pub fn open(&self, listed: &[FileInfo], marked: &HashSet<Id>) -> Option<Cached> {
        let head = self.read_head()?;
        let sizes: HashMap<&str, u64> = listed.iter().map(|f| (f.name.as_str(), f.size)).collect();
        let mut marks: Vec<Id> = marked.iter().copied().collect();
        marks.sort();
        if head.format != FORMAT || head.marks != marks || !head.files.iter().all(|f| sizes.contains_key(f.as_str())) {
            return None;
        }
        let files: HashSet<String> = head.files.into_iter().collect();
        let added: u64 = listed.iter().filter(|f| !files.contains(&f.name)).map(|f| f.size).sum();
        if added / INDEX_FILE_BYTES_PER_ENTRY > (head.count / 8).max(self.run_entries as u64) {
            return None;
        }
        let path = self.entries_path(&head.entries_file);
        let file = crate::fsutil::open_regular(&path).ok()?;
        let count = usize::try_from(head.count).ok()?;
        let blocks = count.div_ceil(BLOCK_ENTRIES);
        let buckets = Buckets { bits: head.bucket_bits, starts: head.bucket_starts };
        let whole = file.metadata().ok()?.len() == (count * ENTRY_LEN) as u64
            && head.tags.len() == blocks
            && buckets.bits <= 24
            && buckets.starts.len() == (1usize << buckets.bits) + 1
            && buckets.starts.last().is_some_and(|&n| n as usize == count);
        if !whole {
            return None;
        }
        let disk = DiskEntries::new(
            file,
            head.entries_file,
            count,
            buckets,
            head.tags,
            self.keys.clone(),
            [self.head_path(), path],
        );
        Some(Cached { disk, packs: head.packs, files })
    }

    fn read_head(&self) -> Option<Head> {
        let path = self.head_path();
        let mut bytes = Vec::new();
        crate::fsutil::open_regular(&path).and_then(|mut f| f.read_to_end(&mut bytes)).ok()?;
        let plain = self
            .keys
            .open(ObjectKind::Index, &self.repo_id, &bytes)
            .map_err(|e| tracing::debug!("ignoring the index cache {}: {e}", path.display()))
            .ok()?;
        postcard::from_bytes(&plain).ok()
    }

    /// A builder of a new cache for a repository whose marked packs are
    /// `marked`; index files are given to it as they are read.
    pub fn builder(&self, marked: &HashSet<Id>) -> Result<CacheBuilder<'_>> {
        crate::engine::cache::private_dir(&self.dir)?;
        self.remove_leftovers();
        Ok(CacheBuilder {
            cache: self,
            marked: marked.clone(),
            packs: PackTable::default(),
            run: Vec::new(),
            runs: Vec::new(),
            spilled: 0,
            files: Vec::new(),
            failed: None,
        })
    }

    /// Entries files no head names any more and runs of a build that died,
    /// once they are old enough not to be another run's work in progress.
    fn remove_leftovers(&self) {
        let current = self.read_head().map(|h| self.entries_path(&h.entries_file));
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let old = |md: &std::fs::Metadata| {
            md.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age.as_secs() > 3600)
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = (name.starts_with("index-") && name.ends_with(".entries")) || name.starts_with(".index-run-");
            if ours && Some(e.path()) != current && e.metadata().is_ok_and(|md| old(&md)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Builds a cache from index files with bounded memory (see the module's
/// comment).
pub struct CacheBuilder<'a> {
    cache: &'a IndexCache,
    marked: HashSet<Id>,
    packs: PackTable,
    run: Vec<IndexEntry>,
    runs: Vec<SpilledRun>,
    /// Entries in `runs`.
    spilled: usize,
    files: Vec<String>,
    failed: Option<Error>,
}

/// A sorted run in a temporary file (removed when dropped).
struct SpilledRun {
    path: PathBuf,
}

impl Drop for SpilledRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl CacheBuilder<'_> {
    /// Add index file `name`, just read.
    pub fn add(&mut self, name: &str, file: &IndexFile) {
        if self.failed.is_some() {
            return;
        }
        self.packs.append(file, &mut self.run);
        self.files.push(name.to_owned());
        if self.run.len() >= self.cache.run_entries
            && let Err(e) = self.spill()
        {
            self.failed = Some(e);
        }
    }

    fn avoid(&self) -> HashSet<u32> {
        self.packs.numbers(&self.marked)
    }

    fn spill(&mut self) -> Result<()> {
        let avoid = self.avoid();
        self.packs.sort_and_dedup(&mut self.run, &avoid);
        let path = self.cache.dir.join(format!(".index-run-{}", Id::random()?.to_hex()));
        let run = SpilledRun { path };
        let mut out = BufWriter::with_capacity(1 << 20, crate::fsutil::create_private(&run.path)?);
        self.spilled += self.run.len();
        for e in self.run.drain(..) {
            out.write_all(&e.encode()).at(&run.path)?;
        }
        out.flush().at(&run.path)?;
        self.runs.push(run);
        Ok(())
    }

    /// Merge the runs into the entries file and write the head.
    pub fn finish(mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.spill()?;
        let avoid = self.avoid();
        let file_id = Id::random()?;
        let path = self.cache.entries_path(&file_id);
        let mut readers = self
            .runs
            .iter()
            .map(|r| Ok(BufReader::with_capacity(256 << 10, std::fs::File::open(&r.path).at(&r.path)?)))
            .collect::<Result<Vec<_>>>()?;
        let next = |i: usize, readers: &mut Vec<BufReader<std::fs::File>>| -> Result<Option<IndexEntry>> {
            let mut bytes = [0u8; ENTRY_LEN];
            match readers[i].read_exact(&mut bytes) {
                Ok(()) => Ok(IndexEntry::decode(&bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(Error::io(&self.runs[i].path, e)),
            }
        };
        // Smallest (id, rank) first: the first entry of an id is the kept one.
        let mut heap = BinaryHeap::new();
        for i in 0..readers.len() {
            if let Some(e) = next(i, &mut readers)? {
                heap.push(std::cmp::Reverse((e.id, self.packs.rank(&e, &avoid), i, e.encode())));
            }
        }
        let mut filler = BucketFiller::new(self.spilled, PER_BUCKET);
        let mut tags = Vec::new();
        let mut block = Vec::with_capacity(BLOCK_ENTRIES * ENTRY_LEN);
        let mut out = BufWriter::with_capacity(1 << 20, crate::fsutil::create_private(&path)?);
        let mut written = 0usize;
        let mut last: Option<Id> = None;
        let result = (|| -> Result<()> {
            while let Some(std::cmp::Reverse((id, _, i, bytes))) = heap.pop() {
                if let Some(e) = next(i, &mut readers)? {
                    heap.push(std::cmp::Reverse((e.id, self.packs.rank(&e, &avoid), i, e.encode())));
                }
                if last == Some(id) {
                    continue;
                }
                last = Some(id);
                filler.entry(&id, written);
                block.extend_from_slice(&bytes);
                written += 1;
                if written.is_multiple_of(BLOCK_ENTRIES) {
                    tags.push(self.cache.keys.cache_tag(&file_id, tags.len() as u64, &block));
                    out.write_all(&block).at(&path)?;
                    block.clear();
                }
            }
            if !block.is_empty() {
                tags.push(self.cache.keys.cache_tag(&file_id, tags.len() as u64, &block));
                out.write_all(&block).at(&path)?;
            }
            out.flush().at(&path)?;
            out.get_ref().sync_all().at(&path)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let buckets = filler.finish(written);
        let mut files = std::mem::take(&mut self.files);
        files.sort();
        let mut marks: Vec<Id> = self.marked.iter().copied().collect();
        marks.sort();
        let head = Head {
            format: FORMAT,
            entries_file: file_id,
            files,
            marks,
            packs: self.packs.list(),
            count: written as u64,
            bucket_bits: buckets.bits,
            bucket_starts: buckets.starts,
            tags,
        };
        let plain = postcard::to_stdvec(&head).map_err(|e| Error::Invalid(e.to_string()))?;
        let sealed = self.cache.keys.seal(ObjectKind::Index, &self.cache.repo_id, &plain, 1)?;
        let head_path = self.cache.head_path();
        let previous = self.cache.read_head().map(|h| self.cache.entries_path(&h.entries_file));
        if let Err(e) = crate::fsutil::write_atomically(&head_path, &sealed, crate::fsutil::PRIVATE_FILE) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        // The entries the old head named: a run that opened them keeps
        // reading its open file.
        if let Some(old) = previous.filter(|old| *old != path) {
            let _ = std::fs::remove_file(old);
        }
        tracing::debug!("index cache {} built: {written} entries", head_path.display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backend::{Backend, INDEX, MemoryBackend};
    use crate::engine::index::Index;
    use crate::engine::pack::{IndexedPack, PackBlob};
    use crate::engine::repository::Repository;

    fn repository() -> (Arc<MemoryBackend>, Repository) {
        Repository::in_memory()
    }

    fn blob_id(n: u32) -> Id {
        Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    /// Index files of `blobs` blobs (numbered from `first`), 32 to a pack
    /// and 10 packs to a file; each pack also holds a blob of the pack
    /// before (as two concurrent backups would).
    fn write_index_files(repo: &Repository, first: u32, blobs: u32) {
        let blob = |i: u32, offset: u32| PackBlob {
            id: blob_id(i),
            kind: ObjectKind::Chunk,
            offset,
            length: 100,
            raw_length: 200,
        };
        let starts: Vec<u32> = (first..first + blobs).step_by(32).collect();
        for file in starts.chunks(10) {
            let packs = file
                .iter()
                .map(|&n| {
                    let mut blobs: Vec<PackBlob> =
                        (n..(n + 32).min(first + blobs)).map(|i| blob(i, 100 * (i - n))).collect();
                    if n > first {
                        blobs.push(blob(n - 5, 9_000));
                    }
                    IndexedPack { pack: Id::random().unwrap(), blobs }
                })
                .collect();
            repo.write_index_file(&IndexFile { packs }).unwrap();
        }
    }

    fn in_memory(store: &MemoryBackend, repo: &Repository, marked: &HashSet<Id>) -> Index {
        let mut builder = crate::engine::index::IndexBuilder::default();
        for f in store.list(INDEX).unwrap() {
            builder.add(&repo.read_index_file(&f.name).unwrap());
        }
        builder.finish_avoiding(marked)
    }

    fn cached(store: &MemoryBackend, repo: &Repository, cache: &IndexCache, marked: &HashSet<Id>) -> Index {
        let listed = store.list(INDEX).unwrap();
        let (index, damaged) = repo.load_index_cached(cache, &listed, marked).unwrap();
        assert!(damaged.is_empty());
        assert!(index.is_on_disk());
        index
    }

    fn entries_file(cache: &IndexCache) -> Id {
        cache.read_head().expect("a head").entries_file
    }

    #[test]
    fn the_cached_index_answers_every_lookup_as_the_one_in_memory_and_keeps_up_with_new_files() {
        let (store, repo) = repository();
        write_index_files(&repo, 0, 20_000);
        let root = tempfile::tempdir().unwrap();
        let mut cache = IndexCache::new(root.path(), &repo.config().id, repo.keys().clone());
        cache.run_entries = 3_000; // several runs to merge
        // A marked pack's blobs that are also elsewhere are read elsewhere.
        let some_pack = in_memory(&store, &repo, &HashSet::new()).get(&blob_id(3_201)).unwrap().pack;
        let marked = HashSet::from([some_pack]);
        let disk = cached(&store, &repo, &cache, &marked);
        let memory = in_memory(&store, &repo, &marked);
        assert_eq!(disk.len(), memory.len());
        for n in 0..21_000 {
            assert_eq!(disk.get(&blob_id(n)), memory.get(&blob_id(n)), "blob {n}");
        }
        assert!(disk.iter().eq(memory.iter()), "the same entries in the same order");
        assert!(disk.heap_bytes() < memory.heap_bytes() / 2, "{} vs {}", disk.heap_bytes(), memory.heap_bytes());

        // A backup's new index file is read beside the cache, which stays.
        let built = entries_file(&cache);
        write_index_files(&repo, 20_000, 500);
        let disk = cached(&store, &repo, &cache, &marked);
        assert_eq!(entries_file(&cache), built, "not rebuilt for one more file");
        let memory = in_memory(&store, &repo, &marked);
        for n in 19_900..20_600 {
            assert_eq!(disk.get(&blob_id(n)), memory.get(&blob_id(n)), "blob {n}");
        }
        // What a backup drops (packs cut short or marked) is gone from both.
        let drop = HashSet::from([memory.get(&blob_id(5)).unwrap().pack, memory.get(&blob_id(20_100)).unwrap().pack]);
        let (disk, memory) = (disk.without_packs(&drop), memory.without_packs(&drop));
        for n in 0..20_600 {
            assert_eq!(disk.get(&blob_id(n)), memory.get(&blob_id(n)), "blob {n}");
        }

        // New marks, or an index file gone (prune merged it), rebuild it.
        let _ = cached(&store, &repo, &cache, &HashSet::new());
        let rebuilt = entries_file(&cache);
        assert_ne!(rebuilt, built);
        assert!(!cache.entries_path(&built).exists(), "the old entries are removed");
        let gone = store.list(INDEX).unwrap()[0].name.clone();
        store.remove(INDEX, &gone).unwrap();
        let disk = cached(&store, &repo, &cache, &HashSet::new());
        assert_ne!(entries_file(&cache), rebuilt);
        let memory = in_memory(&store, &repo, &HashSet::new());
        for n in 0..20_600 {
            assert_eq!(disk.get(&blob_id(n)), memory.get(&blob_id(n)), "blob {n}");
        }
    }

    #[test]
    fn a_fifo_or_a_symlink_where_a_cache_file_goes_is_no_cache_and_never_waited_on() {
        let (store, repo) = repository();
        write_index_files(&repo, 0, 3_000);
        let root = tempfile::tempdir().unwrap();
        let cache = IndexCache::new(root.path(), &repo.config().id, repo.keys().clone());
        let _ = cached(&store, &repo, &cache, &HashSet::new());
        let listed = store.list(INDEX).unwrap();
        let entries = cache.entries_path(&entries_file(&cache));
        let elsewhere = root.path().join("elsewhere");
        std::fs::rename(&entries, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &entries).unwrap();
        assert!(cache.open(&listed, &HashSet::new()).is_none(), "a symlink is not followed");
        std::fs::remove_file(&entries).unwrap();
        nix::unistd::mkfifo(&entries, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(cache.open(&listed, &HashSet::new()).is_none(), "a FIFO is not opened for good");
        std::fs::remove_file(&entries).unwrap();
        std::fs::rename(cache.head_path(), &elsewhere).unwrap();
        nix::unistd::mkfifo(&cache.head_path(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(cache.open(&listed, &HashSet::new()).is_none(), "a FIFO head is no head");
        // The next load builds a cache beside it, and answers.
        let disk = cached(&store, &repo, &cache, &HashSet::new());
        let memory = in_memory(&store, &repo, &HashSet::new());
        assert!((0..3_000).all(|n| disk.get(&blob_id(n)) == memory.get(&blob_id(n))));
    }

    #[test]
    fn a_damaged_cache_is_never_believed_and_is_rebuilt() {
        let (store, repo) = repository();
        write_index_files(&repo, 0, 10_000);
        let root = tempfile::tempdir().unwrap();
        let cache = IndexCache::new(root.path(), &repo.config().id, repo.keys().clone());
        let _ = cached(&store, &repo, &cache, &HashSet::new());
        // One byte changed in the second block (a failing disk, a hand).
        let path = cache.entries_path(&entries_file(&cache));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(BLOCK_ENTRIES + 10) * ENTRY_LEN + 40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let memory = in_memory(&store, &repo, &HashSet::new());
        let disk = cached(&store, &repo, &cache, &HashSet::new());
        let mut absent = 0;
        for n in 0..10_000 {
            match disk.get(&blob_id(n)) {
                Some(found) => assert_eq!(Some(found), memory.get(&blob_id(n)), "never a wrong place"),
                None => absent += 1,
            }
        }
        assert!((1..=2 * BLOCK_ENTRIES).contains(&absent), "only the damaged block's blobs are absent: {absent}");
        assert!(!cache.head_path().exists(), "dropped, so the next run rebuilds it");
        let disk = cached(&store, &repo, &cache, &HashSet::new());
        assert!((0..10_000).all(|n| disk.get(&blob_id(n)) == memory.get(&blob_id(n))));

        // A head that is not this repository's (another's cache copied in, or
        // changed) does not open.
        let (_, other) = repository();
        let foreign = IndexCache::new(root.path(), &repo.config().id, other.keys().clone());
        assert!(foreign.read_head().is_none());
        let mut head = std::fs::read(cache.head_path()).unwrap();
        let last = head.len() - 1;
        head[last] ^= 1;
        std::fs::write(cache.head_path(), head).unwrap();
        assert!(cache.open(&store.list(INDEX).unwrap(), &HashSet::new()).is_none());
    }
}
