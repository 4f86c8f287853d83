//! SQLite: the online backup API (through rusqlite), which copies a
//! consistent image of the database while the application keeps writing.
//! All pages are copied in one step, under one read transaction: a writer
//! cannot force the copy to restart, and in WAL mode it is not blocked.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use super::record;
use crate::config::DatabaseConfig;
use crate::record::DumpRecord;

pub fn dump(db: &DatabaseConfig, dir: &Path, cancel: &std::sync::atomic::AtomicBool) -> Result<Vec<DumpRecord>> {
    let Some(src_path) = &db.path else { bail!("sqlite database entry {:?} has no path", db.entry_name()) };
    let started = jiff::Timestamp::now();
    let src = open_waiting(src_path, cancel, db.timeout.0)?;
    let file_name = src_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "database".into());
    let out = super::dump_file(dir, file_name.trim_start_matches('.'), "sqlite");
    let mut dst = Connection::open(&out).with_context(|| format!("creating {}", out.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .with_context(|| format!("starting the backup of {}", src_path.display()))?;
        // -1: every page in one step, under one read transaction. A writer
        // holding a lock makes the step report Busy; wait for it (bounded).
        let deadline = std::time::Instant::now() + db.timeout.0;
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).with_context(|| format!("backing up {}", src_path.display()))? {
                StepResult::Done => break,
                _ if cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                    bail!("backing up {}: interrupted", src_path.display())
                }
                _ if std::time::Instant::now() > deadline => {
                    bail!("backing up {}: the database stayed locked until the timeout", src_path.display())
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    dst.close().map_err(|(_, e)| e).with_context(|| format!("closing {}", out.display()))?;
    let version = format!("SQLite {}", rusqlite::version());
    let size = std::fs::metadata(&out).with_context(|| format!("the dump {} is missing", out.display()))?.len();
    Ok(vec![record(db, &src_path.to_string_lossy(), &out, "sqlite online backup API", &version, size, None, started)?])
}

/// Open an existing SQLite database read-only, checking that it is one.
pub fn open_existing(path: &Path) -> Result<Connection> {
    open_waiting(path, &std::sync::atomic::AtomicBool::new(false), Duration::from_secs(30))
}

/// [`open_existing`], waiting up to `timeout` while a writer holds the
/// database locked — in short steps, so `cancel` (SIGTERM) stops the wait
/// (SQLite's own busy timeout would not let it).
fn open_waiting(path: &Path, cancel: &std::sync::atomic::AtomicBool, timeout: Duration) -> Result<Connection> {
    if !path.is_file() {
        bail!("the SQLite database {} does not exist", path.display());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_millis(50))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => return Ok(conn),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline
                    && !cancel.load(std::sync::atomic::Ordering::Relaxed) => {}
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                bail!("{}: the database stayed locked by another process (or the run was interrupted)", path.display())
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context(format!("{} is not a SQLite database", path.display())));
            }
        }
    }
}

/// Copy the SQLite database file `dump` to a new database at `target`
/// through the backup API (refusing an existing target).
pub fn load(target: &Path, dump: &Path) -> Result<()> {
    if target.exists() {
        bail!("{} already exists", target.display());
    }
    let src = open_existing(dump)?;
    let mut dst = Connection::open(target).with_context(|| format!("creating {}", target.display()))?;
    let result = (|| -> Result<()> {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        while backup.step(-1)? != rusqlite::backup::StepResult::Done {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })();
    drop(dst);
    if result.is_err() {
        let _ = std::fs::remove_file(target);
    }
    result.with_context(|| format!("loading {} into {}", dump.display(), target.display()))?;
    let check: String = open_existing(target)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    // A read-only look at a WAL-mode file leaves an empty WAL and its index.
    for suffix in ["-wal", "-shm"] {
        let side = format!("{}{suffix}", target.display());
        if std::fs::metadata(&side).is_ok_and(|m| suffix == "-shm" || m.len() == 0) {
            let _ = std::fs::remove_file(&side);
        }
    }
    if check != "ok" {
        bail!("{} failed its integrity check: {check}", target.display());
    }
    Ok(())
}

/// The first column of the first row of `sql`, as text.
pub fn scalar(path: &Path, sql: &str) -> Result<Option<String>> {
    use rusqlite::types::ValueRef;
    let conn = open_existing(path)?;
    let mut stmt = conn.prepare(sql).with_context(|| format!("preparing {sql:?}"))?;
    let mut rows = stmt.query([])?;
    let Some(row) = rows.next()? else { return Ok(None) };
    Ok(match row.get_ref(0)? {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    })
}

/// Every table with its row count.
pub fn table_counts(path: &Path) -> Result<Vec<(String, u64)>> {
    let conn = open_existing(path)?;
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for n in names {
        let count: i64 =
            conn.query_row(&format!("SELECT count(*) FROM \"{}\"", n.replace('"', "\"\"")), [], |r| r.get(0))?;
        out.push((n, count as u64));
    }
    Ok(out)
}
