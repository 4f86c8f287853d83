//! `holdfast serve DIR [--append-only]`: the storage host's end of an
//! `ssh://` repository, speaking on stdin/stdout (see `engine::backend::serve`).

use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::Context;
use crate::exit::Exit;

pub const EXAMPLES: &str = "\
Run by ssh for a client's `url = \"ssh://backup@box/srv/holdfast/shop\"`; in the storage
host's ~backup/.ssh/authorized_keys, one line per key:

  # the backup host: may add, never remove or replace
  command=\"holdfast serve --append-only /srv/holdfast/shop\",restrict ssh-ed25519 AAAA... backup@web1
  # the admin's key: prune and forget too
  command=\"holdfast serve /srv/holdfast/shop\",restrict ssh-ed25519 AAAA... admin@laptop";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository's directory on this host (created by the client's `init`).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Only add: never remove or replace a file, whatever the client asks
    /// (prune and forget fail before changing anything).
    #[arg(long)]
    pub append_only: bool,
}

pub fn run(args: &Args, _ctx: &Context) -> Result<Exit> {
    let dir = std::path::absolute(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    // The raw descriptors, buffered here: Rust's stdout would flush at
    // every newline byte of a pack.
    let raw = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(std::fs::File::from);
    let stdin = raw(std::io::stdin().as_fd()).context("stdin")?;
    let stdout = raw(std::io::stdout().as_fd()).context("stdout")?;
    crate::fsutil::widen_pipe(stdin.as_fd());
    crate::fsutil::widen_pipe(stdout.as_fd());
    crate::engine::backend::serve::serve(
        &dir,
        args.append_only,
        std::io::BufReader::with_capacity(1 << 20, stdin),
        std::io::BufWriter::with_capacity(1 << 20, stdout),
    )
    .with_context(|| format!("holdfast serve {}", dir.display()))?;
    Ok(Exit::Success)
}
