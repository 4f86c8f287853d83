//! Job configuration: TOML files parsed, merged and resolved into one
//! validated [`Config`] before any work starts.
//!
//! A config is one file or a directory of `*.toml` files (one per
//! application). Each file may declare `[repositories.NAME]`, `[defaults]` and
//! `[jobs.NAME]`. Jobs inherit every key from `[defaults]` (of the file that
//! declares the job, else of any file) and override it. Relative paths are
//! relative to the file that names them. Errors name the file, line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::select::{Patterns, Selection};
use crate::units::DurationSpec;

/// A configuration error, located where possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}:{line}:{column}: {message}", file.display())]
    At { file: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", file.display())]
    InFile { file: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

// ------------------------------------------------------------ raw TOML shape

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    repositories: BTreeMap<PlainName, toml::Spanned<RawRepository>>,
    defaults: Option<RawJob>,
    #[serde(default)]
    jobs: BTreeMap<PlainName, toml::Spanned<RawJob>>,
}

/// A job or repository name, checked where it is written: names become
/// parts of file, systemd unit and credential names and command lines, so
/// letters, digits, '-', '_' and '.', starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PlainName(String);

impl<'de> Deserialize<'de> for PlainName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let plain = s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a usable name: job and repository names start with a letter or digit \
                 and use letters, digits, '-', '_' and '.'"
            )));
        }
        Ok(PlainName(s))
    }
}

/// A one-line string: values that reach generated systemd units and log
/// lines (descriptions, schedules) may not hold control characters — a
/// newline there would write extra unit directives. Refused where written,
/// with file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line(String);

impl<'de> Deserialize<'de> for Line {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_line(&s).map_err(serde::de::Error::custom)?;
        Ok(Line(s))
    }
}

/// A path that may reach a generated unit (spool, repositories, secret
/// files): like [`Line`], no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinePath(PathBuf);

impl<'de> Deserialize<'de> for LinePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let Line(s) = Line::deserialize(d)?;
        Ok(LinePath(PathBuf::from(s)))
    }
}

/// A file set's paths: none empty (it would quietly mean the config's
/// directory) and none holding NUL (no file is named so).
fn source_paths<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<PathBuf>, D::Error> {
    let paths = Vec::<PathBuf>::deserialize(d)?;
    if paths.iter().any(|p| p.as_os_str().is_empty()) {
        return Err(serde::de::Error::custom("an empty path: write \".\" for the config file's directory"));
    }
    if let Some(p) = paths.iter().find(|p| p.as_os_str().as_encoded_bytes().contains(&0)) {
        return Err(serde::de::Error::custom(format!("{:?} holds a NUL character: no file is named so", p.display())));
    }
    Ok(paths)
}

/// How often a failed run is tried again; bounded, so that a typo cannot
/// make a job retry for ever.
#[derive(Debug, Clone, Copy)]
struct Retries(u32);

impl Retries {
    const MAX: u32 = 100;
}

impl<'de> Deserialize<'de> for Retries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n > Retries::MAX {
            return Err(serde::de::Error::custom(format!("retries = {n}: at most {} expected", Retries::MAX)));
        }
        Ok(Retries(n))
    }
}

/// Refuse control characters (newlines, tabs, escapes, NUL).
pub fn check_line(s: &str) -> std::result::Result<(), String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => {
            Err(format!("{s:?} holds a control character ({c:?}); this value must be a single line of printable text"))
        }
        None => Ok(()),
    }
}

/// A file mode written as an octal string (`"0640"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 && s.len() <= 5 => Ok(FileMode(m)),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not a file mode: expected octal permission bits like \"0644\" or \"0640\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepository {
    /// A local directory…
    path: Option<LinePath>,
    /// …or an S3 bucket and prefix, or a directory on another host by SSH.
    url: Option<RepositoryUrl>,
    endpoint: Option<S3Endpoint>,
    region: Option<String>,
    access_key_id_file: Option<LinePath>,
    secret_access_key_file: Option<LinePath>,
    connections: Option<usize>,
    timeout: Option<DurationSpec>,
    identity_file: Option<LinePath>,
    known_hosts_file: Option<LinePath>,
    remote_command: Option<Line>,
    passphrase_file: Option<LinePath>,
    passphrase_command: Option<CommandLine>,
    /// Inline passphrase: for demos and tests only.
    passphrase: Option<String>,
}

/// Every key a job (or `[defaults]`) may have.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    description: Option<Line>,
    schedule: Option<Line>,
    retries: Option<Retries>,
    retry_delay: Option<DurationSpec>,
    max_age: Option<DurationSpec>,
    spool: Option<LinePath>,
    state_dir: Option<LinePath>,
    repositories: Option<toml::Spanned<Vec<String>>>,
    tags: Option<Vec<String>>,
    hooks: Option<Vec<Checked<HookConfig>>>,
    databases: Option<Vec<toml::Spanned<Checked<DatabaseConfig>>>>,
    files: Option<FilesConfig>,
    notify: Option<Vec<Checked<NotifyConfig>>>,
    metrics_dir: Option<LinePath>,
    metrics_mode: Option<FileMode>,
    verify_schedule: Option<Line>,
    retention: Option<crate::retention::Policy>,
    prune_after_backup: Option<bool>,
    dump_concurrency: Option<std::num::NonZeroUsize>,
}

/// A table checked as it is read, so that what is wrong with it on its own
/// is reported at its file, line and column (checks that need the rest of
/// the config happen in `resolve`).
#[derive(Debug, Clone)]
struct Checked<T>(T);

/// What is wrong with a value on its own; may fill in derived defaults.
trait Check {
    fn check(&mut self) -> std::result::Result<(), String>;
}

impl<'de, T: Deserialize<'de> + Check> Deserialize<'de> for Checked<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut value = T::deserialize(d)?;
        value.check().map_err(serde::de::Error::custom)?;
        Ok(Checked(value))
    }
}

impl Check for HookConfig {
    fn check(&mut self) -> std::result::Result<(), String> {
        match (self.phase, &self.ready) {
            (Phase::Hold, None) => Err("a `hold` hook needs `ready`, the line it prints once it holds".into()),
            (p, Some(_)) if p != Phase::Hold => Err("`ready` is only for `hold` hooks".into()),
            _ => Ok(()),
        }
    }
}

impl Check for NotifyConfig {
    fn check(&mut self) -> std::result::Result<(), String> {
        if self.command.is_some() == self.webhook.is_some() {
            return Err("give exactly one of `command` and `webhook`".into());
        }
        Ok(())
    }
}

