//! Getting an application back: restore a job's files, or reload one of its
//! databases from a snapshot's dump, as one declarative step.
//!
//! `before_restore` hooks run first (stop the application), `after_restore`
//! hooks last — also when the restore failed. Files are restored through a
//! staging directory and renamed into place. A database is loaded into a new
//! name (`--into`), written out (`--dump-to`), or reloaded over the live one
//! (`--reload`): loaded into a temporary database first and swapped in only
//! when that load succeeded, the old one kept under a dated name.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::config::{DatabaseConfig, DatabaseKind, Job, Phase, RepositoryConfig, SmokeQuery};
use crate::dump::{DumpContext, DumpInput, Server, major_version};
use crate::engine::crypto::Id;
use crate::engine::repository::Repository;
use crate::engine::restore::{RestoreOptions, RestoreSummary, extract_file, restore_staged};
use crate::engine::snapshot::Snapshot;
use crate::record::{DumpRecord, RunRecord};
use crate::secrets::open_repository;

use crate::spool::{JobLock, RunDir};
use crate::template::Vars;

/// What to restore.
#[derive(Debug, Clone)]
pub enum What {
    Files { paths: Vec<PathBuf>, to: PathBuf, overwrite: bool },
    Database { name: String, action: DatabaseAction },
}

#[derive(Debug, Clone)]
pub enum DatabaseAction {
    Into(String),
    Reload,
    DumpTo(PathBuf),
}

/// The result of one smoke query.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeResult {
    pub sql: String,
    pub expect: String,
    pub value: Option<String>,
    pub ok: bool,
}

impl std::fmt::Display for SmokeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "smoke {}: {} -> {} (expected {})",
            if self.ok { "ok" } else { "FAILED" },
            self.sql,
            self.value.as_deref().unwrap_or("no value"),
            self.expect
        )
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RestoreReport {
    pub job: String,
    pub snapshot: String,
    pub files: Option<RestoreSummary>,
    pub database: Option<String>,
    /// Where the data went: a directory, a database, a file.
    pub target: String,
    /// After `--reload`: the old database's new name.
    pub kept_as: Option<String>,
    pub smoke: Vec<SmokeResult>,
    pub warnings: Vec<String>,
}

/// The job's snapshot named by `spec` (`latest` = the job's newest; while
/// a snapshot cannot be read it might be that one, so `latest` fails unless
/// `skip_damaged`).
pub fn job_snapshot(repo: &Repository, job: &Job, spec: &str, skip_damaged: bool) -> Result<(Id, Snapshot, RunRecord)> {
    let (id, snap) = if spec == "latest" {
        let (snaps, unreadable) = repo.snapshots()?;
        let mine = |s: &Snapshot| crate::record::RunRecord::of(s).is_some_and(|r| r.job == job.name);
        crate::engine::repository::newest(snaps, &unreadable, skip_damaged, mine)
            .ok_or_else(|| anyhow!("job {:?} has no snapshot in its repository yet", job.name))??
    } else {
        repo.find_snapshot(spec, skip_damaged)?
    };
    let record = crate::record::RunRecord::of(&snap)
        .filter(|r| r.job == job.name)
        .ok_or_else(|| anyhow!("snapshot {} was not made by job {:?}", id.short(), job.name))?;
    Ok((id, snap, record))
}

/// What `--database` takes to name a PostgreSQL server's roles dump
/// (`pg_dumpall --globals-only`) even when a database is named `globals`.
pub const SERVER_GLOBALS_NAME: &str = "%globals";

/// The dump of database `name` (a database name, an entry, or
/// [`SERVER_GLOBALS_NAME`]) in a run record.
pub fn find_dump<'a>(record: &'a RunRecord, name: &str) -> Result<&'a DumpRecord> {
    let dumps = &record.databases;
    let hits: Vec<&DumpRecord> = if name == SERVER_GLOBALS_NAME {
        dumps.iter().filter(|d| d.is_server_globals()).collect()
    } else {
        let named: Vec<&DumpRecord> = dumps.iter().filter(|d| d.name == name).collect();
        // The roles dump is named `globals` too; a database of that name wins.
        let databases: Vec<&DumpRecord> = named.iter().copied().filter(|d| !d.is_server_globals()).collect();
        if !databases.is_empty() {
            databases
        } else if !named.is_empty() {
            named
        } else {
            dumps.iter().filter(|d| d.entry == name).collect()
        }
    };
    fn shown<'d>(d: &&'d DumpRecord) -> &'d str {
        if d.is_server_globals() { SERVER_GLOBALS_NAME } else { &d.name }
    }
    match hits.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "the snapshot holds no dump of {name:?}; it holds: {}",
            dumps.iter().map(|d| shown(&d)).collect::<Vec<_>>().join(", ")
        ),
        many => bail!(
            "{name:?} names several dumps ({}); name one database",
            many.iter().map(shown).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The job's configuration of the entry a dump came from.
pub fn dump_config<'a>(job: &'a Job, dump: &DumpRecord) -> Result<&'a DatabaseConfig> {
    job.databases.iter().find(|d| d.entry_name() == dump.entry).ok_or_else(|| {
        anyhow!("the job no longer configures database entry {:?}; add it back to restore from it", dump.entry)
    })
}

