//! `verify JOB`, the automated restore test: every dump of the snapshot is
//! loaded into a scratch database that is dropped again, its tables are
//! counted and its smoke queries run; every file is restored and read back
//! against its recorded hashes. A failure exits non-zero and notifies
//! `verify_failed`. A backup taken while pgbench writes restores consistent.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::jobs_util::{JobEnv, MyDatabase, PgDatabase, q, sqlite_exec, unique, wait_for};
use crate::p34_util::{MyName, PgName, holdfast, holdfast_json, my_has_database, pg_has_database, spool_leftovers};
use crate::util::{parse_json, write_random};

/// `[[jobs.app.databases.verify]]` tables, one per `(sql, expect)`.
fn smoke(queries: &[(&str, Option<&str>)]) -> String {
    queries
        .iter()
        .map(|(sql, expect)| {
            let expect = expect.map(|e| format!("expect = {}\n", q(e))).unwrap_or_default();
            format!("[[jobs.app.databases.verify]]\nsql = {}\n{expect}\n", q(sql))
        })
        .collect()
}

/// A notify target of job `app` that appends `EVENT JOB` to `notified` and
/// writes `{{error}}` to `notified-error`.
const NOTIFY: &str = "[[jobs.app.notify]]\nevents = [\"verify_failed\"]\n\
    command = [\"/bin/sh\", \"-c\", \"echo \\\"$1 $2\\\" >> notified; printf '%s' \\\"$3\\\" > notified-error\", \"sh\", \"{{event}}\", \"{{job}}\", \"{{error}}\"]\n\n";

/// Asserts that none of the scratch databases a verify report names is
/// left; one that is gets dropped.
#[track_caller]
fn assert_scratch_databases_gone(report: &Value) {
    for d in report["databases"].as_array().unwrap_or_else(|| panic!("databases in {report:#}")) {
        let scratch = d["scratch"].as_str().unwrap_or_default().to_string();
        assert!(!scratch.is_empty(), "each database names its scratch copy: {d:#}");
        let name = d["name"].as_str().unwrap();
        if scratch.starts_with('/') {
            assert!(!Path::new(&scratch).exists(), "the scratch SQLite file {scratch} should be removed");
            continue;
        }
        assert!(scratch.starts_with("hf_verify_"), "{scratch}");
        if pg_has_database(&scratch) {
            let _drop = PgName(scratch.clone());
            panic!("the PostgreSQL scratch database {scratch} (of {name}) is left behind");
        }
        if my_has_database(&scratch) {
            let _drop = MyName(scratch.clone());
            panic!("the MariaDB scratch database {scratch} (of {name}) is left behind");
        }
    }
}

/// The one report of `verify app --json`, run to its end.
fn verify(env: &JobEnv) -> (crate::jobs_util::Ran, Value) {
    let ran = holdfast(env, &["verify", "app", "--json"]);
    let reports = parse_json(&ran.stdout);
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "one report: {ran:?}");
    (ran, reports[0].clone())
}

/// A database check of the report, by the database's name.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("a check of {name} in {report:#}"))
}

