//! The protocol between backups and garbage collection: a backup registers
//! in `running/` for as long as it runs, reads the marks prune left, and may
//! adopt the packs an interrupted backup stored but never indexed; prune
//! reads who is running before it deletes anything (see `gc` for the rules).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::engine::backend::{Backend, MARKS, PACKS, RUNNING};
use crate::engine::crypto::Id;
use crate::engine::index::Index;
use crate::engine::pack::IndexedPack;
use crate::engine::repository::Repository;
use crate::error::{Error, Result};

/// A backup in progress, registered in `running/` until dropped.
pub struct Running {
    backend: std::sync::Arc<dyn Backend>,
    name: String,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Running({})", self.name)
    }
}

/// The companion of a `running/` record that says "finished", for
/// credentials that may not delete (put-only); prune removes both.
const FINISHED_SUFFIX: &str = ".done";

#[derive(Debug, Serialize, Deserialize)]
struct RunningRecord {
    host: String,
    pid: u32,
    started: jiff::Timestamp,
}

/// A finished backup takes its record away; where backups must not delete
/// (put-only credentials), it adds `<record>.done` and prune removes both.
impl Drop for Running {
    fn drop(&mut self) {
        if self.backend.put_only_backups() || self.backend.remove(RUNNING, &self.name).is_err() {
            let done = format!("{}{FINISHED_SUFFIX}", self.name);
            if let Err(e) = self.backend.put_new(RUNNING, &done, Vec::new()) {
                tracing::warn!("could not record the end of this backup in running/: {e}");
            }
        }
    }
}

/// Say "a backup is running" for as long as the returned guard lives.
pub fn register_backup(repo: &Repository) -> Result<Running> {
    let host = hostname();
    let name = format!("{host}-{}-{}", std::process::id(), Id::random()?.short());
    let rec = RunningRecord { host, pid: std::process::id(), started: jiff::Timestamp::now() };
    repo.backend().put_new(RUNNING, &name, serde_json::to_vec(&rec).unwrap_or_default())?;
    Ok(Running { backend: repo.shared_backend(), name })
}

/// Packs marked for deletion, by their marks' names alone: what a backup
/// needs (it reuses no blob of theirs), without reading each mark (after a
/// prune that repacked much, thousands of files; requests on a bucket).
pub fn marked_pack_ids(repo: &Repository) -> Result<HashSet<Id>> {
    Ok(repo.backend().list_names(MARKS)?.iter().filter_map(|name| Id::from_hex(name)).collect())
}

/// Packs marked for deletion, with when they were marked (`None` when a
/// mark's time does not read). A mark gone since the listing was removed
/// by a concurrent prune (its pack unmarked or deleted), so it is left out
/// rather than stamped again.
pub fn marked_packs(repo: &Repository) -> Result<HashMap<Id, Option<jiff::Timestamp>>> {
    let mut out = HashMap::new();
    for name in repo.backend().list_names(MARKS)? {
        let Some(id) = Id::from_hex(&name) else { continue };
        let when = match repo.backend().get(MARKS, &name) {
            Err(e) if e.is_not_found() => continue,
            read => read.ok().and_then(|b| String::from_utf8(b).ok()).and_then(|s| s.trim().parse().ok()),
        };
        out.insert(id, when);
    }
    Ok(out)
}

/// The oldest start among backups still running (records of finished
/// backups and of dead processes on this host are removed; other hosts'
/// records expire after two days).
pub(crate) fn oldest_running_backup(repo: &Repository) -> Result<Option<jiff::Timestamp>> {
    let mut oldest: Option<jiff::Timestamp> = None;
    for (name, state) in running_backups(repo, None)? {
        match state {
            RecordState::Live(started) => oldest = Some(oldest.map_or(started, |o| o.min(started))),
            RecordState::Finished => {
                let _ = repo.backend().remove(RUNNING, name.trim_end_matches(FINISHED_SUFFIX));
                let _ = repo.backend().remove(RUNNING, &name);
            }
            RecordState::Dead => {
                let _ = repo.backend().remove(RUNNING, &name);
            }
        }
    }
    Ok(oldest)
}

/// What a file in `running/` says.
enum RecordState {
    /// A backup still running, started then.
    Live(jiff::Timestamp),
    /// A `.done` companion: that backup ended.
    Finished,
    /// Its process is gone (this host), or it is older than two days
    /// (another host), or it is unreadable.
    Dead,
}

