//! `holdfast snapshots [JOB]`: list a repository's snapshots, or one job's
//! with what each holds.

use std::io::Write;

use anyhow::Result;

use super::{Context, FilterArgs, SnapshotView, escape_text, print_json};
use crate::engine::crypto::Id;
use crate::engine::snapshot::Snapshot;
use crate::exit::{Exit, Usage};
use crate::record::RunRecord;
use crate::units::{human, local_time};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job's snapshots (the same as --job).
    #[arg(value_name = "JOB")]
    pub positional_job: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let mut filter = args.filter.filter();
    if let Some(job) = &args.positional_job {
        if filter.job.as_ref().is_some_and(|j| j != job) {
            return Err(Usage(format!("two jobs given: {job} and --job {}", filter.job.unwrap_or_default())).into());
        }
        filter.job = Some(job.clone());
    }
    // A job's snapshots live in its first repository (with --config).
    let repo = ctx.open_for_job(filter.job.as_deref())?;
    let snaps = ctx.snapshots(&repo, &filter)?;
    if filter.job.is_some() && !args.json {
        print_job_snapshots(&snaps)?;
        return Ok(Exit::Success);
    }
    if args.json {
        print_json(&snaps.iter().map(|(id, s)| SnapshotView::new(id, s)).collect::<Vec<_>>())?;
        return Ok(Exit::Success);
    }
    let mut out = super::stdout_in_blocks();
    writeln!(out, "{:<8}  {:<25}  {:<12}  {:>10}  {:<12}  paths", "id", "time", "host", "size", "tags")?;
    for (id, s) in &snaps {
        writeln!(
            out,
            "{:<8}  {:<25}  {:<12}  {:>10}  {:<12}  {}",
            id.short(),
            local_time(&s.time),
            escape_text(s.host.as_bytes()),
            human(s.summary.bytes),
            escape_text(s.tags.join(",").as_bytes()),
            escape_text(s.paths.join(" ").as_bytes())
        )?;
    }
    out.flush()?;
    Ok(Exit::Success)
}

fn print_job_snapshots(snaps: &[(Id, Snapshot)]) -> Result<()> {
    let mut out = super::stdout_in_blocks();
    writeln!(out, "{:<8}  {:<25}  {:>10}  holds", "id", "time", "size")?;
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
        writeln!(
            out,
            "{:<8}  {:<25}  {:>10}  {}{flags}",
            id.short(),
            local_time(&s.time),
            human(s.summary.bytes),
            escape_text(holds.join(", ").as_bytes())
        )?;
    }
    out.flush()?;
    Ok(())
}
