//! Jobs, end to end: `holdfast --config FILE run JOB` against the real
//! PostgreSQL and MariaDB servers of the machine, real SQLite files and real
//! hook processes. Each test writes its own config into its own temporary
//! directory ([`JobEnv`]) and creates (and drops) its own databases.
//!
//! - `jobs` (this file): what one run commits — every kind of database and
//!   a file set in one snapshot, `name = "all"`, excludes, tags, several
//!   repositories, two jobs sharing a repository, `run --all --json`, the
//!   shipped example config.
//! - `jobs_hooks`: hook phases, their order, exit statuses and template
//!   variables; `hold` hooks; `finally` after a failed dump, a timed-out
//!   hook and SIGTERM.
//! - `jobs_spool`: the private spool, the job lock, recovery after a
//!   killed run.
//! - `jobs_secrets`: database passwords never leak.
//! - `jobs_consistency`: hooks that pause an application, and MariaDB's
//!   global read lock, make the snapshot application-consistent.
//! - `jobs_notify`: notifications, retries and template errors.
//! - `jobs_config`: config errors name where they are.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::jobs_util::{
    JobEnv, MyDatabase, PgDatabase, Postgres, freeze_database_set, sqlite_exec, sqlite_query, time_key,
};
use crate::util::{assert_same_tree, restored, tree_fingerprint, write_random};

/// A small file set: text, a binary, a subdirectory.
fn make_uploads(dir: &Path) {
    fs::create_dir_all(dir.join("2026/01")).unwrap();
    fs::write(dir.join("readme.txt"), "uploaded by a customer\n").unwrap();
    fs::write(dir.join("2026/01/invoice.txt"), "invoice 1\n".repeat(50)).unwrap();
    write_random(&dir.join("2026/01/photo.bin"), 7, 20_000);
}

/// The database records of a job snapshot (`extra.databases`).
fn database_records(snapshot: &Value) -> Vec<Value> {
    snapshot["extra"]["databases"].as_array().expect("extra.databases should be an array").clone()
}

/// The one record of `extra.databases` with `kind`.
#[track_caller]
fn record_of_kind(snapshot: &Value, kind: &str) -> Value {
    let records: Vec<Value> = database_records(snapshot).into_iter().filter(|r| r["kind"] == kind).collect();
    assert_eq!(records.len(), 1, "one {kind} record expected: {records:#?}");
    records[0].clone()
}

/// What every dump record must say: its tool and version, start before end,
/// a size that is the restored dump's size.
#[track_caller]
fn assert_dump_record(record: &Value, restore_dir: &Path) {
    for key in ["entry", "name", "file", "tool", "tool_version"] {
        let v = record[key].as_str().unwrap_or_default();
        assert!(!v.is_empty(), "{key} should be set: {record:#}");
    }
    let (started, finished) = (record["started"].as_str().unwrap(), record["finished"].as_str().unwrap());
    assert!(time_key(started) <= time_key(finished), "started should not be after finished: {record:#}");
    let size = record["size"].as_u64().expect("size");
    assert!(size > 0, "an empty dump: {record:#}");
    let file = restore_dir.join(record["file"].as_str().unwrap().trim_start_matches('/'));
    let on_disk = fs::metadata(&file).unwrap_or_else(|e| panic!("the dump {} should be restored: {e}", file.display()));
    assert_eq!(on_disk.len(), size, "the record's size should be the dump's: {record:#}");
}

