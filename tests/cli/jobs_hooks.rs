//! Hooks: the phases run in their order, a hook's non-zero exit fails the
//! run, and `finally` runs whatever happened — after a failed hook, a failed
//! dump, a hook past its timeout, and SIGTERM. Hooks run in their `cwd`
//! with their `env`, and see the run's variables. A `hold` hook holds from
//! its ready line through the dumps and the file capture.

use std::fs;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::jobs_util::{
    JobEnv, PgDatabase, Postgres, distinct_sleep, processes_running, q, sqlite_exec, unique, wait_for,
};

const PHASES: [&str; 6] = ["before", "after_dumps", "after_files", "on_success", "on_failure", "finally"];

/// A job `app` (a SQLite database and a file set) with one hook in every
/// phase that appends the phase's name to `phases`; the hook of `failing`
/// exits 1 after that.
fn job_with_a_hook_in_every_phase(env: &JobEnv, failing: Option<&str>) {
    sqlite_exec(&env.path("app.db"), "CREATE TABLE t (x);\nINSERT INTO t VALUES (1);");
    fs::create_dir(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    let hooks: String = PHASES
        .iter()
        .map(|phase| {
            let fail = if failing == Some(*phase) { "; exit 1" } else { "" };
            format!("[[jobs.app.hooks]]\nphase = \"{phase}\"\nrun = \"echo {phase} >> phases{fail}\"\n\n")
        })
        .collect();
    env.config(&format!(
        "[jobs.app]\n{hooks}[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n\n[jobs.app.files]\npaths = [\"uploads\"]\n"
    ))
    .init_repo();
}

#[test]
fn hooks_run_in_phase_order_and_are_recorded_in_the_snapshot() {
    let env = JobEnv::new();
    job_with_a_hook_in_every_phase(&env, None);

    env.run(&["app"]).assert_ok();

    assert_eq!(env.lines("phases"), ["before", "after_dumps", "after_files", "on_success", "finally"]);
    // The snapshot records the hooks that ran before it was committed.
    let snap = env.only_snapshot("app");
    let hooks = snap["extra"]["hooks"].as_array().expect("extra.hooks");
    let phases: Vec<&str> = hooks.iter().map(|h| h["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["before", "after_dumps", "after_files"], "{hooks:#?}");
    for h in hooks {
        assert_eq!(h["exit_status"], 0, "{h:#}");
        assert_eq!(h["ok"], true, "{h:#}");
        assert!(h["command"].as_str().unwrap().contains(&format!("echo {} >> phases", h["phase"].as_str().unwrap())));
        assert!(h["duration_secs"].as_f64().unwrap() >= 0.0, "{h:#}");
    }
}

#[test]
fn a_failing_before_hook_fails_the_run_and_only_on_failure_and_finally_follow() {
    let env = JobEnv::new();
    job_with_a_hook_in_every_phase(&env, Some("before"));

    env.run(&["app"]).assert_failed().assert_says("before hook").assert_says("exited with status 1");

    assert_eq!(env.lines("phases"), ["before", "on_failure", "finally"]);
    assert_eq!(env.snapshots_json("app").len(), 0, "a failed run commits no snapshot");
}

#[test]
fn a_failing_after_files_hook_commits_no_snapshot() {
    let env = JobEnv::new();
    job_with_a_hook_in_every_phase(&env, Some("after_files"));

    env.run(&["app"]).assert_failed().assert_says("after_files hook");

    assert_eq!(env.lines("phases"), ["before", "after_dumps", "after_files", "on_failure", "finally"]);
    assert_eq!(env.snapshots_json("app").len(), 0, "a failed run commits no snapshot");
}

#[test]
fn a_failing_on_success_hook_fails_the_run_and_says_its_snapshot_was_committed() {
    let env = JobEnv::new();
    job_with_a_hook_in_every_phase(&env, Some("on_success"));

    let ran = env.run(&["app"]);

    ran.assert_failed().assert_says("on_success hook");
    assert_eq!(env.lines("phases"), ["before", "after_dumps", "after_files", "on_success", "on_failure", "finally"]);
    let snap = env.only_snapshot("app");
    let short = snap["short_id"].as_str().unwrap();
    ran.assert_says(&format!("snapshot {short} was committed"));
    assert!(!ran.stderr.contains("no snapshot committed"), "the summary contradicts the committed snapshot: {ran:?}");
}

/// `[[jobs.JOB.hooks]]` tables that append `phase` to `phases` in each of
/// `phases`.
fn marker_hooks(job: &str, phases: &[&str]) -> String {
    phases.iter().map(|p| format!("[[jobs.{job}.hooks]]\nphase = \"{p}\"\nrun = \"echo {p} >> phases\"\n\n")).collect()
}

#[test]
fn finally_runs_when_a_dump_fails_and_the_error_names_the_servers_message() {
    let env = JobEnv::new();
    let missing = unique("missing");
    env.config(&format!(
        "[jobs.crm]\n{}[[jobs.crm.databases]]\nkind = \"postgresql\"\nname = {}\n{}",
        marker_hooks("crm", &["before", "after_dumps", "on_failure", "finally"]),
        q(&missing),
        Postgres::from_env().toml()
    ))
    .init_repo();

    env.run(&["crm"]).assert_failed().assert_says(&missing).assert_says("does not exist");

    assert_eq!(env.lines("phases"), ["before", "on_failure", "finally"]);
    assert_eq!(env.snapshots_json("crm").len(), 0);
    assert_eq!(env.job_spool("crm"), ["lock"], "the run's spool directory should be removed");
}

#[test]
fn a_failing_dump_tool_fails_the_run_with_the_tools_own_message() {
    let env = JobEnv::new();
    let db = PgDatabase::create("tool");
    db.sql("CREATE TABLE t (x int);");
    env.config(&format!(
        "[jobs.crm]\n{}{}dump_args = [\"--table=no_such_table\"]\n",
        marker_hooks("crm", &["finally"]),
        db.entry("crm")
    ))
    .init_repo();

    env.run(&["crm"]).assert_failed().assert_says("pg_dump").assert_says("no matching tables were found");

    assert_eq!(env.lines("phases"), ["finally"]);
    assert_eq!(env.snapshots_json("crm").len(), 0);
}

#[test]
fn a_hook_past_its_timeout_is_killed_the_run_fails_and_finally_runs() {
    let env = JobEnv::new();
    let sleep = distinct_sleep();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = {}\ntimeout = \"1s\"\n\n{}[jobs.app.files]\npaths = [\"uploads\"]\n",
        q(&sleep),
        marker_hooks("app", &["on_failure", "finally"])
    ))
    .init_repo();

    let ran = env.run(&["app"]);

    ran.assert_failed().assert_says("timed out");
    assert!(ran.elapsed < Duration::from_secs(10), "the hook should be stopped after 1 s: {ran:?}");
    assert_eq!(env.lines("phases"), ["on_failure", "finally"]);
    assert_eq!(env.snapshots_json("app").len(), 0);
    wait_for("the timed-out hook's processes to end", Duration::from_secs(3), || processes_running(&sleep).is_empty());
}

/// A hook that starts a daemon in a session of its own, which keeps the
/// hook's output open: the run goes on when the hook itself has exited, and
/// the daemon is left alone (it is not holdfast's to end).
#[test]
fn a_hook_that_leaves_a_daemon_behind_does_not_hold_the_run() {
    let env = JobEnv::new();
    let sleep = distinct_sleep();
    let _daemon = crate::jobs_util::KillOnDrop(sleep.clone());
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = {}\ntimeout = \"20s\"\n\n{}[jobs.app.files]\npaths = [\"uploads\"]\n",
        q(format!("echo starting the daemon; setsid {sleep} &")),
        marker_hooks("app", &["on_success", "finally"])
    ))
    .init_repo();

    let ran = env.run(&["app"]);

    ran.assert_ok();
    assert!(ran.elapsed < Duration::from_secs(15), "the run waited for the daemon: {ran:?}");
    assert_eq!(env.lines("phases"), ["on_success", "finally"]);
    assert_eq!(env.snapshots_json("app").len(), 1);
    assert_eq!(processes_running(&sleep).len(), 1, "the daemon still runs");
}

