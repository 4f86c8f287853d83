//! `holdfast key`: export, import, change and add the repository's keys.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use super::Context;
use crate::engine::keyfile::KeyFile;
use crate::engine::repository::import_key;
use crate::exit::Exit;
use crate::secrets::read_passphrase;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write the key file (still protected by its passphrase) to keep safe.
    Export {
        /// A printable form, with a checksum on every line.
        #[arg(long)]
        paper: bool,
        /// Write to FILE instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Put an exported key (file or paper form) back into the repository.
    Import { file: PathBuf },
    /// Change the passphrase of the key that unlocks the repository.
    Passwd(NewPassphrase),
    /// Add a key for another passphrase.
    Add(NewPassphrase),
}

#[derive(Debug, clap::Args)]
pub struct NewPassphrase {
    /// Read the new passphrase from this file (else $HOLDFAST_NEW_PASSPHRASE, else a prompt).
    #[arg(long, value_name = "FILE")]
    new_passphrase_file: Option<PathBuf>,
}

impl NewPassphrase {
    fn read(&self, prompt: &str) -> Result<Vec<u8>> {
        read_passphrase(self.new_passphrase_file.as_deref(), "HOLDFAST_NEW_PASSPHRASE", prompt, true)
    }
}

pub fn run(cmd: &Command, ctx: &Context) -> Result<Exit> {
    match cmd {
        Command::Export { paper, output } => {
            let key = ctx.open()?.key_file()?;
            let text = if *paper { key.to_paper()? } else { key.to_json() + "\n" };
            match output {
                Some(f) => {
                    // A key is a key: 0600 from the first byte, whatever was there.
                    crate::fsutil::write_atomically(f, text.as_bytes(), crate::fsutil::PRIVATE_FILE)?;
                    eprintln!("key written to {} (mode 0600)", f.display());
                }
                None => write!(std::io::stdout(), "{text}")?,
            }
        }
        Command::Import { file } => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let key = if text.trim_start().starts_with('{') {
                KeyFile::from_json(text.as_bytes())?
            } else {
                KeyFile::from_paper(&text)?
            };
            let repository = ctx.repository()?;
            let location = repository.location()?;
            import_key(
                &location,
                &key,
                &repository.passphrase(ctx.passphrase_file(), "Repository passphrase", false)?,
            )?;
            eprintln!("key imported into {location}");
        }
        Command::Passwd(new) => {
            let mut repo = ctx.open()?;
            repo.change_passphrase(&new.read("New passphrase")?)?;
            eprintln!("passphrase changed");
        }
        Command::Add(new) => {
            let repo = ctx.open()?;
            let name = repo.add_key(&new.read("Passphrase for the new key")?)?;
            eprintln!("added key {}", super::short(&name));
        }
    }
    Ok(Exit::Success)
}
