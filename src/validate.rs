//! Validate: check everything a run of a job would need, without changing
//! anything — no spool directory, no repository object or lock, no database
//! change, no hook run, no notification. `run --dry-run` adds the plan.
//!
//! Every problem is collected (not just the first), each with what to change.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::config::{DatabaseKind, Job, Phase};
use crate::dump::{self, mysql, postgres};
use crate::engine::fsmeta::Stat;
use crate::hooks::render_hook;
use crate::plan::{PlannedStep, Step, plan};
use crate::process::find_program_in;
use crate::template::{Vars, render};
use crate::units::{escape_text, human};

/// The PATH systemd gives services; a hook must be found on it, not on the
/// PATH of the shell that ran `validate`.
pub const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub job: String,
    /// Which check: templates, hooks, databases, spool, repositories, files.
    pub check: &'static str,
    pub ok: bool,
    pub message: String,
}

/// What a job's run would do, for `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub job: String,
    pub steps: Vec<PlanLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanLine {
    #[serde(flatten)]
    pub step: PlannedStep,
    /// The commands the step would execute (secrets masked) and what it acts on.
    pub details: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Validation {
    pub findings: Vec<Finding>,
    pub plans: Vec<PlanView>,
}

impl Validation {
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }
}

/// Variables as a run would have them, with placeholders for what a run
/// decides (`run_id`, `snapshot`).
fn sample_vars(job: &Job) -> Vars {
    Vars {
        job: job.name.clone(),
        run_id: "RUN_ID".into(),
        spool: job.spool.join(&job.name).join("RUN_ID").display().to_string(),
        snapshot: "SNAPSHOT".into(),
        event: "failure".into(),
        error: "ERROR".into(),
        time: jiff::Timestamp::now().to_string(),
        host: crate::engine::running::hostname(),
    }
}

struct Checker<'a> {
    job: &'a Job,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn add(&mut self, check: &'static str, ok: bool, message: String) {
        self.findings.push(Finding { job: self.job.name.clone(), check, ok, message });
    }
    fn ok(&mut self, check: &'static str, message: String) {
        self.add(check, true, message);
    }
    fn problem(&mut self, check: &'static str, message: String) {
        self.add(check, false, message);
    }
}

/// Validate `jobs`; with `with_plan`, also describe each run.
pub fn validate(jobs: &[&Job], with_plan: bool) -> Validation {
    let mut v = Validation::default();
    for job in jobs {
        let mut c = Checker { job, findings: Vec::new() };
        let (sizes, copies) = check_job(job, &mut c);
        v.findings.extend(c.findings);
        if with_plan {
            v.plans.push(plan_view(job, &sizes, &copies));
        }
    }
    v
}

/// Databases a dump would cover, with their sizes now.
type Found = Vec<(String, u64)>;
/// Database entry index → what it would dump.
type Sizes = Vec<(usize, Found)>;

