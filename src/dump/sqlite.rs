//! SQLite: the online backup API (through rusqlite), which copies a
//! consistent image of the database while the application keeps writing.
//! All pages are copied in one step, under one read transaction: a writer
//! cannot force the copy to restart, and in WAL mode it is not blocked.
//!
//! A `stream = true` entry needs no spool: its pages are read in order
//! under one read transaction through SQLite's `sqlite_dbpage` table (the
//! pages the backup API would copy, WAL content included) and stored as
//! they come, making the same database file.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use super::{DumpContext, DumpInput, DumpSink, record};
use crate::config::DatabaseConfig;
use crate::record::DumpRecord;

pub fn dump(db: &DatabaseConfig, dir: &Path, ctx: &DumpContext) -> Result<Vec<DumpRecord>> {
    let Some(src_path) = &db.path else { bail!("sqlite database entry {:?} has no path", db.entry_name()) };
    let started = jiff::Timestamp::now();
    let src = open_waiting(src_path, ctx.cancel, db.timeout.0)?;
    let file_name = src_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "database".into());
    let out = super::dump_file(dir, file_name.trim_start_matches('.'), "sqlite");
    let version = format!("SQLite {}", rusqlite::version());
    if let Some(sink) = ctx.stream.filter(|_| db.stream) {
        let stored_as = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let size = stream_pages(&src, src_path, db, sink, &stored_as, ctx.cancel)?;
        let tool = "sqlite_dbpage, streamed";
        return Ok(vec![record(db, &src_path.to_string_lossy(), &out, tool, &version, size, None, started)?]);
    }
    let cancel = ctx.cancel;
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
    let size = std::fs::metadata(&out).with_context(|| format!("the dump {} is missing", out.display()))?.len();
    Ok(vec![record(db, &src_path.to_string_lossy(), &out, "sqlite online backup API", &version, size, None, started)?])
}

/// Store every page of `src` through `sink`, in order, under the one read
/// transaction of a single statement; the bytes stored. A writer holding
/// the database locked when the read starts is waited for (up to the
/// entry's timeout).
fn stream_pages(
    src: &Connection,
    src_path: &Path,
    db: &DatabaseConfig,
    sink: &dyn DumpSink,
    stored_as: &str,
    cancel: &AtomicBool,
) -> Result<u64> {
    let mut stmt = src.prepare("SELECT pgno, data FROM sqlite_dbpage").map_err(|e| {
        anyhow::anyhow!(
            "streaming {}: {e} (this holdfast was built without SQLite's sqlite_dbpage table; set `stream = false`)",
            src_path.display()
        )
    })?;
    let mut rows = stmt.query([])?;
    // The first row takes the read lock: wait for a writer here, before
    // anything is stored.
    let deadline = std::time::Instant::now() + db.timeout.0;
    let first = loop {
        match rows.next() {
            Ok(row) => break row.map(|r| Ok::<_, rusqlite::Error>((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline
                    && !cancel.load(Ordering::Relaxed) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {}", src_path.display()))),
        }
    };
    let Some(first) = first else { bail!("{} has no pages", src_path.display()) };
    let (pgno, mut page) = first.with_context(|| format!("reading {}", src_path.display()))?;
    if pgno != 1 || page.len() < 100 {
        bail!("reading {}: the first page is not the database header", src_path.display());
    }
    // The copy is a database on its own: a rollback-journal file, whatever
    // journal mode the live one uses (its WAL content is in the pages).
    page[18] = 1;
    page[19] = 1;
    let mut pages = PageReader { rows, page, pos: 0, next_pgno: 2, failed: None };
    let stored = sink.store(&db.entry_name(), stored_as, &mut pages, cancel);
    if let Some(e) = pages.failed.take() {
        return Err(e.context(format!("streaming {}", src_path.display())));
    }
    stored.with_context(|| format!("streaming {}", src_path.display()))
}

/// The pages of a `SELECT pgno, data FROM sqlite_dbpage` as one byte
/// stream. A read error ends the stream as an error, kept in `failed` too
/// (a sink's own error would hide it).
struct PageReader<'s> {
    rows: rusqlite::Rows<'s>,
    page: Vec<u8>,
    pos: usize,
    next_pgno: i64,
    failed: Option<anyhow::Error>,
}

impl Read for PageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.page.len() {
            let next = match self.rows.next() {
                Ok(None) => return Ok(0),
                Ok(Some(row)) => row.get::<_, i64>(0).and_then(|n| Ok((n, row.get::<_, Vec<u8>>(1)?))),
                Err(e) => Err(e),
            };
            match next {
                Ok((pgno, data)) if pgno == self.next_pgno => {
                    self.next_pgno += 1;
                    self.page = data;
                    self.pos = 0;
                }
                Ok((pgno, _)) => {
                    self.failed = Some(anyhow::anyhow!("page {pgno} came where page {} was due", self.next_pgno));
                    return Err(std::io::Error::other("pages out of order"));
                }
                Err(e) => {
                    let message = e.to_string();
                    self.failed = Some(e.into());
                    return Err(std::io::Error::other(message));
                }
            }
        }
        let n = buf.len().min(self.page.len() - self.pos);
        buf[..n].copy_from_slice(&self.page[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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

/// Make a new database at `target` (refusing an existing one) from a dump:
/// a file is copied through the backup API; a stream, being the database
/// file itself, is written there directly. Either way the result must pass
/// SQLite's integrity check.
pub fn load(target: &Path, dump: &DumpInput) -> Result<()> {
    if target.exists() {
        bail!("{} already exists", target.display());
    }
    let result = match dump {
        DumpInput::File(file) => copy_database(file, target),
        DumpInput::Stream { feed, .. } => write_database(target, *feed),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(target);
    }
    result.with_context(|| format!("loading the dump into {}", target.display()))?;
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

/// Copy the database `file` to the new `target` through the backup API.
fn copy_database(file: &Path, target: &Path) -> Result<()> {
    let src = open_existing(file)?;
    let mut dst = Connection::open(target).with_context(|| format!("creating {}", target.display()))?;
    let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
    while backup.step(-1)? != rusqlite::backup::StepResult::Done {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Write the database file `feed` gives to the new `target`, durably.
fn write_database(target: &Path, feed: &dyn Fn(&mut dyn std::io::Write) -> Result<()>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .with_context(|| format!("creating {}", target.display()))?;
    feed(&mut f)?;
    f.sync_all().with_context(|| format!("writing {}", target.display()))?;
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
