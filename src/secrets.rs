//! Where passphrases come from: a file, a command's output, the config
//! (demos only), `$HOLDFAST_PASSPHRASE`, or systemd's credentials directory.
//! Nothing here logs or formats a passphrase into an error.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::PassphraseSource;
use crate::process::{self, ProcessSpec};

/// The credential name holdfast reads from `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "holdfast-passphrase";

/// A passphrase file's content without its final newline.
pub fn read_passphrase_file(f: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(f).with_context(|| format!("reading the passphrase file {}", f.display()))?;
    let s = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let s = s.strip_suffix(b"\r").unwrap_or(s);
    if s.is_empty() {
        bail!("the passphrase file {} is empty", f.display());
    }
    Ok(s.to_vec())
}

/// `$HOLDFAST_PASSPHRASE`, or the systemd credential, if either is there.
pub fn passphrase_from_environment() -> Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(v) = std::env::var_os("HOLDFAST_PASSPHRASE") {
        if v.is_empty() {
            bail!("$HOLDFAST_PASSPHRASE is set but empty");
        }
        return Ok(Some(v.as_bytes().to_vec()));
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let f = Path::new(&dir).join(CREDENTIAL_NAME);
        if f.exists() {
            return read_passphrase_file(&f).map(Some);
        }
    }
    Ok(None)
}

/// Resolve a configured passphrase source. Under systemd, a credential
/// `holdfast-passphrase-<repository>` (from `LoadCredential=`) comes first.
pub fn resolve(source: &PassphraseSource, repository: &str) -> Result<Vec<u8>> {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let f = Path::new(&dir).join(format!("{CREDENTIAL_NAME}-{repository}"));
        if f.exists() {
            return read_passphrase_file(&f);
        }
    }
    match source {
        PassphraseSource::File(f) => read_passphrase_file(f),
        PassphraseSource::Inline(p) => Ok(p.as_bytes().to_vec()),
        PassphraseSource::Command(cmd) => {
            let spec = ProcessSpec { argv: cmd.argv(), timeout: Duration::from_secs(60), ..Default::default() };
            let out = process::run(&spec, &AtomicBool::new(false))
                .with_context(|| format!("running the passphrase command of repository {repository:?}"))?;
            if !out.success() {
                bail!("{}", out.failure_message(&format!("the passphrase command of repository {repository:?}")));
            }
            let s = out.stdout.strip_suffix(b"\n").unwrap_or(&out.stdout).to_vec();
            if s.is_empty() {
                bail!("the passphrase command of repository {repository:?} printed nothing");
            }
            Ok(s)
        }
        PassphraseSource::Environment => passphrase_from_environment()?.with_context(|| {
            format!("repository {repository:?} has no passphrase_file or passphrase_command, and $HOLDFAST_PASSPHRASE is not set")
        }),
    }
}
