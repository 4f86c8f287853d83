//! Getting an application back with `restore JOB`: a database reloaded over
//! the live one (which is kept), loaded into a new name, or written out; a
//! reload whose load fails leaves the live database as it was; the job's
//! file sets restored into a directory, replaced only when asked and never
//! half-written; `before_restore` and `after_restore` hooks around it all.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::jobs_util::{JobEnv, MyDatabase, PgDatabase, PgRole, q, sqlite_exec, sqlite_query, unique};
use crate::p34_util::{
    MyName, MyNamesStartingWith, PgName, PgNamesStartingWith, holdfast, holdfast_json, my_databases_starting_with,
    pg_databases_starting_with, pg_has_database,
};
use crate::util::{restored, write_random};

// ---------------------------------------------------------------- --reload

#[test]
fn reload_puts_the_snapshots_postgresql_database_in_place_and_keeps_the_live_one() {
    let env = JobEnv::new();
    let db = PgDatabase::create("reload");
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    db.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('in the snapshot');");
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();
    db.sql("INSERT INTO t VALUES ('added after the backup');");

    let report = holdfast_json(&env, &["restore", "crm", "--database", &db.name, "--reload"]);

    assert_eq!(report["target"], db.name.as_str(), "{report:#}");
    let kept = report["kept_as"].as_str().unwrap_or_else(|| panic!("the report names the kept database: {report:#}"));
    assert_eq!(db.sql("SELECT v FROM t ORDER BY v;"), "in the snapshot\n", "the live database is the snapshot's");
    assert_eq!(
        db.server.sql(kept, "SELECT v FROM t ORDER BY v;"),
        "added after the backup\nin the snapshot\n",
        "the old live database is kept as {kept}"
    );
    assert_eq!(
        pg_databases_starting_with(&format!("{}_", db.name)),
        [kept],
        "nothing but the kept database is left behind"
    );
}

/// The reloaded database belongs to the live one's owner, not to the role
/// holdfast loads with: the application goes on creating tables in it.
#[test]
fn a_reloaded_postgresql_database_keeps_its_owner_grants_and_settings() {
    let env = JobEnv::new();
    let app = PgRole::create("app", "not-a-secret");
    let reader = PgRole::create("reader", "not-a-secret");
    let friend = PgRole::create("friend", "not-a-secret");
    let outsider = PgRole::create("outsider", "not-a-secret");
    let db = PgDatabase::create_owned_by("owned", Some(&app.name));
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    db.sql(&format!("CREATE TABLE t (v text);\nALTER TABLE t OWNER TO {};\nINSERT INTO t VALUES ('x');", app.name));
    // What the database itself has beyond its contents: a dump made without
    // --create carries none of it.
    let (d, a, r, f) = (&db.name, &app.name, &reader.name, &friend.name);
    db.server.sql(
        "postgres",
        &format!(
            "REVOKE ALL ON DATABASE \"{d}\" FROM PUBLIC;\n\
             GRANT CONNECT, TEMPORARY ON DATABASE \"{d}\" TO \"{r}\" WITH GRANT OPTION;\n\
             SET ROLE \"{r}\";\nGRANT CONNECT ON DATABASE \"{d}\" TO \"{f}\";\nRESET ROLE;\n\
             ALTER DATABASE \"{d}\" CONNECTION LIMIT 40;\n\
             COMMENT ON DATABASE \"{d}\" IS 'the CRM''s data';\n\
             ALTER DATABASE \"{d}\" SET work_mem = '3MB';\n\
             SELECT set_config('search_path', 'Sales, \"$user\", \"Odd, name\", public', false);\n\
             ALTER DATABASE \"{d}\" SET search_path FROM CURRENT;\n\
             ALTER ROLE \"{r}\" IN DATABASE \"{d}\" SET statement_timeout = '7s';"
        ),
    );
    let setup = || {
        db.server.sql(
            "postgres",
            &format!(
                "SELECT pg_get_userbyid(datdba), datconnlimit, shobj_description(oid, 'pg_database') \
                 FROM pg_database WHERE datname = '{d}';\n\
                 SELECT a.privilege_type || ' to ' || a.grantee::regrole::text || ' ' || a.is_grantable \
                 || ' by ' || a.grantor::regrole::text \
                 FROM pg_database x, aclexplode(x.datacl) a WHERE x.datname = '{d}' ORDER BY 1;\n\
                 SELECT s.setrole::regrole::text || ' ' || s.setconfig::text FROM pg_db_role_setting s \
                 JOIN pg_database x ON x.oid = s.setdatabase WHERE x.datname = '{d}' ORDER BY 1;"
            ),
        )
    };
    let before = setup();
    assert!(before.contains("Odd, name") && before.contains("statement_timeout=7s"), "{before}");
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();

    holdfast_json(&env, &["restore", "crm", "--database", &db.name, "--reload"]);

    assert_eq!(setup(), before, "the reloaded database's owner, grants and settings");
    assert!(before.starts_with(&format!("{a}|40|the CRM's data\n")), "{before}");
    db.sql(&format!("SET ROLE {a};\nCREATE TABLE made_by_the_app (v text);"));
    let may_connect =
        |role: &str| db.server.sql("postgres", &format!("SELECT has_database_privilege('{role}', '{d}', 'CONNECT');"));
    assert_eq!((may_connect(r), may_connect(f)), ("t\n".to_string(), "t\n".to_string()));
    assert_eq!(may_connect(&outsider.name), "f\n", "CONNECT stays revoked from PUBLIC");
    // A grant passed on goes with the grant option it came from.
    db.server.sql("postgres", &format!("REVOKE CONNECT ON DATABASE \"{d}\" FROM \"{r}\" CASCADE;"));
    assert_eq!(may_connect(f), "f\n", "what {r} passed on to {f} went with {r}'s grant");
}

