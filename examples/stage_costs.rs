//! CPU cost of each stage a backup puts a chunk through, in seconds per GiB
//! on one thread: chunking, the chunk id, sealing (compress when it pays,
//! encrypt) and the proof that the sealed chunk opens again. For the
//! big-file throughput benchmark (`bench/big_file.sh`), so a change to the
//! pipeline can be judged stage by stage.
//!
//!     cargo run --release --example stage_costs -- FILE [LEVEL]

use std::time::Instant;

use holdfast::engine::chunker::{Chunker, ChunkerParams};
use holdfast::engine::crypto::{Keys, MasterKey, ObjectKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (path, level) = match &args[1..] {
        [p] => (p, 3),
        [p, l] => (p, l.parse()?),
        _ => return Err("usage: stage_costs FILE [LEVEL]".into()),
    };
    let data = std::fs::read(path)?;
    let gib = data.len() as f64 / (1u64 << 30) as f64;
    let keys = Keys::derive(&MasterKey::generate()?);
    let chunker = Chunker::new(ChunkerParams::default(), keys.chunker_seed());
    let per_gib = |start: Instant| start.elapsed().as_secs_f64() / gib;

    let start = Instant::now();
    let mut chunks = Vec::new();
    let mut buf = Vec::new();
    let mut at = 0;
    chunker.chunk_stream::<_, std::io::Error>(&data[..], &mut buf, |c| {
        chunks.push(at..at + c.len());
        at += c.len();
        Ok(())
    })?;
    let chunking = per_gib(start);

    let start = Instant::now();
    let ids: Vec<_> = chunks.iter().map(|r| keys.blob_id(&data[r.clone()])).collect();
    let hashing = per_gib(start);

    // Chunk by chunk, as the sealers go: each sealed chunk is dropped before
    // the next, so the allocator reuses its memory (keeping them all would
    // time the kernel zeroing fresh pages instead).
    let (mut sealing, mut proving, mut open_and_hash, mut stored) = (0.0, 0.0, 0.0, 0);
    for (r, id) in chunks.iter().zip(&ids) {
        let chunk = &data[r.clone()];
        let start = Instant::now();
        let sealed = keys.seal(ObjectKind::Chunk, id, chunk, level)?;
        sealing += per_gib(start);
        // The proof is what sealing and proving together cost beyond sealing.
        let start = Instant::now();
        drop(keys.seal_proven(ObjectKind::Chunk, id, chunk, level)?);
        proving += per_gib(start);
        let start = Instant::now();
        let back = keys.open(ObjectKind::Chunk, id, &sealed)?;
        if keys.blob_id(&back) != *id {
            return Err("a sealed chunk did not open to its id".into());
        }
        open_and_hash += per_gib(start);
        stored += sealed.len();
    }

    println!(
        "{path}: {:.2} GiB in {} chunks, stored {:.1}% of it",
        gib,
        chunks.len(),
        100.0 * stored as f64 / data.len() as f64
    );
    println!("CPU-seconds per GiB, one thread:");
    println!("  chunking (FastCDC)          {chunking:.3}");
    println!("  chunk id (keyed BLAKE3)     {hashing:.3}");
    println!("  seal (zstd {level} if it pays, XChaCha20-Poly1305) {sealing:.3}");
    println!("  proof it opens (seal_proven - seal) {:.3}", proving - sealing);
    println!("  open + re-hash (the old proof) {open_and_hash:.3}");
    Ok(())
}
