//! Keys, ids and sealed objects: the only module that touches key material.
//!
//! A repository has one random 256-bit master key. Every purpose gets its own
//! subkey, derived with BLAKE3's key derivation mode, so that no key is used
//! for two things: chunk ids (keyed BLAKE3), the chunker's gear seed, data
//! encryption (chunk contents) and metadata encryption (trees, pack headers,
//! indexes, snapshots, the config).
//!
//! Every stored object is sealed the same way: an optional zstd step, then
//! XChaCha20-Poly1305 with a fresh random 192-bit nonce. The associated data
//! binds the format version, the object's kind and its id, so no object can be
//! passed off as another (borg's CVE-2016-10099 and CVE-2023-36811 were that).
//!
//! Sealed layout: `nonce (24) || ciphertext || tag (16)`; the plaintext is
//! `flag (1) || payload`, where the flag says whether the payload is zstd.

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::Error;

type Result<T, E = Error> = std::result::Result<T, E>;

/// The version of the on-disk format; bound into every sealed object.
pub const FORMAT_VERSION: u8 = 1;
const AD_MAGIC: &[u8; 8] = b"holdfast";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its payload (nonce, tag, compression flag).
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN + 1;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// What a sealed object is; bound into its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum ObjectKind {
    Chunk = 1,
    Tree = 2,
    PackHeader = 3,
    Index = 4,
    Snapshot = 5,
    Config = 6,
    MasterKey = 7,
}

impl ObjectKind {
    /// What it is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunk",
            ObjectKind::Tree => "tree",
            ObjectKind::PackHeader => "pack header",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Config => "config",
            ObjectKind::MasterKey => "key",
        }
    }

    /// Chunk contents use the data key; everything else the metadata key.
    fn uses_data_key(self) -> bool {
        matches!(self, ObjectKind::Chunk)
    }
}

/// A 256-bit identifier: a keyed BLAKE3 hash for blobs, a plain BLAKE3 hash
/// of the bytes for repository files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

/// Hex in human-readable formats (JSON), 32 raw bytes in binary ones.
impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&self.to_hex()) } else { self.0.serialize(s) }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        if d.is_human_readable() {
            // Read in place, not copied into a String: snapshots and index
            // files hold many ids.
            struct Hex;
            impl serde::de::Visitor<'_> for Hex {
                type Value = Id;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("64 hex digits")
                }
                fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
                    Id::from_hex(s).ok_or_else(|| E::custom("expected 64 hex digits"))
                }
            }
            d.deserialize_str(Hex)
        } else {
            <[u8; 32]>::deserialize(d).map(Id)
        }
    }
}

impl Id {
    pub const ZERO: Id = Id([0; 32]);

    /// The plain (unkeyed) BLAKE3 hash of `bytes`: how repository files are named.
    pub fn of_bytes(bytes: &[u8]) -> Id {
        Id(*blake3::hash(bytes).as_bytes())
    }

    pub fn random() -> Result<Id> {
        let mut id = [0u8; 32];
        fill_random(&mut id)?;
        Ok(Id(id))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The id written as `s`, in the lower-case form [`Id::to_hex`] writes
    /// and repository files are named by: an upper-case alias of a file's
    /// name is not taken for the same file (a stray copy named so would
    /// otherwise list a snapshot twice, and forgetting one would delete the
    /// other's file).
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut id = [0u8; 32];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(Id(id))
    }

    /// The first 8 hex digits, how ids are shown to people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// Fill `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Invalid(format!("no randomness from the OS: {e}")))
}

/// The repository's master key. Never printed, never logged.
#[derive(Clone)]
pub struct MasterKey(pub(crate) [u8; 32]);

