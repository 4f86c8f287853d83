//! Database passwords reach the dump tools and nothing else: not any
//! process's argv or environment while the run goes on, not holdfast's
//! output, not the repository's files, not the snapshot or what it holds,
//! not the spool after the run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::jobs_util::{JobEnv, MyDatabase, MyUser, PgDatabase, PgRole, Ran, processes, q, shq, unique};

/// A password with characters that need quoting in a MySQL option file and
/// in a `.pgpass` file; `token` is its distinctive core, found in any
/// escaped form of it.
fn password() -> (String, String) {
    let token = unique("pw");
    (format!("s3cret#{token}:\"q\\"), token)
}

/// Put a spy in front of the dump tool `tool` in a directory of its own:
/// it appends its argv and environment to `spy.log`, then runs the real
/// tool. Returns the directory, for the front of holdfast's `$PATH`.
fn spy_on(env: &JobEnv, tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let real = std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH"));
    let dir = env.path("spy-bin");
    fs::create_dir_all(&dir).unwrap();
    let spy = dir.join(tool);
    let log = shq(env.path("spy.log"));
    fs::write(&spy, format!("#!/bin/sh\n{{ echo \"argv: $*\"; env; }} >> {log}\nexec {} \"$@\"\n", shq(&real)))
        .unwrap();
    fs::set_permissions(&spy, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let bytes = fs::read(e.path()).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

/// Run `job` with the spy's directory first on `$PATH`, reading every
/// process's argv and environment over and over while it runs; the run and
/// the processes seen with `token`.
fn run_watching_for(env: &JobEnv, job: &str, spy_dir: &Path, token: &str) -> (Ran, Vec<String>) {
    let path = std::env::join_paths(
        std::iter::once(spy_dir.to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut cmd = env.cmd(["run", job]);
    cmd.env("PATH", path);
    let mut run = env.start(cmd);
    let mut seen = Vec::new();
    while run.is_running() {
        for (pid, argv, environ) in processes() {
            if argv.contains(token) || environ.contains(token) {
                seen.push(format!("{pid}: {argv}"));
            }
        }
    }
    (run.wait(), seen)
}

/// Everything the brief of this file promises, for a run of `job` that
/// dumped with the spied-on tool (whose argv contains `dump_arg`).
#[track_caller]
fn assert_kept_secret(env: &JobEnv, job: &str, ran: &Ran, seen: &[String], token: &str, dump_arg: &str) {
    ran.assert_ok();
    assert!(seen.is_empty(), "processes with the password in argv or environment: {seen:#?}");
    let spied = env.read("spy.log");
    assert!(spied.contains(dump_arg), "the spy should have seen the dump (with {dump_arg}):\n{spied}");
    assert!(!spied.contains(token), "the dump tool got the password in argv or environment:\n{spied}");
    assert!(!ran.stdout.contains(token) && !ran.stderr.contains(token), "the password is in the output: {ran:?}");
    assert_eq!(files_containing(&env.repo(), token), Vec::<PathBuf>::new(), "repository files with the password");
    let listing = env.engine(["snapshots", job, "--json"]).assert().success();
    let listing = String::from_utf8_lossy(&listing.get_output().stdout).into_owned();
    assert!(!listing.contains(token), "the snapshot's JSON holds the password:\n{listing}");
    let snap = env.only_snapshot(job);
    let out = env.restore(snap["id"].as_str().unwrap(), "restored");
    assert_eq!(files_containing(&out, token), Vec::<PathBuf>::new(), "restored files with the password");
    assert_eq!(env.job_spool(job), ["lock"], "credential files should leave the spool with the run");
}

#[test]
fn a_mariadb_password_from_a_file_never_leaks() {
    let env = JobEnv::new();
    let (password, token) = password();
    let db = MyDatabase::create("secret");
    db.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('dumped as the user');");
    let user = MyUser::create("u", &password, &db.name);
    fs::write(env.path("db.pass"), format!("{password}\n")).unwrap();
    let spy = spy_on(&env, "mariadb-dump");
    env.config(&format!(
        "[jobs.shop]\n[[jobs.shop.databases]]\nkind = \"mysql\"\nname = {}\nhost = {}\nport = {}\nuser = {}\npassword_file = \"db.pass\"\n",
        q(&db.name),
        q(&db.server.host),
        db.server.port,
        q(&user.name)
    ))
    .init_repo();

    let (ran, seen) = run_watching_for(&env, "shop", &spy, &token);

    assert_kept_secret(&env, "shop", &ran, &seen, &token, "--defaults-extra-file");
    let dump = fs::read_to_string(env.path(&format!("restored/.holdfast/databases/{0}/{0}.sql", db.name))).unwrap();
    assert!(dump.contains("dumped as the user"), "the user's dump should hold the row:\n{dump}");
}

#[test]
fn a_postgresql_password_from_a_file_never_leaks() {
    let env = JobEnv::new();
    let (password, token) = password();
    let role = PgRole::create("u", &password);
    let db = PgDatabase::create_owned_by("secret", Some(&role.name));
    db.sql(&format!(
        "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('dumped as the role');\nALTER TABLE t OWNER TO {};",
        role.name
    ));
    fs::write(env.path("db.pass"), format!("{password}\n")).unwrap();
    let spy = spy_on(&env, "pg_dump");
    env.config(&format!(
        "[jobs.crm]\n[[jobs.crm.databases]]\nkind = \"postgresql\"\nname = {}\nhost = {}\nport = {}\nuser = {}\npassword_file = \"db.pass\"\n",
        q(&db.name),
        q(&db.server.host),
        db.server.port,
        q(&role.name)
    ))
    .init_repo();

    let (ran, seen) = run_watching_for(&env, "crm", &spy, &token);

    assert_kept_secret(&env, "crm", &ran, &seen, &token, "--dbname=");
    let dump = fs::read_to_string(env.path(&format!("restored/.holdfast/databases/{0}/{0}.sql", db.name))).unwrap();
    assert!(dump.contains("dumped as the role"), "the role's dump should hold the row:\n{dump}");
}

/// A database name that reads as a libpq connection string (anyone who may
/// create a database can pick one) is dumped as that database: no tool
/// connects where the name points, so no password goes there.
#[test]
fn a_postgresql_database_named_like_a_connection_string_is_dumped_as_itself() {
    let env = JobEnv::new();
    let server = crate::jobs_util::Postgres::from_env();
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let port = trap.local_addr().unwrap().port();
    let name = format!("host=127.0.0.1 port={port} dbname={}", unique("lure"));
    let quoted = name.replace('"', "\"\"");
    let conninfo = format!("dbname='{name}'");
    server.sql("postgres", &format!("CREATE DATABASE \"{quoted}\";"));
    struct DropNamed<'a>(&'a crate::jobs_util::Postgres, String);
    impl Drop for DropNamed<'_> {
        fn drop(&mut self) {
            let _ = self.0.try_sql("postgres", &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE);", self.1));
        }
    }
    let _dropped = DropNamed(&server, quoted);
    server.sql(&conninfo, "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('the lure''s own row');");
    fs::write(env.path("db.pass"), "not-for-anyone-else\n").unwrap();
    env.config(&format!(
        "[jobs.crm]\n[[jobs.crm.databases]]\nkind = \"postgresql\"\nname = {}\nentry = \"lure\"\n{}password_file = \"db.pass\"\n",
        q(&name),
        server.toml()
    ))
    .init_repo();

    env.run(&["crm"]).assert_ok();

    assert!(trap.accept().is_err(), "a tool connected to the port the database name points at");
    let snap = env.only_snapshot("crm");
    let out = env.restore(snap["id"].as_str().unwrap(), "restored");
    let dir = out.join(".holdfast/databases/lure");
    let dump: String = fs::read_dir(&dir).unwrap().map(|e| fs::read_to_string(e.unwrap().path()).unwrap()).collect();
    assert!(dump.contains("the lure's own row"), "the dump is the named database's:\n{dump}");
}
