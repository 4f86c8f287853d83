//! MySQL and MariaDB: `mariadb-dump` (or `mysqldump`) with
//! `--single-transaction`, routines, triggers and events; a mysql_async
//! connection to discover databases and read the server version.
//!
//! Connection settings: the entry's `host`, `port`, `user`, else
//! `MYSQL_HOST`, `MYSQL_TCP_PORT`, `USER`-less default `root`, else
//! 127.0.0.1 and 3306. A password goes to the tool through a private options
//! file in the spool (`--defaults-extra-file`), never argv.

use std::path::Path;

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;

use super::{DumpContext, DumpInput, dump_file, password, record, run_tool, runtime, tool_version};
use crate::config::DatabaseConfig;
use crate::process::find_program;
use crate::record::DumpRecord;

/// Schemas that belong to the server, not to an application.
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "performance_schema", "mysql", "sys"];

#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

impl Connection {
    pub fn of(db: &DatabaseConfig) -> Result<Connection> {
        let host = db.host.clone().or_else(|| std::env::var("MYSQL_HOST").ok()).unwrap_or_else(|| "127.0.0.1".into());
        let port =
            db.port.or_else(|| std::env::var("MYSQL_TCP_PORT").ok().and_then(|p| p.parse().ok())).unwrap_or(3306);
        let user = db.user.clone().unwrap_or_else(|| "root".into());
        Ok(Connection { host, port, user, password: password(db)? })
    }

    fn opts(&self, dbname: Option<&str>) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.clone())
            .db_name(dbname.map(str::to_string))
            .into()
    }

    /// Connect and run `f` with the connection.
    pub fn with_conn<T>(
        &self,
        dbname: Option<&str>,
        f: impl AsyncFnOnce(&mut mysql_async::Conn) -> Result<T, mysql_async::Error>,
    ) -> Result<T> {
        runtime()?.block_on(async {
            let mut conn =
                tokio::time::timeout(std::time::Duration::from_secs(15), mysql_async::Conn::new(self.opts(dbname)))
                    .await
                    .map_err(|_| anyhow::anyhow!("timed out"))
                    .and_then(|r| r.map_err(anyhow::Error::from))
                    .with_context(|| format!("connecting to MySQL at {}:{} as {}", self.host, self.port, self.user))?;
            let out = f(&mut conn).await.context("querying MySQL");
            let _ = conn.disconnect().await;
            out
        })
    }

    /// A private options file with the user and password, for the client
    /// tools' `--defaults-extra-file` (so the password is never in argv).
    fn options_file(&self, ctx: &DumpContext, name: &str) -> Result<std::path::PathBuf> {
        let cnf = format!(
            "[client]\nuser={}\n{}",
            option_value(&self.user),
            self.password.as_deref().map(|p| format!("password={}\n", option_value(p))).unwrap_or_default()
        );
        ctx.run.write_private(name, cnf.as_bytes())
    }

    pub fn server_version(&self) -> Result<String> {
        self.with_conn(None, async |c| Ok(c.query_first::<String, _>("SELECT VERSION()").await?.unwrap_or_default()))
    }

    /// Application databases (system schemas excluded).
    pub fn databases(&self) -> Result<Vec<String>> {
        let all: Vec<String> = self.with_conn(None, async |c| c.query("SHOW DATABASES").await)?;
        Ok(all.into_iter().filter(|d| !SYSTEM_SCHEMAS.contains(&d.as_str())).collect())
    }
}

/// `mariadb-dump` where it exists, else `mysqldump`.
pub fn dump_tool() -> &'static str {
    if find_program("mariadb-dump").is_some() { "mariadb-dump" } else { "mysqldump" }
}

