//! The signal matrix: SIGTERM, SIGINT and SIGKILL at each phase of a run —
//! in a hung `before` hook, while waiting for a `hold` hook that never says
//! it holds, in a dump stuck on a locked database, while files are read,
//! and during `finally`. After SIGTERM/SIGINT the run ends within 10 s with
//! 143/130 and its `finally` hook has run exactly once; after SIGKILL,
//! `recover` ends what the dead run left running and runs what it owed
//! (saying "may have run" for a hook that was running when it died). Either
//! way the spool is clean, the job's lock is free (the next run works) and
//! the repository is healthy.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::jobs_util::{JobEnv, KillOnDrop, distinct_sleep, processes_running, q, wait_for};
use crate::p34_util::spool_leftovers;
use crate::util::write_random;

/// Where in the run the signal arrives.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// A `before` hook that hangs.
    Before,
    /// Waiting for a `hold` hook's ready line that never comes.
    Hold,
    /// The SQLite dump, waiting on a database another process locked.
    Dump,
    /// Reading a large file into the repository.
    Capture,
    /// The `finally` hook is running.
    Finally,
}

/// A job whose `phase` stalls (the file `stall` makes it so); its `finally`
/// hook appends to `finally-count` (and, for [`Phase::Finally`], then
/// sleeps). Returns the distinctive sleep the stalling hook runs.
fn job_stalling_in(env: &JobEnv, phase: Phase) -> String {
    // `finally` stalls briefly (a stopped run still waits for it); the
    // others for as long as it takes.
    let sleep = match phase {
        Phase::Finally => distinct_sleep().replacen("sleep 30.", "sleep 3.", 1),
        _ => distinct_sleep(),
    };
    fs::create_dir(env.path("data")).unwrap();
    fs::write(env.path("data/small"), b"small").unwrap();
    if phase == Phase::Capture {
        write_random(&env.path("data/large"), 9, 400 << 20);
    }
    let db = env.path("app.sqlite");
    crate::jobs_util::sqlite_exec(&db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    let stall =
        |p: Phase| if p == phase { format!("if [ -e stall ]; then touch stalled; {sleep}; fi") } else { String::new() };
    let mut hooks = format!(
        "[[jobs.app.hooks]]\nphase = \"before\"\nrun = {}\n\n\
         [[jobs.app.hooks]]\nphase = \"after_dumps\"\nrun = \"touch dumped\"\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = {}\n\n",
        q(format!("touch before-ran; {}", stall(Phase::Before))),
        q(format!("echo finally >> finally-count; {}", stall(Phase::Finally)))
    );
    if phase == Phase::Hold {
        hooks.push_str(&format!(
            "[[jobs.app.hooks]]\nphase = \"hold\"\nrun = {}\nready = \"HELD\"\ntimeout = \"5m\"\n\n",
            q(format!("if [ -e stall ]; then touch stalled; {sleep}; fi; echo HELD; cat > /dev/null"))
        ));
    }
    env.config(&format!(
        "[jobs.app]\nfiles = {{ paths = [\"data\"] }}\n\
         databases = [{{ kind = \"sqlite\", path = {}, timeout = \"5m\" }}]\n\n{hooks}",
        q(&db)
    ))
    .init_repo();
    fs::write(env.path("stall"), b"").unwrap();
    sleep
}

/// A process holding an exclusive lock on the SQLite database until killed.
fn lock_database(env: &JobEnv) -> Child {
    let script = "import sqlite3, sys, time\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                  c.execute('BEGIN EXCLUSIVE')\n\
                  open(sys.argv[2], 'w').close()\n\
                  time.sleep(300)\n";
    let child = Command::new("python3")
        .args(["-c", script])
        .arg(env.path("app.sqlite"))
        .arg(env.path("db-locked"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start python3");
    wait_for("the database lock", Duration::from_secs(30), || env.path("db-locked").exists());
    child
}

/// Start a run and wait until it is inside `phase`.
fn run_until(env: &JobEnv, phase: Phase) -> crate::jobs_util::Started {
    let run = env.start(env.cmd(["run", "app"]));
    let reached = match phase {
        Phase::Before | Phase::Hold | Phase::Finally => "stalled",
        Phase::Dump => "before-ran",
        Phase::Capture => "dumped",
    };
    wait_for(&format!("the run to reach {phase:?}"), Duration::from_secs(60), || env.path(reached).exists());
    // Inside the phase, not at its door (holdfast records a child a moment
    // after starting it).
    std::thread::sleep(Duration::from_millis(300));
    run
}

/// After a stop, the job is whole again: nothing left in the spool, no
/// stalled hook still running, a healthy repository, a next run that works.
#[track_caller]
fn assert_clean_afterwards(env: &JobEnv, sleep: &str) {
    assert_eq!(spool_leftovers(env, "app"), Vec::<String>::new(), "the spool is clean");
    wait_for("the stalled hook to be gone", Duration::from_secs(10), || processes_running(sleep).is_empty());
    env.engine(["--repo", "main", "check"]).assert().success();
    let _ = fs::remove_file(env.path("stall"));
    env.run(&["app"]).assert_ok();
}

fn stop_gently(phase: Phase, signal: Signal) {
    let env = JobEnv::new();
    let sleep = job_stalling_in(&env, phase);
    let _orphans = KillOnDrop(sleep.clone());
    let locker = (phase == Phase::Dump).then(|| lock_database(&env));
    let run = run_until(&env, phase);
    let sent = Instant::now();
    kill(Pid::from_raw(run.pid() as i32), signal).unwrap();
    let ran = run.wait();
    assert!(sent.elapsed() < Duration::from_secs(10), "{phase:?}/{signal}: took {:?} to stop: {ran:?}", sent.elapsed());
    let expected = if signal == Signal::SIGTERM { 143 } else { 130 };
    if phase == Phase::Finally {
        // The snapshot was committed before the signal; finally finishes.
        let code = ran.status.code();
        assert!(code == Some(0) || code == Some(expected), "{phase:?}/{signal}: {ran:?}");
    } else {
        assert_eq!(ran.status.code(), Some(expected), "{phase:?}/{signal}: {ran:?}");
    }
    assert_eq!(env.lines("finally-count"), ["finally"], "{phase:?}/{signal}: finally runs exactly once: {ran:?}");
    if let Some(mut l) = locker {
        let _ = l.kill();
        let _ = l.wait();
    }
    assert_clean_afterwards(&env, &sleep);
}

fn stop_hard(phase: Phase) {
    let env = JobEnv::new();
    let sleep = job_stalling_in(&env, phase);
    let _orphans = KillOnDrop(sleep.clone());
    let locker = (phase == Phase::Dump).then(|| lock_database(&env));
    let run = run_until(&env, phase);
    kill(Pid::from_raw(run.pid() as i32), Signal::SIGKILL).unwrap();
    let ran = run.wait();
    assert_eq!(ran.status.code(), None, "{phase:?}: killed: {ran:?}");
    if let Some(mut l) = locker {
        let _ = l.kill();
        let _ = l.wait();
    }
    let _ = fs::remove_file(env.path("stall"));
    let recovered = env.run_cmd(&["recover", "app"]);
    recovered.assert_ok();
    let finally = env.lines("finally-count");
    if phase == Phase::Finally {
        // It was running when holdfast died: recovery says so, ends it and
        // runs it again.
        recovered.assert_says("may have run");
        assert_eq!(finally.len(), 2, "{recovered:?}");
    } else {
        assert_eq!(finally, ["finally"], "recovery runs the owed finally once: {recovered:?}");
    }
    if matches!(phase, Phase::Before | Phase::Hold | Phase::Finally) {
        recovered.assert_says("ended what it left running");
    }
    env.run_cmd(&["recover", "app"]).assert_ok().assert_says("nothing to recover");
    assert_clean_afterwards(&env, &sleep);
}

impl JobEnv {
    /// `holdfast --config holdfast.toml ARGS...` to its end.
    fn run_cmd(&self, args: &[&str]) -> crate::jobs_util::Ran {
        self.start(self.cmd(args)).wait()
    }
}

#[test]
fn sigterm_in_a_hung_before_hook() {
    stop_gently(Phase::Before, Signal::SIGTERM);
}

#[test]
fn sigint_while_waiting_for_a_hold_hook() {
    stop_gently(Phase::Hold, Signal::SIGINT);
}

#[test]
fn sigterm_in_a_dump_stuck_on_a_locked_database() {
    stop_gently(Phase::Dump, Signal::SIGTERM);
}

#[test]
fn sigint_while_files_are_read() {
    stop_gently(Phase::Capture, Signal::SIGINT);
}

#[test]
fn sigterm_during_finally() {
    stop_gently(Phase::Finally, Signal::SIGTERM);
}

#[test]
fn sigkill_in_a_hung_before_hook() {
    stop_hard(Phase::Before);
}

#[test]
fn sigkill_while_waiting_for_a_hold_hook() {
    stop_hard(Phase::Hold);
}

#[test]
fn sigkill_in_a_dump_stuck_on_a_locked_database() {
    stop_hard(Phase::Dump);
}

#[test]
fn sigkill_while_files_are_read() {
    stop_hard(Phase::Capture);
}

#[test]
fn sigkill_during_finally() {
    stop_hard(Phase::Finally);
}
