//! A repository's storage in memory, for tests of the engine's protocols
//! (backup, prune, repair) and format without processes or disks. Behaves
//! like the other backends: write-once names, `NotFound` for what is not
//! there, listings sorted by name with the time each file was stored.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use super::{Backend, Dir, FileInfo, ReadCache, Stored};
use crate::error::{Error, Result};

/// Every file by directory and name: its bytes and when it was stored.
type Files = BTreeMap<(Dir, String), (Vec<u8>, jiff::Timestamp)>;

#[derive(Default)]
pub struct MemoryBackend {
    files: Mutex<Files>,
    /// Listed, but "not found" when read (as a bucket can answer).
    unserved: Mutex<std::collections::BTreeSet<(Dir, String)>>,
}

impl MemoryBackend {
    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn not_found(dir: Dir, name: &str) -> Error {
        Error::io(format!("memory:{}", super::relative_path(dir, name)), std::io::ErrorKind::NotFound.into())
    }

    /// Replace a stored file's bytes (to damage it in a test).
    pub fn overwrite(&self, dir: Dir, name: &str, bytes: Vec<u8>) {
        self.files().insert((dir, name.to_string()), (bytes, jiff::Timestamp::now()));
    }

    /// Keep listing `dir/name` but answer "not found" when it is read.
    pub fn stop_serving(&self, dir: Dir, name: &str) {
        self.unserved.lock().unwrap_or_else(|p| p.into_inner()).insert((dir, name.to_string()));
    }

    /// The names stored in `dir`.
    pub fn names(&self, dir: Dir) -> Vec<String> {
        self.files().keys().filter(|(d, _)| *d == dir).map(|(_, n)| n.clone()).collect()
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory".into()
    }

    fn parallelism(&self) -> usize {
        2
    }

    fn is_empty(&self) -> Result<bool> {
        Ok(self.files().is_empty())
    }

    fn create_layout(&self) -> Result<()> {
        Ok(())
    }

    fn put_new(&self, dir: Dir, name: &str, bytes: Vec<u8>) -> Result<Stored> {
        let mut files = self.files();
        if files.contains_key(&(dir, name.to_string())) {
            return Ok(Stored::AlreadyThere);
        }
        files.insert((dir, name.to_string()), (bytes, jiff::Timestamp::now()));
        Ok(Stored::New)
    }

    fn put_state(&self, dir: Dir, name: &str, bytes: &[u8]) -> Result<()> {
        self.overwrite(dir, name, bytes.to_vec());
        Ok(())
    }

    fn get(&self, dir: Dir, name: &str) -> Result<Vec<u8>> {
        let key = (dir, name.to_string());
        if self.unserved.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
            return Err(Self::not_found(dir, name));
        }
        self.files().get(&key).map(|(b, _)| b.clone()).ok_or_else(|| Self::not_found(dir, name))
    }

    fn get_range(
        &self,
        dir: Dir,
        name: &str,
        range: Range<u64>,
        _worth: Range<u64>,
        _cache: &mut ReadCache,
    ) -> Result<Vec<u8>> {
        let files = self.files();
        let (bytes, _) = files.get(&(dir, name.to_string())).ok_or_else(|| Self::not_found(dir, name))?;
        let (start, end) = (range.start as usize, range.end as usize);
        bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::io(format!("memory:{dir}/{name}"), std::io::ErrorKind::UnexpectedEof.into()))
    }

    fn list(&self, dir: Dir) -> Result<Vec<FileInfo>> {
        Ok(self
            .files()
            .iter()
            .filter(|((d, _), _)| *d == dir)
            .map(|((_, name), (bytes, at))| FileInfo {
                name: name.clone(),
                size: bytes.len() as u64,
                modified: Some(*at),
                tag: None,
            })
            .collect())
    }

    fn remove(&self, dir: Dir, name: &str) -> Result<()> {
        self.files().remove(&(dir, name.to_string())).map(|_| ()).ok_or_else(|| Self::not_found(dir, name))
    }
}