/// Checks `job`; what its dumps would hold and which of its repositories
/// would get a copy (from the repositories that open).
fn check_job(job: &Job, c: &mut Checker) -> (Sizes, crate::plan::Copies) {
    let vars = sample_vars(job);
    // Templates and hooks.
    for (i, hook) in job.hooks.iter().enumerate() {
        let what = format!("hook {} #{} ({})", hook.phase.as_str(), i + 1, hook.run.display());
        match render_hook(hook, &vars) {
            Err(e) => c.problem("templates", format!("{what}: {e}")),
            Ok((argv, _)) => check_program(c, &what, &argv, hook.cwd.as_deref()),
        }
        if let Some(cwd) = &hook.cwd
            && !cwd.is_dir()
        {
            c.problem("hooks", format!("{what}: its cwd {} does not exist", cwd.display()));
        }
        if let Some(u) = &hook.user
            && crate::process::lookup_user(u).is_err()
        {
            c.problem("hooks", format!("{what}: user {u:?} does not exist"));
        }
    }
    for (i, n) in job.notify.iter().enumerate() {
        let strings: Vec<String> = match (&n.command, &n.webhook) {
            (Some(cmd), _) => cmd.argv(),
            (_, Some(url)) => vec![url.clone()],
            _ => Vec::new(),
        };
        for s in strings {
            if let Err(e) = render(&s, &vars) {
                // A webhook's path and query may be its secret.
                let e = if n.webhook.is_some() { e.replace(&s, &crate::notify::redact_url(&s)) } else { e };
                c.problem("templates", format!("notify #{}: {e}", i + 1));
            }
        }
        if let Some(cmd) = &n.command {
            check_program(c, &format!("notify #{}", i + 1), &cmd.argv(), None);
        }
    }
    // Schedules (OnCalendar syntax), checked by systemd itself when it is here.
    for (key, expr) in [("schedule", &job.schedule), ("verify_schedule", &job.verify_schedule)] {
        let Some(expr) = expr else { continue };
        match crate::process::command("systemd-analyze").args(["calendar", expr]).output() {
            Ok(out) if out.status.success() => {
                c.ok("schedule", format!("{key} {expr:?} is a valid OnCalendar expression"))
            }
            Ok(out) => c.problem(
                "schedule",
                format!(
                    "{key} {expr:?} is not a valid systemd OnCalendar expression: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ),
            Err(_) => c.ok("schedule", format!("{key} {expr:?} not checked: systemd-analyze is not installed")),
        }
    }
    // Databases.
    let mut sizes = Vec::new();
    for (i, db) in job.databases.iter().enumerate() {
        let what = format!("database {:?} ({})", db.entry_name(), db.kind.as_str());
        match check_database(db) {
            Ok((found, notes)) => {
                for n in notes {
                    c.problem("databases", format!("{what}: {n}"));
                }
                let total: u64 = found.iter().map(|(_, s)| s).sum();
                if !found.is_empty() {
                    c.ok(
                        "databases",
                        format!(
                            "{what}: reachable; would dump {} ({})",
                            found.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                            crate::units::human(total)
                        ),
                    );
                }
                sizes.push((i, found));
            }
            Err(e) => c.problem("databases", format!("{what}: {e:#}")),
        }
    }
    // Spool: streamed dumps need none of it.
    let needed: u64 = sizes
        .iter()
        .filter(|(i, _)| job.databases.get(*i).is_some_and(|d| !d.stream))
        .flat_map(|(_, f)| f.iter().map(|(_, s)| *s))
        .sum();
    check_spool(c, &job.spool, needed);
    check_state_dir(c, &job.state_dir);
    // Repositories.
    let mut opened = Vec::new();
    for r in &job.repositories {
        let name = &r.name;
        match crate::secrets::open_repository(r) {
            Ok(repo) => {
                c.ok("repositories", format!("repository {name:?} at {}: opens with its passphrase", r.describe()));
                opened.push((name.clone(), repo));
            }
            // The error names the repository ("opening repository …").
            Err(e) => c.problem("repositories", format!("{e:#}")),
        }
    }
    // A copy comes from the first repository, so only when that one opens.
    let copies = match opened.first() {
        Some((first, _)) if *first == job.repositories[0].name => crate::plan::copies(&opened),
        _ => crate::plan::Copies::new(),
    };
    // Files.
    for p in &job.files.paths {
        if p.exists() {
            c.ok("files", format!("{} exists", p.display()));
        } else {
            c.problem(
                "files",
                format!("file set path {} does not exist (list it under `optional` if it may be absent)", p.display()),
            );
        }
    }
    for p in &job.files.optional {
        c.ok("files", format!("optional {} {}", p.display(), if p.exists() { "exists" } else { "is absent: skipped" }));
    }
    check_selection(c, job);
    (sizes, copies)
}

/// What each file set crosses and leaves out: the mounts below it (crossed,
/// or skipped by `one_file_system` or as pseudo file systems), holdfast's
/// own directories below it, and — when the job asks for caches, markers,
/// no-dump files or patterns to be left out — each subtree that leaves out,
/// found by walking the set as a backup would, with its size.
fn check_selection(c: &mut Checker, job: &Job) {
    use crate::engine::select::{Selector, is_pseudo, mounts_below};
    let internal = crate::runner::internal_paths(job);
    let f = &job.files;
    let walk = !f.exclude.0.is_empty()
        || !f.iexclude.0.is_empty()
        || f.exclude_caches
        || !f.exclude_if_present.is_empty()
        || f.exclude_nodump;
    let selection = match f.selection(internal.clone()) {
        Ok(s) => s,
        Err(e) => return c.problem("files", e),
    };
    let select = Selector::new(&selection);
    for p in f.paths.iter().chain(&f.optional).filter(|p| p.exists()) {
        // Mounts inside a skipped one are never reached: not listed.
        let mut skipped: Vec<PathBuf> = Vec::new();
        for (at, kind) in mounts_below(p) {
            if skipped.iter().any(|s| at.starts_with(s)) {
                continue;
            }
            let what = if is_pseudo(&kind) {
                "skips (never backed up)"
            } else if f.one_file_system {
                "skips (one_file_system)"
            } else {
                "crosses"
            };
            let mut about = kind.clone();
            if what != "crosses" {
                skipped.push(at.clone());
                if let Some(used) = file_system_used(&at).filter(|_| !is_pseudo(&kind)) {
                    about = format!("{kind}, {} in use", human(used));
                }
            }
            c.ok("files", format!("{}: {what} mount {} ({about})", p.display(), at.display()));
        }
        if walk {
            let w = dry_walk(&select, p);
            const SHOWN: usize = 30;
            for (path, why, size) in w.left_out.iter().take(SHOWN) {
                let shown = escape_text(path.as_os_str().as_bytes());
                c.ok("files", format!("{}: leaves out {shown}, {}: {why}", p.display(), human(*size)));
            }
            if w.left_out.len() > SHOWN {
                let rest = &w.left_out[SHOWN..];
                let bytes: u64 = rest.iter().map(|(_, _, s)| *s).sum();
                c.ok("files", format!("{}: and {} more left out ({})", p.display(), rest.len(), human(bytes)));
            }
            c.ok("files", format!("{}: would back up {} files, {}", p.display(), w.files, human(w.bytes)));
            continue;
        }
        for (what, dir) in &internal {
            if dir != p && dir.starts_with(p) && dir.exists() {
                let size = human(crate::state::dir_size(dir));
                c.ok(
                    "files",
                    format!("{}: leaves out {} ({what}, {size}): never backed up", p.display(), dir.display()),
                );
            }
        }
    }
    let patterns: Vec<&str> = f.exclude.patterns().into_iter().chain(f.iexclude.patterns()).collect();
    if !patterns.is_empty() {
        c.ok("files", format!("excluded by pattern: {}", patterns.join(", ")));
    }
    let mut also = Vec::new();
    if f.exclude_caches {
        also.push("directories with a CACHEDIR.TAG".to_string());
    }
    if !f.exclude_if_present.is_empty() {
        also.push(format!("directories holding {}", f.exclude_if_present.join(" or ")));
    }
    if f.exclude_nodump {
        also.push("no-dump files (chattr +d)".to_string());
    }
    if !also.is_empty() {
        c.ok("files", format!("contents left out: {}", also.join("; ")));
    }
}

/// What a backup of one file set path would keep and leave out.
#[derive(Default)]
struct DryWalk {
    files: u64,
    bytes: u64,
    /// Each subtree left out (but for mount points), why, and the bytes of
    /// the files in it.
    left_out: Vec<(PathBuf, String, u64)>,
}

/// Walk `source` deciding as the backup's scan does (the same [`Selector`])
/// without reading any file, and size what is left out.
fn dry_walk(select: &crate::engine::select::Selector, source: &Path) -> DryWalk {
    use crate::engine::fsmeta::read_flags;
    use crate::engine::select::Contents;
    let mut w = DryWalk::default();
    let Ok(md) = Stat::of_path(source) else { return w };
    let source_dev = md.dev;
    // Only the source itself is named by the admin: no-dump and holdfast's
    // own directories apply to everything below it (the entries of `/` too).
    let mut stack = vec![(source.to_path_buf(), md, source_dev, true)];
    while let Some((path, md, parent_dev, is_source)) = stack.pop() {
        if !is_source && let Some(why) = select.leaves_out(&md, read_flags(&path, &md)) {
            let size = entry_size(&path, &md, parent_dev);
            w.left_out.push((path, why, size));
            continue;
        }
        if !md.is_dir() {
            w.files += u64::from(md.is_file());
            w.bytes += if md.is_file() { md.size } else { 0 };
            continue;
        }
        let (contents, why) = select.contents(&path, &md, parent_dev, source_dev);
        let mut names: Vec<PathBuf> = match &contents {
            Contents::All => match std::fs::read_dir(&path) {
                Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
                Err(_) => Vec::new(),
            },
            Contents::Only(name) => vec![path.join(std::ffi::OsStr::from_bytes(name))],
            Contents::Nothing => Vec::new(),
        };
        // A mount point left empty is among the mounts listed already.
        if let Contents::Only(_) = contents {
            let kept: u64 = names.iter().map(|n| file_len(n)).sum();
            w.left_out.push((path.clone(), why, crate::state::dir_size(&path).saturating_sub(kept)));
        }
        names.sort();
        let dev = md.dev;
        for child in names.into_iter().rev() {
            if select.selection.exclude.is_match(&child) {
                let size = Stat::of_path(&child).map(|md| entry_size(&child, &md, dev)).unwrap_or(0);
                w.left_out.push((child, "excluded by pattern".into(), size));
                continue;
            }
            if let Ok(md) = Stat::of_path(&child) {
                stack.push((child, md, dev, false));
            }
        }
    }
    w.left_out.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// A file's length (0 if it is gone or not a regular file).
fn file_len(path: &Path) -> u64 {
    Stat::of_path(path).map_or(0, |md| if md.is_file() { md.size } else { 0 })
}

/// The bytes of files in a left-out entry (in a directory on device
/// `parent_dev`): a directory's whole subtree; a mount point's file
/// system's use (none for `/proc` and the like, never walked).
fn entry_size(path: &Path, md: &Stat, parent_dev: u64) -> u64 {
    if md.is_dir() && md.dev != parent_dev {
        let pseudo = crate::engine::select::mounts_below(path.parent().unwrap_or(path))
            .into_iter()
            .any(|(at, kind)| at == path && crate::engine::select::is_pseudo(&kind));
        return if pseudo { 0 } else { file_system_used(path).unwrap_or(0) };
    }
    if md.is_dir() {
        crate::state::dir_size(path)
    } else if md.is_file() {
        md.size
    } else {
        0
    }
}

/// The bytes in use on the file system mounted at `path` (what skipping
/// it leaves out).
fn file_system_used(path: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(path).ok()?;
    Some(fs.f_blocks.saturating_sub(fs.f_bfree).saturating_mul(fs.f_frsize))
}
fn check_program(c: &mut Checker, what: &str, argv: &[String], cwd: Option<&Path>) {
    let Some(program) = argv.first() else {
        c.problem("hooks", format!("{what}: empty command"));
        return;
    };
    // A relative path with a slash is relative to the hook's cwd.
    let program = match cwd {
        Some(dir) if program.contains('/') && !program.starts_with('/') => dir.join(program).display().to_string(),
        _ => program.clone(),
    };
    let program = &program;
    match find_program_in(program, SYSTEMD_PATH) {
        Some(_) => c.ok("hooks", format!("{what}: {program} found")),
        None if program.contains('/') => {
            c.problem("hooks", format!("{what}: program {program:?} does not exist or is not executable"))
        }
        None => c.problem(
            "hooks",
            format!("{what}: program {program:?} is not on systemd's PATH ({SYSTEMD_PATH}); install it or use its absolute path"),
        ),
    }
}

/// Reach the database and list what would be dumped with sizes; the second
/// list has problems that do not stop the listing.
fn check_database(db: &crate::config::DatabaseConfig) -> Result<(Found, Vec<String>)> {
    let mut notes = Vec::new();
    match db.kind {
        DatabaseKind::Sqlite => {
            let p = db.path.clone().unwrap_or_default();
            dump::sqlite::open_existing(&p)?;
            let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            Ok((vec![(p.display().to_string(), size)], notes))
        }
        DatabaseKind::Postgresql => {
            let conn = postgres::Connection::of(db)?;
            let server = conn.server_version("postgres")?;
            match dump::tool_version("pg_dump") {
                Ok(v) => {
                    if let (Some(tool), Some(srv)) = (dump::major_version(&v), dump::major_version(&server))
                        && tool < srv
                    {
                        notes.push(format!(
                            "pg_dump is version {tool} but the server is {srv}: pg_dump must be at least the server's major version (install postgresql-client-{srv})"
                        ));
                    }
                }
                Err(e) => notes.push(format!("{e:#}")),
            }
            let names = if db.is_all() { conn.databases()? } else { vec![db.name.clone().unwrap_or_default()] };
            let mut out = Vec::new();
            for n in names {
                if !conn.exists(&n)? {
                    notes.push(format!("database {n:?} does not exist on the server"));
                    continue;
                }
                for t in conn.unreadable_tables(&n)? {
                    notes.push(format!("role {:?} cannot SELECT table {t} in database {n:?}; grant it", conn.user));
                }
                out.push((n.clone(), conn.database_size(&n)?));
            }
            Ok((out, notes))
        }
        DatabaseKind::Mysql => {
            let conn = mysql::Connection::of(db)?;
            conn.server_version()?;
            if crate::process::find_program(mysql::dump_tool()).is_none() {
                notes.push("neither mariadb-dump nor mysqldump is installed".into());
            }
            let names = if db.is_all() { conn.databases()? } else { vec![db.name.clone().unwrap_or_default()] };
            let mut out = Vec::new();
            for n in names {
                if !conn.exists(&n)? {
                    notes
                        .push(format!("database {n:?} does not exist on the server (or {} may not see it)", conn.user));
                    continue;
                }
                out.push((n.clone(), conn.database_size(&n)?));
            }
            Ok((out, notes))
        }
    }
}

/// Free space a spool must have beyond the databases' current size: dumps
/// of text can be larger than the database (no compression, no indexes
/// omitted), so ask for 50% more plus 64 MiB.
fn spool_needed(db_bytes: u64) -> u64 {
    // Nothing dumped through it (no databases, or all streamed): only the
    // small private files (a .pgpass, an options file).
    if db_bytes == 0 {
        return 1 << 20;
    }
    db_bytes + db_bytes / 2 + (64 << 20)
}

/// The state directory must be writable (it is created 0700 if missing).
fn check_state_dir(c: &mut Checker, dir: &Path) {
    let mut existing = dir.to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_path_buf(),
            None => break,
        }
    }
    let flags = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
    if nix::unistd::access(&existing, flags).is_err() {
        c.problem(
            "state",
            format!(
                "state_dir {}: {} is not writable; `run` could not record its outcome for `status`",
                dir.display(),
                existing.display()
            ),
        );
    } else {
        c.ok("state", format!("state_dir {} is writable", dir.display()));
    }
}

fn check_spool(c: &mut Checker, spool: &Path, db_bytes: u64) {
    use std::os::unix::fs::MetadataExt;
    // The nearest existing directory: the spool, or where it would be created.
    let mut existing = spool.to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_path_buf(),
            None => break,
        }
    }
    if existing == spool {
        match std::fs::metadata(spool) {
            Ok(md) if md.uid() != nix::unistd::geteuid().as_raw() => c.problem(
                "spool",
                format!("spool {} is owned by uid {}, not by the user running holdfast", spool.display(), md.uid()),
            ),
            Ok(md) if md.mode() & 0o077 != 0 => c.problem(
                "spool",
                format!(
                    "spool {} has mode {:o}: others could read the dumps; chmod 700 it",
                    spool.display(),
                    md.mode() & 0o777
                ),
            ),
            Ok(_) => {}
            Err(e) => c.problem("spool", format!("spool {}: {e}", spool.display())),
        }
    } else if nix::unistd::access(&existing, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK).is_err() {
        c.problem(
            "spool",
            format!("spool {} cannot be created: {} is not writable", spool.display(), existing.display()),
        );
    }
    match crate::fsutil::free_space(&existing) {
        Some(free) => {
            let need = spool_needed(db_bytes);
            if free < need {
                c.problem(
                    "spool",
                    format!(
                        "spool {} has {} free but the dumps need about {} (databases {} + 50% + 64 MiB): set `stream = true` on the large database entries (their dumps then go straight into the repository), or give the spool more room",
                        spool.display(),
                        crate::units::human(free),
                        crate::units::human(need),
                        crate::units::human(db_bytes)
                    ),
                );
            } else {
                c.ok(
                    "spool",
                    format!(
                        "spool {}: {} free, about {} needed",
                        spool.display(),
                        crate::units::human(free),
                        crate::units::human(need)
                    ),
                );
            }
        }
        None => c.problem("spool", format!("spool {}: cannot read its free space", existing.display())),
    }
}

