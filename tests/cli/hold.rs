//! Holding an application still for the length of a run, and what a run
//! owes when it is cut short:
//!
//! - a `hold` hook (here a `mariadb` client holding `FLUSH TABLES WITH READ
//!   LOCK`) and the native `lock = "global-read"` keep writers out from
//!   before the dumps until the files are read, and let go after;
//! - a `hold` hook that never gets ready, or stops holding, fails the run;
//! - a run killed with SIGKILL leaves its journal, and `recover` (or the
//!   next run) runs its `finally` hooks once and clears its spool;
//! - `run_as` runs the dump tool as another OS user while the dump itself
//!   stays private to holdfast.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::jobs_util::{
    JobEnv, KillOnDrop, MyDatabase, MyUser, PgDatabase, distinct_sleep, processes, processes_running, q, shq, wait_for,
};
use crate::p34_util::{SERVER_READ_LOCK, holdfast, spool_leftovers};

/// How a job keeps the MariaDB server from being written.
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// A `hold` hook: a `mariadb` client that takes the lock, prints
    /// `LOCKED`, and keeps its session (so the lock) until its stdin closes.
    Hook,
    /// The database entry's `lock = "global-read"`.
    Native,
}

/// A job `shop` that dumps `db`, reads the file set `uploads`, and holds the
/// server as `hold` says. Its `after_dumps` hook tries to insert a row
/// (waiting at most 1 s for a lock) and writes the client's exit status to
/// `insert.status` and its messages to `insert.err`; its `after_dumps` hook
/// then exits with `after_dumps_exit`. `finally` appends to `phases`.
fn job_that_writes_while_held(env: &JobEnv, db: &MyDatabase, hold: Hold, after_dumps_exit: i32) {
    fs::create_dir(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/page.html"), "<p>hello</p>\n").unwrap();
    fs::write(
        env.path("insert.sql"),
        "SET SESSION lock_wait_timeout = 1;\nINSERT INTO t VALUES ('written while held');\n",
    )
    .unwrap();
    let (host, port) = (shq(&db.server.host), &db.server.port);
    let insert = format!(
        "mariadb --protocol=TCP -h {host} -P {port} -u root {} < insert.sql 2> insert.err; echo $? > insert.status; exit {after_dumps_exit}",
        db.name
    );
    let (hook, lock) = match hold {
        Hold::Hook => {
            let client = format!(
                "(echo 'FLUSH TABLES WITH READ LOCK;'; echo 'SELECT \"LOCKED\";'; cat) | mariadb --protocol=TCP -h {host} -P {port} -u root -N -B -n"
            );
            (
                format!(
                    "[[jobs.shop.hooks]]\nphase = \"hold\"\nrun = {}\nready = \"LOCKED\"\ntimeout = \"30s\"\n\n",
                    q(client)
                ),
                "",
            )
        }
        Hold::Native => (String::new(), "lock = \"global-read\"\n"),
    };
    env.config(&format!(
        "[jobs.shop]\n{hook}\
         [[jobs.shop.hooks]]\nphase = \"after_dumps\"\nrun = {}\n\n\
         [[jobs.shop.hooks]]\nphase = \"finally\"\nrun = \"echo finally >> phases\"\n\n\
         {}{lock}\n[jobs.shop.files]\npaths = [\"uploads\"]\n",
        q(insert),
        db.entry("shop"),
    ))
    .init_repo();
}

/// The dump of `db` in the job's newest snapshot (`restore --dump-to`).
fn dump_in_snapshot(env: &JobEnv, job: &str, db: &str) -> String {
    let file = env.path(&format!("{db}.dump.sql"));
    holdfast(env, &["restore", job, "--database", db, "--dump-to", file.to_str().unwrap()]).assert_ok();
    fs::read_to_string(file).unwrap()
}

/// A write from a second connection waits while the job holds the server,
/// and goes through once the run is over.
fn writers_wait_while_the_server_is_held(hold: Hold) {
    let _one = SERVER_READ_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let env = JobEnv::new();
    let db = MyDatabase::create("hold");
    db.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('before the run');");
    job_that_writes_while_held(&env, &db, hold, 0);

    env.run(&["shop"]).assert_ok();

    let err = env.read("insert.err");
    assert_eq!(env.read("insert.status").trim(), "1", "the write should have been blocked ({hold:?}): {err}");
    assert!(err.contains("Lock wait timeout"), "the write should have waited for the lock ({hold:?}): {err}");
    // Released: the same write from the test goes through at once.
    db.sql("SET SESSION lock_wait_timeout = 5;\nINSERT INTO t VALUES ('written after the run');");
    assert_eq!(
        db.sql("SELECT v FROM t ORDER BY v;").lines().collect::<Vec<_>>(),
        ["before the run", "written after the run"]
    );
    let dump = dump_in_snapshot(&env, "shop", &db.name);
    assert!(dump.contains("before the run") && !dump.contains("written"), "{dump}");
    assert_eq!(env.lines("phases"), ["finally"]);
}

#[test]
fn a_hold_hook_holding_a_read_lock_blocks_writers_until_the_files_are_read() {
    writers_wait_while_the_server_is_held(Hold::Hook);
}

#[test]
fn a_native_global_read_lock_blocks_writers_until_the_files_are_read() {
    writers_wait_while_the_server_is_held(Hold::Native);
}

/// A failed run lets go of what it held too.
fn the_server_is_let_go_when_the_run_fails(hold: Hold) {
    let _one = SERVER_READ_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let env = JobEnv::new();
    let db = MyDatabase::create("holdfail");
    db.sql("CREATE TABLE t (v TEXT);");
    job_that_writes_while_held(&env, &db, hold, 1);

    env.run(&["shop"]).assert_failed().assert_says("after_dumps hook");

    assert_eq!(env.read("insert.status").trim(), "1", "{}", env.read("insert.err"));
    assert_eq!(env.lines("phases"), ["finally"]);
    db.sql("SET SESSION lock_wait_timeout = 5;\nINSERT INTO t VALUES ('written after the run');");
    assert_eq!(env.snapshots_json("shop").len(), 0);
}

#[test]
fn a_hold_hook_is_let_go_when_the_run_fails() {
    the_server_is_let_go_when_the_run_fails(Hold::Hook);
}

#[test]
fn a_native_global_read_lock_is_let_go_when_the_run_fails() {
    the_server_is_let_go_when_the_run_fails(Hold::Native);
}

#[test]
fn a_native_global_read_lock_lost_during_the_run_fails_the_run() {
    let _one = SERVER_READ_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let env = JobEnv::new();
    let db = MyDatabase::create("lost");
    db.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('before the run');");
    // A user of its own, so that its one session is holdfast's lock.
    let user = MyUser::create("locker", "locker-password", &db.name);
    db.server.sql(None, &format!("GRANT RELOAD ON *.* TO '{}'@'%';", user.name));
    fs::write(env.path("db.pass"), "locker-password\n").unwrap();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(&format!(
        "[jobs.shop]\n[[jobs.shop.hooks]]\nphase = \"after_dumps\"\n\
         run = \"touch waiting; while [ ! -e go ]; do sleep 0.05; done\"\ntimeout = \"60s\"\n\n\
         [[jobs.shop.databases]]\nkind = \"mysql\"\nname = {}\nhost = {}\nport = {}\nuser = {}\npassword_file = \"db.pass\"\n\
         lock = \"global-read\"\n\n[jobs.shop.files]\npaths = [\"uploads\"]\n",
        q(&db.name),
        q(&db.server.host),
        db.server.port,
        q(&user.name),
    ))
    .init_repo();
    let run = env.start(env.cmd(["run", "shop"]));
    wait_for("the after_dumps hook", Duration::from_secs(30), || env.path("waiting").exists());

    // The server ends holdfast's locking session (an administrator's KILL,
    // a restart, a network timeout): the lock is gone.
    let sessions =
        db.server.sql(None, &format!("SELECT id FROM information_schema.processlist WHERE user = '{}';", user.name));
    let sessions: Vec<&str> = sessions.lines().collect();
    assert_eq!(sessions.len(), 1, "holdfast should hold one session, its lock's: {sessions:?}");
    db.server.sql(None, &format!("KILL {};", sessions[0]));
    db.sql("SET SESSION lock_wait_timeout = 5;\nINSERT INTO t VALUES ('written while the lock was gone');");
    fs::write(env.path("go"), "").unwrap();

    let ran = run.wait();

    ran.assert_failed();
    assert_eq!(env.snapshots_json("shop").len(), 0, "a snapshot taken without the lock is not consistent");
}

/// A job `app` with a file set, a `hold` hook (TOML lines `hold`) and
/// `finally` appending to `phases`.
fn job_with_hold(env: &JobEnv, hold: &str) {
    fs::create_dir(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"hold\"\n{hold}\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"echo finally >> phases\"\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n"
    ))
    .init_repo();
}