/// Every file in `running/` but `except` and what it says (records with a
/// `.done` companion are left out; the companion stands for both).
fn running_backups(repo: &Repository, except: Option<&Running>) -> Result<Vec<(String, RecordState)>> {
    let host = hostname();
    let now = jiff::Timestamp::now();
    let all: HashSet<String> = repo.backend().list_names(RUNNING)?.into_iter().collect();
    let mut out = Vec::new();
    for name in &all {
        if except.is_some_and(|me| me.name == *name) {
            continue;
        }
        if name.ends_with(FINISHED_SUFFIX) {
            out.push((name.clone(), RecordState::Finished));
            continue;
        }
        if all.contains(&format!("{name}{FINISHED_SUFFIX}")) {
            continue;
        }
        let rec = repo.backend().get(RUNNING, name).ok().and_then(|b| serde_json::from_slice::<RunningRecord>(&b).ok());
        let state = match rec {
            None => RecordState::Dead,
            Some(rec) if rec.host == host => {
                let pid = nix::unistd::Pid::from_raw(rec.pid as i32);
                if nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH) {
                    RecordState::Dead
                } else {
                    RecordState::Live(rec.started)
                }
            }
            Some(rec) if now.duration_since(rec.started) > jiff::SignedDuration::from_hours(48) => RecordState::Dead,
            Some(rec) => RecordState::Live(rec.started),
        };
        out.push((name.clone(), state));
    }
    Ok(out)
}

/// Leftovers younger than this are taken over by the next backup instead of
/// being stored again (see [`adopt_recent_leftovers`]); well inside
/// `LEFTOVER_MIN_AGE`, so prune never deletes a pack being adopted.
const ADOPT_MAX_AGE: jiff::SignedDuration = jiff::SignedDuration::from_secs(50 * 60);

/// Packs that an interrupted backup or copy stored but never indexed, made
/// in the last 50 minutes, read back and verified (only when no other backup
/// is running): a backup registered as
/// running lists them in its index instead of uploading their blobs again,
/// so a run killed mid-upload and started again re-sends only what is
/// missing. The listing is only a hint (a late listing just adopts less);
/// the index files stay the truth. Packs that fail verification are left
/// for prune. `me` is this backup's record, registered before `listed` was
/// read.
pub fn adopt_recent_leftovers(
    repo: &Repository,
    me: &Running,
    index: &Index,
    marked: &HashSet<Id>,
    listed: &[crate::engine::backend::FileInfo],
) -> Result<Vec<IndexedPack>> {
    let since = jiff::Timestamp::now() - ADOPT_MAX_AGE;
    let candidates: Vec<String> = listed
        .iter()
        .filter(|f| f.modified.is_some_and(|m| m > since))
        .filter_map(|f| Id::from_hex(&f.name).map(|id| (id, f.name.clone())))
        .filter(|(id, _)| !index.has_pack(id) && !marked.contains(id))
        .map(|(_, name)| name)
        .collect();
    // Another backup still running is uploading packs of its own: they are
    // not leftovers, and reading them would only cost transfer. Asked only
    // when there are candidates (usually there are none), and after the
    // listing: one that registered later cannot have uploaded what it holds.
    // One that finished since the index was read is missed, and its new
    // packs are read and indexed again: transfer, never a wrong index.
    if candidates.is_empty() || another_backup_running(repo, me)? {
        return Ok(Vec::new());
    }
    let read = |name: &String| -> Result<IndexedPack> {
        let id = Id::from_hex(name).ok_or_else(|| Error::damaged("pack", name))?;
        let bytes = repo.backend().get(PACKS, name)?;
        Ok(IndexedPack { pack: id, blobs: crate::engine::pack::read_header(&id, &bytes, repo.keys())? })
    };
    Ok(repo.read_many(candidates, repo.backend().parallelism(), read).into_iter().filter_map(|(_, r)| r.ok()).collect())
}

/// True when a backup other than `me` is registered and alive.
fn another_backup_running(repo: &Repository, me: &Running) -> Result<bool> {
    Ok(running_backups(repo, Some(me))?.iter().any(|(_, state)| matches!(state, RecordState::Live(_))))
}

/// This machine's host name (recorded in snapshots and `running/`).
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}