/// Count files and bytes under `paths` (for the plan).
fn tally(paths: &[PathBuf]) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if md.is_file() {
            files += 1;
            bytes += md.len();
        }
    }
    (files, bytes)
}

fn plan_view(job: &Job, sizes: &Sizes, copies: &crate::plan::Copies) -> PlanView {
    let vars = sample_vars(job);
    let steps = plan(job, copies)
        .into_iter()
        .map(|step| {
            let details = match &step.step {
                Step::PrepareSpool => vec![format!("create {} (mode 0700)", vars.spool)],
                Step::Hooks { phase, .. } => hook_lines(job, *phase, &vars),
                Step::Hold { locks, .. } => {
                    let mut d = hook_lines(job, Phase::Hold, &vars);
                    if *locks > 0 {
                        d.push(format!("take {locks} database global read lock(s)"));
                    }
                    d
                }
                Step::Dump { index, kind, .. } => {
                    let found = sizes.iter().find(|(i, _)| i == index).map(|(_, f)| f.clone()).unwrap_or_default();
                    let custom = job.databases.get(*index).is_some_and(|d| d.format == crate::config::DumpFormat::Custom);
                    let tool = match kind {
                        DatabaseKind::Postgresql if custom => {
                            "pg_dump --format=custom --compress=0, reloaded with pg_restore --jobs (password via a private PGPASSFILE)"
                        }
                        DatabaseKind::Postgresql => "pg_dump --format=plain (password via a private PGPASSFILE)",
                        DatabaseKind::Mysql => {
                            "mariadb-dump --single-transaction --routines --triggers --events (password via a private options file)"
                        }
                        DatabaseKind::Sqlite => "SQLite online backup API",
                    };
                    let mut d = vec![tool.to_string()];
                    if job.databases.get(*index).is_some_and(|d| d.stream) {
                        let first = job.repositories.first().map(|r| r.name.as_str()).unwrap_or_default();
                        d.push(format!("streamed into repository {first:?} as it is written (no spool space)"));
                    }
                    if *index == 0 && job.databases.len() > 1 && job.dump_concurrency > 1 {
                        d.push(format!("{} databases at a time (dump_concurrency)", job.dump_concurrency));
                    }
                    d.extend(found.iter().map(|(n, s)| format!("{n}: {} now", crate::units::human(*s))));
                    d
                }
                Step::Capture { repository, paths, optional, .. } => {
                    let paths: Vec<PathBuf> = paths.iter().chain(optional.iter().filter(|p| p.exists())).cloned().collect();
                    let paths = &paths;
                    let (files, bytes) = tally(paths);
                    let mut d = vec![format!("into repository {repository:?}")];
                    d.extend(paths.iter().map(|p| p.display().to_string()));
                    d.push(format!("{files} files, {} now", crate::units::human(bytes)));
                    d
                }
                Step::Release => vec!["close hold hooks' stdin, SIGTERM after their grace; unlock databases".into()],
                Step::Commit { repository } => vec![format!("write the snapshot to {repository:?}")],
                Step::Copy { repository, from } => vec![format!(
                    "{repository:?} shares the keys of {from:?}: it gets a copy of the new snapshot (and any it missed); only new blobs move"
                )],
                Step::CleanSpool => vec![format!("remove {}", vars.spool)],
            };
            PlanLine { step, details }
        })
        .collect();
    PlanView { job: job.name.clone(), steps }
}

fn hook_lines(job: &Job, phase: Phase, vars: &Vars) -> Vec<String> {
    job.hooks
        .iter()
        .filter(|h| h.phase == phase)
        .map(|h| match render_hook(h, vars) {
            Ok((argv, _)) => format!("run {}", argv.join(" ")),
            Err(e) => format!("(does not render: {e})"),
        })
        .collect()
}