#[test]
fn a_reload_that_cannot_copy_a_setting_or_a_grant_stops_before_the_swap_and_leaves_nothing_behind() {
    let env = JobEnv::new();
    let app = PgRole::create("app", "not-a-secret");
    let loader = PgRole::create("loader", "not-a-secret");
    let reader = PgRole::create("reader", "not-a-secret");
    let friend = PgRole::create("friend", "not-a-secret");
    let db = PgDatabase::create_owned_by("limited", Some(&app.name));
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    let (d, a, l) = (&db.name, &app.name, &loader.name);
    db.sql(&format!(
        "ALTER SCHEMA public OWNER TO {a};\nCREATE TABLE t (v text);\nALTER TABLE t OWNER TO {a};\n\
         INSERT INTO t VALUES ('in the snapshot');"
    ));
    // holdfast's role may load as the owner, not set a superuser's setting.
    db.server.sql(
        "postgres",
        &format!(
            "ALTER ROLE {l} CREATEDB;\nGRANT {a} TO {l};\n\
             ALTER DATABASE \"{d}\" SET log_min_duration_statement = 250;\nALTER DATABASE \"{d}\" SET work_mem = '3MB';"
        ),
    );
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();
    db.sql("INSERT INTO t VALUES ('live');");
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm").replace("user = \"postgres\"", &format!("user = {}", q(l)))));
    let reload_fails_and_changes_nothing = |what: &str| {
        let ran = holdfast(&env, &["restore", "crm", "--database", d, "--reload"]);
        assert!(!ran.status.success(), "{what}: {}", ran.stderr);
        assert!(ran.stderr.contains("is untouched; the loaded copy was dropped"), "{what}: {}", ran.stderr);
        assert_eq!(db.sql("SELECT v FROM t ORDER BY v;"), "in the snapshot\nlive\n", "{what}");
        ran.stderr
    };

    // Settings can be access rules: one left out would widen access.
    let stderr = reload_fails_and_changes_nothing("a superuser's setting");
    assert!(stderr.contains("log_min_duration_statement"), "the setting is named: {stderr}");
    assert!(pg_databases_starting_with(&format!("{d}_")).is_empty(), "no copy is left behind");

    // Without it the reload goes through, with the other setting.
    db.server.sql("postgres", &format!("ALTER DATABASE \"{d}\" RESET log_min_duration_statement;"));
    holdfast(&env, &["restore", "crm", "--database", d, "--reload"]).assert_ok();
    assert_eq!(db.sql("SELECT v FROM t;"), "in the snapshot\n");
    let settings = format!(
        "SELECT s.setconfig::text FROM pg_db_role_setting s JOIN pg_database x ON x.oid = s.setdatabase \
         WHERE x.datname = '{d}';"
    );
    assert_eq!(db.server.sql("postgres", &settings), "{work_mem=3MB}\n");
    let kept = pg_databases_starting_with(&format!("{d}_"));
    assert_eq!(kept.len(), 1, "only the kept live database: {kept:?}");

    // A grant passed on by a role holdfast's cannot act as.
    let (r, f) = (&reader.name, &friend.name);
    db.server.sql(
        "postgres",
        &format!(
            "REVOKE ALL ON DATABASE \"{d}\" FROM PUBLIC;\n\
             GRANT CONNECT ON DATABASE \"{d}\" TO {r} WITH GRANT OPTION;\n\
             SET ROLE {r};\nGRANT CONNECT ON DATABASE \"{d}\" TO {f};\nRESET ROLE;"
        ),
    );
    db.sql("INSERT INTO t VALUES ('live');");
    reload_fails_and_changes_nothing("a grant passed on");
    assert_eq!(pg_databases_starting_with(&format!("{d}_")), kept, "no copy is left behind");
}

