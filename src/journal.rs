//! The run journal: which `finally` hooks a run still owes.
//!
//! A run writes `<spool>/<job>/journal.json` (durably) before its first
//! hook, records each `finally` hook as it starts and as it ends, and
//! removes the journal only after its `finally` hooks and spool cleanup ran.
//! If holdfast itself dies in between (kill -9, OOM, power loss), the journal
//! survives, and the next command for that job — `run`, or `recover` (which
//! a systemd unit calls from `ExecStopPost=`) — first ends the process groups
//! the dead run left running (hooks, dump tools: `process::end_leftovers`),
//! then runs the `finally` hooks that had not finished, with the dead run's
//! variables, and removes its spool directory, so an application is never
//! left in maintenance mode and no dump is left behind. A `finally` hook
//! that had finished is not run again; one that was running when holdfast
//! died "may have run" — it is ended and run again, and the report says so.

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
    /// `finally` hooks (indexes into the job's hooks) that started…
    #[serde(default)]
    pub finally_started: Vec<usize>,
    /// …and that finished (successfully or not).
    #[serde(default)]
    pub finally_done: Vec<usize>,
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
    /// Owed `finally` hooks that were run now…
    pub hooks_run: usize,
    /// …of which failed.
    pub hooks_failed: usize,
    /// Hooks the dead run had already finished (not run again).
    pub hooks_already_done: usize,
    /// Hooks that were running when holdfast died: they may have run (in
    /// part); they were run again.
    pub hooks_may_have_run: Vec<String>,
    /// Process groups the dead run left running, now ended.
    pub leftovers_ended: Vec<String>,
}

impl Recovery {
    /// One line for the log and `recover`'s output.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "run {} (pid {}) had not finished: ran {} owed finally hook(s), {} failed",
            self.run_id, self.pid, self.hooks_run, self.hooks_failed
        );
        if self.hooks_already_done > 0 {
            s.push_str(&format!("; {} had already run and were not run again", self.hooks_already_done));
        }
        if !self.hooks_may_have_run.is_empty() {
            s.push_str(&format!(
                "; {} may have run before (holdfast died while it ran) and ran again",
                self.hooks_may_have_run.join(", ")
            ));
        }
        if !self.leftovers_ended.is_empty() {
            s.push_str(&format!("; ended what it left running: {}", self.leftovers_ended.join(", ")));
        }
        s
    }
}

/// Run the `finally` hooks a dead run of `job` owes. The caller must hold
/// the job's lock (so the run is really dead, not running).
pub fn recover(job: &Job) -> Result<Option<Recovery>> {
    let Some(journal) = Journal::read(job)? else { return Ok(None) };
    let own_dir = journal.run_dir.starts_with(&job.spool);
    let children = journal.run_dir.join("children");
    tracing::warn!(
        "job {}: run {} (pid {}) ended without finishing; ending what it left running, then its owed finally hooks",
        job.name,
        journal.run_id,
        journal.pid
    );
    let leftovers_ended = if own_dir { crate::process::end_leftovers(&children) } else { Vec::new() };
    let mut vars = journal.vars.clone();
    if vars.error.is_empty() {
        vars.error = "the run was killed before it finished".into();
    }
    let never = AtomicBool::new(false);
    let mut recovery = Recovery {
        run_id: journal.run_id.clone(),
        pid: journal.pid,
        hooks_run: 0,
        hooks_failed: 0,
        hooks_already_done: 0,
        hooks_may_have_run: Vec::new(),
        leftovers_ended,
    };
    for (i, hook) in job.hooks.iter().enumerate().filter(|(_, h)| h.phase == Phase::Finally) {
        if journal.finally_done.contains(&i) {
            recovery.hooks_already_done += 1;
            continue;
        }
        if journal.finally_started.contains(&i) {
            recovery.hooks_may_have_run.push(format!("{:?}", hook.run.display()));
        }
        recovery.hooks_run += 1;
        if let Err((_, e)) = run_hook(hook, &vars, &never, None) {
            recovery.hooks_failed += 1;
            tracing::error!("job {}: owed finally hook failed: {e:#}", job.name);
        }
    }
    if own_dir {
        let _ = std::fs::remove_dir_all(&journal.run_dir);
    }
    Journal::clear(job)?;
    Ok(Some(recovery))
}
