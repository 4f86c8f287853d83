//! PostgreSQL: `pg_dump` in plain SQL (it dedups from day to day; the engine
//! compresses) or, with `format = "custom"`, its uncompressed archive format
//! (reloaded by `pg_restore --jobs`), `pg_dumpall --globals-only` for roles and tablespaces when
//! the entry is `all`, and a tokio-postgres connection to discover databases
//! and read the server version.
//!
//! Connection settings: the entry's `host`, `port`, `user`, else the usual
//! `PGHOST`, `PGPORT`, `PGUSER`, else the local socket directory (or
//! 127.0.0.1), 5432 and `postgres`. A password goes to the tools through a
//! private `.pgpass` file in the spool (`PGPASSFILE`).

use std::path::Path;

use anyhow::{Context, Result};

use super::{DumpContext, DumpInput, dump_file, password, record, run_tool, runtime, tool_version};
use crate::config::{DatabaseConfig, DumpFormat};
use crate::process::Env;
use crate::record::DumpRecord;

/// Resolved connection settings.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// Queries and tools run as this OS user (peer authentication).
    pub run_as: Option<String>,
}

impl Connection {
    pub fn of(db: &DatabaseConfig) -> Result<Connection> {
        let host = db.host.clone().or_else(|| std::env::var("PGHOST").ok()).unwrap_or_else(|| {
            if Path::new("/var/run/postgresql/.s.PGSQL.5432").exists() {
                "/var/run/postgresql".into()
            } else {
                "127.0.0.1".into()
            }
        });
        let port = db.port.or_else(|| std::env::var("PGPORT").ok().and_then(|p| p.parse().ok())).unwrap_or(5432);
        let user = db.user.clone().or_else(|| std::env::var("PGUSER").ok()).unwrap_or_else(|| "postgres".into());
        Ok(Connection { host, port, user, password: password(db)?, run_as: db.run_as.clone() })
    }

    /// Connect to `dbname` and run `f` with the client.
    pub fn with_client<T>(
        &self,
        dbname: &str,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let rt = runtime()?;
        rt.block_on(async {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(&self.host).port(self.port).user(&self.user).dbname(dbname);
            cfg.connect_timeout(std::time::Duration::from_secs(15));
            cfg.application_name("holdfast");
            if let Some(p) = &self.password {
                cfg.password(p);
            }
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.with_context(|| {
                format!("connecting to PostgreSQL at {}:{} as {} (database {dbname})", self.host, self.port, self.user)
            })?;
            let task = tokio::spawn(conn);
            let out = f(&client).await.with_context(|| format!("querying PostgreSQL database {dbname}"));
            drop(client);
            let _ = task.await;
            out
        })
    }

    pub fn server_version(&self, dbname: &str) -> Result<String> {
        const SQL: &str = "SHOW server_version";
        if self.run_as.is_some() {
            return Ok(self.psql_lines(dbname, SQL)?.join(""));
        }
        self.with_client(dbname, async |c| Ok(c.query_one(SQL, &[]).await?.get::<_, String>(0)))
    }