#[test]
fn verify_passes_a_good_snapshot_of_every_kind_of_database_and_files() {
    let env = JobEnv::new();
    let pg = PgDatabase::create("verify");
    pg.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('a'), ('b');");
    let my = MyDatabase::create("verify");
    my.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('a'), ('b'), ('c');");
    sqlite_exec(&env.path("app.db"), "CREATE TABLE t (v);\nINSERT INTO t VALUES ('a'), ('b'), ('c'), ('d');");
    fs::create_dir_all(env.path("uploads/sub")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    write_random(&env.path("uploads/sub/b.bin"), 11, 300_000);
    let queries = smoke(&[
        ("SELECT count(*) FROM t", Some(">= 2")),
        ("SELECT max(v) FROM t", Some("^[a-d]$")),
        ("SELECT 'alive'", None),
    ]);
    env.config(&format!(
        "[jobs.app]\n{}{queries}{}{queries}[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n\n{queries}{NOTIFY}\
         [jobs.app.files]\npaths = [\"uploads\"]\n",
        pg.entry("app"),
        my.entry("app"),
    ))
    .init_repo();
    env.run(&["app"]).assert_ok();

    let reports = holdfast_json(&env, &["verify", "app"]);

    let report = &reports[0];
    assert_scratch_databases_gone(report);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["problems"], json!([]), "{report:#}");
    assert_eq!(report["snapshot"], env.only_snapshot("app")["id"]);
    let sqlite_name = env.path("app.db").display().to_string();
    for (name, table, rows) in [(pg.name.as_str(), "public.t", 2), (my.name.as_str(), "t", 3), (&sqlite_name, "t", 4)] {
        let d = check(report, name);
        assert_eq!(d["error"], Value::Null, "{d:#}");
        assert_eq!(d["tables"], json!([[table, rows]]), "{d:#}");
        let smoke = d["smoke"].as_array().unwrap();
        assert_eq!(smoke.len(), 3, "{d:#}");
        assert!(smoke.iter().all(|s| s["ok"] == true), "{d:#}");
        assert_eq!(smoke[0]["value"], rows.to_string(), "{d:#}");
        assert_eq!(smoke[2]["expect"], "non-empty", "{d:#}");
    }
    assert_eq!(report["files"]["files"], 2, "{report:#}");
    assert_eq!(report["files"]["bytes"], 300_002, "{report:#}");
    assert_eq!(report["files"]["mismatches"], json!([]), "{report:#}");
    assert_eq!(env.read("notified"), "", "a passing verify notifies nothing");
    assert_eq!(spool_leftovers(&env, "app"), Vec::<String>::new(), "verify leaves nothing in the spool");
}

#[test]
fn verify_fails_and_notifies_when_a_smoke_query_is_not_met() {
    let env = JobEnv::new();
    let pg = PgDatabase::create("smoke");
    pg.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('a'), ('b');");
    let my = MyDatabase::create("smoke");
    my.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('a');");
    env.config(&format!(
        "[jobs.app]\n{}{}{}{}{NOTIFY}",
        pg.entry("app"),
        smoke(&[("SELECT count(*) FROM t", Some("= 999"))]),
        my.entry("app"),
        smoke(&[("SELECT count(*) FROM t", Some("= 1"))]),
    ))
    .init_repo();
    env.run(&["app"]).assert_ok();

    let (ran, report) = verify(&env);

    ran.assert_failed();
    assert_scratch_databases_gone(&report);
    assert_eq!(report["ok"], false, "{report:#}");
    let failed = check(&report, &pg.name);
    assert_eq!(
        failed["smoke"],
        json!([{"sql": "SELECT count(*) FROM t", "expect": "= 999", "value": "2", "ok": false}])
    );
    assert_eq!(check(&report, &my.name)["smoke"][0]["ok"], true, "{report:#}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    let problem = problems[0].as_str().unwrap();
    assert!(problem.contains(&pg.name) && problem.contains("= 999"), "{problem}");
    assert_eq!(env.lines("notified"), ["verify_failed app"]);
    assert!(env.read("notified-error").contains("= 999"), "{}", env.read("notified-error"));
}

/// The largest file under `dir`.
fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if best.as_ref().is_none_or(|(len, _)| md.len() > *len) {
                best = Some((md.len(), e.path()));
            }
        }
    }
    best.unwrap_or_else(|| panic!("no file under {}", dir.display())).1
}