#[test]
fn sigterm_stops_the_run_and_finally_still_runs() {
    let env = JobEnv::new();
    let sleep = distinct_sleep();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = {}\n\n{}[jobs.app.files]\npaths = [\"uploads\"]\n",
        q(format!("touch started; {sleep}")),
        marker_hooks("app", &["on_failure", "finally"])
    ))
    .init_repo();
    let run = env.start(env.cmd(["run", "app"]));
    wait_for("the before hook to start", Duration::from_secs(20), || env.path("started").exists());

    kill(Pid::from_raw(run.pid() as i32), Signal::SIGTERM).unwrap();
    let ran = run.wait();

    ran.assert_failed().assert_says("interrupted");
    assert!(ran.elapsed < Duration::from_secs(10), "SIGTERM should stop the run at once: {ran:?}");
    assert_eq!(env.lines("phases"), ["on_failure", "finally"]);
    assert_eq!(env.snapshots_json("app").len(), 0);
    assert_eq!(env.job_spool("app"), ["lock"], "the run's spool directory should be removed");
    wait_for("the interrupted hook's processes to end", Duration::from_secs(3), || {
        processes_running(&sleep).is_empty()
    });
}

#[test]
fn hooks_run_in_their_cwd_with_their_env_and_see_the_runs_variables() {
    let env = JobEnv::new();
    fs::create_dir_all(env.path("uploads")).unwrap();
    fs::create_dir(env.path("app-dir")).unwrap();
    env.config(
        r#"[jobs.app]
[[jobs.app.hooks]]
phase = "before"
run = ["/bin/sh", "-c", "echo \"$1|$2|$3|$4|$GREETING|$(pwd)\" > ../vars", "sh", "{{job}}", "{{run_id}}", "{{host}}", "{{time}}"]
cwd = "app-dir"
env = { GREETING = "hello {{job}}" }

[[jobs.app.hooks]]
phase = "on_success"
run = "echo {{snapshot}} > snapshot-id"

[jobs.app.files]
paths = ["uploads"]
"#,
    )
    .init_repo();

    env.run(&["app"]).assert_ok();

    let snap = env.only_snapshot("app");
    let vars = env.read("vars");
    let vars: Vec<&str> = vars.trim().split('|').collect();
    assert_eq!(vars.len(), 6, "{vars:?}");
    assert_eq!(vars[0], "app");
    assert_eq!(vars[1], snap["extra"]["run_id"].as_str().unwrap());
    assert_eq!(vars[2], snap["host"].as_str().unwrap());
    assert!(vars[3].ends_with('Z') && vars[3].starts_with("20"), "{{{{time}}}} should be RFC 3339: {vars:?}");
    assert_eq!(vars[4], "hello app", "env values are templates too");
    assert_eq!(vars[5], env.path("app-dir").display().to_string(), "the hook runs in its cwd");
    assert_eq!(env.read("snapshot-id").trim(), snap["id"].as_str().unwrap(), "{{{{snapshot}}}} is the committed id");
}