impl MasterKey {
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        fill_random(&mut k)?;
        Ok(MasterKey(k))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The subkeys derived from a master key, one per purpose.
pub struct Keys {
    id_key: [u8; 32],
    /// Authenticates what holdfast keeps outside the repository for speed
    /// (the index cache's blocks), so a damaged cache is never believed.
    cache_key: [u8; 32],
    chunker_seed: u64,
    data: XChaCha20Poly1305,
    meta: XChaCha20Poly1305,
}

impl Keys {
    pub fn derive(master: &MasterKey) -> Keys {
        let sub = |context: &str| blake3::derive_key(context, &master.0);
        let chunker = sub("holdfast 2026-11 chunker gear seed");
        Keys {
            id_key: sub("holdfast 2026-11 chunk id"),
            cache_key: sub("holdfast 2026-12 local cache tags"),
            chunker_seed: u64::from_le_bytes(chunker[..8].try_into().unwrap_or([0; 8])),
            data: XChaCha20Poly1305::new((&sub("holdfast 2026-11 data encryption")).into()),
            meta: XChaCha20Poly1305::new((&sub("holdfast 2026-11 metadata encryption")).into()),
        }
    }

    /// The keyed BLAKE3 id of a blob's plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// The tag of block `block` of the local cache file named `file`: a
    /// keyed BLAKE3 over both and the bytes, so a block that changed, moved
    /// or came from another file or repository does not match.
    pub fn cache_tag(&self, file: &Id, block: u64, bytes: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.cache_key);
        h.update(&file.0).update(&block.to_le_bytes()).update(bytes);
        *h.finalize().as_bytes()
    }

