//! `holdfast serve DIR [--append-only]`: the storage host's side of an
//! `ssh://` repository. It speaks [`super::protocol`] on stdin/stdout (ssh
//! runs it, usually as an `authorized_keys` forced command) and stores
//! through a [`LocalBackend`] on DIR, so files reach the disk exactly as in
//! a local repository (temporary file, fsync, link, directory fsync).
//!
//! The client is not trusted: every name is checked against the layout, no
//! path component under DIR may be a symbolic link, ranges are checked
//! against the file, and with `--append-only` nothing is removed or
//! replaced — whatever the client sends. Requests are answered by a few
//! worker threads, so a client's pipelined requests overlap on disk, and the
//! bodies they hold at once (stores arriving, reads going out) stay within a
//! [`Budget`], so no client can make the storage host run out of memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use super::protocol::{self, FailureKind, Op, Reply, Request, Response, WireFile};
use super::{Backend, Dir, LocalBackend, ReadCache, Stored, relative_path};
use crate::error::{Error, Result};

/// Requests answered at once.
const WORKERS: usize = 4;

/// The bytes of bodies the server holds at once, arriving and going out:
/// sixteen default packs. A body larger than this is taken alone.
const BODY_BUDGET: u64 = 256 << 20;

/// What a refused destructive request is told.
const APPEND_ONLY: &str = "refused: this server is append-only (holdfast serve --append-only); \
     it never removes or replaces anything — prune or forget from a key with full rights, or on the storage host";

/// Serve the repository at `root` until the client closes the stream.
/// An error means the stream broke or carried something that is not this
/// protocol (the connection is then dropped; nothing half-done is left:
/// every store is atomic).
pub fn serve(root: &Path, append_only: bool, input: impl Read, output: impl Write + Send) -> Result<()> {
    serve_within(root, append_only, input, output, &Budget::new(BODY_BUDGET))
}

fn serve_within(
    root: &Path,
    append_only: bool,
    mut input: impl Read,
    output: impl Write + Send,
    budget: &Budget,
) -> Result<()> {
    let output = Mutex::new(output);
    let send = |id: u64, reply: Reply, body: &[u8]| -> bool {
        let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
        protocol::write_frame(&mut *out, &Response { id, reply }, body).is_ok()
    };
    let stream_error = |e: std::io::Error| Error::Invalid(format!("the client's request stream: {e}"));

    let Some((hello, _)) = protocol::read_frame::<Request>(&mut input, 0).map_err(stream_error)? else {
        return Ok(());
    };
    match hello.op {
        Op::Hello { version } if version == protocol::VERSION => {
            send(hello.id, Reply::Hello { version: protocol::VERSION, append_only }, &[]);
        }
        Op::Hello { version } => {
            let message = format!(
                "this holdfast serve speaks protocol {}, the client {version}: install the same holdfast version on both hosts",
                protocol::VERSION
            );
            send(hello.id, Reply::Failed { kind: FailureKind::Invalid, message: message.clone() }, &[]);
            return Err(Error::Invalid(message));
        }
        _ => return Err(Error::Invalid("the client did not start with a hello".into())),
    }

    let server = Server { backend: LocalBackend::new(root), root: root.to_path_buf(), append_only, budget };
    let (queue, requests) = mpsc::sync_channel::<(Request, Vec<u8>, Grant)>(WORKERS);
    let requests = Mutex::new(requests);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                let mut cache = ReadCache::default();
                loop {
                    let next = requests.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((request, body, arriving)) = next else { return };
                    let (reply, body, _going) = server.answer(request.op, body, &mut cache);
                    drop(arriving);
                    if !send(request.id, reply, &body) {
                        return;
                    }
                }
            });
        }
        let result = loop {
            let request = protocol::read_header::<Request>(&mut input, protocol::MAX_REQUEST_BODY).and_then(|r| {
                r.map(|(request, len)| {
                    if !matches!(request.op, Op::PutNew { .. } | Op::PutState { .. }) {
                        // A body no call takes is passed over, never held: a
                        // read then holds nothing while it waits for room.
                        let skipped = std::io::copy(&mut (&mut input).take(len), &mut std::io::sink())?;
                        if skipped != len {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        return Ok((request, Vec::new(), budget.take(0)));
                    }
                    // Room is made before the bytes are read, not after.
                    let grant = budget.take(len);
                    protocol::read_body(&mut input, len).map(|body| (request, body, grant))
                })
                .transpose()
            });
            match request {
                Ok(Some(request)) => {
                    if queue.send(request).is_err() {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(stream_error(e)),
            }
        };
        drop(queue);
        result
    })
}

