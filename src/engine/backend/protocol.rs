//! The wire protocol between the SSH backend ([`super::ssh`]) and
//! `holdfast serve` ([`super::serve`]): the [`Backend`](super::Backend)
//! trait's calls as requests, nothing more.
//!
//! A frame is `u32` header length, postcard header, `u64` body length,
//! body (little-endian lengths). The header is a [`Request`] or a
//! [`Response`]; the body carries the bytes of a put or of a read, so a
//! 16 MiB pack is neither encoded nor copied. Every request has an id and
//! its response carries it back: requests are pipelined (several threads'
//! requests in flight on one connection) and answered in any order.
//!
//! The first exchange is `Hello`: the client's protocol version, answered by
//! the server's and whether it is append-only. The server trusts nothing it
//! reads: frame lengths are bounded before anything is allocated for them,
//! and names are checked against the repository's layout
//! ([`check_name`]) before they touch a path.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::Dir;

/// This protocol's version; a server answers a client of another version
/// with an error naming both.
pub const VERSION: u32 = 1;

/// The largest header either side accepts (names and listings are small;
/// a listing of a million packs is ~80 MiB, so listings travel as bodies).
pub const MAX_HEADER: u32 = 64 << 10;

/// The largest body a server accepts in a request (a pack is 16 MiB, an
/// index file a few MiB; the margin is for repositories made with
/// larger settings).
pub const MAX_REQUEST_BODY: u64 = 1 << 30;

/// The largest body a client accepts in a response (one merged index
/// file of a very large repository).
pub const MAX_RESPONSE_BODY: u64 = 8 << 30;

/// What the client asks; the body (bytes to store) goes with
/// [`Op::PutNew`] and [`Op::PutState`] only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// One call of the backend trait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Hello { version: u32 },
    IsEmpty,
    CreateLayout,
    MissingLayout,
    PutNew { dir: Dir, name: String },
    PutState { dir: Dir, name: String },
    Get { dir: Dir, name: String },
    GetRange { dir: Dir, name: String, start: u64, end: u64 },
    List { dir: Dir },
    Remove { dir: Dir, name: String },
}

impl Op {
    /// True when the call changes or removes what is stored (refused by an
    /// append-only server).
    pub fn destroys(&self) -> bool {
        matches!(self, Op::PutState { .. } | Op::Remove { .. })
    }
}

/// The answer to the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub reply: Reply,
}

/// What a call returned. `Data` and `Files` travel in the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Hello {
        version: u32,
        append_only: bool,
    },
    Done,
    Bool(bool),
    Names(Vec<String>),
    /// True when stored, false when the name was taken.
    Stored(bool),
    /// The body holds the bytes read.
    Data,
    /// The body holds the listing, postcard-encoded ([`WireFile`]s).
    Files,
    Failed {
        kind: FailureKind,
        message: String,
    },
}

/// How a call failed, so the client can rebuild the error its callers
/// look at (a missing file is `NotFound`, as from a local repository).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    NotFound,
    AlreadyExists,
    /// Refused by the server's rules (append-only, a bad name).
    Refused,
    /// The request made no sense (bad range, wrong version).
    Invalid,
    Other,
}

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFile {
    pub name: String,
    pub size: u64,
    /// Seconds and nanoseconds since the epoch.
    pub modified: Option<(i64, i32)>,
}

