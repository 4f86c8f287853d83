//! Jobs with several databases: dumped at the same time (`dump_concurrency`),
//! so one slow database does not hold up the others, and the first dump that
//! fails stops the rest — no snapshot, nothing left running.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::jobs_util::{JobEnv, PgDatabase, Postgres, q, time_key};

/// A session holding an exclusive lock on table `t` of `db` for `secs`
/// seconds (a pg_dump of `db` waits for it), killed when dropped.
struct LockedTable(Child);

impl LockedTable {
    fn hold(db: &PgDatabase, secs: u32) -> LockedTable {
        LockedTable::hold_on(&db.server, &db.name, secs)
    }

    fn hold_on(pg: &Postgres, db: &str, secs: u32) -> LockedTable {
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-h", &pg.host, "-p", &pg.port, "-U", &pg.user, "-d", db, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql");
        let sql = format!("BEGIN;\nLOCK TABLE t IN ACCESS EXCLUSIVE MODE;\nSELECT pg_sleep({secs});\nCOMMIT;\n");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), sql.as_bytes()).unwrap();
        drop(child.stdin.take());
        let held = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                    WHERE c.relname = 't' AND l.mode = 'AccessExclusiveLock' AND l.granted;";
        let deadline = Instant::now() + Duration::from_secs(20);
        while pg.sql(db, held).trim() != "1" {
            assert!(Instant::now() < deadline, "the lock on t was never taken");
            std::thread::sleep(Duration::from_millis(50));
        }
        LockedTable(child)
    }
}

impl Drop for LockedTable {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn two_databases(env: &JobEnv, a: &PgDatabase, b_name: &str, concurrency: usize) {
    let entry = |name: &str| {
        format!("[[jobs.app.databases]]\nkind = \"postgresql\"\nname = {}\n{}", q(name), Postgres::from_env().toml())
    };
    env.config(&format!("[jobs.app]\ndump_concurrency = {concurrency}\n{}{}", entry(&a.name), entry(b_name)))
        .init_repo();
}

fn record<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    let records = snapshot["extra"]["databases"].as_array().expect("extra.databases");
    records.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no record of {name}: {records:#?}"))
}

#[test]
fn databases_dump_at_the_same_time_so_a_slow_one_does_not_hold_up_the_others() {
    let env = JobEnv::new();
    let (slow, quick) = (PgDatabase::create("slowdump"), PgDatabase::create("quickdump"));
    slow.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('slow');");
    quick.sql("CREATE TABLE u (v text);\nINSERT INTO u VALUES ('quick');");
    two_databases(&env, &slow, &quick.name, 2);
    let lock = LockedTable::hold(&slow, 3);

    env.run(&["app"]).assert_ok();
    drop(lock);

    let snap = env.only_snapshot("app");
    let (a, b) = (record(&snap, &slow.name), record(&snap, &quick.name));
    let key = |r: &Value, k: &str| time_key(r[k].as_str().unwrap());
    // One after the other, the quick dump would start after the slow one ended.
    assert!(key(b, "started") < key(a, "finished"), "the second dump waited for the first: {a:#} {b:#}");
    assert!(key(b, "finished") < key(a, "finished"), "{a:#} {b:#}");
}

#[test]
fn the_first_dump_that_fails_stops_the_others_and_no_snapshot_is_made() {
    let env = JobEnv::new();
    let slow = PgDatabase::create("stoppeddump");
    slow.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('never dumped');");
    let missing = crate::jobs_util::unique("nosuchdb");
    two_databases(&env, &slow, &missing, 2);
    let _lock = LockedTable::hold(&slow, 60);

    let started = Instant::now();
    let ran = env.run(&["app"]);
    ran.assert_failed().assert_says(&missing);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the blocked dump was stopped, not waited for: {:?}",
        started.elapsed()
    );
    assert!(env.snapshots_json("app").is_empty(), "no snapshot");
    let dumping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'pg_dump';",
        slow.name
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.sql(&dumping).trim() != "0" {
        assert!(Instant::now() < deadline, "a pg_dump of {} is still connected", slow.name);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A job `app` dumping `pg`, `my` and the SQLite file `lite`, each
/// `stream`ed or not, with its spool at `spool` and a `finally` hook that
/// leaves `finally-ran`.
fn streaming_job(
    env: &JobEnv,
    pg: &PgDatabase,
    my: &crate::jobs_util::MyDatabase,
    lite: &std::path::Path,
    stream: bool,
    spool: &std::path::Path,
) {
    env.config(&format!(
        "[jobs.app]\nspool = {}\ndump_concurrency = 3\n{}stream = {stream}\n{}stream = {stream}\n\
         [[jobs.app.databases]]\nkind = \"sqlite\"\nentry = \"lite\"\npath = {}\nstream = {stream}\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"touch finally-ran\"\n",
        q(spool),
        pg.entry("app"),
        my.entry("app"),
        q(lite)
    ));
}

/// A WAL-mode SQLite database of about 40 MiB whose latest writes are still
/// in its WAL, kept there by the returned open connection.
fn sqlite_with_wal_content(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000)
         INSERT INTO t SELECT x, hex(randomblob(32)) FROM c;
         PRAGMA wal_checkpoint(TRUNCATE);
         UPDATE t SET v = 'only in the WAL' WHERE id % 1000 = 0;",
    )
    .unwrap();
    let wal = std::fs::metadata(format!("{}-wal", path.display())).unwrap().len();
    assert!(wal > 0, "the last writes are in the WAL");
    conn
}

