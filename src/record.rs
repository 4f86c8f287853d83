//! The run record: what a job's run writes into its snapshot (the
//! snapshot's `extra`), so restore, verify, prune, status and `snapshots`
//! can read a job's snapshots without the runner. Versioned: a record from
//! a newer holdfast is refused, not misread.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{DatabaseKind, Phase};
use crate::engine::snapshot::Snapshot;

/// The record version this holdfast writes and understands.
pub const RECORD_VERSION: u32 = 1;

/// Where dumps appear inside a snapshot.
pub const SNAPSHOT_PREFIX: &str = "/.holdfast/databases";

/// What a job run records in its snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// Records written before the field existed are version 1.
    #[serde(default = "first_version")]
    pub version: u32,
    pub job: String,
    pub run_id: String,
    pub databases: Vec<DumpRecord>,
    pub file_sets: Vec<FileSetRecord>,
    pub hooks: Vec<HookRecord>,
}

fn first_version() -> u32 {
    1
}

impl RunRecord {
    /// The record a job's run left in `snapshot`, if a job made it (and a
    /// holdfast that writes records this one understands).
    pub fn of(snapshot: &Snapshot) -> Option<RunRecord> {
        let record: RunRecord = serde_json::from_value(snapshot.extra.clone()?).ok()?;
        (record.version <= RECORD_VERSION).then_some(record)
    }
}

/// One file set of the job, as captured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSetRecord {
    pub paths: Vec<PathBuf>,
    pub capture_started: jiff::Timestamp,
    pub capture_finished: jiff::Timestamp,
}

/// What one dump produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpRecord {
    pub entry: String,
    pub kind: DatabaseKind,
    /// The database's name (for SQLite, the file's path).
    pub name: String,
    /// The dump's path inside the snapshot.
    pub file: String,
    pub tool: String,
    pub tool_version: String,
    pub server_version: Option<String>,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    pub size: u64,
    /// PostgreSQL: the database's owner when it was dumped, whom a load
    /// gives it back to (absent in snapshots made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl DumpRecord {
    /// Whether it holds a server's roles and tablespaces (`pg_dumpall
    /// --globals-only`), not a database: such a dump cannot be loaded into a
    /// scratch database (the roles exist on the server already).
    pub fn is_server_globals(&self) -> bool {
        self.tool == "pg_dumpall"
    }
}

/// What a hook did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookRecord {
    pub phase: Phase,
    pub command: String,
    /// Exit status; `None` when it was killed or could not start.
    pub exit_status: Option<i32>,
    pub duration_secs: f64,
    pub ok: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_with(extra: serde_json::Value) -> Snapshot {
        Snapshot { extra: Some(extra), ..Snapshot::blank("h") }
    }

    #[test]
    fn a_record_without_a_version_is_version_one_and_a_newer_one_is_not_read() {
        let old = serde_json::json!({"job": "shop", "run_id": "r", "databases": [], "file_sets": [], "hooks": []});
        let r = RunRecord::of(&snapshot_with(old.clone())).expect("an old record reads");
        assert_eq!((r.version, r.job.as_str()), (1, "shop"));
        let mut newer = old;
        newer["version"] = serde_json::json!(RECORD_VERSION + 1);
        assert!(RunRecord::of(&snapshot_with(newer)).is_none());
    }
}