#[test]
fn on_failure_and_finally_hooks_see_the_error() {
    let env = JobEnv::new();
    fs::create_dir_all(env.path("uploads")).unwrap();
    env.config(
        r#"[jobs.app]
[[jobs.app.hooks]]
phase = "before"
run = "exit 7"

[[jobs.app.hooks]]
phase = "on_failure"
run = ["/bin/sh", "-c", "printf '%s' \"$1\" > on-failure-error", "sh", "{{error}}"]

[[jobs.app.hooks]]
phase = "finally"
run = ["/bin/sh", "-c", "printf '%s' \"$1\" > finally-error", "sh", "{{error}}"]

[jobs.app.files]
paths = ["uploads"]
"#,
    )
    .init_repo();

    env.run(&["app"]).assert_failed();

    for file in ["on-failure-error", "finally-error"] {
        let error = env.read(file);
        assert!(error.contains("before hook") && error.contains("exited with status 7"), "{file}: {error:?}");
    }
}

/// A job `app` (a SQLite database, a file set) with marker hooks in the
/// ordinary phases and the `hold` hook `hold` (TOML lines).
fn job_with_a_hold_hook(env: &JobEnv, hold: &str) {
    sqlite_exec(&env.path("app.db"), "CREATE TABLE t (x);\nINSERT INTO t VALUES (1);");
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(&format!(
        "[jobs.app]\n{}[[jobs.app.hooks]]\nphase = \"hold\"\n{hold}\n\n\
         [[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n\n[jobs.app.files]\npaths = [\"uploads\"]\n",
        marker_hooks("app", &["before", "after_dumps", "after_files", "on_success", "on_failure", "finally"]),
    ))
    .init_repo();
}