/// A count of bytes held, shared by the threads that hold them: taking
/// more than is left waits until enough is given back. A take larger than
/// the whole budget waits until nothing else is held, then goes alone.
struct Budget {
    cap: u64,
    held: Mutex<u64>,
    returned: Condvar,
}

/// Bytes taken from a [`Budget`], given back when dropped.
struct Grant<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    fn new(cap: u64) -> Budget {
        Budget { cap, held: Mutex::new(0), returned: Condvar::new() }
    }

    fn take(&self, bytes: u64) -> Grant<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held > 0 && held.saturating_add(bytes) > self.cap {
            held = self.returned.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held += bytes;
        Grant { budget: self, bytes }
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let mut held = self.budget.held.lock().unwrap_or_else(|p| p.into_inner());
        *held -= self.bytes;
        self.budget.returned.notify_all();
    }
}

/// The repository being served and its rules.
struct Server<'a> {
    backend: LocalBackend,
    root: PathBuf,
    append_only: bool,
    budget: &'a Budget,
}

impl Server<'_> {
    /// One request's reply and body, and the room the body holds;
    /// failures become [`Reply::Failed`].
    fn answer(&self, op: Op, body: Vec<u8>, cache: &mut ReadCache) -> (Reply, Vec<u8>, Option<Grant<'_>>) {
        let mut room = None;
        match self.perform(op, body, cache, &mut room) {
            Ok((reply, body)) => (reply, body, room),
            Err((kind, message)) => (Reply::Failed { kind, message }, Vec::new(), None),
        }
    }

    /// `room` receives the budget taken for a read before it is made.
    fn perform<'s>(
        &'s self,
        op: Op,
        body: Vec<u8>,
        cache: &mut ReadCache,
        room: &mut Option<Grant<'s>>,
    ) -> Result<(Reply, Vec<u8>), (FailureKind, String)> {
        if self.append_only && op.destroys() {
            return Err((FailureKind::Refused, APPEND_ONLY.into()));
        }
        let b = &self.backend;
        Ok(match op {
            Op::Hello { .. } => return Err((FailureKind::Invalid, "hello twice".into())),
            Op::IsEmpty => (Reply::Bool(b.is_empty().map_err(failure)?), Vec::new()),
            Op::CreateLayout => {
                b.create_layout().map_err(failure)?;
                (Reply::Done, Vec::new())
            }
            Op::MissingLayout => (Reply::Names(b.missing_layout().map_err(failure)?), Vec::new()),
            Op::PutNew { dir, name } => {
                self.check_write(dir, &name)?;
                (Reply::Stored(b.put_new(dir, &name, body).map_err(failure)? == Stored::New), Vec::new())
            }
            Op::PutState { dir, name } => {
                self.check_write(dir, &name)?;
                b.put_state(dir, &name, &body).map_err(failure)?;
                (Reply::Done, Vec::new())
            }
            Op::Get { dir, name } => {
                let size = self.regular_file(dir, &name)?;
                if size > protocol::MAX_RESPONSE_BODY {
                    return Err((FailureKind::Invalid, format!("{name} is {size} bytes, too large to send whole")));
                }
                *room = Some(self.budget.take(size));
                (Reply::Data, b.get(dir, &name).map_err(failure)?)
            }
            Op::GetRange { dir, name, start, end } => {
                let size = self.regular_file(dir, &name)?;
                if start > end || end > size || end - start > protocol::MAX_REQUEST_BODY {
                    return Err((FailureKind::Invalid, format!("bytes {start}..{end} of {name} ({size} bytes)")));
                }
                *room = Some(self.budget.take(end - start));
                (Reply::Data, b.get_range(dir, &name, start..end, start..end, cache).map_err(failure)?)
            }
            Op::List { dir } => {
                self.no_symlink(&self.root.join(dir))?;
                let files: Vec<WireFile> = b
                    .list(dir)
                    .map_err(failure)?
                    .into_iter()
                    .map(|f| WireFile {
                        name: f.name,
                        size: f.size,
                        modified: f.modified.map(|t| (t.as_second(), t.subsec_nanosecond())),
                    })
                    .collect();
                (Reply::Files, postcard::to_stdvec(&files).map_err(|e| (FailureKind::Other, e.to_string()))?)
            }
            Op::Remove { dir, name } => {
                self.regular_file(dir, &name)?;
                b.remove(dir, &name).map_err(failure)?;
                (Reply::Done, Vec::new())
            }
        })
    }

    /// A store may go to any directory but the server's scratch space,
    /// under a plain name, through no symbolic link.
    fn check_write(&self, dir: Dir, name: &str) -> Result<(), (FailureKind, String)> {
        protocol::check_name(dir, name).map_err(|m| (FailureKind::Refused, m))?;
        if dir == Dir::Tmp {
            return Err((FailureKind::Refused, "tmp/ is the server's own".into()));
        }
        self.no_symlink(&self.root.join(relative_path(dir, name)))
    }

    /// The size of `dir/name`, a regular file reached through no symbolic
    /// link under the root.
    fn regular_file(&self, dir: Dir, name: &str) -> Result<u64, (FailureKind, String)> {
        protocol::check_name(dir, name).map_err(|m| (FailureKind::Refused, m))?;
        let path = self.root.join(relative_path(dir, name));
        self.no_symlink(&path)?;
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => Ok(md.len()),
            Ok(_) => Err((FailureKind::Refused, format!("{} is not a regular file", relative_path(dir, name)))),
            Err(e) => Err(failure(Error::io(&path, e))),
        }
    }

    /// Refuses a path with a symbolic link in any component below the root
    /// (the root itself may be one: that is the admin's choice).
    fn no_symlink(&self, path: &Path) -> Result<(), (FailureKind, String)> {
        let Ok(below) = path.strip_prefix(&self.root) else {
            return Err((FailureKind::Refused, "outside the repository".into()));
        };
        let mut at = self.root.clone();
        for part in below.components() {
            at.push(part);
            if std::fs::symlink_metadata(&at).is_ok_and(|md| md.file_type().is_symlink()) {
                return Err((FailureKind::Refused, format!("{} is a symbolic link", at.display())));
            }
        }
        Ok(())
    }
}

