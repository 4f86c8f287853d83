//! The command line: global options, one module per command (its `Args`
//! and a `run` that calls the library and prints what it returns, as text
//! or as JSON with `--json`), and the [`Context`] every command shares.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, Job};
use crate::engine::backend::short_name as short;
use crate::engine::repository::Repository;
use crate::exit::{EXIT_CODES_HELP, Exit, Interrupt, Usage};
use crate::secrets::RepositoryRef;
use crate::units::escape_text;

/// `println!` that returns an error instead of panicking when stdout is
/// gone (`holdfast ls | head`): `main` ends quietly on a broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => { writeln!(std::io::stdout(), $($arg)*)? };
}

mod backup;
mod check;
mod copy;
mod diff;
mod find;
mod forget;
mod generate;
mod init;
mod key;
mod ls;
mod mount;
mod progress;
mod prune;
mod recover;
mod repair;
mod restore;
mod run;
mod serve;
mod snapshots;
mod stats;
mod status;
mod systemd;
mod validate;
mod verify;

#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HOLDFAST_GIT_COMMIT"), ")"),
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
    /// Read everything from the repository; leave the local cache of its
    /// snapshots, index and tree packs ($HOLDFAST_CACHE_DIR,
    /// $XDG_CACHE_HOME/holdfast, /var/cache/holdfast for root) alone: the
    /// index is then held in memory.
    #[arg(long, global = true, env = "HOLDFAST_NO_CACHE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_cache: bool,
    /// The most disk the cached tree packs, and again the cached index files,
    /// of one remote repository may take (e.g. 500MiB, 2GiB; 0: none is kept or read);
    /// the least recently used go first.
    #[arg(long, global = true, env = "HOLDFAST_CACHE_SIZE", value_name = "SIZE", default_value = "1GiB",
          value_parser = crate::units::parse_size)]
    pub cache_size: u64,
    /// Show progress on stderr even when it is not a terminal (by default
    /// only on a terminal).
    #[arg(long, global = true, conflicts_with = "no_progress")]
    pub progress: bool,
    /// Never show progress.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Progress as JSON lines on stderr, one a second (for wrappers and GUIs).
    #[arg(long, global = true)]
    pub json_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run jobs: dumps, hooks and files as one snapshot per job.
    Run(run::Args),
    /// Forget snapshots by retention rules and collect garbage; with
    /// --config, each named job's (all when none) by its `retention`.
    Prune(prune::Args),
    /// Per job: last run, newest snapshot and its age, next run; exits
    /// non-zero when a job is stale (older than max_age) or failing.
    Status(status::Args),
    /// Write systemd service and timer units for jobs.
    Systemd(systemd::Args),
    /// Check jobs (all when none is named) without changing anything.
    Validate(validate::Args),
    /// Run the `finally` hooks a killed run of JOB still owes (for systemd's ExecStopPost=).
    Recover(recover::Args),
    /// Create a repository and its first key.
    Init(init::Args),
    /// Copy snapshots (only what the target lacks) to a repository created
    /// with `init --copy-params-from`.
    Copy(copy::Args),
    /// Back up paths as one snapshot; prints the snapshot id.
    Backup(backup::Args),
    /// List snapshots (with --config, of one job: `snapshots JOB`).
    Snapshots(snapshots::Args),
    /// List the contents of a snapshot.
    Ls(ls::Args),
    /// Restore a snapshot (or some paths of it) into a directory; with
    /// --config and a job name: restore that job's files or reload one of
    /// its databases.
    Restore(restore::Args),
    /// Test that jobs' newest snapshots restore: dumps load and pass their
    /// smoke queries, files match their recorded hashes.
    Verify(verify::Args),
    /// Check the repository's structure; with --read-data, every blob.
    Check(check::Args),
    /// Manage the repository's keys.
    #[command(subcommand)]
    Key(key::Command),
    /// Repair a damaged repository: rebuild its index from the packs, or
    /// write snapshots without what can no longer be read.
    #[command(subcommand)]
    Repair(repair::Command),
    /// Remove snapshots by id (prefix); `prune` then frees their space.
    Forget(forget::Args),
    /// Find which snapshots hold a file (or a database) by name or path.
    #[command(after_help = find::EXAMPLES)]
    Find(find::Args),
    /// Show what changed between two snapshots.
    #[command(after_help = diff::EXAMPLES)]
    Diff(diff::Args),
    /// Sizes, deduplication and compression, per job and for the repository.
    #[command(after_help = stats::EXAMPLES)]
    Stats(stats::Args),
    /// Browse snapshots as read-only directories (FUSE) until Ctrl-C or SIGTERM.
    #[command(after_help = mount::EXAMPLES)]
    Mount(mount::Args),
    /// Serve a repository on stdin/stdout for `ssh://` clients (run by ssh,
    /// usually as an authorized_keys forced command).
    #[command(after_help = serve::EXAMPLES)]
    Serve(serve::Args),
    /// Write man pages or print shell completions.
    #[command(subcommand, after_help = generate::EXAMPLES)]
    Generate(generate::Command),
}

