//! A file that exists only as a stream (a database dump piped out of its
//! tool): chunked, deduplicated, sealed and stored as it arrives, so it
//! needs no space anywhere else. The caller learns only at the end whether
//! the producer succeeded; a stream that ended badly is never made part of
//! a snapshot (its packs are indexed but unreferenced, and prune takes them).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Mutex;
use std::sync::mpsc::sync_channel;

use super::content::{Failure, PlainBlob, SealedBlob, seal_blobs, stopped, write_packs};
use crate::engine::index::IndexFile;
use crate::engine::pack::PackUploader;
use crate::engine::repository::{KnownBlobs, Repository};
use crate::engine::running::{Running, register_backup};
use crate::engine::tree::Piece;
use crate::error::{Error, Result};

/// A stream stored in a repository, not yet in any snapshot.
pub struct StoredStream {
    pub pieces: Vec<Piece>,
    pub size: u64,
    /// What storing it added to the repository (chunks it already had
    /// add nothing).
    pub added: StreamAdded,
    /// Registered like a backup from before the first pack: no prune
    /// deletes these packs until the snapshot that holds them is committed
    /// and this is dropped.
    pub running: Running,
}

/// The blobs and bytes a stored stream added to the repository, counted
/// into the summary of the snapshot that takes the stream in.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamAdded {
    pub blobs: u64,
    /// Plaintext bytes of the new blobs.
    pub raw_bytes: u64,
    /// Their bytes as stored (compressed and sealed).
    pub sealed_bytes: u64,
}

impl std::ops::AddAssign for StreamAdded {
    fn add_assign(&mut self, o: StreamAdded) {
        self.blobs += o.blobs;
        self.raw_bytes += o.raw_bytes;
        self.sealed_bytes += o.sealed_bytes;
    }
}

/// Store everything `reader` gives until its end, sealing on every core
/// while this thread chunks. `cancel` stops it early (an error).
pub fn store_stream(repo: &Repository, reader: &mut dyn Read, cancel: Option<&AtomicBool>) -> Result<StoredStream> {
    let running = register_backup(repo)?;
    let (index, _damaged) = repo.load_index()?;
    let known = KnownBlobs::new(&index);
    let uploader = PackUploader::start(repo.shared_backend(), repo.backend().parallelism(), Default::default());
    let keys = repo.keys();
    let level = repo.config().compression_level;
    let pack_size = repo.config().pack_size as u64;
    let threads = crate::engine::parallel::cpus().max(1);
    let failure = Failure::default();
    let (plain_tx, plain_rx) = sync_channel::<PlainBlob>(threads * 2);
    let (sealed_tx, sealed_rx) = sync_channel::<SealedBlob>(threads * 2);
    let plain_rx = Mutex::new(plain_rx);
    let mut pieces = Vec::new();
    let size = std::thread::scope(|s| {
        let writer = s.spawn(|| write_packs(repo, &uploader, sealed_rx, pack_size, &failure));
        for _ in 0..threads {
            let (tx, rx, failure) = (sealed_tx.clone(), &plain_rx, &failure);
            s.spawn(move || seal_blobs(keys, level, rx, tx, failure));
        }
        drop(sealed_tx);
        let mut buf = Vec::new();
        let size = repo.chunker().chunk_stream(reader, &mut buf, |chunk| -> Result<()> {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(Error::Interrupted);
            }
            if failure.is_set() {
                return Err(stopped());
            }
            let id = keys.blob_id(chunk);
            pieces.push(Piece::Chunk { id, len: chunk.len() as u32 });
            if known.claim(id) {
                plain_tx.send(PlainBlob { id, data: chunk.to_vec() }).map_err(|_| stopped())?;
            }
            Ok(())
        });
        // The sealers end when the chunks do; then the writer.
        drop(plain_tx);
        if writer.join().is_err() {
            failure.set(Error::Invalid("the pack writer panicked".into()));
        }
        size
    });
    // Packs already sent are indexed even when the stream failed: the
    // index must name every pack it can (prune collects what no snapshot holds).
    let packs = uploader.finish()?;
    let mut added = StreamAdded::default();
    for blob in packs.iter().flat_map(|p| &p.blobs) {
        added += StreamAdded { blobs: 1, raw_bytes: blob.raw_length.into(), sealed_bytes: blob.length.into() };
    }
    if !packs.is_empty() {
        repo.write_index_file(&IndexFile { packs })?;
    }
    // A pipeline failure says more than the chunker's "stopped".
    let size = match (size, failure.take()) {
        (_, Some(e)) => return Err(e),
        (size, None) => size?,
    };
    Ok(StoredStream { pieces, size, added, running })
}
