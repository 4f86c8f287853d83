//! A dump tool's output read on a thread of its own, up to
//! [`AHEAD`] bytes before the chunker asks for it. Without it the tool
//! stalls on a full pipe each time the chunker works through what it read
//! last, and a streamed dump takes the tool's time plus holdfast's instead
//! of the longer of the two.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// How much of a stream is read before it is needed.
const AHEAD: usize = 32 << 20;
/// The size of one read-ahead block.
const BLOCK: usize = 1 << 20;

/// A block of the stream; `End` only after its last byte.
pub(super) enum Block {
    Bytes(Vec<u8>),
    End,
    Failed(io::Error),
}

/// The two ends: one for [`fill`] on its own thread, one to read from.
pub(super) fn channel() -> (SyncSender<Block>, Ahead) {
    let (tx, rx) = sync_channel(AHEAD / BLOCK);
    (tx, Ahead { blocks: rx, block: Vec::new(), at: 0, ended: false })
}

/// Read `source` to its end into `blocks`. Stops early when the reading end
/// is dropped.
pub(super) fn fill(mut source: impl Read, blocks: SyncSender<Block>) {
    loop {
        let mut block = vec![0u8; BLOCK];
        let mut len = 0;
        let end = loop {
            match source.read(&mut block[len..]) {
                Ok(0) => break true,
                Ok(n) => {
                    len += n;
                    if len == BLOCK {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = blocks.send(Block::Failed(e));
                    return;
                }
            }
        };
        block.truncate(len);
        if len > 0 && blocks.send(Block::Bytes(block)).is_err() {
            return;
        }
        if end {
            let _ = blocks.send(Block::End);
            return;
        }
    }
}

/// The reading end: the stream's bytes in order, then its end. A filler
/// that went away without saying the stream ended is an error, never a
/// short stream.
pub(super) struct Ahead {
    blocks: Receiver<Block>,
    block: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for Ahead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.block.len() {
            if self.ended {
                return Ok(0);
            }
            match self.blocks.recv() {
                Ok(Block::Bytes(b)) => (self.block, self.at) = (b, 0),
                Ok(Block::End) => self.ended = true,
                Ok(Block::Failed(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the stream's reader stopped before its end")),
            }
        }
        let n = out.len().min(self.block.len() - self.at);
        out[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that gives a few bytes per read, then fails or ends.
    struct Trickle {
        left: Vec<u8>,
        fail_at_end: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.left.is_empty() {
                return if self.fail_at_end { Err(io::Error::other("disk gone")) } else { Ok(0) };
            }
            let n = out.len().min(self.left.len()).min(7_777);
            out[..n].copy_from_slice(&self.left[..n]);
            self.left.drain(..n);
            Ok(n)
        }
    }

    fn through_read_ahead(source: Trickle) -> io::Result<Vec<u8>> {
        std::thread::scope(|s| {
            let (tx, mut ahead) = channel();
            s.spawn(move || fill(source, tx));
            let mut out = Vec::new();
            ahead.read_to_end(&mut out).map(|_| out)
        })
    }

    #[test]
    fn every_byte_arrives_in_order_across_blocks() {
        let data: Vec<u8> = (0..3 * BLOCK + 12_345).map(|i| (i * 31 % 251) as u8).collect();
        let out = through_read_ahead(Trickle { left: data.clone(), fail_at_end: false }).unwrap();
        assert_eq!(out, data);
        assert!(through_read_ahead(Trickle { left: Vec::new(), fail_at_end: false }).unwrap().is_empty());
    }

    #[test]
    fn a_read_error_after_some_bytes_is_an_error_not_a_short_stream() {
        let err = through_read_ahead(Trickle { left: vec![1; BLOCK + 5], fail_at_end: true }).unwrap_err();
        assert!(err.to_string().contains("disk gone"), "{err}");
    }

    #[test]
    fn a_filler_gone_without_an_end_is_an_error() {
        let (tx, mut ahead) = channel();
        tx.send(Block::Bytes(vec![1, 2, 3])).unwrap();
        drop(tx);
        let mut out = Vec::new();
        let err = ahead.read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("before its end"), "{err}");
    }

    #[test]
    fn dropping_the_reading_end_stops_the_filler() {
        let (tx, ahead) = channel();
        drop(ahead);
        // An endless source: fill returns once its block has nowhere to go.
        fill(io::repeat(7), tx);
    }
}
