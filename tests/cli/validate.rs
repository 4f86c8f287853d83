//! `validate` and `run --dry-run`: every problem a run would meet is found
//! beforehand and named with what to change, all of them in one go, and
//! checking changes nothing — no spool directory, no repository file, no
//! hook run, no notification. `run --dry-run` also prints the plan.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::jobs_util::{JobEnv, MariaDb, PgDatabase, PgRole, Postgres, Ran, q, sqlite_exec, unique};
use crate::util::{assert_same_tree, parse_json, tree_fingerprint};
use holdfast::units::human;

/// systemd's PATH for services, which `validate` looks hook programs up on.
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `holdfast --config ... ARGS...` to its end.
fn holdfast(env: &JobEnv, args: &[&str]) -> Ran {
    env.start(env.cmd(args)).wait()
}

/// The stdout of a `--json` run, parsed.
fn json_of(ran: &Ran) -> Value {
    parse_json(&ran.stdout)
}

/// One finding of `validate --json`.
#[derive(Debug)]
struct Finding {
    check: String,
    ok: bool,
    message: String,
}

fn findings(v: &Value) -> Vec<Finding> {
    v["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("--json should print {{findings: [...]}}: {v:#}"))
        .iter()
        .map(|f| Finding {
            check: f["check"].as_str().expect("finding check").to_string(),
            ok: f["ok"].as_bool().expect("finding ok"),
            message: f["message"].as_str().expect("finding message").to_string(),
        })
        .collect()
}

/// The problem of check `check` whose message contains `text`.
#[track_caller]
fn problem<'a>(all: &'a [Finding], check: &str, text: &str) -> &'a Finding {
    all.iter()
        .find(|f| !f.ok && f.check == check && f.message.contains(text))
        .unwrap_or_else(|| panic!("there should be a {check} PROBLEM saying {text:?}: {all:#?}"))
}

/// A job `app` with the SQLite database `app.db`, the file set `uploads`,
/// and `extra` (hooks, notify targets) appended.
fn sqlite_and_files_job(env: &JobEnv, extra: &str) {
    sqlite_exec(&env.path("app.db"), "CREATE TABLE t (x);\nINSERT INTO t VALUES ('row one'), ('row two');");
    fs::create_dir_all(env.path("uploads")).expect("create uploads");
    fs::write(env.path("uploads/a.txt"), "upload a").expect("write an upload");
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n\n{extra}"
    ));
}