#[test]
fn a_hold_hook_holds_through_dumps_and_capture_and_is_released_before_after_files() {
    let env = JobEnv::new();
    // Holds until its stdin closes, as documented.
    job_with_a_hold_hook(
        &env,
        "run = \"echo hold >> phases; echo ready; cat > /dev/null; echo released >> phases\"\nready = \"ready\"",
    );

    env.run(&["app"]).assert_ok();

    assert_eq!(
        env.lines("phases"),
        ["before", "hold", "after_dumps", "released", "after_files", "on_success", "finally"]
    );
    let snap = env.only_snapshot("app");
    let hooks = snap["extra"]["hooks"].as_array().unwrap();
    let hold = hooks.iter().find(|h| h["phase"] == "hold").unwrap_or_else(|| panic!("a hold record: {hooks:#?}"));
    assert_eq!(hold["ok"], true, "{hold:#}");
}

#[test]
fn a_released_hold_hook_is_recorded_with_its_exit_status() {
    let env = JobEnv::new();
    job_with_a_hold_hook(&env, "run = \"echo ready; cat > /dev/null; exit 0\"\nready = \"ready\"");

    env.run(&["app"]).assert_ok();

    let snap = env.only_snapshot("app");
    let hooks = snap["extra"]["hooks"].as_array().unwrap();
    let hold = hooks.iter().find(|h| h["phase"] == "hold").unwrap_or_else(|| panic!("a hold record: {hooks:#?}"));
    assert_eq!(hold["exit_status"], 0, "the hold hook exited 0 when released: {hold:#}");
}

#[test]
fn a_hold_hook_that_stops_holding_fails_the_run() {
    let env = JobEnv::new();
    job_with_a_hold_hook(&env, "run = \"echo ready; exit 0\"\nready = \"ready\"");

    env.run(&["app"]).assert_failed().assert_says("hold hook").assert_says("exited early");

    // Found at the latest once the files are read, before anything after.
    let phases = env.lines("phases");
    assert!(phases.ends_with(&["on_failure".into(), "finally".into()]), "{phases:?}");
    assert!(!phases.contains(&"after_files".into()), "{phases:?}");
    assert_eq!(env.snapshots_json("app").len(), 0);
}

#[test]
fn a_hold_hook_that_never_gets_ready_times_out_and_is_killed() {
    let env = JobEnv::new();
    let sleep = distinct_sleep();
    job_with_a_hold_hook(&env, &format!("run = {}\nready = \"ready\"\ntimeout = \"1s\"", q(&sleep)));

    let ran = env.run(&["app"]);

    ran.assert_failed().assert_says("hold hook").assert_says("did not print \"ready\"");
    assert!(ran.elapsed < Duration::from_secs(10), "{ran:?}");
    assert_eq!(env.lines("phases"), ["before", "on_failure", "finally"]);
    wait_for("the hold hook's processes to end", Duration::from_secs(3), || processes_running(&sleep).is_empty());
}