#[test]
fn a_job_with_postgresql_mariadb_sqlite_and_files_commits_one_snapshot_holding_all_four() {
    let env = JobEnv::new();
    let pg = PgDatabase::create("four");
    pg.sql(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);\nINSERT INTO orders VALUES (1, 'pg row of {0}'), (2, 'second');",
        pg.name
    ));
    let my = MyDatabase::create("four");
    my.sql(&format!(
        "CREATE TABLE orders (id INT PRIMARY KEY, note TEXT);\nINSERT INTO orders VALUES (1, 'mariadb row of {0}');",
        my.name
    ));
    let app_db = env.path("app.db");
    sqlite_exec(
        &app_db,
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\nINSERT INTO notes (body) VALUES ('sqlite note');",
    );
    let uploads = env.path("uploads");
    make_uploads(&uploads);
    env.config(&format!(
        r#"
[jobs.shop]
description = "PostgreSQL, MariaDB, SQLite and uploads"
tags = ["production"]

{pg}
{my}
[[jobs.shop.databases]]
kind = "sqlite"
path = "app.db"

[jobs.shop.files]
paths = ["uploads"]
"#,
        pg = pg.entry("shop"),
        my = my.entry("shop"),
    ))
    .init_repo();

    let ran = env.run(&["shop"]);

    ran.assert_ok();
    assert!(ran.stdout.starts_with("job shop: snapshot "), "a summary line: {ran:?}");
    assert_eq!(ran.stdout.lines().count(), 1, "one summary line: {ran:?}");
    let snap = env.only_snapshot("shop");
    let id = snap["id"].as_str().unwrap();
    assert_eq!(snap["tags"], serde_json::json!(["shop", "production"]), "tagged with the job and its tags");
    assert_eq!(snap["extra"]["job"], "shop");
    assert_eq!(database_records(&snap).len(), 3, "{snap:#}");
    let out = env.restore(id, "restored");

    let rec = record_of_kind(&snap, "postgresql");
    assert_dump_record(&rec, &out);
    assert_eq!(rec["name"], pg.name.as_str());
    assert_eq!(rec["file"], format!("/.holdfast/databases/{0}/{0}.sql", pg.name));
    assert_eq!(rec["tool"], "pg_dump");
    assert!(rec["tool_version"].as_str().unwrap().contains("pg_dump"), "{rec:#}");
    assert_eq!(rec["server_version"], pg.sql("SHOW server_version").trim());
    let dump = fs::read_to_string(out.join(format!(".holdfast/databases/{0}/{0}.sql", pg.name))).unwrap();
    assert!(dump.contains("CREATE TABLE public.orders"), "the PostgreSQL dump should create the table:\n{dump}");
    assert!(dump.contains(&format!("pg row of {}", pg.name)), "the PostgreSQL dump should hold the row:\n{dump}");

    let rec = record_of_kind(&snap, "mysql");
    assert_dump_record(&rec, &out);
    assert_eq!(rec["file"], format!("/.holdfast/databases/{0}/{0}.sql", my.name));
    assert!(["mariadb-dump", "mysqldump"].contains(&rec["tool"].as_str().unwrap()), "{rec:#}");
    assert_eq!(rec["server_version"], my.sql("SELECT VERSION();").trim());
    let dump = fs::read_to_string(out.join(format!(".holdfast/databases/{0}/{0}.sql", my.name))).unwrap();
    assert!(dump.contains("CREATE TABLE `orders`"), "the MariaDB dump should create the table:\n{dump}");
    assert!(dump.contains(&format!("mariadb row of {}", my.name)), "the MariaDB dump should hold the row:\n{dump}");

    let rec = record_of_kind(&snap, "sqlite");
    assert_dump_record(&rec, &out);
    assert_eq!(rec["file"], "/.holdfast/databases/app/app.db.sqlite");
    assert!(rec["tool_version"].as_str().unwrap().starts_with("SQLite "), "{rec:#}");
    assert_eq!(rec["server_version"], Value::Null);
    let copy = out.join(".holdfast/databases/app/app.db.sqlite");
    assert_eq!(sqlite_query(&copy, "SELECT body FROM notes;"), ["sqlite note"]);

    assert_same_tree(&tree_fingerprint(&uploads), &tree_fingerprint(&restored(&out, &uploads)));
    assert_eq!(snap["extra"]["file_sets"][0]["paths"], serde_json::json!([uploads]));
}

