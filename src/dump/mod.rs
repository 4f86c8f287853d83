//! Database dumps, each with the database's own consistent method.
//!
//! A driver dumps one configured database entry into its directory in the
//! spool and reports what it did ([`DumpRecord`]): which tool and version,
//! which server version, when the dump started and ended, how large it is.
//! Passwords reach the tools through private files in the spool (`.pgpass`,
//! a MySQL options file) and never through argv; no driver logs one.

pub mod mysql;
pub mod postgres;
pub mod sqlite;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};

use crate::config::{DatabaseConfig, DatabaseKind};
use crate::process::{self, Env, ProcessOutcome, ProcessSpec};
use crate::record::{DumpRecord, SNAPSHOT_PREFIX};
use crate::spool::RunDir;

/// Everything a driver needs for one run.
pub struct DumpContext<'a> {
    pub run: &'a RunDir,
    pub cancel: &'a AtomicBool,
    /// Where the dumps of `stream = true` entries go instead of the spool.
    pub stream: Option<&'a dyn DumpSink>,
}

/// Where a streamed dump goes: stored as it comes out of its tool, as file
/// `file_name` of entry `entry`'s directory in the snapshot.
pub trait DumpSink: Sync {
    /// Store all `reader` gives; the bytes stored. `cancel` set: stop.
    fn store(&self, entry: &str, file_name: &str, reader: &mut dyn Read, cancel: &AtomicBool) -> Result<u64>;
}

/// Dump the database entry `db` into `<run>/dumps/<entry>/`.
pub fn dump(db: &DatabaseConfig, ctx: &DumpContext) -> Result<Vec<DumpRecord>> {
    let dir = ctx.run.dumps.join(db.entry_name());
    crate::spool::ensure_private_dir(&dir)?;
    match db.kind {
        DatabaseKind::Postgresql => postgres::dump(db, &dir, ctx),
        DatabaseKind::Mysql => mysql::dump(db, &dir, ctx),
        DatabaseKind::Sqlite => sqlite::dump(db, &dir, ctx),
    }
}

/// The password of a database entry, from its file or environment variable.
pub fn password(db: &DatabaseConfig) -> Result<Option<String>> {
    if let Some(f) = &db.password_file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading the password file {}", f.display()))?;
        return Ok(Some(s.trim_end_matches(['\n', '\r']).to_string()));
    }
    if let Some(var) = &db.password_env {
        return match std::env::var(var) {
            Ok(v) => Ok(Some(v)),
            Err(_) => bail!("the environment variable {var} (password_env) is not set"),
        };
    }
    Ok(None)
}

/// Run a dump tool with its stdout going to `out`, a file holdfast itself
/// creates (so it stays private to holdfast when the tool runs as the
/// entry's `run_as` user), or, for a `stream = true` entry, through a pipe
/// into the repository (nothing in the spool). Its failure fails the dump
/// with the tool's own message, also after its output was stored. The
/// dump's size.
pub(crate) fn run_tool(argv: Vec<String>, env: Env, out: &Path, db: &DatabaseConfig, ctx: &DumpContext) -> Result<u64> {
    let tool = argv.first().cloned().unwrap_or_default();
    let mut spec = ProcessSpec {
        argv,
        env,
        timeout: db.timeout.0,
        stdout_file: Some(out.to_path_buf()),
        user: db.run_as.clone(),
        // Another user may not be able to enter holdfast's working directory.
        cwd: db.run_as.as_ref().map(|_| std::path::PathBuf::from("/")),
        track_in: Some(ctx.run.children.clone()),
        ..Default::default()
    };
    let (outcome, size) = match ctx.stream.filter(|_| db.stream) {
        Some(sink) => {
            spec.stdout_file = None;
            let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            run_streamed(spec, &db.entry_name(), &file_name, sink, ctx.cancel)?
        }
        None => {
            let outcome = process::run(&spec, ctx.cancel).with_context(|| format!("starting {tool}"))?;
            let size = std::fs::metadata(out)
                .map(|m| m.len())
                .with_context(|| format!("the dump {} is missing", out.display()));
            (outcome, size)
        }
    };
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!("{tool}: {}", crate::units::hide_credentials(line));
    }
    if !outcome.success() {
        bail!("{}", outcome.failure_message(&tool));
    }
    size
}

