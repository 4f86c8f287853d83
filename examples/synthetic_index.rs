//! Fill a repository's index with fake entries, for the big-index benchmark
//! (`bench/big_index.sh`): what opening, backing up into and restoring from
//! a repository of millions of chunks costs in memory and time, without
//! storing terabytes. The fake packs do not exist, so nothing ever reads
//! them; `check` reports them as missing.
//!
//!     HOLDFAST_PASSPHRASE=… cargo run --release --example synthetic_index -- REPO CHUNKS

use holdfast::engine::backend::Location;
use holdfast::engine::crypto::{Id, ObjectKind};
use holdfast::engine::index::IndexFile;
use holdfast::engine::pack::{IndexedPack, PackBlob};
use holdfast::engine::repository::Repository;

/// Blobs per fake pack (16 MiB packs of 512 KiB chunks) and per index file.
const BLOBS_PER_PACK: u64 = 32;
const BLOBS_PER_FILE: u64 = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, repo, chunks] = &args[..] else {
        return Err("usage: synthetic_index REPO CHUNKS (passphrase in HOLDFAST_PASSPHRASE)".into());
    };
    let chunks: u64 = chunks.parse()?;
    let passphrase = std::env::var("HOLDFAST_PASSPHRASE")?;
    let repo = Repository::open(&Location::Local(repo.into()), passphrase.as_bytes())?;
    let mut written = 0;
    while written < chunks {
        let in_file = BLOBS_PER_FILE.min(chunks - written);
        let mut packs = Vec::new();
        let mut left = in_file;
        while left > 0 {
            let n = BLOBS_PER_PACK.min(left);
            let blobs = (0..n)
                .map(|i| {
                    Ok(PackBlob {
                        id: Id::random()?,
                        kind: ObjectKind::Chunk,
                        offset: (i * 300_000) as u32,
                        length: 300_000,
                        raw_length: 524_288,
                    })
                })
                .collect::<holdfast::error::Result<Vec<_>>>()?;
            packs.push(IndexedPack { pack: Id::random()?, blobs });
            left -= n;
        }
        repo.write_index_file(&IndexFile { packs })?;
        written += in_file;
    }
    println!("{written} fake chunks indexed");
    Ok(())
}