#[test]
fn file_set_excludes_leave_matching_paths_out() {
    let env = JobEnv::new();
    let uploads = env.path("uploads");
    fs::create_dir_all(uploads.join("cache")).unwrap();
    fs::write(uploads.join("kept.txt"), "kept\n").unwrap();
    fs::write(uploads.join("cache/thumb.bin"), "cached\n").unwrap();
    fs::write(uploads.join("upload.tmp"), "partial\n").unwrap();
    env.config("[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\nexclude = [\"**/cache/**\", \"**/*.tmp\"]\n")
        .init_repo();

    env.run(&["app"]).assert_ok();

    let files = env.ls(env.only_snapshot("app")["id"].as_str().unwrap());
    let path = |rel: &str| uploads.join(rel).display().to_string();
    assert!(files.contains(&path("kept.txt")), "{files:#?}");
    assert!(!files.contains(&path("cache/thumb.bin")), "excluded by **/cache/**: {files:#?}");
    assert!(!files.contains(&path("upload.tmp")), "excluded by **/*.tmp: {files:#?}");
}

#[test]
fn an_optional_path_is_backed_up_when_present_and_skipped_when_absent() {
    let env = JobEnv::new();
    let uploads = env.path("uploads");
    fs::create_dir_all(&uploads).unwrap();
    fs::write(uploads.join("a.txt"), "a\n").unwrap();
    env.config("[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\noptional = [\"languages\"]\n").init_repo();

    env.run(&["app"]).assert_ok();
    let valid = env.start(env.cmd(["validate", "app"])).wait();
    valid.assert_ok().assert_says("is absent: skipped");

    fs::create_dir_all(env.path("languages")).unwrap();
    fs::write(env.path("languages/de.po"), "msgid\n").unwrap();
    env.run(&["app"]).assert_ok();
    let snaps = env.snapshots_json("app");
    let files = env.ls(snaps.last().unwrap()["id"].as_str().unwrap());
    assert!(files.contains(&env.path("languages/de.po").display().to_string()), "{files:#?}");
    assert!(files.contains(&uploads.join("a.txt").display().to_string()), "{files:#?}");
}

#[test]
fn run_all_runs_every_job_reports_each_and_fails_when_one_failed() {
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.bad]\n[[jobs.bad.hooks]]\nphase = \"before\"\nrun = \"exit 4\"\n\n\
         [jobs.good]\n[jobs.good.files]\npaths = [\"uploads\"]\n",
    )
    .init_repo();

    let ran = env.start(env.cmd(["run", "--all", "--json"])).wait();

    ran.assert_failed();
    let reports = crate::util::parse_json(&ran.stdout);
    let report = |job: &str| {
        reports.as_array().unwrap().iter().find(|r| r["job"] == job).cloned().unwrap_or_else(|| panic!("{reports:#}"))
    };
    let (bad, good) = (report("bad"), report("good"));
    assert_eq!(bad["ok"], false, "{bad:#}");
    assert_eq!(bad["snapshot"], Value::Null, "{bad:#}");
    assert!(bad["error"].as_str().unwrap().contains("exited with status 4"), "{bad:#}");
    assert_eq!(good["ok"], true, "a failed job does not stop the others: {good:#}");
    assert_eq!(good["snapshot"], env.only_snapshot("good")["id"]);
    assert_eq!(env.snapshots_json("bad").len(), 0);
}

#[test]
fn a_job_naming_two_repositories_commits_a_snapshot_into_each() {
    let env = JobEnv::new();
    make_uploads(&env.path("uploads"));
    env.config(
        "[repositories.offsite]\npath = \"offsite\"\npassphrase_file = \"passphrase\"\n\n\
         [jobs.app]\nrepositories = [\"main\", \"offsite\"]\n[jobs.app.files]\npaths = [\"uploads\"]\n",
    )
    .init_repo();
    env.engine(["--repo", "offsite", "init"]).assert().success();

    env.run(&["app"]).assert_ok();

    for repo in ["main", "offsite"] {
        let out = env.engine(["--repo", repo, "snapshots", "--json"]).assert().success();
        let snaps = crate::util::parse_json(&String::from_utf8_lossy(&out.get_output().stdout));
        let of_app: Vec<&Value> = snaps.as_array().unwrap().iter().filter(|s| s["extra"]["job"] == "app").collect();
        assert_eq!(of_app.len(), 1, "repository {repo} should hold the job's snapshot: {snaps:#}");
    }
}

