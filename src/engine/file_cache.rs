//! Files of a remote repository kept on local disk: its tree packs, so that
//! a backup compares against its parent, and `ls`, `find`, `diff`, `mount`
//! and a restore walk directories, without a round trip per level of
//! directories to a bucket or an SSH host; and its index files, so that
//! those added since the index cache was built are not fetched again on
//! every run. Both are named by the hash of their bytes and never change
//! once written, so a cached file is never stale: a prune on another host
//! only makes some unused, and those age out. What a backup writes goes
//! into the cache as it is uploaded.
//!
//! `<cache dir>/<repository id>/{tree-packs,index-files}/<name>`, in the
//! private directories of `engine::cache`, files 0600. A file is stored
//! whole, as it is in the repository (still sealed), and only when its bytes
//! hash to its name; it is hashed again every time it is read, and one that
//! does not match is deleted and fetched again. Files are written to a
//! temporary name and renamed, so concurrent runs and a crash leave either
//! nothing or a whole file. Each use sets a file's modification time; when a
//! directory holds more than the cap (`--cache-size`, 1 GiB by default),
//! the least recently used files go. Any failure only costs speed: the file
//! is read from the repository.
//!
//! Beside them, `<cache dir>/key-files/` keeps, per repository location, the
//! key file that last opened it (wrapped by its passphrase, as the
//! repository holds it), so that the passphrase is checked while the first
//! requests are on their way.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::engine::crypto::Id;

/// The cap on each directory of cached files, in bytes (`--cache-size`).
static CAP: AtomicU64 = AtomicU64::new(DEFAULT_CAP);
const DEFAULT_CAP: u64 = 1 << 30;

/// Set the cap on each directory of cached files (`--cache-size`; 0 keeps
/// none).
pub fn set_cap(bytes: u64) {
    CAP.store(bytes, Ordering::Relaxed);
}

/// A tree pack up to this size is fetched whole and cached.
pub const CACHED_TREE_PACK: u64 = 64 << 20;

/// Files read lately, kept in memory for the next use (the next tree of the
/// same pack, when a path is walked tree by tree or by `mount`): up to this
/// many bytes, and always the newest one.
const RECENT_BYTES: usize = 64 << 20;

/// Temporary files older than this were left by a run that died.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// One directory of one repository's cached files.
pub struct FileCache {
    dir: PathBuf,
    cap: u64,
    /// What the directory holds, as this process last counted it plus what
    /// it added since (None until the first addition counts it).
    held: Mutex<Option<u64>>,
    recent: Mutex<VecDeque<(Id, Arc<Vec<u8>>)>>,
    /// How much `recent` may hold (0: nothing; index files are read once).
    recent_bytes: usize,
    temporaries: AtomicU64,
    /// A write failed (a full disk, a read-only directory): no more tries.
    failed: AtomicBool,
}

impl FileCache {
    /// The cache of repository `repo_id`'s files of one kind (`tree-packs`,
    /// `index-files`), when there is a cache directory and a cap above 0.
    pub fn open(repo_id: &Id, kind: &str) -> Option<FileCache> {
        let cap = CAP.load(Ordering::Relaxed);
        let root = crate::engine::cache::cache_root()?;
        let cache = FileCache::at(root.join(repo_id.to_hex()).join(kind), cap);
        // A directory another user made or may write into is not read from.
        if cap == 0 || crate::engine::cache::private_dir(&cache.dir).is_err() {
            return None;
        }
        let recent_bytes = if kind == "tree-packs" { RECENT_BYTES } else { 0 };
        Some(FileCache { recent_bytes, ..cache })
    }