#[test]
fn a_hold_hook_that_never_prints_its_ready_line_fails_the_run_after_its_timeout_and_is_killed() {
    let env = JobEnv::new();
    // Two sleeps: the hook's own process and one it started in the background.
    let (background, foreground) = (distinct_sleep(), distinct_sleep());
    let _orphans = (KillOnDrop(background.clone()), KillOnDrop(foreground.clone()));
    job_with_hold(
        &env,
        &format!("run = {}\nready = \"LOCKED\"\ntimeout = \"2s\"", q(format!("{background} & {foreground}; wait"))),
    );

    let ran = env.run(&["app"]);

    ran.assert_failed().assert_says("hold hook").assert_says("did not print \"LOCKED\"");
    assert!(ran.elapsed >= Duration::from_secs(2), "the hook had 2 s to get ready: {ran:?}");
    assert!(ran.elapsed < Duration::from_secs(8), "the run should fail soon after the timeout: {ran:?}");
    assert_eq!(env.lines("phases"), ["finally"]);
    assert_eq!(env.snapshots_json("app").len(), 0, "no snapshot is committed");
    assert_eq!(spool_leftovers(&env, "app"), Vec::<String>::new());
    wait_for("the hold hook and what it started to end", Duration::from_secs(3), || {
        processes_running(&background).is_empty() && processes_running(&foreground).is_empty()
    });
}