impl Check for DatabaseConfig {
    fn check(&mut self) -> std::result::Result<(), String> {
        let kind = self.kind.as_str();
        match self.kind {
            DatabaseKind::Sqlite if self.path.is_none() => return Err("a sqlite entry needs `path`".into()),
            DatabaseKind::Postgresql | DatabaseKind::Mysql if self.name.is_none() => {
                return Err(format!("a {kind} entry needs `name` (a database, or \"all\")"));
            }
            _ => {}
        }
        if self.format != DumpFormat::Plain && self.kind != DatabaseKind::Postgresql {
            return Err(format!("`format = \"custom\"` is for postgresql entries only (this is a {kind} entry)"));
        }
        if self.lock.is_some() && self.kind != DatabaseKind::Mysql {
            return Err("`lock = \"global-read\"` is for mysql entries only".into());
        }
        if let Some(why) = redirecting_dump_arg(self.kind, &self.dump_args) {
            return Err(why);
        }
        let entry = self.entry_name();
        if entry.is_empty() || entry.contains('/') || entry.starts_with('.') {
            return Err(format!("database entry name {entry:?} cannot be used as a directory name; set `entry`"));
        }
        if self.run_as.is_some() && self.user.is_none() && self.kind != DatabaseKind::Sqlite {
            self.user = self.run_as.clone();
        }
        Ok(())
    }
}

/// Why `args` may not be a dump's arguments: an option that makes the dump
/// name its own database (`CREATE DATABASE`, `USE`, `\connect`), so that
/// loading it into a scratch or new database would write into the live one
/// instead, or that sends the dump somewhere other than holdfast. Read
/// left to right as the tools read them: `-vC` is `-v -C`, in `-tCust`
/// `Cust` is `-t`'s value, `-t -C` gives `-t` the value `-C`; long options
/// by any prefix, MySQL's also with `_` for `-` and `loose-`/`enable-`/
/// `maximum-` in front. (Restore and verify also refuse such a dump when
/// they load it: `dump::OneDatabase`.)
fn redirecting_dump_arg(kind: DatabaseKind, args: &[String]) -> Option<String> {
    // (forbidden long options, forbidden short letters, letters that take a
    // value, letters whose value may only be attached)
    let (long, short, takes_value, attached_only): (&[&str], &str, &str, &str) = match kind {
        DatabaseKind::Postgresql => (&["create", "file", "format", "dbname"], "CfFd", "dEfFjnNSTtZhpUe", ""),
        DatabaseKind::Mysql => {
            (&["databases", "all-databases", "add-drop-database", "result-file", "tab", "xml"], "BArTX", "hPuSwrT", "p")
        }
        DatabaseKind::Sqlite => return None,
    };
    let refuse = |opt: String, arg: &str| {
        Some(format!(
            "dump_args: {opt} ({arg:?}) is not allowed: holdfast chooses the dump's database, format and destination, and a dump that names its own database would load over the live one when restored or verified"
        ))
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        if let Some(spelled) = arg.strip_prefix("--") {
            let mut name = spelled.split('=').next().unwrap_or(spelled).to_string();
            if kind == DatabaseKind::Mysql {
                name = name.replace('_', "-");
                for prefix in ["loose-", "enable-", "maximum-"] {
                    if let Some(rest) = name.strip_prefix(prefix) {
                        name = rest.to_string();
                    }
                }
            }
            if let Some(l) = long.iter().find(|l| !name.is_empty() && l.starts_with(name.as_str())) {
                return refuse(format!("--{l}"), arg);
            }
        } else if let Some(cluster) = arg.strip_prefix('-') {
            let letters: Vec<char> = cluster.chars().collect();
            for (k, c) in letters.iter().enumerate() {
                if short.contains(*c) {
                    return refuse(format!("-{c}"), arg);
                }
                if attached_only.contains(*c) {
                    break;
                }
                if takes_value.contains(*c) {
                    if k + 1 == letters.len() {
                        i += 1;
                    }
                    break;
                }
            }
        }
    }
    None
}

// ------------------------------------------------------------ resolved shape

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub files: Vec<PathBuf>,
    pub repositories: BTreeMap<String, RepositoryConfig>,
    pub jobs: BTreeMap<String, Job>,
}

/// Where a repository is and how to get its passphrase.
#[derive(Debug, Clone)]
pub struct RepositoryConfig {
    pub name: String,
    pub place: RepositoryPlace,
    pub passphrase: PassphraseSource,
}

/// A local directory, a bucket (the credentials are read when it is opened,
/// see `secrets::location`), or a directory on another host by SSH.
#[derive(Debug, Clone)]
pub enum RepositoryPlace {
    Local(PathBuf),
    S3(S3Place),
    Ssh(crate::engine::backend::SshSettings),
}

#[derive(Debug, Clone)]
pub struct S3Place {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    /// Files holding the access key id and the secret key; without them,
    /// `$AWS_ACCESS_KEY_ID` and `$AWS_SECRET_ACCESS_KEY`.
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub connections: usize,
    pub timeout: Duration,
}

impl RepositoryConfig {
    /// The local directory, if it is one.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.place {
            RepositoryPlace::Local(p) => Some(p),
            RepositoryPlace::S3(_) | RepositoryPlace::Ssh(_) => None,
        }
    }

    /// A path or URL for messages.
    pub fn describe(&self) -> String {
        match &self.place {
            RepositoryPlace::Local(p) => p.display().to_string(),
            RepositoryPlace::S3(s) => crate::engine::backend::s3_url(&s.bucket, &s.prefix),
            RepositoryPlace::Ssh(s) => s.url(),
        }
    }
}

/// `s3://bucket/prefix` or `ssh://[user@]host[:port]/path`, checked when
/// the file is read.
#[derive(Debug, Clone)]
enum RepositoryUrl {
    S3 { bucket: String, prefix: String },
    Ssh(crate::engine::backend::SshSettings),
}

impl<'de> Deserialize<'de> for RepositoryUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.starts_with("ssh://") {
            let settings = crate::engine::backend::SshSettings::from_url(&s).map_err(serde::de::Error::custom)?;
            return Ok(RepositoryUrl::Ssh(settings));
        }
        let (bucket, prefix) = crate::engine::backend::S3Settings::parse_url(&s)
            .map_err(|e| serde::de::Error::custom(format!("{e} (or ssh://)")))?;
        Ok(RepositoryUrl::S3 { bucket, prefix })
    }
}

/// An S3 endpoint URL, checked when the file is read.
#[derive(Debug, Clone)]
struct S3Endpoint(String);

impl<'de> Deserialize<'de> for S3Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::engine::backend::S3Settings::check_endpoint(&s).map_err(serde::de::Error::custom)?;
        Ok(S3Endpoint(s))
    }
}

#[derive(Debug, Clone)]
pub enum PassphraseSource {
    File(PathBuf),
    Command(CommandLine),
    Inline(String),
    /// `$HOLDFAST_PASSPHRASE` (or `$CREDENTIALS_DIRECTORY/holdfast-passphrase`).
    Environment,
}

