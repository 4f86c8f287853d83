//! Key files: the master key wrapped under a passphrase.
//!
//! A key file holds the repository's master key encrypted with a key derived
//! from a passphrase by argon2id (its parameters and salt stored alongside).
//! A repository may have several key files (one per passphrase); any of them
//! unlocks it. Key files are the one thing whose loss loses every backup, so
//! they can be exported as a file or as a paper form with a checksum per line,
//! and imported into a repository whose `keys/` was lost.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::engine::crypto::{Id, MasterKey, fill_random, unwrap_key, wrap_key};
use crate::error::{Error, Result};

/// argon2id cost: 64 MiB, 2 passes, 1 lane: above OWASP's recommendation
/// (19 MiB, 2 passes) at about 0.1 s, because every command that opens the
/// repository pays it (one lane: the argon2 crate computes lanes sequentially).
/// The parameters are stored in each key file, so they can grow later.
const DEFAULT_M_KIB: u32 = 64 * 1024;
const DEFAULT_T: u32 = 2;
const DEFAULT_P: u32 = 1;
/// The most a key file may ask for: 1 GiB, 8 passes, 16 lanes (64 times
/// today's cost; a key file planted in the repository can cost a command a
/// few seconds, not the machine's memory).
const MAX_M_KIB: u32 = 1 << 20;
const MAX_T: u32 = 8;
const MAX_P: u32 = 16;

/// The serialised key file (JSON; it contains no secret in the clear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub holdfast_key: u8,
    pub repository: String,
    pub kdf: KdfParams,
    /// The master key, sealed with XChaCha20-Poly1305 under the derived key (hex).
    pub wrapped: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: String,
}

impl KeyFile {
    /// Wrap `master` under `passphrase` for the repository `repo_id`.
    pub fn create(passphrase: &[u8], repo_id: &Id, master: &MasterKey) -> Result<KeyFile> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt)?;
        let kdf = KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: DEFAULT_M_KIB,
            iterations: DEFAULT_T,
            parallelism: DEFAULT_P,
            salt: hex::encode(salt),
        };
        let wrapping = derive_wrapping_key(passphrase, &kdf)?;
        Ok(KeyFile {
            holdfast_key: 1,
            repository: repo_id.to_hex(),
            kdf,
            wrapped: hex::encode(wrap_key(&wrapping, repo_id, master)?),
        })
    }

    /// The repository id this key file belongs to.
    pub fn repo_id(&self) -> Result<Id> {
        Id::from_hex(&self.repository).ok_or_else(|| Error::damaged("key file", "bad repository id"))
    }

    /// The master key, or `None` when the passphrase is wrong.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<Option<MasterKey>> {
        let wrapping = derive_wrapping_key(passphrase, &self.kdf)?;
        let sealed = hex::decode(&self.wrapped).map_err(|e| Error::damaged("key file", e))?;
        Ok(unwrap_key(&wrapping, &self.repo_id()?, &sealed))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<KeyFile> {
        serde_json::from_slice(bytes).map_err(|e| Error::damaged("key file", e))
    }

    /// A printable form: the key file's fields in hex, 16 bytes a line, each
    /// line with a checksum so a typing mistake is found at its line.
    pub fn to_paper(&self) -> Result<String> {
        // The paper form has room for argon2id and a salt of up to 255
        // bytes; anything else would read back as another key.
        if self.kdf.algorithm != "argon2id" {
            return Err(Error::damaged("key file", format!("unknown KDF {:?}", self.kdf.algorithm)));
        }
        let mut bin = Vec::new();
        bin.push(self.holdfast_key);
        bin.extend_from_slice(&self.repo_id()?.0);
        for v in [self.kdf.memory_kib, self.kdf.iterations, self.kdf.parallelism] {
            bin.extend_from_slice(&v.to_le_bytes());
        }
        let salt = hex::decode(&self.kdf.salt).map_err(|e| Error::damaged("key file", e))?;
        let wrapped = hex::decode(&self.wrapped).map_err(|e| Error::damaged("key file", e))?;
        let salt_len =
            u8::try_from(salt.len()).map_err(|_| Error::damaged("key file", "salt longer than 255 bytes"))?;
        bin.push(salt_len);
        bin.extend_from_slice(&salt);
        bin.extend_from_slice(&wrapped);
        let mut out = String::from(
            "holdfast paper key, format 1\n\
             Keep this with the passphrase apart from the backups. To restore it:\n\
             holdfast key import --repo DIR FILE (type the lines into FILE).\n\n",
        );
        out.push_str(&format!("repository {}\n", self.repository));
        for (n, line) in bin.chunks(16).enumerate() {
            let groups: Vec<String> = line.chunks(4).map(hex::encode).collect();
            out.push_str(&format!("{:02}: {} | {}\n", n + 1, groups.join(" "), line_checksum(n, line)));
        }
        out.push_str(&format!("end {}\n", hex::encode(&blake3::hash(&bin).as_bytes()[..4])));
        Ok(out)
    }

    /// Parse the paper form back, naming the first line that does not check.
    pub fn from_paper(text: &str) -> Result<KeyFile> {
        let bad = |what: String| Error::Invalid(format!("paper key: {what}"));
        let mut bin = Vec::new();
        let mut end = None;
        for (lineno, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if let Some(sum) = line.strip_prefix("end ") {
                end = Some(sum.trim().to_string());
                break;
            }
            let Some((num, rest)) = line.split_once(':') else {
                continue;
            };
            let Ok(n) = num.trim().parse::<usize>() else {
                continue;
            };
            let (hexpart, sum) =
                rest.split_once('|').ok_or_else(|| bad(format!("line {}: no checksum after '|'", lineno + 1)))?;
            let bytes = hex::decode(hexpart.split_whitespace().collect::<String>())
                .map_err(|e| bad(format!("line {}: {e}", lineno + 1)))?;
            if n != bin.len() / 16 + 1 || line_checksum(n - 1, &bytes) != sum.trim() {
                return Err(bad(format!("line {} (numbered {n:02}) does not match its checksum", lineno + 1)));
            }
            bin.extend_from_slice(&bytes);
        }
        let end = end.ok_or_else(|| bad("no 'end' line".into()))?;
        if hex::encode(&blake3::hash(&bin).as_bytes()[..4]) != end {
            return Err(bad("lines are missing or out of order (the 'end' checksum differs)".into()));
        }
        let take = |bin: &mut &[u8], n: usize| -> Result<Vec<u8>> {
            if bin.len() < n {
                return Err(bad("too short".into()));
            }
            let (a, b) = bin.split_at(n);
            *bin = b;
            Ok(a.to_vec())
        };
        let mut rest: &[u8] = &bin;
        let version = take(&mut rest, 1)?[0];
        let repo = take(&mut rest, 32)?;
        let mut num = || -> Result<u32> { Ok(u32::from_le_bytes(take(&mut rest, 4)?.try_into().unwrap_or_default())) };
        let (m, t, p) = (num()?, num()?, num()?);
        let salt_len = take(&mut rest, 1)?[0] as usize;
        let salt = take(&mut rest, salt_len)?;
        Ok(KeyFile {
            holdfast_key: version,
            repository: hex::encode(repo),
            kdf: KdfParams {
                algorithm: "argon2id".into(),
                memory_kib: m,
                iterations: t,
                parallelism: p,
                salt: hex::encode(salt),
            },
            wrapped: hex::encode(rest),
        })
    }
}

