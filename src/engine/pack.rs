//! Packs: many sealed blobs in one file, with a sealed header listing them.
//!
//! Layout: `blob* || sealed header || header length (u32 LE) || "HFPK" || version`.
//! The header (a list of [`PackBlob`]) is sealed as a `PackHeader` object whose
//! id is the BLAKE3 hash of the blob section, so a header cannot be moved to
//! another pack. The pack's file name is the BLAKE3 hash of all its bytes:
//! damage is visible without the key.
//!
//! Chunk blobs and tree blobs go to different packs, so reading every tree
//! (for `ls`, `check` or an incremental backup) never reads file data.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::backend::{Backend, PACKS};
use crate::engine::crypto::{FORMAT_VERSION, Id, Keys, ObjectKind};
use crate::error::{Error, Result};

const TRAILER_MAGIC: &[u8; 4] = b"HFPK";
const TRAILER_LEN: usize = 4 + 4 + 1;

/// A pack and the blobs its header lists: what an index file records per pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedPack {
    pub pack: Id,
    pub blobs: Vec<PackBlob>,
}

/// Where one blob sits in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackBlob {
    pub id: Id,
    pub kind: ObjectKind,
    pub offset: u32,
    /// Sealed length in the pack.
    pub length: u32,
    /// Length of the plaintext.
    pub raw_length: u32,
}

/// A pack being assembled in memory (one pack is 16 MiB by default).
#[derive(Default)]
pub struct PackWriter {
    buf: Vec<u8>,
    data_hash: blake3::Hasher,
    blobs: Vec<PackBlob>,
}

/// A complete pack, named, ready to upload.
pub struct FinishedPack {
    pub id: Id,
    pub bytes: Vec<u8>,
    pub blobs: Vec<PackBlob>,
}

impl PackWriter {
    pub fn new() -> PackWriter {
        PackWriter::default()
    }

    /// A writer whose buffer holds a pack of `size` without growing (a pack
    /// ends at the first blob that reaches `size`; a blob is at most 2 MiB
    /// plus its seal).
    pub fn for_size(size: u64) -> PackWriter {
        PackWriter { buf: Vec::with_capacity(size as usize + (2 << 20) + 4096), ..Default::default() }
    }

    /// Append one sealed blob.
    pub fn add(&mut self, id: Id, kind: ObjectKind, sealed: &[u8], raw_length: usize) {
        self.data_hash.update(sealed);
        self.blobs.push(PackBlob {
            id,
            kind,
            offset: self.buf.len() as u32,
            length: sealed.len() as u32,
            raw_length: raw_length as u32,
        });
        self.buf.extend_from_slice(sealed);
    }

    pub fn size(&self) -> u64 {
        self.buf.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Append the sealed header and trailer; the pack's name is the hash of it all.
    pub fn finish(mut self, keys: &Keys) -> Result<FinishedPack> {
        let header = postcard::to_stdvec(&self.blobs).map_err(|e| Error::Invalid(e.to_string()))?;
        let data_id = Id(*self.data_hash.finalize().as_bytes());
        let sealed = keys.seal(ObjectKind::PackHeader, &data_id, &header, 3)?;
        let header_len = sealed.len() as u32;
        let data_len = self.buf.len();
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&header_len.to_le_bytes());
        self.buf.extend_from_slice(TRAILER_MAGIC);
        self.buf.push(FORMAT_VERSION);
        // The name is the hash of the whole pack: the hasher that already
        // read the blobs goes on over the rest (finalizing does not end it),
        // so the data is hashed once, not twice.
        self.data_hash.update(&self.buf[data_len..]);
        let id = Id(*self.data_hash.finalize().as_bytes());
        Ok(FinishedPack { id, bytes: self.buf, blobs: self.blobs })
    }
}

/// Stores finished packs on background threads, several in flight, so a
/// bucket's latency overlaps with reading and sealing. Memory stays bounded:
/// [`PackUploader::submit`] waits while every thread is busy.
///
/// Uploaded packs are handed back in batches for *checkpoint* index files
/// ([`PackUploader::checkpoint`]), so a backup killed halfway leaves most of
/// its work indexed and the next backup uploads only what is missing.
pub struct PackUploader {
    tx: Option<SyncSender<FinishedPack>>,
    threads: Vec<JoinHandle<()>>,
    state: Arc<UploadState>,
    checkpoint_packs: usize,
    checkpoint_interval: Duration,
}

#[derive(Default)]
struct UploadState {
    uploaded: Mutex<Vec<IndexedPack>>,
    failure: Mutex<Option<Error>>,
    last_checkpoint: Mutex<Option<Instant>>,
}

/// How often uploaded packs are indexed while a backup runs.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    /// After this many packs (16 MiB each by default)…
    pub packs: usize,
    /// …or this long since the last checkpoint, whichever comes first.
    pub interval: Duration,
}

