//! `holdfast generate`: man pages and shell completions, made from the same
//! clap definitions as `--help`, so they can never drift from the commands
//! (the Debian package ships them; `scripts/package.sh` calls this).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use super::{Cli, Context};
use crate::exit::Exit;

pub const EXAMPLES: &str = "\
Examples:
  holdfast generate man /tmp/man && man -l /tmp/man/holdfast-run.1
  holdfast generate completions bash > /etc/bash_completion.d/holdfast
  holdfast generate completions zsh > /usr/local/share/zsh/site-functions/_holdfast
  holdfast generate completions fish > ~/.config/fish/completions/holdfast.fish";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write holdfast.1 and one page per command (holdfast-run.1, …) into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the completion script for a shell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub fn run(cmd: &Command, _ctx: &Context) -> Result<Exit> {
    match cmd {
        Command::Man { dir } => {
            crate::fsutil::create_dir_all(dir, 0o755)?;
            let mut cli = Cli::command().disable_help_subcommand(true);
            cli.build();
            let source = format!("holdfast {}", cli.get_version().unwrap_or_default());
            write_man_pages(cli, &source, dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "holdfast", &mut out);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
        }
    }
    Ok(Exit::Success)
}

/// `cmd`'s page and those of its subcommands (holdfast-key-export.1, …),
/// each saying which holdfast it documents; readable by all (0644, not
/// holdfast's private umask), written whole and renamed into place.
fn write_man_pages(cmd: clap::Command, source: &str, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub.clone(), source, dir)?;
    }
    let page = clap_mangen::Man::new(cmd).source(source).manual("holdfast manual");
    let mut text = Vec::new();
    page.render(&mut text)?;
    crate::fsutil::write_atomically(&dir.join(page.get_filename()), &text, 0o644)?;
    Ok(())
}
