//! `holdfast status`: per job, the last run, the newest snapshot and its
//! age, the next run; non-zero when a job is stale or failing.

use std::io::Write;

use anyhow::Result;

use super::{Context, print_json, short};
use crate::exit::Exit;
use crate::status::JobStatus;
use crate::units::human;

pub type Args = super::JobsArgs;

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let config = ctx.config("status")?;
    let all = crate::status::status(&ctx.jobs(config, &args.jobs)?)?;
    if args.json {
        print_json(&all)?;
    } else {
        print_table(&all)?;
    }
    Ok(all.iter().map(|s| s.exit()).fold(Exit::Success, Exit::worst))
}

fn print_table(all: &[JobStatus]) -> Result<()> {
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
            (Some(id), Some(t)) => format!("{} {}", short(id), t.strftime("%m-%d %H:%M")),
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