#[test]
fn a_hold_hook_that_exits_right_after_its_ready_line_fails_the_run() {
    let env = JobEnv::new();
    job_with_hold(&env, "run = \"echo LOCKED; exit 0\"\nready = \"LOCKED\"");

    env.run(&["app"]).assert_failed().assert_says("hold hook").assert_says("exited early");

    assert_eq!(env.lines("phases"), ["finally"]);
    assert_eq!(env.snapshots_json("app").len(), 0, "no snapshot is committed");
    assert_eq!(spool_leftovers(&env, "app"), Vec::<String>::new());
}

/// A job `app` whose `before` hook touches `before-ran`, whose `hold` hook
/// holds until released, and whose `after_dumps` hook touches `slow-started`
/// and, while the file `slow` exists, sleeps; `finally` appends
/// `finally RUN_ID` to `finally-count`. A run of it is killed with SIGKILL in
/// that sleep. Returns the killed run's journal and the guard that ends
/// the orphaned sleep.
fn a_run_killed_between_before_and_finally(env: &JobEnv) -> (Value, KillOnDrop) {
    let sleep = distinct_sleep();
    fs::create_dir(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    env.config(&format!(
        "[jobs.app]\n\
         [[jobs.app.hooks]]\nphase = \"before\"\nrun = \"touch before-ran\"\n\n\
         [[jobs.app.hooks]]\nphase = \"hold\"\nrun = \"echo LOCKED; cat > /dev/null\"\nready = \"LOCKED\"\n\n\
         [[jobs.app.hooks]]\nphase = \"after_dumps\"\nrun = {}\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"echo finally {{{{run_id}}}} >> finally-count; echo '{{{{spool}}}}|{{{{error}}}}' >> finally-vars\"\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n",
        q(format!("touch slow-started; if [ -e slow ]; then {sleep}; fi"))
    ))
    .init_repo();
    fs::write(env.path("slow"), "").unwrap();
    let orphan = KillOnDrop(sleep);
    let run = env.start(env.cmd(["run", "app"]));
    wait_for("the before hook", Duration::from_secs(30), || env.path("before-ran").exists());
    wait_for("the slow after_dumps hook", Duration::from_secs(30), || env.path("slow-started").exists());

    let pid = run.pid();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let killed = run.wait();

    assert_eq!(killed.status.code(), None, "holdfast should have died of SIGKILL: {killed:?}");
    fs::remove_file(env.path("slow")).unwrap();
    assert!(env.lines("finally-count").is_empty(), "no finally hook has run yet");
    let journal_path = env.spool().join("app/journal.json");
    let journal: Value = serde_json::from_slice(
        &fs::read(&journal_path).unwrap_or_else(|e| panic!("the killed run should leave {journal_path:?}: {e}")),
    )
    .unwrap();
    assert_eq!(journal["pid"], pid, "{journal:#}");
    let run_dir = run_dir(&journal);
    assert!(fs::metadata(&run_dir).is_ok_and(|m| m.is_dir()), "the killed run's spool directory {run_dir} is left");
    (journal, orphan)
}

/// The killed run's spool directory.
fn run_dir(journal: &Value) -> String {
    journal["run_dir"].as_str().unwrap().to_string()
}

#[test]
fn recover_runs_the_finally_hooks_a_killed_run_owes_exactly_once_with_its_variables() {
    let env = JobEnv::new();
    let (journal, _orphan) = a_run_killed_between_before_and_finally(&env);
    let run_id = journal["run_id"].as_str().unwrap();

    let recovered = holdfast(&env, &["recover", "app"]);

    recovered.assert_ok().assert_says(&format!("run {run_id} (pid {})", journal["pid"]));
    recovered.assert_says("ran 1 owed finally hook(s), 0 failed");
    assert_eq!(env.lines("finally-count"), [format!("finally {run_id}")], "the dead run's variables");
    let vars = env.read("finally-vars");
    let (spool, error) = vars.trim().split_once('|').unwrap();
    assert_eq!(spool, run_dir(&journal), "{{{{spool}}}} is the dead run's");
    assert!(error.contains("killed"), "{{{{error}}}} says what happened: {error:?}");
    assert!(!fs::exists(run_dir(&journal)).unwrap(), "the dead run's spool directory should be removed");
    assert_eq!(spool_leftovers(&env, "app"), Vec::<String>::new(), "journal and run directory are gone");

    holdfast(&env, &["recover", "app"]).assert_ok().assert_says("nothing to recover");
    assert_eq!(env.lines("finally-count").len(), 1, "the owed hooks run once");
    assert_eq!(env.snapshots_json("app").len(), 0);
}

#[test]
fn the_next_run_after_a_kill_runs_the_owed_finally_first_then_runs_normally() {
    let env = JobEnv::new();
    let (journal, _orphan) = a_run_killed_between_before_and_finally(&env);
    let run_id = journal["run_id"].as_str().unwrap();

    env.run(&["app"]).assert_ok().assert_says(run_id);

    let snap = env.only_snapshot("app");
    let new_run = snap["extra"]["run_id"].as_str().unwrap();
    assert_ne!(new_run, run_id);
    assert_eq!(env.lines("finally-count"), [format!("finally {run_id}"), format!("finally {new_run}")]);
    assert!(!fs::exists(run_dir(&journal)).unwrap(), "the dead run's spool directory should be removed");
    assert_eq!(spool_leftovers(&env, "app"), Vec::<String>::new());
    holdfast(&env, &["recover", "app"]).assert_ok().assert_says("nothing to recover");
    assert_eq!(env.lines("finally-count").len(), 2);
}

/// The uid of a process (its real uid), if it still exists.
fn uid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn run_as_runs_pg_dump_as_that_user_and_the_dump_stays_private_to_holdfast() {
    let postgres = nix::unistd::User::from_name("postgres").unwrap().expect("an OS user postgres");
    let env = JobEnv::new();
    let db = PgDatabase::create("runas");
    // Big enough that pg_dump runs long enough to be seen.
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);\n\
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 400000) g;\n\
         INSERT INTO t VALUES (0, 'dumped as postgres');",
    );
    let dumps = format!("{{{{spool}}}}/dumps/{}", db.name);
    let inspect = format!(
        "stat -c '%U %a' {dumps}/*.sql > modes; \
         runuser -u postgres -- cat {dumps}/*.sql > /dev/null 2> as-postgres.err; echo $? > as-postgres.status"
    );
    env.config(&format!(
        "[jobs.crm]\n[[jobs.crm.hooks]]\nphase = \"after_dumps\"\nrun = {}\n\n\
         [[jobs.crm.databases]]\nkind = \"postgresql\"\nname = {}\nhost = \"/var/run/postgresql\"\nport = {}\nrun_as = \"postgres\"\n",
        q(inspect),
        q(&db.name),
        db.server.port
    ))
    .init_repo();
    let needle = format!("--dbname=dbname='{}'", db.name);
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, needle) = (done.clone(), needle.clone());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                for (pid, argv, _) in processes() {
                    if argv.contains("pg_dump") && argv.contains(&needle) {
                        seen.extend(uid_of(pid));
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };

    let ran = env.run(&["crm"]);
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();

    ran.assert_ok();
    assert_eq!(seen, [postgres.uid.as_raw()].into(), "pg_dump should run as postgres (uids seen: {seen:?})");
    assert_eq!(env.lines("modes"), ["root 600"], "the dump file belongs to holdfast's user, mode 0600");
    assert_ne!(env.read("as-postgres.status").trim(), "0", "postgres must not read the dump");
    assert!(env.read("as-postgres.err").contains("Permission denied"), "{}", env.read("as-postgres.err"));
    let snap = env.only_snapshot("crm");
    let record = &snap["extra"]["databases"][0];
    assert_eq!(record["tool"], "pg_dump", "{record:#}");
    let dump = dump_in_snapshot(&env, "crm", &db.name);
    assert!(dump.contains("COPY public.t (id, v) FROM stdin;"), "the dump should hold the table");
    assert!(dump.contains("0\tdumped as postgres\n") && dump.contains("400000\t"), "the dump should hold every row");
    assert_eq!(dump.len() as u64, record["size"].as_u64().unwrap(), "{record:#}");
}