/// One job, with defaults applied.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// The file that declared it.
    pub file: PathBuf,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub retries: u32,
    pub retry_delay: Duration,
    pub max_age: Option<Duration>,
    pub spool: PathBuf,
    /// Where `run` records what happened (`<state_dir>/<job>/state.json`),
    /// for `status` and metrics: not the spool (`/var/lib/holdfast`).
    pub state_dir: PathBuf,
    /// The job's repositories, resolved (the first is where runs commit and
    /// restores read by default).
    pub repositories: Vec<RepositoryConfig>,
    /// What a restore of this job must never replace: the config's local
    /// repositories, the job's spool and state, the config files in use —
    /// each with what it is (for the refusal's message).
    pub protected: Vec<(String, PathBuf)>,
    /// What a run of this job never backs up: the config's local
    /// repositories, the job's spool, state and metrics directories.
    pub internal: Vec<(String, PathBuf)>,
    pub tags: Vec<String>,
    pub hooks: Vec<HookConfig>,
    pub databases: Vec<DatabaseConfig>,
    pub files: FilesConfig,
    pub notify: Vec<NotifyConfig>,
    /// Where to write `holdfast-<job>.prom` for node_exporter's textfile collector.
    pub metrics_dir: Option<PathBuf>,
    /// The mode of the metrics files (they hold no secret; readable by the
    /// node_exporter user): 0644 unless set.
    pub metrics_mode: u32,
    /// When `verify` runs (OnCalendar syntax), for the generated timer.
    pub verify_schedule: Option<String>,
    /// Which of the job's snapshots `prune` keeps (empty: all).
    pub retention: crate::retention::Policy,
    /// Prune the job's repositories after each successful run.
    pub prune_after_backup: bool,
    /// How many of the job's databases are dumped at the same time.
    pub dump_concurrency: usize,
}

/// A command: an argv list, or a string run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandLine {
    /// The argv to execute (a shell string becomes `/bin/sh -c STRING`).
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Argv(v) => v.clone(),
            CommandLine::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }

    /// Which of its strings a shell reads as a script: the whole string of
    /// a `/bin/sh -c` command, or in a list that runs a shell with `-c`
    /// itself (`["bash", "-c", "…", "name", "{{error}}"]`) the script after
    /// the options, not the arguments after it (which a script reads as
    /// `$1`, exactly).
    pub fn script_index(&self) -> Option<usize> {
        match self {
            CommandLine::Shell(_) => Some(0),
            CommandLine::Argv(v) => {
                let program = v.first().map(|p| p.rsplit('/').next().unwrap_or(p)).unwrap_or_default();
                let options = v.iter().skip(1).take_while(|a| a.starts_with('-') && a.as_str() != "--");
                let dash_c = options.clone().any(|a| !a.starts_with("--") && a.contains('c'));
                let shell = ["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh"].contains(&program);
                (shell && dash_c).then(|| 1 + options.count()).filter(|i| *i < v.len())
            }
        }
    }

    /// The same command with every string passed through `f`, told whether
    /// the string is a shell script (see [`CommandLine::script_index`]).
    pub fn try_map_scripts<E>(&self, mut f: impl FnMut(&str, bool) -> Result<String, E>) -> Result<CommandLine, E> {
        let script = self.script_index();
        Ok(match self {
            CommandLine::Argv(v) => {
                CommandLine::Argv(v.iter().enumerate().map(|(i, s)| f(s, Some(i) == script)).collect::<Result<_, E>>()?)
            }
            CommandLine::Shell(s) => CommandLine::Shell(f(s, true)?),
        })
    }

    /// The same command with every string passed through `f`.
    pub fn try_map<E>(&self, mut f: impl FnMut(&str) -> Result<String, E>) -> Result<CommandLine, E> {
        Ok(match self {
            CommandLine::Argv(v) => CommandLine::Argv(v.iter().map(|s| f(s)).collect::<Result<_, E>>()?),
            CommandLine::Shell(s) => CommandLine::Shell(f(s)?),
        })
    }

    pub fn display(&self) -> String {
        match self {
            CommandLine::Argv(v) => v.join(" "),
            CommandLine::Shell(s) => s.clone(),
        }
    }
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Before,
    /// Started after `before`, kept running through dumps and file capture.
    Hold,
    AfterDumps,
    AfterFiles,
    OnSuccess,
    OnFailure,
    Finally,
    /// Before a restore (e.g. stop the application).
    BeforeRestore,
    /// After a restore, also when it failed (e.g. start the application).
    AfterRestore,
}

impl Phase {
    /// The name as written in job files (`after_dumps`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::Hold => "hold",
            Phase::AfterDumps => "after_dumps",
            Phase::AfterFiles => "after_files",
            Phase::OnSuccess => "on_success",
            Phase::OnFailure => "on_failure",
            Phase::Finally => "finally",
            Phase::BeforeRestore => "before_restore",
            Phase::AfterRestore => "after_restore",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    pub phase: Phase,
    pub run: CommandLine,
    pub cwd: Option<PathBuf>,
    /// For ordinary hooks the longest run; for `hold` hooks the longest wait
    /// for the ready line. Default 5 minutes.
    #[serde(default = "DurationSpec::five_minutes")]
    pub timeout: DurationSpec,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run as this OS user (holdfast must run as root).
    pub user: Option<String>,
    /// `hold` hooks: the line the command prints once it holds what it holds.
    pub ready: Option<String>,
    /// `hold` hooks: how long to wait after closing its stdin before SIGTERM
    /// (default 10 s).
    #[serde(default = "DurationSpec::ten_seconds")]
    pub grace: DurationSpec,
}

impl HookConfig {}

/// A lock a database entry holds from before its dump until the files are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseLock {
    /// MySQL/MariaDB `FLUSH TABLES WITH READ LOCK` over holdfast's own connection.
    GlobalRead,
}

/// The form of a PostgreSQL dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpFormat {
    /// SQL text, loaded with `psql` in one transaction.
    #[default]
    Plain,
    /// pg_dump's archive format, uncompressed; loaded with `pg_restore --jobs`.
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseKind {
    Postgresql,
    Mysql,
    Sqlite,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub kind: DatabaseKind,
    /// A database name, or "all" (PostgreSQL, MySQL).
    pub name: Option<String>,
    /// The database file (SQLite).
    pub path: Option<PathBuf>,
    /// The directory name of this entry's dumps inside the snapshot
    /// (`/.holdfast/databases/<entry>/`); defaults to the name or file stem.
    pub entry: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable that holds the password.
    pub password_env: Option<String>,
    /// Extra arguments for the dump tool.
    #[serde(default)]
    pub dump_args: Vec<String>,
    /// How PostgreSQL dumps are written: `plain` SQL (the default), or
    /// `custom` (`pg_dump -Fc -Z0`, uncompressed so it still deduplicates),
    /// which reloads with `pg_restore --jobs` on every core.
    #[serde(default)]
    pub format: DumpFormat,
    /// Store the dump as it comes out of the tool (a pipe), not through the
    /// spool: no spool space, and the dump and the repository write overlap.
    #[serde(default)]
    pub stream: bool,
    /// Longest a dump (or a load of it) may take (default 6 hours).
    #[serde(default = "DurationSpec::six_hours")]
    pub timeout: DurationSpec,
    /// Hold a lock from before the dump until the files are captured.
    pub lock: Option<DatabaseLock>,
    /// Run the dump tool as this OS user (e.g. `postgres`, for peer
    /// authentication over the socket); `user` then defaults to it.
    pub run_as: Option<String>,
    /// Smoke queries that `verify` (and `restore --reload`) run against a
    /// restored copy.
    #[serde(default)]
    pub verify: Vec<SmokeQuery>,
}

