//! `holdfast recover JOB`: run the `finally` hooks a killed run still owes.

use std::io::Write;

use anyhow::Result;

use super::Context;
use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub job: String,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let job = ctx.config("recover")?.job(&args.job)?;
    let _lock = crate::spool::JobLock::acquire(&job.spool, &job.name, "recovery")?;
    match crate::journal::recover(job)? {
        Some(r) => {
            outln!("job {}: {}", job.name, r.describe());
            if r.hooks_failed > 0 {
                return Ok(Exit::Failed);
            }
        }
        None => outln!("job {}: nothing to recover", job.name),
    }
    Ok(Exit::Success)
}
