//! The job runner: executes a job's plan as one run that commits one
//! snapshot, with retries, notifications and the job's lock.
//!
//! The run's life: take the job's lock; notify `start`; then per attempt
//! execute the plan's steps in order — steps marked `Ok` while nothing has
//! failed, `Failed` steps once something has, `Always` steps in any case — so
//! `finally` hooks and the spool cleanup run after a failed hook, a failed
//! dump, an engine error or SIGTERM. A failed attempt is retried after
//! `retry_delay` (notifying `retry`); the final outcome notifies `success`
//! or `failure`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::config::DatabaseLock;
use crate::config::{Config, Event, Job, Phase, RepositoryConfig};
use crate::dump::mysql::GlobalReadLock;
use crate::dump::{self, DumpContext};
use crate::engine::backup::{BackupOptions, BackupSource, Capture, capture};
use crate::engine::crypto::Id;
use crate::engine::repository::Repository;
use crate::engine::running::hostname;
use crate::exit::{Exit, Interrupt};
use crate::hooks::{HeldHook, HookProgress, start_hold};
use crate::journal::{Journal, recover};
use crate::notify::notify;
use crate::plan::{Step, When, plan};
use crate::record::{DumpRecord, FileSetRecord, HookRecord, RECORD_VERSION, RunRecord, SNAPSHOT_PREFIX};
use crate::secrets::open_repository;
use crate::spool::{JobLock, RunDir};
use crate::state::{JobState, RunState};
use crate::template::Vars;
use crate::units::human;

/// The outcome of `run` for one job.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub job: String,
    /// A complete snapshot was committed and every step succeeded.
    pub ok: bool,
    /// A snapshot was committed but is incomplete (see `warnings`).
    pub incomplete: bool,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub summary: String,
    pub bytes_read: u64,
    pub bytes_added: u64,
    /// What was not backed up as it was.
    pub warnings: Vec<String>,
    /// The exit code this outcome stands for.
    pub exit_code: u8,
    #[serde(skip)]
    pub exit: Exit,
}

impl RunReport {
    /// The report of a job that could not even start (its lock is held,
    /// its config cannot be used).
    pub fn not_run(job: &str, error: &anyhow::Error, interrupt: &Interrupt) -> RunReport {
        let exit = Exit::of_error(error, Some(interrupt));
        RunReport {
            job: job.to_string(),
            ok: false,
            incomplete: false,
            snapshot: None,
            error: Some(format!("{error:#}")),
            attempts: 0,
            summary: format!("job {job}: not run: {error:#}"),
            bytes_read: 0,
            bytes_added: 0,
            warnings: Vec::new(),
            exit_code: exit.code(),
            exit,
        }
    }
}

/// Run `job` to its end: lock, attempts with retries, notifications; then
/// record the outcome in the job's state (and metrics).
pub fn run_job(config: &Config, job: &Job, interrupt: &Interrupt) -> Result<RunReport> {
    let _lock = JobLock::acquire(&job.spool, &job.name, "run")?;
    let started = jiff::Timestamp::now();
    let report = run_attempts(config, job, interrupt)?;
    let finished = jiff::Timestamp::now();
    let mut state = JobState::load(job).unwrap_or_default();
    state.record(RunState {
        started,
        finished,
        ok: report.ok,
        incomplete: report.incomplete,
        duration_secs: finished.duration_since(started).as_secs_f64(),
        snapshot: report.snapshot.clone(),
        error: report.error.clone(),
        bytes_read: report.bytes_read,
        bytes_added: report.bytes_added,
    });
    if let Err(e) = state.save(job) {
        tracing::warn!("job {}: could not record the run's state: {e:#}", job.name);
    }
    if report.ok && job.prune_after_backup {
        match crate::prune::prune_job(config, job, Duration::from_secs(3600), false) {
            Ok(reports) => {
                let forgotten: usize = reports.iter().map(|r| r.forgotten).sum();
                tracing::info!("job {}: pruned: {forgotten} snapshot(s) forgotten", job.name);
            }
            Err(e) => tracing::warn!("job {}: prune after the backup failed (the backup stands): {e:#}", job.name),
        }
    }
    if let Some(dir) = &job.metrics_dir
        && let Err(e) = write_metrics(config, job, &state, dir)
    {
        tracing::warn!("job {}: could not write metrics: {e:#}", job.name);
    }
    Ok(report)
}

