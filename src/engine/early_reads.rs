//! A local repository's snapshot files, read on the other core while the
//! key is unwrapped. Argon2 keeps one core busy for ~0.1 s at every open;
//! with a long history, opening and reading a thousand snapshot files is
//! most of what `snapshots`, a backup's parent lookup and `prune` add to
//! that, and it needs no key. The files are still read (that is what finds
//! one a failing disk has damaged), only earlier.
//!
//! Safe because a snapshot file's name is the hash of its bytes: bytes read
//! early are checked against their name as every read is, and are used
//! only for a name that a later listing still holds, so they can only give
//! the snapshot a read made then would give. (Prune's order rule — marks
//! and running backups before the snapshot listing — is about the listing,
//! which is still made when prune asks.) Anything that goes wrong here only
//! costs speed: the file is read again the usual way, which reports it.
//! The reading stops when the repository needs the snapshots (what is left
//! is read then, on every core) or is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::backend::{Backend, SNAPSHOTS};
use crate::engine::crypto::Id;

/// At most this many bytes and files are read early (a snapshot file is
/// ~1 KiB); a longer history is read early newest first, the rest as usual.
const EARLY_READ_BYTES: u64 = 8 << 20;
const EARLY_READ_FILES: usize = 10_000;
/// A bigger file is left for the usual read.
const EARLY_READ_FILE: u64 = 64 << 10;

/// Snapshot files by name.
pub(crate) type Files = HashMap<String, Vec<u8>>;

/// Snapshot files being read, or read, ahead of their use. Each file is
/// handed over as soon as it is whole, so nothing ever waits for the
/// reading thread (a file it is stuck on is read again the usual way).
#[derive(Default)]
pub(crate) struct EarlyReads(Arc<Shared>);

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    files: Mutex<Files>,
}

impl EarlyReads {
    /// Start reading `backend`'s snapshot files on a thread of their own,
    /// newest first (a backup's parent is among the newest).
    pub(crate) fn start(backend: Arc<dyn Backend>) -> EarlyReads {
        let shared = Arc::new(Shared::default());
        let reading = shared.clone();
        let started = std::thread::Builder::new()
            .name("snapshot files".into())
            .spawn(move || read_newest_first(&*backend, &reading));
        if started.is_err() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        EarlyReads(shared)
    }

    /// The bytes of snapshot file `name` if they were read (each is handed
    /// out once).
    pub(crate) fn take(&self, name: &str) -> Option<Vec<u8>> {
        self.0.files.lock().ok()?.remove(name)
    }

    /// Stop reading and hand over every file read; nothing is read early
    /// from then on.
    pub(crate) fn stop(&self) -> Files {
        self.0.stop.store(true, Ordering::Relaxed);
        self.0.files.lock().map(|mut files| std::mem::take(&mut *files)).unwrap_or_default()
    }
}

impl Drop for EarlyReads {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

fn read_newest_first(backend: &dyn Backend, shared: &Shared) {
    let Ok(mut listed) = backend.list(SNAPSHOTS) else { return };
    // Only names a snapshot can have: anything else is never read.
    listed.retain(|f| Id::from_hex(&f.name).is_some() && f.size <= EARLY_READ_FILE);
    listed.sort_by_key(|f| std::cmp::Reverse(f.modified));
    let mut bytes_read = 0u64;
    for file in listed.into_iter().take(EARLY_READ_FILES) {
        if shared.stop.load(Ordering::Relaxed) || bytes_read >= EARLY_READ_BYTES {
            break;
        }
        let Ok(bytes) = backend.get(SNAPSHOTS, &file.name) else { continue };
        if Id::of_bytes(&bytes).to_hex() != file.name {
            continue;
        }
        bytes_read += bytes.len() as u64;
        match shared.files.lock() {
            Ok(mut files) if !shared.stop.load(Ordering::Relaxed) => files.insert(file.name, bytes),
            _ => break,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backend::MemoryBackend;

    #[test]
    fn only_whole_small_snapshot_files_are_kept_each_handed_out_once_and_stop_ends_the_reading() {
        let store = Arc::new(MemoryBackend::default());
        let file = |bytes: &[u8]| (Id::of_bytes(bytes).to_hex(), bytes.to_vec());
        let (whole, big, damaged) = (file(b"a snapshot"), file(&vec![7; 100 << 10]), file(b"was whole"));
        for (name, bytes) in [&whole, &big] {
            store.put_new(SNAPSHOTS, name, bytes.clone()).expect("put");
        }
        store.overwrite(SNAPSHOTS, &damaged.0, b"rotten".to_vec());
        store.overwrite(SNAPSHOTS, "README", b"not a snapshot".to_vec());

        let early = EarlyReads::start(store.clone());
        let mut files = early.stop();
        // Stopped before it began, or after it read: never anything else.
        assert!(files.keys().all(|name| *name == whole.0), "{:?}", files.keys());
        assert!(files.remove(&whole.0).is_none_or(|bytes| bytes == whole.1));
        assert!(early.stop().is_empty() && early.take(&whole.0).is_none());

        let early = EarlyReads::start(store);
        let started = std::time::Instant::now();
        while early.0.files.lock().expect("files").is_empty() && started.elapsed().as_secs() < 10 {
            std::thread::yield_now();
        }
        assert_eq!(early.take(&whole.0), Some(whole.1));
        assert_eq!(early.take(&whole.0), None, "handed out once");
        for name in [&big.0, &damaged.0, "README"] {
            assert_eq!(early.take(name), None);
        }
    }
}