/// The OS user and PostgreSQL role that peer authentication maps onto each
/// other in [`run_as_with_peer_authentication_over_the_socket_dumps_as_that_user`].
const PEER: &str = "hf_peer";

/// Make sure the server authenticates role [`PEER`] over the socket by peer
/// (only that role: a line in front of the others), that the OS user and the
/// role exist, and reload the server's configuration.
fn ensure_peer_authentication(server: &crate::jobs_util::Postgres) {
    let hba = server.sql("postgres", "SHOW hba_file").trim().to_string();
    let text = fs::read_to_string(&hba).unwrap();
    let line = format!("local all {PEER} peer");
    if !text.lines().any(|l| l.trim() == line) {
        fs::write(&hba, format!("{line}\n{text}")).unwrap();
        server.sql("postgres", "SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(300));
    }
    if nix::unistd::User::from_name(PEER).unwrap().is_none() {
        let ok = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PEER])
            .status()
            .unwrap();
        assert!(ok.success() || nix::unistd::User::from_name(PEER).unwrap().is_some(), "useradd {PEER}");
    }
    server.sql(
        "postgres",
        &format!("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PEER}') THEN CREATE ROLE {PEER} LOGIN; END IF; END $$"),
    );
}

#[test]
fn run_as_with_peer_authentication_over_the_socket_dumps_as_that_user() {
    let env = JobEnv::new();
    let db = PgDatabase::create("peer");
    ensure_peer_authentication(&db.server);
    db.sql(&format!("CREATE TABLE t (v text); INSERT INTO t VALUES ('dumped by peer'); GRANT SELECT ON t TO {PEER};"));
    // As root, the socket refuses the role: peer authentication is in force.
    let as_root = std::process::Command::new("psql")
        .args([
            "-X",
            "-h",
            "/var/run/postgresql",
            "-p",
            &db.server.port.to_string(),
            "-U",
            PEER,
            "-d",
            &db.name,
            "-c",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert!(!as_root.status.success(), "root must not get in as {PEER} over the socket");
    assert!(String::from_utf8_lossy(&as_root.stderr).contains("Peer authentication failed"));
    env.config(&format!(
        "[jobs.crm]\n[[jobs.crm.databases]]\nkind = \"postgresql\"\nname = {}\nhost = \"/var/run/postgresql\"\nport = {}\nrun_as = \"{PEER}\"\n",
        q(&db.name),
        db.server.port
    ))
    .init_repo();

    env.run(&["crm"]).assert_ok();

    let dump = dump_in_snapshot(&env, "crm", &db.name);
    assert!(dump.contains("dumped by peer"), "the dump should hold the row");
    let record = &env.only_snapshot("crm")["extra"]["databases"][0];
    assert!(record["server_version"].as_str().is_some_and(|v| !v.is_empty()), "{record:#}");
}