/// Run `spec` with its stdout in a pipe that `sink` stores. The tool is
/// stopped when the run is cancelled or storing fails; the pipe ends when
/// the tool has exited. The outcome, and what storing gave (checked after
/// the tool's own failure, which says more).
fn run_streamed(
    mut spec: ProcessSpec,
    entry: &str,
    file_name: &str,
    sink: &dyn DumpSink,
    cancel: &AtomicBool,
) -> Result<(ProcessOutcome, Result<u64>)> {
    let tool = spec.argv.first().cloned().unwrap_or_default();
    let (mut reader, writer) = std::io::pipe().context("making a pipe for a streamed dump")?;
    crate::fsutil::widen_pipe(std::os::fd::AsFd::as_fd(&reader));
    spec.stdout_pipe = Some(std::sync::Arc::new(writer.into()));
    let (outcome, stored) = run_beside(spec, cancel, move |stop| {
        let stored = sink.store(entry, file_name, &mut reader, stop);
        if stored.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        stored
    })?;
    // Storing failed and so the tool was stopped: that failure is the
    // cause, not the tool's end.
    match stored {
        Err(e) if !cancel.load(std::sync::atomic::Ordering::Relaxed) => Err(e.context(format!("{tool} was stopped"))),
        stored => Ok((outcome, stored)),
    }
}

/// Run `spec` on a thread of its own while `work` runs on this one, with a
/// `stop` flag that stops the tool (also set when the run is cancelled).
/// The spec, and with it the tool's end of a pipe, is dropped as soon as
/// the tool has exited, so that `work` sees the pipe close instead of
/// blocking. `work`'s own end of the pipe goes where `work` puts it:
/// dropped inside it, or returned to outlive the tool.
fn run_beside<W>(
    spec: ProcessSpec,
    cancel: &AtomicBool,
    work: impl FnOnce(&AtomicBool) -> W,
) -> Result<(ProcessOutcome, W)> {
    use std::sync::atomic::Ordering;
    let tool = spec.argv.first().cloned().unwrap_or_default();
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let (outcome, worked) = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let stop_ref = &stop;
        let tool_run = s.spawn(move || {
            let outcome = process::run(&spec, stop_ref);
            drop(spec);
            outcome
        });
        let worked = work(&stop);
        let outcome = tool_run.join();
        done.store(true, Ordering::Relaxed);
        (outcome, worked)
    });
    match outcome {
        Ok(o) => Ok((o.with_context(|| format!("starting {tool}"))?, worked)),
        Err(_) => bail!("the thread running {tool} panicked"),
    }
}

/// A dump to load.
pub enum DumpInput<'a> {
    /// A dump file (in the spool).
    File(&'a Path),
    /// A dump read as `feed` writes it, straight out of the repository: no
    /// spool space. `name` is its file name in the snapshot (`*.pgdump`: a
    /// PostgreSQL custom-format dump).
    Stream { name: &'a str, feed: &'a dyn Fn(&mut dyn Write) -> Result<()> },
}

/// A plain SQL dump on its way into a load tool, refused (an error, before
/// the line goes further) at the first line that would make the load leave
/// the database it was given: `\connect` or `CREATE DATABASE` in a
/// PostgreSQL dump, `USE` or `CREATE`/`DROP DATABASE` in a MySQL one. Such
/// a dump (made with options `validate` refuses, e.g. by an older config)
/// would otherwise load over the live database during `verify` or
/// `--into`. Statements start lines in both tools' dumps; line breaks in
/// data are escaped, so data never starts a line.
pub struct OneDatabase<'a> {
    out: &'a mut dyn Write,
    forbidden: &'static [&'static str],
    head: Vec<u8>,
    in_head: bool,
}

impl<'a> OneDatabase<'a> {
    /// The first bytes of a line that are looked at.
    const HEAD: usize = 40;

