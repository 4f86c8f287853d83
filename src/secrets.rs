//! Where passphrases come from: a file, a command's output, the config
//! (demos only), `$HOLDFAST_PASSPHRASE`, or systemd's credentials directory;
//! and S3 keys, from files or the AWS environment variables.
//! Nothing here logs or formats a passphrase into an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::config::{PassphraseSource, RepositoryConfig, RepositoryPlace};
use crate::engine::backend::{Location, S3Settings, SshSettings};
use crate::engine::repository::Repository;
use crate::process::{self, ProcessSpec};

/// The credential name holdfast reads from `$CREDENTIALS_DIRECTORY`.
const CREDENTIAL_NAME: &str = "holdfast-passphrase";

/// Credential names of a bucket's access key id and secret key.
const S3_ID_CREDENTIAL: &str = "holdfast-s3-access-key-id";
const S3_SECRET_CREDENTIAL: &str = "holdfast-s3-secret-access-key";
/// The private key of an SSH repository, as a systemd credential.
const SSH_IDENTITY_CREDENTIAL: &str = "holdfast-ssh-identity";

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
    loaded_credential(CREDENTIAL_NAME).map(|f| read_passphrase_file(&f)).transpose()
}

/// Resolve a configured passphrase source. Under systemd, a credential
/// `holdfast-passphrase-<repository>` (from `LoadCredential=`) comes first.
pub fn resolve(source: &PassphraseSource, repository: &str) -> Result<Vec<u8>> {
    if let Some(f) = loaded_credential(&credential_name(CREDENTIAL_NAME, repository)) {
        return read_passphrase_file(&f);
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

/// Where a configured repository is, with its S3 credentials read from
/// their files (or `$AWS_ACCESS_KEY_ID` / `$AWS_SECRET_ACCESS_KEY`).
pub fn location(repo: &RepositoryConfig) -> Result<Location> {
    match &repo.place {
        RepositoryPlace::Local(p) => Ok(Location::Local(p.clone())),
        RepositoryPlace::S3(s) => {
            let (access_key_id, secret_access_key) = match (&s.access_key_id_file, &s.secret_access_key_file) {
                (Some(id), Some(secret)) => {
                    let [id, secret] = [(id, S3_ID_CREDENTIAL), (secret, S3_SECRET_CREDENTIAL)].map(|(f, name)| {
                        loaded_credential(&credential_name(name, &repo.name)).unwrap_or_else(|| f.clone())
                    });
                    (read_secret_file(&id, "access key id")?, read_secret_file(&secret, "secret key")?)
                }
                _ => s3_keys_from_environment().with_context(|| {
                    format!("repository {:?} has no access_key_id_file/secret_access_key_file", repo.name)
                })?,
            };
            Ok(Location::S3(S3Settings {
                bucket: s.bucket.clone(),
                prefix: s.prefix.clone(),
                endpoint: s.endpoint.clone(),
                region: s.region.clone(),
                access_key_id,
                secret_access_key,
                connections: s.connections,
                request_timeout: s.timeout,
            }))
        }
        RepositoryPlace::Ssh(s) => {
            let mut s = s.clone();
            if s.identity_file.is_some() {
                s.identity_file = loaded_credential(&credential_name(SSH_IDENTITY_CREDENTIAL, &repo.name))
                    .or_else(|| s.identity_file.clone());
            }
            Ok(Location::Ssh(s))
        }
    }
}

/// A `--repo` argument: a directory; `ssh://[user@]host[:port]/path` (ssh's
/// own configuration says which key and known hosts); or `s3://bucket/prefix`
/// with the endpoint, region and keys from the usual AWS environment variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
pub fn location_from_argument(arg: &Path) -> Result<Location> {
    let text = arg.to_string_lossy();
    if text.starts_with("ssh://") {
        return Ok(Location::Ssh(SshSettings::from_url(&text).map_err(anyhow::Error::msg)?));
    }
    if !text.starts_with("s3://") {
        return Ok(Location::Local(arg.to_path_buf()));
    }
    let (bucket, prefix) = S3Settings::parse_url(&text).map_err(anyhow::Error::msg)?;
    let (access_key_id, secret_access_key) = s3_keys_from_environment()?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    Ok(Location::S3(S3Settings {
        bucket,
        prefix,
        endpoint: env("AWS_ENDPOINT_URL"),
        region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into()),
        access_key_id,
        secret_access_key,
        connections: match env("HOLDFAST_S3_CONNECTIONS") {
            None => S3Settings::DEFAULT_CONNECTIONS,
            Some(v) => {
                let most = crate::engine::backend::MAX_CONNECTIONS;
                v.trim().parse().ok().filter(|n| (1..=most).contains(n)).ok_or_else(|| {
                    anyhow::anyhow!("HOLDFAST_S3_CONNECTIONS={v:?} is not a number of connections from 1 to {most}")
                })?
            }
        },
        request_timeout: S3Settings::DEFAULT_TIMEOUT,
    }))
}

fn s3_keys_from_environment() -> Result<(String, String)> {
    match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
        (Ok(id), Ok(secret)) if !id.is_empty() && !secret.is_empty() => Ok((id, secret)),
        _ => bail!("no S3 credentials: set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY"),
    }
}

