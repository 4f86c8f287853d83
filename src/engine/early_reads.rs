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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::engine::backend::{Backend, SNAPSHOTS};
use crate::engine::crypto::Id;

/// At most this many bytes are read early (a snapshot file is ~1 KiB): a
/// history too long for it is read early newest first, the rest as usual.
const EARLY_READ_BYTES: u64 = 8 << 20;

type Files = HashMap<String, Vec<u8>>;

/// Snapshot files being read, or read, ahead of their use.
#[derive(Default)]
pub(crate) struct EarlyReads(Mutex<State>);

#[derive(Default)]
enum State {
    #[default]
    Off,
    Reading(JoinHandle<Files>),
    Read(Files),
}

impl EarlyReads {
    /// Start reading `backend`'s snapshot files on a thread of their own,
    /// newest first (a backup's parent is among the newest).
    pub(crate) fn start(backend: Arc<dyn Backend>) -> EarlyReads {
        let reading =
            std::thread::Builder::new().name("snapshot files".into()).spawn(move || read_newest_first(&*backend));
        EarlyReads(Mutex::new(reading.map_or(State::Off, State::Reading)))
    }

    /// The bytes of snapshot file `name` if they were read early (each is
    /// handed out once). With `wait`, a reading still going on is waited
    /// for; without, only what is already done counts.
    pub(crate) fn take(&self, name: &str, wait: bool) -> Option<Vec<u8>> {
        let mut state = self.0.lock().ok()?;
        if let State::Reading(thread) = &*state
            && (wait || thread.is_finished())
            && let State::Reading(thread) = std::mem::take(&mut *state)
        {
            *state = State::Read(thread.join().unwrap_or_default());
        }
        match &mut *state {
            State::Read(files) => files.remove(name),
            _ => None,
        }
    }

    /// Wait for the reading to end, so that [`EarlyReads::take`] without
    /// `wait` finds everything it read.
    pub(crate) fn finish(&self) {
        self.take("", true);
    }
}

fn read_newest_first(backend: &dyn Backend) -> Files {
    let Ok(mut listed) = backend.list(SNAPSHOTS) else { return Files::new() };
    listed.sort_by_key(|f| std::cmp::Reverse(f.modified));
    let mut files = Files::new();
    let mut bytes_read = 0u64;
    for file in listed {
        bytes_read += file.size;
        if bytes_read > EARLY_READ_BYTES {
            break;
        }
        if let Ok(bytes) = backend.get(SNAPSHOTS, &file.name)
            && Id::of_bytes(&bytes).to_hex() == file.name
        {
            files.insert(file.name, bytes);
        }
    }
    files
}