    pub fn new(out: &'a mut dyn Write, kind: DatabaseKind) -> OneDatabase<'a> {
        let forbidden: &'static [&'static str] = match kind {
            DatabaseKind::Postgresql => &["\\CONNECT", "\\C ", "\\C\t", "CREATE DATABASE", "DROP DATABASE"],
            DatabaseKind::Mysql => {
                &["USE ", "USE`", "CREATE DATABASE", "DROP DATABASE", "CREATE SCHEMA", "DROP SCHEMA"]
            }
            DatabaseKind::Sqlite => &[],
        };
        OneDatabase { out, forbidden, head: Vec::new(), in_head: true }
    }

    /// Refuse the line begun in `head` if it starts like a forbidden one
    /// (spaces and a MySQL `/*!NNNNN` version comment skipped).
    fn check(&self) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(&self.head).to_ascii_uppercase();
        let mut line = text.trim_start();
        if let Some(rest) = line.strip_prefix("/*!") {
            line = rest.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
        }
        match self.forbidden.iter().find(|f| line.starts_with(**f)) {
            Some(f) => Err(std::io::Error::other(format!(
                "the dump names a database of its own ({:?}): it would load outside the database it is loaded into, so it is not loaded",
                f.trim()
            ))),
            None => Ok(()),
        }
    }
}

impl Write for OneDatabase<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut i = 0;
        while i < buf.len() {
            if self.in_head {
                while i < buf.len() && buf[i] != b'\n' && self.head.len() < Self::HEAD {
                    self.head.push(buf[i]);
                    i += 1;
                }
                self.check()?;
                if i == buf.len() && self.head.len() < Self::HEAD {
                    break;
                }
                self.head.clear();
                self.in_head = false;
            }
            match buf[i..].iter().position(|b| *b == b'\n') {
                Some(p) => {
                    i += p + 1;
                    self.in_head = true;
                }
                None => i = buf.len(),
            }
        }
        self.out.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Run the load tool `spec` with the dump on its stdin. Its failure fails
/// the load with the tool's own message.
pub(crate) fn run_loader(mut spec: ProcessSpec, input: &DumpInput, cancel: &AtomicBool) -> Result<()> {
    let tool = spec.argv.first().cloned().unwrap_or_default();
    let outcome = match input {
        DumpInput::File(file) => {
            spec.stdin_file = Some(file.to_path_buf());
            process::run(&spec, cancel).with_context(|| format!("running {tool}"))?
        }
        DumpInput::Stream { feed, .. } => run_fed(spec, *feed, cancel)?,
    };
    if !outcome.success() {
        bail!("{}", outcome.failure_message(&tool));
    }
    Ok(())
}

/// Run `spec` with its stdin in a pipe that `feed` writes. When feeding
/// fails, the tool is stopped *before* its stdin ends: a tool that saw a
/// clean end of input could commit half a dump. A tool that fails on its
/// own is reported with its own message (feeding then fails too, on the
/// closed pipe).
fn run_fed(
    mut spec: ProcessSpec,
    feed: &dyn Fn(&mut dyn Write) -> Result<()>,
    cancel: &AtomicBool,
) -> Result<ProcessOutcome> {
    let tool = spec.argv.first().cloned().unwrap_or_default();
    let (reader, mut writer) = std::io::pipe().context("making a pipe to load a dump through")?;
    crate::fsutil::widen_pipe(std::os::fd::AsFd::as_fd(&writer));
    spec.stdin_pipe = Some(std::sync::Arc::new(reader.into()));
    let (outcome, (fed, unfinished_input)) = run_beside(spec, cancel, move |stop| match feed(&mut writer) {
        // The whole dump went in: its end of input lets the tool finish.
        Ok(()) => (Ok(()), None),
        Err(e) => {
            // Only once the tool is gone does its input end.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (Err(e), Some(writer))
        }
    })?;
    drop(unfinished_input);
    match fed {
        Err(_) if !outcome.success() && !outcome.cancelled => Ok(outcome),
        Err(e) => Err(e.context(format!("{tool} was stopped"))),
        Ok(()) => Ok(outcome),
    }
}