/// A digest of every row of the SQLite table `t` at `path`.
fn sqlite_digest(path: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let mut rows = stmt.query([]).unwrap();
    let (mut hasher, mut n) = (blake3::Hasher::new(), 0u64);
    while let Some(row) = rows.next().unwrap() {
        hasher.update(&row.get::<_, i64>(0).unwrap().to_le_bytes());
        hasher.update(row.get::<_, String>(1).unwrap().as_bytes());
        n += 1;
    }
    format!("{n} rows, {}", hasher.finalize().to_hex())
}

#[test]
fn streamed_dumps_need_no_spool_space_and_reload_exactly() {
    crate::whole_system::require_root();
    let env = JobEnv::new();
    let spool = env.path("small-spool");
    let _tmpfs = crate::util::SmallTmpfs::mount(&spool, 16);
    // Each dump is several times the spool's 16 MiB.
    let pg = PgDatabase::create("streampg");
    pg.sql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v FROM generate_series(1, 700000) g;",
    );
    let my = crate::jobs_util::MyDatabase::create("streammy");
    my.sql("CREATE TABLE t (id INT PRIMARY KEY, v CHAR(64)) AS SELECT seq AS id, CONCAT(MD5(seq), MD5(seq * 7)) AS v FROM seq_1_to_700000;");
    let lite = env.path("lite.db");
    let writer = sqlite_with_wal_content(&lite);
    let pg_sum = "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM t;";
    let my_sum = "SELECT COUNT(*), SUM(CRC32(v)) FROM t;";
    let (pg_before, my_before, lite_before) = (pg.sql(pg_sum), my.sql(my_sum), sqlite_digest(&lite));

    // Through the spool, the dumps do not fit: validate says so and says
    // what to do, and the run fails.
    streaming_job(&env, &pg, &my, &lite, false, &spool);
    env.init_repo();
    let said = env.engine(["validate", "app"]).assert().failure();
    let said = String::from_utf8_lossy(&said.get_output().stdout).into_owned();
    assert!(said.contains("set `stream = true`"), "{said}");
    env.run(&["app"]).assert_failed();
    assert!(env.snapshots_json("app").is_empty());

    // Streamed, they need none of it; the SQLite copy holds what is still
    // only in the WAL of the open database.
    streaming_job(&env, &pg, &my, &lite, true, &spool);
    let said = env.engine(["validate", "app"]).assert().success();
    let said = String::from_utf8_lossy(&said.get_output().stdout).into_owned();
    assert!(said.contains("about 1.0 MiB needed"), "{said}");
    env.run(&["app"]).assert_ok();
    let snap = env.only_snapshot("app");
    for name in [&pg.name, &my.name, &lite.display().to_string()] {
        assert!(record(&snap, name)["size"].as_u64().unwrap() > 32 << 20, "{snap:#}");
    }
    // What the streams stored counts as what the run added.
    assert!(snap["summary"]["bytes_added"].as_u64().unwrap() > 32 << 20, "{:#}", snap["summary"]);
    drop(writer);

    // Restores need no spool space either: every dump goes straight from
    // the repository into its load tool, or into the new SQLite file.
    let holdfast = |args: &[&str]| crate::p34_util::holdfast(&env, args).assert_ok().stdout.clone();
    pg.sql("UPDATE t SET v = 'changed after the backup' WHERE id < 10;");
    holdfast(&["restore", "app", "--database", &pg.name, "--reload"]);
    assert_eq!(pg.sql(pg_sum), pg_before);
    let my_new = crate::p34_util::MyName(crate::jobs_util::unique("streammynew"));
    holdfast(&["restore", "app", "--database", &my.name, "--into", &my_new.0]);
    assert_eq!(my.server.sql(Some(&my_new.0), my_sum), my_before);
    rusqlite::Connection::open(&lite).unwrap().execute("DELETE FROM t WHERE id > 10", []).unwrap();
    holdfast(&["restore", "app", "--database", "lite", "--reload"]);
    assert_eq!(sqlite_digest(&lite), lite_before);
    let copy = env.path("lite-copy.db");
    holdfast(&["restore", "app", "--database", "lite", "--dump-to", &copy.display().to_string()]);
    assert_eq!(sqlite_digest(&copy), lite_before);
    // verify loads every dump the same way.
    holdfast(&["verify", "app"]);
    env.engine(["--repo", "main", "check", "--read-data"]).assert().success();
    // Old databases kept by --reload go with the test.
    for kept in pg
        .server
        .sql("postgres", &format!("SELECT datname FROM pg_database WHERE datname LIKE '{}_before_%'", pg.name))
        .lines()
    {
        let _ = pg.server.try_sql("postgres", &format!("DROP DATABASE IF EXISTS {kept} WITH (FORCE);"));
    }
}

