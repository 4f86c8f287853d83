//! `holdfast find PATTERN...`: which snapshots hold a matching path or
//! database, grouped by path, newest first.

use std::io::Write;

use anyhow::Result;

use super::{Context, FilterArgs, escape_text, print_json};
use crate::engine::select::Patterns;
use crate::exit::{Exit, Usage};
use crate::find::{FindQuery, find};
use crate::units::{human, local_time, parse_since};

pub const EXAMPLES: &str = "\
Patterns are globs, as in `exclude`: one starting with `/` matches from the
root, any other at any depth (`notes.txt`, `*.sql`, `Maildir/cur/*`); `*`
also matches `/`, so `/srv/*/notes.txt` finds it at any depth below /srv.
Database dumps match by database name.

Examples:
  holdfast find notes.txt                       every snapshot holding a notes.txt
  holdfast find --job shop --since 7d '*.pdf'   the shop job's PDFs of the last week
  holdfast find -i --path /home/ann 'report*'   below /home/ann, ignoring case
  holdfast find /srv/app/config.php --newest 5  in the five newest snapshots
  holdfast find shop_production                 the dumps of that database";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Glob patterns: a path (`/srv/*/notes.txt`) or a name (`notes.txt`).
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Match patterns ignoring case.
    #[arg(short = 'i', long)]
    pub ignore_case: bool,
    /// Search only the N newest snapshots (after the filters).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub newest: Option<u64>,
    /// Search only snapshots made since then: `7d`, `2026-11-30`, `2026-11-30 14:00`.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<jiff::Timestamp>,
    /// `--path` also limits the matches to that path and below it.
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let (plain, folded) = if args.ignore_case { (&[][..], &args.patterns[..]) } else { (&args.patterns[..], &[][..]) };
    let patterns = Patterns::new(plain, folded).map_err(|e| Usage(e.replace("exclude pattern", "pattern")))?;
    let repo = ctx.open_for_job(args.filter.job.as_deref())?;
    let mut snaps = ctx.snapshots(&repo, &args.filter.filter())?;
    if let Some(since) = args.since {
        snaps.retain(|(_, s)| s.time >= since);
    }
    if let Some(n) = args.newest {
        snaps.drain(..snaps.len().saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)));
    }
    let query = FindQuery { patterns, under: args.filter.paths.clone() };
    let found = find(&repo, &snaps, &query)?;
    if args.json {
        print_json(&found)?;
        return Ok(Exit::Success);
    }
    let mut out = super::stdout_in_blocks();
    for p in &found.paths {
        writeln!(out, "{}", escape_text(&p.path_bytes))?;
        for v in found.versions(p) {
            let e = v.entry;
            writeln!(
                out,
                "  {}  {}  {} {:>10}  modified {}",
                v.short_id,
                local_time(&v.time),
                e.mode_string,
                if e.kind == "file" { human(e.size) } else { e.kind.to_string() },
                e.mtime
            )?;
        }
    }
    for d in &found.databases {
        writeln!(
            out,
            "database {} ({}, entry {} of job {})",
            escape_text(d.name.as_bytes()),
            d.kind,
            escape_text(d.entry.as_bytes()),
            escape_text(d.job.as_bytes())
        )?;
        for v in &d.versions {
            writeln!(
                out,
                "  {}  {}  {:>10}  {}",
                v.short_id,
                local_time(&v.time),
                human(v.size),
                escape_text(v.file.as_bytes())
            )?;
        }
    }
    // What was found comes before the summary on a terminal.
    out.flush()?;
    eprintln!(
        "{} path(s) and {} database(s) found; {} snapshot(s) searched ({} directories read)",
        found.paths.len(),
        found.databases.len(),
        found.snapshots_searched,
        found.directories_read
    );
    Ok(Exit::Success)
}