    fn at(dir: PathBuf, cap: u64) -> FileCache {
        FileCache {
            dir,
            cap,
            held: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            recent_bytes: RECENT_BYTES,
            temporaries: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    /// Whether a file of `len` bytes would be kept (not above the cap, and
    /// the directory still takes writes): callers fetch whole only what is.
    pub fn keeps(&self, len: u64) -> bool {
        len <= self.cap && !self.failed.load(Ordering::Relaxed)
    }

    /// File `pack`, whole: from memory, from the cache directory, or through
    /// `fetch` (which then goes into the cache when it hashes to its name).
    pub fn get_or_fetch(
        &self,
        pack: &Id,
        fetch: impl FnOnce() -> crate::Result<Vec<u8>>,
    ) -> crate::Result<Arc<Vec<u8>>> {
        if let Some(bytes) = self.recent(pack) {
            return Ok(bytes);
        }
        let bytes = match self.read(pack) {
            Some(bytes) => Arc::new(bytes),
            None => {
                let bytes = fetch()?;
                self.keep(pack, &bytes);
                Arc::new(bytes)
            }
        };
        self.remember(pack, &bytes);
        Ok(bytes)
    }

    fn recent(&self, pack: &Id) -> Option<Arc<Vec<u8>>> {
        let recent = self.recent.lock().ok()?;
        recent.iter().find(|(id, _)| id == pack).map(|(_, bytes)| bytes.clone())
    }

    fn remember(&self, pack: &Id, bytes: &Arc<Vec<u8>>) {
        let Ok(mut recent) = self.recent.lock() else { return };
        if self.recent_bytes == 0 {
            return;
        }
        recent.push_back((*pack, bytes.clone()));
        while recent.len() > 1 && recent.iter().map(|(_, b)| b.len()).sum::<usize>() > self.recent_bytes {
            recent.pop_front();
        }
    }

    fn path(&self, pack: &Id) -> PathBuf {
        self.dir.join(pack.to_hex())
    }

    /// The cached file, if it is there and still hashes to its name (one
    /// that does not is deleted). Marks it used.
    fn read(&self, pack: &Id) -> Option<Vec<u8>> {
        let path = self.path(pack);
        let mut file = crate::fsutil::open_regular(&path).ok()?;
        if file.metadata().ok()?.len() > self.cap {
            return None;
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
        if Id::of_bytes(&bytes) != *pack {
            tracing::warn!("the cached file {} is damaged; reading it from the repository", path.display());
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let _ = file.set_modified(SystemTime::now());
        Some(bytes)
    }

    /// Keep `bytes`, just written to the repository as `name`, for later
    /// runs (only when they hash to it).
    pub fn keep(&self, name: &Id, bytes: &[u8]) {
        if Id::of_bytes(bytes) == *name {
            self.write(name, bytes);
        }
    }

    /// Keep `bytes` (which hash to `pack`) for later runs; then make room.
    fn write(&self, pack: &Id, bytes: &[u8]) {
        if bytes.len() as u64 > self.cap {
            return;
        }
        if let Err(e) = self.write_file(pack, bytes) {
            tracing::debug!("could not cache {}: {e}", self.path(pack).display());
            self.failed.store(true, Ordering::Relaxed);
            return;
        }
        let Ok(mut held) = self.held.lock() else { return };
        let total = match *held {
            Some(n) => n + bytes.len() as u64,
            None => self.sweep(),
        };
        *held = Some(if total > self.cap { self.sweep() } else { total });
    }

    fn write_file(&self, pack: &Id, bytes: &[u8]) -> crate::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        crate::engine::cache::private_dir(&self.dir)?;
        let n = self.temporaries.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{}.{}.{n}.tmp", pack.to_hex(), std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::fsutil::PRIVATE_FILE)
                .open(&tmp)?;
            f.write_all(bytes)?;
            // No fsync: a pack cut short by a crash fails its hash when read.
            std::fs::rename(&tmp, self.path(pack))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| crate::Error::io(&self.dir, e))
    }

    /// Delete the least recently used files until the directory holds at
    /// most three quarters of the cap (and temporary files a dead run left);
    /// what it holds then.
    fn sweep(&self) -> u64 {
        let mut packs = Vec::new();
        let now = SystemTime::now();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let Ok(md) = entry.metadata() else { continue };
            let used = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                if now.duration_since(used).is_ok_and(|age| age > STALE_TEMPORARY) {
                    let _ = std::fs::remove_file(entry.path());
                }
            } else if md.is_file() {
                packs.push((used, md.len(), entry.path()));
            }
        }
        let mut held: u64 = packs.iter().map(|(_, len, _)| len).sum();
        if held > self.cap {
            packs.sort();
            for (_, len, path) in packs {
                if held <= self.cap / 4 * 3 {
                    break;
                }
                if std::fs::remove_file(&path).is_ok() {
                    held -= len;
                }
            }
        }
        held
    }
}

