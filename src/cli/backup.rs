//! `holdfast backup`: back up paths as one snapshot (no job needed).

use std::io::Write;
use std::path::PathBuf;

use std::ffi::OsString;

use anyhow::{Context as _, Result};

use super::{Context, SnapshotView, print_json};
use crate::engine::backup::{BackupOptions, BackupSource, backup};
use crate::engine::select::{Patterns, Selection};
use crate::exit::Exit;
use crate::units::{escape_text, human};

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
    #[command(flatten)]
    pub select: SelectArgs,
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// What to leave out (the job's `files` keys of the same names).
#[derive(Debug, Default, clap::Args)]
pub struct SelectArgs {
    /// Leave out paths matching this glob (repeatable): `/srv/*/tmp` is
    /// anchored (starts with `/`); `node_modules` or `*.tmp` match at any
    /// depth. `*` also matches `/` (`/srv/*/tmp` leaves out
    /// `/srv/a/b/tmp` too). A matching directory is left out with
    /// everything below it.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Like --exclude, ignoring case (repeatable).
    #[arg(long = "iexclude", value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Read --exclude patterns from a file: one a line, `#` starts a comment.
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Do not descend into other file systems (mount points are kept empty).
    #[arg(long)]
    pub one_file_system: bool,
    /// Skip the contents of directories holding a valid CACHEDIR.TAG.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Skip the contents of directories holding a file of this name (repeatable).
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Leave out files and directories with the no-dump flag (chattr +d).
    #[arg(long)]
    pub exclude_nodump: bool,
}

impl SelectArgs {
    /// The selection these flags ask for, with holdfast's own `internal`
    /// directories.
    pub fn selection(&self, internal: Vec<(String, PathBuf)>) -> Result<Selection> {
        let mut patterns = self.exclude.clone();
        for file in &self.exclude_file {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            patterns.extend(Patterns::lines(&text));
        }
        let exclude = Patterns::excludes(&patterns, &self.iexclude).map_err(crate::exit::Usage)?;
        Ok(Selection {
            exclude,
            one_file_system: self.one_file_system,
            exclude_caches: self.exclude_caches,
            exclude_if_present: self.exclude_if_present.iter().map(OsString::from).collect(),
            exclude_nodump: self.exclude_nodump,
            internal,
        })
    }
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let repo = ctx.open()?;
    let sources = args.paths.iter().map(|p| BackupSource::same_path(p)).collect::<Result<Vec<_>, _>>()?;
    let mut internal: Vec<(String, PathBuf)> = Vec::new();
    if let Some(path) = ctx.repository()?.location()?.local_path() {
        internal.push(("the repository".into(), path.to_path_buf()));
    }
    let display = ctx.show_progress("backup");
    let opts = BackupOptions {
        tags: args.tags.clone(),
        progress: display.as_ref().map(|d| d.progress()),
        selection: args.select.selection(crate::engine::select::with_cache(internal))?,
        use_parent: !args.no_parent,
        threads: ctx.threads,
        cancel: Some(ctx.interrupt.flag().clone()),
        ..Default::default()
    };
    let result = backup(&repo, &sources, &opts);
    drop(display);
    let result = result?;
    let s = &result.snapshot.summary;
    for w in &s.warnings {
        eprintln!("warning: {}", escape_text(w.as_bytes()));
    }
    for l in &s.left_out {
        eprintln!("left out: {}", escape_text(l.as_bytes()));
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