/// Write `holdfast-<job>.prom` into `dir`, atomically.
fn write_metrics(config: &Config, job: &Job, state: &JobState, dir: &std::path::Path) -> Result<()> {
    let repo_cfg = &config.repositories[&job.repositories[0]];
    let count = open_repository(repo_cfg).and_then(|r| {
        let (snaps, _) = r.snapshots()?;
        Ok(snaps.iter().filter(|(_, s)| RunRecord::of(s).is_some_and(|r| r.job == job.name)).count())
    });
    let sizes: Vec<(String, u64)> = job
        .repositories
        .iter()
        .filter_map(|n| config.repositories.get(n).and_then(|r| Some((n.clone(), stored_bytes(r)?))))
        .collect();
    let text = crate::state::metrics(job, state, count.ok(), &sizes);
    crate::state::write_metrics_file(job, dir, &text)
}

/// Bytes a repository holds: a directory's size, or what a bucket lists.
fn stored_bytes(repo: &RepositoryConfig) -> Option<u64> {
    match repo.local_path() {
        Some(path) => Some(crate::state::dir_size(path)),
        None => {
            let backend = crate::secrets::location(repo).ok()?.open_backend().ok()?;
            crate::engine::backend::stored_bytes(&*backend).ok()
        }
    }
}

/// The attempts of one run, with retries and notifications.
fn run_attempts(config: &Config, job: &Job, interrupt: &Interrupt) -> Result<RunReport> {
    let cancel = interrupt.flag();
    if let Some(r) = recover(job)? {
        tracing::warn!("job {}: {}", job.name, r.describe());
    }
    let started = Instant::now();
    let mut vars = Vars {
        job: job.name.clone(),
        time: jiff::Timestamp::now().to_string(),
        host: hostname(),
        ..Default::default()
    };
    notify(&job.notify, Event::Start, &vars);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let run_id = new_run_id();
        vars.run_id = run_id.clone();
        tracing::info!("job {}: run {run_id} (attempt {attempt} of {})", job.name, job.retries + 1);
        let outcome = Attempt::new(config, job, &run_id, vars.clone(), interrupt.flag()).execute();
        match outcome {
            Ok(done) => {
                let (_, first) = done.committed[0];
                vars.snapshot = first.to_hex();
                let ids: Vec<String> = done.committed.iter().map(|(_, id)| id.short()).collect();
                let repos: Vec<String> = done.committed.iter().map(|(r, _)| format!("{r:?}")).collect();
                let took = started.elapsed().as_secs_f64();
                let exit = match &done.error {
                    Some(e) => Exit::of_error(e, Some(interrupt)),
                    None if done.totals.incomplete => Exit::Warnings,
                    None => Exit::Success,
                };
                let error = done.error.map(|e| format!("{e:#}"));
                let warnings = done.totals.warnings.clone();
                match &error {
                    None if done.totals.incomplete => {
                        vars.error = format!(
                            "snapshot committed but incomplete: {}",
                            warnings.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                        );
                        notify(&job.notify, Event::Warning, &vars);
                    }
                    None => notify(&job.notify, Event::Success, &vars),
                    Some(e) => {
                        vars.error = e.clone();
                        notify(&job.notify, Event::Failure, &vars);
                    }
                }
                let summary = match &error {
                    None if done.totals.incomplete => format!(
                        "job {}: INCOMPLETE snapshot {} committed to {} in {took:.1}s: {}; {} warning(s): {}",
                        job.name,
                        ids.join(", "),
                        repos.join(", "),
                        done.summary,
                        warnings.len(),
                        warnings.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
                    ),
                    None => format!(
                        "job {}: snapshot {} committed to {} in {took:.1}s: {}",
                        job.name,
                        ids.join(", "),
                        repos.join(", "),
                        done.summary
                    ),
                    Some(e) => format!(
                        "job {}: FAILED: snapshot {} was committed to {} ({}), but a later step failed: {e}",
                        job.name,
                        ids.join(", "),
                        repos.join(", "),
                        done.summary
                    ),
                };
                return Ok(RunReport {
                    job: job.name.clone(),
                    ok: exit == Exit::Success,
                    incomplete: done.totals.incomplete,
                    snapshot: Some(first.to_hex()),
                    error,
                    attempts: attempt,
                    summary,
                    bytes_read: done.totals.bytes_read,
                    bytes_added: done.totals.bytes_added,
                    warnings,
                    exit_code: exit.code(),
                    exit,
                });
            }
            Err(e) => {
                let msg = format!("{e:#}");
                vars.error = msg.clone();
                let interrupted = cancel.load(Ordering::Relaxed);
                let exit = Exit::of_error(&e, Some(interrupt));
                if attempt <= job.retries && !interrupted {
                    tracing::warn!("job {}: run failed: {msg}; retrying in {:?}", job.name, job.retry_delay);
                    notify(&job.notify, Event::Retry, &vars);
                    if sleep_unless_cancelled(job.retry_delay, cancel) {
                        continue;
                    }
                }
                notify(&job.notify, Event::Failure, &vars);
                return Ok(RunReport {
                    job: job.name.clone(),
                    ok: false,
                    incomplete: false,
                    snapshot: None,
                    error: Some(msg.clone()),
                    attempts: attempt,
                    bytes_read: 0,
                    bytes_added: 0,
                    warnings: Vec::new(),
                    exit_code: exit.code(),
                    exit,
                    summary: format!(
                        "job {}: FAILED after {} attempt(s) in {:.1}s, no snapshot committed: {msg}",
                        job.name,
                        attempt,
                        started.elapsed().as_secs_f64()
                    ),
                });
            }
        }
    }
}