/// Where the key file that last opened the repository at `location` is
/// kept: `<cache dir>/key-files/<hash of the location>`.
fn remembered_key_path(location: &str) -> Option<PathBuf> {
    let root = crate::engine::cache::cache_root()?;
    Some(root.join("key-files").join(Id::of_bytes(location.as_bytes()).to_hex()))
}

/// The key file that last opened the repository at `location` (still
/// wrapped by its passphrase, as the repository holds it): opening a remote
/// repository unwraps it while the repository answers its first requests,
/// and uses it only when the repository still lists it by name.
pub fn remembered_key(location: &str) -> Option<Vec<u8>> {
    let path = remembered_key_path(location)?;
    // Only from a directory of this user's that no one else may write into:
    // a planted key file could ask for any amount of argon2 work.
    crate::engine::cache::private_dir(path.parent()?).ok()?;
    let file = crate::fsutil::open_regular(&path).ok()?;
    if file.metadata().ok()?.len() > MAX_KEY_FILE {
        return None;
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_KEY_FILE), &mut bytes).ok()?;
    Some(bytes)
}

/// Key files are a few hundred bytes; anything much bigger is not one.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Forget the key file remembered for `location` (the repository no longer
/// lists it: it was removed or its passphrase changed).
pub fn forget_key(location: &str) {
    if let Some(path) = remembered_key_path(location) {
        let _ = std::fs::remove_file(path);
    }
}