/// An option file value: quoted, with backslashes and quotes escaped.
fn option_value(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn dump(db: &DatabaseConfig, dir: &Path, ctx: &DumpContext) -> Result<Vec<DumpRecord>> {
    let conn = Connection::of(db)?;
    let tool = dump_tool();
    let version = tool_version(tool)?;
    let server = conn.server_version()?;
    // The options file must be the first argument.
    let mut base = Vec::new();
    let mut env = Vec::new();
    if db.run_as.is_some() {
        // The spool is private to holdfast: a tool running as another user
        // gets the password through its environment, never argv.
        base.push(format!("--user={}", conn.user));
        if let Some(p) = &conn.password {
            env.push(("MYSQL_PWD".to_string(), p.clone()));
        }
    } else {
        let cnf_path = conn.options_file(ctx, &format!("my-{}.cnf", db.entry_name()))?;
        base.push(format!("--defaults-extra-file={}", cnf_path.display()));
    }
    base.extend([
        "--single-transaction".to_string(),
        "--routines".into(),
        "--triggers".into(),
        "--events".into(),
        "--hex-blob".into(),
        "--protocol=TCP".into(),
        format!("--host={}", conn.host),
        format!("--port={}", conn.port),
    ]);
    base.extend(db.dump_args.iter().cloned());
    let names = if db.is_all() { conn.databases()? } else { vec![db.name.clone().unwrap_or_default()] };
    let mut records = Vec::new();
    for name in names {
        let started = jiff::Timestamp::now();
        let out = dump_file(dir, &name, "sql");
        let mut argv = vec![tool.to_string()];
        argv.extend(base.iter().cloned());
        // Without --databases the dump has no CREATE DATABASE/USE, so it loads
        // into any database: the original, a new name, or a scratch copy.
        argv.push("--".into());
        argv.push(name.clone());
        let size =
            run_tool(argv, env.clone(), &out, db, ctx).with_context(|| format!("dumping MySQL database {name}"))?;
        records.push(record(db, &name, &out, tool, &version, size, Some(server.clone()), started)?);
    }
    Ok(records)
}

/// `FLUSH TABLES WITH READ LOCK`, held over holdfast's own connection by a
/// thread until [`GlobalReadLock::release`] (or drop) — also when the run
/// fails. [`GlobalReadLock::check`] proves the session (and so the lock) is
/// still there.
pub struct GlobalReadLock {
    commands: Option<std::sync::mpsc::Sender<LockCommand>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum LockCommand {
    Check(std::sync::mpsc::Sender<Result<(), String>>),
}

impl GlobalReadLock {
    /// Take the lock; returns once it is held.
    pub fn acquire(db: &DatabaseConfig) -> Result<GlobalReadLock> {
        let conn = Connection::of(db)?;
        let (held_tx, held_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<LockCommand>();
        let thread = std::thread::spawn(move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = held_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let mut c = match rt.block_on(async {
                let mut c = mysql_async::Conn::new(conn.opts(None)).await?;
                c.query_drop("FLUSH TABLES WITH READ LOCK").await?;
                Ok::<_, mysql_async::Error>(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    let _ =
                        held_tx.send(Err(format!("taking the global read lock on {}:{}: {e}", conn.host, conn.port)));
                    return;
                }
            };
            let _ = held_tx.send(Ok(()));
            // Serve checks until released (the sender dropped).
            while let Ok(LockCommand::Check(reply)) = cmd_rx.recv() {
                let alive = rt.block_on(c.query_drop("DO 1")).map_err(|e| {
                    format!("the global read lock's session on {}:{} was lost: {e}", conn.host, conn.port)
                });
                let _ = reply.send(alive);
            }
            rt.block_on(async {
                let _ = c.query_drop("UNLOCK TABLES").await;
                let _ = c.disconnect().await;
            });
        });
        match held_rx.recv() {
            Ok(Ok(())) => Ok(GlobalReadLock { commands: Some(cmd_tx), thread: Some(thread) }),
            Ok(Err(e)) => Err(anyhow::anyhow!(e)),
            Err(_) => Err(anyhow::anyhow!("the global read lock thread ended unexpectedly")),
        }
    }

    /// Fails if the lock's session is gone (the lock with it).
    pub fn check(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = self.commands.as_ref().map(|c| c.send(LockCommand::Check(tx)).is_ok()).unwrap_or(false);
        match (sent, rx.recv()) {
            (true, Ok(r)) => r.map_err(anyhow::Error::msg),
            _ => Err(anyhow::anyhow!("the global read lock's thread ended; the lock is gone")),
        }
    }

    /// Unlock and close the connection.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        drop(self.commands.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GlobalReadLock {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// `` `name` `` with embedded backticks doubled: a safe identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn value_text(v: &mysql_async::Value) -> Option<String> {
    use mysql_async::Value;
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

impl Connection {
    pub fn exists(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.with_conn(None, async move |c| {
            let n: Option<i64> =
                c.exec_first("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?", (name,)).await?;
            Ok(n.unwrap_or(0) > 0)
        })
    }

    pub fn execute(&self, sql: &str) -> Result<()> {
        let sql = sql.to_string();
        self.with_conn(None, async move |c| c.query_drop(sql).await)
    }

    /// The first column of the first row of `sql`, as text.
    pub fn scalar(&self, dbname: &str, sql: &str) -> Result<Option<String>> {
        let sql = sql.to_string();
        self.with_conn(Some(dbname), async move |c| {
            let row: Option<mysql_async::Row> = c.query_first(sql).await?;
            Ok(row.and_then(|r| r.as_ref(0).and_then(value_text)))
        })
    }

    fn tables(&self, dbname: &str) -> Result<Vec<String>> {
        let name = dbname.to_string();
        self.with_conn(None, async move |c| {
            c.exec(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY 1",
                (name,),
            )
            .await
        })
    }

    /// Whether the database has views, routines, triggers or events, which
    /// `RENAME TABLE` cannot move to another database.
    pub fn has_non_table_objects(&self, dbname: &str) -> Result<bool> {
        let name = dbname.to_string();
        self.with_conn(None, async move |c| {
            let n: Option<i64> = c
                .exec_first(
                    "SELECT (SELECT COUNT(*) FROM information_schema.views WHERE table_schema = ?) \
                     + (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = ?) \
                     + (SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = ?) \
                     + (SELECT COUNT(*) FROM information_schema.events WHERE event_schema = ?)",
                    (name.clone(), name.clone(), name.clone(), name),
                )
                .await?;
            Ok(n.unwrap_or(0) > 0)
        })
    }

    pub fn table_counts(&self, dbname: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for t in self.tables(dbname)? {
            let n = self.scalar(dbname, &format!("SELECT COUNT(*) FROM {}", quote_ident(&t)))?;
            out.push((t, n.and_then(|n| n.parse().ok()).unwrap_or(0)));
        }
        Ok(out)
    }

    /// Create database `name` and load the dump `file` into it with the
    /// `mariadb`/`mysql` client (the password through a private options file).
    pub fn load(&self, name: &str, dump: &DumpInput, ctx: &DumpContext, timeout: std::time::Duration) -> Result<()> {
        self.execute(&format!("CREATE DATABASE {}", quote_ident(name)))?;
        let client = if find_program("mariadb").is_some() { "mariadb" } else { "mysql" };
        let cnf_path = self.options_file(ctx, &format!("my-load-{}.cnf", name.replace('/', "_")))?;
        let spec = crate::process::ProcessSpec {
            argv: vec![
                client.to_string(),
                format!("--defaults-extra-file={}", cnf_path.display()),
                "--protocol=TCP".into(),
                format!("--host={}", self.host),
                format!("--port={}", self.port),
                format!("--database={name}"),
            ],
            timeout,
            track_in: Some(ctx.run.children.clone()),
            ..Default::default()
        };
        super::run_loader(spec, dump, ctx.cancel)
    }

    pub fn drop_database(&self, name: &str) -> Result<()> {
        self.execute(&format!("DROP DATABASE IF EXISTS {}", quote_ident(name)))
    }

    /// Put the tables of `loaded` in the place of `live`'s in one atomic
    /// `RENAME TABLE`; `live`'s old tables move to the new database `keep_as`.
    /// Only for databases of plain tables: views, routines, triggers and
    /// events cannot move across databases, and `restore` reloads such
    /// databases by copying instead (see `restore::reload_mysql_by_copy`).
    pub fn swap(&self, live: &str, loaded: &str, keep_as: &str) -> Result<()> {
        self.execute(&format!("CREATE DATABASE {}", quote_ident(keep_as)))?;
        let mut renames: Vec<String> = self
            .tables(live)?
            .iter()
            .map(|t| format!("{}.{} TO {}.{}", quote_ident(live), quote_ident(t), quote_ident(keep_as), quote_ident(t)))
            .collect();
        renames.extend(self.tables(loaded)?.iter().map(|t| {
            format!("{}.{} TO {}.{}", quote_ident(loaded), quote_ident(t), quote_ident(live), quote_ident(t))
        }));
        if !renames.is_empty() {
            self.execute(&format!("RENAME TABLE {}", renames.join(", ")))?;
        }
        self.drop_database(loaded)
    }
}

impl Connection {
    /// Bytes of data and indexes of the database's tables.
    pub fn database_size(&self, name: &str) -> Result<u64> {
        let name = name.to_string();
        self.with_conn(None, async move |c| {
            let n: Option<Option<u64>> = c
                .exec_first(
                    "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED) FROM information_schema.tables WHERE table_schema = ?",
                    (name,),
                )
                .await?;
            Ok(n.flatten().unwrap_or(0))
        })
    }
}