#[test]
fn a_second_repository_sharing_keys_gets_a_copy_and_catches_up_missed_snapshots() {
    let env = JobEnv::new();
    make_uploads(&env.path("uploads"));
    env.config(
        "[repositories.offsite]\npath = \"offsite\"\npassphrase_file = \"passphrase\"\n\n\
         [jobs.app]\nrepositories = [\"main\", \"offsite\"]\n[jobs.app.files]\npaths = [\"uploads\"]\n",
    )
    .init_repo();
    let from = fs::read_to_string(env.path("passphrase")).unwrap();
    env.engine(["--repo", "offsite", "init", "--copy-params-from"])
        .arg(env.repo())
        .env("HOLDFAST_FROM_PASSPHRASE", from.trim_end())
        .assert()
        .success();
    let of_app = |repo: &str| -> Vec<Value> {
        let out = env.engine(["--repo", repo, "snapshots", "--json"]).assert().success();
        let snaps = crate::util::parse_json(&String::from_utf8_lossy(&out.get_output().stdout));
        snaps.as_array().unwrap().iter().filter(|s| s["extra"]["job"] == "app").cloned().collect()
    };

    env.run(&["app"]).assert_ok().assert_says("copied 1 snapshot");
    let (main, offsite) = (of_app("main"), of_app("offsite"));
    assert_eq!((main.len(), offsite.len()), (1, 1));
    assert_eq!(main[0]["root"], offsite[0]["root"], "the copy is the same snapshot");

    // Lose the offsite copy; the next run brings it back along with its own.
    for f in fs::read_dir(env.path("offsite/snapshots")).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    env.run(&["app"]).assert_ok();
    assert_eq!(of_app("offsite").len(), 2, "the missed snapshot is caught up");
    let check = env.engine(["--repo", "offsite", "check", "--read-data"]).assert();
    check.success();
}

/// A hook that waits (up to 10 s) until the other job's run reached the
/// same hook, then fails if it never did.
fn meet(job: &str, other: &str, phase: &str) -> String {
    format!(
        "[[jobs.{job}.hooks]]\nphase = \"{phase}\"\nrun = \"touch {job}.{phase}; i=0; while [ ! -e {other}.{phase} ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done; [ -e {other}.{phase} ]\"\n"
    )
}

#[test]
fn two_jobs_running_at_the_same_time_both_commit_into_one_repository() {
    let env = JobEnv::new();
    for (job, seed) in [("left", 1), ("right", 2)] {
        fs::create_dir(env.path(job)).unwrap();
        write_random(&env.path(&format!("{job}/data.bin")), seed, 50_000);
    }
    // Each run waits for the other while running, and again once both have
    // read their files, so the two captures and the two commits overlap.
    env.config(&format!(
        "[jobs.left]\n{}{}\n[jobs.left.files]\npaths = [\"left\"]\n\n[jobs.right]\n{}{}\n[jobs.right.files]\npaths = [\"right\"]\n",
        meet("left", "right", "before"),
        meet("left", "right", "after_files"),
        meet("right", "left", "before"),
        meet("right", "left", "after_files"),
    ))
    .init_repo();

    let left = env.start(env.cmd(["run", "left"]));
    let right = env.start(env.cmd(["run", "right"]));
    left.wait().assert_ok();
    right.wait().assert_ok();

    for job in ["left", "right"] {
        let snap = env.only_snapshot(job);
        let files = env.ls(snap["id"].as_str().unwrap());
        let mine = env.path(&format!("{job}/data.bin")).display().to_string();
        assert!(files.contains(&mine), "{job}'s snapshot should hold {mine}: {files:#?}");
    }
    env.engine(["--repo", "main", "check", "--read-data"]).assert().success();
}

