//! Running a child process the way hooks and dump tools need it: argv only
//! (never a shell unless asked), its own process group (so a timeout kills
//! everything it started), a timeout and a cancellation flag as parameters,
//! stderr captured for the error message, stdout captured or sent to a file.
//!
//! Every child gets an environment built here, never simply inherited
//! ([`child_environment`]): holdfast's own secret variables and every
//! variable the config names as a secret are left out, and a child that runs
//! as another user gets only a minimal environment of its own.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Environment variables for a child, in addition to its base environment.
pub type Env = Vec<(String, String)>;

/// Variables that hold holdfast's own secrets: never passed to a child.
pub const SECRET_VARIABLES: &[&str] = &[
    "HOLDFAST_PASSPHRASE",
    "HOLDFAST_FROM_PASSPHRASE",
    "HOLDFAST_NEW_PASSPHRASE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Variables the config names as secrets (`password_env`), declared once
/// when the config is loaded.
static DECLARED_SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// Declare the variables the configuration names as holding secrets, so no
/// child ever inherits them. Called once, after the config is loaded.
pub fn declare_secret_variables(names: Vec<String>) {
    let _ = DECLARED_SECRETS.set(names);
}

/// Whether `name` must never reach a child.
pub fn is_secret_variable(name: &str) -> bool {
    SECRET_VARIABLES.contains(&name) || DECLARED_SECRETS.get().is_some_and(|d| d.iter().any(|n| n == name))
}

/// The variables a child running as another user keeps from holdfast's
/// environment (besides the ones set for it and that user's HOME, USER,
/// LOGNAME and SHELL).
const MINIMAL_VARIABLES: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

/// The whole environment of a child: holdfast's own without its secrets,
/// or (`user`: a child that drops privileges) a minimal one; then `extra`.
pub fn child_environment(user: Option<&nix::unistd::User>, extra: &Env) -> BTreeMap<OsString, OsString> {
    // `vars_os`: a variable that is not UTF-8 (a locale's file name, say)
    // is passed through as it is, never a reason to fail.
    let inherited = std::env::vars_os();
    let mut env: BTreeMap<OsString, OsString> = match user {
        None => inherited.filter(|(k, _)| !k.to_str().is_some_and(is_secret_variable)).collect(),
        Some(u) => {
            let mut env: BTreeMap<OsString, OsString> =
                inherited.filter(|(k, _)| k.to_str().is_some_and(|k| MINIMAL_VARIABLES.contains(&k))).collect();
            env.entry("PATH".into()).or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
            env.insert("HOME".into(), u.dir.clone().into_os_string());
            env.insert("USER".into(), u.name.clone().into());
            env.insert("LOGNAME".into(), u.name.clone().into());
            env.insert("SHELL".into(), u.shell.clone().into_os_string());
            env
        }
    };
    for (k, v) in extra {
        env.insert(k.into(), v.into());
    }
    env
}

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Env,
    pub timeout: Duration,
    /// Write stdout to this file instead of capturing it.
    pub stdout_file: Option<PathBuf>,
    /// Else write stdout into this pipe (a streamed dump); the caller
    /// reads the other end and sees its end when the process has exited.
    pub stdout_pipe: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Run as this OS user (uid, primary gid, no supplementary groups).
    pub user: Option<String>,
    /// Read stdin from this file (else /dev/null).
    pub stdin_file: Option<PathBuf>,
    /// Else read stdin from this pipe (a dump loaded as it comes out of the
    /// repository); the caller writes the other end.
    pub stdin_pipe: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Record the child here while it runs (a file named by its pid), so
    /// that if holdfast itself is killed, recovery can end what it left
    /// running ([`end_leftovers`]).
    pub track_in: Option<PathBuf>,
}

/// An OS user, for running a child as that user.
pub fn lookup_user(name: &str) -> std::io::Result<nix::unistd::User> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no OS user named {name:?}"))),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// A `Command` for a short query of a tool (`--version`, `systemd-analyze`)
/// with the same scrubbed environment as every other child.
pub fn command(program: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.env_clear().envs(child_environment(None, &Vec::new()));
    cmd
}