/// Sleep `d`; false when interrupted.
fn sleep_unless_cancelled(d: Duration, cancel: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    true
}

/// A run id: UTC time plus randomness, sortable and unique.
fn new_run_id() -> String {
    let mut r = [0u8; 3];
    let _ = crate::engine::crypto::fill_random(&mut r);
    format!("{}-{}", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ"), hex::encode(r))
}

/// An attempt that committed its snapshot(s); `error` is a failure after
/// the commit (an `on_success` or `finally` hook, the spool cleanup), which
/// fails the run but is not retried: one run commits one snapshot.
struct Done {
    committed: Vec<(String, Id)>,
    summary: String,
    totals: crate::engine::snapshot::Summary,
    error: Option<anyhow::Error>,
}

/// One attempt: the plan's steps and what they produced.
struct Attempt<'a> {
    config: &'a Config,
    job: &'a Job,
    run_id: String,
    vars: Vars,
    cancel: &'a Arc<AtomicBool>,
    run_dir: Option<RunDir>,
    /// What a recovery would owe if holdfast died now.
    journal: Option<Journal>,
    /// Captured, not yet committed: repository name, repository, capture,
    /// and when its file sets were read.
    captures: Vec<(String, Repository, Capture, FileSetRecord)>,
    dumps: Vec<DumpRecord>,
    hooks: Vec<HookRecord>,
    holds: Vec<HeldHook>,
    locks: Vec<GlobalReadLock>,
    /// Committed snapshots: repository name and snapshot id.
    committed: Vec<(String, Id)>,
    /// Repositories committed to, for copies.
    committed_repos: Vec<(String, Repository)>,
    /// Repositories sharing the first one's keys: they get copies.
    copy_targets: Vec<(String, Repository)>,
    totals: Option<crate::engine::snapshot::Summary>,
}

impl<'a> Attempt<'a> {
    fn new(config: &'a Config, job: &'a Job, run_id: &str, vars: Vars, cancel: &'a Arc<AtomicBool>) -> Self {
        Attempt {
            config,
            job,
            run_id: run_id.to_string(),
            vars,
            cancel,
            run_dir: None,
            journal: None,
            captures: Vec::new(),
            dumps: Vec::new(),
            hooks: Vec::new(),
            holds: Vec::new(),
            locks: Vec::new(),
            committed: Vec::new(),
            committed_repos: Vec::new(),
            copy_targets: Vec::new(),
            totals: None,
        }
    }

    fn execute(mut self) -> Result<Done> {
        let mut failure: Option<anyhow::Error> = None;
        for planned in plan(self.job) {
            let run = match planned.when {
                When::Ok => failure.is_none(),
                When::Failed => failure.is_some(),
                When::Always => true,
            };
            if !run {
                continue;
            }
            // Steps that clean up must not be cut short by the signal that
            // stopped the run.
            let never = AtomicBool::new(false);
            let cancel: &AtomicBool = if planned.when == When::Ok { self.cancel } else { &never };
            if planned.when == When::Ok && cancel.load(Ordering::Relaxed) {
                failure = Some(anyhow!("interrupted (SIGTERM or SIGINT)"));
                continue;
            }
            if let Some(e) = &failure {
                self.vars.error = format!("{e:#}");
            }
            if let Err(e) = self.step(&planned.step, cancel) {
                tracing::error!("job {}: {e:#}", self.job.name);
                match &failure {
                    None => failure = Some(e),
                    Some(_) => tracing::error!("job {}: (while handling an earlier failure)", self.job.name),
                }
            }
        }
        let summary = self.summary();
        let committed = std::mem::take(&mut self.committed);
        match (failure, committed.is_empty()) {
            (error, false) => Ok(Done { committed, summary, totals: self.totals.clone().unwrap_or_default(), error }),
            (Some(e), true) => Err(e),
            (None, true) => bail!("the run ended without committing a snapshot"),
        }
    }

