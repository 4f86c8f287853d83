//! `holdfast systemd`: write (or print) service and timer units for jobs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::Context;
use crate::exit::Exit;

/// The config directory of the Debian package's template units.
const PACKAGED_CONFIG: &str = "/etc/holdfast/jobs.d";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the units (default: print them).
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Units for a user's systemd instance instead of the system's.
    #[arg(long)]
    pub user: bool,
    /// Instead of per-job units: drop-ins that give the packaged
    /// holdfast@JOB.timer each job's schedule (JOB.timer.d/schedule.conf).
    #[arg(long, conflicts_with = "user")]
    pub template: bool,
    pub jobs: Vec<String>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let config = ctx.config("systemd")?;
    let config_path = std::path::absolute(ctx.config_path().context("no config path")?)?;
    let jobs = ctx.jobs(config, &args.jobs)?;
    let units = if args.template {
        if config_path != Path::new(PACKAGED_CONFIG) {
            eprintln!(
                "warning: the packaged holdfast@.service runs jobs of {PACKAGED_CONFIG}, not of {}",
                config_path.display()
            );
        }
        crate::systemd::template_drop_ins(&jobs)?
    } else {
        crate::systemd::units(&config_path, &jobs, args.user)?
    };
    match &args.output {
        Some(dir) => {
            for (name, text) in &units {
                let p = dir.join(name);
                if let Some(parent) = p.parent() {
                    crate::fsutil::create_dir_all(parent, 0o755)?;
                }
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