#[test]
fn a_valid_job_validates_clean_and_its_dry_run_lists_the_steps_in_run_order() {
    let env = JobEnv::new();
    sqlite_and_files_job(&env, "[[jobs.app.hooks]]\nphase = \"before\"\nrun = [\"true\"]\n");
    env.init_repo();

    let ran = holdfast(&env, &["validate", "app"]);
    ran.assert_ok();
    assert!(!ran.stdout.contains("PROBLEM"), "a valid job should have no PROBLEM: {ran:?}");
    assert!(ran.stdout.contains("valid: no problems found"), "{ran:?}");

    let ran = holdfast(&env, &["run", "--dry-run", "app", "--json"]);
    ran.assert_ok();
    let v = json_of(&ran);
    assert!(findings(&v).iter().all(|f| f.ok), "{v:#}");
    let plans = v["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 1, "{v:#}");
    assert_eq!(plans[0]["job"], "app");
    let steps = plans[0]["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().expect("step")).collect();
    assert_eq!(names, ["prepare_spool", "hooks", "dump", "capture", "commit", "clean_spool"], "{v:#}");
    assert_eq!(steps[1]["phase"], "before", "{v:#}");
    assert_eq!(steps[5]["when"], "always", "the spool is cleaned whatever happened: {v:#}");

    let size = fs::metadata(env.path("app.db")).expect("stat app.db").len();
    let dump_details: Vec<&str> =
        steps[2]["details"].as_array().expect("dump details").iter().map(|d| d.as_str().unwrap()).collect();
    let now = format!("{}: {} now", env.path("app.db").display(), human(size));
    assert!(dump_details.iter().any(|d| d.contains(&now)), "the dump step should say {now:?}: {dump_details:#?}");
}

/// Paths, sizes and mtimes (and contents) of every entry under `root`.
fn listing(root: &Path) -> Vec<crate::util::Node> {
    tree_fingerprint(root)
}

#[test]
fn validate_and_dry_run_change_nothing_run_no_hook_and_send_no_notification() {
    let env = JobEnv::new();
    let marker = env.path("hook-ran");
    let notified = env.path("notified");
    sqlite_and_files_job(
        &env,
        &format!(
            "[[jobs.app.hooks]]\nphase = \"before\"\nrun = [\"/bin/sh\", \"-c\", {}]\n\n\
             [[jobs.app.notify]]\nevents = [\"start\", \"success\", \"failure\"]\n\
             command = [\"/bin/sh\", \"-c\", {}, \"notify\", \"{{{{event}}}}\"]\n",
            q(format!("touch {}", marker.display())),
            q(format!("echo \"$1\" >> {}", notified.display())),
        ),
    );
    env.init_repo();
    let before = listing(&env.repo());
    assert!(!env.spool().exists(), "the spool should not exist before");

    holdfast(&env, &["validate", "app"]).assert_ok();
    holdfast(&env, &["validate", "app", "--json"]).assert_ok();
    holdfast(&env, &["run", "--dry-run", "app"]).assert_ok();
    holdfast(&env, &["run", "--dry-run", "app", "--json"]).assert_ok();

    assert_same_tree(&before, &listing(&env.repo()));
    assert!(!env.spool().exists(), "validate and run --dry-run should create no spool directory");
    assert!(!marker.exists(), "the before hook should not run");
    assert!(!notified.exists(), "no notification should be sent: {:?}", env.read("notified"));

    // The hook and the notifier do work: a real run leaves both.
    env.run(&["app"]).assert_ok();
    assert!(marker.exists(), "a real run should run the hook");
    assert_eq!(env.lines("notified"), ["start", "success"]);
}

#[test]
fn a_typo_in_a_key_fails_with_file_line_column_and_the_key_meant() {
    let env = JobEnv::new();
    fs::create_dir_all(env.path("uploads")).expect("create uploads");
    env.config("[jobs.app]\nretry = 2\n[jobs.app.files]\npaths = [\"uploads\"]\n");
    let text = fs::read_to_string(env.config_path()).expect("read the config");
    let line = text.lines().position(|l| l.starts_with("retry = 2")).expect("the typo's line") + 1;

    for args in [&["validate"][..], &["run", "--dry-run", "app"][..]] {
        let ran = holdfast(&env, args);
        ran.assert_failed();
        ran.assert_says(&format!("{}:{line}:1", env.config_path().display()));
        ran.assert_says("`retries` expected, found `retry`");
    }
}

#[test]
fn a_missing_hook_program_and_a_missing_cwd_are_both_problems_of_one_run() {
    let env = JobEnv::new();
    let missing_dir = env.path("no-such-dir");
    fs::create_dir_all(env.path("uploads")).expect("create uploads");
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = [\"no-such-program-xyz\"]\n\n\
         [[jobs.app.hooks]]\nphase = \"after_files\"\nrun = [\"true\"]\ncwd = {}\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n",
        q(&missing_dir)
    ));
    env.init_repo();

    let ran = holdfast(&env, &["validate", "app"]);
    ran.assert_failed();
    let problems: Vec<&str> = ran.stdout.lines().filter(|l| l.starts_with("PROBLEM")).collect();
    assert_eq!(problems.len(), 2, "exactly the two problems should be listed: {ran:?}");
    assert!(
        problems.iter().any(|l| l.contains("\"no-such-program-xyz\"") && l.contains(SYSTEMD_PATH)),
        "a PROBLEM should name the program and systemd's PATH: {ran:?}"
    );
    assert!(
        problems.iter().any(|l| l.contains(&format!("cwd {} does not exist", missing_dir.display()))),
        "a PROBLEM should name the missing cwd: {ran:?}"
    );
    ran.assert_says("2 problem(s) found");

    let ran = holdfast(&env, &["run", "--dry-run", "app", "--json"]);
    ran.assert_failed();
    let all = findings(&json_of(&ran));
    problem(&all, "hooks", "no-such-program-xyz");
    problem(&all, "hooks", &missing_dir.display().to_string());
}

#[test]
fn a_wrong_passphrase_is_a_problem_of_the_repositories_check() {
    let env = JobEnv::new();
    fs::create_dir_all(env.path("uploads")).expect("create uploads");
    env.config("[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\n");
    env.init_repo();
    fs::write(env.path("passphrase"), "not the passphrase\n").expect("write another passphrase");

    let ran = holdfast(&env, &["validate", "app", "--json"]);
    ran.assert_failed();
    problem(&findings(&json_of(&ran)), "repositories", "wrong passphrase");

    let ran = holdfast(&env, &["validate", "app"]);
    ran.assert_failed();
    assert!(
        ran.stdout
            .lines()
            .any(|l| l.starts_with("PROBLEM") && l.contains("[repositories]") && l.contains("wrong passphrase")),
        "{ran:?}"
    );
}

/// A `[[jobs.app.databases]]` PostgreSQL entry for `db` as `user`.
fn pg_entry(server: &Postgres, name: &str, user: &str) -> String {
    format!(
        "[[jobs.app.databases]]\nkind = \"postgresql\"\nname = {}\nhost = {}\nport = {}\nuser = {}\n",
        q(name),
        q(&server.host),
        server.port,
        q(user)
    )
}

#[test]
fn a_role_without_select_on_a_table_is_a_problem_naming_the_role_and_the_table() {
    // Declared before the database: dropped after it.
    let role = PgRole::create("val_role", "unused");
    let db = PgDatabase::create("val");
    db.sql(&format!(
        "CREATE TABLE readable (x int);\nCREATE TABLE secret (x int);\nGRANT SELECT ON readable TO {};",
        role.name
    ));
    let env = JobEnv::new();
    env.config(&format!("[jobs.app]\n{}", pg_entry(&db.server, &db.name, &role.name)));
    env.init_repo();

    let ran = holdfast(&env, &["validate", "app", "--json"]);
    ran.assert_failed();
    let all = findings(&json_of(&ran));
    let p = problem(&all, "databases", "public.secret");
    assert!(p.message.contains(&role.name), "the problem should name the role: {p:#?}");
    assert!(p.message.contains(&db.name), "the problem should name the database: {p:#?}");
    assert!(
        !all.iter().any(|f| !f.ok && f.message.contains("public.readable")),
        "the readable table is no problem: {all:#?}"
    );
}

#[test]
fn a_pg_dump_older_than_the_server_is_a_problem() {
    let db = PgDatabase::create("val");
    let server_major: u32 =
        db.sql("SELECT current_setting('server_version_num')::int / 10000;").trim().parse().unwrap();
    let env = JobEnv::new();
    let bin = env.path("bin");
    fs::create_dir_all(&bin).expect("create bin");
    let wrapper = bin.join("pg_dump");
    fs::write(
        &wrapper,
        "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then echo 'pg_dump (PostgreSQL) 9.6.24'; exit 0; fi\nexec /usr/bin/pg_dump \"$@\"\n",
    )
    .expect("write the pg_dump wrapper");
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod the wrapper");
    env.config(&format!("[jobs.app]\n{}", db.entry("app")));
    env.init_repo();

    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    for args in [&["validate", "app", "--json"][..], &["run", "--dry-run", "app", "--json"][..]] {
        let mut cmd = env.cmd(args);
        cmd.env("PATH", &path);
        let ran = env.start(cmd).wait();
        ran.assert_failed();
        let all = findings(&json_of(&ran));
        let p = problem(&all, "databases", &format!("pg_dump is version 9 but the server is {server_major}"));
        assert!(p.message.contains("at least the server's major version"), "{p:#?}");
    }
}

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("start mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[test]
fn a_spool_too_small_for_the_dumps_is_a_problem_with_free_and_needed_space() {
    let env = JobEnv::new();
    sqlite_exec(
        &env.path("app.db"),
        "CREATE TABLE t (x);\n\
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000) \
         INSERT INTO t SELECT randomblob(1000) FROM c;",
    );
    let size = fs::metadata(env.path("app.db")).expect("stat app.db").len();
    assert!(size >= 2_000_000, "the database should be about 2 MB, is {size}");
    env.config("[jobs.app]\n[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n");
    env.init_repo();
    // What validate asks for: the databases, 50% more, and 64 MiB.
    let needed = human(size + size / 2 + (64 << 20));

    // Dropped before `env`: unmounted before the directory is removed.
    let mounted = Tmpfs::mount(&env.spool(), "size=1m,mode=700");
    let ran = holdfast(&env, &["validate", "app", "--json"]);
    let all = findings(&json_of(&ran));
    match &mounted {
        Ok(_) => {
            ran.assert_failed();
            let p = problem(&all, "spool", "free");
            assert!(p.message.contains("1.0 MiB free"), "the problem should say how much is free: {p:#?}");
            assert!(p.message.contains(&format!("need about {needed}")), "it should say {needed} is needed: {p:#?}");
        }
        Err(e) => {
            eprintln!("note: cannot mount a tmpfs ({e}); checking the spool's ok line instead");
            let ok = all
                .iter()
                .find(|f| f.ok && f.check == "spool")
                .unwrap_or_else(|| panic!("there should be an ok spool line: {all:#?}"));
            assert!(ok.message.contains(" free, about ") && ok.message.contains(&needed), "{ok:#?}");
        }
    }
    drop(mounted);
}

#[test]
fn a_missing_file_set_path_and_a_database_missing_on_the_server_are_problems() {
    let env = JobEnv::new();
    let pg = Postgres::from_env();
    let my = MariaDb::from_env();
    // Never created: these names are this test's alone.
    let (pg_name, my_name) = (unique("val_nodb"), unique("val_nodb"));
    env.config(&format!(
        "[jobs.app]\n{}\n[[jobs.app.databases]]\nkind = \"mysql\"\nname = {}\n{}\n\
         [jobs.app.files]\npaths = [\"no-such-uploads\"]\n",
        pg_entry(&pg, &pg_name, &pg.user),
        q(&my_name),
        my.toml()
    ));
    env.init_repo();

    let ran = holdfast(&env, &["validate", "app", "--json"]);
    ran.assert_failed();
    let all = findings(&json_of(&ran));
    problem(&all, "files", &format!("file set path {} does not exist", env.path("no-such-uploads").display()));
    problem(&all, "databases", &format!("database {pg_name:?} does not exist on the server"));
    problem(&all, "databases", &format!("database {my_name:?} does not exist on the server"));
}
