//! `holdfast check`: the repository's structure; with `--read-data`, every blob.

use std::io::Write;

use anyhow::Result;

use super::{Context, print_json};
use crate::exit::Exit;
use crate::units::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub read_data: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let mut repo = ctx.open()?;
    // Judge what the repository holds, not the local cache of its trees.
    repo.read_directly();
    let display = if args.read_data { ctx.show_progress("check --read-data") } else { None };
    let progress = display.as_ref().map(|d| d.progress());
    let report = crate::engine::check::check(&repo, args.read_data, ctx.threads, progress.as_deref());
    drop(display);
    let report = report?;
    if args.json {
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
            if args.read_data {
                format!(", {} read and authenticated", human(report.bytes_read))
            } else {
                String::new()
            }
        );
    }
    Ok(if report.healthy() { Exit::Success } else { Exit::Failed })
}
