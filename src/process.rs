//! Running a child process the way hooks and dump tools need it: argv only
//! (never a shell unless asked), its own process group (so a timeout kills
//! everything it started), a timeout and a cancellation flag as parameters,
//! stderr captured for the error message, stdout captured or sent to a file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Environment variables for a child, in addition to the inherited ones.
pub type Env = Vec<(String, String)>;

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Env,
    pub timeout: Duration,
    /// Write stdout to this file instead of capturing it.
    pub stdout_file: Option<PathBuf>,
}

/// How a process ended.
#[derive(Debug, Clone)]
pub struct ProcessOutcome {
    /// Exit code; `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
    pub timed_out: bool,
    pub cancelled: bool,
}

impl ProcessOutcome {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out && !self.cancelled
    }

    /// A one-line description of a failure, with the tail of stderr.
    pub fn failure_message(&self, what: &str) -> String {
        let how = if self.timed_out {
            format!("timed out after {:.0?} and was killed", self.duration)
        } else if self.cancelled {
            "was interrupted".to_string()
        } else {
            match self.code {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            }
        };
        let stderr = String::from_utf8_lossy(&self.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() { format!("{what} {how}") } else { format!("{what} {how}: {tail}") }
    }
}

/// Time given to a process group between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Run `spec` to its end, its timeout, or until `cancel` is set.
pub fn run(spec: &ProcessSpec, cancel: &AtomicBool) -> std::io::Result<ProcessOutcome> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let mut expr = duct::cmd(program, args).stdin_null().stderr_capture().unchecked();
    expr = match &spec.stdout_file {
        Some(p) => expr.stdout_path(p),
        None => expr.stdout_capture(),
    };
    if let Some(d) = &spec.cwd {
        expr = expr.dir(d);
    }
    for (k, v) in &spec.env {
        expr = expr.env(k, v);
    }
    let expr = expr.before_spawn(|c| {
        use std::os::unix::process::CommandExt;
        c.process_group(0);
        Ok(())
    });
    let started = Instant::now();
    let handle = expr.start()?;
    let pgid = handle.pids().first().map(|p| Pid::from_raw(*p as i32));
    let mut nap = Duration::from_millis(1);
    let (mut timed_out, mut cancelled) = (false, false);
    let mut term_sent: Option<Instant> = None;
    loop {
        if let Some(out) = handle.try_wait()? {
            return Ok(ProcessOutcome {
                code: out.status.code(),
                stdout: out.stdout.clone(),
                stderr: out.stderr.clone(),
                duration: started.elapsed(),
                timed_out,
                cancelled,
            });
        }
        if term_sent.is_none() {
            if started.elapsed() >= spec.timeout {
                timed_out = true;
            } else if cancel.load(Ordering::Relaxed) {
                cancelled = true;
            }
            if (timed_out || cancelled)
                && let Some(pg) = pgid
            {
                let _ = killpg(pg, Signal::SIGTERM);
                term_sent = Some(Instant::now());
            }
        } else if term_sent.is_some_and(|t| t.elapsed() >= GRACE)
            && let Some(pg) = pgid
        {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Whether `program` can be found: a path that exists, or a name on `$PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}