/// Keep the key file that opened the repository at `location`.
pub fn remember_key(location: &str, bytes: &[u8]) {
    let Some(path) = remembered_key_path(location) else { return };
    let kept = path
        .parent()
        .map_or(Ok(()), crate::engine::cache::private_dir)
        .and_then(|()| crate::fsutil::write_atomically(&path, bytes, crate::fsutil::PRIVATE_FILE));
    if let Err(e) = kept {
        tracing::debug!("could not keep the key file in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8, len: usize) -> (Id, Vec<u8>) {
        let bytes = vec![n; len];
        (Id::of_bytes(&bytes), bytes)
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_pack_is_fetched_once_and_then_read_from_disk_checked_against_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tree-packs");
        let (id, bytes) = pack(1, 1000);
        let fetched = std::cell::Cell::new(0);
        let fetch = || {
            fetched.set(fetched.get() + 1);
            Ok(bytes.clone())
        };
        let cache = FileCache::at(dir.clone(), 1 << 20);
        assert_eq!(*cache.get_or_fetch(&id, fetch).unwrap(), bytes);
        assert_eq!(files(&dir), vec![id.to_hex()]);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join(id.to_hex())).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);

        // Another process (a new cache value) reads it from disk.
        let cache = FileCache::at(dir.clone(), 1 << 20);
        assert_eq!(*cache.get_or_fetch(&id, fetch).unwrap(), bytes);
        assert_eq!(fetched.get(), 1, "fetched once");

        // A changed file is not believed: deleted, fetched and cached again.
        let mut changed = bytes.clone();
        changed[500] ^= 1;
        std::fs::write(dir.join(id.to_hex()), &changed).unwrap();
        let cache = FileCache::at(dir.clone(), 1 << 20);
        assert_eq!(*cache.get_or_fetch(&id, fetch).unwrap(), bytes);
        assert_eq!(fetched.get(), 2);
        assert_eq!(std::fs::read(dir.join(id.to_hex())).unwrap(), bytes);

        // What the repository gives that does not hash to its name is used
        // (its blobs are authenticated one by one) but never cached.
        let (other, _) = pack(2, 1000);
        let cache = FileCache::at(dir.clone(), 1 << 20);
        assert_eq!(*cache.get_or_fetch(&other, || Ok(changed.clone())).unwrap(), changed);
        assert_eq!(files(&dir), vec![id.to_hex()]);

        // A failing fetch is the caller's error, and leaves nothing.
        let (third, _) = pack(3, 10);
        assert!(cache.get_or_fetch(&third, || Err(crate::Error::Invalid("gone".into()))).is_err());
        assert_eq!(files(&dir), vec![id.to_hex()]);

        // A symlink or a FIFO where a cached file goes is never read through
        // (nor waited on): the file is fetched and put in its place.
        let (linked, linked_bytes) = pack(4, 100);
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::write(&elsewhere, &linked_bytes).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(linked.to_hex())).unwrap();
        let (fifo, fifo_bytes) = pack(5, 100);
        nix::unistd::mkfifo(&dir.join(fifo.to_hex()), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let cache = FileCache::at(dir.clone(), 1 << 20);
        for (id, bytes) in [(linked, &linked_bytes), (fifo, &fifo_bytes)] {
            let before = fetched.get();
            let fetch = || {
                fetched.set(fetched.get() + 1);
                Ok(bytes.clone())
            };
            assert_eq!(*cache.get_or_fetch(&id, fetch).unwrap(), *bytes);
            assert_eq!(fetched.get(), before + 1, "fetched, not read through the link or the FIFO");
            let md = std::fs::symlink_metadata(dir.join(id.to_hex())).unwrap();
            assert!(md.is_file(), "replaced by the file itself");
        }
        assert_eq!(std::fs::read(&elsewhere).unwrap(), linked_bytes, "the link's target is untouched");
    }

    #[test]
    fn the_least_recently_used_packs_go_when_the_cache_passes_its_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tree-packs");
        let packs: Vec<_> = (0..10).map(|n| pack(n, 1000)).collect();
        let cache = FileCache::at(dir.clone(), 4000);
        let old = SystemTime::now() - Duration::from_secs(600);
        for (n, (id, bytes)) in packs.iter().enumerate() {
            cache.get_or_fetch(id, || Ok(bytes.clone())).unwrap();
            // Pack n was last used n seconds after `old`.
            let f = std::fs::File::options().write(true).open(dir.join(id.to_hex()));
            if let Ok(f) = f {
                f.set_modified(old + Duration::from_secs(n as u64)).unwrap();
            }
        }
        let held: Vec<String> = files(&dir);
        assert!(held.len() <= 4, "at most the cap is held: {held:?}");
        assert!(held.contains(&packs[9].0.to_hex()), "the newest is kept");

        // Reading a pack marks it used: it outlives newer ones.
        let survivor = packs.iter().find(|(id, _)| held.contains(&id.to_hex())).unwrap();
        let fresh = FileCache::at(dir.clone(), 4000);
        fresh.get_or_fetch(&survivor.0, || panic!("it is cached")).unwrap();
        let (id, bytes) = &packs[0];
        fresh.get_or_fetch(id, || Ok(bytes.clone())).unwrap();
        assert!(files(&dir).contains(&survivor.0.to_hex()), "used just now, so kept");
        assert!(files(&dir).len() <= 4);

        // A temporary file a dead run left an hour ago goes with a sweep;
        // a fresh one (another run writing now) stays.
        let dead = dir.join(".x.1.0.tmp");
        std::fs::write(&dead, b"half").unwrap();
        std::fs::File::options().write(true).open(&dead).unwrap().set_modified(old - STALE_TEMPORARY).unwrap();
        let live = dir.join(".y.2.0.tmp");
        std::fs::write(&live, b"half").unwrap();
        fresh.sweep();
        assert!(!dead.exists());
        assert!(live.exists());
    }
}
