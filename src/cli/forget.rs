//! `holdfast forget SNAPSHOT...`: remove snapshots by id.

use std::io::Write;

use anyhow::Result;

use super::{Context, print_json};
use crate::engine::crypto::Id;
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(required = true, value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Say what would be forgotten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let repo = ctx.open()?;
    let mut ids = Vec::new();
    for spec in &args.snapshots {
        let id = repo.snapshot_id(spec)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if !args.dry_run {
        crate::engine::gc::forget(&repo, &ids)?;
    }
    if args.json {
        let hex: Vec<String> = ids.iter().map(Id::to_hex).collect();
        print_json(&serde_json::json!({ "dry_run": args.dry_run, "forgotten": hex }))?;
    } else {
        for id in &ids {
            outln!("{} {}", if args.dry_run { "would forget" } else { "forgot" }, id);
        }
        if !args.dry_run {
            eprintln!("run `holdfast prune` to free the space only they used");
        }
    }
    Ok(Exit::Success)
}
