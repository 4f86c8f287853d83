//! `holdfast repair`: rebuild the index from the packs, or write snapshots
//! without what can no longer be read.

use std::io::Write;

use anyhow::Result;

use super::{Context, escape_text, print_json, short};
use crate::engine::repair::{IndexRepair, SnapshotRepair, repair_index, repair_snapshots};
use crate::exit::Exit;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
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

pub fn run(cmd: &Command, ctx: &Context) -> Result<Exit> {
    let mut repo = ctx.open()?;
    // Judge what the repository holds, not the local cache of its trees.
    repo.read_directly();
    match cmd {
        Command::Index { dry_run, json } => {
            let r = repair_index(&repo, *dry_run)?;
            if *json {
                print_json(&r)?;
            } else {
                print_index_repair(&r)?;
            }
            let whole = r.blobs_still_missing == 0 && r.packs_unreadable.is_empty();
            Ok(if whole { Exit::Success } else { Exit::Failed })
        }
        Command::Snapshots { dry_run, read_data, json } => {
            let repairs = repair_snapshots(&repo, *dry_run, *read_data)?;
            if *json {
                print_json(&repairs)?;
            } else {
                print_snapshot_repairs(&repairs, *dry_run)?;
            }
            Ok(if repairs.iter().any(|r| r.error.is_some()) { Exit::Failed } else { Exit::Success })
        }
    }
}

fn print_index_repair(r: &IndexRepair) -> Result<()> {
    let verb = if r.dry_run { "would index" } else { "indexed" };
    for dir in &r.directories_recreated {
        outln!("directory {dir}/ was missing; {}", if r.dry_run { "would recreate it" } else { "recreated" });
    }
    for (name, why) in &r.packs_unreadable {
        outln!("UNREADABLE pack {}: {why}", short(name));
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

fn print_snapshot_repairs(repairs: &[SnapshotRepair], dry_run: bool) -> Result<()> {
    if repairs.is_empty() {
        outln!("every snapshot can be read whole; nothing to repair");
    }
    for r in repairs {
        let id = short(&r.snapshot);
        match (&r.error, &r.repaired_as) {
            (Some(e), _) => outln!("snapshot {id}: cannot be repaired: {e}"),
            (None, Some(new)) => outln!(
                "snapshot {id}: wrote repaired snapshot {} without {} lost path(s); `holdfast forget {id}` when you are satisfied",
                short(new),
                r.lost.len()
            ),
            (None, None) => outln!(
                "snapshot {id}: {} path(s) cannot be read{}",
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
