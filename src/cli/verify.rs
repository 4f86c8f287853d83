//! `holdfast verify`: test that jobs' snapshots restore (dumps load and
//! pass their smoke queries, files match their recorded hashes).

use std::io::Write;

use anyhow::Result;

use super::{Context, print_json, short};
use crate::exit::{Exit, Usage};
use crate::restore::Source;
use crate::units::human;
use crate::verify::{VerifyReport, verify_job};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, conflicts_with = "jobs")]
    pub all: bool,
    /// Verify this snapshot instead of the newest.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Verify each of the job's repositories in turn (the off-site
    /// copies too), not only its first.
    #[arg(long)]
    pub every_repository: bool,
    /// With `latest`: take the newest readable snapshot even if some
    /// snapshot cannot be read (it might be newer).
    #[arg(long)]
    pub skip_damaged: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(required_unless_present = "all")]
    pub jobs: Vec<String>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let config = ctx.config("verify")?;
    let repo_name = ctx.repo_name();
    if args.every_repository && repo_name.is_some() {
        return Err(Usage("give --repo NAME or --every-repository, not both".into()).into());
    }
    let mut reports = Vec::new();
    // A repository that cannot be read does not stop the others' tests.
    let mut errors = Vec::new();
    // `--all` and job names exclude each other: no names means all.
    for job in ctx.jobs(config, &args.jobs)? {
        let repositories: Vec<Option<&str>> = if args.every_repository {
            job.repositories.iter().map(|r| Some(r.name.as_str())).collect()
        } else {
            vec![repo_name.as_deref()]
        };
        for repository in repositories {
            let source = Source { repository, snapshot: &args.snapshot, skip_damaged: args.skip_damaged };
            let display = ctx.show_progress(&format!("verify {}", job.name));
            let verified = verify_job(job, &source, ctx.interrupt.flag(), display.as_ref().map(|d| d.progress()));
            drop(display);
            match verified {
                Ok(report) => {
                    if !args.json {
                        print_report(&report)?;
                    }
                    reports.push(report);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if args.json {
        print_json(&reports)?;
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("holdfast: error: {e:#}");
        }
        return Ok(errors.iter().map(|e| Exit::of_error(e, Some(&ctx.interrupt))).fold(Exit::Failed, Exit::worst));
    }
    Ok(if reports.iter().any(|r| !r.ok) { Exit::Failed } else { Exit::Success })
}

fn print_report(r: &VerifyReport) -> Result<()> {
    outln!(
        "job {}: snapshot {} in {} {} in {:.1}s",
        r.job,
        short(&r.snapshot),
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
