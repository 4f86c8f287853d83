//! Snapshots: the record of one backup, written last.
//!
//! A snapshot names the root tree and says when, where and what was backed up,
//! with the figures of the run. It is stored as a sealed JSON object in
//! `snapshots/`, named by the hash of its bytes; its id is that name. The
//! engine stores whatever a caller puts in `extra` (the job runner records
//! dumps and hooks there) without interpreting it.

use serde::{Deserialize, Serialize};

use crate::engine::crypto::Id;

/// A backed-up path as a snapshot's `paths` hold it: as it is when it is
/// UTF-8 without a backslash, else escaped (`\xff`, `\\`), so that two
/// different paths are never one text (one timeline each for prune, one
/// match each for `--path`): only escaped texts hold a backslash.
pub fn path_text(path: &std::path::Path) -> String {
    match path.to_str() {
        Some(text) if !text.contains('\\') => text.to_string(),
        _ => crate::units::escape_text(path.as_os_str().as_encoded_bytes()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub time: jiff::Timestamp,
    pub host: String,
    pub tags: Vec<String>,
    /// The top-level paths, as they appear inside the snapshot.
    pub paths: Vec<String>,
    pub root: Id,
    /// The snapshot whose file list this one reused for unchanged files.
    pub parent: Option<Id>,
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
    /// Written by `repair snapshots`: the damaged snapshot this one
    /// replaces, and what could not be carried over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repaired: Option<Repaired>,
}

/// What `repair snapshots` recorded in a repaired snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repaired {
    /// The damaged snapshot (kept until the user forgets it).
    pub from: Id,
    /// Paths that could not be read and were left out.
    pub lost: Vec<String>,
}

/// Figures of the run that made a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub other: u64,
    /// Apparent size of all files.
    pub bytes: u64,
    /// Bytes read from files that changed since the parent.
    pub bytes_read: u64,
    pub files_unchanged: u64,
    pub blobs_added: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_new: u64,
    /// Bytes written to the repository (sealed, compressed).
    pub bytes_added: u64,
    pub duration_secs: f64,
    pub warnings: Vec<String>,
    /// Something was not backed up as it was (see `warnings`): files left
    /// out because they could not be read, files changed while read.
    #[serde(default)]
    pub incomplete: bool,
    /// Files left out of the snapshot because they could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// What the selection left out, with why (mount points, pseudo file
    /// systems, caches, holdfast's own directories, no-dump files); pattern
    /// matches are not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// Entries that carry extended attributes (ACLs among them); `None` in
    /// snapshots made before they were counted. A mount of snapshots that
    /// all have none tells the kernel so, which spares every file copied
    /// out of it its xattr round trips.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_with_xattrs: Option<u64>,
}

#[cfg(test)]
impl Snapshot {
    /// A snapshot of `host` with nothing in it, dated the epoch: for tests
    /// to fill in what they look at.
    pub(crate) fn blank(host: &str) -> Snapshot {
        Snapshot {
            time: jiff::Timestamp::UNIX_EPOCH,
            host: host.into(),
            tags: Vec::new(),
            paths: Vec::new(),
            root: Id::ZERO,
            parent: None,
            summary: Summary::default(),
            extra: None,
            repaired: None,
        }
    }
}

impl Snapshot {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}
