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
        let pg = Postgres::from_env();
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-h", &pg.host, "-p", &pg.port, "-U", &pg.user, "-d", &db.name, "-f", "-"])
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
        while db.sql(held).trim() != "1" {
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
