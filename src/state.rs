//! What `run` remembers about each job, for `status` and for metrics.
//!
//! `<spool>/<job>/state.json` holds the last run (time, outcome, duration,
//! figures), the last success and whether the job's staleness was already
//! notified. `run` writes it after every run (atomically); `status` reads it
//! and cross-checks the repository. With `metrics_dir`, the run also writes
//! Prometheus text for node_exporter's textfile collector.

use std::io::Write;
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
    pub ok: bool,
    pub duration_secs: f64,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    pub bytes_read: u64,
    pub bytes_added: u64,
}

fn path(job: &Job) -> PathBuf {
    job.spool.join(&job.name).join("state.json")
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
        write_atomically(&path(job), &serde_json::to_vec_pretty(self)?)
    }

    /// Record a finished run.
    pub fn record(&mut self, run: RunState) {
        if run.ok {
            self.last_success = Some(run.clone());
            self.stale_notified = false;
        }
        self.last_run = Some(run);
    }
}

/// Write `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
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

/// Bytes of all files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}