/// A backend error as the client will see it (its kind kept).
fn failure(e: Error) -> (FailureKind, String) {
    let kind = match &e {
        Error::Io { error, .. } => match error.kind() {
            std::io::ErrorKind::NotFound => FailureKind::NotFound,
            std::io::ErrorKind::AlreadyExists => FailureKind::AlreadyExists,
            _ => FailureKind::Other,
        },
        _ => FailureKind::Other,
    };
    (kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backend::protocol::write_frame;

    /// The server's answers to `requests` (each with a body), in id order.
    fn exchange(root: &Path, append_only: bool, requests: &[(Op, &[u8])]) -> Vec<(Reply, Vec<u8>)> {
        let mut input = Vec::new();
        write_frame(&mut input, &Request { id: 0, op: Op::Hello { version: protocol::VERSION } }, &[]).unwrap();
        for (i, (op, body)) in requests.iter().enumerate() {
            write_frame(&mut input, &Request { id: i as u64 + 1, op: op.clone() }, body).unwrap();
        }
        let mut output = Vec::new();
        serve(root, append_only, &input[..], &mut output).unwrap();
        let mut out = &output[..];
        let mut answers = Vec::new();
        while let Some((r, body)) = protocol::read_frame::<Response>(&mut out, u64::MAX).unwrap() {
            answers.push((r.id, r.reply, body));
        }
        answers.sort_by_key(|a| a.0);
        assert_eq!(answers[0].1, Reply::Hello { version: protocol::VERSION, append_only });
        answers.into_iter().skip(1).map(|(_, r, b)| (r, b)).collect()
    }

    fn refused(reply: &Reply) -> bool {
        matches!(reply, Reply::Failed { kind: FailureKind::Refused, .. })
    }

    #[test]
    fn append_only_stores_new_names_and_refuses_removes_and_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let name = "ab".repeat(32);
        let packs = |name: &str| Op::PutNew { dir: Dir::Packs, name: name.into() };
        // Requests are answered concurrently: the layout first, on its own.
        assert_eq!(exchange(&root, true, &[(Op::CreateLayout, b"")]), [(Reply::Done, Vec::new())]);
        let answers = exchange(
            &root,
            true,
            &[
                (Op::IsEmpty, b""),
                (packs(&name), b"first"),
                (packs(&name), b"second"),
                (Op::Remove { dir: Dir::Packs, name: name.clone() }, b""),
                (Op::PutState { dir: Dir::Marks, name: name.clone() }, b"0"),
            ],
        );
        assert_eq!(answers[0].0, Reply::Bool(false));
        // The two stores of one name race on the workers: one wins, the
        // other finds the name taken and changes nothing.
        let first_won = answers[1].0 == Reply::Stored(true);
        assert_eq!(answers[2].0, Reply::Stored(!first_won), "{answers:?}");
        let winner: &[u8] = if first_won { b"first" } else { b"second" };
        assert_eq!(std::fs::read(root.join("packs/ab").join(&name)).unwrap(), winner);
        assert!(refused(&answers[3].0) && refused(&answers[4].0), "{answers:?}");
        assert!(!root.join("marks").join(&name).exists());
    }

    #[test]
    fn names_that_leave_the_repository_and_symlinks_inside_it_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        LocalBackend::new(&root).create_layout().unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("snapshots/aa")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("packs/cd")).unwrap();
        let answers = exchange(
            &root,
            false,
            &[
                (Op::Get { dir: Dir::Root, name: "../secret".into() }, b""),
                (Op::Get { dir: Dir::Snapshots, name: "aa".into() }, b""),
                (Op::PutNew { dir: Dir::Packs, name: "cdef".into() }, b"x"),
                (Op::Remove { dir: Dir::Snapshots, name: "aa".into() }, b""),
                (Op::PutNew { dir: Dir::Tmp, name: "x.tmp".into() }, b"x"),
                (Op::GetRange { dir: Dir::Snapshots, name: "aa".into(), start: 0, end: u64::MAX }, b""),
            ],
        );
        assert!(answers.iter().all(|(r, _)| refused(r)), "{answers:?}");
        assert!(root.join("snapshots/aa").is_symlink());
        assert!(!dir.path().join("cdef").exists());
    }

    #[test]
    fn bodies_wait_for_room_and_one_larger_than_the_budget_goes_alone() {
        let budget = Budget::new(100);
        let first = budget.take(60);
        std::thread::scope(|scope| {
            let (taken, was_taken) = mpsc::channel();
            let budget = &budget;
            scope.spawn(move || {
                let second = budget.take(60);
                taken.send(()).unwrap();
                drop(second);
                let _huge = budget.take(1000);
                taken.send(()).unwrap();
            });
            let wait = std::time::Duration::from_millis(200);
            assert!(was_taken.recv_timeout(wait).is_err(), "60 + 60 fit in 100");
            drop(first);
            assert!(was_taken.recv_timeout(wait * 25).is_ok(), "room given back lets the second in");
            assert!(was_taken.recv_timeout(wait * 25).is_ok(), "alone, a body may exceed the budget");
        });
        assert_eq!(*budget.held.lock().unwrap(), 0);
    }

    #[test]
    fn a_budget_smaller_than_the_bodies_still_answers_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        LocalBackend::new(&root).create_layout().unwrap();
        let names: Vec<String> = (0..12u8).map(|i| format!("{i:02x}").repeat(32)).collect();
        let body = vec![7u8; 4096];
        let mut input = Vec::new();
        write_frame(&mut input, &Request { id: 0, op: Op::Hello { version: protocol::VERSION } }, &[]).unwrap();
        for (i, name) in names.iter().enumerate() {
            let op = Op::PutNew { dir: Dir::Packs, name: name.clone() };
            write_frame(&mut input, &Request { id: 2 * i as u64 + 1, op }, &body).unwrap();
            let op = Op::Get { dir: Dir::Packs, name: name.clone() };
            write_frame(&mut input, &Request { id: 2 * i as u64 + 2, op }, &[]).unwrap();
        }
        let mut output = Vec::new();
        serve_within(&root, true, &input[..], &mut output, &Budget::new(5000)).unwrap();
        let mut out = &output[..];
        let mut answered = 0;
        while let Some((r, _)) = protocol::read_frame::<Response>(&mut out, u64::MAX).unwrap() {
            assert!(!matches!(r.reply, Reply::Failed { .. }) || r.id % 2 == 0, "{r:?}");
            answered += 1;
        }
        assert_eq!(answered, 1 + 2 * names.len());
        for name in &names {
            assert_eq!(std::fs::read(root.join("packs").join(&name[..2]).join(name)).unwrap(), body);
        }
    }

    #[test]
    fn ranges_beyond_the_file_are_refused_and_reads_return_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        LocalBackend::new(&root).create_layout().unwrap();
        std::fs::write(root.join("index/00ff"), b"0123456789").unwrap();
        let range = |start, end| Op::GetRange { dir: Dir::Index, name: "00ff".into(), start, end };
        let answers = exchange(
            &root,
            false,
            &[(range(2, 5), b""), (range(5, 2), b""), (range(0, 11), b""), (Op::List { dir: Dir::Index }, b"")],
        );
        assert_eq!(answers[0], (Reply::Data, b"234".to_vec()));
        assert!(matches!(answers[1].0, Reply::Failed { kind: FailureKind::Invalid, .. }));
        assert!(matches!(answers[2].0, Reply::Failed { kind: FailureKind::Invalid, .. }));
        let files: Vec<WireFile> = postcard::from_bytes(&answers[3].1).unwrap();
        assert_eq!((files[0].name.as_str(), files[0].size), ("00ff", 10));
    }
}