impl Command {
    /// Commands that stop cleanly on SIGTERM/SIGINT (the others end at once).
    fn takes_signals(&self) -> bool {
        match self {
            Command::Run(args) => !args.dry_run,
            Command::Backup(_) | Command::Restore(_) | Command::Verify(_) | Command::Copy(_) | Command::Mount(_) => {
                true
            }
            _ => false,
        }
    }
}

/// Which snapshots a command looks at: the filters `snapshots`, `find`,
/// `stats`, `mount`, `prune`, `copy` and `restore` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only snapshots this job made (with --config and no --repo, in the
    /// job's first repository).
    #[arg(long, value_name = "JOB")]
    pub job: Option<String>,
    /// Only snapshots made on this host (repeatable: any of them).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots with this tag (repeatable: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only snapshots whose backed-up paths are this path, lie below it
    /// or hold it (repeatable; judged from the paths the backup was given,
    /// not looked up in the snapshot); `find` and `restore` also keep to
    /// what is at or below it.
    #[arg(long = "path", value_name = "PATH", value_parser = path_in_snapshot())]
    pub paths: Vec<PathBuf>,
}

/// A `--path`: a path as a snapshot holds it. `..` is refused rather than
/// dropped or resolved: `a/b/..` would otherwise select `a/b`, or, resolved
/// against this host's links, something else than the user sees in `ls`.
/// Any bytes but NUL are taken: file names need not be UTF-8.
pub(crate) fn path_in_snapshot() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PathBufValueParser::new().try_map(|path: PathBuf| {
        if path.components().any(|c| c == std::path::Component::ParentDir) {
            return Err("`..` is not taken here: name the path as the snapshot holds it (see `holdfast ls`)");
        }
        Ok(path)
    })
}

impl FilterArgs {
    pub fn filter(&self) -> crate::filter::SnapshotFilter {
        crate::filter::SnapshotFilter {
            job: self.job.clone(),
            hosts: self.hosts.clone(),
            tags: self.tags.clone(),
            paths: self.paths.clone(),
        }
    }
}

/// The arguments of commands that look at jobs: their names (all when
/// none) and `--json`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[arg(long)]
    pub json: bool,
    pub jobs: Vec<String>,
}

/// What every command may use: the loaded config, the global options and
/// the signal flags.
pub struct Context {
    config: Option<Config>,
    config_path: Option<PathBuf>,
    repo: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    pub interrupt: Interrupt,
    /// Worker threads for engine work.
    pub threads: usize,
    progress: progress::ProgressMode,
}

impl Context {
    /// The config, or the error that says `command` needs one.
    pub fn config(&self, command: &str) -> Result<&Config> {
        self.config
            .as_ref()
            .ok_or_else(|| Usage(format!("`{command}` needs --config PATH (or $HOLDFAST_CONFIG)")).into())
    }

    /// Start showing the progress of a long operation (its first `phase`);
    /// `None` when progress is not shown. Dropping it ends the display.
    pub fn show_progress(&self, phase: &str) -> Option<progress::ProgressDisplay> {
        progress::ProgressDisplay::start(self.progress, phase)
    }

    /// The config when one was given.
    pub fn config_if_given(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// The config's path, as given.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// `--repo NAME` for job commands: which of the job's repositories.
    pub fn repo_name(&self) -> Option<String> {
        self.repo.as_ref().map(|r| r.to_string_lossy().into_owned())
    }

    pub fn passphrase_file(&self) -> Option<&Path> {
        self.passphrase_file.as_deref()
    }

    /// The repository `--repo` names.
    pub fn repository(&self) -> Result<RepositoryRef<'_>> {
        let arg = self.repo.as_deref().ok_or_else(|| {
            anyhow!("no repository given: pass --repo DIR|s3://BUCKET/PREFIX or set HOLDFAST_REPOSITORY")
        })?;
        Ok(RepositoryRef::resolve(self.config.as_ref(), arg))
    }

    /// Open the repository `--repo` names.
    pub fn open(&self) -> Result<Repository> {
        self.repository()?.open(self.passphrase_file())
    }

