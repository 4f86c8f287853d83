//! `holdfast run`: run jobs (or, with `--dry-run`, show their plans).

use std::io::Write;

use anyhow::Result;

use super::{Context, print_json};
use crate::exit::Exit;
use crate::runner::{RunReport, run_job};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run every job of the config.
    #[arg(long, conflicts_with = "jobs")]
    pub all: bool,
    /// Check everything and print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(required_unless_present = "all")]
    pub jobs: Vec<String>,
}

/// Run the named jobs (or all), one after the other; the worst outcome is
/// the exit code.
pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let config = ctx.config("run")?;
    // `--all` and job names exclude each other: no names means all.
    let jobs = ctx.jobs(config, &args.jobs)?;
    if args.dry_run {
        return super::validate::show(&jobs, true, args.json);
    }
    let mut reports = Vec::new();
    for job in jobs {
        let display = ctx.show_progress(&format!("job {}", job.name));
        let report = match run_job(job, &ctx.interrupt, display.as_ref().map(|d| d.progress())) {
            Ok(r) => r,
            Err(e) => RunReport::not_run(&job.name, &e, &ctx.interrupt),
        };
        drop(display);
        if !args.json {
            if report.ok {
                outln!("{}", report.summary);
            } else {
                eprintln!("{}", report.summary);
            }
        }
        reports.push(report);
    }
    if args.json {
        print_json(&reports)?;
    }
    Ok(reports.iter().map(|r| r.exit).fold(Exit::Success, Exit::worst))
}
