//! What `run` remembers about each job, for `status` and for metrics.
//!
//! `<state_dir>/<job>/state.json` (`/var/lib/holdfast` by default, never
//! the spool) holds the last run (time, outcome, duration, figures), the
//! last success and whether the job's staleness was already notified. `run`
//! writes it after every run (atomically, 0600, in directories created
//! 0700); `status` reads it and cross-checks the repository. With
//! `metrics_dir`, the run also writes Prometheus text for node_exporter's
//! textfile collector, with the job's `metrics_mode` (0644: it holds no secret).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Job;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobState {
    pub last_run: Option<RunState>,
    pub last_success: Option<RunState>,
    /// A `stale` notification was sent for the current stale episode.
    #[serde(default)]
    pub stale_notified: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    /// A snapshot was committed and is complete.
    pub ok: bool,
    /// A snapshot was committed but is incomplete (not `ok`).
    #[serde(default)]
    pub incomplete: bool,
    pub duration_secs: f64,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    pub bytes_read: u64,
    pub bytes_added: u64,
}

fn path(job: &Job) -> PathBuf {
    job.state_dir.join(&job.name).join("state.json")
}

impl JobState {
    pub fn load(job: &Job) -> Result<JobState> {
        match std::fs::read(path(job)) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path(job).display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JobState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path(job).display())),
        }
    }

    pub fn save(&self, job: &Job) -> Result<()> {
        let p = path(job);
        if let Some(dir) = p.parent() {
            crate::fsutil::create_dir_all(dir, crate::fsutil::PRIVATE_DIR)?;
        }
        crate::fsutil::write_atomically(&p, &serde_json::to_vec_pretty(self)?, crate::fsutil::PRIVATE_FILE)?;
        Ok(())
    }

    /// Record a finished run. An incomplete snapshot still counts as the
    /// newest backup (`last_success`), but the run is not `ok`.
    pub fn record(&mut self, run: RunState) {
        if run.ok || run.incomplete {
            self.last_success = Some(run.clone());
            self.stale_notified = false;
        }
        self.last_run = Some(run);
    }
}

/// Write a job's metrics file into `dir` with the job's `metrics_mode`
/// (the directory, if holdfast makes it, gets the matching search bits, so
/// the exporter can reach the file).
pub fn write_metrics_file(job: &Job, dir: &Path, text: &str) -> Result<()> {
    let readable_by_others = job.metrics_mode & 0o044;
    let dir_mode = crate::fsutil::PRIVATE_DIR | readable_by_others | (readable_by_others >> 2);
    crate::fsutil::create_dir_all(dir, dir_mode).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("holdfast-{}.prom", job.name));
    crate::fsutil::write_atomically(&file, text.as_bytes(), job.metrics_mode)?;
    Ok(())
}

/// Prometheus text for one job (node_exporter textfile collector format).
/// `repositories` holds each of the job's repositories by name with its size on disk.
pub fn metrics(job: &Job, state: &JobState, snapshots: Option<usize>, repositories: &[(String, u64)]) -> String {
    let l = format!("job=\"{}\"", job.name.replace('"', "'"));
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP holdfast_{name} {help}\n# TYPE holdfast_{name} gauge\nholdfast_{name}{{{l}}} {value}\n"
        ));
    };
    if let Some(s) = &state.last_success {
        metric(
            "last_success_timestamp_seconds",
            "When the job last committed a snapshot.",
            s.finished.as_second().to_string(),
        );
    }
    if let Some(r) = &state.last_run {
        metric("last_run_timestamp_seconds", "When the job's last run ended.", r.finished.as_second().to_string());
        metric("last_run_duration_seconds", "How long the job's last run took.", format!("{:.3}", r.duration_secs));
        metric("last_run_success", "1 if the job's last run succeeded, else 0.", u8::from(r.ok).to_string());
        metric(
            "last_run_incomplete",
            "1 if the job's last run committed an incomplete snapshot (unreadable files), else 0.",
            u8::from(r.incomplete).to_string(),
        );
        metric("last_run_bytes_read", "Bytes the last run read from files and dumps.", r.bytes_read.to_string());
        metric("last_run_bytes_added", "Bytes the last run added to the repository.", r.bytes_added.to_string());
    }
    if let Some(n) = snapshots {
        metric("snapshots", "Snapshots of the job in its repository.", n.to_string());
    }
    if !repositories.is_empty() {
        out.push_str(
            "# HELP holdfast_repository_bytes Size of a repository on disk.\n# TYPE holdfast_repository_bytes gauge\n",
        );
        for (name, bytes) in repositories {
            out.push_str(&format!(
                "holdfast_repository_bytes{{{l},repository=\"{}\"}} {bytes}\n",
                name.replace('"', "'")
            ));
        }
    }
    out
}

/// Bytes of all files under `dir`, on its own file system (a mount below
/// it, `/proc` among them, is not entered).
pub fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::symlink_metadata(dir).map(|m| m.dev()) else { return 0 };
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    if e.metadata().is_ok_and(|m| m.dev() == dev) {
                        stack.push(e.path());
                    }
                }
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}