/// The first line of `TOOL --version`.
pub(crate) fn tool_version(tool: &str) -> Result<String> {
    let out = crate::process::command(tool)
        .arg("--version")
        .output()
        .with_context(|| format!("{tool} is not installed or not on PATH"))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

/// A record for a finished dump of `size` bytes, stored as `file`'s name.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    db: &DatabaseConfig,
    name: &str,
    file: &Path,
    tool: &str,
    tool_version: &str,
    size: u64,
    server_version: Option<String>,
    started: jiff::Timestamp,
) -> Result<DumpRecord> {
    let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(DumpRecord {
        entry: db.entry_name(),
        kind: db.kind,
        name: name.to_string(),
        file: format!("{SNAPSHOT_PREFIX}/{}/{file_name}", db.entry_name()),
        tool: tool.to_string(),
        tool_version: tool_version.to_string(),
        server_version,
        started,
        finished: jiff::Timestamp::now(),
        size,
        owner: None,
    })
}

/// A file name for a database's dump that cannot escape its directory and
/// that no other database name maps to (`/`, NUL, `%` and a leading `.` are
/// written `%XX`), so one entry's dumps never overwrite each other. A name
/// starting with `%` and a letter is never made: [`SERVER_GLOBALS_FILE`].
pub(crate) fn dump_file(dir: &Path, db_name: &str, ext: &str) -> PathBuf {
    let mut safe = String::with_capacity(db_name.len() + 5);
    for (i, c) in db_name.chars().enumerate() {
        match c {
            '/' | '\0' | '%' => safe.push_str(&format!("%{:02X}", c as u32)),
            '.' if i == 0 => safe.push_str("%2E"),
            c => safe.push(c),
        }
    }
    dir.join(format!("{safe}.{ext}"))
}

/// The file of a server's roles and tablespaces (`pg_dumpall
/// --globals-only`) beside its databases' dumps: a name [`dump_file`] never
/// gives a database, even one called `globals`.
pub(crate) const SERVER_GLOBALS_FILE: &str = "%globals.sql";

/// A small tokio runtime for the few queries a dump needs.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// A database server (or SQLite) to restore into: the operations restore
/// and verify need, the same for every kind. For SQLite a database's "name"
/// is its file path.
pub enum Server {
    Postgresql(postgres::Connection),
    Mysql(mysql::Connection),
    Sqlite,
}

impl Server {
    pub fn of(db: &DatabaseConfig) -> Result<Server> {
        Ok(match db.kind {
            DatabaseKind::Postgresql => Server::Postgresql(postgres::Connection::of(db)?),
            DatabaseKind::Mysql => Server::Mysql(mysql::Connection::of(db)?),
            DatabaseKind::Sqlite => Server::Sqlite,
        })
    }

    pub fn exists(&self, name: &str) -> Result<bool> {
        match self {
            Server::Postgresql(c) => c.exists(name),
            Server::Mysql(c) => c.exists(name),
            Server::Sqlite => Ok(Path::new(name).exists()),
        }
    }

    /// The owner of database `name`: PostgreSQL's, which a load can give back.
    pub fn database_owner(&self, name: &str) -> Result<Option<String>> {
        match self {
            Server::Postgresql(c) => c.database_owner(name),
            Server::Mysql(_) | Server::Sqlite => Ok(None),
        }
    }

    pub fn server_version(&self) -> Result<Option<String>> {
        match self {
            Server::Postgresql(c) => c.server_version("postgres").map(Some),
            Server::Mysql(c) => c.server_version().map(Some),
            Server::Sqlite => Ok(None),
        }
    }

    /// Create database `name` from a dump; PostgreSQL gives it role `owner`
    /// where holdfast may act as that role.
    pub fn load(
        &self,
        name: &str,
        owner: Option<&str>,
        dump: &DumpInput,
        ctx: &DumpContext,
        timeout: std::time::Duration,
    ) -> Result<()> {
        match self {
            Server::Postgresql(c) => c.load(name, owner, dump, ctx, timeout),
            Server::Mysql(c) => c.load(name, dump, ctx, timeout),
            Server::Sqlite => sqlite::load(Path::new(name), dump),
        }
    }