    /// The secret that perturbs the chunker's gear table.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    fn cipher(&self, kind: ObjectKind) -> &XChaCha20Poly1305 {
        if kind.uses_data_key() { &self.data } else { &self.meta }
    }

    /// Compress (when it helps, with zstd at `level`) and encrypt `plaintext`
    /// as an object of `kind` named `id`. Built in one buffer, encrypted in
    /// place: `nonce || ciphertext(flag || payload) || tag`.
    pub fn seal(&self, kind: ObjectKind, id: &Id, plaintext: &[u8], level: i32) -> Result<Vec<u8>> {
        self.seal_with_tag(kind, id, plaintext, level).map(|(sealed, _)| sealed)
    }

    /// [`Keys::seal`], then prove the sealed bytes open to exactly
    /// `plaintext` before anyone writes them: a memory or compressor fault
    /// between reading a chunk and storing it is caught while the original
    /// is still at hand, instead of at a restore.
    pub fn seal_proven(&self, kind: ObjectKind, id: &Id, plaintext: &[u8], level: i32) -> Result<Vec<u8>> {
        let (sealed, tag) = self.seal_with_tag(kind, id, plaintext, level)?;
        self.prove_sealed(kind, id, plaintext, &sealed, &tag)?;
        Ok(sealed)
    }

    /// The sealed object and, apart from it, the tag its last bytes hold.
    fn seal_with_tag(
        &self,
        kind: ObjectKind,
        id: &Id,
        plaintext: &[u8],
        level: i32,
    ) -> Result<(Vec<u8>, [u8; TAG_LEN])> {
        let mut out = Vec::with_capacity(NONCE_LEN + 1 + zstd::zstd_safe::compress_bound(plaintext.len()) + TAG_LEN);
        out.resize(NONCE_LEN, 0);
        fill_random(&mut out[..NONCE_LEN])?;
        out.push(FLAG_ZSTD);
        let compressed = level != 0
            && worth_compressing(plaintext, level)
            && compress_into(plaintext, &mut out, level)
            && out.len() < NONCE_LEN + 1 + plaintext.len();
        if !compressed {
            out.truncate(NONCE_LEN);
            out.push(FLAG_RAW);
            out.extend_from_slice(plaintext);
        }
        let ad = associated_data(kind, id);
        let (nonce, body) = out.split_at_mut(NONCE_LEN);
        let tag: [u8; TAG_LEN] = self
            .cipher(kind)
            .encrypt_inout_detached(as_nonce(nonce)?, &ad, body.into())
            .map_err(|_| Error::Invalid("encryption failed".into()))?
            .into();
        out.extend_from_slice(&tag);
        Ok((out, tag))
    }

    /// Prove that `sealed`, just made with `tag`, opens to exactly
    /// `plaintext`: authenticated and decrypted as a restore would (Poly1305
    /// and the keystream run again, so a miscomputed tag is caught as well
    /// as a changed byte), straight from the sealed bytes into a buffer this
    /// thread keeps, so no copy of the blob is made and no memory is taken
    /// per blob; then compared with the plaintext (decompressed first where
    /// it was compressed). Equal bytes have the same id, so there is no
    /// second hash to pay. The tag's bytes are also compared with the tag
    /// kept apart from the buffer.
    fn prove_sealed(
        &self,
        kind: ObjectKind,
        id: &Id,
        plaintext: &[u8],
        sealed: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<()> {
        thread_local! {
            static OPENED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let unsound = |why: &str| {
            Error::damaged(
                format!("{} {}", kind.name(), id.short()),
                format!(
                    "sealed blob did not read back identically ({why}: memory or compressor fault); nothing was written"
                ),
            )
        };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(unsound("too short"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, sealed_tag) = rest.split_at(rest.len() - TAG_LEN);
        if sealed_tag != tag {
            return Err(unsound("tag changed"));
        }
        with_thread_buffer(&OPENED, ct.len(), |opened| {
            let buffer = InOutBuf::new(ct, &mut *opened).map_err(|_| unsound("lengths"))?;
            self.cipher(kind)
                .decrypt_inout_detached(as_nonce(nonce)?, &associated_data(kind, id), buffer, as_tag(tag)?)
                .map_err(|_| unsound("authentication failed"))?;
            let same = match opened.split_first() {
                Some((&FLAG_RAW, payload)) => payload == plaintext,
                Some((&FLAG_ZSTD, frame)) => decompresses_to(frame, plaintext),
                _ => false,
            };
            if same { Ok(()) } else { Err(unsound("different bytes")) }
        })
    }

    /// Authenticate, decrypt and decompress a sealed object of `kind` named `id`.
    pub fn open(&self, kind: ObjectKind, id: &Id, sealed: &[u8]) -> Result<Vec<u8>> {
        let what = || format!("{} {}", kind.name(), id.short());
        if sealed.len() < NONCE_LEN + TAG_LEN + 1 {
            return Err(Error::damaged(what(), "too short"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let ad = associated_data(kind, id);
        let mut body = ct.to_vec();
        self.cipher(kind)
            .decrypt_inout_detached(as_nonce(nonce)?, &ad, body.as_mut_slice().into(), as_tag(tag)?)
            .map_err(|_| Error::damaged(what(), "authentication failed"))?;
        match body.first() {
            Some(&FLAG_RAW) => {
                body.remove(0);
                Ok(body)
            }
            Some(&FLAG_ZSTD) => decompress(&body[1..]).map_err(|e| Error::damaged(what(), format!("zstd: {e}"))),
            _ => Err(Error::damaged(what(), "unknown compression flag")),
        }
    }
}

/// Whether compressing `data` is worth the time: a large blob is tried only
/// when two samples of it (a third and two thirds in) compress below 97%.
/// Random, encrypted or already compressed data then costs two small
/// attempts instead of a whole one. Redundancy farther apart than a sample
/// is missed in such data; chunk-level deduplication still finds repeats.
/// Samples whose bytes alone are skewed (text, code, logs: entropy coding
/// by itself saves an eighth) need no trial compression, which would cost a
/// tenth of the whole blob's; but not at negative levels, where zstd leaves
/// literals uncoded. Samples as even as random bytes are tried whole: only
/// repeats can pay there, and a repeat is found only within what is tried.
fn worth_compressing(data: &[u8], level: i32) -> bool {
    const SAMPLE: usize = 32 << 10;
    if data.len() < 8 * SAMPLE {
        return true;
    }
    let samples = [data.len() / 3, 2 * data.len() / 3].map(|at| &data[at..at + SAMPLE]);
    if level > 0 && bits_per_byte(&samples) < 7.0 {
        return true;
    }
    let mut out = Vec::with_capacity(2 * zstd::zstd_safe::compress_bound(SAMPLE));
    for sample in samples {
        if !compress_into(sample, &mut out, level) {
            return true;
        }
    }
    pays(out.len(), 2 * SAMPLE)
}

/// The order-0 entropy of `parts` taken together, in bits per byte: 8 for
/// random bytes, about 4.5 for English text. What entropy coding alone
/// (zstd's Huffman literals) gets near, with no repeats found at all.
fn bits_per_byte(parts: &[&[u8]]) -> f64 {
    // Four tables, so runs of one byte do not wait on one counter.
    let mut counts = [[0u32; 256]; 4];
    let mut total = 0usize;
    for part in parts {
        let mut quads = part.chunks_exact(4);
        for q in &mut quads {
            for (table, &b) in counts.iter_mut().zip(q) {
                table[usize::from(b)] += 1;
            }
        }
        for &b in quads.remainder() {
            counts[0][usize::from(b)] += 1;
        }
        total += part.len();
    }
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    let sum_c_log_c: f64 = (0..256)
        .map(|b| counts.iter().map(|t| f64::from(t[b])).sum::<f64>())
        .filter(|&c| c > 0.0)
        .map(|c| c * c.log2())
        .sum();
    n.log2() - sum_c_log_c / n
}

/// Whether compressing `raw` bytes to `compressed` is worth keeping: it
/// saves at least 3%.
fn pays(compressed: usize, raw: usize) -> bool {
    compressed * 100 < raw * 97
}

/// Whether a small file's bytes look incompressible (random, encrypted or
/// already compressed): up to 4 KiB from its middle, at zstd's fastest
/// level, save under 3%. The backup stores such a file as a blob of its
/// own instead of in its directory's shared one, where it would gain nothing
/// and would keep the whole shared blob alive after it changes. Uses a
/// context of its own level: call it from threads that do not seal.
pub fn compresses_poorly(data: &[u8]) -> bool {
    const SAMPLE: usize = 4 << 10;
    let len = data.len().min(SAMPLE);
    let at = (data.len() - len) / 2;
    let sample = &data[at..at + len];
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(len));
    compress_into(sample, &mut out, 1) && !pays(out.len(), len)
}

/// A thread's zstd contexts: costly to create, so each thread keeps one.
#[derive(Default)]
struct ZstdContexts {
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

thread_local! {
    static ZSTD: std::cell::RefCell<ZstdContexts> = std::cell::RefCell::new(ZstdContexts::default());
}

/// Largest plaintext a stored object may claim to have (a defence against a
/// forged frame header making us allocate without bound).
const MAX_PLAINTEXT: u64 = 1 << 30;

/// Append the zstd compression of `data` to `out`; false if zstd failed.
fn compress_into(data: &[u8], out: &mut Vec<u8>, level: i32) -> bool {
    ZSTD.with(|z| {
        let mut z = z.borrow_mut();
        if z.compressor.as_ref().is_none_or(|(l, _)| *l != level) {
            z.compressor = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        let Some((_, c)) = z.compressor.as_mut() else { return false };
        let start = out.len();
        out.resize(start + zstd::zstd_safe::compress_bound(data.len()), 0);
        match c.compress_to_buffer(data, &mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                true
            }
            Err(_) => false,
        }
    })
}

fn decompress(frame: &[u8]) -> std::io::Result<Vec<u8>> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= MAX_PLAINTEXT => n as usize,
        _ => return decompress_capped(frame),
    };
    with_decompressor(|d| d.decompress(frame, size))
}

/// `f` with this thread's zstd decompressor, made on first use.
fn with_decompressor<R>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<R>,
) -> std::io::Result<R> {
    ZSTD.with_borrow_mut(|z| match &mut z.decompressor {
        Some(d) => f(d),
        empty => f(empty.insert(zstd::bulk::Decompressor::new()?)),
    })
}

/// `f` over the first `len` bytes of a buffer this thread keeps in `cell`,
/// so a blob's proof allocates nothing; a buffer grown past 16 MiB by a
/// rare huge blob is let go afterwards.
fn with_thread_buffer<R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<u8>>>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    cell.with_borrow_mut(|buffer| {
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        let result = f(&mut buffer[..len]);
        if buffer.capacity() > 16 << 20 {
            *buffer = Vec::new();
        }
        result
    })
}

/// Whether `frame` declares `expected`'s size and decompresses to exactly
/// its bytes: into a buffer this thread keeps, so proving a blob allocates
/// nothing.
fn decompresses_to(frame: &[u8], expected: &[u8]) -> bool {
    thread_local! {
        static BACK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if zstd::zstd_safe::get_frame_content_size(frame).ok().flatten() != Some(expected.len() as u64) {
        return false;
    }
    with_thread_buffer(&BACK, expected.len(), |into| {
        with_decompressor(|d| d.decompress_to_buffer(frame, &mut *into)).is_ok_and(|n| n == expected.len())
            && *into == *expected
    })
}

/// A frame that does not declare its size (holdfast's own always do):
/// stream it, but never past [`MAX_PLAINTEXT`] (a small authentic object
/// must not unpack into gigabytes).
fn decompress_capped(frame: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(frame)?.take(MAX_PLAINTEXT + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_PLAINTEXT {
        return Err(std::io::Error::other("decompresses to more than an object may hold"));
    }
    Ok(out)
}

fn associated_data(kind: ObjectKind, id: &Id) -> [u8; 42] {
    let mut ad = [0u8; 42];
    ad[..8].copy_from_slice(AD_MAGIC);
    ad[8] = FORMAT_VERSION;
    ad[9] = kind as u8;
    ad[10..].copy_from_slice(&id.0);
    ad
}

/// A nonce from bytes split off at [`NONCE_LEN`] (an error, never a panic,
/// should a length ever disagree).
fn as_nonce(bytes: &[u8]) -> Result<&XNonce> {
    bytes.try_into().map_err(|_| Error::Invalid(format!("a nonce of {} bytes", bytes.len())))
}

/// A tag from bytes split off at [`TAG_LEN`].
fn as_tag(bytes: &[u8]) -> Result<&Tag> {
    bytes.try_into().map_err(|_| Error::Invalid(format!("a tag of {} bytes", bytes.len())))
}

/// Wrap the master key with a key derived from a passphrase (see `keyfile`).
pub(crate) fn wrap_key(wrapping: &[u8; 32], repo_id: &Id, master: &MasterKey) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(wrapping.into());
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let ad = associated_data(ObjectKind::MasterKey, repo_id);
    let ct = cipher
        .encrypt(as_nonce(&nonce)?, Payload { msg: &master.0, aad: &ad })
        .map_err(|_| Error::Invalid("encryption failed".into()))?;
    Ok([nonce.as_slice(), &ct].concat())
}

/// Unwrap a master key; `None` when the wrapping key (the passphrase) is wrong.
pub(crate) fn unwrap_key(wrapping: &[u8; 32], repo_id: &Id, sealed: &[u8]) -> Option<MasterKey> {
    if sealed.len() != NONCE_LEN + 32 + TAG_LEN {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(wrapping.into());
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let ad = associated_data(ObjectKind::MasterKey, repo_id);
    let key = cipher.decrypt(as_nonce(nonce).ok()?, Payload { msg: ct, aad: &ad }).ok()?;
    Some(MasterKey(key.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::derive(&MasterKey([7; 32]))
    }

    #[test]
    fn a_small_files_compressibility_is_judged_from_its_middle() {
        let mut random = vec![0u8; 20 << 10];
        fill_random(&mut random).expect("randomness");
        assert!(compresses_poorly(&random));
        assert!(compresses_poorly(&random[..100]), "short and random");
        assert!(!compresses_poorly(&b"a line of a log file, again\n".repeat(500)));
        assert!(!compresses_poorly(&[0u8; 5000]));
        // A compressible header (an image's metadata) before random data.
        let mut image = b"Exif header text ".repeat(100);
        image.extend_from_slice(&random);
        assert!(compresses_poorly(&image));
        // An empty sample has nothing to judge and nothing to gain.
        assert!(compresses_poorly(&[]));
    }

    #[test]
    fn incompressible_blobs_are_stored_raw_without_a_full_attempt_and_others_compressed() {
        let k = keys();
        let mut random = vec![0u8; 512 << 10];
        fill_random(&mut random).expect("randomness");
        assert!(!worth_compressing(&random, 3));
        assert!(bits_per_byte(&[&random]) > 7.9);
        // Random bytes, but one block of them over and over (up to a
        // sample's length apart): tried, and compressed.
        for period in [4096, 16384, 30000] {
            let repeated = random[..period].repeat((512 << 10) / period + 1);
            assert!(bits_per_byte(&[&repeated]) > 7.9);
            assert!(worth_compressing(&repeated, 3), "period {period}");
            let sealed = k.seal(ObjectKind::Chunk, &k.blob_id(&repeated), &repeated, 3).expect("seal");
            assert!(sealed.len() < repeated.len() / 5, "period {period} compressed: {}", sealed.len());
        }
        let sealed = k.seal(ObjectKind::Chunk, &k.blob_id(&random), &random, 3).expect("seal");
        assert_eq!(sealed.len(), random.len() + SEAL_OVERHEAD, "stored raw");
        assert_eq!(k.open(ObjectKind::Chunk, &k.blob_id(&random), &sealed).expect("open"), random);

        // Mostly random, but with text in the sampled places: still tried.
        let mut mixed = random.clone();
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(40_000);
        let (from, to) = (mixed.len() / 4, mixed.len() * 3 / 4);
        mixed[from..to].copy_from_slice(&text[..to - from]);
        assert!(worth_compressing(&mixed, 3));
        assert!(bits_per_byte(&[&text[..4096], &text[9..99]]) < 5.0, "text needs no trial");
        assert!(bits_per_byte(&[&[7u8; 1000]]).abs() < 0.01, "one byte value");
        // Random letters of a 64-symbol alphabet (as base64 of random data):
        // skewed bytes pay through entropy coding, which negative levels
        // leave out, so there they are tried first.
        let letters: Vec<u8> = random
            .iter()
            .map(|b| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[usize::from(b % 64)])
            .collect();
        assert!(worth_compressing(&letters, 3));
        assert!(!worth_compressing(&letters, -7));
        assert_eq!(bits_per_byte(&[]), 0.0);
        let sealed = k.seal(ObjectKind::Chunk, &k.blob_id(&mixed), &mixed, 3).expect("seal");
        assert!(sealed.len() < mixed.len() * 6 / 10, "compressed: {}", sealed.len());
        assert_eq!(k.open(ObjectKind::Chunk, &k.blob_id(&mixed), &sealed).expect("open"), mixed);
    }

    #[test]
    fn sealed_objects_round_trip_and_bind_kind_and_id() {
        let k = keys();
        let data = b"hello hello hello hello hello hello hello".repeat(10);
        let id = k.blob_id(&data);
        let sealed = k.seal(ObjectKind::Chunk, &id, &data, 3).unwrap();
        assert!(sealed.len() < data.len(), "compressible data is compressed");
        assert_eq!(k.open(ObjectKind::Chunk, &id, &sealed).unwrap(), data);
        assert!(k.open(ObjectKind::Tree, &id, &sealed).is_err(), "kind is bound");
        assert!(k.open(ObjectKind::Chunk, &Id::ZERO, &sealed).is_err(), "id is bound");
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(k.open(ObjectKind::Chunk, &id, &flipped).is_err());
    }

    #[test]
    fn a_sealed_blob_is_proven_only_against_the_bytes_it_holds() {
        let k = keys();
        let mut random = vec![0u8; 300 << 10];
        fill_random(&mut random).expect("randomness");
        let text = b"a row of a table, and another row of a table; ".repeat(5000);
        for data in [&random, &text] {
            let id = k.blob_id(data);
            let (sealed, tag) = k.seal_with_tag(ObjectKind::Chunk, &id, data, 3).expect("seal");
            k.prove_sealed(ObjectKind::Chunk, &id, data, &sealed, &tag).expect("the sealed blob is proven");
            assert_eq!(k.open(ObjectKind::Chunk, &id, &sealed).expect("opens"), *data);
            assert_eq!(
                k.open(ObjectKind::Chunk, &id, &k.seal_proven(ObjectKind::Chunk, &id, data, 3).expect("sealed"))
                    .expect("opens"),
                *data
            );
            // A bit flipped anywhere after sealing (nonce, flag, body, tag) is caught.
            for at in [3, NONCE_LEN, NONCE_LEN + 1, sealed.len() / 2, sealed.len() - TAG_LEN - 1, sealed.len() - 1] {
                let mut flipped = sealed.clone();
                flipped[at] ^= 0x10;
                assert!(k.prove_sealed(ObjectKind::Chunk, &id, data, &flipped, &tag).is_err(), "flip at {at}");
            }
            // Sealed bytes that open, but to other data: caught too.
            let mut other = data.clone();
            other[1000] ^= 1;
            let (wrong, wrong_tag) = k.seal_with_tag(ObjectKind::Chunk, &id, &other, 3).expect("seal");
            let err = k.prove_sealed(ObjectKind::Chunk, &id, data, &wrong, &wrong_tag).expect_err("other bytes");
            assert!(err.to_string().contains("nothing was written"), "{err}");
            assert!(k.prove_sealed(ObjectKind::Tree, &id, data, &sealed, &tag).is_err(), "the key is the kind's");
            // A tag miscomputed (in both places it is kept), or over another
            // id's associated data: the blob would never open, so it is caught.
            let mut bad_tag = tag;
            bad_tag[5] ^= 4;
            let mut mistagged = sealed.clone();
            let at = mistagged.len() - TAG_LEN;
            mistagged[at..].copy_from_slice(&bad_tag);
            assert!(k.prove_sealed(ObjectKind::Chunk, &id, data, &mistagged, &bad_tag).is_err(), "a wrong tag");
            assert!(k.prove_sealed(ObjectKind::Chunk, &Id::ZERO, data, &sealed, &tag).is_err(), "another id's");
            assert!(k.prove_sealed(ObjectKind::Chunk, &id, data, &sealed[..SEAL_OVERHEAD - 1], &tag).is_err());
            assert!(k.prove_sealed(ObjectKind::Chunk, &id, data, &sealed[..sealed.len() - 1], &tag).is_err());
        }
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let k = keys();
        let mut data = vec![0u8; 4096];
        fill_random(&mut data).unwrap();
        let sealed = k.seal(ObjectKind::Chunk, &Id::ZERO, &data, 3).unwrap();
        assert_eq!(sealed.len(), data.len() + SEAL_OVERHEAD);
    }

    #[test]
    fn ids_are_keyed() {
        let a = Keys::derive(&MasterKey([1; 32]));
        let b = Keys::derive(&MasterKey([2; 32]));
        assert_ne!(a.blob_id(b"same"), b.blob_id(b"same"));
        assert_ne!(a.chunker_seed(), b.chunker_seed());
    }
}
