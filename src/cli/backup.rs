//! `holdfast backup`: back up paths as one snapshot (no job needed).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::{Context, SnapshotView, print_json};
use crate::engine::backup::{BackupOptions, BackupSource, backup};
use crate::exit::Exit;
use crate::units::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Read every file, even those unchanged since the last snapshot.
    #[arg(long)]
    pub no_parent: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let repo = ctx.open()?;
    let sources = args.paths.iter().map(|p| BackupSource::same_path(p)).collect::<Result<Vec<_>, _>>()?;
    let opts = BackupOptions {
        tags: args.tags.clone(),
        use_parent: !args.no_parent,
        threads: ctx.threads,
        cancel: Some(ctx.interrupt.flag().clone()),
        ..Default::default()
    };
    let result = backup(&repo, &sources, &opts)?;
    let s = &result.snapshot.summary;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        print_json(&SnapshotView::new(&result.id, &result.snapshot))?;
    } else {
        eprintln!(
            "snapshot {} saved: {} files, {} dirs, {} ({} unchanged files); read {}, added {} to the repository in {:.1}s",
            result.id.short(),
            s.files,
            s.dirs,
            human(s.bytes),
            s.files_unchanged,
            human(s.bytes_read),
            human(s.bytes_added),
            s.duration_secs
        );
        outln!("{}", result.id);
    }
    if s.incomplete {
        eprintln!(
            "warning: snapshot {} is INCOMPLETE: {} file(s) could not be backed up as they were (see the warnings above)",
            result.id.short(),
            s.warnings.len()
        );
        return Ok(Exit::Warnings);
    }
    Ok(Exit::Success)
}
