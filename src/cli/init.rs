//! `holdfast init`: create a repository and its first key.

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};

use super::Context;
use crate::engine::chunker::ChunkerParams;
use crate::engine::repository::{InitOptions, Repository};
use crate::exit::Exit;
use crate::secrets::{RepositoryRef, read_passphrase};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// zstd level for stored data (-7 to 22: negative levels are faster,
    /// 0 stores uncompressed).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    pub compression_level: i32,
    /// Average chunk size in bytes (a power of two, 4 KiB to 4 MiB).
    #[arg(long, default_value_t = ChunkerParams::DEFAULT_AVG)]
    pub avg_chunk_size: u32,
    /// Target pack size in bytes.
    #[arg(long, default_value_t = 16 << 20, hide = true)]
    pub pack_size: u32,
    /// Share keys and chunker with this repository (a directory, an
    /// s3:// URL, or a repository name from the config), so `copy` can
    /// move snapshots between them without re-encrypting. Its passphrase:
    /// the configured source for a name, else --from-passphrase-file or
    /// $HOLDFAST_FROM_PASSPHRASE.
    #[arg(long, value_name = "REPO")]
    pub copy_params_from: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    pub from_passphrase_file: Option<PathBuf>,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let target = ctx.repository()?;
    let location = target.location()?;
    let pass = target.passphrase(ctx.passphrase_file(), "New repository passphrase", true)?;
    let mut opts = InitOptions {
        compression_level: args.compression_level,
        chunker: ChunkerParams::with_average(args.avg_chunk_size).map_err(|e| anyhow!(e))?,
        pack_size: args.pack_size,
        master: None,
    };
    if let Some(src) = &args.copy_params_from {
        let other = open_parameter_source(ctx, src, args.from_passphrase_file.as_deref())?;
        opts = InitOptions { chunker: other.config().chunker, master: Some(other.master_key().clone()), ..opts };
    }
    let repo = Repository::init(&location, &pass, &opts)?;
    eprintln!(
        "created repository {} at {location}\nKeep its key safe: without the key and passphrase the backups cannot be read.\nExport it now with `holdfast key export --repo {location} --paper`.",
        repo.config().id.short(),
    );
    Ok(Exit::Success)
}

/// The repository to copy parameters from: a configured name opens with
/// its own passphrase source (unless a file is given); a path or URL with
/// `--from-passphrase-file` or `$HOLDFAST_FROM_PASSPHRASE`.
fn open_parameter_source(ctx: &Context, src: &std::path::Path, file: Option<&std::path::Path>) -> Result<Repository> {
    let source = RepositoryRef::resolve(ctx.config_if_given(), src);
    if let (RepositoryRef::Configured(r), None) = (&source, file) {
        return crate::secrets::open_repository(r);
    }
    let pass = read_passphrase(file, "HOLDFAST_FROM_PASSPHRASE", &format!("Passphrase of {}", src.display()), false)?;
    Repository::open(&source.location()?, &pass)
        .with_context(|| format!("opening {} (the repository to copy parameters from)", src.display()))
}
