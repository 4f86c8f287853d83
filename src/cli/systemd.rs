//! `holdfast systemd`: write (or print) service and timer units for jobs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::Context;
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the units (default: print them).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Units for a user's systemd instance instead of the system's.
    #[arg(long)]
    pub user: bool,
    pub jobs: Vec<String>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let config = ctx.config("systemd")?;
    let config_path = std::path::absolute(ctx.config_path().context("no config path")?)?;
    let units = crate::systemd::units(&config_path, &ctx.jobs(config, &args.jobs)?, args.user)?;
    match &args.output {
        Some(dir) => {
            crate::fsutil::create_dir_all(dir, 0o755)?;
            for (name, text) in &units {
                let p = dir.join(name);
                // Units hold no secret (credentials are loaded by path).
                crate::fsutil::write_atomically(&p, text.as_bytes(), 0o644)?;
                outln!("wrote {}", p.display());
            }
        }
        None => {
            for (name, text) in &units {
                outln!("# {name}\n{text}");
            }
        }
    }
    Ok(Exit::Success)
}