/// A query and what its first value must be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeQuery {
    pub sql: String,
    /// `= N`, `>= N`, `<= N`, `> N`, `< N`, `non-empty`, or a regular
    /// expression the value (as text) must match. Without it: non-empty.
    /// Parsed when the config is read, so a bad one is reported with its
    /// file, line and column, never at restore time.
    #[serde(default)]
    pub expect: Expectation,
}

/// What a smoke query's value must be, parsed; shown as it was written.
#[derive(Debug, Clone)]
pub struct Expectation {
    text: String,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Compare(&'static str, f64),
    NonEmpty,
    Matches(regex::Regex),
}

impl Default for Expectation {
    fn default() -> Self {
        Expectation { text: "non-empty".into(), test: Test::NonEmpty }
    }
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Expectation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Expectation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Expectation::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Expectation {
    pub fn parse(text: &str) -> std::result::Result<Expectation, String> {
        let s = text.trim();
        let test = if s == "non-empty" {
            Some(Test::NonEmpty)
        } else {
            [">=", "<=", "=", ">", "<"].into_iter().find_map(|op| {
                let n = s.strip_prefix(op)?.trim().parse::<f64>().ok()?;
                Some(Test::Compare(op, n))
            })
        };
        let test = match test {
            Some(t) => t,
            None => regex::Regex::new(s).map(Test::Matches).map_err(|e| {
                format!(
                    "expect {s:?}: not a comparison (= N, >= N, <= N), `non-empty`, or a valid regular expression: {e}"
                )
            })?,
        };
        Ok(Expectation { text: s.to_string(), test })
    }

    /// Whether `value` (the query's first column of its first row) meets it.
    pub fn check(&self, value: Option<&str>) -> bool {
        match (&self.test, value) {
            (Test::NonEmpty, v) => v.is_some_and(|v| !v.is_empty()),
            (Test::Compare(op, n), Some(v)) => match v.trim().parse::<f64>() {
                Ok(x) => match *op {
                    ">=" => x >= *n,
                    "<=" => x <= *n,
                    ">" => x > *n,
                    "<" => x < *n,
                    _ => x == *n,
                },
                Err(_) => false,
            },
            (Test::Matches(re), Some(v)) => re.is_match(v),
            (_, None) => false,
        }
    }
}

impl DatabaseConfig {
    pub fn is_all(&self) -> bool {
        self.name.as_deref() == Some("all")
    }

    /// The entry name: the directory of its dumps inside the snapshot.
    pub fn entry_name(&self) -> String {
        if let Some(e) = &self.entry {
            return e.clone();
        }
        match (self.kind, &self.name, &self.path) {
            (DatabaseKind::Sqlite, _, Some(p)) => {
                p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sqlite".into())
            }
            (kind, Some(n), _) if n == "all" => format!("{}-all", kind.as_str()),
            (_, Some(n), _) => n.clone(),
            (kind, None, _) => kind.as_str().to_string(),
        }
    }
}

impl DatabaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Postgresql => "postgresql",
            DatabaseKind::Mysql => "mysql",
            DatabaseKind::Sqlite => "sqlite",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    #[serde(default, deserialize_with = "source_paths")]
    pub paths: Vec<PathBuf>,
    /// Paths backed up when they exist; their absence is not an error.
    #[serde(default, deserialize_with = "source_paths")]
    pub optional: Vec<PathBuf>,
    /// Glob patterns: `/srv/*/tmp` (anchored: starts with `/`) or
    /// `node_modules`, `*.tmp` (at any depth). See [`Patterns`].
    #[serde(default)]
    pub exclude: Excludes,
    /// Like `exclude`, ignoring case.
    #[serde(default)]
    pub iexclude: Excludes,
    /// Stay on the file system of each path: mount points below it are
    /// kept as empty directories.
    #[serde(default)]
    pub one_file_system: bool,
    /// Skip the contents of directories with a valid `CACHEDIR.TAG`.
    #[serde(default)]
    pub exclude_caches: bool,
    /// Skip the contents of directories holding one of these names.
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    /// Leave out files and directories with the no-dump flag (`chattr +d`).
    #[serde(default)]
    pub exclude_nodump: bool,
}

impl FilesConfig {
    /// What the backup leaves out, `internal` (holdfast's own directories)
    /// included.
    pub fn selection(&self, internal: Vec<(String, PathBuf)>) -> std::result::Result<Selection, String> {
        let exclude = Patterns::excludes(
            &self.exclude.0.patterns().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            &self.iexclude.0.patterns().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        )?;
        Ok(Selection {
            exclude,
            one_file_system: self.one_file_system,
            exclude_caches: self.exclude_caches,
            exclude_if_present: self.exclude_if_present.iter().map(std::ffi::OsString::from).collect(),
            exclude_nodump: self.exclude_nodump,
            internal,
        })
    }
}

/// Exclude patterns, compiled when the config is read (a bad one is
/// reported with its file, line and column); shown as written.
#[derive(Debug, Clone, Default)]
pub struct Excludes(pub Patterns);

impl Excludes {
    pub fn patterns(&self) -> Vec<&str> {
        self.0.patterns()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `path` (absolute) is excluded.
    pub fn is_match(&self, path: &Path) -> bool {
        self.0.is_match(path)
    }
}

impl Serialize for Excludes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.patterns().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Excludes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Patterns::excludes(&Vec::deserialize(d)?, &[]).map(Excludes).map_err(serde::de::Error::custom)
    }
}

/// Events a notification can be sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Start,
    Success,
    Failure,
    Retry,
    VerifyFailed,
    Stale,
    /// A snapshot was committed but is incomplete (unreadable files, files
    /// changed while read).
    Warning,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Success => "success",
            Event::Failure => "failure",
            Event::Retry => "retry",
            Event::VerifyFailed => "verify_failed",
            Event::Stale => "stale",
            Event::Warning => "warning",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub events: Vec<Event>,
    pub command: Option<CommandLine>,
    pub webhook: Option<String>,
    /// Default 30 seconds.
    #[serde(default = "DurationSpec::thirty_seconds")]
    pub timeout: DurationSpec,
}

// ------------------------------------------------------------ loading

