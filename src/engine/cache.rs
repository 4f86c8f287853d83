//! A local cache of a remote repository's snapshots, so that listing them,
//! finding a backup's parent and pruning do not fetch and decrypt every
//! snapshot object on every run: with a long history on a bucket that is
//! most of what those commands do. A local repository is read as it is
//! (its files are as near as a cache would be, and reading them is what
//! finds a snapshot file a failing disk has damaged).
//!
//! One file per repository, `<cache dir>/<repository id>/snapshots`, in
//! directories of mode 0700. The cache directory is `$HOLDFAST_CACHE_DIR`,
//! else `$XDG_CACHE_HOME/holdfast`, else `/var/cache/holdfast` for root and
//! `~/.cache/holdfast` for others. The file is sealed with the repository's
//! keys: one that was changed, cut short or belongs to another repository
//! does not open, and is rebuilt. An entry is used only while the repository
//! lists its snapshot under the same name (the hash of its bytes), size,
//! modification time and ETag; anything else is read from the repository. The
//! file is written whole to a temporary name and renamed, so concurrent runs
//! and a crash leave one complete version. Any failure of the cache only
//! costs speed: the command reads the repository as if there were none.
//! `check` and `repair` never use it; `--no-cache` turns it off.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::engine::backend::FileInfo;
use crate::engine::crypto::{Id, Keys, ObjectKind};
use crate::engine::snapshot::Snapshot;

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turn the cache off for this process (`--no-cache`).
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// The directory caches live under, when there is one to use.
pub fn cache_root() -> Option<PathBuf> {
    if DISABLED.load(Ordering::Relaxed) {
        return None;
    }
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = from_env("HOLDFAST_CACHE_DIR") {
        return Some(dir);
    }
    if let Some(dir) = from_env("XDG_CACHE_HOME") {
        return Some(dir.join("holdfast"));
    }
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/cache/holdfast"));
    }
    from_env("HOME").map(|home| home.join(".cache").join("holdfast"))
}

/// One cached snapshot: what its file looked like when it was read.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    size: u64,
    modified: Option<jiff::Timestamp>,
    tag: Option<String>,
    snapshot: Snapshot,
}

/// The snapshots of one repository as last read, by file name.
pub struct SnapshotCache<'a> {
    file: Option<PathBuf>,
    keys: &'a Keys,
    /// The repository's id: sealed with it, the file opens for no other.
    repo_id: Id,
    entries: HashMap<String, Entry>,
    changed: bool,
}

impl<'a> SnapshotCache<'a> {
    /// The cache of repository `repo_id` (empty when there is none, it
    /// cannot be read, or it is turned off).
    pub fn load(repo_id: &Id, keys: &'a Keys) -> SnapshotCache<'a> {
        let file = cache_root().map(|root| root.join(repo_id.to_hex()).join("snapshots"));
        let entries = file.as_deref().and_then(|f| read_sealed(f, keys, repo_id)).unwrap_or_default();
        SnapshotCache { file, keys, repo_id: *repo_id, entries, changed: false }
    }

    /// The cached snapshot of `listed`, if the file is the one that was read.
    pub fn get(&self, listed: &FileInfo) -> Option<&Snapshot> {
        let e = self.entries.get(&listed.name)?;
        (e.size == listed.size && e.modified == listed.modified && e.tag == listed.tag).then_some(&e.snapshot)
    }

    /// Remember `snapshot`, just read from `listed`.
    pub fn put(&mut self, listed: &FileInfo, snapshot: &Snapshot) {
        let entry =
            Entry { size: listed.size, modified: listed.modified, tag: listed.tag.clone(), snapshot: snapshot.clone() };
        self.entries.insert(listed.name.clone(), entry);
        self.changed = true;
    }

    /// Keep only the files `listed` (the others were forgotten) and write
    /// the cache if it changed. Failures are logged, never returned.
    pub fn save(mut self, listed: &[FileInfo]) {
        let before = self.entries.len();
        let names: std::collections::HashSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
        self.entries.retain(|name, _| names.contains(name.as_str()));
        if !self.changed && self.entries.len() == before {
            return;
        }
        let Some(file) = &self.file else { return };
        if let Err(e) = write_sealed(file, self.keys, &self.repo_id, &self.entries) {
            tracing::debug!("could not write the snapshot cache {}: {e}", file.display());
        }
    }
}

/// Make `dir` (0700) unless it is there, and make sure it is this user's
/// and no one else may write into it: a directory someone else made or may
/// write into (a shared $HOLDFAST_CACHE_DIR) could hold a symlink at a
/// temporary name.
pub(crate) fn private_dir(dir: &Path) -> crate::error::Result<()> {
    crate::fsutil::create_dir_all(dir, crate::fsutil::PRIVATE_DIR)?;
    let md = std::fs::symlink_metadata(dir).map_err(|e| crate::error::Error::io(dir, e))?;
    if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() || md.mode() & 0o022 != 0 {
        return Err(crate::error::Error::Invalid(format!(
            "{} is not a private directory of this user; not writing the cache there",
            dir.display()
        )));
    }
    Ok(())
}

fn read_sealed(file: &Path, keys: &Keys, repo_id: &Id) -> Option<HashMap<String, Entry>> {
    let mut bytes = Vec::new();
    crate::fsutil::open_regular(file).and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut bytes)).ok()?;
    let plain = keys
        .open(ObjectKind::Snapshot, repo_id, &bytes)
        .map_err(|e| tracing::debug!("ignoring the snapshot cache {}: {e}", file.display()))
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

