//! Helpers for the `hold`, `restore_jobs` and `verify_jobs` tests, on top of
//! [`crate::jobs_util`]: running any holdfast command to its end, guards
//! for the databases a restore or a verify creates under names of its own,
//! and a look at what a server holds.
//!
//! Not for: anything that reaches into the library.

use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

use crate::jobs_util::{JobEnv, MariaDb, Postgres, Ran};
use crate::util::parse_json;

/// `holdfast --config holdfast.toml ARGS...` to its end.
pub fn holdfast(env: &JobEnv, args: &[&str]) -> Ran {
    env.start(env.cmd(args)).wait()
}

/// [`holdfast`] with `--json` added, which must succeed; its JSON.
#[track_caller]
pub fn holdfast_json(env: &JobEnv, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let ran = holdfast(env, &args);
    ran.assert_ok();
    parse_json(&ran.stdout)
}

/// A name of a PostgreSQL database that a test makes holdfast create:
/// dropped when the test ends, if it exists.
pub struct PgName(pub String);

impl Drop for PgName {
    fn drop(&mut self) {
        drop_pg(&self.0);
    }
}

/// Every PostgreSQL database whose name starts with the prefix (names
/// holdfast derives from a test's own database, like `NAME_before_...`):
/// dropped when the test ends.
pub struct PgNamesStartingWith(pub String);

impl Drop for PgNamesStartingWith {
    fn drop(&mut self) {
        let sql = format!("SELECT datname FROM pg_database WHERE starts_with(datname, {})", literal(&self.0));
        for name in pg_query(&sql).unwrap_or_default() {
            drop_pg(&name);
        }
    }
}

fn drop_pg(name: &str) {
    let pg = Postgres::from_env();
    let _ = quiet(
        "psql",
        &["-X", "-q", "-h", &pg.host, "-p", &pg.port, "-U", &pg.user, "-d", "postgres", "-c"],
        &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", name.replace('"', "\"\"")),
    );
}

/// A name of a MariaDB database that a test makes holdfast create: dropped
/// when the test ends, if it exists.
pub struct MyName(pub String);

impl Drop for MyName {
    fn drop(&mut self) {
        drop_my(&self.0);
    }
}

/// Every MariaDB database whose name starts with the prefix: dropped when
/// the test ends.
pub struct MyNamesStartingWith(pub String);

impl Drop for MyNamesStartingWith {
    fn drop(&mut self) {
        let sql = format!(
            "SELECT schema_name FROM information_schema.schemata WHERE LEFT(schema_name, {}) = {}",
            self.0.chars().count(),
            literal(&self.0)
        );
        for name in my_query(&sql).unwrap_or_default() {
            drop_my(&name);
        }
    }
}

fn drop_my(name: &str) {
    let my = MariaDb::from_env();
    let _ = quiet(
        "mariadb",
        &["--protocol=TCP", "-h", &my.host, "-P", &my.port, "-u", &my.user, "-e"],
        &format!("DROP DATABASE IF EXISTS `{}`", name.replace('`', "``")),
    );
}

/// Run `program args last`; its stdout if it succeeded.
fn quiet(program: &str, args: &[&str], last: &str) -> Option<String> {
    let out = Command::new(program).args(args).arg(last).stdin(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rows of `sql` in PostgreSQL's database `postgres`, or `None`.
fn pg_query(sql: &str) -> Option<Vec<String>> {
    let pg = Postgres::from_env();
    let out = quiet(
        "psql",
        &["-X", "-q", "-At", "-h", &pg.host, "-p", &pg.port, "-U", &pg.user, "-d", "postgres", "-c"],
        sql,
    )?;
    Some(out.lines().map(str::to_string).collect())
}

/// The rows of `sql` on the MariaDB server, or `None`.
fn my_query(sql: &str) -> Option<Vec<String>> {
    let my = MariaDb::from_env();
    let out =
        quiet("mariadb", &["--protocol=TCP", "-N", "-B", "-h", &my.host, "-P", &my.port, "-u", &my.user, "-e"], sql)?;
    Some(out.lines().map(str::to_string).collect())
}

/// `s` (without backslashes) as an SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The PostgreSQL databases whose names start with `prefix`.
pub fn pg_databases_starting_with(prefix: &str) -> Vec<String> {
    let sql = format!("SELECT datname FROM pg_database WHERE starts_with(datname, {}) ORDER BY 1", literal(prefix));
    pg_query(&sql).unwrap_or_else(|| panic!("cannot list PostgreSQL's databases"))
}

/// Whether the PostgreSQL server has a database `name`.
pub fn pg_has_database(name: &str) -> bool {
    pg_databases_starting_with(name).iter().any(|n| n == name)
}

/// The MariaDB databases whose names start with `prefix`.
pub fn my_databases_starting_with(prefix: &str) -> Vec<String> {
    let sql = format!(
        "SELECT schema_name FROM information_schema.schemata WHERE LEFT(schema_name, {}) = {} ORDER BY 1",
        prefix.chars().count(),
        literal(prefix)
    );
    my_query(&sql).unwrap_or_else(|| panic!("cannot list MariaDB's databases"))
}

/// Whether the MariaDB server has a database `name`.
pub fn my_has_database(name: &str) -> bool {
    my_databases_starting_with(name).iter().any(|n| n == name)
}

/// What `<spool>/<job>/` holds of runs and scratch work: its directories
/// and the run journal (not the job's lock and state files), sorted.
pub fn spool_leftovers(env: &JobEnv, job: &str) -> Vec<String> {
    let dir = env.spool().join(job);
    env.job_spool(job).into_iter().filter(|n| n.starts_with("journal") || dir.join(n).is_dir()).collect()
}

/// `FLUSH TABLES WITH READ LOCK` holds the whole MariaDB server: the tests of
/// this crate's files that take it do so one at a time, so that one test's
/// writers never wait on another test's lock.
pub static SERVER_READ_LOCK: Mutex<()> = Mutex::new(());
