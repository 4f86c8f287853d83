//! The command line: argument definitions and a thin layer that calls the
//! library and prints its results (as text, or as JSON with `--json`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::exit::{EXIT_CODES_HELP, Exit, Interrupt, Usage};

/// `println!` that returns an error instead of panicking when stdout is
/// gone (`holdfast ls | head`): `main` ends quietly on a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => { writeln!(std::io::stdout(), $($arg)*)? };
}

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
use crate::record::RunRecord;
use crate::restore::{DatabaseAction, RestoreReport, Source, What, restore_job};
use crate::runner::{RunReport, run_job};
use crate::units::human;
use crate::verify::{VerifyReport, verify_job};

#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Application-consistent backups into an encrypted, deduplicating repository",
    after_help = EXIT_CODES_HELP
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
        #[arg(long, value_parser = crate::units::parse_duration)]
        keep_within: Option<std::time::Duration>,
        /// Delete packs only after they were marked unreferenced this long ago.
        #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
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
        /// zstd level for stored data (-7 to 22: negative levels are faster,
        /// 0 stores uncompressed).
        #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
        compression_level: i32,
        /// Average chunk size in bytes (a power of two, 4 KiB to 4 MiB).
        #[arg(long, default_value_t = ChunkerParams::DEFAULT_AVG)]
        avg_chunk_size: u32,
        /// Target pack size in bytes.
        #[arg(long, default_value_t = 16 << 20, hide = true)]
        pack_size: u32,
        /// Share keys and chunker with this repository (a directory, an
        /// s3:// URL, or a repository name from the config), so `copy` can
        /// move snapshots between them without re-encrypting. Its passphrase:
        /// the configured source for a name, else --from-passphrase-file or
        /// $HOLDFAST_FROM_PASSPHRASE.
        #[arg(long, value_name = "REPO")]
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
        /// With `latest`: take the newest readable snapshot even if some
        /// snapshot cannot be read (it might be newer).
        #[arg(long)]
        skip_damaged: bool,
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
        /// Write the dump to FILE (created 0600; it must not exist).
        #[arg(long, value_name = "FILE", requires = "database")]
        dump_to: Option<PathBuf>,
        /// With `latest`: take the newest readable snapshot even if some
        /// snapshot cannot be read (it might be newer).
        #[arg(long)]
        skip_damaged: bool,
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
        /// With `latest`: take the newest readable snapshot even if some
        /// snapshot cannot be read (it might be newer).
        #[arg(long)]
        skip_damaged: bool,
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
    /// Repair a damaged repository: rebuild its index from the packs, or
    /// write snapshots without what can no longer be read.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Remove snapshots by id (prefix); `prune` then frees their space.
    Forget {
        #[arg(required = true, value_name = "SNAPSHOT")]
        snapshots: Vec<String>,
        /// Say what would be forgotten; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the packs themselves (after index files were
    /// lost or damaged); recreates missing repository directories.
    Index {
        /// Read the packs and say what would be indexed; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// For every snapshot that needs something that cannot be read, write a
    /// new snapshot without it (tagged `repaired`, naming what was lost).
    /// The damaged snapshots stay until you `forget` them.
    Snapshots {
        /// Say what would be lost; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also read and authenticate every pack (finds damaged blobs).
        #[arg(long)]
        read_data: bool,
        #[arg(long)]
        json: bool,
    },
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

/// Parse the command line and run it; the exit code it stands for.
pub fn run() -> Result<Exit> {
    let cli = Cli::parse();
    init_logging();
    // Everything holdfast creates for itself (spool, state, dumps, keys,
    // restore staging) starts private; wider modes are set explicitly.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let config = match &cli.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    if let Some(c) = &config {
        crate::process::declare_secret_variables(c.secret_variables());
    }
    // Commands that stop cleanly on SIGTERM/SIGINT take the signals.
    let interrupt = match &cli.command {
        Command::Run { dry_run: false, .. }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Verify { .. }
        | Command::Copy { .. } => Interrupt::install().context("installing the signal handlers")?,
        _ => Interrupt::none(),
    };
    let needs_config = |cmd: &str| Usage(format!("`{cmd}` needs --config PATH (or $HOLDFAST_CONFIG)"));
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
            let config = config.as_ref().ok_or_else(|| needs_config("recover"))?;
            let job = config.job(job)?;
            let _lock = crate::spool::JobLock::acquire(&job.spool, &job.name, "recovery")?;
            match crate::journal::recover(job)? {
                Some(r) => {
                    outln!("job {}: {}", job.name, r.describe());
                    if r.hooks_failed > 0 {
                        return Ok(Exit::Failed);
                    }
                }
                None => outln!("job {}: nothing to recover", job.name),
            }
            return Ok(Exit::Success);
        }
        Command::Run { all, json, jobs, dry_run } => {
            let config = config.as_ref().ok_or_else(|| needs_config("run"))?;
            if *dry_run {
                return validate_jobs(config, if *all { &[] } else { jobs }, true, *json);
            }
            return run_jobs(config, *all, jobs, *json, &interrupt);
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
                        within: keep_within.map(crate::units::DurationSpec),
                    };
                    if policy.is_empty() {
                        return Err(Usage(
                            "say what to keep: --keep-last, --keep-daily, ... (without one, prune would keep only the newest)"
                                .into(),
                        )
                        .into());
                    }
                    vec![crate::prune::prune_ad_hoc(&open()?, &policy, *grace, *dry_run)?]
                }
            };
            if *json {
                print_json(&reports)?;
            } else {
                for r in &reports {
                    outln!(
                        "repository {}{}{}:",
                        r.repository,
                        r.job.as_deref().map(|j| format!(", job {j}")).unwrap_or_default(),
                        if r.dry_run { " (dry run: nothing changed)" } else { "" }
                    );
                    for d in &r.decisions {
                        let when = local_time(&d.time);
                        if d.keep {
                            outln!("  keep   {} {when}  ({})", &d.id[..8], d.reasons.join(", "));
                        } else {
                            outln!("  forget {} {when}", &d.id[..8]);
                        }
                    }
                    let g = &r.gc;
                    outln!(
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
            let config = config.as_ref().ok_or_else(|| needs_config("status"))?;
            let jobs = select_jobs(config, jobs)?;
            let all = crate::status::status(config, &jobs)?;
            if *json {
                print_json(&all)?;
            } else {
                print_status(&all)?;
            }
            return Ok(all.iter().map(|s| s.exit()).fold(Exit::Success, Exit::worst));
        }
        Command::Systemd { output, user, jobs } => {
            let config = config.as_ref().ok_or_else(|| needs_config("systemd"))?;
            let config_path = std::path::absolute(cli.config.as_ref().context("no config path")?)?;
            let jobs = select_jobs(config, jobs)?;
            let units = crate::systemd::units(config, &config_path, &jobs, *user)?;
            match output {
                Some(dir) => {
                    crate::fsutil::create_dir_all(dir, 0o755)?;
                    for (name, text) in &units {
                        let p = dir.join(name);
                        // Units hold no secret (credentials are loaded by path).
                        crate::fsutil::write_atomically(&p, text.as_bytes(), 0o644)?;
                        outln!("wrote {}", p.display());
                    }
                }
                None => {
                    for (name, text) in &units {
                        outln!("# {name}\n{text}");
                    }
                }
            }
        }
        Command::Validate { json, jobs } => {
            let config = config.as_ref().ok_or_else(|| needs_config("validate"))?;
            return validate_jobs(config, jobs, false, *json);
        }
        Command::Copy { from, to, job, json } => {
            let open_named = |name: &str| -> Result<Repository> {
                match config.as_ref().and_then(|c| c.repositories.get(name)) {
                    Some(r) => crate::secrets::open_repository(r),
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
                outln!(
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
                    // A configured repository's name opens it with its own
                    // passphrase source; a path or URL asks for one.
                    let configured = config.as_ref().and_then(|c| c.repositories.get(&*src.to_string_lossy()));
                    let other = match (configured, from_passphrase_file) {
                        (Some(r), None) => crate::secrets::open_repository(r)?,
                        (configured, file) => {
                            let location = match configured {
                                Some(r) => crate::secrets::location(r)?,
                                None => crate::secrets::location_from_argument(src)?,
                            };
                            let pass = read_passphrase(
                                file.as_deref(),
                                "HOLDFAST_FROM_PASSPHRASE",
                                &format!("Passphrase of {}", src.display()),
                                false,
                            )?;
                            Repository::open(&location, &pass).with_context(|| {
                                format!("opening {} (the repository to copy parameters from)", src.display())
                            })?
                        }
                    };
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
            let opts = BackupOptions {
                tags: tags.clone(),
                use_parent: !no_parent,
                threads,
                cancel: Some(interrupt.flag().clone()),
                ..Default::default()
            };
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
                outln!("{}", result.id);
            }
            if result.snapshot.summary.incomplete {
                eprintln!(
                    "warning: snapshot {} is INCOMPLETE: {} file(s) could not be backed up as they were (see the warnings above)",
                    result.id.short(),
                    s_count(&result.snapshot.summary)
                );
                return Ok(Exit::Warnings);
            }
        }
        Command::Snapshots { job, json } => {
            let repo = open()?;
            let (mut snaps, bad) = repo.snapshots()?;
            for (name, e) in &bad {
                eprintln!(
                    "warning: snapshot {} cannot be read: {e} (`holdfast check` says more)",
                    &name[..name.len().min(8)]
                );
            }
            if let Some(job) = job {
                snaps.retain(|(_, s)| RunRecord::of(s).is_some_and(|r| &r.job == job));
                if !*json {
                    print_job_snapshots(&snaps)?;
                    return Ok(Exit::Success);
                }
            }
            if *json {
                print_json(&snaps.iter().map(|(id, s)| SnapshotView::new(id, s)).collect::<Vec<_>>())?;
            } else {
                outln!("{:<8}  {:<25}  {:<12}  {:>10}  {:<12}  paths", "id", "time", "host", "size", "tags");
                for (id, s) in &snaps {
                    outln!(
                        "{:<8}  {:<25}  {:<12}  {:>10}  {:<12}  {}",
                        id.short(),
                        local_time(&s.time),
                        escape_text(s.host.as_bytes()),
                        human(s.summary.bytes),
                        escape_text(s.tags.join(",").as_bytes()),
                        escape_text(s.paths.join(" ").as_bytes())
                    );
                }
            }
        }
        Command::Ls { snapshot, path, skip_damaged, json } => {
            let repo = open()?;
            let (_, snap) = repo.find_snapshot(snapshot, *skip_damaged)?;
            let entries = list(&repo, &snap, path.as_deref())?;
            if *json {
                print_json(&entries)?;
            } else {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    writeln!(
                        out,
                        "{} {:>8} {:>8} {:>12} {}  {}",
                        e.mode_string,
                        escape_text(e.user.as_bytes()),
                        escape_text(e.group.as_bytes()),
                        e.size,
                        e.mtime,
                        escape_text(&e.path_bytes)
                    )?;
                }
            }
        }
        Command::Restore {
            target,
            snapshot,
            files,
            to,
            paths,
            overwrite,
            database,
            into,
            reload,
            dump_to,
            skip_damaged,
            json,
        } if config.as_ref().is_some_and(|c| c.jobs.contains_key(target)) => {
            let config = config.as_ref().context("no config")?;
            let job = config.job(target)?;
            let what = if *files || database.is_none() {
                let to = to.clone().ok_or_else(|| Usage("restoring files needs --to DIR".into()))?;
                What::Files { paths: paths.clone(), to, overwrite: *overwrite }
            } else {
                let action = match (into, reload, dump_to) {
                    (Some(n), _, _) => DatabaseAction::Into(n.clone()),
                    (_, true, _) => DatabaseAction::Reload,
                    (_, _, Some(f)) => DatabaseAction::DumpTo(f.clone()),
                    _ => {
                        return Err(Usage(
                            "with --database, say where it goes: --into NEWNAME, --reload or --dump-to FILE".into(),
                        )
                        .into());
                    }
                };
                What::Database { name: database.clone().unwrap_or_default(), action }
            };
            let source = Source { repository: repo_name.as_deref(), snapshot, skip_damaged: *skip_damaged };
            let report = restore_job(config, job, &source, &what, interrupt.flag())?;
            if *json {
                print_json(&report)?;
            } else {
                print_restore_report(&report)?;
            }
        }
        Command::Restore { target: snapshot, to, paths, skip_damaged, json, .. } => {
            let to = to.as_ref().ok_or_else(|| Usage("restore needs --to DIR".into()))?;
            let repo = open()?;
            let (id, snap) = repo.find_snapshot(snapshot, *skip_damaged)?;
            let started = std::time::Instant::now();
            let opts = RestoreOptions {
                target: to.clone(),
                include: paths.clone(),
                threads,
                cancel: Some(interrupt.flag().clone()),
            };
            let summary = restore(&repo, &snap, &opts)?;
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
        Command::Verify { all, snapshot, every_repository, skip_damaged, json, jobs } => {
            let config = config.as_ref().ok_or_else(|| needs_config("verify"))?;
            // `--all` and job names exclude each other: no names means all.
            debug_assert!(!*all || jobs.is_empty());
            if *every_repository && repo_name.is_some() {
                return Err(Usage("give --repo NAME or --every-repository, not both".into()).into());
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
                    let source = Source { repository: from, snapshot, skip_damaged: *skip_damaged };
                    match verify_job(config, job, &source) {
                        Ok(report) => {
                            if !*json {
                                print_verify_report(&report)?;
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
                for e in &errors {
                    eprintln!("holdfast: error: {e:#}");
                }
                return Ok(errors.iter().map(|e| Exit::of_error(e, Some(&interrupt))).fold(Exit::Failed, Exit::worst));
            }
            if reports.iter().any(|r| !r.ok) {
                return Ok(Exit::Failed);
            }
        }
        Command::Check { read_data, json } => {
            let repo = open()?;
            let report = check(&repo, *read_data, threads)?;
            if *json {
                print_json(&report)?;
            } else {
                for n in &report.notes {
                    outln!("note: {n}");
                }
                for p in &report.problems {
                    let deps = if p.snapshots.is_empty() {
                        "no snapshot depends on it".to_string()
                    } else {
                        format!("snapshots that depend on it: {}", p.snapshots.join(", "))
                    };
                    outln!("DAMAGED {}: {}; {}", p.object, p.detail, deps);
                }
                outln!(
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
                return Ok(Exit::Failed);
            }
        }
        Command::Key(k) => key_command(k, &repo_path()?, &passphrase, &open)?,
        Command::Repair(RepairCommand::Index { dry_run, json }) => {
            let repo = open()?;
            let r = crate::engine::repair::repair_index(&repo, *dry_run)?;
            if *json {
                print_json(&r)?;
            } else {
                print_index_repair(&r)?;
            }
            if r.blobs_still_missing > 0 || !r.packs_unreadable.is_empty() {
                return Ok(Exit::Failed);
            }
        }
        Command::Repair(RepairCommand::Snapshots { dry_run, read_data, json }) => {
            let repo = open()?;
            let repairs = crate::engine::repair::repair_snapshots(&repo, *dry_run, *read_data)?;
            if *json {
                print_json(&repairs)?;
            } else {
                print_snapshot_repairs(&repairs, *dry_run)?;
            }
            if repairs.iter().any(|r| r.error.is_some()) {
                return Ok(Exit::Failed);
            }
        }
        Command::Forget { snapshots, dry_run, json } => {
            let repo = open()?;
            let mut ids = Vec::new();
            for spec in snapshots {
                let id = repo.snapshot_id(spec)?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            if !*dry_run {
                crate::engine::gc::forget(&repo, &ids)?;
            }
            let hex: Vec<String> = ids.iter().map(Id::to_hex).collect();
            if *json {
                print_json(&serde_json::json!({ "dry_run": dry_run, "forgotten": hex }))?;
            } else {
                for id in &ids {
                    outln!("{} {}", if *dry_run { "would forget" } else { "forgot" }, id);
                }
                if !*dry_run {
                    eprintln!("run `holdfast prune` to free the space only they used");
                }
            }
        }
    }
    Ok(Exit::Success)
}

/// How many files a warning-bearing summary left out or marked.
fn s_count(s: &crate::engine::snapshot::Summary) -> usize {
    s.warnings.len()
}

fn print_index_repair(r: &crate::engine::repair::IndexRepair) -> Result<()> {
    let verb = if r.dry_run { "would index" } else { "indexed" };
    for dir in &r.directories_recreated {
        outln!("directory {dir}/ was missing; {}", if r.dry_run { "would recreate it" } else { "recreated" });
    }
    for (name, why) in &r.packs_unreadable {
        outln!("UNREADABLE pack {}: {why}", &name[..name.len().min(8)]);
    }
    outln!(
        "{verb} {} of {} packs ({} blobs; {} pack(s) were in no readable index); {} old index file(s) {}",
        r.packs_indexed,
        r.packs_read,
        r.blobs_indexed,
        r.packs_recovered,
        r.index_files_replaced,
        if r.dry_run { "would be replaced" } else { "replaced" }
    );
    if r.blobs_still_missing > 0 {
        outln!(
            "{} blob(s) the snapshots need are in no readable pack: run `holdfast repair snapshots` to keep what can be read",
            r.blobs_still_missing
        );
    } else {
        outln!("every blob the snapshots need is indexed");
    }
    Ok(())
}

fn print_snapshot_repairs(repairs: &[crate::engine::repair::SnapshotRepair], dry_run: bool) -> Result<()> {
    if repairs.is_empty() {
        outln!("every snapshot can be read whole; nothing to repair");
    }
    for r in repairs {
        let short = &r.snapshot[..r.snapshot.len().min(8)];
        match (&r.error, &r.repaired_as) {
            (Some(e), _) => outln!("snapshot {short}: cannot be repaired: {e}"),
            (None, Some(new)) => outln!(
                "snapshot {short}: wrote repaired snapshot {} without {} lost path(s); `holdfast forget {short}` when you are satisfied",
                &new[..8],
                r.lost.len()
            ),
            (None, None) => outln!(
                "snapshot {short}: {} path(s) cannot be read{}",
                r.lost.len(),
                if dry_run { "; would write a repaired snapshot without them" } else { "" }
            ),
        }
        for p in &r.lost {
            outln!("  lost: {}", escape_text(p.as_bytes()));
        }
    }
    Ok(())
}

/// The named jobs, or all when none is named.
fn select_jobs<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a Job>> {
    if names.is_empty() {
        return Ok(config.jobs.values().collect());
    }
    Ok(names.iter().map(|n| config.job(n)).collect::<Result<_, _>>()?)
}

fn print_status(all: &[crate::status::JobStatus]) -> Result<()> {
    outln!(
        "{:<16} {:<10} {:<10} {:<20} {:>10} {:>9} {:>10} {:>10}  next run",
        "job",
        "repo",
        "last run",
        "newest snapshot",
        "age",
        "snapshots",
        "added",
        "max age"
    );
    let age =
        |s: i64| if s >= 86400 { format!("{:.1}d", s as f64 / 86400.0) } else { format!("{:.1}h", s as f64 / 3600.0) };
    for s in all {
        let last = match &s.last_run {
            Some(r) if r.ok => "ok",
            Some(r) if r.incomplete => "INCOMPLETE",
            Some(_) => "FAILED",
            None => "never",
        };
        let newest = match (&s.newest_snapshot, &s.newest_time) {
            (Some(id), Some(t)) => format!("{} {}", &id[..8], t.strftime("%m-%d %H:%M")),
            _ => "none".into(),
        };
        outln!(
            "{:<16} {:<10} {:<10} {:<20} {:>10} {:>9} {:>10} {:>10}  {}{}",
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
            outln!("    PROBLEM: {p}");
        }
        if let Some(e) = s.last_run.as_ref().and_then(|r| r.error.as_ref()) {
            outln!("    last error: {e}");
        }
    }
    Ok(())
}

/// Validate the named jobs (all when none); with `plan`, print what a run would do.
fn validate_jobs(config: &Config, names: &[String], plan: bool, json: bool) -> Result<Exit> {
    let jobs = select_jobs(config, names)?;
    let v = crate::validate::validate(config, &jobs, plan);
    if json {
        print_json(&v)?;
    } else {
        for p in &v.plans {
            outln!("plan of job {}:", p.job);
            for (i, line) in p.steps.iter().enumerate() {
                let when = match line.step.when {
                    crate::plan::When::Ok => "",
                    crate::plan::When::Failed => " [only after a failure]",
                    crate::plan::When::Always => " [always]",
                };
                outln!("  {:>2}. {}{when}", i + 1, step_name(&line.step.step));
                for d in &line.details {
                    outln!("        {d}");
                }
            }
        }
        for f in &v.findings {
            outln!("{} {} [{}]: {}", if f.ok { "ok     " } else { "PROBLEM" }, f.job, f.check, f.message);
        }
        let problems = v.findings.iter().filter(|f| !f.ok).count();
        outln!(
            "{}",
            if problems == 0 { "valid: no problems found".to_string() } else { format!("{problems} problem(s) found") }
        );
    }
    Ok(if v.ok() { Exit::Success } else { Exit::Failed })
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

/// Run the named jobs (or all), one after the other; the worst outcome is
/// the exit code.
fn run_jobs(config: &Config, all: bool, names: &[String], json: bool, interrupt: &Interrupt) -> Result<Exit> {
    // `--all` and job names exclude each other: no names means all.
    debug_assert!(!all || names.is_empty());
    let jobs = select_jobs(config, names)?;
    let mut reports = Vec::new();
    for job in jobs {
        let report = match run_job(config, job, interrupt) {
            Ok(r) => r,
            Err(e) => RunReport::not_run(&job.name, &e, interrupt),
        };
        if !json {
            if report.ok {
                outln!("{}", report.summary);
            } else {
                eprintln!("{}", report.summary);
            }
        }
        reports.push(report);
    }
    if json {
        print_json(&reports)?;
    }
    Ok(reports.iter().map(|r| r.exit).fold(Exit::Success, Exit::worst))
}

fn print_job_snapshots(snaps: &[(Id, Snapshot)]) -> Result<()> {
    outln!("{:<8}  {:<25}  {:>10}  holds", "id", "time", "size");
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
        let mut flags = String::new();
        if s.summary.incomplete {
            flags.push_str("  [INCOMPLETE]");
        }
        if s.repaired.is_some() {
            flags.push_str("  [repaired]");
        }
        outln!(
            "{:<8}  {:<25}  {:>10}  {}{flags}",
            id.short(),
            local_time(&s.time),
            human(s.summary.bytes),
            escape_text(holds.join(", ").as_bytes())
        );
    }
    Ok(())
}

fn print_restore_report(r: &RestoreReport) -> Result<()> {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    match (&r.files, &r.database) {
        (Some(f), _) => outln!(
            "job {}: restored {} files, {} dirs, {} from snapshot {} into {}",
            r.job,
            f.files,
            f.dirs,
            human(f.bytes),
            &r.snapshot[..8],
            r.target
        ),
        (_, Some(db)) => {
            outln!("job {}: restored database {db} from snapshot {} into {}", r.job, &r.snapshot[..8], r.target);
            if let Some(k) = &r.kept_as {
                outln!("the previous database is kept as {k}; drop it when you are satisfied");
            }
        }
        _ => {}
    }
    for s in &r.smoke {
        outln!("  {s}");
    }
    Ok(())
}

fn print_verify_report(r: &VerifyReport) -> Result<()> {
    outln!(
        "job {}: snapshot {} in {} {} in {:.1}s",
        r.job,
        &r.snapshot[..8],
        r.repository,
        if r.ok { "verified" } else { "FAILED verification" },
        r.duration_secs
    );
    for d in &r.databases {
        let rows: u64 = d.tables.iter().map(|t| t.1).sum();
        outln!(
            "  database {}: loaded into scratch {} in {:.1}s, {} tables, {} rows{}",
            d.name,
            d.scratch,
            d.load_secs,
            d.tables.len(),
            rows,
            d.error.as_deref().map(|e| format!(" — ERROR: {e}")).unwrap_or_default()
        );
        for s in &d.smoke {
            outln!("    {s}");
        }
    }
    if let Some(f) = &r.files {
        outln!("  files: {} files, {} read back and compared with their recorded hashes", f.files, human(f.bytes));
    }
    for p in &r.problems {
        outln!("  PROBLEM: {p}");
    }
    Ok(())
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
                    // A key is a key: 0600 from the first byte, whatever was there.
                    crate::fsutil::write_atomically(f, text.as_bytes(), crate::fsutil::PRIVATE_FILE)?;
                    eprintln!("key written to {} (mode 0600)", f.display());
                }
                None => write!(std::io::stdout(), "{text}")?,
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
        let option = match env {
            "HOLDFAST_FROM_PASSPHRASE" => "--from-passphrase-file",
            "HOLDFAST_NEW_PASSPHRASE" => "--new-passphrase-file",
            _ => "--passphrase-file",
        };
        return Err(crate::Error::NoPassphrase(format!("set ${env} or pass {option}")).into());
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
    /// The path as text (invalid UTF-8 replaced: see `path_base64`).
    path: String,
    /// The path's exact bytes, when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    path_base64: Option<String>,
    #[serde(skip)]
    path_bytes: Vec<u8>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    link_target_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    changed_while_read: bool,
}

/// Base64 of `bytes` when they are not valid UTF-8 (JSON carries text only).
fn bytes_field(bytes: &[u8]) -> Option<String> {
    use base64::Engine;
    std::str::from_utf8(bytes).is_err().then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Bytes for a terminal: control characters, backslashes and invalid UTF-8
/// escaped (`\n`, `\x1b`), so a file name cannot move the cursor or forge
/// a line of output.
fn escape_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
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
    use std::os::unix::ffi::OsStrExt;
    let path_bytes = path.as_os_str().as_bytes().to_vec();
    let target = match &e.kind {
        EntryKind::Symlink { target } => Some(target.as_slice()),
        _ => None,
    };
    LsEntry {
        path: path.to_string_lossy().into_owned(),
        path_base64: bytes_field(&path_bytes),
        path_bytes,
        kind,
        mode: e.meta.mode,
        mode_string,
        user: e.meta.user.clone().unwrap_or_else(|| e.meta.uid.to_string()),
        group: e.meta.group.clone().unwrap_or_else(|| e.meta.gid.to_string()),
        size: e.meta.size,
        mtime,
        link_target: target.map(|t| String::from_utf8_lossy(t).into_owned()),
        link_target_base64: target.and_then(bytes_field),
        changed_while_read: matches!(&e.kind, EntryKind::File(c) if c.changed_while_read),
    }
}

fn local_time(t: &jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %z").to_string()
}