#[test]
fn a_role_that_may_act_as_the_owner_reloads_verifies_and_restores_a_database_whose_public_schema_it_does_not_own() {
    let env = JobEnv::new();
    let app = PgRole::create("app", "not-a-secret");
    let loader = PgRole::create("loader", "not-a-secret");
    let reader = PgRole::create("reader", "not-a-secret");
    let noinherit = PgRole::create("noinherit", "not-a-secret");
    // PostgreSQL 15's defaults: `public` belongs to pg_database_owner, and
    // only the database's owner may create in it.
    let db = PgDatabase::create_owned_by("plainrole", Some(&app.name));
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    let (d, a, l, r, n) = (&db.name, &app.name, &loader.name, &reader.name, &noinherit.name);
    db.sql(&format!(
        "CREATE TABLE t (v text);\nALTER TABLE t OWNER TO {a};\nINSERT INTO t VALUES ('in the snapshot');"
    ));
    db.server.sql(
        "postgres",
        &format!("ALTER ROLE {l} CREATEDB;\nGRANT {a} TO {l};\nALTER ROLE {n} CREATEDB NOINHERIT;\nGRANT {a} TO {n};"),
    );
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();
    db.sql("INSERT INTO t VALUES ('live');");
    let as_role = |role: &str| {
        env.config(&format!(
            "[jobs.crm]\n{}",
            db.entry("crm").replace("user = \"postgres\"", &format!("user = {}", q(role)))
        ));
    };
    let owners = |name: &str| {
        let sql = "SELECT pg_get_userbyid(d.datdba) || ' ' || t.tableowner || ' ' || pg_get_userbyid(n.nspowner) \
                   FROM pg_database d, pg_tables t, pg_namespace n \
                   WHERE d.datname = current_database() AND t.tablename = 't' AND n.nspname = 'public';";
        db.server.sql(name, sql)
    };
    let public_may_connect =
        || db.server.sql("postgres", &format!("SELECT has_database_privilege('{r}', '{d}', 'CONNECT, TEMPORARY');"));

    as_role(l);
    holdfast(&env, &["restore", "crm", "--database", d, "--reload"]).assert_ok();
    assert_eq!(db.sql("SELECT v FROM t;"), "in the snapshot\n");
    assert_eq!(owners(d), format!("{a} {a} pg_database_owner\n"), "owners as before the reload");
    // The live database had the default grants: any role may still connect.
    assert_eq!(public_may_connect(), "t\n", "the copy took PUBLIC's grants away during the load only");
    // The daily verify and a restore into a new database work for this role too.
    holdfast(&env, &["verify", "crm"]).assert_ok();
    let into = format!("{d}_into");
    holdfast(&env, &["restore", "crm", "--database", d, "--into", &into]).assert_ok();
    assert_eq!(owners(&into), format!("{a} {a} pg_database_owner\n"));

    // A session this role may not end: the reload stops before the swap,
    // and its copy, already given the live grants, does not stay behind.
    let session = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            &db.server.host,
            "-p",
            &db.server.port,
            "-U",
            r,
            "-d",
            d,
            "-c",
            "SELECT pg_sleep(60);",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut session = KillOnDrop(session);
    let waiting = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{d}' AND usename = '{r}';");
    let started = Instant::now();
    while db.server.sql("postgres", &waiting) != "1\n" {
        assert!(started.elapsed() < Duration::from_secs(20), "the session did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = pg_databases_starting_with(&format!("{d}_"));
    let ran = holdfast(&env, &["restore", "crm", "--database", d, "--reload"]);
    assert!(!ran.status.success());
    assert!(ran.stderr.contains("is untouched; the loaded copy was dropped"), "{}", ran.stderr);
    assert_eq!(pg_databases_starting_with(&format!("{d}_")), before, "no copy is left behind");
    session.0.kill().ok();

    // A member that does not inherit the owner's privileges: its copy is
    // its own, the load fails at the owner's tables, and nothing is left.
    as_role(n);
    let ran = holdfast(&env, &["restore", "crm", "--database", d, "--reload"]);
    assert!(!ran.status.success());
    assert!(ran.stderr.contains("untouched"), "{}", ran.stderr);
    assert_eq!(pg_databases_starting_with(&format!("{d}_")), before, "no copy is left behind");

    // The live database is gone: the reload makes it, owned by the owner
    // the snapshot recorded and open to every role as a new database is.
    as_role(l);
    let kept = pg_databases_starting_with(&format!("{d}_"));
    db.server.sql("postgres", &format!("DROP DATABASE \"{d}\" WITH (FORCE);"));
    holdfast(&env, &["restore", "crm", "--database", d, "--reload"]).assert_ok();
    assert_eq!(db.sql("SELECT v FROM t;"), "in the snapshot\n");
    assert_eq!(owners(d), format!("{a} {a} pg_database_owner\n"));
    assert_eq!(public_may_connect(), "t\n");
    assert_eq!(pg_databases_starting_with(&format!("{d}_")), kept);

    // Someone else's database under the dumped name: a copy into a new
    // database still goes to the recorded owner, not to them.
    db.server.sql("postgres", &format!("ALTER DATABASE \"{d}\" OWNER TO {r};"));
    let into = format!("{d}_into2");
    holdfast(&env, &["restore", "crm", "--database", d, "--into", &into]).assert_ok();
    assert_eq!(owners(&into), format!("{a} {a} pg_database_owner\n"));
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn reload_puts_the_snapshots_mariadb_database_in_place_and_keeps_the_live_one() {
    let env = JobEnv::new();
    let db = MyDatabase::create("reload");
    let _derived = MyNamesStartingWith(format!("{}_", db.name));
    db.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('in the snapshot');");
    env.config(&format!("[jobs.shop]\n{}", db.entry("shop"))).init_repo();
    env.run(&["shop"]).assert_ok();
    db.sql("INSERT INTO t VALUES ('added after the backup');");

    let report = holdfast_json(&env, &["restore", "shop", "--database", &db.name, "--reload"]);

    assert_eq!(report["target"], db.name.as_str(), "{report:#}");
    let kept = report["kept_as"].as_str().unwrap_or_else(|| panic!("the report names the kept database: {report:#}"));
    assert_eq!(db.sql("SELECT v FROM t ORDER BY v;"), "in the snapshot\n", "the live database is the snapshot's");
    assert_eq!(
        db.server.sql(Some(kept), "SELECT v FROM t ORDER BY v;"),
        "added after the backup\nin the snapshot\n",
        "the old live database is kept as {kept}"
    );
    assert_eq!(
        my_databases_starting_with(&format!("{}_", db.name)),
        [kept],
        "nothing but the kept database is left behind"
    );
}

#[test]
fn reload_of_a_mariadb_database_with_a_view_trigger_and_routine_replaces_all_of_them() {
    let env = JobEnv::new();
    let db = MyDatabase::create("objects");
    let _derived = MyNamesStartingWith(format!("{}_", db.name));
    db.sql(
        "CREATE TABLE t (v TEXT);\nCREATE TABLE audit (v TEXT);\n\
         CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW INSERT INTO audit VALUES (NEW.v);\n\
         CREATE VIEW shown AS SELECT v FROM t;\n\
         CREATE FUNCTION answer() RETURNS INT DETERMINISTIC RETURN 42;\n\
         INSERT INTO t VALUES ('in the snapshot');",
    );
    env.config(&format!("[jobs.shop]\n{}", db.entry("shop"))).init_repo();
    env.run(&["shop"]).assert_ok();
    db.sql("INSERT INTO t VALUES ('added after the backup');\nDROP VIEW shown;\nCREATE VIEW shown AS SELECT 'changed' AS v;");

    let report = holdfast_json(&env, &["restore", "shop", "--database", &db.name, "--reload"]);

    let kept = report["kept_as"].as_str().unwrap_or_else(|| panic!("the report names the kept database: {report:#}"));
    assert_eq!(db.sql("SELECT v FROM t ORDER BY v;"), "in the snapshot\n");
    assert_eq!(db.sql("SELECT v FROM shown;"), "in the snapshot\n", "the view is the snapshot's");
    assert_eq!(db.sql("SELECT answer();"), "42\n", "the function came back");
    db.sql("INSERT INTO t VALUES ('after the reload');");
    assert_eq!(db.sql("SELECT v FROM audit ORDER BY v;"), "after the reload\nin the snapshot\n", "the trigger works");
    assert_eq!(
        db.server.sql(Some(kept), "SELECT v FROM t ORDER BY v;"),
        "added after the backup\nin the snapshot\n",
        "the old live database is kept as {kept}"
    );
    assert_eq!(my_databases_starting_with(&format!("{}_", db.name)), [kept], "nothing else is left behind");
}

#[test]
fn a_mariadb_reload_whose_copy_of_the_live_database_fails_leaves_it_untouched_and_nothing_behind() {
    let env = JobEnv::new();
    let db = MyDatabase::create("copyfails");
    let _derived = MyNamesStartingWith(format!("{}_", db.name));
    db.sql(
        "CREATE TABLE t (v TEXT);\nCREATE TABLE u (v TEXT);\nCREATE VIEW shown AS SELECT v FROM t;\n\
         CREATE VIEW z_of_u AS SELECT v FROM u;\nINSERT INTO t VALUES ('in the snapshot');",
    );
    env.config(&format!("[jobs.shop]\n{}", db.entry("shop"))).init_repo();
    env.run(&["shop"]).assert_ok();
    // A view left pointing at a dropped table: mariadb-dump fails on it
    // part-way through the copy of the live database, after its first
    // CREATE TABLE went into the copy.
    db.sql("INSERT INTO t VALUES ('added after the backup');\nDROP TABLE u;");

    let ran = holdfast(&env, &["restore", "shop", "--database", &db.name, "--reload"]);

    ran.assert_failed().assert_says("the live database is untouched");
    assert_eq!(db.sql("SELECT v FROM t ORDER BY v;"), "added after the backup\nin the snapshot\n");
    assert_eq!(db.sql("SELECT v FROM shown ORDER BY v;"), "added after the backup\nin the snapshot\n");
    assert!(
        my_databases_starting_with(&format!("{}_", db.name)).is_empty(),
        "no half copy and no loaded copy is left behind"
    );
}

#[test]
fn reload_puts_the_snapshots_sqlite_database_in_place_and_keeps_the_live_one() {
    let env = JobEnv::new();
    let live = env.path("app.db");
    sqlite_exec(&live, "CREATE TABLE t (v);\nINSERT INTO t VALUES ('in the snapshot');");
    env.config("[jobs.app]\n[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n").init_repo();
    env.run(&["app"]).assert_ok();
    sqlite_exec(&live, "INSERT INTO t VALUES ('added after the backup');");
    // The application's own file: its owner and mode must survive the reload.
    std::os::unix::fs::chown(&live, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&live, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();

    let ran = holdfast(&env, &["restore", "app", "--database", "app", "--reload"]);

    ran.assert_ok().assert_says("the previous database is kept as");
    let kept = ran
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("the previous database is kept as "))
        .and_then(|l| l.split(';').next())
        .unwrap_or_else(|| panic!("the output names the kept database: {ran:?}"))
        .to_string();
    assert_eq!(sqlite_query(&live, "SELECT v FROM t ORDER BY v;"), ["in the snapshot"]);
    let md = fs::metadata(&live).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (65534, 65534, 0o640), "the live file's owner and mode");
    assert_eq!(
        sqlite_query(Path::new(&kept), "SELECT v FROM t ORDER BY v;"),
        ["added after the backup", "in the snapshot"]
    );
    let mut names: Vec<String> =
        fs::read_dir(env.path("")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.retain(|n| n.starts_with("app.db"));
    names.sort();
    let kept_name = Path::new(&kept).file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(names, ["app.db".to_string(), kept_name], "nothing else is left beside the database");
}

/// Commit `sql` to the SQLite database `db` with a `sqlite3` that is then
/// killed, as an application that dies does: the commit stays in `db-wal`.
fn commit_and_die(db: &Path, sql: &str) {
    use std::io::{BufRead, BufReader, Write};
    let mut app = std::process::Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start sqlite3");
    writeln!(app.stdin.as_mut().unwrap(), "{sql}\n.print committed").unwrap();
    let mut line = String::new();
    BufReader::new(app.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "committed\n");
    app.kill().unwrap();
    app.wait().unwrap();
}

#[test]
fn reload_of_a_sqlite_database_in_wal_mode_puts_the_snapshots_state_in_place() {
    let env = JobEnv::new();
    let live = env.path("app.db");
    sqlite_exec(&live, "PRAGMA journal_mode=WAL;\nCREATE TABLE t (v);\nINSERT INTO t VALUES ('in the snapshot');");
    env.config("[jobs.app]\n[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n").init_repo();
    env.run(&["app"]).assert_ok();
    commit_and_die(&live, "INSERT INTO t VALUES ('added after the backup');");
    assert!(fs::metadata(env.path("app.db-wal")).is_ok_and(|m| m.len() > 0), "the commit is in the WAL");

    let report = holdfast_json(&env, &["restore", "app", "--database", "app", "--reload"]);

    let kept = report["kept_as"].as_str().unwrap_or_else(|| panic!("the report names the kept database: {report:#}"));
    assert_eq!(
        sqlite_query(&live, "SELECT v FROM t ORDER BY v;"),
        ["in the snapshot"],
        "the live database is the snapshot's"
    );
    assert_eq!(
        sqlite_query(Path::new(kept), "SELECT v FROM t ORDER BY v;"),
        ["added after the backup", "in the snapshot"],
        "the kept database is the live one, its last commit included"
    );
    let leftovers: Vec<String> = dir_listing(&env.path("")).into_iter().filter(|n| n.contains("hfreload")).collect();
    assert_eq!(leftovers, Vec::<String>::new(), "nothing of the temporary copy is left");
}

#[test]
fn a_reload_whose_load_fails_leaves_the_live_database_untouched() {
    let env = JobEnv::new();
    let owner = PgRole::create("owner", "unused");
    let db = PgDatabase::create("badload");
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    db.sql(&format!(
        "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('in the snapshot');\nALTER TABLE t OWNER TO {};",
        owner.name
    ));
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();
    // The dump is fine on its own ...
    let dump = env.path("dump.sql");
    holdfast(&env, &["restore", "crm", "--database", &db.name, "--dump-to", dump.to_str().unwrap()]).assert_ok();
    let text = fs::read_to_string(&dump).unwrap();
    assert!(text.contains("in the snapshot"), "{text}");
    assert!(text.contains(&format!("OWNER TO {}", owner.name)), "{text}");
    // ... but names a role that is gone by the time it is reloaded.
    db.sql(&format!(
        "INSERT INTO t VALUES ('added after the backup');\nREASSIGN OWNED BY {0} TO CURRENT_USER;\nDROP OWNED BY {0};",
        owner.name
    ));
    db.server.sql("postgres", &format!("DROP ROLE {};", owner.name));

    let ran = holdfast(&env, &["restore", "crm", "--database", &db.name, "--reload"]);

    ran.assert_failed().assert_says("did not load").assert_says("untouched").assert_says(&owner.name);
    assert_eq!(db.sql("SELECT v FROM t ORDER BY v;"), "added after the backup\nin the snapshot\n");
    assert_eq!(
        pg_databases_starting_with(&format!("{}_", db.name)),
        Vec::<String>::new(),
        "no loaded or kept copy is left"
    );
}

#[test]
fn a_reload_that_meets_a_damaged_pack_stops_the_load_tool_and_leaves_the_live_database_untouched() {
    let env = JobEnv::new();
    let db = PgDatabase::create("damagedload");
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    db.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g;");
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();
    db.sql("INSERT INTO t VALUES (0, 'added after the backup');");
    // The dump goes straight from the repository into psql; half-way, a
    // chunk of it fails its authentication.
    let biggest_pack = walk_files(&env.repo().join("packs"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let f = fs::OpenOptions::new().read(true).write(true).open(&biggest_pack).unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x20], at).unwrap();

    let ran = holdfast(&env, &["restore", "crm", "--database", &db.name, "--reload"]);

    ran.assert_failed().assert_says("damaged chunk").assert_says("untouched");
    // psql never saw a clean end of input: nothing half-loaded took the name.
    assert_eq!(db.sql("SELECT count(*), max(v) FILTER (WHERE id = 0) FROM t;"), "100001|added after the backup\n");
    assert_eq!(
        pg_databases_starting_with(&format!("{}_", db.name)),
        Vec::<String>::new(),
        "no loaded or kept copy is left"
    );
}

#[test]
fn a_reload_stopped_by_sigterm_ends_the_load_tool_and_leaves_the_live_database_untouched() {
    let env = JobEnv::new();
    let db = PgDatabase::create("termload");
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    // Every row's check sleeps 50 ms, but only in the database a reload
    // loads into: the load takes 30 s, so psql is loading when the signal comes.
    db.sql(
        "CREATE FUNCTION slow_in_reload(i int) RETURNS boolean LANGUAGE plpgsql AS $$ \
         BEGIN IF current_database() LIKE '%_hfreload_%' THEN PERFORM pg_sleep(0.05); END IF; RETURN true; END $$;\n\
         CREATE TABLE t (id int CHECK (slow_in_reload(id)), v text);\n\
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 600) g;",
    );
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();
    db.sql("INSERT INTO t VALUES (0, 'added after the backup');");

    let mut cmd = env.cmd(["restore", "crm", "--database", &db.name, "--reload"]);
    cmd.env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE);
    let mut restore = env.start(cmd);
    let loading = format!("{}_hfreload_", db.name);
    let waited = Instant::now();
    while !pg_databases_starting_with(&format!("{}_", db.name)).iter().any(|d| d.starts_with(&loading)) {
        assert!(restore.is_running(), "the reload ended before it was loading: {:?}", restore.wait());
        assert!(waited.elapsed() < Duration::from_secs(60), "the reload never started loading");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(restore.pid() as i32), Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let ran = restore.wait();

    assert_eq!(ran.status.code(), Some(143), "{ran:?}");
    assert!(signalled.elapsed() < Duration::from_secs(15), "psql was stopped, not waited for: {ran:?}");
    assert_eq!(db.sql("SELECT count(*), max(v) FILTER (WHERE id = 0) FROM t;"), "601|added after the backup\n");
    assert_eq!(
        pg_databases_starting_with(&format!("{}_", db.name)),
        Vec::<String>::new(),
        "the half-loaded copy is dropped: {ran:?}"
    );
}

/// Every file below `dir`.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk_files(&p)) } else { out.push(p) }
    }
    out
}

// ---------------------------------------------------------------- --into

#[test]
fn into_loads_a_postgresql_dump_into_a_new_database_and_refuses_an_existing_one() {
    let env = JobEnv::new();
    let db = PgDatabase::create("into");
    db.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('in the snapshot');");
    env.config(&format!("[jobs.crm]\n{}", db.entry("crm"))).init_repo();
    env.run(&["crm"]).assert_ok();
    db.sql("INSERT INTO t VALUES ('added after the backup');");
    let new = PgName(unique("intonew"));

    let report = holdfast_json(&env, &["restore", "crm", "--database", &db.name, "--into", &new.0]);

    assert_eq!(report["target"], new.0.as_str(), "{report:#}");
    assert_eq!(db.server.sql(&new.0, "SELECT v FROM t;"), "in the snapshot\n");
    assert_eq!(db.sql("SELECT count(*) FROM t;"), "2\n", "the live database is left alone");

    let existing = PgDatabase::create("intoexisting");
    existing.sql("CREATE TABLE mine (v text);\nINSERT INTO mine VALUES ('not to be touched');");
    let ran = holdfast(&env, &["restore", "crm", "--database", &db.name, "--into", &existing.name]);
    ran.assert_failed().assert_says("already exists");
    assert_eq!(existing.sql("SELECT v FROM mine;"), "not to be touched\n");
    assert_eq!(existing.sql("SELECT count(*) FROM pg_tables WHERE tablename = 't';"), "0\n");
}

#[test]
fn into_loads_a_mariadb_dump_into_a_new_database_and_refuses_an_existing_one() {
    let env = JobEnv::new();
    let db = MyDatabase::create("into");
    db.sql("CREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('in the snapshot');");
    env.config(&format!("[jobs.shop]\n{}", db.entry("shop"))).init_repo();
    env.run(&["shop"]).assert_ok();
    db.sql("INSERT INTO t VALUES ('added after the backup');");
    let new = MyName(unique("intonew"));

    let report = holdfast_json(&env, &["restore", "shop", "--database", &db.name, "--into", &new.0]);

    assert_eq!(report["target"], new.0.as_str(), "{report:#}");
    assert_eq!(db.server.sql(Some(&new.0), "SELECT v FROM t;"), "in the snapshot\n");
    assert_eq!(db.sql("SELECT count(*) FROM t;"), "2\n", "the live database is left alone");

    let existing = MyDatabase::create("intoexisting");
    existing.sql("CREATE TABLE mine (v TEXT);\nINSERT INTO mine VALUES ('not to be touched');");
    let ran = holdfast(&env, &["restore", "shop", "--database", &db.name, "--into", &existing.name]);
    ran.assert_failed().assert_says("already exists");
    assert_eq!(existing.sql("SELECT v FROM mine;"), "not to be touched\n");
    assert_eq!(existing.sql("SHOW TABLES;"), "mine\n");
}

#[test]
fn into_restores_a_run_as_postgresql_entry_into_a_new_database() {
    let env = JobEnv::new();
    let db = PgDatabase::create("runasinto");
    db.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('dumped as postgres');");
    env.config(&format!(
        "[jobs.crm]\n[[jobs.crm.databases]]\nkind = \"postgresql\"\nname = {}\nhost = \"/var/run/postgresql\"\nport = {}\nrun_as = \"postgres\"\n",
        q(&db.name),
        db.server.port
    ))
    .init_repo();
    env.run(&["crm"]).assert_ok();
    let new = PgName(unique("runasnew"));

    let ran = holdfast(&env, &["restore", "crm", "--database", &db.name, "--into", &new.0]);

    ran.assert_ok();
    assert!(pg_has_database(&new.0), "{ran:?}");
    assert_eq!(db.server.sql(&new.0, "SELECT v FROM t;"), "dumped as postgres\n");
}

// ---------------------------------------------------------------- format = "custom"

#[test]
fn a_custom_format_postgresql_dump_reloads_with_pg_restore_and_verifies() {
    let env = JobEnv::new();
    let db = PgDatabase::create("custom");
    let _derived = PgNamesStartingWith(format!("{}_", db.name));
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);\n\
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;\n\
         CREATE INDEX t_v ON t (v);\nCREATE VIEW odd AS SELECT * FROM t WHERE id % 2 = 1;",
    );
    let checksum = "SELECT count(*), md5(string_agg(v, ',' ORDER BY id)) FROM odd;";
    let before = db.sql(checksum);
    env.config(&format!(
        "[jobs.crm]\n{}format = \"custom\"\n[[jobs.crm.databases.verify]]\nsql = \"SELECT count(*) FROM t\"\nexpect = \"= 20000\"\n",
        db.entry("crm")
    ))
    .init_repo();
    let dry = env.engine(["run", "--dry-run", "crm"]).assert().success();
    let plan = String::from_utf8_lossy(&dry.get_output().stdout).into_owned();
    assert!(plan.contains("pg_dump --format=custom --compress=0"), "the plan says how it dumps: {plan}");
    env.run(&["crm"]).assert_ok();

    // The dump in the snapshot is a pg_dump archive, uncompressed (it
    // deduplicates from run to run), that pg_restore reads.
    let dump = env.path("crm.pgdump");
    holdfast(&env, &["restore", "crm", "--database", &db.name, "--dump-to", dump.to_str().unwrap()]).assert_ok();
    let bytes = fs::read(&dump).unwrap();
    assert!(bytes.starts_with(b"PGDMP"), "a custom-format archive");
    let listed = std::process::Command::new("pg_restore").arg("--list").arg(&dump).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("Compression: none") || listed.contains("Compression: 0"), "{listed}");

    // `verify` loads it into a scratch database; `--reload` puts it in place.
    holdfast(&env, &["verify", "crm"]).assert_ok();
    db.sql("DELETE FROM t WHERE id > 100;");
    let report = holdfast_json(&env, &["restore", "crm", "--database", &db.name, "--reload"]);
    assert_eq!(report["target"], db.name.as_str(), "{report:#}");
    assert_eq!(db.sql(checksum), before, "every row, the index and the view are back");
    assert_eq!(db.sql("SELECT count(*) FROM pg_indexes WHERE indexname = 't_v';"), "1\n");
}

