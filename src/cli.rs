//! The command line: argument definitions and a thin layer that calls the
//! library and prints its results (as text, or as JSON with `--json`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::{Config, Job, RepositoryConfig};
use crate::engine::backend::Location;
use crate::engine::backup::{BackupOptions, BackupSource, backup};
use crate::engine::check::check;
use crate::engine::chunker::ChunkerParams;
use crate::engine::crypto::Id;
use crate::engine::keyfile::KeyFile;
use crate::engine::repository::{InitOptions, Repository, import_key};
use crate::engine::restore::{RestoreOptions, restore};
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::{Entry, EntryKind};
use crate::restore::{DatabaseAction, RestoreReport, What, restore_job};
use crate::runner::{RunRecord, RunReport, run_job};
use crate::units::human;
use crate::verify::{VerifyReport, verify_job};

#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Application-consistent backups into an encrypted, deduplicating repository"
)]
pub struct Cli {
    /// The job configuration: a TOML file or a directory of them.
    #[arg(long, global = true, env = "HOLDFAST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The repository: a directory, or a repository name from the config.
    #[arg(long, global = true, env = "HOLDFAST_REPOSITORY", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Read the passphrase from this file (else $HOLDFAST_PASSPHRASE, else a prompt).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run jobs: dumps, hooks and files as one snapshot per job.
    Run {
        /// Run every job of the config.
        #[arg(long, conflicts_with = "jobs")]
        all: bool,
        /// Check everything and print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        #[arg(required_unless_present = "all")]
        jobs: Vec<String>,
    },
    /// Forget snapshots by retention rules and collect garbage; with
    /// --config, each named job's (all when none) by its `retention`.
    Prune {
        jobs: Vec<String>,
        #[arg(long)]
        keep_last: Option<usize>,
        #[arg(long)]
        keep_hourly: Option<usize>,
        #[arg(long)]
        keep_daily: Option<usize>,
        #[arg(long)]
        keep_weekly: Option<usize>,
        #[arg(long)]
        keep_monthly: Option<usize>,
        #[arg(long)]
        keep_yearly: Option<usize>,
        /// Keep every snapshot younger than this before the newest (e.g. 2d).
        #[arg(long, value_parser = crate::config::parse_duration)]
        keep_within: Option<std::time::Duration>,
        /// Delete packs only after they were marked unreferenced this long ago.
        #[arg(long, default_value = "1h", value_parser = crate::config::parse_duration)]
        grace: std::time::Duration,
        /// Say what would go and why the rest stays; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Per job: last run, newest snapshot and its age, next run; exits
    /// non-zero when a job is stale (older than max_age) or failing.
    Status {
        #[arg(long)]
        json: bool,
        jobs: Vec<String>,
    },
    /// Write systemd service and timer units for jobs.
    Systemd {
        /// Where to write the units (default: print them).
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Units for a user's systemd instance instead of the system's.
        #[arg(long)]
        user: bool,
        jobs: Vec<String>,
    },
    /// Check jobs (all when none is named) without changing anything.
    Validate {
        #[arg(long)]
        json: bool,
        jobs: Vec<String>,
    },
    /// Run the `finally` hooks a killed run of JOB still owes (for systemd's ExecStopPost=).
    Recover { job: String },
    /// Create a repository and its first key.
    Init {
        /// zstd level for stored data (1-22; 0 stores uncompressed).
        #[arg(long, default_value_t = 3)]
        compression_level: i32,
        /// Average chunk size in bytes (a power of two, 4 KiB to 4 MiB).
        #[arg(long, default_value_t = ChunkerParams::DEFAULT_AVG)]
        avg_chunk_size: u32,
        /// Target pack size in bytes.
        #[arg(long, default_value_t = 16 << 20, hide = true)]
        pack_size: u32,
        /// Share keys and chunker with this repository, so `copy` can move
        /// snapshots between them without re-encrypting (asks for its passphrase
        /// via --from-passphrase-file or $HOLDFAST_FROM_PASSPHRASE).
        #[arg(long, value_name = "DIR")]
        copy_params_from: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        from_passphrase_file: Option<PathBuf>,
    },
    /// Copy snapshots (only what the target lacks) to a repository created
    /// with `init --copy-params-from`.
    Copy {
        /// The source repository (directory, or a name from the config).
        #[arg(long, value_name = "REPO")]
        from: String,
        /// The target repository (directory, or a name from the config).
        #[arg(long, value_name = "REPO")]
        to: String,
        /// Only this job's snapshots.
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Back up paths as one snapshot; prints the snapshot id.
    Backup {
        /// Tag the snapshot (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Read every file, even those unchanged since the last snapshot.
        #[arg(long)]
        no_parent: bool,
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List snapshots (with --config, of one job: `snapshots JOB`).
    Snapshots {
        /// Only this job's snapshots, in the job's repository.
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the contents of a snapshot.
    Ls {
        /// Snapshot id prefix, or `latest`.
        snapshot: String,
        /// Only this path (and what is below it).
        path: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot (or some paths of it) into a directory; with
    /// --config and a job name: restore that job's files or reload one of
    /// its databases.
    Restore {
        /// A snapshot id prefix or `latest`; with --config, a job name.
        target: String,
        /// With a job: the snapshot (id prefix or `latest`, the default).
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// With a job: restore its file sets (all, or the --path ones).
        #[arg(long, conflicts_with = "database")]
        files: bool,
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Restore only this path of the snapshot (repeatable).
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// With a job and --files: replace a non-empty --to directory.
        #[arg(long)]
        overwrite: bool,
        /// With a job: the database to restore (its name, or its entry).
        #[arg(long, value_name = "NAME")]
        database: Option<String>,
        /// Load the dump into a new database (SQLite: a new file).
        #[arg(long, value_name = "NEWNAME", requires = "database", conflicts_with_all = ["reload", "dump_to"])]
        into: Option<String>,
        /// Replace the live database: load into a temporary one, then swap.
        #[arg(long, requires = "database", conflicts_with = "dump_to")]
        reload: bool,
        /// Write the dump to FILE.
        #[arg(long, value_name = "FILE", requires = "database")]
        dump_to: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Test that jobs' newest snapshots restore: dumps load and pass their
    /// smoke queries, files match their recorded hashes.
    Verify {
        #[arg(long, conflicts_with = "jobs")]
        all: bool,
        /// Verify this snapshot instead of the newest.
        #[arg(long, default_value = "latest")]
        snapshot: String,
        /// Verify each of the job's repositories in turn (the off-site
        /// copies too), not only its first.
        #[arg(long)]
        every_repository: bool,
        #[arg(long)]
        json: bool,
        #[arg(required_unless_present = "all")]
        jobs: Vec<String>,
    },
    /// Check the repository's structure; with --read-data, every blob.
    Check {
        #[arg(long)]
        read_data: bool,
        #[arg(long)]
        json: bool,
    },
    /// Manage the repository's keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write the key file (still protected by its passphrase) to keep safe.
    Export {
        /// A printable form, with a checksum on every line.
        #[arg(long)]
        paper: bool,
        /// Write to FILE instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Put an exported key (file or paper form) back into the repository.
    Import { file: PathBuf },
    /// Change the passphrase of the key that unlocks the repository.
    Passwd(NewPassphrase),
    /// Add a key for another passphrase.
    Add(NewPassphrase),
}

#[derive(Debug, Args)]
pub struct NewPassphrase {
    /// Read the new passphrase from this file (else $HOLDFAST_NEW_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
}

/// Parse the command line and run it.
pub fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    init_logging();
    let config = match &cli.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    // `--repo NAME` names a configured repository; anything else is a path.
    let job_repo: Option<RepositoryConfig> = match (&config, &cli.command) {
        (Some(c), Command::Snapshots { job: Some(j), .. }) => {
            let job = c.job(j)?;
            Some(c.repositories[&job.repositories[0]].clone())
        }
        (Some(c), _) => cli.repo.as_ref().and_then(|r| c.repositories.get(&*r.to_string_lossy())).cloned(),
        _ => None,
    };
    let repo_path = || -> Result<Location> {
        match &job_repo {
            Some(r) => crate::secrets::location(r),
            None => match &cli.repo {
                Some(arg) => crate::secrets::location_from_argument(arg),
                None => {
                    Err(anyhow!("no repository given: pass --repo DIR|s3://BUCKET/PREFIX or set HOLDFAST_REPOSITORY"))
                }
            },
        }
    };
    let passphrase = || match (&job_repo, &cli.passphrase_file) {
        (Some(r), None) => crate::secrets::resolve(&r.passphrase, &r.name),
        _ => read_passphrase(cli.passphrase_file.as_deref(), "HOLDFAST_PASSPHRASE", "Repository passphrase", false),
    };
    let open = || -> Result<Repository> { Ok(Repository::open(&repo_path()?, &passphrase()?)?) };
    let threads = crate::engine::parallel::cpus();
    // `--repo NAME` for job restores and verifies: which of the job's repositories.
    let repo_name = cli.repo.as_ref().map(|r| r.to_string_lossy().into_owned());

    match &cli.command {
        Command::Recover { job } => {
            let config = config.as_ref().context("`recover` needs --config PATH (or $HOLDFAST_CONFIG)")?;
            let job = config.job(job)?;
            let _lock = crate::spool::JobLock::acquire(&job.spool, &job.name)?;
            match crate::journal::recover(job)? {
                Some(r) => println!(
                    "job {}: run {} (pid {}) had not finished; ran {} owed finally hook(s), {} failed",
                    job.name, r.run_id, r.pid, r.hooks_run, r.hooks_failed
                ),
                None => println!("job {}: nothing to recover", job.name),
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Run { all, json, jobs, dry_run } => {
            let config = config.as_ref().context("`run` needs --config PATH (or $HOLDFAST_CONFIG)")?;
            if *dry_run {
                return validate_jobs(config, if *all { &[] } else { jobs }, true, *json);
            }
            return run_jobs(config, *all, jobs, *json);
        }
        Command::Prune {
            jobs,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            grace,
            dry_run,
            json,
        } => {
            let reports = match (&config, cli.repo.is_some() && job_repo.is_none()) {
                (Some(config), false) if jobs.is_empty() || config.jobs.contains_key(&jobs[0]) => {
                    let mut all = Vec::new();
                    for job in select_jobs(config, jobs)? {
                        all.extend(crate::prune::prune_job(config, job, *grace, *dry_run)?);
                    }
                    all
                }
                _ => {
                    let policy = crate::retention::Policy {
                        last: *keep_last,
                        hourly: *keep_hourly,
                        daily: *keep_daily,
                        weekly: *keep_weekly,
                        monthly: *keep_monthly,
                        yearly: *keep_yearly,
                        within: keep_within.map(crate::config::DurationSpec),
                    };
                    if policy.is_empty() {
                        bail!(
                            "say what to keep: --keep-last, --keep-daily, ... (without one, prune would keep only the newest)"
                        );
                    }
                    vec![crate::prune::prune_ad_hoc(&open()?, &policy, *grace, *dry_run)?]
                }
            };
            if *json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    println!(
                        "repository {}{}{}:",
                        r.repository,
                        r.job.as_deref().map(|j| format!(", job {j}")).unwrap_or_default(),
                        if r.dry_run { " (dry run: nothing changed)" } else { "" }
                    );
                    for d in &r.decisions {
                        let when = local_time(&d.time);
                        if d.keep {
                            println!("  keep   {} {when}  ({})", &d.id[..8], d.reasons.join(", "));
                        } else {
                            println!("  forget {} {when}", &d.id[..8]);
                        }
                    }
                    let g = &r.gc;
                    println!(
                        "  {} snapshot(s) {}; packs: {} newly marked unused, {} unmarked (in use again), {} waiting out the grace period, {} deleted; {} leftovers deleted; {} freed",
                        r.forgotten,
                        if r.dry_run { "would be forgotten" } else { "forgotten" },
                        g.packs_marked,
                        g.packs_unmarked,
                        g.packs_waiting,
                        g.packs_deleted,
                        g.leftovers_deleted,
                        human(g.bytes_deleted)
                    );
                }
            }
        }
        Command::Status { json, jobs } => {
            let config = config.as_ref().context("`status` needs --config PATH (or $HOLDFAST_CONFIG)")?;
            let jobs = select_jobs(config, jobs)?;
            let all = crate::status::status(config, &jobs)?;
            if *json {
                print_json(&all)?;
            } else {
                print_status(&all);
            }
            return Ok(if all.iter().all(|s| s.healthy()) { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Systemd { output, user, jobs } => {
            let config = config.as_ref().context("`systemd` needs --config PATH (or $HOLDFAST_CONFIG)")?;
            let config_path = std::path::absolute(cli.config.as_ref().context("no config path")?)?;
            let jobs = select_jobs(config, jobs)?;
            let units = crate::systemd::units(config, &config_path, &jobs, *user)?;
            match output {
                Some(dir) => {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                    for (name, text) in &units {
                        let p = dir.join(name);
                        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                        println!("wrote {}", p.display());
                    }
                }
                None => {
                    for (name, text) in &units {
                        println!("# {name}\n{text}");
                    }
                }
            }
        }
        Command::Validate { json, jobs } => {
            let config = config.as_ref().context("`validate` needs --config PATH (or $HOLDFAST_CONFIG)")?;
            return validate_jobs(config, jobs, false, *json);
        }
        Command::Copy { from, to, job, json } => {
            let open_named = |name: &str| -> Result<Repository> {
                match config.as_ref().and_then(|c| c.repositories.get(name)) {
                    Some(r) => crate::runner::open_repository(r),
                    None => {
                        let env = if name == from { "HOLDFAST_FROM_PASSPHRASE" } else { "HOLDFAST_PASSPHRASE" };
                        let pass = read_passphrase(None, env, &format!("Passphrase of {name}"), false)?;
                        Ok(Repository::open(&crate::secrets::location_from_argument(Path::new(name))?, &pass)?)
                    }
                }
            };
            let (source, target) = (open_named(from)?, open_named(to)?);
            let wanted = |s: &Snapshot| job.as_ref().is_none_or(|j| RunRecord::of(s).is_some_and(|r| &r.job == j));
            let report = crate::engine::copy::copy_snapshots(&source, &target, &wanted)?;
            if *json {
                print_json(&report)?;
            } else {
                println!(
                    "copied {} snapshot(s) ({} already there): {} blobs, {}",
                    report.snapshots_copied,
                    report.snapshots_present,
                    report.blobs_copied,
                    human(report.bytes_copied)
                );
            }
        }
        Command::Init { compression_level, avg_chunk_size, pack_size, copy_params_from, from_passphrase_file } => {
            let path = repo_path()?;
            let pass = match &job_repo {
                Some(_) => passphrase()?,
                None => read_passphrase(
                    cli.passphrase_file.as_deref(),
                    "HOLDFAST_PASSPHRASE",
                    "New repository passphrase",
                    true,
                )?,
            };
            let opts = InitOptions {
                compression_level: *compression_level,
                chunker: ChunkerParams::with_average(*avg_chunk_size).map_err(|e| anyhow!(e))?,
                pack_size: *pack_size,
                master: None,
            };
            let opts = match copy_params_from {
                Some(src) => {
                    let pass = read_passphrase(
                        from_passphrase_file.as_deref(),
                        "HOLDFAST_FROM_PASSPHRASE",
                        &format!("Passphrase of {}", src.display()),
                        false,
                    )?;
                    let other = Repository::open(&crate::secrets::location_from_argument(src)?, &pass)?;
                    InitOptions { chunker: other.config().chunker, master: Some(other.master_key().clone()), ..opts }
                }
                None => opts,
            };
            let repo = Repository::init(&path, &pass, &opts)?;
            eprintln!(
                "created repository {} at {}\nKeep its key safe: without the key and passphrase the backups cannot be read.\nExport it now with `holdfast key export --repo {} --paper`.",
                repo.config().id.short(),
                path,
                path
            );
        }
        Command::Backup { tags, no_parent, json, paths } => {
            let repo = open()?;
            let sources = paths.iter().map(|p| BackupSource::same_path(p)).collect::<Result<Vec<_>, _>>()?;
            let opts = BackupOptions { tags: tags.clone(), use_parent: !no_parent, threads, ..Default::default() };
            let result = backup(&repo, &sources, &opts)?;
            for w in &result.snapshot.summary.warnings {
                eprintln!("warning: {w}");
            }
            if *json {
                print_json(&SnapshotView::new(&result.id, &result.snapshot))?;
            } else {
                let s = &result.snapshot.summary;
                eprintln!(
                    "snapshot {} saved: {} files, {} dirs, {} ({} unchanged files); read {}, added {} to the repository in {:.1}s",
                    result.id.short(),
                    s.files,
                    s.dirs,
                    human(s.bytes),
                    s.files_unchanged,
                    human(s.bytes_read),
                    human(s.bytes_added),
                    s.duration_secs
                );
                println!("{}", result.id);
            }
        }
        Command::Snapshots { job, json } => {
            let repo = open()?;
            let (mut snaps, bad) = repo.snapshots()?;
            if let Some(job) = job {
                snaps.retain(|(_, s)| RunRecord::of(s).is_some_and(|r| &r.job == job));
                if !*json {
                    print_job_snapshots(&snaps);
                    return Ok(ExitCode::SUCCESS);
                }
            }
            for (name, e) in &bad {
                eprintln!("warning: snapshot {name} cannot be read: {e}");
            }
            if *json {
                print_json(&snaps.iter().map(|(id, s)| SnapshotView::new(id, s)).collect::<Vec<_>>())?;
            } else {
                println!("{:<8}  {:<25}  {:<12}  {:>10}  {:<12}  paths", "id", "time", "host", "size", "tags");
                for (id, s) in &snaps {
                    println!(
                        "{:<8}  {:<25}  {:<12}  {:>10}  {:<12}  {}",
                        id.short(),
                        local_time(&s.time),
                        s.host,
                        human(s.summary.bytes),
                        s.tags.join(","),
                        s.paths.join(" ")
                    );
                }
            }
        }
        Command::Ls { snapshot, path, json } => {
            let repo = open()?;
            let (_, snap) = repo.find_snapshot(snapshot)?;
            let entries = list(&repo, &snap, path.as_deref())?;
            if *json {
                print_json(&entries)?;
            } else {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    writeln!(
                        out,
                        "{} {:>8} {:>8} {:>12} {}  {}",
                        e.mode_string, e.user, e.group, e.size, e.mtime, e.path
                    )?;
                }
            }
        }
        Command::Restore { target, snapshot, files, to, paths, overwrite, database, into, reload, dump_to, json }
            if config.as_ref().is_some_and(|c| c.jobs.contains_key(target)) =>
        {
            let config = config.as_ref().context("no config")?;
            let job = config.job(target)?;
            let what = if *files || database.is_none() {
                let to = to.clone().context("restoring files needs --to DIR")?;
                What::Files { paths: paths.clone(), to, overwrite: *overwrite }
            } else {
                let action = match (into, reload, dump_to) {
                    (Some(n), _, _) => DatabaseAction::Into(n.clone()),
                    (_, true, _) => DatabaseAction::Reload,
                    (_, _, Some(f)) => DatabaseAction::DumpTo(f.clone()),
                    _ => bail!("with --database, say where it goes: --into NEWNAME, --reload or --dump-to FILE"),
                };
                What::Database { name: database.clone().unwrap_or_default(), action }
            };
            let report = restore_job(config, job, repo_name.as_deref(), snapshot, &what)?;
            if *json {
                print_json(&report)?;
            } else {
                print_restore_report(&report);
            }
        }
        Command::Restore { target: snapshot, to, paths, json, .. } => {
            let to = to.as_ref().context("restore needs --to DIR")?;
            let repo = open()?;
            let (id, snap) = repo.find_snapshot(snapshot)?;
            let started = std::time::Instant::now();
            let summary =
                restore(&repo, &snap, &RestoreOptions { target: to.clone(), include: paths.clone(), threads })?;
            for w in &summary.warnings {
                eprintln!("warning: {w}");
            }
            if *json {
                print_json(&summary)?;
            } else {
                eprintln!(
                    "restored snapshot {} to {}: {} files, {} dirs, {} in {:.1}s",
                    id.short(),
                    to.display(),
                    summary.files,
                    summary.dirs,
                    human(summary.bytes),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Command::Verify { all, snapshot, every_repository, json, jobs } => {
            let config = config.as_ref().context("`verify` needs --config PATH (or $HOLDFAST_CONFIG)")?;
            // `--all` and job names exclude each other: no names means all.
            debug_assert!(!*all || jobs.is_empty());
            if *every_repository && repo_name.is_some() {
                bail!("give --repo NAME or --every-repository, not both");
            }
            let mut reports = Vec::new();
            // A repository that cannot be read does not stop the others' tests.
            let mut errors = Vec::new();
            for job in select_jobs(config, jobs)? {
                let froms: Vec<Option<&str>> = if *every_repository {
                    job.repositories.iter().map(|r| Some(r.as_str())).collect()
                } else {
                    vec![repo_name.as_deref()]
                };
                for from in froms {
                    match verify_job(config, job, from, snapshot) {
                        Ok(report) => {
                            if !*json {
                                print_verify_report(&report);
                            }
                            reports.push(report);
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            if *json {
                print_json(&reports)?;
            }
            if !errors.is_empty() {
                bail!("{}", errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("; "));
            }
            if reports.iter().any(|r| !r.ok) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Check { read_data, json } => {
            let repo = open()?;
            let report = check(&repo, *read_data, threads)?;
            if *json {
                print_json(&report)?;
            } else {
                for n in &report.notes {
                    println!("note: {n}");
                }
                for p in &report.problems {
                    let deps = if p.snapshots.is_empty() {
                        "no snapshot depends on it".to_string()
                    } else {
                        format!("snapshots that depend on it: {}", p.snapshots.join(", "))
                    };
                    println!("DAMAGED {}: {}; {}", p.object, p.detail, deps);
                }
                println!(
                    "{}: {} snapshots, {} index files, {} packs, {} blobs, {} trees checked{}",
                    if report.healthy() { "healthy" } else { "NOT HEALTHY" },
                    report.snapshots,
                    report.index_files,
                    report.packs,
                    report.blobs,
                    report.trees_checked,
                    if *read_data {
                        format!(", {} read and authenticated", human(report.bytes_read))
                    } else {
                        String::new()
                    }
                );
            }
            if !report.healthy() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Key(k) => key_command(k, &repo_path()?, &passphrase, &open)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The named jobs, or all when none is named.
fn select_jobs<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a Job>> {
    if names.is_empty() {
        return Ok(config.jobs.values().collect());
    }
    Ok(names.iter().map(|n| config.job(n)).collect::<Result<_, _>>()?)
}

fn print_status(all: &[crate::status::JobStatus]) {
    println!(
        "{:<16} {:<10} {:<9} {:<20} {:>10} {:>9} {:>10} {:>10}  next run",
        "job", "repo", "last run", "newest snapshot", "age", "snapshots", "added", "max age"
    );
    let age =
        |s: i64| if s >= 86400 { format!("{:.1}d", s as f64 / 86400.0) } else { format!("{:.1}h", s as f64 / 3600.0) };
    for s in all {
        let last = match &s.last_run {
            Some(r) if r.ok => "ok",
            Some(_) => "FAILED",
            None => "never",
        };
        let newest = match (&s.newest_snapshot, &s.newest_time) {
            (Some(id), Some(t)) => format!("{} {}", &id[..8], t.strftime("%m-%d %H:%M")),
            _ => "none".into(),
        };
        println!(
            "{:<16} {:<10} {:<9} {:<20} {:>10} {:>9} {:>10} {:>10}  {}{}",
            s.job,
            s.repository,
            last,
            newest,
            s.age_secs.map(age).unwrap_or_else(|| "-".into()),
            s.snapshots,
            s.last_run.as_ref().map(|r| human(r.bytes_added)).unwrap_or_else(|| "-".into()),
            s.max_age_secs.map(|m| age(m as i64)).unwrap_or_else(|| "-".into()),
            s.next_run.clone().unwrap_or_else(|| "-".into()),
            if s.stale { "  STALE" } else { "" }
        );
        for p in &s.problems {
            println!("    PROBLEM: {p}");
        }
        if let Some(e) = s.last_run.as_ref().and_then(|r| r.error.as_ref()) {
            println!("    last error: {e}");
        }
    }
}

/// Validate the named jobs (all when none); with `plan`, print what a run would do.
fn validate_jobs(config: &Config, names: &[String], plan: bool, json: bool) -> Result<ExitCode> {
    let jobs = select_jobs(config, names)?;
    let v = crate::validate::validate(config, &jobs, plan);
    if json {
        print_json(&v)?;
    } else {
        for p in &v.plans {
            println!("plan of job {}:", p.job);
            for (i, line) in p.steps.iter().enumerate() {
                let when = match line.step.when {
                    crate::plan::When::Ok => "",
                    crate::plan::When::Failed => " [only after a failure]",
                    crate::plan::When::Always => " [always]",
                };
                println!("  {:>2}. {}{when}", i + 1, step_name(&line.step.step));
                for d in &line.details {
                    println!("        {d}");
                }
            }
        }
        for f in &v.findings {
            println!("{} {} [{}]: {}", if f.ok { "ok     " } else { "PROBLEM" }, f.job, f.check, f.message);
        }
        let problems = v.findings.iter().filter(|f| !f.ok).count();
        println!(
            "{}",
            if problems == 0 { "valid: no problems found".to_string() } else { format!("{problems} problem(s) found") }
        );
    }
    Ok(if v.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn step_name(step: &crate::plan::Step) -> String {
    use crate::plan::Step;
    match step {
        Step::PrepareSpool => "prepare the spool".into(),
        Step::Hooks { phase, count } => format!("{} hooks ({count})", crate::hooks::phase_name(*phase)),
        Step::Hold { hooks, locks } => format!("start holding ({hooks} hold hooks, {locks} locks)"),
        Step::Release => "release what is held".into(),
        Step::Dump { entry, kind, name, .. } => format!("dump {} {name} (entry {entry})", kind.as_str()),
        Step::Capture { .. } => "read dumps and files into the repository".into(),
        Step::Commit { .. } => "commit the snapshot".into(),
        Step::CleanSpool => "clean the spool".into(),
    }
}

/// Run the named jobs (or all), one after the other; fails if any failed.
fn run_jobs(config: &Config, all: bool, names: &[String], json: bool) -> Result<ExitCode> {
    // `--all` and job names exclude each other: no names means all.
    debug_assert!(!all || names.is_empty());
    let jobs = select_jobs(config, names)?;
    // Dumps and credential files are private whatever the tools create them with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, cancel.clone()).context("installing the signal handler")?;
    }
    let mut reports = Vec::new();
    for job in jobs {
        let report = match run_job(config, job, &cancel) {
            Ok(r) => r,
            Err(e) => RunReport {
                job: job.name.clone(),
                ok: false,
                snapshot: None,
                error: Some(format!("{e:#}")),
                attempts: 0,
                summary: format!("job {}: not run: {e:#}", job.name),
                bytes_read: 0,
                bytes_added: 0,
            },
        };
        if !json {
            if report.ok {
                println!("{}", report.summary);
            } else {
                eprintln!("{}", report.summary);
            }
        }
        reports.push(report);
    }
    if json {
        print_json(&reports)?;
    }
    Ok(if reports.iter().all(|r| r.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_job_snapshots(snaps: &[(Id, Snapshot)]) {
    println!("{:<8}  {:<25}  {:>10}  holds", "id", "time", "size");
    for (id, s) in snaps {
        let mut holds: Vec<String> = Vec::new();
        if let Some(r) = RunRecord::of(s) {
            for d in &r.databases {
                holds.push(format!("{} {} ({})", d.kind.as_str(), d.name, human(d.size)));
            }
            for f in &r.file_sets {
                holds.extend(f.paths.iter().map(|p| p.display().to_string()));
            }
        }
        println!(
            "{:<8}  {:<25}  {:>10}  {}",
            id.short(),
            local_time(&s.time),
            human(s.summary.bytes),
            holds.join(", ")
        );
    }
}

fn print_restore_report(r: &RestoreReport) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    match (&r.files, &r.database) {
        (Some(f), _) => println!(
            "job {}: restored {} files, {} dirs, {} from snapshot {} into {}",
            r.job,
            f.files,
            f.dirs,
            human(f.bytes),
            &r.snapshot[..8],
            r.target
        ),
        (_, Some(db)) => {
            println!("job {}: restored database {db} from snapshot {} into {}", r.job, &r.snapshot[..8], r.target);
            if let Some(k) = &r.kept_as {
                println!("the previous database is kept as {k}; drop it when you are satisfied");
            }
        }
        _ => {}
    }
    for s in &r.smoke {
        println!("  {s}");
    }
}

fn print_verify_report(r: &VerifyReport) {
    println!(
        "job {}: snapshot {} in {} {} in {:.1}s",
        r.job,
        &r.snapshot[..8],
        r.repository,
        if r.ok { "verified" } else { "FAILED verification" },
        r.duration_secs
    );
    for d in &r.databases {
        let rows: u64 = d.tables.iter().map(|t| t.1).sum();
        println!(
            "  database {}: loaded into scratch {} in {:.1}s, {} tables, {} rows{}",
            d.name,
            d.scratch,
            d.load_secs,
            d.tables.len(),
            rows,
            d.error.as_deref().map(|e| format!(" — ERROR: {e}")).unwrap_or_default()
        );
        for s in &d.smoke {
            println!("    {s}");
        }
    }
    if let Some(f) = &r.files {
        println!("  files: {} files, {} read back and compared with their recorded hashes", f.files, human(f.bytes));
    }
    for p in &r.problems {
        println!("  PROBLEM: {p}");
    }
}

/// Log lines go to stderr (journald adds its own timestamps under systemd).
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn key_command(
    cmd: &KeyCommand,
    path: &Location,
    passphrase: &dyn Fn() -> Result<Vec<u8>>,
    open: &dyn Fn() -> Result<Repository>,
) -> Result<()> {
    match cmd {
        KeyCommand::Export { paper, output } => {
            let key = open()?.key_file()?;
            let text = if *paper { key.to_paper()? } else { key.to_json() + "\n" };
            match output {
                Some(f) => {
                    std::fs::write(f, text).with_context(|| format!("writing {}", f.display()))?;
                    eprintln!("key written to {}", f.display());
                }
                None => print!("{text}"),
            }
        }
        KeyCommand::Import { file } => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let key = if text.trim_start().starts_with('{') {
                KeyFile::from_json(text.as_bytes())?
            } else {
                KeyFile::from_paper(&text)?
            };
            import_key(path, &key, &passphrase()?)?;
            eprintln!("key imported into {path}");
        }
        KeyCommand::Passwd(np) => {
            let mut repo = open()?;
            let new =
                read_passphrase(np.new_passphrase_file.as_deref(), "HOLDFAST_NEW_PASSPHRASE", "New passphrase", true)?;
            repo.change_passphrase(&new)?;
            eprintln!("passphrase changed");
        }
        KeyCommand::Add(np) => {
            let repo = open()?;
            let new = read_passphrase(
                np.new_passphrase_file.as_deref(),
                "HOLDFAST_NEW_PASSPHRASE",
                "Passphrase for the new key",
                true,
            )?;
            let name = repo.add_key(&new)?;
            eprintln!("added key {}", &name[..8]);
        }
    }
    Ok(())
}

/// A passphrase from a file, the environment, or (on a terminal) a prompt.
fn read_passphrase(file: Option<&Path>, env: &str, prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    if let Some(f) = file {
        return crate::secrets::read_passphrase_file(f);
    }
    if env == "HOLDFAST_PASSPHRASE" {
        if let Some(p) = crate::secrets::passphrase_from_environment()? {
            return Ok(p);
        }
    } else if let Some(v) = std::env::var_os(env) {
        use std::os::unix::ffi::OsStrExt;
        if v.is_empty() {
            bail!("${env} is set but empty");
        }
        return Ok(v.as_bytes().to_vec());
    }
    if !std::io::stdin().is_terminal() {
        return Err(crate::Error::NoPassphrase.into());
    }
    let first = rpassword::prompt_password(format!("{prompt}: "))?;
    if confirm && rpassword::prompt_password("Repeat it: ")? != first {
        bail!("the passphrases differ");
    }
    if first.is_empty() {
        bail!("empty passphrase");
    }
    Ok(first.into_bytes())
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A snapshot as shown by `snapshots --json` and `backup --json`.
#[derive(Serialize)]
struct SnapshotView<'a> {
    id: String,
    short_id: String,
    #[serde(flatten)]
    snapshot: &'a Snapshot,
}

impl<'a> SnapshotView<'a> {
    fn new(id: &Id, snapshot: &'a Snapshot) -> Self {
        SnapshotView { id: id.to_hex(), short_id: id.short(), snapshot }
    }
}

/// One line of `ls`.
#[derive(Serialize)]
struct LsEntry {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    mode: u32,
    #[serde(skip)]
    mode_string: String,
    user: String,
    group: String,
    size: u64,
    mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    link_target: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    changed_while_read: bool,
}

fn list(repo: &Repository, snap: &Snapshot, under: Option<&Path>) -> Result<Vec<LsEntry>> {
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
                out.push(ls_entry(&path, e));
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

fn ls_entry(path: &Path, e: &Entry) -> LsEntry {
    let kind = match &e.kind {
        EntryKind::File(_) => "file",
        EntryKind::Dir { .. } => "dir",
        EntryKind::Symlink { .. } => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice { .. } => "chardev",
        EntryKind::BlockDevice { .. } => "blockdev",
        EntryKind::Socket => "socket",
    };
    let mut mode_string = String::from(e.kind.type_char());
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        mode_string.push(if e.meta.mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    let mtime =
        jiff::Timestamp::new(e.meta.mtime.secs, e.meta.mtime.nanos as i32).map(|t| local_time(&t)).unwrap_or_default();
    LsEntry {
        path: path.to_string_lossy().into_owned(),
        kind,
        mode: e.meta.mode,
        mode_string,
        user: e.meta.user.clone().unwrap_or_else(|| e.meta.uid.to_string()),
        group: e.meta.group.clone().unwrap_or_else(|| e.meta.gid.to_string()),
        size: e.meta.size,
        mtime,
        link_target: match &e.kind {
            EntryKind::Symlink { target } => Some(String::from_utf8_lossy(target).into_owned()),
            _ => None,
        },
        changed_while_read: matches!(&e.kind, EntryKind::File(c) if c.changed_while_read),
    }
}

fn local_time(t: &jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %z").to_string()
}