/// Write one frame and flush it.
pub fn write_frame(out: &mut impl Write, header: &impl Serialize, body: &[u8]) -> io::Result<()> {
    let head = postcard::to_stdvec(header).map_err(io::Error::other)?;
    let head_len = u32::try_from(head.len()).map_err(io::Error::other)?;
    out.write_all(&head_len.to_le_bytes())?;
    out.write_all(&head)?;
    out.write_all(&(body.len() as u64).to_le_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// The most a frame's body is given before its bytes arrive.
const PREALLOCATE_BODY: u64 = 16 << 20;

/// Read one frame: `None` at a clean end of the stream (before a frame),
/// an error for a truncated or oversized one or a header that does not
/// decode. Memory grows with the bytes that arrive, not with a length the
/// peer claims (past the first `PREALLOCATE_BODY`).
pub fn read_frame<H: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
    max_body: u64,
) -> io::Result<Option<(H, Vec<u8>)>> {
    let Some((header, body_len)) = read_header(input, max_body)? else {
        return Ok(None);
    };
    Ok(Some((header, read_body(input, body_len)?)))
}

/// The first half of [`read_frame`]: the header and the body's length
/// (checked against `max_body`), so a reader can make room before
/// [`read_body`] takes the bytes.
pub fn read_header<H: for<'de> Deserialize<'de>>(input: &mut impl Read, max_body: u64) -> io::Result<Option<(H, u64)>> {
    let mut len = [0u8; 4];
    match input.read(&mut len[..1])? {
        0 => return Ok(None),
        _ => input.read_exact(&mut len[1..])?,
    }
    let head_len = u32::from_le_bytes(len);
    if head_len > MAX_HEADER {
        return Err(invalid(format!("a frame header of {head_len} bytes (at most {MAX_HEADER})")));
    }
    let mut head = vec![0u8; head_len as usize];
    input.read_exact(&mut head)?;
    let header: H =
        postcard::from_bytes(&head).map_err(|e| invalid(format!("a frame header that does not decode: {e}")))?;
    let mut len = [0u8; 8];
    input.read_exact(&mut len)?;
    let body_len = u64::from_le_bytes(len);
    if body_len > max_body {
        return Err(invalid(format!("a frame body of {body_len} bytes (at most {max_body})")));
    }
    Ok(Some((header, body_len)))
}

/// The second half of [`read_frame`]: a body of `body_len` bytes.
pub fn read_body(input: &mut impl Read, body_len: u64) -> io::Result<Vec<u8>> {
    // Sized up front (packs and read-ahead stretches fit), so the body is
    // read straight into place, not copied as it grows; bounded, so a
    // length a peer made up allocates little before the bytes run out.
    let mut body = Vec::with_capacity(body_len.min(PREALLOCATE_BODY) as usize);
    input.take(body_len).read_to_end(&mut body)?;
    if body.len() as u64 != body_len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(body)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A name the server accepts in `dir`: one plain file name of the
/// characters holdfast's own names use (hex ids, host names, `.done`,
/// `.tmp`), never `.`/`..`, a hidden name or a path. `Tmp` takes no
/// writes from a client (it is the server's own scratch space).
pub fn check_name(dir: Dir, name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !plain {
        return Err(format!("{name:?} is not a name a repository's {} holds", dir_name(dir)));
    }
    // A pack's file lives in the fan-out directory named by its first two
    // characters; a name of two or fewer would be that directory itself.
    if dir == Dir::Packs && name.len() <= 2 {
        return Err(format!("{name:?} is not a pack's name (too short)"));
    }
    Ok(())
}

/// The directory's name for messages (the top level has none).
pub fn dir_name(dir: Dir) -> &'static str {
    if dir == Dir::Root { "top level" } else { dir.as_str() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let mut wire = Vec::new();
        let req = Request { id: 7, op: Op::PutNew { dir: Dir::Packs, name: "ab".repeat(32) } };
        write_frame(&mut wire, &req, b"pack bytes").unwrap();
        write_frame(&mut wire, &Request { id: 8, op: Op::List { dir: Dir::Index } }, &[]).unwrap();
        let mut input = &wire[..];
        let (got, body): (Request, Vec<u8>) = read_frame(&mut input, 100).unwrap().unwrap();
        assert_eq!((got, body.as_slice()), (req, &b"pack bytes"[..]));
        let (got, body): (Request, Vec<u8>) = read_frame(&mut input, 100).unwrap().unwrap();
        assert_eq!(got.op, Op::List { dir: Dir::Index });
        assert!(body.is_empty());
        assert!(read_frame::<Request>(&mut input, 100).unwrap().is_none());
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors_without_allocating_what_they_claim() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Request { id: 1, op: Op::IsEmpty }, &[0u8; 64]).unwrap();
        assert!(read_frame::<Request>(&mut &wire[..], 63).is_err());
        assert!(read_frame::<Request>(&mut &wire[..wire.len() - 1], 64).is_err());
        let huge = [&u32::MAX.to_le_bytes()[..], &[0u8; 16]].concat();
        assert!(read_frame::<Request>(&mut &huge[..], 64).is_err());
        // A body length of 2^63 on a short stream: refused by the bound.
        let mut lying = Vec::new();
        write_frame(&mut lying, &Request { id: 1, op: Op::IsEmpty }, &[]).unwrap();
        let at = lying.len() - 8;
        lying[at..].copy_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(read_frame::<Request>(&mut &lying[..], u64::MAX >> 1).is_err());
    }

    #[test]
    fn names_are_plain_file_names() {
        for good in ["0a1b2c", "host-1234-abcd.done", "config", "x_y.tmp"] {
            assert!(check_name(Dir::Running, good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../config", "a/b", ".hidden", "a\0b", "é", &"a".repeat(201), "00", "ff", "a"] {
            assert!(check_name(Dir::Packs, bad).is_err(), "{bad:?}");
        }
        assert!(check_name(Dir::Packs, &"ab".repeat(32)).is_ok());
    }
}
