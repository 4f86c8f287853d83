//! A repository on a local (or mounted) filesystem.
//!
//! How a file reaches the disk safely:
//!
//! 1. write it under `tmp/` with a unique name,
//! 2. `fsync` the file,
//! 3. hard-link it to its final name (which fails rather than replace an
//!    existing file, so nothing is ever overwritten in place) and unlink the
//!    temporary name,
//! 4. `fsync` the directory, so the new name survives a power cut.
//!
//! A crash at any step leaves either nothing new or a complete file; at worst
//! a stray file in `tmp/`, which `check` reports and nothing reads.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    Backend, Dir, FileInfo, INDEX, KEYS, MARKS, PACKS, RUNNING, ReadCache, SNAPSHOTS, Stored, TMP, relative_path,
};
use crate::engine::crypto::fill_random;
use crate::error::{Error, IoContext, Result};

/// A repository directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalBackend {
    /// Call `add` with each file of `dir` (for packs, across the fan-out).
    fn each_entry(&self, dir: Dir, mut add: impl FnMut(fs::DirEntry)) -> Result<()> {
        let base = self.root.join(dir);
        if (dir == MARKS || dir == RUNNING) && !base.exists() {
            return Ok(());
        }
        for entry in fs::read_dir(&base).at(&base)? {
            let entry = entry.at(&base)?;
            if dir == PACKS && entry.file_type().at(entry.path())?.is_dir() {
                let sub = entry.path();
                for e in fs::read_dir(&sub).at(&sub)? {
                    add(e.at(&sub)?);
                }
            } else {
                add(entry);
            }
        }
        Ok(())
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    /// Where a file named `name` in `dir` lives.
    pub fn path_of(&self, dir: Dir, name: &str) -> PathBuf {
        self.root.join(relative_path(dir, name))
    }

    /// Put the complete temporary file `temp` in place as `name` of `dir`
    /// unless that name exists (then it is left as it is).
    fn link_into_place(&self, temp: &Path, dir: Dir, name: &str) -> Result<Stored> {
        let target = self.path_of(dir, name);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        if !parent.is_dir() {
            fs::create_dir_all(&parent).at(&parent)?;
            sync_dir(parent.parent().unwrap_or(&self.root))?;
        }
        let stored = match fs::hard_link(temp, &target) {
            Ok(()) => Stored::New,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Stored::AlreadyThere,
            Err(_) if !target.exists() => {
                // A filesystem without hard links: rename cannot lose data here
                // because the target does not exist.
                fs::rename(temp, &target).at(&target)?;
                sync_dir(&parent)?;
                return Ok(Stored::New);
            }
            Err(e) => return Err(Error::io(&target, e)),
        };
        fs::remove_file(temp).at(temp)?;
        sync_dir(&parent)?;
        Ok(stored)
    }

    /// A new, private temporary file under `tmp/`.
    fn temp_file(&self) -> Result<(File, PathBuf)> {
        let mut rnd = [0u8; 8];
        fill_random(&mut rnd)?;
        let name =
            format!("{}-{}-{}.tmp", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed), hex::encode(rnd));
        let path = self.root.join(TMP).join(name);
        let create = || OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        let file = match create() {
            // `tmp/` itself was removed (an admin cleaning up): make it again
            // (`check` reports it), but only inside an existing repository.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.root.is_dir() => {
                crate::fsutil::create_dir_all(&self.root.join(TMP), crate::fsutil::PRIVATE_DIR)?;
                create()
            }
            other => other,
        }
        .at(&path)?;
        Ok((file, path))
    }

    /// `bytes` in a durable temporary file.
    fn durable_temp(&self, bytes: &[u8]) -> Result<PathBuf> {
        let (mut file, path) = self.temp_file()?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(Error::io(&path, e));
        }
        // On disk now, so its pages can go: a backup that writes gigabytes of
        // packs leaves the page cache to the applications on the server, and
        // the freed pages take the next pack (as borg does). Only advice.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        Ok(path)
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn parallelism(&self) -> usize {
        crate::engine::parallel::cpus()
    }

    fn is_empty(&self) -> Result<bool> {
        match fs::read_dir(&self.root) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(Error::io(&self.root, e)),
        }
    }

    fn create_layout(&self) -> Result<()> {
        for dir in Dir::LAYOUT {
            crate::fsutil::create_dir_all(&self.root.join(dir), crate::fsutil::PRIVATE_DIR)?;
        }
        Ok(())
    }

    fn missing_layout(&self) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for dir in [PACKS, INDEX, SNAPSHOTS, KEYS, TMP] {
            match fs::symlink_metadata(self.root.join(dir)) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => missing.push(dir.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(dir.to_string()),
                Err(e) => return Err(Error::io(self.root.join(dir), e)),
            }
        }
        Ok(missing)
    }

    fn put_new(&self, dir: Dir, name: &str, bytes: Vec<u8>) -> Result<Stored> {
        let temp = self.durable_temp(&bytes)?;
        drop(bytes);
        // Whatever goes wrong, the temporary file does not stay behind.
        self.link_into_place(&temp, dir, name).inspect_err(|_| {
            let _ = fs::remove_file(&temp);
        })
    }
    fn put_state(&self, dir: Dir, name: &str, bytes: &[u8]) -> Result<()> {
        let d = self.root.join(dir);
        fs::create_dir_all(&d).at(&d)?;
        let temp = self.durable_temp(bytes)?;
        let target = d.join(name);
        fs::rename(&temp, &target).at(&target)?;
        sync_dir(&d)
    }

    fn get(&self, dir: Dir, name: &str) -> Result<Vec<u8>> {
        // Only a regular file, never through a symlink or from a FIFO (which
        // would wait forever), and never more than the directory's files
        // can be.
        let p = self.path_of(dir, name);
        let file = crate::fsutil::open_regular(&p).at(&p)?;
        let size = file.metadata().at(&p)?.len();
        if size > dir.largest_file() {
            return Err(Error::damaged(
                format!("{} {name}", dir.one()),
                format!("{size} bytes, more than a {} can be ({})", dir.one(), dir.largest_file()),
            ));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(file, dir.largest_file()), &mut bytes).at(&p)?;
        Ok(bytes)
    }

    fn get_range(
        &self,
        dir: Dir,
        name: &str,
        range: Range<u64>,
        _worth: Range<u64>,
        cache: &mut ReadCache,
    ) -> Result<Vec<u8>> {
        let (offset, len) = (range.start, (range.end - range.start) as usize);
        let p = self.path_of(dir, name);
        let open: &mut OpenFiles = cache.state();
        if !open.0.contains_key(name) {
            if open.0.len() > 64 {
                open.0.clear();
            }
            open.0.insert(name.to_string(), crate::fsutil::open_regular(&p).at(&p)?);
        }
        let file = open.0.get(name).ok_or_else(|| Error::Invalid("read cache".into()))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).at(&p)?;
        Ok(buf)
    }

    fn list(&self, dir: Dir) -> Result<Vec<FileInfo>> {
        let mut out = Vec::new();
        let mut unreadable = None;
        self.each_entry(dir, |entry| {
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed since the directory was read: not listed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                // Never left out quietly (a running backup, a snapshot).
                Err(e) => {
                    let what = format!("cannot list the repository's files: {}: {e}", entry.path().display());
                    unreadable.get_or_insert(Error::Invalid(what));
                    return;
                }
            };
            out.push(FileInfo {
                name: entry.file_name().to_string_lossy().into_owned(),
                size: meta.len(),
                modified: meta.modified().ok().and_then(|m| jiff::Timestamp::try_from(m).ok()),
                tag: None,
            });
        })?;
        if let Some(e) = unreadable {
            return Err(e);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn list_names(&self, dir: Dir) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.each_entry(dir, |entry| out.push(entry.file_name().to_string_lossy().into_owned()))?;
        out.sort();
        Ok(out)
    }

    fn remove(&self, dir: Dir, name: &str) -> Result<()> {
        let p = self.path_of(dir, name);
        fs::remove_file(&p).at(&p)?;
        sync_dir(p.parent().unwrap_or(&self.root))
    }
}