#[test]
fn verify_fails_and_notifies_when_a_files_data_is_damaged() {
    let env = JobEnv::new();
    let pg = PgDatabase::create("damage");
    pg.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('a');");
    fs::create_dir(env.path("uploads")).unwrap();
    // Nearly all of the data: a byte in the middle of its pack is this file's.
    write_random(&env.path("uploads/big.bin"), 13, 4 << 20);
    env.config(&format!("[jobs.app]\n{}{NOTIFY}[jobs.app.files]\npaths = [\"uploads\"]\n", pg.entry("app")))
        .init_repo();
    env.run(&["app"]).assert_ok();
    let pack = largest_file(&env.repo().join("packs"));
    let file = fs::OpenOptions::new().read(true).write(true).open(&pack).unwrap();
    let middle = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, middle).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], middle).unwrap();
    drop(file);

    let (ran, report) = verify(&env);

    ran.assert_failed();
    assert_scratch_databases_gone(&report);
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(check(&report, &pg.name)["error"], Value::Null, "the dump is intact: {report:#}");
    let problems: Vec<&str> = report["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(!problems.is_empty(), "{report:#}");
    assert!(
        problems.iter().all(|p| p.starts_with("file")),
        "the problem is with the files, and says so: {problems:#?}"
    );
    let text = holdfast(&env, &["verify", "app"]);
    text.assert_failed().assert_says("FAILED verification").assert_says("PROBLEM: file");
    assert_eq!(env.lines("notified"), ["verify_failed app", "verify_failed app"]);
    // Which file is damaged is what a person needs to know.
    let damaged = env.path("uploads/big.bin").display().to_string();
    assert!(problems.iter().any(|p| p.contains(&damaged)), "the problem should name {damaged}: {problems:#?}");
}

/// `pgbench` on PATH, else PostgreSQL's own.
fn pgbench() -> PathBuf {
    if Command::new("pgbench").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return PathBuf::from("pgbench");
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin/pgbench")).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().expect("pgbench (postgresql-contrib or the server's bin directory)")
}

/// A child process of the test, killed if the test ends before it does.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_postgresql_database_backed_up_under_pgbench_load_restores_with_balances_that_agree() {
    let env = JobEnv::new();
    let db = PgDatabase::create("pgbench");
    let s = &db.server;
    let connect = ["-h", &s.host, "-p", &s.port, "-U", &s.user];
    let init = Command::new(pgbench()).args(["-i", "-s", "1", "-q"]).args(connect).arg(&db.name).output().unwrap();
    assert!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    env.config(&format!("[jobs.app]\n{}", db.entry("app"))).init_repo();
    let load = ChildGuard(
        Command::new(pgbench())
            .args(["-n", "-c", "2", "-R", "300", "-T", "20"])
            .args(connect)
            .arg(&db.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let history = || db.sql("SELECT count(*) FROM pgbench_history;").trim().parse::<u64>().unwrap();
    wait_for("pgbench to commit transactions", Duration::from_secs(20), || history() > 0);

    env.run(&["app"]).assert_ok();

    let during = history();
    drop(load);
    let new = PgName(unique("pgbenchcopy"));
    holdfast(&env, &["restore", "app", "--database", &db.name, "--into", &new.0]).assert_ok();
    let sums = db.server.sql(
        &new.0,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(delta) FROM pgbench_history), \
         (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches), \
         (SELECT count(*) FROM pgbench_history);",
    );
    let sums: Vec<&str> = sums.trim().split('|').collect();
    assert_eq!(sums.len(), 5, "{sums:?}");
    assert!(sums[..4].iter().all(|s| *s == sums[0]), "the balances should agree: {sums:?}");
    let restored_history: u64 = sums[4].parse().unwrap();
    assert!(restored_history > 0, "the backup should hold transactions: {sums:?}");
    assert!(restored_history <= during, "{sums:?}, {during} by the end of the run");
}

#[test]
fn verify_loads_a_run_as_postgresql_entry() {
    let env = JobEnv::new();
    let db = PgDatabase::create("runasverify");
    db.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('dumped as postgres');");
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.databases]]\nkind = \"postgresql\"\nname = {}\nhost = \"/var/run/postgresql\"\nport = {}\nrun_as = \"postgres\"\n\n{}",
        q(&db.name),
        db.server.port,
        smoke(&[("SELECT v FROM t", Some("^dumped as postgres$"))]),
    ))
    .init_repo();
    env.run(&["app"]).assert_ok();

    let (ran, report) = verify(&env);

    assert_scratch_databases_gone(&report);
    ran.assert_ok();
    assert_eq!(check(&report, &db.name)["tables"], json!([["public.t", 1]]), "{report:#}");
}