impl Default for Checkpoints {
    /// Every 32 packs (512 MiB) or 2 minutes; `$HOLDFAST_CHECKPOINT_PACKS`
    /// sets the count (small values trade more index files for less
    /// re-upload after an interruption).
    fn default() -> Self {
        let packs = std::env::var("HOLDFAST_CHECKPOINT_PACKS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
        Checkpoints { packs, interval: Duration::from_secs(120) }
    }
}

impl PackUploader {
    pub fn start(backend: Arc<dyn Backend>, in_flight: usize, checkpoints: Checkpoints) -> PackUploader {
        let (tx, rx) = sync_channel::<FinishedPack>(0);
        let rx = Arc::new(Mutex::new(rx));
        let state = Arc::new(UploadState::default());
        let threads = (0..in_flight.max(1))
            .map(|_| {
                let (rx, state, backend) = (rx.clone(), state.clone(), backend.clone());
                std::thread::spawn(move || {
                    loop {
                        let next = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok(pack) = next else { break };
                        if state.failed() {
                            continue;
                        }
                        match backend.put_new(PACKS, &pack.id.to_hex(), pack.bytes) {
                            Ok(_) => state.lock_uploaded().push(IndexedPack { pack: pack.id, blobs: pack.blobs }),
                            Err(e) => {
                                if let Ok(mut f) = state.failure.lock() {
                                    f.get_or_insert(e);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        if let Ok(mut last) = state.last_checkpoint.lock() {
            *last = Some(Instant::now());
        }
        PackUploader {
            tx: Some(tx),
            threads,
            state,
            checkpoint_packs: checkpoints.packs.max(1),
            checkpoint_interval: checkpoints.interval,
        }
    }

    /// Hand a pack to the next free upload thread (waits for one).
    pub fn submit(&self, pack: FinishedPack) -> Result<()> {
        self.check()?;
        match &self.tx {
            Some(tx) if tx.send(pack).is_ok() => Ok(()),
            _ => Err(self.take_failure().unwrap_or_else(|| Error::Invalid("the pack upload threads stopped".into()))),
        }
    }

    /// The packs uploaded since the last checkpoint, when it is time to
    /// index them (enough packs, or enough time).
    pub fn checkpoint(&self) -> Option<Vec<IndexedPack>> {
        let mut uploaded = self.state.lock_uploaded();
        let mut last = self.state.last_checkpoint.lock().ok()?;
        let due = uploaded.len() >= self.checkpoint_packs
            || (!uploaded.is_empty() && last.is_some_and(|t| t.elapsed() >= self.checkpoint_interval));
        if !due {
            return None;
        }
        *last = Some(Instant::now());
        Some(std::mem::take(&mut *uploaded))
    }

    /// Wait for every upload; the packs not yet handed out by a checkpoint.
    pub fn finish(mut self) -> Result<Vec<IndexedPack>> {
        self.stop();
        self.check()?;
        Ok(std::mem::take(&mut *self.state.lock_uploaded()))
    }

    fn check(&self) -> Result<()> {
        match self.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn take_failure(&self) -> Option<Error> {
        self.state.failure.lock().ok().and_then(|mut f| f.take())
    }

    fn stop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PackUploader {
    fn drop(&mut self) {
        self.stop();
    }
}

impl UploadState {
    fn failed(&self) -> bool {
        self.failure.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    fn lock_uploaded(&self) -> std::sync::MutexGuard<'_, Vec<IndexedPack>> {
        // A poisoned lock only means an upload thread panicked; the list
        // itself is intact.
        self.uploaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Read the blob list of a whole pack file, after checking its name.
pub fn read_header(name: &Id, bytes: &[u8], keys: &Keys) -> Result<Vec<PackBlob>> {
    let what = || format!("pack {}", name.short());
    if Id::of_bytes(bytes) != *name {
        return Err(Error::damaged(what(), "contents do not match the file name (hash)"));
    }
    if bytes.len() < TRAILER_LEN || &bytes[bytes.len() - 5..bytes.len() - 1] != TRAILER_MAGIC {
        return Err(Error::damaged(what(), "no pack trailer"));
    }
    let len_at = bytes.len() - TRAILER_LEN;
    let header_len = u32::from_le_bytes(bytes[len_at..len_at + 4].try_into().unwrap_or_default()) as usize;
    let header_start =
        len_at.checked_sub(header_len).ok_or_else(|| Error::damaged(what(), "header length out of range"))?;
    let data_id = Id::of_bytes(&bytes[..header_start]);
    let plain = keys.open(ObjectKind::PackHeader, &data_id, &bytes[header_start..len_at])?;
    postcard::from_bytes(&plain).map_err(|e| Error::damaged(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::crypto::MasterKey;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn packs_round_trip(blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..20)) {
            let keys = Keys::derive(&MasterKey([4; 32]));
            let mut w = PackWriter::new();
            for b in &blobs {
                let id = keys.blob_id(b);
                w.add(id, ObjectKind::Chunk, &keys.seal(ObjectKind::Chunk, &id, b, 3).unwrap(), b.len());
            }
            let FinishedPack { id: name, bytes, blobs: written } = w.finish(&keys).unwrap();
            let header = read_header(&name, &bytes, &keys).unwrap();
            prop_assert_eq!(&header, &written);
            for (entry, b) in header.iter().zip(&blobs) {
                let sealed = &bytes[entry.offset as usize..(entry.offset + entry.length) as usize];
                prop_assert_eq!(&keys.open(ObjectKind::Chunk, &entry.id, sealed).unwrap(), b);
            }
            let mut damaged = bytes.clone();
            damaged[bytes.len() / 2] ^= 0x40;
            prop_assert!(read_header(&name, &damaged, &keys).is_err());
        }
    }
}