    /// Every database that accepts connections, templates excluded.
    pub fn databases(&self) -> Result<Vec<String>> {
        const SQL: &str = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname";
        if self.run_as.is_some() {
            return self.psql_lines("postgres", SQL);
        }
        self.with_client("postgres", async |c| {
            Ok(c.query(SQL, &[]).await?.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }

    /// One query through `psql` run as the `run_as` user: how holdfast asks a
    /// server that only knows that user by peer authentication.
    fn psql_lines(&self, dbname: &str, sql: &str) -> Result<Vec<String>> {
        let spec = crate::process::ProcessSpec {
            argv: vec![
                "psql".into(),
                "-X".into(),
                "-A".into(),
                "-t".into(),
                "-q".into(),
                "--no-password".into(),
                format!("--host={}", self.host),
                format!("--port={}", self.port),
                format!("--username={}", self.user),
                dbname_arg(dbname),
                "-c".into(),
                sql.into(),
            ],
            timeout: std::time::Duration::from_secs(60),
            user: self.run_as.clone(),
            ..Default::default()
        };
        let out = crate::process::run(&spec, &std::sync::atomic::AtomicBool::new(false)).context("running psql")?;
        if !out.success() {
            anyhow::bail!("{}", out.failure_message("psql"));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    /// Arguments shared by the tools, and their environment.
    fn tool_args(&self, ctx: &DumpContext) -> Result<(Vec<String>, Env)> {
        let args = vec![
            "--no-password".into(),
            format!("--host={}", self.host),
            format!("--port={}", self.port),
            format!("--username={}", self.user),
        ];
        let mut env = vec![("PGCONNECT_TIMEOUT".to_string(), "15".to_string())];
        if let (Some(pw), Some(_)) = (&self.password, &self.run_as) {
            // A file in the spool is private to holdfast, so a tool running as
            // another user gets the password through its environment (which
            // only that user and root can read), never argv.
            env.push(("PGPASSWORD".into(), pw.clone()));
        } else if let Some(pw) = &self.password {
            let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
            // For this server only: a connection elsewhere gets no password.
            // libpq matches a socket in its default directory as `localhost`.
            let mut hosts = vec![escape(&self.host)];
            if self.host.starts_with('/') {
                hosts.push("localhost".into());
            }
            let line: String = hosts
                .iter()
                .map(|host| format!("{host}:{}:*:{}:{}\n", self.port, escape(&self.user), escape(pw)))
                .collect();
            let file = ctx.run.write_private(&format!("pgpass-{}", unique()), line.as_bytes())?;
            env.push(("PGPASSFILE".into(), file.to_string_lossy().into_owned()));
        }
        Ok((args, env))
    }
}

/// `--dbname=` for a database *name*. The tools read a `--dbname` holding
/// `=` (or a URI) as a whole connection string, so a database someone named
/// `host=elsewhere dbname=x` would send the dump, and the password, to
/// another server: the name goes in as the quoted value of `dbname=`.
fn dbname_arg(name: &str) -> String {
    format!("--dbname=dbname='{}'", name.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

pub fn dump(db: &DatabaseConfig, dir: &Path, ctx: &DumpContext) -> Result<Vec<DumpRecord>> {
    let conn = Connection::of(db)?;
    let (base_args, env) = conn.tool_args(ctx)?;
    let pg_dump_version = tool_version("pg_dump")?;
    let mut records = Vec::new();
    let names = if db.is_all() {
        let started = jiff::Timestamp::now();
        let globals = dir.join(super::SERVER_GLOBALS_FILE);
        let mut argv = vec!["pg_dumpall".to_string(), "--globals-only".into()];
        argv.extend(base_args.iter().cloned());
        let size = run_tool(argv, env.clone(), &globals, db, ctx)?;
        let v = tool_version("pg_dumpall")?;
        records.push(record(
            db,
            "globals",
            &globals,
            "pg_dumpall",
            &v,
            size,
            Some(conn.server_version("postgres")?),
            started,
        )?);
        conn.databases()?
    } else {
        vec![db.name.clone().unwrap_or_default()]
    };
    for name in names {
        let started = jiff::Timestamp::now();
        let server = conn.server_version(&name)?;
        // Only a help for loading it later: a backup does not fail for it.
        let owner = conn.database_owner(&name).unwrap_or_else(|e| {
            tracing::warn!("the owner of {name:?} cannot be read, a load will not give it back: {e:#}");
            None
        });
        let (out, format) = match db.format {
            DumpFormat::Plain => (dump_file(dir, &name, "sql"), "--format=plain"),
            // Uncompressed: the engine compresses, and chunks dedup from run to run.
            DumpFormat::Custom => (dump_file(dir, &name, "pgdump"), "--format=custom"),
        };
        let mut argv = vec!["pg_dump".to_string(), format.into()];
        if db.format == DumpFormat::Custom {
            argv.push("--compress=0".into());
        }
        argv.extend(base_args.iter().cloned());
        argv.extend(db.dump_args.iter().cloned());
        argv.push(dbname_arg(&name));
        let size = run_tool(argv, env.clone(), &out, db, ctx)?;
        let mut dumped = record(db, &name, &out, "pg_dump", &pg_dump_version, size, Some(server), started)?;
        dumped.owner = owner;
        records.push(dumped);
    }
    Ok(records)
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether PostgreSQL stores setting `name` as a list of quoted elements
/// (`search_path` and the like), which a string literal would not give back.
fn is_list_setting(name: &str) -> bool {
    const QUOTED_LISTS: [&str; 6] = [
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    ];
    QUOTED_LISTS.iter().any(|list| list.eq_ignore_ascii_case(name))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings).
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One entry of a database's ACL; `grantee` `None` is PUBLIC.
#[derive(Debug, Clone, PartialEq)]
struct Grant {
    privilege: String,
    grantee: Option<String>,
    grantable: bool,
    grantor: String,
}

/// `grants` in an order they can be given in: a role grants a privilege
/// only once it holds it with the grant option (the owner always does).
/// Entries that never can (a damaged chain) come last, as they were.
fn in_grant_order(mut grants: Vec<Grant>, owner: &str) -> Vec<Grant> {
    let mut ordered = Vec::with_capacity(grants.len());
    let mut holders: Vec<(String, String)> = Vec::new();
    loop {
        let can = |g: &Grant| g.grantor == owner || holders.iter().any(|(r, p)| *r == g.grantor && *p == g.privilege);
        let Some(at) = grants.iter().position(can) else { break };
        let g = grants.remove(at);
        if let (true, Some(grantee)) = (g.grantable, &g.grantee) {
            holders.push((grantee.clone(), g.privilege.clone()));
        }
        ordered.push(g);
    }
    ordered.extend(grants);
    ordered
}

impl Connection {
    pub fn exists(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.with_client("postgres", async move |c| {
            Ok(c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some())
        })
    }

    pub fn execute(&self, dbname: &str, sql: &str) -> Result<()> {
        let sql = sql.to_string();
        self.with_client(dbname, async move |c| c.batch_execute(&sql).await)
    }

    /// The first column of the first row of `sql`, as text.
    pub fn scalar(&self, dbname: &str, sql: &str) -> Result<Option<String>> {
        let sql = sql.to_string();
        self.with_client(dbname, async move |c| {
            for msg in c.simple_query(&sql).await? {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
                    return Ok(row.get(0).map(str::to_string));
                }
            }
            Ok(None)
        })
    }

    /// Every base table outside the system schemas, with its exact row count.
    pub fn table_counts(&self, dbname: &str) -> Result<Vec<(String, u64)>> {
        self.with_client(dbname, async |c| {
            let tables = c
                .query(
                    "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
                     AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
                    &[],
                )
                .await?;
            let mut out = Vec::new();
            for t in tables {
                let (schema, table): (String, String) = (t.get(0), t.get(1));
                let sql = format!("SELECT count(*) FROM {}.{}", quote_ident(&schema), quote_ident(&table));
                let n: i64 = c.query_one(&sql, &[]).await?.get(0);
                out.push((format!("{schema}.{table}"), n as u64));
            }
            Ok(out)
        })
    }

    /// Create database `name` and load the dump `file` into it, stopping at
    /// the first error: a plain SQL dump with `psql` in one transaction, a
    /// custom-format one (found by its `PGDMP` header) with `pg_restore`,
    /// on every core when holdfast itself can hand it the file.
    ///
    /// The new database gets role `owner` when holdfast's role has that
    /// role's privileges (is it, inherits from it, or is a superuser): in
    /// PostgreSQL 15's default `public` schema only the database's owner may
    /// create, so a role that is not a superuser could not otherwise give
    /// the application's tables back to their owner. Without those
    /// privileges it is holdfast's own, and always its own to drop.
    pub fn load(
        &self,
        name: &str,
        owner: Option<&str>,
        dump: &DumpInput,
        ctx: &DumpContext,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let name_sql = quote_ident(name);
        let owner = match owner {
            Some(role) => self.scalar(
                "postgres",
                &format!(
                    "SELECT rolname FROM pg_roles WHERE rolname = {} AND pg_has_role(oid, 'USAGE')",
                    sql_literal(role)
                ),
            )?,
            None => None,
        };
        match owner {
            Some(owner) => {
                self.execute("postgres", &format!("CREATE DATABASE {name_sql} OWNER {}", quote_ident(&owner)))
            }
            None => self.execute("postgres", &format!("CREATE DATABASE {name_sql}")),
        }?;
        // Only its owner and superusers may connect while the data goes in:
        // by default every role may. A reload's swap puts the live
        // database's grants back (or PUBLIC's, when it had the defaults).
        self.execute("postgres", &format!("REVOKE CONNECT, TEMPORARY ON DATABASE {name_sql} FROM PUBLIC"))?;
        let (args, env) = self.tool_args(ctx)?;
        let (custom, parallel_from) = match dump {
            // A `run_as` user cannot open the private dump: it reads it on
            // stdin, where pg_restore cannot work in parallel.
            DumpInput::File(file) => (is_custom_format(file)?, self.run_as.is_none().then_some(*file)),
            DumpInput::Stream { name, .. } => (name.ends_with(".pgdump"), None),
        };
        let mut argv = if custom {
            let mut argv = vec!["pg_restore".to_string(), "--exit-on-error".into()];
            if let Some(file) = parallel_from {
                argv.push(format!("--jobs={}", crate::engine::parallel::cpus().clamp(1, 8)));
                argv.push(file.display().to_string());
            }
            argv
        } else {
            vec![
                "psql".to_string(),
                "-X".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "--single-transaction".into(),
            ]
        };
        argv.extend(args);
        argv.push(dbname_arg(name));
        let tool = argv[0].clone();
        let spec = crate::process::ProcessSpec {
            argv,
            env,
            timeout,
            user: self.run_as.clone(),
            stdout_file: Some(std::path::PathBuf::from("/dev/null")),
            cwd: self.run_as.as_ref().map(|_| std::path::PathBuf::from("/")),
            track_in: Some(ctx.run.children.clone()),
            ..Default::default()
        };
        if custom && parallel_from.is_some() {
            let out = crate::process::run(&spec, ctx.cancel).with_context(|| format!("running {tool}"))?;
            if !out.success() {
                anyhow::bail!("{}", out.failure_message(&tool));
            }
            return Ok(());
        }
        // holdfast opens the dump: a `run_as` user cannot read the spool.
        super::run_loader(spec, dump, ctx.cancel)
    }

    /// The owner of database `name`, if there is one.
    pub fn database_owner(&self, name: &str) -> Result<Option<String>> {
        let sql = format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {}", sql_literal(name));
        if self.run_as.is_some() {
            return Ok(self.psql_lines("postgres", &sql)?.into_iter().next());
        }
        self.scalar("postgres", &sql)
    }

    pub fn drop_database(&self, name: &str) -> Result<()> {
        self.execute("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)))
    }

    /// Put `loaded` in the place of `live`; the old database is kept as
    /// `keep_as`. Connections to `live` are ended first.
    pub fn swap(&self, live: &str, loaded: &str, keep_as: &str) -> Result<()> {
        let untouched = |e: anyhow::Error| match self.drop_database(loaded) {
            Ok(()) => e.context(format!("the live database {live:?} is untouched; the loaded copy was dropped")),
            Err(why) => e.context(format!(
                "the live database {live:?} is untouched; the loaded copy {loaded:?} is left behind and could not be \
                 dropped ({}): drop it by hand",
                crate::units::error_text(&why)
            )),
        };
        self.copy_database_setup(live, loaded).map_err(untouched)?;
        // A session in either database would stop its rename.
        self.execute(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname IN ({}, {}) AND pid <> pg_backend_pid()",
                sql_literal(live),
                sql_literal(loaded)
            ),
        )
        .map_err(untouched)?;
        self.execute("postgres", &format!("ALTER DATABASE {} RENAME TO {}", quote_ident(live), quote_ident(keep_as)))
            .map_err(untouched)?;
        if let Err(e) =
            self.execute("postgres", &format!("ALTER DATABASE {} RENAME TO {}", quote_ident(loaded), quote_ident(live)))
        {
            let back = self.execute(
                "postgres",
                &format!("ALTER DATABASE {} RENAME TO {}", quote_ident(keep_as), quote_ident(live)),
            );
            return Err(match back {
                Ok(()) => untouched(e),
                Err(_) => {
                    let _ = self.drop_database(loaded);
                    e.context(format!("the live database {live:?} is now named {keep_as:?}; rename it back"))
                }
            });
        }
        Ok(())
    }
}

impl Connection {
    /// Give `loaded` the name `live`, which is free: with the grants a new
    /// database has (the load took PUBLIC's away).
    pub fn rename_missing(&self, live: &str, loaded: &str) -> Result<()> {
        let loaded = quote_ident(loaded);
        self.execute(
            "postgres",
            &format!(
                "GRANT CONNECT, TEMPORARY ON DATABASE {loaded} TO PUBLIC;\nALTER DATABASE {loaded} RENAME TO {}",
                quote_ident(live)
            ),
        )
    }

    /// Give `loaded` what the live database has that a dump (made without
    /// `--create`) leaves out, so the application finds it as before: its
    /// owner (where the copy was not created with it already), its GRANTs (`CONNECT`,
    /// `CREATE`, `TEMPORARY`, each by its own grantor, so a later `REVOKE …
    /// CASCADE` still reaches what was passed on; one revoked from PUBLIC
    /// stays revoked), its connection limit and comment, and its `ALTER
    /// DATABASE … SET` and `ALTER ROLE … IN DATABASE … SET` settings (some
    /// of which are access rules: `default_transaction_read_only`, `role`).
    /// All or nothing: what cannot be copied fails the reload.
    ///
    /// The copy's own grants and database settings go first: its owner (the
    /// live database's, see [`Connection::load`]) could connect during the
    /// load.
    fn copy_database_setup(&self, live: &str, loaded: &str) -> Result<()> {
        let (live, copy, target) = (live.to_string(), loaded.to_string(), quote_ident(loaded));
        self.with_client("postgres", async move |c| {
            let Some(db) = c
                .query_opt(
                    "SELECT pg_get_userbyid(datdba), datacl IS NOT NULL, datconnlimit, \
                     shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
                    &[&live],
                )
                .await?
            else {
                return Ok(());
            };
            let (owner, own_grants, limit, comment): (String, bool, i32, Option<String>) =
                (db.get(0), db.get(1), db.get(2), db.get(3));
            // The literals below double their quotes and nothing else.
            let mut sql = format!(
                "SET standard_conforming_strings = on;\nALTER DATABASE {target} OWNER TO {};\n\
                 ALTER DATABASE {target} CONNECTION LIMIT {limit};\n",
                quote_ident(&owner)
            );
            if let Some(comment) = comment {
                sql += &format!("COMMENT ON DATABASE {target} IS {};\n", sql_literal(&comment));
            }
            let mut grantees = vec!["PUBLIC".to_string(), quote_ident(&owner)];
            let on_copy = c
                .query(
                    "SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_database d, aclexplode(d.datacl) a \
                     WHERE d.datname = $1 AND a.grantee <> 0",
                    &[&copy],
                )
                .await?;
            for grantee in on_copy.iter().map(|r| quote_ident(&r.get::<_, String>(0))) {
                if !grantees.contains(&grantee) {
                    grantees.push(grantee);
                }
            }
            sql += &format!("ALTER DATABASE {target} RESET ALL;\nREVOKE ALL ON DATABASE {target} FROM {} CASCADE;\n", grantees.join(", "));
            // A role's own settings in the copy (`ALTER ROLE CURRENT_USER IN
            // DATABASE`, which needs no privilege) stay: they touch only its
            // own sessions, as they would in the live database.
            // No ACL of its own means the defaults: the owner may do all,
            // every role connect and make temporary tables.
            if !own_grants {
                sql += &format!(
                    "GRANT ALL ON DATABASE {target} TO {};\nGRANT CONNECT, TEMPORARY ON DATABASE {target} TO PUBLIC;\n",
                    quote_ident(&owner)
                );
            } else {
                let rows = c
                    .query(
                        "SELECT a.privilege_type, a.grantee = 0, pg_get_userbyid(a.grantee), a.is_grantable, \
                         pg_get_userbyid(a.grantor) FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
                        &[&live],
                    )
                    .await?;
                let grants = rows
                    .iter()
                    .map(|g| Grant {
                        privilege: g.get(0),
                        grantee: if g.get::<_, bool>(1) { None } else { Some(g.get(2)) },
                        grantable: g.get(3),
                        grantor: g.get(4),
                    })
                    .collect();
                for g in in_grant_order(grants, &owner) {
                    let to = g.grantee.as_deref().map_or("PUBLIC".to_string(), quote_ident);
                    let option = if g.grantable { " WITH GRANT OPTION" } else { "" };
                    let grant = format!("GRANT {} ON DATABASE {target} TO {to}{option};\n", g.privilege);
                    sql += &match g.grantor == owner {
                        true => grant,
                        false => format!("SET ROLE {};\n{grant}RESET ROLE;\n", quote_ident(&g.grantor)),
                    };
                }
            }
            let settings = c
                .query(
                    "SELECT s.setrole = 0, pg_get_userbyid(s.setrole), unnest(s.setconfig) \
                     FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = $1",
                    &[&live],
                )
                .await?;
            for s in settings {
                let (all_roles, role, setting): (bool, String, String) = (s.get(0), s.get(1), s.get(2));
                let Some((name, value)) = setting.split_once('=') else { continue };
                let scope = match all_roles {
                    true => format!("DATABASE {target}"),
                    false => format!("ROLE {} IN DATABASE {target}", quote_ident(&role)),
                };
                sql += &if is_list_setting(name) {
                    // Stored already quoted, element by element: taken as it
                    // is through this session's own value.
                    format!(
                        "SELECT pg_catalog.set_config({}, {}, false);\nALTER {scope} SET {} FROM CURRENT;\nRESET {2};\n",
                        sql_literal(name),
                        sql_literal(value),
                        quote_ident(name)
                    )
                } else {
                    format!("ALTER {scope} SET {} TO {};\n", quote_ident(name), sql_literal(value))
                };
            }
            c.batch_execute(&sql).await?;
            Ok(())
        })
        .context("giving the reloaded database the live one's owner, grants and settings")
    }

    /// Bytes the database takes on the server.
    pub fn database_size(&self, name: &str) -> Result<u64> {
        let name = name.to_string();
        self.with_client("postgres", async move |c| {
            let n: i64 = c.query_one("SELECT pg_database_size($1)", &[&name]).await?.get(0);
            Ok(n.max(0) as u64)
        })
    }

    /// Tables of `dbname` that this role cannot SELECT (pg_dump would fail on them).
    pub fn unreadable_tables(&self, dbname: &str) -> Result<Vec<String>> {
        self.with_client(dbname, async |c| {
            let rows = c
                .query(
                    "SELECT schemaname || '.' || tablename FROM pg_tables \
                     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
                     AND NOT has_table_privilege(current_user, format('%I.%I', schemaname, tablename), 'SELECT') \
                     ORDER BY 1",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }
}

/// Whether `file` is a pg_dump archive (custom format) rather than SQL text.
pub fn is_custom_format(file: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 5];
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let n = f.read(&mut head).with_context(|| format!("reading {}", file.display()))?;
    Ok(n == head.len() && &head == b"PGDMP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_are_told_apart_and_literals_quoted() {
        assert!(is_list_setting("search_path") && is_list_setting("Temp_Tablespaces"));
        assert!(!is_list_setting("DateStyle") && !is_list_setting("work_mem"));
        assert_eq!(sql_literal("it's"), "'it''s'");
    }

    #[test]
    fn a_grant_passed_on_comes_after_the_grant_that_allows_it() {
        let grant = |privilege: &str, grantee: Option<&str>, grantable, grantor: &str| Grant {
            privilege: privilege.into(),
            grantee: grantee.map(str::to_string),
            grantable,
            grantor: grantor.into(),
        };
        let bob = grant("CONNECT", Some("bob"), false, "alice");
        let carol = grant("CONNECT", Some("carol"), true, "bob");
        let alice = grant("CONNECT", Some("alice"), true, "owner");
        let public = grant("TEMPORARY", None, false, "owner");
        let ordered = in_grant_order(vec![bob.clone(), carol.clone(), alice.clone(), public.clone()], "owner");
        assert_eq!(ordered, [alice, bob, public, carol], "carol's grantor bob holds no grant option: last");
    }
}