/// Make `cmd` a process group leader, running as `user` if given. std drops
/// supplementary groups when it sets the uid of a child of root.
fn prepare(cmd: &mut std::process::Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    if let Some((uid, gid)) = user {
        cmd.gid(gid).uid(uid);
    }
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
    // Output is read from pipes on threads of holdfast's own, not duct's: a
    // pipe ends only when every process holding it is gone, and a hook that
    // leaves a daemon behind (`setsid daemon &`) must not keep holdfast
    // waiting for as long as that daemon lives.
    let (stderr, child_stderr) = Capture::start()?;
    let mut expr = duct::cmd(program, args).stderr_file(child_stderr).unchecked();
    expr = match (&spec.stdin_file, &spec.stdin_pipe) {
        (Some(p), _) => expr.stdin_path(p),
        (None, Some(fd)) => expr.stdin_file(fd.try_clone()?),
        (None, None) => expr.stdin_null(),
    };
    let mut stdout = None;
    expr = match (&spec.stdout_file, &spec.stdout_pipe) {
        (Some(p), _) => expr.stdout_path(p),
        (None, Some(fd)) => expr.stdout_file(fd.try_clone()?),
        (None, None) => {
            let (capture, child_stdout) = Capture::start()?;
            stdout = Some(capture);
            expr.stdout_file(child_stdout)
        }
    };
    if let Some(d) = &spec.cwd {
        expr = expr.dir(d);
    }
    let user = spec.user.as_deref().map(lookup_user).transpose()?;
    expr = expr.full_env(child_environment(user.as_ref(), &spec.env));
    let user = user.map(|u| (u.uid.as_raw(), u.gid.as_raw()));
    let expr = expr.before_spawn(move |c| {
        prepare(c, user);
        Ok(())
    });
    let started = Instant::now();
    let handle = expr.start()?;
    // The child has its own ends of the pipes now; ours must close, or the
    // output would never end.
    drop(expr);
    let pgid = handle.pids().first().map(|p| Pid::from_raw(*p as i32));
    let _tracked = Tracked::new(spec.track_in.as_deref(), pgid);
    let mut nap = Duration::from_millis(1);
    let (mut timed_out, mut cancelled) = (false, false);
    let mut term_sent: Option<Instant> = None;
    loop {
        if let Some(out) = handle.try_wait()? {
            return Ok(ProcessOutcome {
                code: out.status.code(),
                stdout: stdout.map(Capture::finish).unwrap_or_default(),
                stderr: stderr.finish(),
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

/// A child's output, read from a pipe on a thread of its own.
struct Capture {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Capture {
    /// The most of one output kept (the rest is read and dropped).
    const LIMIT: usize = 64 << 20;
    /// How long output may go on after the child has exited (its own
    /// children finishing their last lines) before what came is taken.
    const AFTER_EXIT: Duration = Duration::from_secs(1);

    /// The capture, and the pipe's end for the child.
    fn start() -> std::io::Result<(Capture, std::io::PipeWriter)> {
        use std::io::Read;
        let (mut pipe, child_end) = std::io::pipe()?;
        let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bytes.clone();
        let reader = std::thread::Builder::new().name("output".into()).spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                        let room = Capture::LIMIT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })?;
        Ok((Capture { bytes, reader }, child_end))
    }

    /// What the child wrote: all of it once every writer is gone, or what
    /// came within [`Capture::AFTER_EXIT`]. A reader still waiting (a daemon
    /// holds the pipe) is left to drain it until holdfast exits.
    fn finish(self) -> Vec<u8> {
        let until = Instant::now() + Capture::AFTER_EXIT;
        let mut nap = Duration::from_micros(200);
        while !self.reader.is_finished() && Instant::now() < until {
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Where `program` is: a path to an executable file, or a name on `$PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    find_program_in(program, &std::env::var("PATH").unwrap_or_default())
}

/// Where `program` is, searching `path` (a `PATH`-style list) for bare names.
pub fn find_program_in(program: &str, path: &str) -> Option<PathBuf> {
    let executable = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path).map(|d| d.join(program)).find(|p| executable(p))
}

/// How a held process ended when it was released.
pub struct Released {
    pub output: Vec<String>,
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// It exited after its stdin closed, within the grace period.
    pub ended_by_itself: bool,
}

/// A process that keeps running while the run goes on (a `hold` hook): it
/// is started, awaited until it prints its ready line, checked for an early
/// exit, and released by closing its stdin, then SIGTERM after a grace period.
pub struct HeldProcess {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    pub output: Vec<String>,
    started: Instant,
    _tracked: Tracked,
}

impl HeldProcess {
    /// Start `spec` and wait up to `spec.timeout` for a stdout line equal to `ready`.
    pub fn start(spec: &ProcessSpec, ready: &str, cancel: &AtomicBool) -> std::io::Result<HeldProcess> {
        use std::io::BufRead;
        use std::process::Stdio;
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(d) = &spec.cwd {
            cmd.current_dir(d);
        }
        let user = spec.user.as_deref().map(lookup_user).transpose()?;
        cmd.env_clear().envs(child_environment(user.as_ref(), &spec.env));
        prepare(&mut cmd, user.map(|u| (u.uid.as_raw(), u.gid.as_raw())));
        let mut child = cmd.spawn()?;
        let (tx, lines) = std::sync::mpsc::channel();
        // stdout and stderr are read by threads that end when the pipes close.
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(format!("stderr: {line}"));
                }
            });
        }
        let stdin = child.stdin.take();
        let tracked = Tracked::new(spec.track_in.as_deref(), Some(Pid::from_raw(child.id() as i32)));
        let mut held =
            HeldProcess { child, stdin, lines, output: Vec::new(), started: Instant::now(), _tracked: tracked };
        loop {
            match held.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    let is_ready = line.trim() == ready;
                    held.output.push(line);
                    if is_ready {
                        return Ok(held);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = held.child.try_wait()? {
                held.drain();
                return Err(std::io::Error::other(format!(
                    "exited ({status}) before printing {ready:?}{}",
                    held.output_tail()
                )));
            }
            let timed_out = held.started.elapsed() >= spec.timeout;
            if timed_out || cancel.load(Ordering::Relaxed) {
                held.kill(Duration::ZERO);
                let why = if timed_out {
                    format!("did not print {ready:?} within {:?} and was killed", spec.timeout)
                } else {
                    "was interrupted".to_string()
                };
                return Err(std::io::Error::other(format!("{why}{}", held.output_tail())));
            }
        }
    }

    /// An error if the process has exited (it must hold until released).
    pub fn check_alive(&mut self) -> std::io::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.drain();
            return Err(std::io::Error::other(format!("exited early ({status}){}", self.output_tail())));
        }
        Ok(())
    }

    /// Close stdin, wait up to `grace` for it to end, then SIGTERM (and
    /// SIGKILL after another grace period).
    pub fn release(mut self, grace: Duration) -> Released {
        drop(self.stdin.take());
        let ended_by_itself = self.kill(grace);
        self.drain();
        let code = self.child.try_wait().ok().flatten().and_then(|s| s.code());
        Released { output: self.output, code, ended_by_itself }
    }

    /// True when the process ended within `grace`; else it was signalled.
    fn kill(&mut self, grace: Duration) -> bool {
        let pg = Pid::from_raw(self.child.id() as i32);
        let wait = |child: &mut std::process::Child, d: Duration| {
            let end = Instant::now() + d;
            loop {
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    return true;
                }
                if Instant::now() >= end {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        if wait(&mut self.child, grace) {
            return true;
        }
        let _ = killpg(pg, Signal::SIGTERM);
        if !wait(&mut self.child, GRACE) {
            let _ = killpg(pg, Signal::SIGKILL);
            let _ = self.child.wait();
        }
        false
    }

    fn drain(&mut self) {
        std::thread::sleep(Duration::from_millis(10));
        while let Ok(line) = self.lines.try_recv() {
            self.output.push(line);
        }
    }

    fn output_tail(&self) -> String {
        let tail = &self.output[self.output.len().saturating_sub(5)..];
        if tail.is_empty() { String::new() } else { format!(": {}", tail.join(" | ")) }
    }
}

/// A child's record in a tracking directory, removed when it ended: the
/// pid (its process group) and its start time, so a recycled pid is never
/// mistaken for it.
struct Tracked(Option<PathBuf>);

impl Tracked {
    fn new(dir: Option<&std::path::Path>, pid: Option<Pid>) -> Tracked {
        let (Some(dir), Some(pid)) = (dir, pid) else { return Tracked(None) };
        let Some(start) = start_time(pid) else { return Tracked(None) };
        let file = dir.join(pid.as_raw().to_string());
        let written = crate::fsutil::create_dir_all(dir, crate::fsutil::PRIVATE_DIR).and_then(|()| {
            crate::fsutil::write_atomically(&file, start.to_string().as_bytes(), crate::fsutil::PRIVATE_FILE)
        });
        match written {
            Ok(()) => Tracked(Some(file)),
            Err(e) => {
                tracing::warn!("could not record child {pid} for recovery: {e}");
                Tracked(None)
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// When a process started (clock ticks since boot, `/proc/PID/stat`).
fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parens).
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// End the process groups of children a killed holdfast left running (their
/// records in `dir`): SIGTERM, then SIGKILL after a grace period. Returns a
/// line per group ended.
pub fn end_leftovers(dir: &std::path::Path) -> Vec<String> {
    let mut ended = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return ended };
    for e in entries.flatten() {
        let path = e.path();
        let recorded = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let pid = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()).map(Pid::from_raw);
        if let (Some(pid), Some(recorded)) = (pid, recorded)
            && start_time(pid) == Some(recorded)
        {
            let _ = killpg(pid, Signal::SIGTERM);
            let end = Instant::now() + GRACE;
            while Instant::now() < end && killpg(pid, None).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = killpg(pid, Signal::SIGKILL);
            ended.push(format!("process group {pid}"));
        }
        let _ = std::fs::remove_file(&path);
    }
    ended
}
