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

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::engine::backend::{LocalBackend, PACKS, TempFile};
use crate::engine::crypto::{FORMAT_VERSION, Id, Keys, ObjectKind};
use crate::error::{Error, IoContext, Result};

const TRAILER_MAGIC: &[u8; 4] = b"HFPK";
const TRAILER_LEN: usize = 4 + 4 + 1;

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

/// A pack being written under `tmp/`.
pub struct PackWriter {
    temp: TempFile,
    file_hash: blake3::Hasher,
    data_hash: blake3::Hasher,
    offset: u64,
    blobs: Vec<PackBlob>,
}

impl PackWriter {
    pub fn new(backend: &LocalBackend) -> Result<PackWriter> {
        Ok(PackWriter {
            temp: backend.temp_file()?,
            file_hash: blake3::Hasher::new(),
            data_hash: blake3::Hasher::new(),
            offset: 0,
            blobs: Vec::new(),
        })
    }

    /// Append one sealed blob.
    pub fn add(&mut self, id: Id, kind: ObjectKind, sealed: &[u8], raw_length: usize) -> Result<()> {
        self.temp.file.write_all(sealed).at(&self.temp.path)?;
        self.file_hash.update(sealed);
        self.data_hash.update(sealed);
        self.blobs.push(PackBlob {
            id,
            kind,
            offset: self.offset as u32,
            length: sealed.len() as u32,
            raw_length: raw_length as u32,
        });
        self.offset += sealed.len() as u64;
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Write the header, make the pack durable and give it its name.
    pub fn finish(mut self, backend: &LocalBackend, keys: &Keys) -> Result<(Id, Vec<PackBlob>)> {
        let header = postcard::to_stdvec(&self.blobs).map_err(|e| Error::Invalid(e.to_string()))?;
        let data_id = Id(*self.data_hash.finalize().as_bytes());
        let sealed = keys.seal(ObjectKind::PackHeader, &data_id, &header, 3)?;
        let mut tail = sealed;
        tail.extend_from_slice(&((tail.len()) as u32).to_le_bytes());
        tail.extend_from_slice(TRAILER_MAGIC);
        tail.push(FORMAT_VERSION);
        self.temp.file.write_all(&tail).at(&self.temp.path)?;
        self.file_hash.update(&tail);
        let id = Id(*self.file_hash.finalize().as_bytes());
        backend.commit(self.temp, PACKS, &id.to_hex())?;
        Ok((id, self.blobs))
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
            let dir = tempfile::tempdir().unwrap();
            let backend = LocalBackend::new(dir.path());
            backend.create_layout().unwrap();
            let keys = Keys::derive(&MasterKey([4; 32]));
            let mut w = PackWriter::new(&backend).unwrap();
            for b in &blobs {
                let id = keys.blob_id(b);
                w.add(id, ObjectKind::Chunk, &keys.seal(ObjectKind::Chunk, &id, b, 3).unwrap(), b.len()).unwrap();
            }
            let (name, written) = w.finish(&backend, &keys).unwrap();
            let bytes = backend.read(PACKS, &name.to_hex()).unwrap();
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