    fn step(&mut self, step: &Step, cancel: &AtomicBool) -> Result<()> {
        match step {
            Step::PrepareSpool => {
                let dir = RunDir::create(&self.job.spool, &self.job.name, &self.run_id)?;
                self.vars.spool = dir.root.display().to_string();
                let journal = Journal {
                    run_id: self.run_id.clone(),
                    pid: std::process::id(),
                    vars: self.vars.clone(),
                    run_dir: dir.root.clone(),
                    finally_started: Vec::new(),
                    finally_done: Vec::new(),
                };
                journal.write(self.job)?;
                self.journal = Some(journal);
                self.run_dir = Some(dir);
            }
            Step::Hold { .. } => {
                for hook in self.job.hooks.iter().filter(|h| h.phase == Phase::Hold) {
                    tracing::info!(
                        "job {}: hold hook: {} (waiting for {:?})",
                        self.job.name,
                        hook.run.display(),
                        hook.ready.as_deref().unwrap_or("")
                    );
                    match start_hold(hook, &self.vars, cancel, self.children()) {
                        Ok(h) => self.holds.push(h),
                        Err((r, e)) => {
                            self.hooks.push(r);
                            return Err(e);
                        }
                    }
                }
                for db in self.job.databases.iter().filter(|d| d.lock == Some(DatabaseLock::GlobalRead)) {
                    tracing::info!("job {}: taking the global read lock of {:?}", self.job.name, db.entry_name());
                    self.locks.push(GlobalReadLock::acquire(db)?);
                }
            }
            Step::Release => {
                for lock in self.locks.drain(..).rev() {
                    lock.release();
                }
                for hold in self.holds.drain(..).rev() {
                    self.hooks.push(hold.release());
                }
            }
            Step::Hooks { phase, .. } => self.hooks_of(*phase, cancel)?,
            Step::Dump { index, .. } => {
                self.check_holds()?;
                let db = &self.job.databases[*index];
                let run = self.run_dir.as_ref().context("no spool directory")?;
                tracing::info!("job {}: dumping {} database {:?}", self.job.name, db.kind.as_str(), db.entry_name());
                let records = dump::dump(db, &DumpContext { run, cancel })
                    .with_context(|| format!("dump of database entry {:?} failed", db.entry_name()))?;
                self.dumps.extend(records);
            }
            Step::Capture { repository, dumps, paths, optional } => {
                let repo_cfg = self
                    .config
                    .repositories
                    .get(repository)
                    .with_context(|| format!("repository {repository:?} is not defined"))?;
                let repo = open_repository(repo_cfg)?;
                if let Some((first, first_repo, ..)) = self.captures.first()
                    && repo.shares_keys_with(first_repo)
                {
                    // Same keys: the commit copies the snapshot (and any the
                    // target missed before) instead of reading everything again.
                    tracing::info!("job {}: repository {repository:?} will get a copy from {first:?}", self.job.name);
                    self.copy_targets.push((repository.clone(), repo));
                    return Ok(());
                }
                let mut sources = Vec::new();
                if *dumps {
                    let run = self.run_dir.as_ref().context("no spool directory")?;
                    sources.push(BackupSource { local: run.dumps.clone(), at: PathBuf::from(SNAPSHOT_PREFIX) });
                }
                let mut captured = paths.clone();
                for p in paths {
                    if !p.exists() {
                        bail!(
                            "file set path {} does not exist (list it under `optional` if it may be absent)",
                            p.display()
                        );
                    }
                    sources.push(BackupSource::same_path(p)?);
                }
                for p in optional {
                    if p.exists() {
                        sources.push(BackupSource::same_path(p)?);
                        captured.push(p.clone());
                    } else {
                        tracing::info!("job {}: optional path {} is absent; skipped", self.job.name, p.display());
                    }
                }
                let paths = &captured;
                let exclude: Option<Box<crate::engine::backup::ExcludeFn>> = if self.job.files.exclude.is_empty() {
                    None
                } else {
                    let excludes = self.job.files.exclude.clone();
                    Some(Box::new(move |p: &std::path::Path| excludes.is_match(p)))
                };
                let mut tags = vec![self.job.name.clone()];
                tags.extend(self.job.tags.iter().cloned());
                let opts = BackupOptions { tags, exclude, cancel: Some(self.cancel.clone()), ..Default::default() };
                let started = jiff::Timestamp::now();
                tracing::info!("job {}: reading dumps and files into repository {repository:?}", self.job.name);
                let cap = capture(&repo, &sources, &opts).map_err(|e| anyhow!(e)).context("backup failed")?;
                // What was held must have been held for the whole capture.
                self.check_holds()?;
                for w in &cap.summary().warnings {
                    tracing::warn!("job {}: {w}", self.job.name);
                }
                let file_set = FileSetRecord {
                    paths: paths.clone(),
                    capture_started: started,
                    capture_finished: jiff::Timestamp::now(),
                };
                self.captures.push((repository.clone(), repo, cap, file_set));
            }
            Step::Commit { repository } if self.copy_targets.iter().any(|(n, _)| n == repository) => {
                let (source_name, source) = self.committed_repos.first().context("nothing committed to copy from")?;
                let (_, target) = self.copy_targets.iter().find(|(n, _)| n == repository).context("copy target")?;
                let job = self.job.name.clone();
                let wanted = |s: &crate::engine::snapshot::Snapshot| RunRecord::of(s).is_some_and(|r| r.job == job);
                let report = crate::engine::copy::copy_snapshots(source, target, &wanted).with_context(|| {
                    format!("copying to repository {repository:?} failed (the next run catches up)")
                })?;
                tracing::info!(
                    "job {}: copied {} snapshot(s) from {source_name:?} to {repository:?} ({} new blobs)",
                    self.job.name,
                    report.snapshots_copied,
                    report.blobs_copied
                );
                let id = report.copied.last().and_then(|h| Id::from_hex(h)).context("the copy wrote no snapshot")?;
                self.committed.push((repository.clone(), id));
            }
            Step::Commit { repository } => {
                let i = self
                    .captures
                    .iter()
                    .position(|(name, ..)| name == repository)
                    .with_context(|| format!("nothing captured for repository {repository:?}"))?;
                let (name, repo_owned, cap, file_set) = self.captures.remove(i);
                let repo = &repo_owned;
                let record = RunRecord {
                    version: RECORD_VERSION,
                    job: self.job.name.clone(),
                    run_id: self.run_id.clone(),
                    databases: self.dumps.clone(),
                    file_sets: vec![file_set],
                    hooks: self.hooks.clone(),
                };
                let result = cap
                    .commit(repo, Some(serde_json::to_value(&record)?))
                    .with_context(|| format!("committing the snapshot to repository {name:?}"))?;
                if self.committed.is_empty() {
                    self.vars.snapshot = result.id.to_hex();
                }
                self.committed.push((name.clone(), result.id));
                self.committed_repos.push((name, repo_owned));
                self.totals = Some(result.snapshot.summary.clone());
            }
            Step::CleanSpool => {
                if let Some(dir) = self.run_dir.take() {
                    dir.remove()?;
                }
                Journal::clear(self.job)?;
            }
        }
        Ok(())
    }

