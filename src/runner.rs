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
use crate::config::{Event, Job, Phase, RepositoryConfig};
use crate::dump::mysql::GlobalReadLock;
use crate::dump::{self, DumpContext};
use crate::engine::backup::{BackupOptions, BackupSource, Capture, capture};
use crate::engine::crypto::Id;
use crate::engine::progress::Progress;
use crate::engine::repository::Repository;
use crate::engine::running::hostname;
use crate::engine::tree::Entry;
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
use crate::units::{escape_text, human};

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
pub fn run_job(job: &Job, interrupt: &Interrupt, progress: Option<Arc<Progress>>) -> Result<RunReport> {
    let _lock = JobLock::acquire(&job.spool, &job.name, "run")?;
    let started = jiff::Timestamp::now();
    let report = run_attempts(job, interrupt, progress.clone())?;
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
        match crate::prune::prune_job(
            job,
            &Default::default(),
            &crate::engine::gc::GcOptions::default(),
            progress.as_deref(),
        ) {
            Ok(reports) => {
                let forgotten: usize = reports.iter().map(|r| r.forgotten).sum();
                tracing::info!("job {}: pruned: {forgotten} snapshot(s) forgotten", job.name);
            }
            Err(e) => tracing::warn!("job {}: prune after the backup failed (the backup stands): {e:#}", job.name),
        }
    }
    if let Some(dir) = &job.metrics_dir
        && let Err(e) = write_metrics(job, &state, dir)
    {
        tracing::warn!("job {}: could not write metrics: {e:#}", job.name);
    }
    Ok(report)
}