/// A repository's credential: `<what>-<repository>`.
fn credential_name(what: &str, repository: &str) -> String {
    format!("{what}-{repository}")
}

/// The file systemd's `LoadCredential=` put in `$CREDENTIALS_DIRECTORY`
/// under `name`, if there is one.
fn loaded_credential(name: &str) -> Option<PathBuf> {
    let f = Path::new(&std::env::var_os("CREDENTIALS_DIRECTORY")?).join(name);
    f.exists().then_some(f)
}

/// Every secret file of a repository with the credential name holdfast
/// looks for it under, for `LoadCredential=` in systemd units (a service
/// that cannot read `/etc/holdfast` itself still gets its secrets).
pub fn credential_files(repo: &RepositoryConfig) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let PassphraseSource::File(f) = &repo.passphrase {
        out.push((credential_name(CREDENTIAL_NAME, &repo.name), f.clone()));
    }
    if let RepositoryPlace::S3(s) = &repo.place
        && let (Some(id), Some(secret)) = (&s.access_key_id_file, &s.secret_access_key_file)
    {
        out.push((credential_name(S3_ID_CREDENTIAL, &repo.name), id.clone()));
        out.push((credential_name(S3_SECRET_CREDENTIAL, &repo.name), secret.clone()));
    }
    if let RepositoryPlace::Ssh(s) = &repo.place
        && let Some(identity) = &s.identity_file
    {
        out.push((credential_name(SSH_IDENTITY_CREDENTIAL, &repo.name), identity.clone()));
    }
    out
}

/// A one-line secret from a file (its content never appears in an error).
fn read_secret_file(f: &Path, what: &str) -> Result<String> {
    let bytes = read_passphrase_file(f).with_context(|| format!("reading the S3 {what}"))?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the S3 {what} in {} is not text", f.display()))
}

/// Open a configured repository with its passphrase.
pub fn open_repository(cfg: &RepositoryConfig) -> Result<Repository> {
    let pass = crate::secrets::resolve(&cfg.passphrase, &cfg.name)?;
    let location = crate::secrets::location(cfg)?;
    Repository::open(&location, &pass).with_context(|| format!("opening repository {:?}", cfg.name))
}

/// A passphrase from a file, the environment, or (on a terminal) a prompt.
pub fn read_passphrase(file: Option<&Path>, env: &str, prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    if let Some(f) = file {
        return read_passphrase_file(f);
    }
    if env == "HOLDFAST_PASSPHRASE" {
        if let Some(p) = passphrase_from_environment()? {
            return Ok(p);
        }
    } else if let Some(v) = std::env::var_os(env) {
        use std::os::unix::ffi::OsStrExt;
        if v.is_empty() {
            bail!("${env} is set but empty");
        }
        return Ok(v.as_bytes().to_vec());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let option = match env {
            "HOLDFAST_FROM_PASSPHRASE" => "--from-passphrase-file",
            "HOLDFAST_NEW_PASSPHRASE" => "--new-passphrase-file",
            _ => "--passphrase-file",
        };
        return Err(crate::Error::NoPassphrase(format!("set ${env} or pass {option}")).into());
    }
    let first = rpassword::prompt_password(format!("{prompt}: "))?;
    if confirm && rpassword::prompt_password("Repeat it: ")? != first {
        bail!("the passphrases differ");
    }
    if first.is_empty() {
        bail!("empty passphrase");
    }
    Ok(first.into_bytes())
}

/// The repository a command names with `--repo`: a configured one (by its
/// name) or a directory / `s3://` URL given directly.
#[derive(Debug, Clone)]
pub enum RepositoryRef<'a> {
    Configured(&'a RepositoryConfig),
    Given(PathBuf),
}

impl<'a> RepositoryRef<'a> {
    /// `arg` as the name of a repository of `config` when there is one by
    /// that name, else as a path or URL.
    pub fn resolve(config: Option<&'a crate::config::Config>, arg: &Path) -> RepositoryRef<'a> {
        match config.and_then(|c| c.repositories.get(&*arg.to_string_lossy())) {
            Some(r) => RepositoryRef::Configured(r),
            None => RepositoryRef::Given(arg.to_path_buf()),
        }
    }

    pub fn location(&self) -> Result<Location> {
        match self {
            RepositoryRef::Configured(r) => location(r),
            RepositoryRef::Given(p) => location_from_argument(p),
        }
    }

    /// Its passphrase: a configured repository's own source unless `file`
    /// is given; else `file`, `$HOLDFAST_PASSPHRASE`, or a prompt.
    pub fn passphrase(&self, file: Option<&Path>, prompt: &str, confirm: bool) -> Result<Vec<u8>> {
        match (self, file) {
            (RepositoryRef::Configured(r), None) => resolve(&r.passphrase, &r.name),
            _ => read_passphrase(file, "HOLDFAST_PASSPHRASE", prompt, confirm),
        }
    }

    /// Open it with its passphrase (see [`RepositoryRef::passphrase`]).
    pub fn open(&self, passphrase_file: Option<&Path>) -> Result<Repository> {
        if let (RepositoryRef::Configured(r), None) = (self, passphrase_file) {
            return open_repository(r);
        }
        let pass = self.passphrase(passphrase_file, "Repository passphrase", false)?;
        Ok(Repository::open(&self.location()?, &pass)?)
    }
}