/// The job's repository named `from`, or its first: restores and restore
/// tests read from there (an off-site copy when the first is lost, or to
/// prove that the off-site copy restores).
pub fn job_repository<'a>(job: &'a Job, from: Option<&str>) -> Result<&'a RepositoryConfig> {
    match from {
        None => Ok(&job.repositories[0]),
        Some(n) => job.repositories.iter().find(|r| r.name == n).ok_or_else(|| {
            let names: Vec<&str> = job.repositories.iter().map(|r| r.name.as_str()).collect();
            anyhow!("job {:?} does not use repository {n:?}; it uses {}", job.name, names.join(", "))
        }),
    }
}

/// Which snapshot of a job to restore from, and from where.
#[derive(Debug, Clone, Default)]
pub struct Source<'a> {
    /// One of the job's repositories (else its first).
    pub repository: Option<&'a str>,
    /// A snapshot id prefix, or `latest`.
    pub snapshot: &'a str,
    /// `latest` may skip snapshots that cannot be read.
    pub skip_damaged: bool,
}

/// Restore `what` from the job's snapshot `source`, from its first
/// repository or the one named there (an off-site copy, when the first is lost).
pub fn restore_job(
    job: &Job,
    source: &Source,
    what: &What,
    cancel: &std::sync::Arc<AtomicBool>,
) -> Result<RestoreReport> {
    let _lock = JobLock::acquire(&job.spool, &job.name, "restore")?;
    let repo_cfg = job_repository(job, source.repository)?;
    let repo = open_repository(repo_cfg)?;
    let (id, snap, record) = job_snapshot(&repo, job, source.snapshot, source.skip_damaged)?;
    let mut vars = Vars {
        job: job.name.clone(),
        run_id: record.run_id.clone(),
        snapshot: id.to_hex(),
        time: jiff::Timestamp::now().to_string(),
        host: crate::engine::running::hostname(),
        ..Default::default()
    };
    let never = AtomicBool::new(false);
    let mut report = RestoreReport { job: job.name.clone(), snapshot: id.to_hex(), ..Default::default() };
    crate::hooks::around(job, (Phase::BeforeRestore, Phase::AfterRestore), &mut vars, &never, || match what {
        What::Files { paths, to, overwrite } => {
            let target = Target { to, overwrite: *overwrite, protected: job.protected.clone(), cancel };
            restore_files(&repo, &snap, &record, paths, &target, &mut report)
        }
        What::Database { name, action } => {
            let dump = find_dump(&record, name)?;
            restore_database(job, &repo, &snap, dump, action, cancel, &mut report)
        }
    })?;
    Ok(report)
}

/// Where restored files go, and what that place must not destroy.
struct Target<'a> {
    to: &'a Path,
    overwrite: bool,
    /// Repositories, spool, state, config: never replaced.
    protected: Vec<(String, PathBuf)>,
    cancel: &'a std::sync::Arc<AtomicBool>,
}

fn restore_files(
    repo: &Repository,
    snap: &Snapshot,
    record: &RunRecord,
    paths: &[PathBuf],
    target: &Target,
    report: &mut RestoreReport,
) -> Result<()> {
    let include: Vec<PathBuf> = if paths.is_empty() {
        record.file_sets.iter().flat_map(|f| f.paths.iter().cloned()).collect()
    } else {
        paths.to_vec()
    };
    if include.is_empty() {
        bail!("the snapshot holds no file sets");
    }
    let threads = crate::engine::parallel::cpus();
    let opts = RestoreOptions {
        target: target.to.to_path_buf(),
        include,
        threads,
        cancel: Some(target.cancel.clone()),
        progress: None,
    };
    let summary = restore_staged(repo, snap, &opts, target.overwrite, &target.protected)?;
    report.warnings.extend(summary.warnings.iter().cloned());
    report.files = Some(summary);
    report.target = target.to.display().to_string();
    Ok(())
}

