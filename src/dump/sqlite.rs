//! SQLite: the online backup API (through rusqlite), which copies a
//! consistent image of the database while the application keeps writing.
//! All pages are copied in one step, under one read transaction: a writer
//! cannot force the copy to restart, and in WAL mode it is not blocked.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use super::{DumpRecord, record};
use crate::config::DatabaseConfig;

pub fn dump(db: &DatabaseConfig, dir: &Path) -> Result<Vec<DumpRecord>> {
    let Some(src_path) = &db.path else { bail!("sqlite database entry {:?} has no path", db.entry_name()) };
    let started = jiff::Timestamp::now();
    let src = open_existing(src_path)?;
    let file_name = src_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "database".into());
    let out = super::dump_file(dir, file_name.trim_start_matches('.'), "sqlite");
    let mut dst = Connection::open(&out).with_context(|| format!("creating {}", out.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .with_context(|| format!("starting the backup of {}", src_path.display()))?;
        // -1: every page in one step, under one read transaction. A writer
        // holding a lock makes the step report Busy; wait for it (bounded).
        let deadline = std::time::Instant::now() + db.timeout();
        loop {
            use rusqlite::backup::StepResult;
            match backup.step(-1).with_context(|| format!("backing up {}", src_path.display()))? {
                StepResult::Done => break,
                _ if std::time::Instant::now() > deadline => {
                    bail!("backing up {}: the database stayed locked until the timeout", src_path.display())
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    dst.close().map_err(|(_, e)| e).with_context(|| format!("closing {}", out.display()))?;
    let version = format!("SQLite {}", rusqlite::version());
    Ok(vec![record(db, &src_path.to_string_lossy(), &out, "sqlite online backup API", &version, None, started)?])
}

/// Open an existing SQLite database read-only, checking that it is one.
pub fn open_existing(path: &Path) -> Result<Connection> {
    if !path.is_file() {
        bail!("the SQLite database {} does not exist", path.display());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
        .with_context(|| format!("{} is not a SQLite database", path.display()))?;
    Ok(conn)
}
