//! Helpers for the job tests: [`JobEnv`], a temporary directory with a job
//! config, a repository and a spool, driven through the real binary; the
//! database servers and SQLite files the jobs dump, each test's own and
//! removed when it ends ([`PgDatabase`], [`MyDatabase`], [`sqlite_exec`]);
//! and small tools to watch processes and wait for things.
//!
//! Not for: anything that reaches into the library. Like the other CLI
//! tests, these use holdfast the way a person does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use tempfile::TempDir;

use crate::util::{PASSPHRASE, holdfast_bin, parse_json};

/// Longer than any one command of the job tests should take.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The config every [`JobEnv`] starts with: a repository `main` next to the
/// config file, and defaults that every job inherits. Relative paths are
/// relative to the config file.
const HEADER: &str = r#"[repositories.main]
path = "repo"
passphrase_file = "passphrase"

[defaults]
spool = "spool"
state_dir = "state"
repositories = ["main"]
retries = 0
"#;

/// A temporary directory with `holdfast.toml`, `passphrase`, the repository
/// `repo/` (after [`JobEnv::init_repo`]) and the spool `spool/`. Commands run
/// in this directory, so hooks may name marker files relative to it.
pub struct JobEnv {
    dir: TempDir,
    config: PathBuf,
    /// The repository `init`, `ls` and `restore` name with `--repo`.
    repo_name: &'static str,
}

impl JobEnv {
    pub fn new() -> JobEnv {
        JobEnv::with_config_file("holdfast.toml", "main")
    }

    /// A [`JobEnv`] whose commands use the config file `rel` (which the
    /// test puts there) instead of `holdfast.toml`, and its repository
    /// `repo_name`.
    pub fn with_config_file(rel: &str, repo_name: &'static str) -> JobEnv {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        fs::write(dir.path().join("passphrase"), format!("{PASSPHRASE}\n")).expect("write the passphrase file");
        let config = dir.path().join(rel);
        JobEnv { dir, config, repo_name }
    }

    /// `rel` inside the temporary directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn spool(&self) -> PathBuf {
        self.path("spool")
    }

    /// Write the config: [`HEADER`] followed by `jobs`.
    pub fn config(&self, jobs: &str) -> &Self {
        fs::write(&self.config, format!("{HEADER}\n{jobs}")).expect("write the config");
        self
    }

    /// `holdfast --config holdfast.toml --repo main init`.
    pub fn init_repo(&self) -> &Self {
        self.engine(["--repo", self.repo_name, "init"]).assert().success();
        self
    }

    /// `holdfast --config holdfast.toml ARGS...`, run in the temporary
    /// directory, with none of holdfast's variables inherited.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(holdfast_bin());
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("HOLDFAST_PASSPHRASE")
            .env_remove("HOLDFAST_NEW_PASSPHRASE")
            .env_remove("HOLDFAST_REPOSITORY")
            .env_remove("HOLDFAST_CONFIG")
            .env("HOLDFAST_CACHE_DIR", crate::util::test_cache_dir());
        c
    }

    /// [`JobEnv::cmd`] for the engine commands, to assert on.
    pub fn engine<I, S>(&self, args: I) -> assert_cmd::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = assert_cmd::Command::from_std(self.cmd(args));
        c.timeout(TIMEOUT);
        c
    }

    /// `run JOBS...` to its end.
    pub fn run(&self, jobs: &[&str]) -> Ran {
        self.start(self.cmd(["run"].iter().chain(jobs))).wait()
    }

    /// Start `cmd` (from [`JobEnv::cmd`]) without waiting for it; its output
    /// goes to files in the temporary directory.
    pub fn start(&self, mut cmd: Command) -> Started {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let (out, err) = (self.path(&format!(".stdout-{n}")), self.path(&format!(".stderr-{n}")));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create stdout file"))
            .stderr(File::create(&err).expect("create stderr file"))
            .spawn()
            .expect("start holdfast");
        Started { child, started: Instant::now(), out, err }
    }

    /// The snapshots of `job` (`snapshots JOB --json`).
    pub fn snapshots_json(&self, job: &str) -> Vec<Value> {
        let out = self.engine(["snapshots", job, "--json"]).assert().success();
        match parse_json(&String::from_utf8_lossy(&out.get_output().stdout)) {
            Value::Array(v) => v,
            other => panic!("snapshots --json should print an array, printed {other}"),
        }
    }

    /// The one snapshot of `job`.
    #[track_caller]
    pub fn only_snapshot(&self, job: &str) -> Value {
        let mut snaps = self.snapshots_json(job);
        assert_eq!(snaps.len(), 1, "job {job} should have exactly one snapshot: {snaps:#?}");
        snaps.remove(0)
    }

    /// The paths in `snapshot` (`ls SNAPSHOT --json`).
    pub fn ls(&self, snapshot: &str) -> Vec<String> {
        let out = self.engine(["--repo", self.repo_name, "ls", snapshot, "--json"]).assert().success();
        match parse_json(&String::from_utf8_lossy(&out.get_output().stdout)) {
            Value::Array(v) => v.iter().map(|e| e["path"].as_str().expect("ls path").to_string()).collect(),
            other => panic!("ls --json should print an array, printed {other}"),
        }
    }

    /// Restore `snapshot` into `rel` in the temporary directory; returns
    /// that directory.
    pub fn restore(&self, snapshot: &str, rel: &str) -> PathBuf {
        let to = self.path(rel);
        self.engine(["--repo", self.repo_name, "restore", snapshot, "--to"]).arg(&to).assert().success();
        to
    }

    /// A text file in the temporary directory ("" when there is none).
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// The lines of [`JobEnv::read`].
    pub fn lines(&self, rel: &str) -> Vec<String> {
        self.read(rel).lines().map(str::to_string).collect()
    }

    /// What `<spool>/<job>/` holds after a run, sorted, apart from the job's
    /// persistent `state.json` (its last runs, for `status`).
    pub fn job_spool(&self, job: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.spool().join(job))
            .expect("list the job's spool directory")
            .map(|e| e.expect("spool entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "state.json")
            .collect();
        names.sort();
        names
    }
}