    /// The repository a job's snapshots are in: `--repo` when given, else
    /// (with --config) the job's first repository.
    pub fn open_for_job(&self, job: Option<&str>) -> Result<Repository> {
        if let (Some(config), Some(job), None) = (self.config_if_given(), job, &self.repo) {
            let job = config.job(job)?;
            return RepositoryRef::Configured(&job.repositories[0]).open(self.passphrase_file());
        }
        self.open()
    }

    /// The readable snapshots of `repo` that pass `filter`, oldest first;
    /// those that cannot be read are named on stderr.
    pub fn snapshots(
        &self,
        repo: &Repository,
        filter: &crate::filter::SnapshotFilter,
    ) -> Result<Vec<(crate::engine::crypto::Id, crate::engine::snapshot::Snapshot)>> {
        let (mut snaps, bad) = repo.snapshots()?;
        for (name, e) in &bad {
            eprintln!("warning: snapshot {} cannot be read: {e} (`holdfast check` says more)", short(name));
        }
        snaps.retain(|(_, s)| filter.matches(s));
        Ok(snaps)
    }

    /// The named jobs, or all when none is named.
    pub fn jobs<'a>(&self, config: &'a Config, names: &[String]) -> Result<Vec<&'a Job>> {
        if names.is_empty() {
            return Ok(config.jobs.values().collect());
        }
        Ok(names.iter().map(|n| config.job(n)).collect::<Result<_, _>>()?)
    }
}

/// Parse the command line and run it; the exit code it stands for.
pub fn run() -> Result<Exit> {
    let cli = Cli::parse();
    init_logging();
    if cli.no_cache {
        crate::engine::cache::disable();
    }
    crate::engine::file_cache::set_cap(cli.cache_size);
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
    let interrupt = if cli.command.takes_signals() {
        Interrupt::install().context("installing the signal handlers")?
    } else {
        Interrupt::none()
    };
    let ctx = Context {
        config,
        config_path: cli.config,
        repo: cli.repo,
        passphrase_file: cli.passphrase_file,
        interrupt,
        threads: crate::engine::parallel::cpus(),
        progress: progress::ProgressMode::from_flags(cli.progress, cli.no_progress, cli.json_progress),
    };
    let result = match &cli.command {
        Command::Run(args) => run::run(args, &ctx),
        Command::Prune(args) => prune::run(args, &ctx),
        Command::Status(args) => status::run(args, &ctx),
        Command::Systemd(args) => systemd::run(args, &ctx),
        Command::Validate(args) => validate::run(args, &ctx),
        Command::Recover(args) => recover::run(args, &ctx),
        Command::Init(args) => init::run(args, &ctx),
        Command::Copy(args) => copy::run(args, &ctx),
        Command::Backup(args) => backup::run(args, &ctx),
        Command::Snapshots(args) => snapshots::run(args, &ctx),
        Command::Ls(args) => ls::run(args, &ctx),
        Command::Restore(args) => restore::run(args, &ctx),
        Command::Verify(args) => verify::run(args, &ctx),
        Command::Check(args) => check::run(args, &ctx),
        Command::Key(cmd) => key::run(cmd, &ctx),
        Command::Repair(cmd) => repair::run(cmd, &ctx),
        Command::Forget(args) => forget::run(args, &ctx),
        Command::Find(args) => find::run(args, &ctx),
        Command::Diff(args) => diff::run(args, &ctx),
        Command::Stats(args) => stats::run(args, &ctx),
        Command::Mount(args) => mount::run(args, &ctx),
        Command::Serve(args) => serve::run(args, &ctx),
        Command::Generate(cmd) => generate::run(cmd, &ctx),
    };
    // A command that failed because a signal stopped it exits 130/143.
    match (result, ctx.interrupt.exit()) {
        (Err(e), Some(exit)) => {
            eprintln!("holdfast: error: {e:#}");
            Ok(exit)
        }
        (result, _) => result,
    }
}

/// Log lines go to stderr (journald adds its own timestamps under systemd).
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| progress::LogWriter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = stdout_in_blocks();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Standard output written in blocks rather than line by line (Rust's
/// stdout flushes at every newline): a listing of a million entries is a
/// few hundred writes instead of a million. Flush it before returning.
fn stdout_in_blocks() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock())
}

/// A snapshot as shown by `snapshots --json` and `backup --json`.
#[derive(Serialize)]
struct SnapshotView<'a> {
    id: String,
    short_id: String,
    #[serde(flatten)]
    snapshot: &'a crate::engine::snapshot::Snapshot,
}

impl<'a> SnapshotView<'a> {
    fn new(id: &crate::engine::crypto::Id, snapshot: &'a crate::engine::snapshot::Snapshot) -> Self {
        SnapshotView { id: id.to_hex(), short_id: id.short(), snapshot }
    }
}
