//! Verify: the automated restore test ("untested backups don't exist").
//!
//! For a job's newest snapshot (or a chosen one): load every database dump
//! into a scratch database with a generated name, run the entry's smoke
//! queries and count its tables' rows, drop the scratch database (also on
//! failure); restore the file sets into a private scratch directory and read
//! every file back against the chunk hashes recorded at backup time. A
//! failure notifies `verify_failed`.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::config::{DatabaseKind, Event, Job};
use crate::dump::{DumpContext, Server};
use crate::engine::restore::{Comparison, RestoreOptions, compare_restored, restore};
use crate::notify::notify;
use crate::restore::{Scratch, SmokeResult, dump_config, job_repository, job_snapshot, smoke_queries, with_dump_input};
use crate::secrets::open_repository;
use crate::template::Vars;

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseCheck {
    pub entry: String,
    pub name: String,
    pub scratch: String,
    pub load_secs: f64,
    pub tables: Vec<(String, u64)>,
    pub smoke: Vec<SmokeResult>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub job: String,
    /// The repository the snapshot was read from.
    pub repository: String,
    pub snapshot: String,
    pub ok: bool,
    pub databases: Vec<DatabaseCheck>,
    pub files: Option<Comparison>,
    pub problems: Vec<String>,
    pub duration_secs: f64,
}

/// Verify `job`'s snapshot `spec` (`latest` for its newest) in its first
/// repository, or in the one named `from`.
/// `progress`, when given, follows each database and the files; `cancel`
/// (SIGTERM) stops a load tool, whose scratch database is then dropped.
pub fn verify_job(
    job: &Job,
    source: &crate::restore::Source,
    cancel: &AtomicBool,
    progress: Option<std::sync::Arc<crate::engine::progress::Progress>>,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let repo_cfg = job_repository(job, source.repository)?;
    let mut repo = open_repository(repo_cfg)?;
    // The restore test judges what the repository holds, not a local copy.
    repo.read_directly();
    let (id, snap, record) = job_snapshot(&repo, job, source.snapshot, source.skip_damaged)?;
    let mut report = VerifyReport {
        job: job.name.clone(),
        repository: repo_cfg.name.clone(),
        snapshot: id.to_hex(),
        ok: false,
        databases: Vec::new(),
        files: None,
        problems: Vec::new(),
        duration_secs: 0.0,
    };
    let scratch = Scratch::new(job, "verify")?;
    for dump in &record.databases {
        if let Some(p) = &progress {
            p.phase(format!("verify {}: database {}", job.name, dump.name));
        }
        let mut check = DatabaseCheck {
            entry: dump.entry.clone(),
            name: dump.name.clone(),
            scratch: String::new(),
            load_secs: 0.0,
            tables: Vec::new(),
            smoke: Vec::new(),
            error: None,
        };
        let result = (|| -> Result<()> {
            if dump.is_server_globals() {
                // Roles and tablespaces: loading them where they already
                // exist fails, so they are read back whole (every chunk
                // proven) instead.
                crate::engine::restore::extract_file(&repo, &snap, Path::new(&dump.file), &mut std::io::sink())?;
                return Ok(());
            }
            let db = dump_config(job, dump)?;
            let server = Server::of(db)?;
            check.scratch = match db.kind {
                DatabaseKind::Sqlite => sqlite_scratch(&scratch.0.root, db.path.as_deref(), dump)?,
                _ => format!("hf_verify_{}", crate::engine::crypto::Id::random()?.short()),
            };
            let t = Instant::now();
            let ctx = DumpContext { run: &scratch.0, cancel, stream: None };
            let loaded = with_dump_input(&repo, &snap, dump, db, &scratch, |file| {
                server.load(&check.scratch, dump.owner.as_deref(), file, &ctx, db.timeout.0)
            });
            check.load_secs = t.elapsed().as_secs_f64();
            let outcome = loaded.and_then(|()| {
                check.tables = server.table_counts(&check.scratch)?;
                check.smoke = smoke_queries(&server, &check.scratch, &db.verify);
                Ok(())
            });
            // The scratch database goes, whatever happened.
            let dropped = server.drop_database(&check.scratch);
            outcome?;
            dropped
        })();
        if let Err(e) = result {
            check.error = Some(format!("{e:#}"));
            report.problems.push(format!("database {}: {e:#}", dump.name));
        }
        for s in check.smoke.iter().filter(|s| !s.ok) {
            report.problems.push(format!("database {}: {s}", dump.name));
        }
        report.databases.push(check);
    }
    let include: Vec<_> = record.file_sets.iter().flat_map(|f| f.paths.iter().cloned()).collect();
    if !include.is_empty() {
        let target = scratch.0.root.join("files");
        let threads = crate::engine::parallel::cpus();
        if let Some(p) = &progress {
            p.phase(format!("verify {}: files", job.name));
        }
        let opts = RestoreOptions { target: target.clone(), include: include.clone(), threads, progress, cancel: None };
        let result = restore(&repo, &snap, &opts)
            .map_err(anyhow::Error::from)
            .and_then(|_| Ok(compare_restored(&repo, &snap, &include, &target)?));
        match result {
            Ok(cmp) => {
                report.problems.extend(cmp.mismatches.iter().map(|m| format!("file {m}")));
                report.files = Some(cmp);
            }
            Err(e) => report.problems.push(format!("files: {e:#}")),
        }
    }
    drop(scratch);
    report.ok = report.problems.is_empty();
    report.duration_secs = started.elapsed().as_secs_f64();
    if !report.ok {
        let vars = Vars {
            job: job.name.clone(),
            run_id: record.run_id.clone(),
            snapshot: id.to_hex(),
            error: report.problems.join("; "),
            time: jiff::Timestamp::now().to_string(),
            host: crate::engine::running::hostname(),
            ..Default::default()
        };
        notify(&job.notify, Event::VerifyFailed, &vars);
    }
    Ok(report)
}

/// Where a SQLite dump is loaded to be checked: in the spool when it has
/// room for it, else beside the live database (a hidden name, removed after
/// the check), so that a streamed job with a small spool can still be verified.
fn sqlite_scratch(spool: &Path, live: Option<&Path>, dump: &crate::record::DumpRecord) -> Result<String> {
    let fits = |dir: &Path| crate::fsutil::has_room(dir, dump.size, 16 << 20);
    let beside_live = live.and_then(|p| Some((p.parent()?, p.file_name()?)));
    let path = match beside_live {
        Some((dir, name)) if !fits(spool) && fits(dir) => {
            dir.join(format!(".{}.hfverify-{}", name.to_string_lossy(), crate::engine::crypto::Id::random()?.short()))
        }
        _ => spool.join(format!("scratch-{}.sqlite", dump.entry)),
    };
    Ok(path.display().to_string())
}
