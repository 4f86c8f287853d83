//! `holdfast diff FROM TO [PATH]`: what changed between two snapshots.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{Context, escape_text, print_json};
use crate::diff::{Change, Counts, diff};
use crate::exit::Exit;
use crate::units::human;

pub const EXAMPLES: &str = "\
Each line starts with what happened: + added, - removed, M content modified,
T type changed (a file became a directory, ...), U metadata only (mode,
owner, group, mtime, xattrs, flags: listed after the path). A renamed file
shows as removed and added.

Examples:
  holdfast diff 3f2a9c1e latest                 everything that changed since 3f2a9c1e
  holdfast diff 3f2a9c1e 7b0d44aa /srv/app      only below /srv/app
  holdfast diff --stat 3f2a9c1e latest          counts and sizes only";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The older snapshot: an id prefix or `latest`.
    pub from: String,
    /// The newer snapshot: an id prefix or `latest`.
    pub to: String,
    /// Only this path and what is below it.
    #[arg(value_parser = super::path_in_snapshot())]
    pub path: Option<PathBuf>,
    /// Only the counts and sizes.
    #[arg(long)]
    pub stat: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let repo = ctx.open()?;
    let (from_id, from) = repo.find_snapshot(&args.from, false)?;
    let (to_id, to) = repo.find_snapshot(&args.to, false)?;
    let d = diff(&repo, (&from_id, &from), (&to_id, &to), args.path.as_deref())?;
    if args.json {
        print_json(&d)?;
        return Ok(Exit::Success);
    }
    let mut out = super::stdout_in_blocks();
    if !args.stat {
        for c in &d.changes {
            let mut line = format!("{}    {}", c.change.mark(), escape_text(&c.path_bytes));
            if c.kind == "dir" && c.change != Change::Metadata {
                line.push('/');
            }
            if !c.metadata.is_empty() {
                line.push_str(&format!("  ({})", c.metadata.join(", ")));
            }
            writeln!(out, "{line}")?;
        }
    }
    let s = &d.stat;
    let counts = |c: &Counts| format!("{} files, {} dirs, {} other, {}", c.files, c.dirs, c.other, human(c.bytes));
    writeln!(out, "added:         {}", counts(&s.added))?;
    writeln!(out, "removed:       {}", counts(&s.removed))?;
    writeln!(out, "modified:      {}", counts(&s.modified))?;
    writeln!(out, "type changed:  {}", s.type_changed)?;
    writeln!(out, "metadata only: {}", s.metadata_only)?;
    out.flush()?;
    Ok(Exit::Success)
}