impl Config {
    /// Load a config file, or every `*.toml` file of a directory.
    pub fn load(path: &Path) -> Result<Config> {
        let files = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ConfigError::InFile { file: path.into(), message: e.to_string() })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(ConfigError::InFile {
                    file: path.into(),
                    message: "no *.toml files in this directory".into(),
                });
            }
            v
        } else {
            vec![path.to_path_buf()]
        };
        let mut parsed = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| ConfigError::InFile { file: f.clone(), message: e.to_string() })?;
            let raw = parse_file(f, &text)?;
            parsed.push(Parsed { file: f.clone(), text, raw });
        }
        resolve(files, parsed)
    }

    /// Environment variables the config names as holding secrets (every
    /// `password_env`): no child process inherits them.
    pub fn secret_variables(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.jobs.values().flat_map(|j| j.databases.iter().filter_map(|d| d.password_env.clone())).collect();
        names.sort();
        names.dedup();
        names
    }

    /// holdfast's own directories, which a backup never reads: every local
    /// repository of the config, the job's spool, state and metrics
    /// directories, each with what it is.
    pub fn internal_paths(&self, job: &Job) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = self
            .repositories
            .values()
            .filter_map(|r| r.local_path().map(|p| (format!("repository {:?}", r.name), p.to_path_buf())))
            .collect();
        out.push(("the spool".into(), job.spool.clone()));
        out.push(("holdfast's state".into(), job.state_dir.clone()));
        out.extend(job.metrics_dir.iter().map(|d| ("the metrics directory".into(), d.clone())));
        out
    }

    /// What a restore must never replace: holdfast's own directories and
    /// the config files in use, each with what it is (for the refusal's
    /// message).
    fn protected_paths(&self, job: &Job) -> Vec<(String, PathBuf)> {
        let mut out = self.internal_paths(job);
        out.extend(self.files.iter().map(|f| ("the config in use".into(), f.clone())));
        out
    }

    /// A config from the text of one file named `file` (relative paths are
    /// relative to its directory).
    pub fn from_text(file: &Path, text: &str) -> Result<Config> {
        let parsed = Parsed { file: file.to_path_buf(), text: text.to_string(), raw: parse_file(file, text)? };
        resolve(vec![file.to_path_buf()], vec![parsed])
    }

    pub fn job(&self, name: &str) -> Result<&Job> {
        self.jobs.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
            ConfigError::Other(format!("no job named {name:?}; the config defines: {}", known.join(", ")))
        })
    }
}

fn parse_file(file: &Path, text: &str) -> Result<RawFile> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        let snippet = e.span().map(|s| text[s.start..s.end.min(text.len())].trim().to_string()).unwrap_or_default();
        let mut message = crate::units::hide_credentials(&explain_unknown_key(e.message().trim()));
        // The value is not echoed where it may be a secret: a URL's
        // credentials, or anything on a passphrase's or password's line.
        let before = e.span().map_or("", |s| &text[..s.start.min(text.len())]);
        let this_line = before.rsplit('\n').next().unwrap_or_default();
        let table = before.lines().rev().map(str::trim_start).find(|l| l.starts_with('[')).unwrap_or_default();
        // An unknown key's message quotes key names, never a value.
        let about_a_key = e.message().trim().starts_with("unknown field");
        let secret_line = !about_a_key
            && [this_line, table].iter().any(|l| {
                let l = l.to_ascii_lowercase();
                // `env` tables: any variable may hold a secret (MYSQL_PWD=…).
                ["passphrase", "password", "passwd", "pwd", "secret", "token", "credential", "auth", "key", "env"]
                    .iter()
                    .any(|k| l.contains(k))
            });
        if secret_line {
            message = hide_quoted(&message);
        }
        if !snippet.is_empty()
            && snippet.len() < 80
            && !message.contains(&snippet)
            && !secret_line
            && !snippet.contains('@')
        {
            message = format!("{message} (at `{snippet}`)");
        }
        ConfigError::At { file: file.to_path_buf(), line, column, message }
    })
}

/// `message` with every `quoted` value replaced by `…` (serde quotes the
/// value it could not take: "invalid type: integer `123`").
fn hide_quoted(message: &str) -> String {
    message.split('`').enumerate().map(|(i, part)| if i % 2 == 1 { "…" } else { part }).collect::<Vec<_>>().join("`")
}

/// serde's "unknown field `retry`, expected one of `a`, `b`" becomes
/// "unknown key `retry`: `retries` expected, found `retry` (known keys: ...)".
fn explain_unknown_key(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.to_string() };
    let Some((found, rest)) = rest.split_once('`') else { return message.to_string() };
    let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match known.iter().min_by_key(|k| edit_distance(found, k)) {
        Some(best) if edit_distance(found, best) <= best.len().max(found.len()) / 2 => {
            format!("unknown key: `{best}` expected, found `{found}` (known keys: {})", known.join(", "))
        }
        _ => format!("unknown key `{found}` (known keys: {})", known.join(", ")),
    }
}

/// Levenshtein distance, for suggesting the key that was meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// 1-based line and column of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// One config file as read: its path, its text (for lines and columns)
/// and its keys.
struct Parsed {
    file: PathBuf,
    text: String,
    raw: RawFile,
}

impl Parsed {
    /// An error at `span` of this file.
    fn at(&self, span: std::ops::Range<usize>, message: String) -> ConfigError {
        let (line, column) = line_col(&self.text, span.start);
        ConfigError::At { file: self.file.clone(), line, column, message }
    }
}

fn resolve(files: Vec<PathBuf>, parsed: Vec<Parsed>) -> Result<Config> {
    let mut repositories = BTreeMap::new();
    let mut repo_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut job_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut defaults: Option<&Parsed> = None;
    for p in &parsed {
        if p.raw.defaults.is_some() {
            if let Some(other) = defaults {
                return Err(ConfigError::Other(format!(
                    "[defaults] is declared in both {} and {}; declare it once",
                    other.file.display(),
                    p.file.display()
                )));
            }
            defaults = Some(p);
        }
        for (PlainName(name), r) in &p.raw.repositories {
            if let Some(other) = repo_files.insert(name.clone(), p.file.clone()) {
                return Err(ConfigError::Other(format!(
                    "repository {name:?} is defined twice: in {} and in {}",
                    other.display(),
                    p.file.display()
                )));
            }
            repositories.insert(name.clone(), resolve_repository(p, name, r)?);
        }
    }
    let mut jobs = BTreeMap::new();
    for p in &parsed {
        for (PlainName(name), raw_job) in &p.raw.jobs {
            if let Some(other) = job_files.insert(name.clone(), p.file.clone()) {
                return Err(ConfigError::Other(format!(
                    "job {name:?} is defined twice: in {} and in {}",
                    other.display(),
                    p.file.display()
                )));
            }
            jobs.insert(name.clone(), resolve_job(p, name, raw_job, defaults, &repositories)?);
        }
    }
    let mut config = Config { files, repositories, jobs: BTreeMap::new() };
    for (name, mut job) in jobs {
        job.protected = config.protected_paths(&job);
        job.internal = config.internal_paths(&job);
        config.jobs.insert(name, job);
    }
    Ok(config)
}

