//! The spool and the job lock: a run's dumps are staged in a directory only
//! its user can read, which is gone after the run whatever its outcome; a
//! spool others can read is refused; a job runs once at a time; the
//! `finally` hooks of a run killed with SIGKILL run later, once.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::jobs_util::{JobEnv, KillOnDrop, distinct_sleep, q, sqlite_exec, wait_for};

/// A job `app` with a SQLite database, and an `after_dumps` hook that
/// writes the modes of the spool's directories and of the dump into `modes`
/// (then `exit_status` is its exit status).
fn job_that_inspects_its_spool(env: &JobEnv, exit_status: i32) {
    let inspect = "echo {{spool}} > run-dir; \
                   stat -c %a spool spool/app {{spool}} {{spool}}/dumps {{spool}}/private {{spool}}/dumps/app/app.db.sqlite > modes";
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"after_dumps\"\nrun = \"{inspect}; exit {exit_status}\"\n\n\
         [[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n"
    ));
}

#[test]
fn a_runs_spool_directory_is_private_and_removed_after_success_and_after_failure() {
    let env = JobEnv::new();
    sqlite_exec(&env.path("app.db"), "CREATE TABLE t (x);\nINSERT INTO t VALUES ('plaintext');");
    job_that_inspects_its_spool(&env, 0);
    env.init_repo();

    env.run(&["app"]).assert_ok();

    // spool, spool/app, the run directory, dumps/, private/ and the dump.
    assert_eq!(env.lines("modes"), ["700", "700", "700", "700", "700", "600"]);
    let run_dir = env.read("run-dir").trim().to_string();
    assert!(run_dir.starts_with(&env.spool().join("app/").display().to_string()), "{{{{spool}}}} is {run_dir}");
    assert_eq!(env.job_spool("app"), ["lock"], "the run directory should be removed after a success");

    job_that_inspects_its_spool(&env, 1);
    env.run(&["app"]).assert_failed();

    assert_eq!(env.lines("modes"), ["700", "700", "700", "700", "700", "600"]);
    assert_eq!(env.job_spool("app"), ["lock"], "the run directory should be removed after a failure");
    assert_eq!(env.snapshots_json("app").len(), 1, "only the first run commits");
}

#[test]
fn a_spool_that_others_can_read_is_refused() {
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = \"touch before-ran\"\n\n[jobs.app.files]\npaths = [\"uploads\"]\n",
    )
    .init_repo();
    fs::create_dir(env.spool()).unwrap();
    fs::set_permissions(env.spool(), fs::Permissions::from_mode(0o755)).unwrap();

    env.run(&["app"]).assert_failed().assert_says(&env.spool().display().to_string()).assert_says("mode 755");

    assert!(!env.path("before-ran").exists(), "nothing should run with a readable spool");
    assert_eq!(env.snapshots_json("app").len(), 0);
}

#[test]
fn a_second_run_of_a_running_job_is_refused_at_once_naming_the_first() {
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = \"touch started; sleep 3\"\n\n[jobs.app.files]\npaths = [\"uploads\"]\n",
    )
    .init_repo();
    let first = env.start(env.cmd(["run", "app"]));
    wait_for("the first run's before hook", Duration::from_secs(20), || env.path("started").exists());
    std::thread::sleep(Duration::from_millis(500));

    let second = env.run(&["app"]);

    second.assert_failed().assert_says("already running").assert_says(&format!("pid {}", first.pid()));
    assert!(second.elapsed < Duration::from_secs(2), "the second run should not wait: {second:?}");
    first.wait().assert_ok();
    assert_eq!(env.snapshots_json("app").len(), 1);
}

/// A job `app` whose `before` hook sleeps while the file `slow` exists and
/// whose `finally` hook appends `finally RUN_ID` to `phases`; a run of it
/// killed with SIGKILL in that sleep. Returns the killed run's id and the
/// guard that ends the orphaned sleep.
fn a_run_killed_in_its_before_hook(env: &JobEnv) -> (String, KillOnDrop) {
    let sleep = distinct_sleep();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = {}\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"echo finally {{{{run_id}}}} >> phases\"\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n",
        q(format!("touch started; if [ -e slow ]; then {sleep}; fi"))
    ))
    .init_repo();
    fs::write(env.path("slow"), "").unwrap();
    let run = env.start(env.cmd(["run", "app"]));
    let orphan = KillOnDrop(sleep);
    wait_for("the before hook", Duration::from_secs(20), || env.path("started").exists());
    kill(Pid::from_raw(run.pid() as i32), Signal::SIGKILL).unwrap();
    run.wait();
    fs::remove_file(env.path("slow")).unwrap();
    let run_dirs: Vec<String> =
        env.job_spool("app").into_iter().filter(|n| n != "lock" && !n.starts_with("journal")).collect();
    assert_eq!(run_dirs.len(), 1, "the killed run's directory: {run_dirs:?}");
    assert!(env.lines("phases").is_empty(), "no finally hook has run yet");
    (run_dirs[0].clone(), orphan)
}

#[test]
fn the_next_run_after_a_killed_run_runs_its_owed_finally_hooks_and_clears_its_spool() {
    let env = JobEnv::new();
    let (killed, _orphan) = a_run_killed_in_its_before_hook(&env);

    let ran = env.run(&["app"]);

    ran.assert_ok().assert_says(&killed);
    let phases = env.lines("phases");
    assert_eq!(phases.len(), 2, "{phases:?}");
    assert_eq!(phases[0], format!("finally {killed}"), "first the killed run's finally, with its variables");
    assert_ne!(phases[1], phases[0], "then the new run's own");
    assert_eq!(env.job_spool("app"), ["lock"]);
}

#[test]
fn recover_runs_the_finally_hooks_a_killed_run_owes_once() {
    let env = JobEnv::new();
    let (killed, _orphan) = a_run_killed_in_its_before_hook(&env);

    let out = env.engine(["recover", "app"]).assert().success();

    let said = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(said.contains(&killed) && said.contains("ran 1 owed finally hook(s), 0 failed"), "{said}");
    assert_eq!(env.lines("phases"), [format!("finally {killed}")]);
    assert_eq!(env.job_spool("app"), ["lock"]);
    let out = env.engine(["recover", "app"]).assert().success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("nothing to recover"));
    assert_eq!(env.lines("phases").len(), 1, "owed hooks run once");
}
