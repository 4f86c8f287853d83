//! `holdfast copy`: copy snapshots (only what the target lacks) between
//! repositories that share keys and chunker.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::{Context, FilterArgs, print_json};
use crate::engine::repository::Repository;
use crate::engine::snapshot::Snapshot;
use crate::exit::Exit;
use crate::secrets::{RepositoryRef, read_passphrase};
use crate::units::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The source repository (directory, or a name from the config).
    #[arg(long, value_name = "REPO")]
    pub from: String,
    /// The target repository (directory, or a name from the config).
    #[arg(long, value_name = "REPO")]
    pub to: String,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    // A configured repository opens with its own passphrase source; a path
    // or URL with $HOLDFAST_FROM_PASSPHRASE (source) or $HOLDFAST_PASSPHRASE.
    let open = |name: &str| -> Result<Repository> {
        match RepositoryRef::resolve(ctx.config_if_given(), Path::new(name)) {
            RepositoryRef::Configured(r) => crate::secrets::open_repository(r),
            given => {
                let env = if name == args.from { "HOLDFAST_FROM_PASSPHRASE" } else { "HOLDFAST_PASSPHRASE" };
                let pass = read_passphrase(None, env, &format!("Passphrase of {name}"), false)?;
                Ok(Repository::open(&given.location()?, &pass)?)
            }
        }
    };
    let (source, target) = (open(&args.from)?, open(&args.to)?);
    let filter = args.filter.filter();
    let wanted = |s: &Snapshot| filter.matches(s);
    let display = ctx.show_progress("copy");
    let progress = display.as_ref().map(|d| d.progress());
    let report = crate::engine::copy::copy_snapshots(&source, &target, &wanted, progress.as_deref());
    drop(display);
    let report = report?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "copied {} snapshot(s) ({} already there): {} blobs, {}",
            report.snapshots_copied,
            report.snapshots_present,
            report.blobs_copied,
            human(report.bytes_copied)
        );
    }
    Ok(Exit::Success)
}