fn base_dir(file: &Path) -> PathBuf {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// `p` made absolute relative to the directory of `file`.
fn rel(file: &Path, p: &Path) -> PathBuf {
    crate::fsutil::normalize(&if p.is_absolute() { p.to_path_buf() } else { base_dir(file).join(p) })
}

fn resolve_repository(source: &Parsed, name: &str, spanned: &toml::Spanned<RawRepository>) -> Result<RepositoryConfig> {
    let (file, r) = (source.file.as_path(), spanned.get_ref());
    let in_file = |message: String| source.at(spanned.span(), format!("repository {name:?}: {message}"));
    let sources = [r.passphrase_file.is_some(), r.passphrase_command.is_some(), r.passphrase.is_some()];
    if sources.iter().filter(|b| **b).count() > 1 {
        return Err(in_file("give only one of passphrase_file, passphrase_command and passphrase".into()));
    }
    let passphrase = if let Some(LinePath(f)) = &r.passphrase_file {
        PassphraseSource::File(rel(file, f))
    } else if let Some(c) = &r.passphrase_command {
        PassphraseSource::Command(c.clone())
    } else if let Some(p) = &r.passphrase {
        PassphraseSource::Inline(p.clone())
    } else {
        PassphraseSource::Environment
    };
    let s3_only = [
        ("endpoint", r.endpoint.is_some()),
        ("region", r.region.is_some()),
        ("access_key_id_file", r.access_key_id_file.is_some()),
        ("secret_access_key_file", r.secret_access_key_file.is_some()),
    ];
    let ssh_only = [
        ("identity_file", r.identity_file.is_some()),
        ("known_hosts_file", r.known_hosts_file.is_some()),
        ("remote_command", r.remote_command.is_some()),
    ];
    let remote_only = [("connections", r.connections.is_some()), ("timeout", r.timeout.is_some())];
    let refuse = |keys: &[(&str, bool)], owner: &str, here: &str| match keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(in_file(format!("`{key}` is for {owner}, not for {here}"))),
        None => Ok(()),
    };
    const S3: &str = "S3 repositories (`url = \"s3://…\"`)";
    const SSH: &str = "SSH repositories (`url = \"ssh://…\"`)";
    let most = crate::engine::backend::MAX_CONNECTIONS;
    if r.connections.is_some_and(|n| !(1..=most).contains(&n)) {
        return Err(in_file(format!("`connections` must be from 1 to {most}")));
    }
    let place = match (&r.path, &r.url) {
        (Some(LinePath(p)), None) => {
            refuse(&s3_only, S3, "a `path`")?;
            refuse(&ssh_only, SSH, "a `path`")?;
            refuse(&remote_only, "S3 and SSH repositories", "a `path`")?;
            RepositoryPlace::Local(rel(file, p))
        }
        (None, Some(RepositoryUrl::S3 { bucket, prefix })) => {
            refuse(&ssh_only, SSH, "an S3 repository")?;
            if r.access_key_id_file.is_some() != r.secret_access_key_file.is_some() {
                return Err(in_file("give both access_key_id_file and secret_access_key_file, or neither".into()));
            }
            RepositoryPlace::S3(S3Place {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                endpoint: r.endpoint.as_ref().map(|e| e.0.clone()),
                region: r.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_id_file: r.access_key_id_file.as_ref().map(|f| rel(file, &f.0)),
                secret_access_key_file: r.secret_access_key_file.as_ref().map(|f| rel(file, &f.0)),
                connections: r.connections.unwrap_or(crate::engine::backend::S3Settings::DEFAULT_CONNECTIONS),
                timeout: r.timeout.map_or(crate::engine::backend::S3Settings::DEFAULT_TIMEOUT, |t| t.0),
            })
        }
        (None, Some(RepositoryUrl::Ssh(ssh))) => {
            refuse(&s3_only, S3, "an SSH repository")?;
            let mut ssh = ssh.clone();
            ssh.identity_file = r.identity_file.as_ref().map(|f| rel(file, &f.0));
            ssh.known_hosts_file = r.known_hosts_file.as_ref().map(|f| rel(file, &f.0));
            if let Some(Line(command)) = &r.remote_command {
                ssh.remote_command = command.clone();
            }
            ssh.connections = r.connections.unwrap_or(ssh.connections);
            ssh.timeout = r.timeout.map_or(ssh.timeout, |t| t.0);
            RepositoryPlace::Ssh(ssh)
        }
        (Some(_), Some(_)) => return Err(in_file("give either `path` or `url`, not both".into())),
        (None, None) => {
            return Err(in_file(
                "no `path` (a local directory) or `url` (\"s3://bucket/prefix\" or \"ssh://host/path\") says where it is"
                    .into(),
            ));
        }
    };
    Ok(RepositoryConfig { name: name.into(), place, passphrase })
}

