//! Where repository files live: a local directory.
//!
//! The engine sees a repository as a few directories of write-once files
//! named by the hash of their bytes. This module is the only place that knows
//! how such a file reaches the disk safely:
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
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::crypto::{Id, fill_random};
use crate::error::{Error, IoContext, Result};

/// Directory names inside a repository.
pub const PACKS: &str = "packs";
pub const INDEX: &str = "index";
pub const SNAPSHOTS: &str = "snapshots";
pub const KEYS: &str = "keys";
pub const TMP: &str = "tmp";
/// Packs marked for deletion by prune (see `engine::gc`).
pub const MARKS: &str = "marks";
/// One file per backup in progress (see `engine::gc`).
pub const RUNNING: &str = "running";

/// A repository on a local (or mounted) filesystem.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

/// A file being written under `tmp/`, not yet visible under its final name.
pub struct TempFile {
    pub file: File,
    pub path: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a file named `name` in `dir` lives (packs fan out by two hex digits).
    pub fn path_of(&self, dir: &str, name: &str) -> PathBuf {
        if dir == PACKS && name.len() > 2 {
            self.root.join(dir).join(&name[..2]).join(name)
        } else {
            self.root.join(dir).join(name)
        }
    }

    /// Create the directory layout of a new repository.
    pub fn create_layout(&self) -> Result<()> {
        for dir in [PACKS, INDEX, SNAPSHOTS, KEYS, TMP, MARKS, RUNNING] {
            let p = self.root.join(dir);
            fs::create_dir_all(&p).at(&p)?;
        }
        Ok(())
    }

    /// A new, private temporary file under `tmp/`.
    pub fn temp_file(&self) -> Result<TempFile> {
        let mut rnd = [0u8; 8];
        fill_random(&mut rnd)?;
        let name =
            format!("{}-{}-{}.tmp", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed), hex::encode(rnd));
        let path = self.root.join(TMP).join(name);
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).at(&path)?;
        Ok(TempFile { file, path })
    }

    /// Make a finished temporary file durable and visible as `dir/name`.
    pub fn commit(&self, temp: TempFile, dir: &str, name: &str) -> Result<()> {
        temp.file.sync_all().at(&temp.path)?;
        drop(temp.file);
        let target = self.path_of(dir, name);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        if !parent.exists() {
            fs::create_dir_all(&parent).at(&parent)?;
            sync_dir(parent.parent().unwrap_or(&self.root))?;
        }
        match fs::hard_link(&temp.path, &target) {
            Ok(()) => {}
            // Same name means same bytes: someone else stored it already.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) if !target.exists() => {
                // A filesystem without hard links: rename cannot lose data here
                // because the target does not exist.
                fs::rename(&temp.path, &target).at(&target)?;
                return sync_dir(&parent);
            }
            Err(e) => return Err(Error::io(&target, e)),
        }
        fs::remove_file(&temp.path).at(&temp.path)?;
        sync_dir(&parent)
    }

    /// Write `bytes` as `dir/<hash of bytes>` and return that hash.
    pub fn write_named_by_hash(&self, dir: &str, bytes: &[u8]) -> Result<Id> {
        let id = Id::of_bytes(bytes);
        let mut temp = self.temp_file()?;
        temp.file.write_all(bytes).at(&temp.path)?;
        self.commit(temp, dir, &id.to_hex())?;
        Ok(id)
    }

    /// Write a file with a fixed name once (used for `config`); fails if it exists.
    pub fn write_new(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let mut temp = self.temp_file()?;
        temp.file.write_all(bytes).at(&temp.path)?;
        temp.file.sync_all().at(&temp.path)?;
        let target = self.root.join(rel);
        fs::hard_link(&temp.path, &target).at(&target)?;
        fs::remove_file(&temp.path).at(&temp.path)?;
        sync_dir(&self.root)
    }

    pub fn read(&self, dir: &str, name: &str) -> Result<Vec<u8>> {
        let p = self.path_of(dir, name);
        fs::read(&p).at(&p)
    }

    pub fn read_root_file(&self, rel: &str) -> Result<Vec<u8>> {
        let p = self.root.join(rel);
        fs::read(&p).at(&p)
    }

    /// Open a file for repeated positioned reads.
    pub fn open(&self, dir: &str, name: &str) -> Result<File> {
        let p = self.path_of(dir, name);
        File::open(&p).at(&p)
    }

    pub fn read_at(file: &File, offset: u64, len: usize, what: &Path) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).at(what)?;
        Ok(buf)
    }

    /// The names of the files in `dir` (for packs, across the fan-out); a
    /// missing `marks/` or `running/` (older repositories) is empty.
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let base = self.root.join(dir);
        if (dir == MARKS || dir == RUNNING) && !base.exists() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&base).at(&base)? {
            let entry = entry.at(&base)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if dir == PACKS && entry.file_type().at(entry.path())?.is_dir() {
                let sub = entry.path();
                for e in fs::read_dir(&sub).at(&sub)? {
                    names.push(e.at(&sub)?.file_name().to_string_lossy().into_owned());
                }
            } else {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    pub fn size(&self, dir: &str, name: &str) -> Result<u64> {
        let p = self.path_of(dir, name);
        Ok(fs::metadata(&p).at(&p)?.len())
    }

    /// Write (or replace) a small file that is state, not data: a mark or a
    /// running-backup record. Not content-addressed; written atomically.
    pub fn write_state(&self, dir: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let d = self.root.join(dir);
        fs::create_dir_all(&d).at(&d)?;
        let mut temp = self.temp_file()?;
        temp.file.write_all(bytes).at(&temp.path)?;
        temp.file.sync_all().at(&temp.path)?;
        let target = d.join(name);
        fs::rename(&temp.path, &target).at(&target)?;
        sync_dir(&d)
    }

    pub fn remove(&self, dir: &str, name: &str) -> Result<()> {
        let p = self.path_of(dir, name);
        fs::remove_file(&p).at(&p)?;
        sync_dir(p.parent().unwrap_or(&self.root))
    }
}

/// `fsync` a directory so that names created in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