/// A private scratch directory in the job's spool, removed on drop.
pub struct Scratch(pub RunDir);

impl Scratch {
    pub fn new(job: &Job, what: &str) -> Result<Scratch> {
        let name = format!("{what}-{}", Id::random()?.short());
        Ok(Scratch(RunDir::create(&job.spool, &job.name, &name)?))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

/// Hand a snapshot's dump to `load` the way that needs least: straight out
/// of the repository into the load tool (or, for SQLite, into the new
/// database file), using no spool space — except a PostgreSQL custom-format
/// dump that fits the spool, written there first so that `pg_restore
/// --jobs` reads it on every core.
pub fn with_dump_input<T>(
    repo: &Repository,
    snap: &Snapshot,
    dump: &DumpRecord,
    db: &DatabaseConfig,
    scratch: &Scratch,
    load: impl FnOnce(&DumpInput) -> Result<T>,
) -> Result<T> {
    let name = Path::new(&dump.file).file_name().context("dump record without a file name")?.to_string_lossy();
    if name.ends_with(".pgdump")
        && db.run_as.is_none()
        && crate::fsutil::has_room(&scratch.0.dumps, dump.size, 64 << 20)
    {
        let file = extract_dump(repo, snap, dump, &scratch.0.dumps)?;
        return load(&DumpInput::File(&file));
    }
    let feed = |out: &mut dyn std::io::Write| -> Result<()> {
        let plain_sql = name.ends_with(".sql") && !dump.is_server_globals();
        let mut guarded;
        let out: &mut dyn std::io::Write = if plain_sql {
            guarded = crate::dump::OneDatabase::new(out, dump.kind);
            &mut guarded
        } else {
            out
        };
        extract_file(repo, snap, Path::new(&dump.file), out)
            .with_context(|| format!("reading {} from the repository", dump.file))?;
        Ok(())
    };
    load(&DumpInput::Stream { name: &name, feed: &feed })
}

/// Write a dump out of the snapshot into the scratch directory `dir` for a
/// load tool that needs a file it can seek in; returns its path. Not
/// fsynced: the load reads it back at once from memory, and a crash ends
/// the load, which starts over from the repository.
fn extract_dump(repo: &Repository, snap: &Snapshot, dump: &DumpRecord, dir: &Path) -> Result<PathBuf> {
    let name = Path::new(&dump.file).file_name().context("dump record without a file name")?;
    let out = dir.join(name);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, crate::fsutil::create_private(&out)?);
    extract_file(repo, snap, Path::new(&dump.file), &mut f)?;
    f.into_inner().map_err(|e| e.into_error())?;
    Ok(out)
}

fn timestamp() -> String {
    jiff::Timestamp::now().strftime("%Y%m%d%H%M%S").to_string()
}

/// A database name derived from `base`, at most 63 bytes (PostgreSQL's limit).
fn derived_name(base: &str, suffix: &str) -> String {
    let keep = 63usize.saturating_sub(suffix.len());
    let mut b: String = base.chars().take(keep).collect();
    while b.len() > keep {
        b.pop();
    }
    format!("{b}{suffix}")
}

fn restore_database(
    job: &Job,
    repo: &Repository,
    snap: &Snapshot,
    dump: &DumpRecord,
    action: &DatabaseAction,
    cancel: &AtomicBool,
    report: &mut RestoreReport,
) -> Result<()> {
    report.database = Some(dump.name.clone());
    if let DatabaseAction::DumpTo(file) = action {
        // The dump is the database: private (0600) from its first byte. A
        // dump that fails half-way is removed, never left looking whole.
        let mut f = crate::fsutil::create_private(file)
            .with_context(|| format!("creating {} (it must not exist)", file.display()))?;
        if let Err(e) = extract_file(repo, snap, Path::new(&dump.file), &mut f)
            .and_then(|_| f.sync_all().map_err(|e| crate::Error::io(file, e)))
        {
            drop(f);
            let _ = std::fs::remove_file(file);
            return Err(e.into());
        }
        report.target = file.display().to_string();
        return Ok(());
    }
    let db = dump_config(job, dump)?;
    let server = Server::of(db)?;
    if let (Some(made), Ok(Some(now))) = (&dump.server_version, server.server_version())
        && let (Some(a), Some(b)) = (major_version(made), major_version(&now))
        && b < a
    {
        let w = format!("the dump was made by server version {made}; restoring into older {now} may fail");
        tracing::warn!("{w}");
        report.warnings.push(w);
    }
    let scratch = Scratch::new(job, "restore")?;
    with_dump_input(repo, snap, dump, db, &scratch, |file| {
        let ctx = DumpContext { run: &scratch.0, cancel, stream: None };
        load_database(db, dump, &server, &ctx, file, action, report)
    })?;
    if let Some(bad) = report.smoke.iter().find(|s| !s.ok) {
        bail!("{bad}");
    }
    Ok(())
}

/// Load `file` as `action` says, on `server`.
fn load_database(
    db: &DatabaseConfig,
    dump: &DumpRecord,
    server: &Server,
    ctx: &DumpContext,
    file: &DumpInput,
    action: &DatabaseAction,
    report: &mut RestoreReport,
) -> Result<()> {
    let live = match db.kind {
        DatabaseKind::Sqlite => db.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        _ => dump.name.clone(),
    };
    match action {
        DatabaseAction::Into(new) => {
            if server.exists(new)? {
                bail!("{new:?} already exists; choose a new name (restore never overwrites with --into)");
            }
            if let Err(e) = server.load(new, dump.owner.as_deref(), file, ctx, db.timeout.0) {
                let _ = server.drop_database(new);
                return Err(e.context(format!("loading the dump into {new:?} failed; {new:?} was removed")));
            }
            report.target = new.clone();
            report.smoke = smoke_queries(server, new, &db.verify);
        }
        DatabaseAction::Reload => {
            let stamp = timestamp();
            let (loaded, keep) = match db.kind {
                DatabaseKind::Sqlite => (format!("{live}.hfreload-{stamp}"), format!("{live}.before-{stamp}")),
                _ => (
                    derived_name(&live, &format!("_hfreload_{stamp}")),
                    derived_name(&live, &format!("_before_{stamp}")),
                ),
            };
            // Names of someone else's (or of a reload in the same second):
            // never loaded into, and never dropped on a failure.
            for taken in [&loaded, &keep] {
                if server.exists(taken)? {
                    bail!("{taken:?} exists already; the live database {live:?} is untouched (try again in a second)");
                }
            }
            let live_exists = server.exists(&live)?;
            // The copy takes the place of the live database: its owner, else
            // the one the dump was made of.
            let owner = server.database_owner(&live)?.or_else(|| dump.owner.clone());
            if let Err(e) = server.load(&loaded, owner.as_deref(), file, ctx, db.timeout.0) {
                let _ = server.drop_database(&loaded);
                return Err(e.context(match live_exists {
                    true => format!("the dump did not load; the live database {live:?} is untouched"),
                    false => format!("the dump did not load; there is no database {live:?} and none was made"),
                }));
            }
            if !server.exists(&live)? {
                // Nothing to swap with: the loaded copy simply takes the name.
                server.swap_missing(&live, &loaded)?;
            } else if let Server::Mysql(conn) = server
                && (conn.has_non_table_objects(&live)? || conn.has_non_table_objects(&loaded)?)
            {
                // Views, routines, triggers and events cannot be renamed into
                // another database: keep a full copy of the live one first, then
                // load the (proven loadable) dump under the live name.
                reload_mysql_by_copy(db, conn, &live, &loaded, &keep, file, ctx)?;
                tracing::warn!("the previous {live:?} is kept as {keep:?}; drop it when you are satisfied");
                report.kept_as = Some(keep);
            } else {
                server.swap(&live, &loaded, &keep)?;
                tracing::warn!("the previous {live:?} is kept as {keep:?}; drop it when you are satisfied");
                report.kept_as = Some(keep);
            }
            report.target = live.clone();
            report.smoke = smoke_queries(server, &live, &db.verify);
        }
        DatabaseAction::DumpTo(_) => {}
    }
    Ok(())
}

/// MySQL reload for databases with more than tables: copy live → `keep`
/// (its dump piped straight into the load, no spool space), then recreate
/// live from the snapshot's dump. The old state exists in `keep` before live
/// is touched; a copy that fails leaves live untouched and no `keep`.
fn reload_mysql_by_copy(
    db: &DatabaseConfig,
    conn: &crate::dump::mysql::Connection,
    live: &str,
    loaded: &str,
    keep: &str,
    dump: &DumpInput,
    ctx: &DumpContext,
) -> Result<()> {
    // A whole copy: not the entry's `dump_args`, which may leave tables
    // or rows out (`--ignore-table`, `--where`) of what is about to be dropped.
    let live_cfg = DatabaseConfig {
        name: Some(live.to_string()),
        entry: Some("live".into()),
        stream: true,
        dump_args: Vec::new(),
        ..db.clone()
    };
    let dir = ctx.run.dumps.join("live");
    crate::spool::ensure_private_dir(&dir)?;
    let into_keep = LoadInto { conn, name: keep, ctx, timeout: db.timeout.0 };
    let copy_ctx = DumpContext { stream: Some(&into_keep), ..*ctx };
    if let Err(e) = crate::dump::mysql::dump(&live_cfg, &dir, &copy_ctx) {
        let _ = conn.drop_database(keep);
        let _ = conn.drop_database(loaded);
        return Err(e.context(format!("copying the live database to {keep:?}; the live database is untouched")));
    }
    conn.drop_database(live)?;
    conn.load(live, dump, ctx, db.timeout.0).with_context(|| {
        format!("loading the snapshot into {live:?} failed after it was emptied; its previous state is in {keep:?}")
    })?;
    conn.drop_database(loaded)
}

/// A database dump loaded into MySQL database `name` as it is made: the
/// [`DumpSink`](crate::dump::DumpSink) of a copy from one database to
/// another. A dump that fails after part of it was loaded fails the copy
/// (the dump's own outcome is checked after the load).
struct LoadInto<'a> {
    conn: &'a crate::dump::mysql::Connection,
    name: &'a str,
    ctx: &'a DumpContext<'a>,
    timeout: std::time::Duration,
}

