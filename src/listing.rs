//! What `ls` shows: a snapshot's entries (below a path), one line each,
//! with the exact bytes of names that are not UTF-8.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::engine::repository::Repository;
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::{Entry, EntryKind};
use crate::units::local_time;

/// One entry of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// The path as text (invalid UTF-8 replaced: see `path_base64`).
    pub path: String,
    /// The path's exact bytes, when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_base64: Option<String>,
    #[serde(skip)]
    pub path_bytes: Vec<u8>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: u32,
    /// `drwxr-xr-x`, as `ls -l` shows it.
    #[serde(skip)]
    pub mode_string: String,
    pub user: String,
    pub group: String,
    pub size: u64,
    pub mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub changed_while_read: bool,
}

/// Every entry of `snap` (only `under` and what is below it, when given),
/// sorted by path; an error when `under` is not in the snapshot.
pub fn list(repo: &Repository, snap: &Snapshot, under: Option<&Path>) -> Result<Vec<ListEntry>> {
    let (index, _) = repo.load_index()?;
    let mut out = Vec::new();
    let under = under.map(|p| Path::new("/").join(p));
    repo.walk_trees(&index, vec![(snap.root, PathBuf::from("/"))], |_, tree, dir| {
        let mut subdirs = Vec::new();
        for e in &tree.entries {
            use std::os::unix::ffi::OsStrExt;
            let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            let wanted = under.as_ref().is_none_or(|u| path.starts_with(u));
            let leads_there = under.as_ref().is_some_and(|u| u.starts_with(&path));
            if let EntryKind::Dir { tree } = &e.kind
                && (wanted || leads_there)
            {
                subdirs.push((*tree, path.clone()));
            }
            if wanted {
                out.push(ListEntry::new(&path, e));
            }
        }
        Ok(subdirs)
    })?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    if out.is_empty()
        && let Some(u) = &under
    {
        bail!("{} is not in the snapshot", u.display());
    }
    Ok(out)
}

impl ListEntry {
    /// The entry `e` found at `path`.
    pub fn new(path: &Path, e: &Entry) -> ListEntry {
        use std::os::unix::ffi::OsStrExt;
        let kind = e.kind.name();
        let mut mode_string = String::from(e.kind.type_char());
        for (i, c) in "rwxrwxrwx".chars().enumerate() {
            mode_string.push(if e.meta.mode & (0o400 >> i) != 0 { c } else { '-' });
        }
        let mtime = jiff::Timestamp::new(e.meta.mtime.secs, e.meta.mtime.nanos as i32)
            .map(|t| local_time(&t))
            .unwrap_or_default();
        let path_bytes = path.as_os_str().as_bytes().to_vec();
        let target = match &e.kind {
            EntryKind::Symlink { target } => Some(target.as_slice()),
            _ => None,
        };
        ListEntry {
            path: path.to_string_lossy().into_owned(),
            path_base64: base64_unless_utf8(&path_bytes),
            path_bytes,
            kind,
            mode: e.meta.mode,
            mode_string,
            user: e.meta.user.clone().unwrap_or_else(|| e.meta.uid.to_string()),
            group: e.meta.group.clone().unwrap_or_else(|| e.meta.gid.to_string()),
            size: e.meta.size,
            mtime,
            link_target: target.map(|t| String::from_utf8_lossy(t).into_owned()),
            link_target_base64: target.and_then(base64_unless_utf8),
            changed_while_read: matches!(&e.kind, EntryKind::File(c) if c.changed_while_read),
        }
    }
}

/// Base64 of `bytes` when they are not valid UTF-8 (JSON carries text only).
pub fn base64_unless_utf8(bytes: &[u8]) -> Option<String> {
    use base64::Engine;
    std::str::from_utf8(bytes).is_err().then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
}