/// A `holdfast` process started by [`JobEnv::start`]; killed if the test
/// ends without waiting for it.
pub struct Started {
    child: Child,
    started: Instant,
    out: PathBuf,
    err: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Started {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll holdfast").is_none()
    }

    /// Wait for the end (killing it past [`TIMEOUT`]).
    pub fn wait(mut self) -> Ran {
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("poll holdfast") {
                break s;
            }
            if self.started.elapsed() > TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("holdfast ran longer than {TIMEOUT:?}:\n{}", fs::read_to_string(&self.err).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ran {
            status,
            elapsed: self.started.elapsed(),
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

/// How a `holdfast` command ended.
pub struct Ran {
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "holdfast ended with {} after {:.1?}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

impl Ran {
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.status.success(), "the run should succeed: {self:?}");
        self
    }

    #[track_caller]
    pub fn assert_failed(&self) -> &Self {
        assert!(!self.status.success(), "the run should fail: {self:?}");
        assert!(self.status.code().is_some(), "holdfast should exit, not die of a signal: {self:?}");
        self
    }

    /// Assert that stdout or stderr contains `text`.
    #[track_caller]
    pub fn assert_says(&self, text: &str) -> &Self {
        assert!(self.stdout.contains(text) || self.stderr.contains(text), "holdfast should say {text:?}: {self:?}");
        self
    }
}

// ---------------------------------------------------------------- TOML and shell

/// `s` as a TOML basic string (JSON's escapes are TOML's).
pub fn q(s: impl AsRef<std::ffi::OsStr>) -> String {
    serde_json::to_string(&s.as_ref().to_string_lossy()).expect("quote a string")
}

/// `s` quoted for `/bin/sh`.
pub fn shq(s: impl AsRef<std::ffi::OsStr>) -> String {
    format!("'{}'", s.as_ref().to_string_lossy().replace('\'', r"'\''"))
}

/// A name no other test (or test process) uses at the same time, for
/// databases and users: `hf_<tag>_<pid>_<n>`.
pub fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("hf_{tag}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A `sleep 30` whose argv is this process's alone, to find it among the
/// machine's processes ([`processes_running`], [`KillOnDrop`]).
pub fn distinct_sleep() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("sleep 30.{}0{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------- database servers

/// Tests that dump every database of a server hold this lock exclusively
/// while they run, and tests create and drop databases (and PostgreSQL
/// roles) under it shared: a database dropped between holdfast listing it
/// and dumping it would fail a `name = "all"` run for a reason outside the
/// test. A file lock, so
/// concurrent test processes on the machine respect it too.
fn database_set_lock(arg: FlockArg) -> Flock<File> {
    let path = std::env::temp_dir().join("holdfast-tests-database-set.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Flock::lock(file, arg).unwrap_or_else(|(_, e)| panic!("lock {}: {e}", path.display()))
}

/// Hold this while a `name = "all"` job runs: no test creates or drops a
/// database meanwhile.
pub fn freeze_database_set() -> Flock<File> {
    database_set_lock(FlockArg::LockExclusive)
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// Run `program args` with `input` on stdin; its stdout, or a panic with
/// its stderr.
fn pipe(program: &str, args: &[String], input: &str) -> String {
    try_pipe(program, args, input).unwrap_or_else(|e| panic!("{e}"))
}

/// [`pipe`] that returns the failure, for `Drop`.
fn try_pipe(program: &str, args: &[String], input: &str) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {program}: {e}"))?;
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).map_err(|e| format!("write to {program}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("wait for {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?} failed ({}) on:\n{input}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The PostgreSQL server of the tests: `$PGHOST`, `$PGPORT`, `$PGUSER` or
/// 127.0.0.1:5432 as postgres.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub host: String,
    pub port: String,
    pub user: String,
}

impl Postgres {
    pub fn from_env() -> Postgres {
        Postgres {
            host: env_or("PGHOST", "127.0.0.1"),
            port: env_or("PGPORT", "5432"),
            user: env_or("PGUSER", "postgres"),
        }
    }

    /// Run `sql` (on stdin, never in argv) in database `db`; the rows, `|`
    /// between columns.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let args: Vec<String> = ["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", &self.host, "-p", &self.port]
            .iter()
            .map(|s| s.to_string())
            .chain(["-U".into(), self.user.clone(), "-d".into(), db.into(), "-f".into(), "-".into()])
            .collect();
        try_pipe("psql", &args, sql)
    }

    /// The connection keys of a database entry.
    pub fn toml(&self) -> String {
        format!("host = {}\nport = {}\nuser = {}\n", q(&self.host), self.port, q(&self.user))
    }
}

/// A PostgreSQL database of one test, dropped when the test ends.
pub struct PgDatabase {
    pub name: String,
    pub server: Postgres,
}

impl PgDatabase {
    pub fn create(tag: &str) -> PgDatabase {
        PgDatabase::create_owned_by(tag, None)
    }

    pub fn create_owned_by(tag: &str, owner: Option<&str>) -> PgDatabase {
        let server = Postgres::from_env();
        let name = unique(tag);
        let owner = owner.map(|o| format!(" OWNER {o}")).unwrap_or_default();
        let _set = database_set_lock(FlockArg::LockShared);
        server
            .sql("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE);\nCREATE DATABASE {name}{owner};"));
        PgDatabase { name, server }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.server.sql(&self.name, sql)
    }

    /// A `[[jobs.JOB.databases]]` table for this database.
    pub fn entry(&self, job: &str) -> String {
        format!("[[jobs.{job}.databases]]\nkind = \"postgresql\"\nname = {}\n{}", q(&self.name), self.server.toml())
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _set = database_set_lock(FlockArg::LockShared);
        let _ = self.server.try_sql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE);", self.name));
    }
}

/// A PostgreSQL login role of one test, dropped when the test ends (after
/// the databases declared after it).
pub struct PgRole {
    pub name: String,
    server: Postgres,
}

impl PgRole {
    pub fn create(tag: &str, password: &str) -> PgRole {
        let server = Postgres::from_env();
        let name = unique(tag);
        let pw = password.replace('\'', "''");
        let _set = database_set_lock(FlockArg::LockShared);
        server.sql("postgres", &format!("DROP ROLE IF EXISTS {name};\nCREATE ROLE {name} LOGIN PASSWORD '{pw}';"));
        PgRole { name, server }
    }
}

impl Drop for PgRole {
    fn drop(&mut self) {
        let _set = database_set_lock(FlockArg::LockShared);
        let _ = self.server.try_sql("postgres", &format!("DROP ROLE IF EXISTS {};", self.name));
    }
}

/// The MariaDB (or MySQL) server of the tests: `$MYSQL_HOST`,
/// `$MYSQL_TCP_PORT` or 127.0.0.1:3306, as root without a password.
#[derive(Debug, Clone)]
pub struct MariaDb {
    pub host: String,
    pub port: String,
    pub user: String,
}

impl MariaDb {
    pub fn from_env() -> MariaDb {
        MariaDb { host: env_or("MYSQL_HOST", "127.0.0.1"), port: env_or("MYSQL_TCP_PORT", "3306"), user: "root".into() }
    }

    /// Run `sql` (on stdin, never in argv), in database `db` if given; the
    /// rows, tabs between columns.
    pub fn sql(&self, db: Option<&str>, sql: &str) -> String {
        self.try_sql(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_sql(&self, db: Option<&str>, sql: &str) -> Result<String, String> {
        let mut args: Vec<String> =
            ["--protocol=TCP", "-N", "-B", "-h", &self.host, "-P", &self.port, "-u", &self.user]
                .iter()
                .map(|s| s.to_string())
                .collect();
        if let Some(db) = db {
            args.extend(["-D".into(), db.into()]);
        }
        try_pipe("mariadb", &args, sql)
    }

    pub fn toml(&self) -> String {
        format!("host = {}\nport = {}\nuser = {}\n", q(&self.host), self.port, q(&self.user))
    }
}

/// A MariaDB database of one test, dropped when the test ends.
pub struct MyDatabase {
    pub name: String,
    pub server: MariaDb,
}

impl MyDatabase {
    pub fn create(tag: &str) -> MyDatabase {
        let server = MariaDb::from_env();
        let name = unique(tag);
        let _set = database_set_lock(FlockArg::LockShared);
        server.sql(None, &format!("DROP DATABASE IF EXISTS {name};\nCREATE DATABASE {name};"));
        MyDatabase { name, server }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.server.sql(Some(&self.name), sql)
    }

    /// A `[[jobs.JOB.databases]]` table for this database.
    pub fn entry(&self, job: &str) -> String {
        format!("[[jobs.{job}.databases]]\nkind = \"mysql\"\nname = {}\n{}", q(&self.name), self.server.toml())
    }
}

impl Drop for MyDatabase {
    fn drop(&mut self) {
        let _set = database_set_lock(FlockArg::LockShared);
        let _ = self.server.try_sql(None, &format!("DROP DATABASE IF EXISTS {};", self.name));
    }
}

/// A MariaDB user of one test (`'NAME'@'%'`), dropped when the test ends.
pub struct MyUser {
    pub name: String,
    server: MariaDb,
}

impl MyUser {
    /// A user with `password` and every privilege on database `db`.
    pub fn create(tag: &str, password: &str, db: &str) -> MyUser {
        let server = MariaDb::from_env();
        let name = unique(tag);
        let pw = password.replace('\\', "\\\\").replace('\'', "\\'");
        server.sql(
            None,
            &format!(
                "DROP USER IF EXISTS '{name}'@'%';\nCREATE USER '{name}'@'%' IDENTIFIED BY '{pw}';\nGRANT ALL PRIVILEGES ON {db}.* TO '{name}'@'%';"
            ),
        );
        MyUser { name, server }
    }
}

impl Drop for MyUser {
    fn drop(&mut self) {
        let _ = self.server.try_sql(None, &format!("DROP USER IF EXISTS '{}'@'%';", self.name));
    }
}

// ---------------------------------------------------------------- SQLite

fn have_sqlite3_cli() -> bool {
    Command::new("sqlite3").arg("-version").output().is_ok_and(|o| o.status.success())
}

/// Run the statements `sql` on the SQLite database `db` (created if missing),
/// with the `sqlite3` CLI, else Python's sqlite3 module.
pub fn sqlite_exec(db: &Path, sql: &str) {
    if have_sqlite3_cli() {
        pipe("sqlite3", &["-bail".into(), db.to_string_lossy().into_owned()], sql);
    } else {
        let script =
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript(sys.stdin.read())\nc.commit()";
        pipe("python3", &["-c".into(), script.into(), db.to_string_lossy().into_owned()], sql);
    }
}

/// The rows of the query `sql` on `db`, `|` between columns.
pub fn sqlite_query(db: &Path, sql: &str) -> Vec<String> {
    let out = if have_sqlite3_cli() {
        pipe("sqlite3", &["-bail".into(), "-readonly".into(), db.to_string_lossy().into_owned()], sql)
    } else {
        let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.stdin.read()):\n    print('|'.join(map(str, r)))";
        pipe("python3", &["-c".into(), script.into(), db.to_string_lossy().into_owned()], sql)
    };
    out.lines().map(str::to_string).collect()
}

// ---------------------------------------------------------------- processes and time

/// Every process's argv (NUL bytes as spaces) and environment, as
/// `(pid, argv, environ)`; processes that end while being read are skipped.
pub fn processes() -> Vec<(u32, String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let read = |f: &str| fs::read(e.path().join(f)).map(|b| String::from_utf8_lossy(&b).replace('\0', " "));
        if let Ok(argv) = read("cmdline") {
            out.push((pid, argv, read("environ").unwrap_or_default()));
        }
    }
    out
}

/// The live (not zombie) processes whose argv contains `needle`.
pub fn processes_running(needle: &str) -> Vec<String> {
    processes()
        .into_iter()
        .filter(|(_, argv, _)| argv.contains(needle))
        .map(|(pid, argv, _)| format!("{pid}: {argv}"))
        .collect()
}

/// Kills (SIGKILL) every process whose argv contains its needle when
/// dropped: for the hooks a test leaves behind on purpose.
pub struct KillOnDrop(pub String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for (pid, argv, _) in processes() {
            if argv.contains(&self.0) && pid != std::process::id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Wait up to `limit` for `ready`; panic naming `what` if it never is.
#[track_caller]
pub fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < end, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An RFC 3339 UTC timestamp (`2026-01-02T03:04:05.5Z`) as a key that
/// orders like the time: the seconds part and the nanoseconds.
pub fn time_key(ts: &str) -> (String, u32) {
    let ts = ts.strip_suffix('Z').unwrap_or_else(|| panic!("{ts:?} should be a UTC timestamp ending in Z"));
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, "0"));
    let nanos = format!("{frac:0<9}")[..9].parse().unwrap_or_else(|e| panic!("{ts:?}: {e}"));
    (secs.to_string(), nanos)
}