impl crate::dump::DumpSink for LoadInto<'_> {
    fn store(&self, _entry: &str, file_name: &str, reader: &mut dyn std::io::Read, _: &AtomicBool) -> Result<u64> {
        let reader = std::cell::RefCell::new(reader);
        let copied = std::cell::Cell::new(0);
        let feed = |out: &mut dyn std::io::Write| -> Result<()> {
            copied.set(std::io::copy(&mut *reader.borrow_mut(), out)?);
            Ok(())
        };
        self.conn.load(self.name, &DumpInput::Stream { name: file_name, feed: &feed }, self.ctx, self.timeout)?;
        Ok(copied.get())
    }
}

/// Run smoke queries against database `name`.
pub fn smoke_queries(server: &Server, name: &str, queries: &[SmokeQuery]) -> Vec<SmokeResult> {
    queries
        .iter()
        .map(|q| {
            let value = server.scalar(name, &q.sql);
            let ok = value.as_ref().is_ok_and(|v| q.expect.check(v.as_deref()));
            let value = match value {
                Ok(v) => v,
                Err(e) => Some(format!("error: {e:#}")),
            };
            SmokeResult { sql: q.sql.clone(), expect: q.expect.to_string(), value, ok }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{SERVER_GLOBALS_NAME, find_dump};
    use crate::record::RunRecord;

    fn record(dumps: &[(&str, &str, &str)]) -> RunRecord {
        let databases: Vec<serde_json::Value> = dumps
            .iter()
            .map(|(entry, name, tool)| {
                serde_json::json!({
                    "entry": entry, "kind": "postgresql", "name": name, "file": format!("/x/{name}.sql"),
                    "tool": tool, "tool_version": "16", "server_version": null,
                    "started": "2026-12-07T00:00:00Z", "finished": "2026-12-07T00:00:01Z", "size": 1,
                })
            })
            .collect();
        let value = serde_json::json!({
            "job": "shop", "run_id": "r", "databases": databases, "file_sets": [], "hooks": [],
        });
        serde_json::from_value(value).expect("a run record")
    }

    #[test]
    fn a_database_named_globals_and_the_roles_dump_are_each_reachable() {
        let both = record(&[("pg", "globals", "pg_dumpall"), ("pg", "globals", "pg_dump"), ("pg", "shop", "pg_dump")]);
        assert_eq!(find_dump(&both, "globals").map(|d| d.tool.as_str()).ok(), Some("pg_dump"));
        assert_eq!(find_dump(&both, SERVER_GLOBALS_NAME).map(|d| d.tool.as_str()).ok(), Some("pg_dumpall"));
        assert_eq!(find_dump(&both, "shop").map(|d| d.name.as_str()).ok(), Some("shop"));
        // Without such a database, the plain name still finds the roles.
        let roles_only = record(&[("pg", "globals", "pg_dumpall"), ("pg", "shop", "pg_dump")]);
        assert_eq!(find_dump(&roles_only, "globals").map(|d| d.tool.as_str()).ok(), Some("pg_dumpall"));
        // An entry name that covers several databases asks for one of them.
        let err = find_dump(&both, "pg").expect_err("pg names three dumps").to_string();
        assert!(err.contains("%globals") && err.contains("shop"), "{err}");
        let err = find_dump(&both, "nope").expect_err("no such dump").to_string();
        assert!(err.contains("%globals, globals, shop"), "{err}");
    }
}