    pub fn drop_database(&self, name: &str) -> Result<()> {
        match self {
            Server::Postgresql(c) => c.drop_database(name),
            Server::Mysql(c) => c.drop_database(name),
            Server::Sqlite => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(format!("{name}{suffix}"));
                }
                Ok(())
            }
        }
    }

    pub fn scalar(&self, name: &str, sql: &str) -> Result<Option<String>> {
        match self {
            Server::Postgresql(c) => c.scalar(name, sql),
            Server::Mysql(c) => c.scalar(name, sql),
            Server::Sqlite => sqlite::scalar(Path::new(name), sql),
        }
    }

    pub fn table_counts(&self, name: &str) -> Result<Vec<(String, u64)>> {
        match self {
            Server::Postgresql(c) => c.table_counts(name),
            Server::Mysql(c) => c.table_counts(name),
            Server::Sqlite => sqlite::table_counts(Path::new(name)),
        }
    }

    /// Give `loaded` the name `live`, which is free.
    pub fn swap_missing(&self, live: &str, loaded: &str) -> Result<()> {
        match self {
            Server::Postgresql(c) => c.rename_missing(live, loaded),
            Server::Mysql(c) => {
                c.execute(&format!("CREATE DATABASE {}", mysql::quote_ident(live)))?;
                c.swap(live, loaded, &format!("{live}_hfempty"))?;
                c.drop_database(&format!("{live}_hfempty"))
            }
            Server::Sqlite => {
                // No live file to take them from: its directory's owner,
                // readable as a new SQLite file usually is.
                use std::os::unix::fs::MetadataExt;
                let dir = Path::new(live).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let of_dir = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
                set_owner_and_mode(Path::new(loaded), of_dir.uid(), of_dir.gid(), 0o644)
                    .with_context(|| format!("giving {loaded} the owner of {}", dir.display()))?;
                std::fs::rename(loaded, live).with_context(|| format!("moving {loaded} to {live}"))
            }
        }
    }

    /// Put `loaded` in the place of `live`, keeping the old one as `keep_as`.
    pub fn swap(&self, live: &str, loaded: &str, keep_as: &str) -> Result<()> {
        match self {
            Server::Postgresql(c) => c.swap(live, loaded, keep_as),
            Server::Mysql(c) => c.swap(live, loaded, keep_as),
            Server::Sqlite => {
                // The loaded file was created by holdfast: it takes the live
                // file's owner and mode, or the application could no longer
                // open it (or others could read it).
                use std::os::unix::fs::MetadataExt;
                let was = std::fs::metadata(live).with_context(|| format!("reading {live}"))?;
                if let Err(e) = set_owner_and_mode(Path::new(loaded), was.uid(), was.gid(), was.mode() & 0o7777) {
                    let _ = std::fs::remove_file(loaded);
                    return Err(e).with_context(|| format!("giving {loaded} the owner and mode of {live}"));
                }
                std::fs::rename(live, keep_as).with_context(|| format!("moving {live} to {keep_as}"))?;
                // A WAL and its index belong to the old file: left behind, SQLite
                // would replay them into the new one.
                for suffix in ["-wal", "-shm", "-journal"] {
                    let side = format!("{live}{suffix}");
                    if Path::new(&side).exists() {
                        std::fs::rename(&side, format!("{keep_as}{suffix}"))
                            .with_context(|| format!("moving {side}"))?;
                    }
                }
                if let Err(e) = std::fs::rename(loaded, live) {
                    let _ = std::fs::rename(keep_as, live);
                    return Err(e).with_context(|| format!("moving {loaded} to {live}"));
                }
                Ok(())
            }
        }
    }
}