fn write_sealed(file: &Path, keys: &Keys, repo_id: &Id, entries: &HashMap<String, Entry>) -> crate::error::Result<()> {
    if let Some(dir) = file.parent() {
        private_dir(dir)?;
    }
    let plain = serde_json::to_vec(entries).map_err(|e| crate::error::Error::Invalid(e.to_string()))?;
    let sealed = keys.seal(ObjectKind::Snapshot, repo_id, &plain, 3)?;
    crate::fsutil::write_atomically(file, &sealed, crate::fsutil::PRIVATE_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::crypto::MasterKey;

    fn listed(name: &str, size: u64) -> FileInfo {
        FileInfo { name: name.into(), size, modified: Some(jiff::Timestamp::UNIX_EPOCH), tag: Some("t".into()) }
    }

    #[test]
    fn an_entry_is_used_only_for_the_same_file_and_a_changed_cache_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r").join("snapshots");
        let keys = Keys::derive(&MasterKey::generate().unwrap());
        let snap = Snapshot { paths: vec!["/x".into()], ..Snapshot::blank("h") };
        let fresh = || SnapshotCache {
            file: Some(file.clone()),
            keys: &keys,
            repo_id: Id::ZERO,
            entries: HashMap::new(),
            changed: false,
        };
        let mut cache = fresh();
        cache.put(&listed("aa", 10), &snap);
        cache.save(&[listed("aa", 10)]);
        let mode = std::fs::metadata(file.parent().unwrap()).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o700);
        let other = Keys::derive(&MasterKey::generate().unwrap());
        assert!(read_sealed(&file, &other, &Id::ZERO).is_none(), "another repository's keys do not open it");
        assert!(read_sealed(&file, &keys, &Id([1; 32])).is_none(), "nor the same keys for another repository");
        let cache = SnapshotCache { entries: read_sealed(&file, &keys, &Id::ZERO).unwrap(), ..fresh() };
        assert_eq!(cache.get(&listed("aa", 10)), Some(&snap));
        assert!(cache.get(&listed("aa", 11)).is_none(), "another size: read it again");
        let retagged = FileInfo { tag: Some("u".into()), ..listed("aa", 10) };
        assert!(cache.get(&retagged).is_none(), "another ETag: read it again");
        assert!(cache.get(&listed("bb", 10)).is_none());
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        assert!(read_sealed(&file, &keys, &Id::ZERO).is_none(), "a changed cache does not open");
    }

    #[test]
    fn a_directory_others_may_write_into_gets_no_cache() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("r");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let file = shared.join("snapshots");
        std::os::unix::fs::symlink(&victim, &file).unwrap();
        let keys = Keys::derive(&MasterKey::generate().unwrap());
        assert!(write_sealed(&file, &keys, &Id::ZERO, &HashMap::new()).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "nothing written through the link");
    }
}
