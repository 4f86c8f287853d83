//! Application consistency: an application that writes a file and then the
//! database row that refers to it, paused by the job's `before` hook and
//! resumed by its `finally` hook, is captured as one state — every row's
//! file is in the snapshot and every file's row, but for the one file whose
//! row the application had not written yet when it was paused. A MariaDB
//! entry's `lock = "global-read"` keeps writers out from before its dump
//! until the files are read, and lets them in again even when the run fails.

use std::collections::BTreeSet;
use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::jobs_util::{JobEnv, MyDatabase, q, shq, sqlite_query, wait_for};

/// The application: forever, write `files/item-N` (whole, by a rename),
/// then commit row N into `app.db` (WAL mode, as an application that is
/// read while it runs would use), pausing a few milliseconds after each.
const WRITER: &str = r#"
import os, sqlite3, sys, time
root = sys.argv[1]
db = sqlite3.connect(os.path.join(root, "app.db"), isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS items (n INTEGER PRIMARY KEY)")
with open(os.path.join(root, "writer.pid.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(root, "writer.pid.tmp"), os.path.join(root, "writer.pid"))
n = 0
while True:
    n += 1
    tmp = os.path.join(root, "item.tmp")
    with open(tmp, "w") as f:
        f.write("item %d\n" % n)
    os.rename(tmp, os.path.join(root, "files", "item-%06d" % n))
    time.sleep(0.003)
    db.execute("INSERT INTO items (n) VALUES (?)", (n,))
    time.sleep(0.002)
"#;

/// The writer's process, killed when the test ends (stopped or not).
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The item numbers in `dir`'s `item-N` files.
fn items_in(dir: &std::path::Path) -> BTreeSet<u64> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_start_matches("item-").parse().unwrap())
        .collect()
}

#[test]
fn an_application_paused_by_hooks_is_captured_with_its_files_and_rows_consistent() {
    let env = JobEnv::new();
    fs::create_dir(env.path("files")).unwrap();
    let child = Command::new("python3")
        .args(["-c", WRITER])
        .arg(env.path(""))
        .stdin(Stdio::null())
        .spawn()
        .expect("start the writer (python3)");
    let _writer = Writer(child);
    wait_for("the writer's pid", Duration::from_secs(20), || env.path("writer.pid").exists());
    let pid = env.read("writer.pid");
    wait_for("a few items", Duration::from_secs(20), || items_in(&env.path("files")).len() >= 5);
    env.config(&format!(
        "[jobs.app]\n\
         [[jobs.app.hooks]]\nphase = \"before\"\nrun = {}\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = {}\n\n\
         [[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\ntimeout = \"1m\"\n\n\
         [jobs.app.files]\npaths = [\"files\"]\n",
        q(format!("kill -STOP {pid}")),
        q(format!("kill -CONT {pid}")),
    ))
    .init_repo();

    env.run(&["app"]).assert_ok();

    let after_run = items_in(&env.path("files")).len();
    wait_for("the writer to go on after the run", Duration::from_secs(10), || {
        items_in(&env.path("files")).len() > after_run
    });
    let snap = env.only_snapshot("app");
    let out = env.restore(snap["id"].as_str().unwrap(), "restored");
    let rows: BTreeSet<u64> = sqlite_query(&out.join(".holdfast/databases/app/app.db.sqlite"), "SELECT n FROM items;")
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    let files = items_in(&crate::util::restored(&out, &env.path("files")));
    let last_row = *rows.last().expect("rows in the snapshot");
    assert_eq!(rows, (1..=last_row).collect(), "the rows should be 1..={last_row}");
    let in_flight: BTreeSet<u64> = [last_row + 1].into();
    assert!(
        files == rows || files == &rows | &in_flight,
        "the files should be the rows' (and at most item {}, written just before the pause):\nrows  {rows:?}\nfiles {files:?}",
        last_row + 1
    );
}

/// The global read lock is the whole server's: these tests take it one at a
/// time, so one's hooks do not wait on the other's lock.
static ONE_GLOBAL_READ_LOCK_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A job `shop` dumping `db` under `lock = "global-read"`, whose hooks try
/// to insert a row and append the phase and the client's exit status to
/// `inserts`: in `after_dumps`, while the lock is held (waiting at most 1 s
/// for it), and in `finally`, after it is released (waiting at most 5 s).
/// `after_dumps` then exits with `exit_status`.
fn job_that_writes_while_locked(env: &JobEnv, db: &MyDatabase, exit_status: i32) {
    for (file, wait) in [("insert-1s.sql", 1), ("insert-5s.sql", 5)] {
        let sql = format!("SET SESSION lock_wait_timeout = {wait};\nINSERT INTO t VALUES ('written by a hook');\n");
        fs::write(env.path(file), sql).unwrap();
    }
    let insert = |file: &str| {
        let (host, port) = (shq(&db.server.host), &db.server.port);
        format!("mariadb --protocol=TCP -h {host} -P {port} -u root {} < {file} 2>> insert.err", db.name)
    };
    env.config(&format!(
        "[jobs.shop]\n\
         [[jobs.shop.hooks]]\nphase = \"after_dumps\"\nrun = {}\n\n\
         [[jobs.shop.hooks]]\nphase = \"finally\"\nrun = {}\n\n\
         {}lock = \"global-read\"\n",
        q(format!("{}; echo after_dumps $? >> inserts; exit {exit_status}", insert("insert-1s.sql"))),
        q(format!("{}; echo finally $? >> inserts", insert("insert-5s.sql"))),
        db.entry("shop"),
    ))
    .init_repo();
}

#[test]
fn a_global_read_lock_keeps_writers_out_until_the_files_are_read() {
    let _one = ONE_GLOBAL_READ_LOCK_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let env = JobEnv::new();
    let db = MyDatabase::create("lock");
    db.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('before the run');");
    job_that_writes_while_locked(&env, &db, 0);

    env.run(&["shop"]).assert_ok();

    assert_eq!(env.lines("inserts"), ["after_dumps 1", "finally 0"], "{}", env.read("insert.err"));
    assert!(env.read("insert.err").contains("Lock wait timeout"), "{}", env.read("insert.err"));
    let snap = env.only_snapshot("shop");
    let out = env.restore(snap["id"].as_str().unwrap(), "restored");
    let dump = fs::read_to_string(out.join(format!(".holdfast/databases/{0}/{0}.sql", db.name))).unwrap();
    assert!(dump.contains("before the run") && !dump.contains("written by a hook"), "{dump}");
}

#[test]
fn a_global_read_lock_is_released_when_the_run_fails() {
    let _one = ONE_GLOBAL_READ_LOCK_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let env = JobEnv::new();
    let db = MyDatabase::create("lockfail");
    db.sql("CREATE TABLE t (v TEXT);");
    job_that_writes_while_locked(&env, &db, 1);

    env.run(&["shop"]).assert_failed();

    assert_eq!(env.lines("inserts"), ["after_dumps 1", "finally 0"], "{}", env.read("insert.err"));
}