/// Give `file` owner `uid`:`gid` (only when it differs, so that a holdfast
/// that is not root can still reload its own files) and `mode`.
fn set_owner_and_mode(file: &Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::metadata(file)?;
    if (now.uid(), now.gid()) != (uid, gid) {
        std::os::unix::fs::chown(file, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

/// The major version in a version string ("15.19 (Debian ...)" → 15,
/// "10.11.19-MariaDB" → 10.11 as 1011).
pub fn major_version(v: &str) -> Option<u32> {
    let nums: Vec<u32> = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [major, ..] if *major >= 10 && v.contains("MariaDB") => Some(major * 100 + nums.get(1).copied().unwrap_or(0)),
        [major, ..] => Some(*major),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{OneDatabase, SERVER_GLOBALS_FILE, dump_file, major_version};
    use crate::config::DatabaseKind;
    use std::io::Write;
    use std::path::Path;

    /// `dump` written through [`OneDatabase`] in pieces of `piece` bytes.
    fn through_one_database(kind: DatabaseKind, dump: &str, piece: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut guard = OneDatabase::new(&mut out, kind);
        for part in dump.as_bytes().chunks(piece) {
            guard.write_all(part)?;
        }
        Ok(out)
    }

    #[test]
    fn a_dump_that_would_leave_its_database_is_refused_before_that_line_ends() {
        use DatabaseKind::{Mysql, Postgresql};
        let fine_pg = "SET x = 1;\nCREATE SCHEMA app;\nCOPY t (v) FROM stdin;\n\\\\connect in data\nUSE me\n\\.\n";
        let fine_my = "-- USE nothing\nCREATE TABLE t (v TEXT);\nINSERT INTO t VALUES ('\\nUSE x;');\n";
        for piece in [1, 3, 7, 4096] {
            assert_eq!(through_one_database(Postgresql, fine_pg, piece).unwrap(), fine_pg.as_bytes());
            assert_eq!(through_one_database(Mysql, fine_my, piece).unwrap(), fine_my.as_bytes());
            for (kind, bad) in [
                (Postgresql, "SET x = 1;\n\\connect shop\nDROP TABLE t;\n"),
                (Postgresql, "CREATE DATABASE shop WITH TEMPLATE = template0;\n"),
                (Mysql, "SET x=1;\nUSE `shop`;\nDROP TABLE t;\n"),
                (Mysql, "/*!40000 DROP DATABASE IF EXISTS `shop`*/;\n"),
                (Mysql, "  create database /*!32312 IF NOT EXISTS*/ `shop`;\n"),
            ] {
                let e = through_one_database(kind, bad, piece).unwrap_err();
                assert!(e.to_string().contains("names a database of its own"), "{kind:?} {bad:?} by {piece}: {e}");
            }
        }
    }

    #[test]
    fn every_database_name_has_a_dump_file_of_its_own_inside_its_directory() {
        let names = ["shop", "a/b", "a_b", "a%2Fb", ".x", "_.x", "%2Ex", "..", "globals", "%globals", "a\0b", "é/ü"];
        let files: Vec<_> = names.iter().map(|n| dump_file(Path::new("/spool/pg"), n, "sql")).collect();
        for (name, file) in names.iter().zip(&files) {
            assert_eq!(file.parent(), Some(Path::new("/spool/pg")), "{name:?} → {file:?}");
            let base = file.file_name().unwrap().to_string_lossy();
            assert!(!base.starts_with('.'), "{name:?} → {base}: hidden, or . or ..");
            assert_ne!(base, SERVER_GLOBALS_FILE, "{name:?} takes the roles' file");
        }
        let mut unique = files.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), files.len(), "two names share a file: {files:#?}");
        assert_eq!(files[0], Path::new("/spool/pg/shop.sql"), "plain names stay as they are");
    }

    #[test]
    fn major_versions_compare_servers_and_tools() {
        assert_eq!(major_version("15.19 (Debian 15.19-0+deb12u1)"), Some(15));
        assert_eq!(major_version("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(major_version("10.11.19-MariaDB-0+deb12u1"), Some(1011));
        assert!(major_version("10.6.1-MariaDB") < major_version("10.11.19-MariaDB"));
        assert_eq!(major_version("unknown"), None);
    }
}