fn line_checksum(n: usize, bytes: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&(n as u64).to_le_bytes());
    h.update(bytes);
    hex::encode(&h.finalize().as_bytes()[..2])
}

fn derive_wrapping_key(passphrase: &[u8], kdf: &KdfParams) -> Result<[u8; 32]> {
    if kdf.algorithm != "argon2id" {
        return Err(Error::damaged("key file", format!("unknown KDF {:?}", kdf.algorithm)));
    }
    // A key file comes from the repository's storage: its costs are bounded
    // so a planted one cannot make `open` take all memory or hours.
    if kdf.memory_kib > MAX_M_KIB || kdf.iterations > MAX_T || kdf.parallelism > MAX_P {
        return Err(Error::damaged(
            "key file",
            format!(
                "argon2 parameters out of bounds (memory {} KiB, {} passes, {} lanes)",
                kdf.memory_kib, kdf.iterations, kdf.parallelism
            ),
        ));
    }
    let salt = hex::decode(&kdf.salt).map_err(|e| Error::damaged("key file", e))?;
    let params = Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| Error::damaged("key file", format!("argon2 parameters: {e}")))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, &salt, &mut out)
        .map_err(|e| Error::damaged("key file", format!("argon2: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_unlocks_with_its_passphrase_only() {
        let repo = Id([3; 32]);
        let master = MasterKey([9; 32]);
        let kf = KeyFile::create(b"right", &repo, &master).unwrap();
        assert_eq!(kf.unlock(b"right").unwrap().unwrap().0, master.0);
        assert!(kf.unlock(b"wrong").unwrap().is_none());
        assert!(!kf.to_json().contains(&hex::encode(master.0)));
    }

    #[test]
    fn the_paper_form_round_trips_and_catches_typos() {
        let kf = KeyFile::create(b"pw", &Id([5; 32]), &MasterKey([1; 32])).unwrap();
        let paper = kf.to_paper().unwrap();
        assert_eq!(KeyFile::from_paper(&paper).unwrap(), kf);
        let typo = paper.replacen("01: ", "01: f", 1).replacen(" | ", " |", 1);
        let mut lines: Vec<String> = paper.lines().map(String::from).collect();
        let i = lines.iter().position(|l| l.starts_with("03:")).unwrap();
        let c = if lines[i].as_bytes()[4] == b'0' { "1" } else { "0" };
        lines[i].replace_range(4..5, c);
        let err = KeyFile::from_paper(&lines.join("\n")).unwrap_err().to_string();
        assert!(err.contains("numbered 03"), "{err}");
        assert!(KeyFile::from_paper(&typo).is_err());
    }
}