fn resolve_job(
    source: &Parsed,
    name: &str,
    spanned: &toml::Spanned<RawJob>,
    defaults: Option<&Parsed>,
    repositories: &BTreeMap<String, RepositoryConfig>,
) -> Result<Job> {
    let (file, job) = (source.file.as_path(), spanned.get_ref());
    let at = |from: &Parsed, span, message: String| from.at(span, format!("job {name:?}: {message}"));
    let d = defaults.and_then(|p| p.raw.defaults.clone()).unwrap_or_default();
    let d_source = defaults.unwrap_or(source);
    let dfile = d_source.file.as_path();
    // Which file a key came from decides what its relative paths mean.
    let pick_path = |own: &Option<LinePath>, def: &Option<LinePath>| match (own, def) {
        (Some(p), _) => Some(rel(file, &p.0)),
        (None, Some(p)) => Some(rel(dfile, &p.0)),
        _ => None,
    };
    let spool = pick_path(&job.spool, &d.spool).unwrap_or_else(|| PathBuf::from("/var/spool/holdfast"));
    let state_dir = pick_path(&job.state_dir, &d.state_dir).unwrap_or_else(|| PathBuf::from("/var/lib/holdfast"));
    let (repos_source, repos) = match (&job.repositories, &d.repositories) {
        (Some(r), _) => (source, r),
        (None, Some(r)) => (d_source, r),
        (None, None) => {
            let message = "no repositories: set `repositories = [\"NAME\"]` in the job or in [defaults]";
            return Err(at(source, spanned.span(), message.into()));
        }
    };
    if repos.get_ref().is_empty() {
        return Err(at(repos_source, repos.span(), "no repositories: name at least one".into()));
    }
    for r in repos.get_ref() {
        if !repositories.contains_key(r) {
            let known: Vec<&str> = repositories.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(at(repos_source, repos.span(), format!("repository {r:?} is not defined (defined: {known})")));
        }
    }
    let from_job = job.hooks.is_some();
    let mut hooks: Vec<HookConfig> =
        job.hooks.clone().or(d.hooks).unwrap_or_default().into_iter().map(|h| h.0).collect();
    for h in &mut hooks {
        if let Some(c) = &h.cwd {
            h.cwd = Some(rel(if from_job { file } else { dfile }, c));
        }
    }
    let (db_source, raw_databases) = match (&job.databases, &d.databases) {
        (Some(dbs), _) => (source, dbs.clone()),
        (None, Some(dbs)) => (d_source, dbs.clone()),
        (None, None) => (source, Vec::new()),
    };
    let mut databases = Vec::new();
    let mut entries = std::collections::BTreeSet::new();
    for spanned_db in raw_databases {
        let span = spanned_db.span();
        let mut db = spanned_db.into_inner().0;
        db.path = db.path.as_ref().map(|p| rel(&db_source.file, p));
        db.password_file = db.password_file.as_ref().map(|p| rel(&db_source.file, p));
        let e = db.entry_name();
        if !entries.insert(e.clone()) {
            let message = format!("two databases share the entry name {e:?}; give one an `entry = \"...\"`");
            return Err(at(db_source, span, message));
        }
        databases.push(db);
    }
    let from_job = job.files.is_some();
    let mut files = job.files.clone().or(d.files).unwrap_or_default();
    files.paths = files.paths.iter().map(|p| rel(if from_job { file } else { dfile }, p)).collect();
    files.optional = files.optional.iter().map(|p| rel(if from_job { file } else { dfile }, p)).collect();
    let notify = job.notify.clone().or(d.notify).unwrap_or_default().into_iter().map(|n| n.0).collect();
    Ok(Job {
        name: name.into(),
        file: file.into(),
        description: job.description.clone().or(d.description).map(|l| l.0),
        schedule: job.schedule.clone().or(d.schedule).map(|l| l.0),
        retries: job.retries.or(d.retries).map_or(0, |r| r.0),
        retry_delay: job.retry_delay.or(d.retry_delay).map_or(Duration::from_secs(300), |d| d.0),
        max_age: job.max_age.or(d.max_age).map(|d| d.0),
        spool,
        state_dir,
        repositories: repos.get_ref().iter().map(|r| repositories[r].clone()).collect(),
        protected: Vec::new(),
        internal: Vec::new(),
        tags: job.tags.clone().or(d.tags).unwrap_or_default(),
        hooks,
        databases,
        files,
        notify,
        metrics_dir: pick_path(&job.metrics_dir, &d.metrics_dir),
        metrics_mode: job.metrics_mode.or(d.metrics_mode).map_or(0o644, |m| m.0),
        verify_schedule: job.verify_schedule.clone().or(d.verify_schedule).map(|l| l.0),
        retention: job.retention.clone().or(d.retention).unwrap_or_default(),
        prune_after_backup: job.prune_after_backup.or(d.prune_after_backup).unwrap_or(false),
        // Dumps mostly wait on the server and the disk: a few at once, not
        // more than the cores that compress their output.
        dump_concurrency: job
            .dump_concurrency
            .or(d.dump_concurrency)
            .map_or(crate::engine::parallel::cpus().clamp(1, 4), std::num::NonZeroUsize::get),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_a_shell_reads_is_found_in_a_string_or_a_list() {
        let argv = |v: &[&str]| CommandLine::Argv(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(CommandLine::Shell("echo {{error}}".into()).script_index(), Some(0));
        assert_eq!(argv(&["sh", "-c", "echo {{error}}"]).script_index(), Some(2));
        assert_eq!(argv(&["/usr/bin/bash", "-e", "-c", "echo \"$1\"", "sh", "{{error}}"]).script_index(), Some(3));
        assert_eq!(argv(&["bash", "-ec", "x"]).script_index(), Some(2));
        assert_eq!(argv(&["/usr/local/bin/page-admin", "{{job}}", "{{error}}"]).script_index(), None);
        assert_eq!(argv(&["bash", "/etc/holdfast/hook.sh", "{{error}}"]).script_index(), None);
        assert_eq!(argv(&["sh", "-c"]).script_index(), None);
    }

    #[test]
    fn an_unknown_key_suggests_the_closest_known_one() {
        let m = explain_unknown_key("unknown field `retry`, expected one of `retries`, `retry_delay`, `spool`");
        assert!(m.starts_with("unknown key: `retries` expected, found `retry`"), "{m}");
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("x", 0), (1, 1));
    }

    const FILE: &str = "/etc/holdfast/jobs.d/shop.toml";

    /// A job `shop` with `tail` appended to its TOML.
    fn shop(tail: &str) -> Result<Config> {
        let text =
            format!("[repositories.local]\npath = \"/srv/repo\"\n\n[jobs.shop]\nrepositories = [\"local\"]\n{tail}");
        Config::from_text(Path::new(FILE), &text)
    }

    fn error_of(tail: &str) -> String {
        match shop(tail) {
            Ok(_) => panic!("accepted:\n{tail}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dump_args_that_make_a_dump_name_its_own_database_are_refused_where_they_are_written() {
        let entry = |kind: &str, args: &str| {
            format!("[[jobs.shop.databases]]\nkind = \"{kind}\"\nname = \"shop\"\ndump_args = [{args}]\n")
        };
        for (kind, args, opt) in [
            ("mysql", r#""--databases""#, "--databases"),
            ("mysql", r#""--data""#, "--databases"),
            ("mysql", r#""-B""#, "-B"),
            ("mysql", r#""--skip-lock-tables", "-qA""#, "-A"),
            ("mysql", r#""--add-drop-database""#, "--add-drop-database"),
            ("mysql", r#""--result-file=/tmp/x""#, "--result-file"),
            ("postgresql", r#""--create""#, "--create"),
            ("postgresql", r#""-vC""#, "-C"),
            ("postgresql", r#""--file", "/tmp/x""#, "--file"),
            ("postgresql", r#""-T", "-T", "-C""#, "-C"),
            ("mysql", r#""--loose-databases""#, "--databases"),
            ("mysql", r#""--add_drop_database""#, "--add-drop-database"),
            ("mysql", r#""--result_file=/x""#, "--result-file"),
            ("mysql", r#""-S", "-S", "-B""#, "-B"),
            ("mysql", r#""-p", "-B""#, "-B"),
        ] {
            let e = error_of(&entry(kind, args));
            assert!(e.starts_with(&format!("{FILE}:6:")), "{kind} {args}: {e}");
            assert!(e.contains(&format!("{opt} ")) && e.contains("not allowed"), "{kind} {args}: {e}");
        }
        for (kind, args) in [
            ("postgresql", r#""--exclude-table=audit", "-t", "-Cust", "-tCustomers", "--clean""#),
            ("mysql", r#""--skip-extended-insert", "-w", "-B=1", "--tables", "--ignore-table=shop.log""#),
        ] {
            shop(&entry(kind, args)).unwrap_or_else(|e| panic!("{kind} {args}: {e}"));
        }
    }

    #[test]
    fn a_job_is_resolved_with_its_defaults_and_paths_relative_to_its_file() {
        let config = shop("spool = \"spool\"\n[jobs.shop.files]\npaths = [\"data\", \"/abs\"]\n").unwrap();
        let job = config.job("shop").unwrap();
        assert_eq!(job.spool, Path::new("/etc/holdfast/jobs.d/spool"));
        assert_eq!(job.state_dir, Path::new("/var/lib/holdfast"));
        assert_eq!(job.files.paths, [Path::new("/etc/holdfast/jobs.d/data"), Path::new("/abs")]);
        assert_eq!(job.metrics_mode, 0o644);
        assert_eq!(job.repositories.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["local"]);
    }

    #[test]
    fn a_bad_smoke_expectation_is_reported_at_its_file_line_and_column() {
        let e = error_of(
            "[[jobs.shop.databases]]\nkind = \"sqlite\"\npath = \"/srv/app.db\"\n\
             [[jobs.shop.databases.verify]]\nsql = \"select 1\"\nexpect = \">= (\"\n",
        );
        assert!(e.starts_with(&format!("{FILE}:11:")), "{e}");
        assert!(e.contains("not a comparison"), "{e}");
    }

    #[test]
    fn smoke_expectations_are_parsed_once_and_shown_as_written() {
        let config = shop(
            "[[jobs.shop.databases]]\nkind = \"sqlite\"\npath = \"/srv/app.db\"\n\
             [[jobs.shop.databases.verify]]\nsql = \"select count(*) from t\"\nexpect = \">= 2\"\n\
             [[jobs.shop.databases.verify]]\nsql = \"select name from t\"\n",
        )
        .unwrap();
        let verify = &config.job("shop").unwrap().databases[0].verify;
        assert_eq!(verify[0].expect.to_string(), ">= 2");
        assert!(verify[0].expect.check(Some("2")) && !verify[0].expect.check(Some("1")));
        assert!(!verify[0].expect.check(Some("many")), "a value that is no number fails a comparison");
        assert_eq!(verify[1].expect.to_string(), "non-empty");
        assert!(
            verify[1].expect.check(Some("x")) && !verify[1].expect.check(Some("")) && !verify[1].expect.check(None)
        );
    }

    #[test]
    fn a_secret_value_is_never_quoted_but_a_misspelt_secret_key_is_named() {
        let e = error_of("[repositories.r]\npath = \"r\"\npassphrase = 4711123\n");
        assert!(!e.contains("4711123") && e.contains("expected a string"), "{e}");
        let e = error_of("[repositories.r]\npath = \"r\"\npassphrase_fil = \"p\"\n");
        assert!(e.contains("`passphrase_file` expected, found `passphrase_fil`"), "{e}");
    }

    #[test]
    fn a_bad_exclude_pattern_is_reported_at_its_file_line_and_column() {
        let e = error_of("[jobs.shop.files]\npaths = [\"/srv\"]\nexclude = [\"**/cache/**\", \"a[\"]\n");
        assert!(e.starts_with(&format!("{FILE}:8:")), "{e}");
        assert!(e.contains("exclude pattern \"a[\""), "{e}");
        let config = shop("[jobs.shop.files]\npaths = [\"/srv\"]\nexclude = [\"**/cache/**\"]\n").unwrap();
        let ex = &config.job("shop").unwrap().files.exclude;
        assert!(ex.is_match(Path::new("/srv/app/cache/x")) && !ex.is_match(Path::new("/srv/app/data")));
    }

    #[test]
    fn a_control_character_in_a_unit_value_is_refused_where_it_is() {
        let e = error_of("description = \"shop\\nExecStartPre=/bin/evil\"\n");
        assert!(e.starts_with(&format!("{FILE}:6:")), "{e}");
    }

    #[test]
    fn a_job_naming_an_undefined_repository_is_refused_with_the_defined_ones() {
        let text = "[repositories.local]\npath = \"/srv/repo\"\n[jobs.shop]\nrepositories = [\"offsite\"]\n";
        let e = Config::from_text(Path::new(FILE), text).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{FILE}:4:")), "{e}");
        assert!(e.contains("\"offsite\" is not defined (defined: local)"), "{e}");
    }

    #[test]
    fn what_is_wrong_with_a_hook_or_a_database_entry_is_reported_where_it_is_written() {
        let e = error_of("[[jobs.shop.hooks]]\nphase = \"hold\"\nrun = [\"hold-it\"]\n");
        assert!(e.starts_with(&format!("{FILE}:6:")) && e.contains("needs `ready`"), "{e}");
        let e = error_of("[[jobs.shop.databases]]\nkind = \"postgresql\"\nname = \"shop\"\nlock = \"global-read\"\n");
        assert!(e.starts_with(&format!("{FILE}:6:")) && e.contains("mysql entries only"), "{e}");
        let e = error_of("[[jobs.shop.databases]]\nkind = \"mysql\"\n");
        assert!(e.starts_with(&format!("{FILE}:6:")) && e.contains("needs `name`"), "{e}");
    }

    #[test]
    fn checks_across_entries_are_reported_where_the_second_one_is_written() {
        let e = error_of(
            "[[jobs.shop.databases]]\nkind = \"sqlite\"\npath = \"/a/app.db\"\n\
             [[jobs.shop.databases]]\nkind = \"sqlite\"\npath = \"/b/app.db\"\n",
        );
        assert!(e.starts_with(&format!("{FILE}:9:")) && e.contains("share the entry name \"app\""), "{e}");
        let e = error_of("[[jobs.shop.notify]]\nevents = [\"failure\"]\n");
        assert!(e.starts_with(&format!("{FILE}:6:")) && e.contains("exactly one of `command` and `webhook`"), "{e}");
        let e = Config::from_text(Path::new(FILE), "[jobs.shop]\nretries = 1\n").unwrap_err().to_string();
        assert!(e.starts_with(&format!("{FILE}:1:")) && e.contains("no repositories"), "{e}");
    }

    #[test]
    fn a_repository_that_says_too_much_or_too_little_is_refused_where_it_is() {
        let text = "[repositories.a]\npath = \"/srv/a\"\n\n[repositories.b]\npath = \"/srv/b\"\nregion = \"x\"\n";
        let e = Config::from_text(Path::new(FILE), text).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{FILE}:4:")) && e.contains("`region` is for S3 repositories"), "{e}");
        let e = Config::from_text(Path::new(FILE), "[repositories.c]\n").unwrap_err().to_string();
        assert!(e.starts_with(&format!("{FILE}:1:")) && e.contains("no `path`"), "{e}");
    }
}