#[test]
fn a_custom_format_entry_run_as_postgres_restores_through_stdin() {
    let env = JobEnv::new();
    let db = PgDatabase::create("customrunas");
    db.sql("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('dumped as postgres');");
    env.config(&format!(
        "[jobs.crm]\n[[jobs.crm.databases]]\nkind = \"postgresql\"\nname = {}\nhost = \"/var/run/postgresql\"\nport = {}\nrun_as = \"postgres\"\nformat = \"custom\"\n",
        q(&db.name),
        db.server.port
    ))
    .init_repo();
    env.run(&["crm"]).assert_ok();
    let new = PgName(unique("customrunasnew"));
    holdfast(&env, &["restore", "crm", "--database", &db.name, "--into", &new.0]).assert_ok();
    assert_eq!(db.server.sql(&new.0, "SELECT v FROM t;"), "dumped as postgres\n");
}

// ---------------------------------------------------------------- --files

/// A job `app` with two file sets, `uploads` and `config`.
fn job_with_two_file_sets(env: &JobEnv) {
    fs::create_dir_all(env.path("uploads/2024")).unwrap();
    fs::write(env.path("uploads/a.txt"), "upload a\n").unwrap();
    fs::write(env.path("uploads/2024/b.txt"), "upload b\n").unwrap();
    fs::create_dir(env.path("config")).unwrap();
    fs::write(env.path("config/app.conf"), "debug = false\n").unwrap();
    env.config("[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\", \"config\"]\n").init_repo();
    env.run(&["app"]).assert_ok();
}

