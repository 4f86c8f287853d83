//! A repository on another host reached by SSH: `ssh://[user@]host[:port]/path`.
//!
//! The transport is the system's OpenSSH client (`BatchMode=yes`, the
//! configured identity and known_hosts, keepalives), which runs
//! `holdfast serve PATH` on the storage host — or whatever the host's
//! `authorized_keys` forces for the key, typically
//! `holdfast serve --append-only PATH`. No sftp subsystem is needed. The
//! requests are the [`Backend`] trait's calls ([`super::protocol`]), many in
//! flight on each connection: every engine thread sends its request and
//! waits for its own answer, so a long round trip costs little. Transfers
//! spread over up to four connections, opened as the first gets busy: one
//! SSH channel moves at most its window per round trip.
//!
//! A connection that breaks (the host rebooted, sshd killed, the link
//! dead for longer than the timeout) is opened again by the next request,
//! and the failed request is sent again; repeated failures give up within
//! a bounded time. A request on which nothing moves for `timeout` breaks
//! the connection. An append-only server is reported by the handshake,
//! so backups leave what they cannot delete, as through put-only S3 keys.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufReader, Read, Write};
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::protocol::{self, FailureKind, Op, Reply, Request, Response, WireFile};
use super::{Backend, Dir, FileInfo, ReadAhead, ReadCache, Stored};
use crate::error::{Error, Result};

/// Where the repository is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSettings {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The repository's directory on the host.
    pub path: String,
    /// The private key to log in with (else ssh's defaults).
    pub identity_file: Option<PathBuf>,
    /// The host's known key(s) (else ssh's defaults); an unknown or
    /// changed host key fails the connection.
    pub known_hosts_file: Option<PathBuf>,
    /// What runs on the host, before the quoted path (a forced command in
    /// `authorized_keys` takes its place).
    pub remote_command: String,
    /// Transfers in flight at once (over up to half as many ssh
    /// connections, at most four).
    pub connections: usize,
    /// How long a request may see no progress, and a connection take to open.
    pub timeout: Duration,
}

impl SshSettings {
    pub const DEFAULT_CONNECTIONS: usize = 8;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_REMOTE_COMMAND: &'static str = "holdfast serve";