/// `fsync` a directory so that names created in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// A reading thread's open files (by name), so reading many blobs of one
/// pack opens it once.
#[derive(Default)]
struct OpenFiles(std::collections::HashMap<String, File>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_be_put_in_place_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        backend.create_layout().unwrap();
        // A file where the pack's fan-out directory should be.
        fs::write(dir.path().join("packs/ab"), b"in the way").unwrap();
        assert!(backend.put_new(PACKS, &"ab".repeat(32), b"pack".to_vec()).is_err());
        assert_eq!(fs::read_dir(dir.path().join(TMP)).unwrap().count(), 0, "tmp/ is empty");
        assert_eq!(backend.put_new(PACKS, &"cd".repeat(32), b"pack".to_vec()).unwrap(), Stored::New);
        assert_eq!(fs::read_dir(dir.path().join(TMP)).unwrap().count(), 0);
    }

    #[test]
    fn names_alone_are_listed_as_the_full_listing_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        backend.create_layout().unwrap();
        for name in ["cd".repeat(32), "ab".repeat(32), "ab".to_string() + &"00".repeat(31)] {
            backend.put_new(PACKS, &name, b"pack".to_vec()).unwrap();
            backend.put_new(SNAPSHOTS, &name, b"snapshot".to_vec()).unwrap();
        }
        for dir in [PACKS, SNAPSHOTS, MARKS] {
            let full: Vec<String> = backend.list(dir).unwrap().into_iter().map(|f| f.name).collect();
            assert_eq!(backend.list_names(dir).unwrap(), full);
        }
        assert_eq!(backend.list_names(PACKS).unwrap().len(), 3);
        assert!(backend.list_names(MARKS).unwrap().is_empty());
    }
}