#[test]
fn files_restore_under_their_absolute_paths_and_path_picks_some() {
    let env = JobEnv::new();
    job_with_two_file_sets(&env);
    let out = env.path("out");

    holdfast(&env, &["restore", "app", "--files", "--to", out.to_str().unwrap()]).assert_ok();

    assert_eq!(fs::read_to_string(restored(&out, &env.path("uploads/a.txt"))).unwrap(), "upload a\n");
    assert_eq!(fs::read_to_string(restored(&out, &env.path("uploads/2024/b.txt"))).unwrap(), "upload b\n");
    assert_eq!(fs::read_to_string(restored(&out, &env.path("config/app.conf"))).unwrap(), "debug = false\n");

    let some = env.path("some");
    let uploads = env.path("uploads");
    holdfast(&env, &["restore", "app", "--files", "--path", uploads.to_str().unwrap(), "--to", some.to_str().unwrap()])
        .assert_ok();
    assert_eq!(fs::read_to_string(restored(&some, &env.path("uploads/a.txt"))).unwrap(), "upload a\n");
    assert!(!restored(&some, &env.path("config")).exists(), "only the --path file set is restored");
}

#[test]
fn files_restore_refuses_a_non_empty_directory_and_replaces_it_with_overwrite() {
    let env = JobEnv::new();
    job_with_two_file_sets(&env);
    let dest = env.path("dest");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("already-here.txt"), "mine\n").unwrap();

    let ran = holdfast(&env, &["restore", "app", "--files", "--to", dest.to_str().unwrap()]);

    ran.assert_failed().assert_says("not empty").assert_says("--overwrite");
    assert_eq!(dir_listing(&dest), ["already-here.txt"], "the directory is left alone");

    holdfast(&env, &["restore", "app", "--files", "--to", dest.to_str().unwrap(), "--overwrite"]).assert_ok();

    assert!(!dest.join("already-here.txt").exists(), "--overwrite replaces the directory");
    assert_eq!(fs::read_to_string(restored(&dest, &env.path("uploads/a.txt"))).unwrap(), "upload a\n");
    assert_eq!(fs::read_to_string(restored(&dest, &env.path("config/app.conf"))).unwrap(), "debug = false\n");
    assert_eq!(partial_dirs(&env, "dest"), Vec::<String>::new(), "no staging directory is left behind");
}

