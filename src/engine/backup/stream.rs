//! A file that exists only as a stream (a database dump piped out of its
//! tool): chunked, deduplicated, sealed and stored as it arrives, so it
//! needs no space anywhere else. The caller learns only at the end whether
//! the producer succeeded; a stream that ended badly is never made part of
//! a snapshot (its packs are indexed but unreferenced, and prune takes them).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use super::content::{seal_verified, ship};
use crate::engine::crypto::ObjectKind;
use crate::engine::index::IndexFile;
use crate::engine::pack::{PackUploader, PackWriter};
use crate::engine::repository::{KnownBlobs, Repository};
use crate::engine::running::{Running, register_backup};
use crate::engine::tree::Piece;
use crate::error::{Error, Result};

/// A stream stored in a repository, not yet in any snapshot.
pub struct StoredStream {
    pub pieces: Vec<Piece>,
    pub size: u64,
    /// Registered like a backup from before the first pack: no prune
    /// deletes these packs until the snapshot that holds them is committed
    /// and this is dropped.
    pub running: Running,
}

/// Store everything `reader` gives until its end. `cancel` stops it early
/// (an error).
pub fn store_stream(repo: &Repository, reader: &mut dyn Read, cancel: Option<&AtomicBool>) -> Result<StoredStream> {
    let running = register_backup(repo)?;
    let (index, _damaged) = repo.load_index()?;
    let known = KnownBlobs::new(&index);
    let uploader = PackUploader::start(repo.shared_backend(), repo.backend().parallelism(), Default::default());
    let keys = repo.keys();
    let level = repo.config().compression_level;
    let pack_size = repo.config().pack_size as u64;
    let mut pack = PackWriter::for_size(pack_size);
    let mut pieces = Vec::new();
    let mut buf = Vec::new();
    let size = repo.chunker().chunk_stream(reader, &mut buf, |chunk| -> Result<()> {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let id = keys.blob_id(chunk);
        pieces.push(Piece::Chunk { id, len: chunk.len() as u32 });
        if known.claim(id) {
            let sealed = seal_verified(keys, ObjectKind::Chunk, &id, chunk, level)?;
            pack.add(id, ObjectKind::Chunk, &sealed, chunk.len());
            if pack.size() >= pack_size {
                ship(repo, &uploader, std::mem::replace(&mut pack, PackWriter::for_size(pack_size)))?;
            }
        }
        Ok(())
    });
    // Packs already sent are indexed even when the stream failed: the
    // index must name every pack it can (prune collects what no snapshot holds).
    let finished = size.and_then(|size| {
        if !pack.is_empty() {
            ship(repo, &uploader, pack)?;
        }
        Ok(size)
    });
    let packs = uploader.finish()?;
    if !packs.is_empty() {
        repo.write_index_file(&IndexFile { packs })?;
    }
    Ok(StoredStream { pieces, size: finished?, running })
}