    /// Fails if a `hold` hook stopped holding or a database lock was lost.
    fn check_holds(&mut self) -> Result<()> {
        for h in &mut self.holds {
            h.check()?;
        }
        for l in &self.locks {
            l.check()?;
        }
        Ok(())
    }

    /// Where the run's children are recorded while they run.
    fn children(&self) -> Option<&std::path::Path> {
        self.run_dir.as_ref().map(|d| d.children.as_path())
    }

    /// Run every hook of `phase`, recording each; `finally` hooks are
    /// recorded in the journal (durably) as they start and end, so a
    /// recovery runs only what was owed.
    fn hooks_of(&mut self, phase: Phase, cancel: &AtomicBool) -> Result<()> {
        let children = self.children().map(std::path::Path::to_path_buf);
        let (job, journal, records) = (self.job, &mut self.journal, &mut self.hooks);
        crate::hooks::run_phase(job, phase, &self.vars, cancel, children.as_deref(), |progress| {
            if let HookProgress::Finished(_, record) = progress {
                records.push(record.clone());
            }
            let Some(j) = journal.as_mut().filter(|_| phase == Phase::Finally) else { return };
            match progress {
                HookProgress::Started(i) => j.finally_started.push(i),
                HookProgress::Finished(i, _) => j.finally_done.push(i),
            }
            if let Err(e) = j.write(job) {
                tracing::warn!("job {}: could not update the run journal: {e:#}", job.name);
            }
        })
    }

    fn summary(&self) -> String {
        let dbs: Vec<String> = self.dumps.iter().map(|d| format!("{} {}", d.name, human(d.size))).collect();
        let s = self.totals.clone().unwrap_or_default();
        format!(
            "{} dump(s){}, {} files, {} in all, {} added to the repository",
            self.dumps.len(),
            if dbs.is_empty() { String::new() } else { format!(" ({})", dbs.join(", ")) },
            s.files,
            human(s.bytes),
            human(s.bytes_added)
        )
    }
}
