//! Content-defined chunking: FastCDC (2020) with a per-repository gear seed.
//!
//! Boundaries depend only on content, so an insertion in the middle of a
//! database dump changes the chunks around it and no others. The gear table is
//! XORed with a secret derived from the repository key, so chunk sizes do not
//! reveal which known file was stored.
//!
//! Sizes: 512 KiB on average (min 128 KiB, max 2 MiB) by default; see
//! ARCHITECTURE.md for the measurement behind it.

use std::borrow::Cow;
use std::io::Read;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

/// The chunk size parameters of a repository, fixed at `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl ChunkerParams {
    pub const DEFAULT_AVG: u32 = 512 << 10;

    /// min = avg/4 and max = avg*4, as FastCDC's authors suggest.
    pub fn with_average(avg: u32) -> Result<Self, String> {
        if !(4096..=(4 << 20)).contains(&avg) || !avg.is_power_of_two() {
            return Err(format!("average chunk size must be a power of two between 4 KiB and 4 MiB, not {avg}"));
        }
        Ok(ChunkerParams { min_size: avg / 4, avg_size: avg, max_size: avg * 4 })
    }

    /// Whether these parameters are ones `with_average` makes: a
    /// repository's config is checked with this when it is opened, so a
    /// damaged or forged one is an error, not a panic in the chunker.
    pub fn check(&self) -> Result<(), String> {
        match ChunkerParams::with_average(self.avg_size) {
            Ok(p) if p == *self => Ok(()),
            _ => Err(format!(
                "chunker parameters {}/{}/{} are not ones holdfast makes",
                self.min_size, self.avg_size, self.max_size
            )),
        }
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min_size: Self::DEFAULT_AVG / 4, avg_size: Self::DEFAULT_AVG, max_size: Self::DEFAULT_AVG * 4 }
    }
}

/// A configured chunker; cheap to share between threads.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    pub fn new(params: ChunkerParams, seed: u64) -> Chunker {
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker { params, mask_s, mask_l, gear, gear_ls }
    }

    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// The length of the first chunk of `data`; `data` must hold at least
    /// `max_size` bytes unless it is the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let (_, len) = cut_gear(
            data,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            self.params.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }

    /// Split everything `reader` yields into chunks, calling `on_chunk` with
    /// each in order. Reads through one reusable buffer.
    pub fn chunk_stream<R: Read, E: From<std::io::Error>>(
        &self,
        mut reader: R,
        buf: &mut Vec<u8>,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max_size as usize;
        let cap = (max * 2).max(8 << 20);
        buf.resize(cap, 0);
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && end - start < max {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < cap {
                    let n = match reader.read(&mut buf[end..]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        eof = true;
                        break;
                    }
                    end += n;
                }
            }
            if start == end {
                return Ok(total);
            }
            let len = self.cut(&buf[start..end]).max(1).min(end - start);
            on_chunk(&buf[start..start + len])?;
            total += len as u64;
            start += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        Chunker::new(ChunkerParams::with_average(4096).unwrap(), 42)
    }

    fn chunks_of(c: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        c.chunk_stream::<_, std::io::Error>(data, &mut buf, |ch| {
            out.push(ch.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_the_input_and_respect_the_limits(
            len in 0usize..200_000, seed in any::<u64>()
        ) {
            let c = small();
            let data = pseudo_random(len, seed);
            let chunks = chunks_of(&c, &data);
            prop_assert_eq!(chunks.concat(), data);
            for (i, ch) in chunks.iter().enumerate() {
                prop_assert!(ch.len() <= 16384);
                if i + 1 < chunks.len() {
                    prop_assert!(ch.len() >= 1024);
                }
            }
        }

        #[test]
        fn an_insertion_changes_only_nearby_chunks(at in 0usize..100_000, seed in any::<u64>()) {
            let c = small();
            let data = pseudo_random(200_000, seed);
            let mut edited = data.clone();
            edited.splice(at..at, b"inserted row".iter().copied());
            let before: std::collections::HashSet<_> = chunks_of(&c, &data).into_iter().collect();
            let after = chunks_of(&c, &edited);
            // Boundaries resynchronise at the first natural cut after the
            // edit; a run of forced (max-size) cuts can delay that a little.
            let new: usize = after.iter().filter(|ch| !before.contains(*ch)).map(Vec::len).sum();
            prop_assert!(new <= 4 * 16384, "{} new bytes for one 12-byte insertion", new);
        }
    }

    #[test]
    fn boundaries_depend_on_the_seed() {
        let data = pseudo_random(300_000, 9);
        let params = ChunkerParams::with_average(4096).unwrap();
        let a: Vec<usize> = chunks_of(&Chunker::new(params, 1), &data).iter().map(Vec::len).collect();
        let b: Vec<usize> = chunks_of(&Chunker::new(params, 2), &data).iter().map(Vec::len).collect();
        assert_ne!(a, b);
    }
}
