//! The run journal: which `finally` hooks a run still owes.
//!
//! A run writes `<spool>/<job>/journal.json` (durably) before its first
//! hook, and removes it only after its `finally` hooks and spool cleanup ran.
//! If holdfast itself dies in between (kill -9, OOM, power loss), the journal
//! survives, and the next command for that job — `run`, or `recover` (which
//! a systemd unit calls from `ExecStopPost=`) — runs the owed `finally`
//! hooks with the dead run's variables and removes its spool directory, so an
//! application is never left in maintenance mode and no dump is left behind.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Job, Phase};
use crate::hooks::run_hook;
use crate::template::Vars;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub run_id: String,
    pub pid: u32,
    /// The run's template variables, for the owed hooks.
    pub vars: Vars,
    /// The run's spool directory, removed by recovery.
    pub run_dir: PathBuf,
}

fn path(job: &Job) -> PathBuf {
    job.spool.join(&job.name).join("journal.json")
}

impl Journal {
    /// Write the journal durably (temp file, fsync, rename, directory fsync).
    pub fn write(&self, job: &Job) -> Result<()> {
        let p = path(job);
        let dir = p.parent().unwrap_or(Path::new("."));
        let tmp = dir.join("journal.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
        Ok(())
    }

    /// The run is over: nothing is owed any more.
    pub fn clear(job: &Job) -> Result<()> {
        match std::fs::remove_file(path(job)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path(job).display()))
            }
            _ => Ok(()),
        }
    }

    pub fn read(job: &Job) -> Result<Option<Journal>> {
        match std::fs::read(path(job)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("reading {}", path(job).display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path(job).display())),
        }
    }
}

/// What recovery did, for the caller to report.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub run_id: String,
    pub pid: u32,
    pub hooks_run: usize,
    pub hooks_failed: usize,
}

/// Run the `finally` hooks a dead run of `job` owes, once. The caller must
/// hold the job's lock (so the run is really dead, not running).
pub fn recover(job: &Job) -> Result<Option<Recovery>> {
    let Some(journal) = Journal::read(job)? else { return Ok(None) };
    tracing::warn!(
        "job {}: run {} (pid {}) ended without finishing; running its owed finally hooks now",
        job.name,
        journal.run_id,
        journal.pid
    );
    let mut vars = journal.vars.clone();
    if vars.error.is_empty() {
        vars.error = "the run was killed before it finished".into();
    }
    let never = AtomicBool::new(false);
    let (mut run, mut failed) = (0, 0);
    for hook in job.hooks.iter().filter(|h| h.phase == Phase::Finally) {
        run += 1;
        if let Err((_, e)) = run_hook(hook, &vars, &never) {
            failed += 1;
            tracing::error!("job {}: owed finally hook failed: {e:#}", job.name);
        }
    }
    if journal.run_dir.starts_with(&job.spool) {
        let _ = std::fs::remove_dir_all(&journal.run_dir);
    }
    Journal::clear(job)?;
    Ok(Some(Recovery { run_id: journal.run_id, pid: journal.pid, hooks_run: run, hooks_failed: failed }))
}
