//! `holdfast stats [SNAPSHOT]`: sizes, deduplication and compression.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::{Context, FilterArgs, escape_text, print_json};
use crate::engine::crypto::Id;
use crate::engine::snapshot::Snapshot;
use crate::exit::Exit;
use crate::record::RunRecord;
use crate::stats::{Referenced, RepositoryStats, Stats, repository_stats, stats};
use crate::units::human;

pub const EXAMPLES: &str = "\
logical: what restoring every snapshot would write, holes of sparse files
included; unique: the distinct chunks behind it, each counted whole (small
files of a directory share one chunk, so a snapshot that kept a few of them
can count more unique than logical bytes); stored: those chunks and the
directories as stored (compressed, encrypted). dedup = logical / unique,
compression = unique / stored chunks.

Examples:
  holdfast stats                       per job, all snapshots, the repository
  holdfast stats --job shop            the shop job's snapshots
  holdfast stats 3f2a9c1e              one snapshot";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One snapshot (an id prefix or `latest`) instead of groups.
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    /// Per job (`""`: snapshots no job made).
    groups: BTreeMap<String, Stats>,
    all: Stats,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository: Option<RepositoryStats>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let repo = ctx.open_for_job(args.filter.job.as_deref())?;
    let (index, _) = repo.load_index()?;
    let snaps: Vec<(Id, Snapshot)> = match &args.snapshot {
        Some(spec) => vec![repo.find_snapshot(spec, false)?],
        None => ctx.snapshots(&repo, &args.filter.filter())?,
    };
    let mut by_job: BTreeMap<String, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for s in &snaps {
        by_job.entry(RunRecord::of(&s.1).map(|r| r.job).unwrap_or_default()).or_default().push(s);
    }
    // Each group's trees are walked once; all snapshots are their union.
    let mut groups = BTreeMap::new();
    let mut everything = Referenced::default();
    for (job, group) in &by_job {
        let referenced = Referenced::walk(&repo, &index, group)?;
        if args.snapshot.is_none() {
            groups.insert(job.clone(), stats(&index, group, &referenced));
        }
        everything.extend(&referenced);
    }
    let all = stats(&index, &snaps.iter().collect::<Vec<_>>(), &everything);
    // The whole repository only when every snapshot is counted.
    let whole = args.snapshot.is_none() && args.filter.filter().is_empty();
    let repository = if whole { Some(repository_stats(&repo, &index, &all)?) } else { None };
    let report = Report { groups, all, repository };
    if args.json {
        print_json(&report)?;
        return Ok(Exit::Success);
    }
    outln!(
        "{:<24} {:>9} {:>10} {:>10} {:>10} {:>10} {:>7} {:>11}",
        "",
        "snapshots",
        "files",
        "logical",
        "unique",
        "stored",
        "dedup",
        "compression"
    );
    let row = |name: &str, s: &Stats| {
        format!(
            "{:<24} {:>9} {:>10} {:>10} {:>10} {:>10} {:>6.1}x {:>10.2}x",
            name,
            s.snapshots,
            s.files,
            human(s.logical_bytes),
            human(s.unique_bytes),
            human(s.stored_bytes),
            s.dedup_ratio,
            s.compression_ratio
        )
    };
    for (job, s) in &report.groups {
        let name = if job.is_empty() { "(no job)".to_string() } else { format!("job {}", escape_text(job.as_bytes())) };
        outln!("{}", row(&name, s));
    }
    let all_name = match &args.snapshot {
        Some(_) => format!("snapshot {}", snaps[0].0.short()),
        None => "all snapshots".to_string(),
    };
    outln!("{}", row(&all_name, &report.all));
    if let Some(r) = &report.repository {
        outln!(
            "repository: {} packs, {} on storage, {} blobs indexed, {} referenced by no snapshot (prune frees it)",
            r.packs,
            human(r.pack_bytes),
            r.blobs_indexed,
            human(r.unreferenced_bytes)
        );
    }
    Ok(Exit::Success)
}