/// Write `holdfast-<job>.prom` into `dir`, atomically.
fn write_metrics(job: &Job, state: &JobState, dir: &std::path::Path) -> Result<()> {
    let count = open_repository(&job.repositories[0]).and_then(|r| {
        let (snaps, _) = r.snapshots()?;
        Ok(snaps.iter().filter(|(_, s)| RunRecord::of(s).is_some_and(|r| r.job == job.name)).count())
    });
    let sizes: Vec<(String, u64)> =
        job.repositories.iter().filter_map(|r| Some((r.name.clone(), stored_bytes(r)?))).collect();
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
fn run_attempts(job: &Job, interrupt: &Interrupt, progress: Option<Arc<Progress>>) -> Result<RunReport> {
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
        let mut a = Attempt::new(job, &run_id, vars.clone(), interrupt.flag());
        a.progress = progress.clone();
        let outcome = a.execute();
        match outcome {
            Ok(done) => {
                return Ok(committed_report(job, done, attempt, started.elapsed().as_secs_f64(), &mut vars, interrupt));
            }
            Err(e) => {
                let msg = crate::units::error_text(&e);
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

/// The report of an attempt that committed its snapshot(s), notified as a
/// success, a warning (incomplete) or a failure (a step after the commit).
fn committed_report(
    job: &Job,
    done: Done,
    attempt: u32,
    took: f64,
    vars: &mut Vars,
    interrupt: &Interrupt,
) -> RunReport {
    let (_, first) = done.committed[0];
    vars.snapshot = first.to_hex();
    let ids: Vec<String> = done.committed.iter().map(|(_, id)| id.short()).collect();
    let repos: Vec<String> = done.committed.iter().map(|(r, _)| format!("{r:?}")).collect();
    let exit = match &done.error {
        Some(e) => Exit::of_error(e, Some(interrupt)),
        None if done.totals.incomplete => Exit::Warnings,
        None => Exit::Success,
    };
    let error = done.error.map(|e| crate::units::error_text(&e));
    let warnings = done.totals.warnings.clone();
    match &error {
        None if done.totals.incomplete => {
            vars.error = format!(
                "snapshot committed but incomplete: {}",
                warnings.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            );
            notify(&job.notify, Event::Warning, vars);
        }
        None => notify(&job.notify, Event::Success, vars),
        Some(e) => {
            vars.error = e.clone();
            notify(&job.notify, Event::Failure, vars);
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
    RunReport {
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
    job: &'a Job,
    run_id: String,
    vars: Vars,
    cancel: &'a Arc<AtomicBool>,
    run_dir: Option<RunDir>,
    /// What a recovery would owe if holdfast died now.
    journal: Option<Journal>,
    dumps: Vec<DumpRecord>,
    /// The database entries dumped (several at once with `dump_concurrency`).
    dumped: std::collections::BTreeSet<usize>,
    /// Streamed dumps, stored in the first repository: the spool directory
    /// each goes in, and its entry.
    streamed: Vec<(PathBuf, Entry)>,
    /// What storing them added to the first repository.
    streamed_added: crate::engine::backup::StreamAdded,
    /// Keep prune from taking a streamed dump's packs until the run ends.
    stream_guards: Vec<crate::engine::running::Running>,
    hooks: Vec<HookRecord>,
    holds: Vec<HeldHook>,
    locks: Vec<GlobalReadLock>,
    /// The job's repositories, opened, until a step takes them over.
    opened: Vec<(String, Repository)>,
    /// The job's repositories, in the job's order, as far as they got.
    targets: Vec<(String, Target)>,
    totals: Option<crate::engine::snapshot::Summary>,
    /// The phase and the files read, for a display.
    progress: Option<Arc<Progress>>,
}

/// Where one of the job's repositories stands in an attempt.
enum Target {
    /// Its dumps and files are read in; not yet a snapshot.
    Captured { repo: Repository, capture: Box<Capture>, file_set: FileSetRecord },
    /// Its snapshot exists.
    Committed { repo: Repository, id: Id },
}

impl<'a> Attempt<'a> {
    fn new(job: &'a Job, run_id: &str, vars: Vars, cancel: &'a Arc<AtomicBool>) -> Self {
        Attempt {
            job,
            run_id: run_id.to_string(),
            vars,
            cancel,
            run_dir: None,
            journal: None,
            dumps: Vec::new(),
            dumped: Default::default(),
            streamed: Vec::new(),
            streamed_added: Default::default(),
            stream_guards: Vec::new(),
            hooks: Vec::new(),
            holds: Vec::new(),
            locks: Vec::new(),
            opened: Vec::new(),
            targets: Vec::new(),
            totals: None,
            progress: None,
        }
    }

    /// The snapshots committed so far: repository name and snapshot id.
    fn committed(&self) -> Vec<(String, Id)> {
        self.targets
            .iter()
            .filter_map(|(name, t)| match t {
                Target::Committed { id, .. } => Some((name.clone(), *id)),
                _ => None,
            })
            .collect()
    }

    fn execute(mut self) -> Result<Done> {
        // Every repository opens before anything runs: one that cannot
        // fails the attempt before the application is touched (only the
        // steps that run after a failure run, `finally` among them), and
        // the plan knows which repositories get a copy.
        let mut failure: Option<anyhow::Error> = None;
        let opened: Result<Vec<(String, Repository)>> =
            self.job.repositories.iter().map(|r| Ok((r.name.clone(), open_repository(r)?))).collect();
        let copies = match opened {
            Ok(opened) => {
                let copies = crate::plan::copies(&opened);
                self.opened = opened;
                copies
            }
            Err(e) => {
                tracing::error!("job {}: {}", self.job.name, crate::units::error_text(&e));
                failure = Some(e);
                crate::plan::Copies::new()
            }
        };
        let steps = plan(self.job, &copies).into_iter().map(|p| (p.when, p.step));
        let failure = crate::plan::execute(failure, steps, |when, step, failed| {
            // Steps that clean up must not be cut short by the signal that
            // stopped the run.
            let never = AtomicBool::new(false);
            let cancel: &AtomicBool = if when == When::Ok { self.cancel } else { &never };
            if when == When::Ok && cancel.load(Ordering::Relaxed) {
                bail!("interrupted (SIGTERM or SIGINT)");
            }
            if let Some(e) = failed {
                self.vars.error = crate::units::error_text(e);
            }
            self.step(&step, cancel)
                .inspect_err(|e| tracing::error!("job {}: {}", self.job.name, crate::units::error_text(e)))
        });
        let summary = self.summary();
        let committed = self.committed();
        match (failure, committed.is_empty()) {
            (error, false) => Ok(Done { committed, summary, totals: self.totals.clone().unwrap_or_default(), error }),
            (Some(e), true) => Err(e),
            (None, true) => bail!("the run ended without committing a snapshot"),
        }
    }

    fn step(&mut self, step: &Step, cancel: &AtomicBool) -> Result<()> {
        if let Some(p) = &self.progress {
            p.phase(format!("job {}: {}", self.job.name, step.doing()));
        }
        match step {
            Step::PrepareSpool => self.prepare_spool(),
            Step::Hold { .. } => self.hold(cancel),
            Step::Release => {
                self.release();
                Ok(())
            }
            Step::Hooks { phase, .. } => self.hooks_of(*phase, cancel),
            Step::Dump { index, .. } => self.dump(*index, cancel),
            Step::Capture { repository, dumps, paths, optional } => self.capture(repository, *dumps, paths, optional),
            Step::Commit { repository } => self.commit(repository),
            Step::Copy { repository, from } => self.copy(repository, from),
            Step::CleanSpool => {
                if let Some(dir) = self.run_dir.take() {
                    dir.remove()?;
                }
                Ok(Journal::clear(self.job)?)
            }
        }
    }

    /// The run's private directory, and the journal that says what a
    /// recovery would owe.
    fn prepare_spool(&mut self) -> Result<()> {
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
        Ok(())
    }

    /// Start the `hold` hooks (each until its ready line) and take the
    /// databases' native locks.
    fn hold(&mut self, cancel: &AtomicBool) -> Result<()> {
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
        Ok(())
    }

    /// Let go of what `hold` holds, last taken first.
    fn release(&mut self) {
        for lock in self.locks.drain(..).rev() {
            lock.release();
        }
        for hold in self.holds.drain(..).rev() {
            self.hooks.push(hold.release());
        }
    }

    /// Dump entry `index`. With `dump_concurrency` above 1, the first dump
    /// step dumps every entry, that many at a time, and the later steps find
    /// theirs done; the first failure stops the others.
    fn dump(&mut self, index: usize, cancel: &AtomicBool) -> Result<()> {
        if self.dumped.contains(&index) {
            return Ok(());
        }
        self.check_holds()?;
        let run = self.run_dir.as_ref().context("no spool directory")?;
        let job = self.job;
        let indices: Vec<usize> =
            if job.dump_concurrency > 1 { (index..job.databases.len()).collect() } else { vec![index] };
        // Streamed dumps go into the job's first repository (the others
        // get them as copies).
        let sink = match job.repositories.first() {
            Some(first) if indices.iter().any(|i| job.databases[*i].stream) => {
                let repo = self.opened.iter().find(|(n, _)| *n == first.name).map(|(_, r)| r);
                let repo = repo.with_context(|| format!("repository {:?} is not open", first.name))?;
                Some(StreamSink { repo, dumps: &run.dumps, stored: Default::default() })
            }
            _ => None,
        };
        let dump_one = |i: usize, cancel: &AtomicBool| {
            let db = &job.databases[i];
            let how = if db.stream { "streaming" } else { "dumping" };
            tracing::info!("job {}: {how} {} database {:?}", job.name, db.kind.as_str(), db.entry_name());
            let stream = sink.as_ref().map(|s| s as &dyn dump::DumpSink);
            dump::dump(db, &DumpContext { run, cancel, stream })
                .with_context(|| format!("dump of database entry {:?} failed", db.entry_name()))
        };
        let results = if indices.len() == 1 {
            vec![dump_one(index, cancel)]
        } else {
            run_concurrently(&indices, job.dump_concurrency, cancel, dump_one)
        };
        self.dumped.extend(indices);
        if let Some(sink) = sink {
            for (dir, entry, added, running) in sink.stored.into_inner().unwrap_or_else(|p| p.into_inner()) {
                self.streamed.push((dir, entry));
                self.streamed_added += added;
                self.stream_guards.push(running);
            }
        }
        let mut first_error = None;
        for r in results {
            match r {
                Ok(records) => self.dumps.extend(records),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The opened repository `name`, taken over by the step that uses it.
    fn take_opened(&mut self, name: &str) -> Result<Repository> {
        let i = self.opened.iter().position(|(n, _)| n == name);
        Ok(self.opened.remove(i.with_context(|| format!("repository {name:?} is not one of the job's"))?).1)
    }

    /// Read the dumps and file sets into `repository` (not yet a snapshot).
    fn capture(&mut self, repository: &str, dumps: bool, paths: &[PathBuf], optional: &[PathBuf]) -> Result<()> {
        let repo = self.take_opened(repository)?;
        let mut sources = Vec::new();
        if dumps {
            let run = self.run_dir.as_ref().context("no spool directory")?;
            sources.push(BackupSource { local: run.dumps.clone(), at: PathBuf::from(SNAPSHOT_PREFIX) });
        }
        let mut captured = paths.to_vec();
        for p in paths {
            if !p.exists() {
                bail!("file set path {} does not exist (list it under `optional` if it may be absent)", p.display());
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
        let first = self.job.repositories.first().map(|r| r.name.as_str()).unwrap_or_default();
        let (injected, injected_added) = if !dumps || self.streamed.is_empty() {
            (Vec::new(), Default::default())
        } else if first == repository {
            (self.streamed.clone(), self.streamed_added)
        } else {
            // Another repository that cannot take a copy (other chunker
            // parameters) gets the dumps read back out of the first one.
            let source = self
                .targets
                .iter()
                .find_map(|(n, t)| match t {
                    Target::Captured { repo, .. } | Target::Committed { repo, .. } if n == first => Some(repo),
                    _ => None,
                })
                .with_context(|| format!("the streamed dumps are not in repository {first:?} yet"))?;
            let (dumps, added, guards) = store_again(&self.streamed, source, &repo, self.cancel)
                .with_context(|| format!("storing the streamed dumps from {first:?} into repository {repository:?}"))?;
            self.stream_guards.extend(guards);
            (dumps, added)
        };
        let selection = self.job.files.selection(internal_paths(self.job)).map_err(|e| anyhow!(e))?;
        let mut tags = vec![self.job.name.clone()];
        tags.extend(self.job.tags.iter().cloned());
        let opts = BackupOptions {
            tags,
            selection,
            cancel: Some(self.cancel.clone()),
            progress: self.progress.clone(),
            injected,
            injected_added,
            ..Default::default()
        };
        let started = jiff::Timestamp::now();
        tracing::info!("job {}: reading dumps and files into repository {repository:?}", self.job.name);
        let capture = capture(&repo, &sources, &opts).map_err(|e| anyhow!(e)).context("backup failed")?;
        // What was held must have been held for the whole capture.
        self.check_holds()?;
        for w in &capture.summary().warnings {
            tracing::warn!("job {}: {w}", self.job.name);
        }
        for l in &capture.summary().left_out {
            tracing::info!("job {}: left out {}", self.job.name, escape_text(l.as_bytes()));
        }
        let file_set =
            FileSetRecord { paths: captured, capture_started: started, capture_finished: jiff::Timestamp::now() };
        self.targets.push((repository.to_string(), Target::Captured { repo, capture: Box::new(capture), file_set }));
        Ok(())
    }

    /// Make `repository`'s snapshot exist: commit its capture with the run
    /// record.
    fn commit(&mut self, repository: &str) -> Result<()> {
        let i = self
            .targets
            .iter()
            .position(|(name, _)| name == repository)
            .with_context(|| format!("nothing captured for repository {repository:?}"))?;
        let (name, target) = self.targets.remove(i);
        let (repo, id) = match target {
            Target::Captured { repo, capture, file_set } => {
                let record = RunRecord {
                    version: RECORD_VERSION,
                    job: self.job.name.clone(),
                    run_id: self.run_id.clone(),
                    databases: self.dumps.clone(),
                    file_sets: vec![file_set],
                    hooks: self.hooks.clone(),
                };
                let result = capture
                    .commit(&repo, Some(serde_json::to_value(&record)?))
                    .with_context(|| format!("committing the snapshot to repository {name:?}"))?;
                if self.committed().is_empty() {
                    self.vars.snapshot = result.id.to_hex();
                }
                self.totals = Some(result.snapshot.summary.clone());
                (repo, result.id)
            }
            Target::Committed { .. } => bail!("repository {name:?} was committed to twice"),
        };
        self.targets.insert(i, (name, Target::Committed { repo, id }));
        Ok(())
    }

    /// Copy the job's snapshots that `name` lacks from `from`, where this
    /// attempt committed: the new snapshot and any an earlier run missed.
    fn copy(&mut self, name: &str, from: &str) -> Result<()> {
        let target = self.take_opened(name)?;
        let id = self.copy_snapshots(name, &target, from)?;
        self.targets.push((name.to_string(), Target::Committed { repo: target, id }));
        Ok(())
    }

    /// The id of the newest snapshot copied into `target` from `source_name`.
    fn copy_snapshots(&self, name: &str, target: &Repository, source_name: &str) -> Result<Id> {
        let source = self
            .targets
            .iter()
            .find_map(|(n, t)| match t {
                Target::Committed { repo, .. } if n == source_name => Some(repo),
                _ => None,
            })
            .with_context(|| format!("nothing committed to {source_name:?} to copy from"))?;
        let job = self.job.name.clone();
        let wanted = |s: &crate::engine::snapshot::Snapshot| RunRecord::of(s).is_some_and(|r| r.job == job);
        let report = crate::engine::copy::copy_snapshots(source, target, &wanted, self.progress.as_deref())
            .with_context(|| format!("copying to repository {name:?} failed (the next run catches up)"))?;
        tracing::info!(
            "job {}: copied {} snapshot(s) from {source_name:?} to {name:?} ({} new blobs)",
            self.job.name,
            report.snapshots_copied,
            report.blobs_copied
        );
        report.copied.last().and_then(|h| Id::from_hex(h)).context("the copy wrote no snapshot")
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

/// What a run of `job` never backs up: its configured own directories and
/// the local cache of remote repositories.
pub fn internal_paths(job: &Job) -> Vec<(String, PathBuf)> {
    crate::engine::select::with_cache(job.internal.clone())
}

/// `work` on each of `items`, `width` at a time; results in `items`' order.
/// The first failure (or `cancel`) sets the flag the others run with, so
/// their tools are stopped rather than finished for nothing.
fn run_concurrently<T: Send>(
    items: &[usize],
    width: usize,
    cancel: &AtomicBool,
    work: impl Fn(usize, &AtomicBool) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let stop = AtomicBool::new(false);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    let results: Vec<std::sync::Mutex<Option<Result<T>>>> = items.iter().map(|_| Default::default()).collect();
    std::thread::scope(|scope| {
        // The run's own cancel reaches the dumps through `stop`.
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let workers: Vec<_> = (0..width.min(items.len()))
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&item) = items.get(k) else { break };
                        let r = if stop.load(Ordering::Relaxed) {
                            Err(anyhow!("not started: another dump failed or the run was interrupted"))
                        } else {
                            work(item, &stop)
                        };
                        if r.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        if let Ok(mut slot) = results[k].lock() {
                            *slot = Some(r);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        finished.store(true, Ordering::Relaxed);
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(anyhow!("a dump thread ended without a result (a bug)")))
        })
        .collect()
}

/// The dumps as stored again: their entries, what they added, their guards.
type StoredAgain = (Vec<(PathBuf, Entry)>, crate::engine::backup::StreamAdded, Vec<crate::engine::running::Running>);

/// The streamed dumps, stored in `source`, read back out of it (every blob
/// authenticated) and stored in `into`: for a repository of the job that
/// cannot take them as a copy. No spool space is used.
fn store_again(
    streamed: &[(PathBuf, Entry)],
    source: &Repository,
    into: &Repository,
    cancel: &AtomicBool,
) -> Result<StoredAgain> {
    let (index, _) = source.load_index()?;
    let (mut dumps, mut added, mut guards) = (Vec::new(), crate::engine::backup::StreamAdded::default(), Vec::new());
    for (dir, entry) in streamed {
        let crate::engine::tree::EntryKind::File(content) = &entry.kind else {
            bail!("a streamed dump is not a file (a bug)");
        };
        let mut reader = crate::engine::restore::ContentReader::new(source, &index, &content.pieces);
        let stored = crate::engine::backup::store_stream(into, &mut reader, Some(cancel))?;
        guards.push(stored.running);
        if stored.size != entry.meta.size {
            bail!("the dump read back {} bytes, not {}", stored.size, entry.meta.size);
        }
        added += stored.added;
        let mut again = entry.clone();
        again.kind = crate::engine::tree::EntryKind::File(crate::engine::tree::FileContent {
            pieces: stored.pieces,
            ..content.clone()
        });
        dumps.push((dir.clone(), again));
    }
    Ok((dumps, added, guards))
}

/// A dump stored by [`StreamSink`]: the spool directory it belongs in, its
/// file, what it added, and its guard against prune.
type StreamedDump = (PathBuf, Entry, crate::engine::backup::StreamAdded, crate::engine::running::Running);

/// Where a run's streamed dumps go: the job's first repository, each
/// stored as it comes out of its tool, then added to the capture as a file
/// of its entry's directory (which is in the spool, empty).
struct StreamSink<'r> {
    repo: &'r Repository,
    dumps: &'r std::path::Path,
    stored: std::sync::Mutex<Vec<StreamedDump>>,
}

impl dump::DumpSink for StreamSink<'_> {
    fn store(&self, entry: &str, file_name: &str, reader: &mut dyn std::io::Read, cancel: &AtomicBool) -> Result<u64> {
        let stored = crate::engine::backup::store_stream(self.repo, reader, Some(cancel))
            .with_context(|| format!("storing the streamed dump {file_name}"))?;
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let now = crate::engine::tree::Timespec { secs: since.as_secs() as i64, nanos: since.subsec_nanos() };
        let meta = crate::engine::tree::Metadata {
            mode: 0o600,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            user: None,
            group: None,
            mtime: now,
            ctime: now,
            inode: 0,
            size: stored.size,
            xattrs: Vec::new(),
            flags: 0,
        };
        let content =
            crate::engine::tree::FileContent { pieces: stored.pieces, hardlink: None, changed_while_read: false };
        let file =
            Entry { name: file_name.as_bytes().to_vec(), kind: crate::engine::tree::EntryKind::File(content), meta };
        let size = stored.size;
        self.stored.lock().map_err(|_| anyhow!("a dump thread panicked"))?.push((
            self.dumps.join(entry),
            file,
            stored.added,
            stored.running,
        ));
        Ok(size)
    }
}
