//! Status: the dead man's switch. Per job: the last run, the newest
//! snapshot and its age, how many snapshots, what the last run added, when
//! the next run is due, and whether the job is stale (newest snapshot older
//! than `max_age`) or failing. Snapshots recorded by a successful run but
//! missing from the repository are reported ("backups that disappear").
//! A stale job notifies `stale` once per stale episode.

use anyhow::Result;
use serde::Serialize;

use crate::config::{Event, Job};
use crate::notify::notify;
use crate::secrets::open_repository;
use crate::state::{JobState, RunState};
use crate::template::Vars;

#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub repository: String,
    pub last_run: Option<RunState>,
    pub newest_snapshot: Option<String>,
    pub newest_time: Option<jiff::Timestamp>,
    pub age_secs: Option<i64>,
    pub snapshots: usize,
    pub max_age_secs: Option<u64>,
    pub schedule: Option<String>,
    pub next_run: Option<String>,
    pub stale: bool,
    pub failed: bool,
    /// The last run committed an incomplete snapshot (not "ok").
    pub incomplete: bool,
    pub problems: Vec<String>,
}

impl JobStatus {
    pub fn healthy(&self) -> bool {
        !self.stale && !self.failed && !self.incomplete && self.problems.is_empty()
    }

    /// The exit code this status stands for: 3 when the only trouble is an
    /// incomplete last run, 1 for anything worse.
    pub fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        if self.stale || self.failed || !self.problems.is_empty() {
            Exit::Failed
        } else if self.incomplete {
            Exit::Warnings
        } else {
            Exit::Success
        }
    }
}

/// The status of `jobs`; notifies `stale` for newly stale ones.
pub fn status(jobs: &[&Job]) -> Result<Vec<JobStatus>> {
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for job in jobs {
        let mut state = JobState::load(job).unwrap_or_default();
        let repo_name = job.repositories[0].name.clone();
        let mut st = JobStatus {
            job: job.name.clone(),
            repository: repo_name.clone(),
            last_run: state.last_run.clone(),
            newest_snapshot: None,
            newest_time: None,
            age_secs: None,
            snapshots: 0,
            max_age_secs: job.max_age.map(|d| d.as_secs()),
            schedule: job.schedule.clone(),
            next_run: job.schedule.as_deref().and_then(next_elapse),
            stale: false,
            failed: state.last_run.as_ref().is_some_and(|r| !r.ok && !r.incomplete),
            incomplete: state.last_run.as_ref().is_some_and(|r| r.incomplete),
            problems: Vec::new(),
        };
        match open_repository(&job.repositories[0]).and_then(|r| Ok(r.snapshots()?)) {
            Ok((snaps, _)) => {
                let mine: Vec<_> = snaps
                    .iter()
                    .filter(|(_, s)| crate::record::RunRecord::of(s).is_some_and(|r| r.job == job.name))
                    .collect();
                st.snapshots = mine.len();
                if let Some((id, s)) = mine.last() {
                    st.newest_snapshot = Some(id.to_hex());
                    st.newest_time = Some(s.time);
                    st.age_secs = Some(now.duration_since(s.time).as_secs());
                }
                if let Some(expected) = state.last_success.as_ref().and_then(|r| r.snapshot.as_ref())
                    && !mine.iter().any(|(id, _)| &id.to_hex() == expected)
                {
                    st.problems.push(format!(
                        "snapshot {} of the last successful run is missing from repository {repo_name:?}",
                        crate::engine::backend::short_name(expected)
                    ));
                }
            }
            Err(e) => st.problems.push(format!("repository {repo_name:?}: {e:#}")),
        }
        if let Some(max) = job.max_age {
            st.stale = match st.age_secs {
                Some(age) => age > max.as_secs() as i64,
                None => true,
            };
        }
        if st.stale && !state.stale_notified {
            let vars = Vars {
                job: job.name.clone(),
                snapshot: st.newest_snapshot.clone().unwrap_or_default(),
                error: match st.age_secs {
                    Some(a) => format!("the newest snapshot is {a} s old, more than max_age"),
                    None => "the job has no snapshot".into(),
                },
                time: now.to_string(),
                host: crate::engine::running::hostname(),
                ..Default::default()
            };
            notify(&job.notify, Event::Stale, &vars);
            state.stale_notified = true;
            let _ = state.save(job);
        } else if !st.stale && state.stale_notified {
            state.stale_notified = false;
            let _ = state.save(job);
        }
        out.push(st);
    }
    Ok(out)
}

/// The next time an OnCalendar expression elapses, from `systemd-analyze`.
pub fn next_elapse(schedule: &str) -> Option<String> {
    let out = crate::process::command("systemd-analyze").args(["calendar", schedule]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.trim().strip_prefix("Next elapse:").map(|v| v.trim().to_string()))
}