#[test]
fn postgresql_name_all_dumps_the_globals_and_every_database() {
    let env = JobEnv::new();
    let mine = [PgDatabase::create("pgall"), PgDatabase::create("pgall")];
    for db in &mine {
        db.sql(&format!("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('row of {}');", db.name));
    }
    env.config(&format!(
        "[jobs.crm]\n[[jobs.crm.databases]]\nkind = \"postgresql\"\nname = \"all\"\n{}",
        Postgres::from_env().toml()
    ))
    .init_repo();

    let ran = {
        let _no_database_comes_or_goes = freeze_database_set();
        env.run(&["crm"])
    };
    ran.assert_ok();

    let snap = env.only_snapshot("crm");
    let dir = "/.holdfast/databases/postgresql-all";
    let files = env.ls(snap["id"].as_str().unwrap());
    // Other tests create databases meanwhile: look for ours, not for equality.
    // The roles' file is named so that no database's dump can take its place.
    for name in ["%globals", "postgres", &mine[0].name, &mine[1].name] {
        assert!(files.contains(&format!("{dir}/{name}.sql")), "{name}.sql should be in {dir}: {files:#?}");
    }
    for template in ["template0", "template1"] {
        assert!(!files.contains(&format!("{dir}/{template}.sql")), "templates are not dumped: {files:#?}");
    }
    let records = database_records(&snap);
    let globals = records.iter().find(|r| r["name"] == "globals").expect("a record for the globals");
    assert_eq!(globals["tool"], "pg_dumpall");
    let out = env.restore(snap["id"].as_str().unwrap(), "restored");
    for db in &mine {
        let dump = fs::read_to_string(out.join(format!("{}/{}.sql", &dir[1..], db.name))).unwrap();
        assert!(dump.contains(&format!("row of {}", db.name)), "{} should be dumped with its row:\n{dump}", db.name);
    }
    for r in &records {
        assert_dump_record(r, &out);
    }
}

#[test]
fn mariadb_name_all_dumps_every_database_but_the_system_schemas() {
    let env = JobEnv::new();
    let mine = [MyDatabase::create("myall"), MyDatabase::create("myall")];
    for db in &mine {
        db.sql(&format!("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('row of {}');", db.name));
    }
    let server = crate::jobs_util::MariaDb::from_env();
    env.config(&format!("[jobs.shop]\n[[jobs.shop.databases]]\nkind = \"mysql\"\nname = \"all\"\n{}", server.toml()))
        .init_repo();

    let ran = {
        let _no_database_comes_or_goes = freeze_database_set();
        env.run(&["shop"])
    };
    ran.assert_ok();

    let snap = env.only_snapshot("shop");
    let dir = "/.holdfast/databases/mysql-all";
    let files = env.ls(snap["id"].as_str().unwrap());
    for db in &mine {
        assert!(files.contains(&format!("{dir}/{}.sql", db.name)), "{} should be dumped: {files:#?}", db.name);
    }
    for system in ["information_schema", "performance_schema", "mysql", "sys"] {
        assert!(!files.contains(&format!("{dir}/{system}.sql")), "{system} should not be dumped: {files:#?}");
    }
    let out = env.restore(snap["id"].as_str().unwrap(), "restored");
    for db in &mine {
        let dump = fs::read_to_string(out.join(format!("{}/{}.sql", &dir[1..], db.name))).unwrap();
        assert!(dump.contains(&format!("row of {}", db.name)), "{} should be dumped with its row:\n{dump}", db.name);
    }
    for r in &database_records(&snap) {
        assert_dump_record(r, &out);
    }
}

#[test]
fn the_shipped_example_config_runs_its_demo_job() {
    let env = JobEnv::with_config_file("jobs.example.toml", "demo");
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::copy(project.join("jobs.example.toml"), env.config_path()).unwrap();
    fs::create_dir(env.path("hooks")).unwrap();
    for hook in fs::read_dir(project.join("hooks")).unwrap() {
        let hook = hook.unwrap();
        fs::copy(hook.path(), env.path("hooks").join(hook.file_name())).unwrap();
    }

    env.init_repo();
    env.run(&["demo"]).assert_ok().assert_says("job demo: snapshot");

    let snap = env.only_snapshot("demo");
    let files = env.ls(snap["id"].as_str().unwrap());
    let upload = env.path("demo/app/uploads/upload-00001.txt").display().to_string();
    for path in ["/.holdfast/databases/app/app.db.sqlite", &upload] {
        assert!(files.iter().any(|f| f == path), "the demo snapshot should hold {path}: {files:#?}");
    }
}