/// A job's second repository made on its own (other chunker parameters,
/// so it cannot take a copy) gets the streamed dump read back out of the
/// first and stored again: still no spool space, and it restores alone.
#[test]
fn a_streamed_dump_reaches_a_second_repository_that_is_not_a_copy_of_the_first() {
    crate::whole_system::require_root();
    let env = JobEnv::new();
    let spool = env.path("small-spool");
    let _tmpfs = crate::util::SmallTmpfs::mount(&spool, 4);
    let lite = env.path("lite.db");
    let conn = rusqlite::Connection::open(&lite).unwrap();
    // About 24 MiB, six times the spool.
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 150000)
         INSERT INTO t SELECT x, hex(randomblob(64)) FROM c;",
    )
    .unwrap();
    drop(conn);
    let before = sqlite_digest(&lite);
    env.config(&format!(
        "[repositories.offsite]\npath = \"offsite\"\npassphrase_file = \"passphrase\"\n\n\
         [jobs.app]\nrepositories = [\"main\", \"offsite\"]\nspool = {}\n\
         [[jobs.app.databases]]\nkind = \"sqlite\"\nentry = \"lite\"\npath = {}\nstream = true\n",
        q(&spool),
        q(&lite)
    ))
    .init_repo();
    env.engine(["--repo", "offsite", "init"]).assert().success();

    env.run(&["app"]).assert_ok();
    env.run(&["app"]).assert_ok();
    for repo in ["main", "offsite"] {
        let out = env.engine(["--repo", repo, "snapshots", "app", "--json"]).assert().success();
        let snaps = crate::util::parse_json(&String::from_utf8_lossy(&out.get_output().stdout));
        let snaps = snaps.as_array().unwrap();
        assert_eq!(snaps.len(), 2, "{repo}: {snaps:#?}");
        assert!(
            record(&snaps[0], &lite.display().to_string())["size"].as_u64().unwrap() > 16 << 20,
            "{repo}: {:#}",
            snaps[0]
        );
        // The second run's unchanged dump deduplicates in each repository.
        let added = snaps[1]["summary"]["bytes_added"].as_u64().unwrap();
        assert!(added < 1 << 20, "{repo}: the unchanged dump added {added} bytes");
        let copy = env.path(&format!("lite-from-{repo}.db"));
        env.engine(["--repo", repo, "restore", "app", "--database", "lite", "--dump-to"]).arg(&copy).assert().success();
        assert_eq!(sqlite_digest(&copy), before, "{repo}");
        env.engine(["--repo", repo, "check", "--read-data"]).assert().success();
    }
}