    /// Settings from `ssh://[user@]host[:port]/path` with the defaults.
    pub fn from_url(url: &str) -> std::result::Result<SshSettings, String> {
        // Messages show the URL without a password, which is refused.
        let shown = crate::units::hide_credentials(url);
        let rest = url.strip_prefix("ssh://").ok_or_else(|| format!("{shown:?} does not start with ssh://"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => return Err(format!("{shown:?} names no directory on the host (ssh://host/path)")),
        };
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if user.is_some_and(|u| u.contains(':')) {
            return Err(format!(
                "{shown:?}: a password in an ssh:// URL is not taken (ssh is run in batch mode); \
                 give identity_file = \"…\" with a key instead"
            ));
        }
        let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| format!("{shown:?}: unclosed [ in the host"))?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err(format!("{shown:?}: {after:?} after the host's ]: only :PORT may follow"));
            }
            (host, after.strip_prefix(':'))
        } else {
            match host_port.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    // Not echoed: a password holding `/` is read as a port.
                    .ok_or_else(|| format!("{shown:?}: the port is not a number from 1 to 65535"))
            })
            .transpose()?;
        let word =
            |s: &str| !s.is_empty() && !s.starts_with('-') && s.bytes().all(|b| b.is_ascii_graphic() && b != b'@');
        if !word(host) {
            return Err(format!("{shown:?}: {host:?} is not a host name"));
        }
        if let Some(u) = user.filter(|u| !word(u)) {
            return Err(format!("{shown:?}: {u:?} is not a user name"));
        }
        if path.len() < 2 || path.contains('\0') {
            return Err(format!("{shown:?} names no directory on the host (ssh://host/path)"));
        }
        Ok(SshSettings {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
            path: path.to_string(),
            identity_file: None,
            known_hosts_file: None,
            remote_command: Self::DEFAULT_REMOTE_COMMAND.into(),
            connections: Self::DEFAULT_CONNECTIONS,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// `ssh://[user@]host[:port]/path`.
    pub fn url(&self) -> String {
        let user = self.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("ssh://{user}{host}{port}{}", self.path)
    }

    /// The `ssh` command line (no secret is on it: the key is a file).
    fn command(&self) -> Command {
        let secs = self.timeout.as_secs().max(1);
        let mut cmd = Command::new("ssh");
        cmd.args(["-x", "-T", "-e", "none", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("ConnectTimeout={secs}"))
            .arg("-o")
            .arg(format!("ServerAliveInterval={}", secs.div_ceil(3)))
            .args(["-o", "ServerAliveCountMax=3"]);
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        if let Some(identity) = &self.identity_file {
            cmd.arg("-i").arg(identity).args(["-o", "IdentitiesOnly=yes"]);
        }
        if let Some(known) = &self.known_hosts_file {
            cmd.arg("-o").arg(format!("UserKnownHostsFile={}", known.display()));
            cmd.args(["-o", "StrictHostKeyChecking=yes"]);
        }
        if let Some(user) = &self.user {
            cmd.arg("-l").arg(user);
        }
        cmd.arg("--").arg(&self.host).arg(format!("{} {}", self.remote_command, shell_quote(&self.path)));
        // ssh forwards no environment unless told to; make sure it has
        // none of holdfast's secrets to forward.
        for secret in ["HOLDFAST_PASSPHRASE", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"] {
            cmd.env_remove(secret);
        }
        cmd
    }
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Tries to reach the host before a request fails for good.
const ATTEMPTS: u32 = 4;

/// The storage on the other end of an SSH connection.
pub struct SshBackend {
    settings: SshSettings,
    /// The ssh connections: the first opened by `connect`, the others in
    /// the background once transfers keep the open ones busy. One SSH
    /// channel moves at most its window (2 MiB in OpenSSH) per round trip,
    /// ~100 MB/s at 20 ms, so big transfers are spread over several.
    streams: Vec<Arc<Stream>>,
    append_only: bool,
}

/// One of the backend's ssh connections and the requests waiting on it.
#[derive(Default)]
struct Stream {
    link: Mutex<Link>,
    in_flight: AtomicUsize,
    /// Ready for requests (stream 0 always is: it reconnects on demand).
    open: AtomicBool,
    /// An extra stream being opened, or that failed to: not opened again.
    started: AtomicBool,
}

#[derive(Default)]
struct Link {
    connection: Option<Arc<Connection>>,
    /// Connections that failed to open since the last one that worked.
    failures: u32,
    last_failure: String,
}

/// At most this many ssh connections per repository; more would only add
/// handshakes and encryption work.
const MAX_STREAMS: usize = 4;

impl SshBackend {
    /// Connect and shake hands (so a wrong host, key or path fails here).
    pub fn connect(settings: &SshSettings) -> Result<SshBackend> {
        let connection = Connection::open(settings).map_err(|reason| unreachable(settings, &reason))?;
        let append_only = connection.append_only.load(Ordering::Relaxed);
        // Two transfers in flight per connection keep each one busy.
        let streams: Vec<Arc<Stream>> =
            (0..settings.connections.div_ceil(2).clamp(1, MAX_STREAMS)).map(|_| Arc::default()).collect();
        streams[0].link.lock().unwrap_or_else(|p| p.into_inner()).connection = Some(Arc::new(connection));
        streams[0].open.store(true, Ordering::Relaxed);
        streams[0].started.store(true, Ordering::Relaxed);
        Ok(SshBackend { settings: settings.clone(), streams, append_only })
    }

    /// The stream for a request: small ones on the first, transfers on the
    /// least busy open one. When every open stream already carries two, the
    /// next stream is opened in the background (the request does not wait
    /// for its handshake); one that cannot open is not tried again, and the
    /// first stream's reconnects decide whether the host is reachable.
    fn pick(&self, transfer: bool) -> usize {
        if !transfer {
            return 0;
        }
        let mut best = (0, usize::MAX);
        for (i, stream) in self.streams.iter().enumerate() {
            if !stream.open.load(Ordering::Relaxed) {
                continue;
            }
            let load = stream.in_flight.load(Ordering::Relaxed);
            if load < best.1 {
                best = (i, load);
            }
        }
        if best.1 >= 2
            && let Some(next) = self.streams.iter().find(|s| !s.started.swap(true, Ordering::Relaxed))
        {
            let (stream, settings) = (next.clone(), self.settings.clone());
            std::thread::spawn(move || match Connection::open(&settings) {
                Ok(c) => {
                    stream.link.lock().unwrap_or_else(|p| p.into_inner()).connection = Some(Arc::new(c));
                    stream.open.store(true, Ordering::Relaxed);
                }
                Err(reason) => tracing::debug!("{}: another connection did not open: {reason}", settings.url()),
            });
        }
        best.0
    }

    /// A broken extra stream: its requests go elsewhere, and it may be
    /// opened again when transfers need it.
    fn drop_extra(&self, i: usize) {
        let stream = &self.streams[i];
        stream.open.store(false, Ordering::Relaxed);
        if let Some(c) = stream.link.lock().unwrap_or_else(|p| p.into_inner()).connection.take() {
            c.close();
        }
        stream.started.store(false, Ordering::Relaxed);
    }

    /// A live connection of stream `i`: the current one, or (stream 0) a
    /// new one when it broke.
    fn connection(&self, i: usize) -> Result<Arc<Connection>> {
        let stream = &self.streams[i];
        let mut link = stream.link.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = link.connection.as_ref().filter(|c| c.broken().is_none()) {
            return Ok(c.clone());
        }
        if i > 0 {
            drop(link);
            self.drop_extra(i);
            return Err(unreachable(&self.settings, "the connection broke"));
        }
        if link.failures >= ATTEMPTS {
            return Err(unreachable(&self.settings, &link.last_failure));
        }
        if link.failures > 0 {
            std::thread::sleep(Duration::from_secs(1 << link.failures.min(4)));
        }
        match Connection::open(&self.settings) {
            Ok(c) => {
                link.failures = 0;
                let c = Arc::new(c);
                link.connection = Some(c.clone());
                Ok(c)
            }
            Err(reason) => {
                link.failures += 1;
                link.last_failure = reason.clone();
                Err(unreachable(&self.settings, &reason))
            }
        }
    }

    /// Send `op` (with `body`) and wait for its answer, on a new
    /// connection when the one in use breaks. Every call is safe to send
    /// again: stores are write-once, a repeated remove finds nothing.
    fn request(&self, op: Op, body: &[u8], what: &str) -> Result<(Reply, Vec<u8>)> {
        let transfer = matches!(op, Op::PutNew { .. } | Op::Get { .. } | Op::GetRange { .. });
        let mut last = String::new();
        // Each extra stream may break once on top of the first one's attempts.
        for attempt in 0..ATTEMPTS as usize + self.streams.len() - 1 {
            if attempt > 0 {
                tracing::warn!("{}: {last}; sending {what} again", self.settings.url());
            }
            let i = self.pick(transfer);
            let stream = &self.streams[i];
            stream.in_flight.fetch_add(1, Ordering::Relaxed);
            let answer = self.connection(i).map(|c| c.call(op.clone(), body, self.settings.timeout));
            stream.in_flight.fetch_sub(1, Ordering::Relaxed);
            match answer {
                Ok(Ok((Reply::Failed { kind, message }, _))) => return Err(self.failed(kind, message, what)),
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(reason)) => {
                    if i > 0 {
                        self.drop_extra(i);
                    }
                    last = reason;
                }
                Err(e) if i > 0 => last = e.to_string(),
                Err(e) => return Err(e),
            }
        }
        Err(unreachable(&self.settings, &last))
    }

    fn failed(&self, kind: FailureKind, message: String, what: &str) -> Error {
        let path = format!("{}: {what}", self.settings.url());
        match kind {
            FailureKind::NotFound => Error::io(path, std::io::ErrorKind::NotFound.into()),
            FailureKind::AlreadyExists => Error::io(path, std::io::ErrorKind::AlreadyExists.into()),
            FailureKind::Refused => Error::io(path, std::io::Error::new(std::io::ErrorKind::PermissionDenied, message)),
            FailureKind::Invalid | FailureKind::Other => Error::io(path, std::io::Error::other(message)),
        }
    }

    fn unexpected(&self, reply: Reply, what: &str) -> Error {
        Error::Invalid(format!("{}: {what}: the server answered {reply:?}", self.settings.url()))
    }
}

fn unreachable(settings: &SshSettings, reason: &str) -> Error {
    Error::io(settings.url(), std::io::Error::new(std::io::ErrorKind::ConnectionAborted, reason.to_string()))
}

impl Backend for SshBackend {
    fn location(&self) -> String {
        self.settings.url()
    }

    fn parallelism(&self) -> usize {
        self.settings.connections.max(1)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn put_only_backups(&self) -> bool {
        self.append_only
    }

    fn is_empty(&self) -> Result<bool> {
        match self.request(Op::IsEmpty, &[], "is it empty")? {
            (Reply::Bool(b), _) => Ok(b),
            (other, _) => Err(self.unexpected(other, "is it empty")),
        }
    }

    fn create_layout(&self) -> Result<()> {
        self.request(Op::CreateLayout, &[], "creating the layout").map(drop)
    }

    fn missing_layout(&self) -> Result<Vec<String>> {
        match self.request(Op::MissingLayout, &[], "the layout")? {
            (Reply::Names(names), _) => Ok(names),
            (other, _) => Err(self.unexpected(other, "the layout")),
        }
    }

    fn put_new(&self, dir: Dir, name: &str, bytes: Vec<u8>) -> Result<Stored> {
        let what = super::relative_path(dir, name);
        match self.request(Op::PutNew { dir, name: name.into() }, &bytes, &what)? {
            (Reply::Stored(true), _) => Ok(Stored::New),
            (Reply::Stored(false), _) => Ok(Stored::AlreadyThere),
            (other, _) => Err(self.unexpected(other, &what)),
        }
    }

    fn put_state(&self, dir: Dir, name: &str, bytes: &[u8]) -> Result<()> {
        let what = super::relative_path(dir, name);
        self.request(Op::PutState { dir, name: name.into() }, bytes, &what).map(drop)
    }

    fn get(&self, dir: Dir, name: &str) -> Result<Vec<u8>> {
        let what = super::relative_path(dir, name);
        match self.request(Op::Get { dir, name: name.into() }, &[], &what)? {
            (Reply::Data, body) => Ok(body),
            (other, _) => Err(self.unexpected(other, &what)),
        }
    }

    fn get_range(
        &self,
        dir: Dir,
        name: &str,
        range: Range<u64>,
        worth: Range<u64>,
        cache: &mut ReadCache,
    ) -> Result<Vec<u8>> {
        let what = super::relative_path(dir, name);
        cache.state::<ReadAhead>().read(name, range, worth, |span| {
            let op = Op::GetRange { dir, name: name.into(), start: span.start, end: span.end };
            match self.request(op, &[], &what)? {
                (Reply::Data, body) if body.len() as u64 == span.end - span.start => Ok(body),
                (Reply::Data, _) => Err(Error::io(
                    format!("{}: {what}", self.settings.url()),
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "shorter than asked for"),
                )),
                (other, _) => Err(self.unexpected(other, &what)),
            }
        })
    }

    fn list(&self, dir: Dir) -> Result<Vec<FileInfo>> {
        let what = format!("the listing of {}", protocol::dir_name(dir));
        let body = match self.request(Op::List { dir }, &[], &what)? {
            (Reply::Files, body) => body,
            (other, _) => return Err(self.unexpected(other, &what)),
        };
        let files: Vec<WireFile> =
            postcard::from_bytes(&body).map_err(|e| Error::damaged(format!("{what} from the server"), e))?;
        Ok(files
            .into_iter()
            .map(|f| FileInfo {
                name: f.name,
                size: f.size,
                modified: f.modified.and_then(|(s, ns)| jiff::Timestamp::new(s, ns).ok()),
                tag: None,
            })
            .collect())
    }

    fn remove(&self, dir: Dir, name: &str) -> Result<()> {
        let what = super::relative_path(dir, name);
        self.request(Op::Remove { dir, name: name.into() }, &[], &what).map(drop)
    }
}

impl Drop for SshBackend {
    fn drop(&mut self) {
        for stream in &self.streams {
            if let Some(c) = stream.link.lock().unwrap_or_else(|p| p.into_inner()).connection.take() {
                c.close();
            }
        }
    }
}

/// What a waiting request is handed: the reply and its body, or why the
/// connection broke.
type Answer = std::result::Result<(Reply, Vec<u8>), String>;

/// One running `ssh` and the requests waiting on it.
struct Connection {
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
    /// When bytes last moved either way (ms since `started`).
    progress: Arc<AtomicU64>,
    started: Instant,
    /// What the server said in the handshake.
    append_only: AtomicBool,
}

#[derive(Default)]
struct Waiting {
    by_id: HashMap<u64, mpsc::Sender<Answer>>,
    /// Set once the connection broke: why.
    broken: Option<String>,
}

/// Bodies are written in pieces this big, so a slow link shows progress.
const WRITE_PIECE: usize = 1 << 20;

impl Connection {
    /// Start `ssh` and shake hands.
    fn open(settings: &SshSettings) -> std::result::Result<Connection, String> {
        let mut cmd = settings.command();
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group: a Ctrl-C meant for holdfast does not cut
        // the link under a run that is finishing cleanly.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("ssh has no pipes".into());
        };
        crate::fsutil::widen_pipe(stdin.as_fd());
        crate::fsutil::widen_pipe(stdout.as_fd());
        let started = Instant::now();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let progress = Arc::new(AtomicU64::new(0));
        let said = Arc::new(Mutex::new(String::new()));
        let said_by_ssh = said.clone();
        // Read to the end (a full pipe would stop ssh), keep the last lines.
        let stderr_thread = std::thread::spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut piece = [0u8; 8192];
            let mut stderr = stderr;
            while let Ok(n @ 1..) = stderr.read(&mut piece) {
                kept.extend_from_slice(&piece[..n]);
                if kept.len() > 16 << 10 {
                    kept.drain(..kept.len() - (8 << 10));
                }
            }
            *said_by_ssh.lock().unwrap_or_else(|p| p.into_inner()) = String::from_utf8_lossy(&kept).into_owned();
        });
        {
            let (waiting, progress) = (waiting.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut input = BufReader::with_capacity(1 << 20, stdout);
                let why = loop {
                    match protocol::read_frame::<Response>(&mut input, protocol::MAX_RESPONSE_BODY) {
                        Ok(Some((response, body))) => {
                            progress.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            let to = waiting.lock().unwrap_or_else(|p| p.into_inner()).by_id.remove(&response.id);
                            if let Some(to) = to {
                                let _ = to.send(Ok((response.reply, body)));
                            }
                        }
                        Ok(None) => break "the connection closed".to_string(),
                        Err(e) => break format!("the connection broke: {e}"),
                    }
                };
                // ssh says why on stderr as it exits.
                let _ = stderr_thread.join();
                let said = said.lock().unwrap_or_else(|p| p.into_inner());
                let why = match said.trim() {
                    "" => why,
                    s => format!("{why}: ssh said: {}", s.lines().rev().take(3).collect::<Vec<_>>().join(" / ")),
                };
                let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                w.broken.get_or_insert(why.clone());
                for (_, to) in w.by_id.drain() {
                    let _ = to.send(Err(why.clone()));
                }
            });
        }
        let connection = Connection {
            child: Mutex::new(child),
            stdin: Mutex::new(Some(stdin)),
            waiting,
            next_id: AtomicU64::new(1),
            progress,
            started,
            append_only: AtomicBool::new(false),
        };
        let hello = connection.call(Op::Hello { version: protocol::VERSION }, &[], settings.timeout);
        match hello {
            Ok((Reply::Hello { version, append_only }, _)) if version == protocol::VERSION => {
                connection.append_only.store(append_only, Ordering::Relaxed);
                Ok(connection)
            }
            Ok((Reply::Failed { message, .. }, _)) => Err(message),
            Ok((other, _)) => Err(format!("the server answered the handshake with {other:?}: is it holdfast serve?")),
            Err(reason) => Err(reason),
        }
    }

    /// Why it broke, once it has.
    fn broken(&self) -> Option<String> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).broken.clone()
    }

    /// Mark it broken and end `ssh` (every waiting request then fails).
    fn break_off(&self, why: String) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).broken.get_or_insert(why);
        let _ = self.child.lock().unwrap_or_else(|p| p.into_inner()).kill();
    }

    fn close(&self) {
        // Closing stdin lets the server finish and ssh exit; a stuck one is killed.
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn mark_progress(&self) {
        self.progress.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Send one request and wait for its answer; `Err` when the connection
    /// broke or nothing moved on it for `timeout`.
    fn call(&self, op: Op, body: &[u8], timeout: Duration) -> Answer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (to, answer) = mpsc::channel();
        {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(why) = &w.broken {
                return Err(why.clone());
            }
            w.by_id.insert(id, to);
        }
        let sent = self.send(&Request { id, op }, body);
        if let Err(e) = sent {
            self.waiting.lock().unwrap_or_else(|p| p.into_inner()).by_id.remove(&id);
            let why = format!("sending a request failed: {e}");
            self.break_off(why.clone());
            return Err(self.broken().unwrap_or(why));
        }
        let asked = Instant::now();
        loop {
            match answer.recv_timeout(Duration::from_millis(500)) {
                Ok(a) => return a,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.broken().unwrap_or_else(|| "the connection closed".into()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = self.started.elapsed();
                    let moved = Duration::from_millis(self.progress.load(Ordering::Relaxed));
                    if asked.elapsed() > timeout && now.saturating_sub(moved) > timeout {
                        let why = format!("no answer for {} s", timeout.as_secs());
                        self.break_off(why.clone());
                        return Err(why);
                    }
                }
            }
        }
    }

    /// Write one frame, its body in pieces (progress marked after each).
    fn send(&self, request: &Request, body: &[u8]) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let out = stdin.as_mut().ok_or_else(|| std::io::Error::other("closed"))?;
        let head = postcard::to_stdvec(request).map_err(std::io::Error::other)?;
        out.write_all(&(head.len() as u32).to_le_bytes())?;
        out.write_all(&head)?;
        out.write_all(&(body.len() as u64).to_le_bytes())?;
        for piece in body.chunks(WRITE_PIECE) {
            out.write_all(piece)?;
            self.mark_progress();
        }
        out.flush()?;
        self.mark_progress();
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl fmt::Debug for SshBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SshBackend({})", self.settings.url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_user_host_port_and_path() {
        let s = SshSettings::from_url("ssh://backup@box.example.net:2222/srv/holdfast/shop").unwrap();
        assert_eq!(
            (s.user.as_deref(), s.host.as_str(), s.port, s.path.as_str()),
            (Some("backup"), "box.example.net", Some(2222), "/srv/holdfast/shop")
        );
        assert_eq!(s.url(), "ssh://backup@box.example.net:2222/srv/holdfast/shop");
        let v6 = SshSettings::from_url("ssh://[::1]:22/r").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", Some(22)));
        assert_eq!(v6.url(), "ssh://[::1]:22/r");
        for bad in
            ["ssh://host", "ssh://host/", "ssh://-oProxyCommand=x/r", "ssh://-l@host/r", "ssh://h:0/r", "ssh://h:x/r"]
        {
            assert!(SshSettings::from_url(bad).is_err(), "{bad}");
        }
        assert!(SshSettings::from_url("ssh://[::1]junk/r").is_err());
        for url in ["ssh://alice:Secret@box/r", "ssh://alice:Se#cret@box/r", "ssh://alice:Se/cret@box/r"] {
            let e = SshSettings::from_url(url).unwrap_err();
            assert!(!e.contains("Se") && (e.contains("identity_file") || e.contains("port")), "{e}");
        }
        let at_in_path = SshSettings::from_url("ssh://backup@box:2222/srv/r@v1").unwrap();
        assert_eq!((at_in_path.user.as_deref(), at_in_path.path.as_str()), (Some("backup"), "/srv/r@v1"));
    }

    #[test]
    fn the_path_reaches_the_remote_shell_as_one_word() {
        let mut s = SshSettings::from_url("ssh://h/srv/it's here; rm -rf ~").unwrap();
        s.identity_file = Some("/etc/holdfast/id_ed25519".into());
        let cmd = s.command();
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args.last().unwrap(), r"holdfast serve '/srv/it'\''s here; rm -rf ~'");
        assert_eq!(args[args.len() - 3..args.len() - 1], ["--", "h"]);
        assert!(args.windows(2).any(|w| w == ["-i", "/etc/holdfast/id_ed25519"]));
    }
}