/// The names in `dir`, sorted.
fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The staging directories of a restore into `name` beside it.
fn partial_dirs(env: &JobEnv, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.holdfast-partial-");
    dir_listing(&env.path("")).into_iter().filter(|n| n.starts_with(&prefix)).collect()
}

/// Bytes allocated to the files under `dir` (0 when it is gone).
fn bytes_under(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            // Allocated, not apparent: a restore creates files at their final
            // length first and fills them in.
            Ok(_) => e.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn a_files_restore_killed_midway_leaves_the_target_as_it_was() {
    const SIZE: u64 = 150 << 20;
    let env = JobEnv::new();
    fs::create_dir(env.path("big")).unwrap();
    write_random(&env.path("big/blob"), 34, SIZE);
    env.config("[jobs.big]\n[jobs.big.files]\npaths = [\"big\"]\n").init_repo();
    env.run(&["big"]).assert_ok();
    let dest = env.path("dest");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("known.txt"), "the old content\n").unwrap();

    let mut restore = env.start(env.cmd(["restore", "big", "--files", "--overwrite", "--to", dest.to_str().unwrap()]));
    // Kill it while the staging copy is being written, well before its end.
    let end = Instant::now() + Duration::from_secs(60);
    let written = loop {
        let staged: u64 = partial_dirs(&env, "dest").iter().map(|d| bytes_under(&env.path(d))).sum();
        if staged > 0 {
            break staged;
        }
        assert!(restore.is_running(), "the restore ended before it could be caught writing");
        assert!(Instant::now() < end, "the restore never started writing");
        std::thread::sleep(Duration::from_millis(1));
    };
    kill(Pid::from_raw(restore.pid() as i32), Signal::SIGKILL).unwrap();
    let killed = restore.wait();

    assert_eq!(killed.status.code(), None, "the restore should have been killed midway: {killed:?}");
    assert!(written < SIZE / 2, "caught after only {written} bytes of {SIZE}");
    assert_eq!(dir_listing(&dest), ["known.txt"], "the target holds exactly its old content");
    assert_eq!(fs::read_to_string(dest.join("known.txt")).unwrap(), "the old content\n");
}