#[test]
fn a_streamed_dump_whose_tool_is_killed_makes_no_snapshot_and_the_repository_stays_healthy() {
    let env = JobEnv::new();
    let pg = PgDatabase::create("streamkill");
    pg.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('never whole');");
    env.config(&format!(
        "[jobs.app]\n{}stream = true\n[[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"touch finally-ran\"\n",
        pg.entry("app")
    ))
    .init_repo();
    // pg_dump starts, writes its header, then waits for the lock on t.
    let _lock = LockedTable::hold(&pg, 60);
    let started = env.start(env.cmd(["run", "app"]));
    let pattern = format!("pg_dump.*{}", pg.name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let killed = Command::new("pkill").args(["-KILL", "-f", &pattern]).status().unwrap();
        if killed.success() {
            break;
        }
        assert!(Instant::now() < deadline, "pg_dump never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ran = started.wait();
    ran.assert_failed().assert_says("pg_dump");
    assert!(env.snapshots_json("app").is_empty(), "a stream cut short is never a snapshot");
    assert!(env.path("finally-ran").exists(), "finally ran");
    env.engine(["--repo", "main", "check", "--read-data"]).assert().success();
}

/// A PostgreSQL server of one test's own (initdb as `postgres`, trust, a
/// free port on loopback), so that a test can stop it; stopped and removed
/// when dropped.
struct PrivateCluster {
    dir: tempfile::TempDir,
    server: Postgres,
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        crate::whole_system::require_root();
        let bin = |tool: &str| {
            let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL's binaries");
            let newest = versions.flatten().map(|e| e.path()).max().expect("a PostgreSQL version");
            newest.join("bin").join(tool)
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        let as_postgres = |tool: &str, args: &[&str]| {
            let out =
                Command::new("runuser").args(["-u", "postgres", "--"]).arg(bin(tool)).args(args).output().unwrap();
            assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        };
        as_postgres("initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.path().display());
        let log = dir.path().join("log");
        as_postgres(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-o", &options, "-l", log.to_str().unwrap(), "-w", "start"],
        );
        PrivateCluster { dir, server: Postgres { host: "127.0.0.1".into(), port, user: "postgres".into() } }
    }

    /// Stop the server at once, as a crash or an OOM kill would.
    fn stop_immediately(&self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "/bin/sh", "-c"])
            .arg(format!(
                "$(ls -d /usr/lib/postgresql/*/bin | sort | tail -n1)/pg_ctl -D {} -m immediate -w stop",
                data.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

#[test]
fn a_streamed_dump_whose_server_stops_makes_no_snapshot_and_the_repository_stays_healthy() {
    let cluster = PrivateCluster::start();
    let pg = &cluster.server;
    pg.sql("postgres", "CREATE DATABASE app;");
    pg.sql("app", "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('never whole');");
    let env = JobEnv::new();
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.databases]]\nkind = \"postgresql\"\nname = \"app\"\n{}stream = true\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"touch finally-ran\"\n",
        pg.toml()
    ))
    .init_repo();
    // pg_dump starts, writes its header, then waits for the lock on t; the
    // server goes away under it.
    let _lock = LockedTable::hold_on(pg, "app", 60);
    let started = env.start(env.cmd(["run", "app"]));
    wait_for_process(&format!("pg_dump.*--port={}", pg.port));
    cluster.stop_immediately();

    let ran = started.wait();
    ran.assert_failed().assert_says("pg_dump");
    assert!(env.snapshots_json("app").is_empty(), "a stream cut short is never a snapshot");
    assert!(env.path("finally-ran").exists(), "finally ran");
    env.engine(["--repo", "main", "check", "--read-data"]).assert().success();
}

/// A MariaDB server of one test (its own data directory, a free port, no
/// grant checks), killed when the test ends.
struct PrivateMariaDb {
    _dir: tempfile::TempDir,
    server: Child,
    db: crate::jobs_util::MariaDb,
}

impl PrivateMariaDb {
    fn start() -> PrivateMariaDb {
        crate::whole_system::require_root();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Command::new("chown").args(["-R", "mysql:mysql"]).arg(dir.path()).status().unwrap();
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=mysql", "--skip-test-db", "--auth-root-authentication-method=normal"])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
        let server = Command::new("/usr/sbin/mariadbd")
            .args(["--no-defaults", "--user=mysql", "--skip-grant-tables", "--bind-address=127.0.0.1"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let db = crate::jobs_util::MariaDb { host: "127.0.0.1".into(), port, user: "root".into() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while db.try_sql(None, "SELECT 1;").is_err() {
            assert!(Instant::now() < deadline, "the private MariaDB never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        PrivateMariaDb { _dir: dir, server, db }
    }

    /// Kill the server, as a crash or an OOM kill would.
    fn kill(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_streamed_mariadb_dump_whose_server_dies_makes_no_snapshot_and_the_repository_stays_healthy() {
    let mut server = PrivateMariaDb::start();
    let my = server.db.clone();
    my.sql(None, "CREATE DATABASE app;");
    my.sql(Some("app"), "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('never whole');");
    let env = JobEnv::new();
    env.config(&format!(
        "[jobs.app]\n[[jobs.app.databases]]\nkind = \"mysql\"\nname = \"app\"\n{}stream = true\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"touch finally-ran\"\n",
        my.toml()
    ))
    .init_repo();
    // mariadb-dump starts, writes its header, then waits for the table
    // another session holds locked; the server dies under it.
    let mut locker = Command::new("mariadb")
        .args(["--protocol=TCP", "-h", &my.host, "-P", &my.port, "-u", "root", "app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(locker.stdin.as_mut().unwrap(), b"LOCK TABLES t WRITE;\nSELECT SLEEP(60);\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = env.start(env.cmd(["run", "app"]));
    wait_for_process(&format!("mariadb-dump.*--port={}", my.port));
    server.kill();

    let ran = started.wait();
    let _ = locker.kill();
    let _ = locker.wait();
    ran.assert_failed().assert_says("mariadb-dump");
    assert!(env.snapshots_json("app").is_empty(), "a stream cut short is never a snapshot");
    assert!(env.path("finally-ran").exists(), "finally ran");
    env.engine(["--repo", "main", "check", "--read-data"]).assert().success();
}

/// Wait (up to 30 s) until a process whose command line matches `pattern`
/// runs, then a moment more for it to get going.
fn wait_for_process(pattern: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Command::new("pgrep").args(["-f", pattern]).stdout(Stdio::null()).status().unwrap().success() {
        assert!(Instant::now() < deadline, "no process like {pattern:?} started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(400));
}
