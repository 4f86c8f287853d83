//! `holdfast restore`: a snapshot (or paths of it) into a directory; with
//! `--config` and a job name, that job's files or one of its databases.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{Context, FilterArgs, print_json, short};
use crate::engine::restore::{RestoreOptions, restore};
use crate::exit::{Exit, Usage};
use crate::restore::{DatabaseAction, RestoreReport, Source, What, restore_job};
use crate::units::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A snapshot id prefix or `latest`; with --config, a job name.
    pub target: String,
    /// With a job: the snapshot (id prefix or `latest`, the default).
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// With a job: restore its file sets (all, or the --path ones).
    #[arg(long, conflicts_with = "database")]
    pub files: bool,
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// `--path P` (repeatable) restores only P and what is below it; with
    /// `latest`, the filters pick the newest snapshot that passes them.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// With a job and --files: replace a non-empty --to directory.
    #[arg(long)]
    pub overwrite: bool,
    /// With a job: the database to restore (its name, or its entry;
    /// `%globals` for the roles dump of a PostgreSQL `name = "all"` entry).
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Load the dump into a new database (SQLite: a new file).
    #[arg(long, value_name = "NEWNAME", requires = "database", conflicts_with_all = ["reload", "dump_to"])]
    pub into: Option<String>,
    /// Replace the live database: load into a temporary one, then swap.
    #[arg(long, requires = "database", conflicts_with = "dump_to")]
    pub reload: bool,
    /// Write the dump to FILE (created 0600; it must not exist).
    #[arg(long, value_name = "FILE", requires = "database")]
    pub dump_to: Option<PathBuf>,
    /// With `latest`: take the newest readable snapshot even if some
    /// snapshot cannot be read (it might be newer).
    #[arg(long)]
    pub skip_damaged: bool,
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// What a job restore is asked to bring back.
    fn what(&self) -> Result<What> {
        if self.files || self.database.is_none() {
            let to = self.to.clone().ok_or_else(|| Usage("restoring files needs --to DIR".into()))?;
            return Ok(What::Files { paths: self.filter.paths.clone(), to, overwrite: self.overwrite });
        }
        let action = match (&self.into, self.reload, &self.dump_to) {
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
        Ok(What::Database { name: self.database.clone().unwrap_or_default(), action })
    }
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    match ctx.config_if_given() {
        Some(config) if config.jobs.contains_key(&args.target) => {
            let job = config.job(&args.target)?;
            let repository = ctx.repo_name();
            let source =
                Source { repository: repository.as_deref(), snapshot: &args.snapshot, skip_damaged: args.skip_damaged };
            let report = restore_job(job, &source, &args.what()?, ctx.interrupt.flag())?;
            if args.json {
                print_json(&report)?;
            } else {
                print_report(&report)?;
            }
            let incomplete = report.files.as_ref().is_some_and(|f| f.incomplete);
            Ok(if incomplete { Exit::Warnings } else { Exit::Success })
        }
        _ => restore_snapshot(args, ctx),
    }
}

/// A plain restore: `target` is a snapshot of `--repo`.
/// Exits 3 when something could not be put back as it was (an attribute,
/// a flag, a device node): the files are there, said per file.
fn restore_snapshot(args: &Args, ctx: &Context) -> Result<Exit> {
    let to = args.to.as_ref().ok_or_else(|| Usage("restore needs --to DIR".into()))?;
    let repo = ctx.open_for_job(args.filter.job.as_deref())?;
    // Never into the repository read from. (Around it is allowed: this
    // restore adds to the target rather than replacing it, so a whole
    // system goes back to `/` while its repository is mounted there.)
    let protected = [("the repository".to_string(), PathBuf::from(repo.location()))];
    if protected[0].1.is_dir() {
        crate::engine::restore::refuse_protected(to, &protected, false)?;
    }
    let filter = args.filter.filter();
    let (id, snap) = if args.target == "latest" && !filter.is_empty() {
        let (all, bad) = repo.snapshots()?;
        crate::engine::repository::newest(all, &bad, args.skip_damaged, |s| filter.matches(s))
            .ok_or_else(|| anyhow::anyhow!("no snapshot matches --job/--host/--tag/--path"))??
    } else {
        repo.find_snapshot(&args.target, args.skip_damaged)?
    };
    let started = std::time::Instant::now();
    let display = ctx.show_progress("restore");
    let opts = RestoreOptions {
        target: to.clone(),
        include: args.filter.paths.clone(),
        threads: ctx.threads,
        cancel: Some(ctx.interrupt.flag().clone()),
        progress: display.as_ref().map(|d| d.progress()),
    };
    let summary = restore(&repo, &snap, &opts);
    drop(display);
    let summary = summary?;
    for w in &summary.warnings {
        eprintln!("warning: {}", crate::units::escape_text(w.as_bytes()));
    }
    if args.json {
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
    if summary.incomplete {
        eprintln!("warning: not everything could be restored as it was (see the warnings above)");
        return Ok(Exit::Warnings);
    }
    Ok(Exit::Success)
}

fn print_report(r: &RestoreReport) -> Result<()> {
    for w in &r.warnings {
        eprintln!("warning: {}", crate::units::escape_text(w.as_bytes()));
    }
    match (&r.files, &r.database) {
        (Some(f), _) => outln!(
            "job {}: restored {} files, {} dirs, {} from snapshot {} into {}",
            r.job,
            f.files,
            f.dirs,
            human(f.bytes),
            short(&r.snapshot),
            r.target
        ),
        (_, Some(db)) => {
            // Names and values from the server and the snapshot: escaped.
            let shown = |s: &str| crate::units::escape_text(s.as_bytes());
            outln!(
                "job {}: restored database {} from snapshot {} into {}",
                r.job,
                shown(db),
                short(&r.snapshot),
                shown(&r.target)
            );
            if let Some(k) = &r.kept_as {
                outln!("the previous database is kept as {}; drop it when you are satisfied", shown(k));
            }
        }
        _ => {}
    }
    for s in &r.smoke {
        outln!("  {}", crate::units::escape_text(s.to_string().as_bytes()));
    }
    Ok(())
}