// ---------------------------------------------------------------- hooks

/// A job `app` with a SQLite database and a file set, whose
/// `before_restore` and `after_restore` hooks append their phase and
/// whether the restored file is in `out` to `phases`, `after_restore` its
/// `{{error}}` to `error`; `before_restore` then exits `before_exit`.
fn job_with_restore_hooks(env: &JobEnv, before_exit: i32) {
    sqlite_exec(&env.path("app.db"), "CREATE TABLE t (v);\nINSERT INTO t VALUES ('x');");
    fs::create_dir(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    let file = restored(&env.path("out"), &env.path("uploads/a.txt"));
    let probe = |phase: &str| {
        format!(
            "if [ -e {0} ]; then echo '{phase} restored' >> phases; else echo '{phase} not-restored' >> phases; fi",
            file.display()
        )
    };
    env.config(&format!(
        "[jobs.app]\n\
         [[jobs.app.hooks]]\nphase = \"before_restore\"\nrun = {}\n\n\
         [[jobs.app.hooks]]\nphase = \"after_restore\"\nrun = [\"/bin/sh\", \"-c\", {}, \"sh\", \"{{{{error}}}}\"]\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"echo finally >> run-phases\"\n\n\
         [[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n",
        q(format!("{}; exit {before_exit}", probe("before_restore"))),
        q(format!("{}; printf '%s' \"$1\" > error", probe("after_restore"))),
    ))
    .init_repo();
    env.run(&["app"]).assert_ok();
    fs::remove_file(env.path("run-phases")).unwrap();
}

#[test]
fn restore_hooks_run_before_and_after_a_restore() {
    let env = JobEnv::new();
    job_with_restore_hooks(&env, 0);

    holdfast(&env, &["restore", "app", "--files", "--to", env.path("out").to_str().unwrap()]).assert_ok();

    assert_eq!(env.lines("phases"), ["before_restore not-restored", "after_restore restored"]);
    assert_eq!(env.read("error"), "", "nothing failed");
    assert_eq!(env.read("run-phases"), "", "a restore runs no run hooks");
}

#[test]
fn after_restore_runs_also_when_the_restore_fails() {
    let env = JobEnv::new();
    job_with_restore_hooks(&env, 0);
    sqlite_exec(&env.path("existing.db"), "CREATE TABLE mine (v);");

    let ran =
        holdfast(&env, &["restore", "app", "--database", "app", "--into", env.path("existing.db").to_str().unwrap()]);

    ran.assert_failed().assert_says("already exists");
    assert_eq!(env.lines("phases"), ["before_restore not-restored", "after_restore not-restored"]);
    assert!(env.read("error").contains("already exists"), "after_restore sees the error: {:?}", env.read("error"));
    assert_eq!(sqlite_query(&env.path("existing.db"), "SELECT count(*) FROM sqlite_master;"), ["1"]);
}

#[test]
fn a_failing_before_restore_hook_stops_the_restore_and_after_restore_still_runs() {
    let env = JobEnv::new();
    job_with_restore_hooks(&env, 1);

    let ran = holdfast(&env, &["restore", "app", "--files", "--to", env.path("out").to_str().unwrap()]);

    ran.assert_failed().assert_says("before_restore hook");
    assert_eq!(env.lines("phases"), ["before_restore not-restored", "after_restore not-restored"]);
    assert!(!env.path("out").exists(), "nothing is restored");
    assert!(env.read("error").contains("before_restore hook"), "{:?}", env.read("error"));
}
