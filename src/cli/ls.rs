//! `holdfast ls SNAPSHOT [PATH]`: list a snapshot's entries.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{Context, escape_text, print_json};
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot id prefix, or `latest`.
    pub snapshot: String,
    /// Only this path (and what is below it).
    pub path: Option<PathBuf>,
    /// With `latest`: take the newest readable snapshot even if some
    /// snapshot cannot be read (it might be newer).
    #[arg(long)]
    pub skip_damaged: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let repo = ctx.open()?;
    let (_, snap) = repo.find_snapshot(&args.snapshot, args.skip_damaged)?;
    let entries = crate::listing::list(&repo, &snap, args.path.as_deref())?;
    if args.json {
        print_json(&entries)?;
        return Ok(Exit::Success);
    }
    let mut out = super::stdout_in_blocks();
    for e in &entries {
        writeln!(
            out,
            "{} {:>8} {:>8} {:>12} {}  {}",
            e.mode_string,
            escape_text(e.user.as_bytes()),
            escape_text(e.group.as_bytes()),
            e.size,
            e.mtime,
            escape_text(&e.path_bytes)
        )?;
    }
    out.flush()?;
    Ok(Exit::Success)
}
