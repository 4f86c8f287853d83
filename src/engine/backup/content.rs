//! The content pipeline of a backup: readers open and chunk the files the
//! scan hands them and hash each chunk; a chunk not yet in the repository
//! goes to the sealers (compress, encrypt, prove it opens again); one writer
//! appends sealed chunks to packs. Tasks go in through a bounded channel and
//! each file's outcome comes back, so the scan waits when readers are busy
//! and memory stays bounded however many files there are.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use super::scan::Slot;
use crate::engine::chunker::Chunker;
use crate::engine::crypto::{Id, Keys, ObjectKind};
use crate::engine::fsmeta::data_regions;
use crate::engine::index::IndexFile;
use crate::engine::pack::{PackUploader, PackWriter};
use crate::engine::repository::{KnownBlobs, Repository};
use crate::engine::tree::Piece;
use crate::error::{Error, IoContext, Result};

/// A file the scan wants read, and where its entry waits.
pub(super) struct FileJob {
    pub slot: Slot,
    pub path: PathBuf,
    /// Device and inode the scan saw: the file the reader must find.
    pub dev: u64,
    pub inode: u64,
    /// Size the scan saw.
    pub size: u64,
    /// Set on the first link of a hard-linked inode: the other links wait
    /// for this outcome.
    pub link: Option<(u64, u64)>,
}

/// A unit of reading.
pub(super) enum Task {
    /// One file, chunked on its own.
    Large(FileJob),
    /// Small files of one directory, read into one shared chunk (but for
    /// those that stand alone: `FileReader::stands_alone`).
    Batch(Vec<FileJob>),
}

/// What reading one file produced.
pub(super) struct FileOutcome {
    pub job: FileJob,
    pub pieces: Vec<Piece>,
    pub size: u64,
    pub bytes_read: u64,
    pub changed: bool,
    /// Why it could not be read (it is left out of the snapshot).
    pub skipped: Option<String>,
}

impl FileOutcome {
    fn new(job: FileJob) -> FileOutcome {
        FileOutcome { job, pieces: Vec::new(), size: 0, bytes_read: 0, changed: false, skipped: None }
    }
}

/// The scan's end of the pipeline.
pub(super) struct Feed {
    tasks: Option<SyncSender<Task>>,
    outcomes: Receiver<FileOutcome>,
}

impl Feed {
    /// Queue a task; waits while the readers are all busy.
    pub fn send(&self, task: Task) -> Result<()> {
        match &self.tasks {
            Some(t) => t.send(task).map_err(|_| stopped()),
            None => Err(stopped()),
        }
    }

    /// An outcome that is ready, without waiting.
    pub fn ready(&self) -> Option<FileOutcome> {
        self.outcomes.try_recv().ok()
    }

    /// No more tasks.
    pub fn close(&mut self) {
        self.tasks = None;
    }

    /// The next outcome, waiting for it; `None` when every reader is done.
    pub fn wait(&self) -> Option<FileOutcome> {
        self.outcomes.recv().ok()
    }
}

/// What a thread gets when another one stopped the pipeline; the error
/// that stopped it is the one reported.
const STOPPED: &str = "backup pipeline stopped";

pub(super) fn stopped() -> Error {
    Error::Invalid(STOPPED.into())
}

fn is_stopped(e: &Error) -> bool {
    matches!(e, Error::Invalid(m) if m == STOPPED)
}

/// Figures about blobs written by this run.
#[derive(Default)]
pub(super) struct BlobStats {
    pub blobs: u64,
    pub raw_bytes: u64,
    pub sealed_bytes: u64,
}

impl BlobStats {
    pub fn add(&mut self, raw: usize, sealed: usize) {
        self.blobs += 1;
        self.raw_bytes += raw as u64;
        self.sealed_bytes += sealed as u64;
    }
}

/// The first error of any pipeline thread; the others stop when it is set.
#[derive(Default)]
pub(super) struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<Error>>,
}

impl Failure {
    pub fn set(&self, e: Error) {
        if let Ok(mut f) = self.first.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    pub fn is_set(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
    /// Stop the others without an error of their own to report.
    fn stop(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }
    pub fn take(&self) -> Option<Error> {
        self.first.lock().ok().and_then(|mut f| f.take())
    }
}

/// Run `scan` with the pipeline running beside it: `scan` feeds tasks and
/// takes outcomes until it closes the feed. The first error of any thread
/// is the result.
pub(super) fn with_pipeline<T>(
    repo: &Repository,
    uploader: &PackUploader,
    known: &KnownBlobs,
    threads: usize,
    cancel: Option<&AtomicBool>,
    scan: impl FnOnce(Feed, &Failure) -> Result<T>,
) -> Result<(T, BlobStats)> {
    let failure = Failure::default();
    let chunker = repo.chunker();
    let keys = repo.keys().clone();
    let level = repo.config().compression_level;
    let pack_size = repo.config().pack_size as u64;
    let (task_tx, task_rx) = sync_channel::<Task>(threads * 4);
    let (outcome_tx, outcome_rx) = channel::<FileOutcome>();
    let (plain_tx, plain_rx) = sync_channel::<PlainBlob>(threads * 2);
    let (sealed_tx, sealed_rx) = sync_channel::<SealedBlob>(threads * 2);
    let plain_rx = Mutex::new(plain_rx);
    // Shared by the readers only: when the last reader stops, the scan's
    // next send fails instead of waiting for ever.
    let task_rx = Arc::new(Mutex::new(task_rx));

    let (result, stats) = std::thread::scope(|s| {
        let writer = s.spawn(|| write_packs(repo, uploader, sealed_rx, pack_size, &failure));
        let mut workers = Vec::new();
        for _ in 0..threads {
            let tx = sealed_tx.clone();
            let (keys, rx, failure) = (&keys, &plain_rx, &failure);
            workers.push(s.spawn(move || seal_blobs(keys, level, rx, tx, failure)));
        }
        drop(sealed_tx);
        for _ in 0..threads {
            let (tasks, tx, out) = (task_rx.clone(), plain_tx.clone(), outcome_tx.clone());
            let (chunker, keys, failure) = (&chunker, &keys, &failure);
            workers.push(s.spawn(move || {
                let mut reader = FileReader { chunker, level, keys, known, tx, buf: Vec::new(), cancel };
                loop {
                    let task = match tasks.lock() {
                        Ok(t) => t.recv(),
                        Err(_) => break,
                    };
                    let Ok(task) = task else { break };
                    if failure.is_set() {
                        break;
                    }
                    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        failure.set(Error::Interrupted);
                        break;
                    }
                    match reader.run(task) {
                        Ok(outcomes) => {
                            for o in outcomes {
                                let _ = out.send(o);
                            }
                        }
                        Err(e) => {
                            failure.set(e);
                            break;
                        }
                    }
                }
            }));
        }
        drop((task_rx, plain_tx, outcome_tx));
        let result = scan(Feed { tasks: Some(task_tx), outcomes: outcome_rx }, &failure);
        if result.is_err() {
            failure.stop();
        }
        for h in workers {
            if h.join().is_err() {
                failure.set(Error::Invalid("a backup thread panicked".into()));
            }
        }
        let stats = writer.join().unwrap_or_else(|_| {
            failure.set(Error::Invalid("the pack writer panicked".into()));
            BlobStats::default()
        });
        (result, stats)
    });
    // The scan's own error (an interruption, a tree that could not be
    // written) wins, unless it only saw the pipeline stop: then the error
    // that stopped it.
    match (result, failure.take()) {
        (Err(e), Some(first)) if is_stopped(&e) => Err(first),
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(t), None) => Ok((t, stats)),
    }
}

/// A chunk on its way to be sealed and stored.
pub(super) struct PlainBlob {
    pub id: Id,
    pub data: Vec<u8>,
}

pub(super) struct SealedBlob {
    id: Id,
    sealed: Vec<u8>,
    raw_len: usize,
}

/// Smallest file of a batch that may be stored as a blob of its own.
const OWN_BLOB_FROM: usize = 4 << 10;

struct FileReader<'a> {
    chunker: &'a Chunker,
    /// The repository's compression level (0: none).
    level: i32,
    keys: &'a Keys,
    known: &'a KnownBlobs<'a>,
    tx: SyncSender<PlainBlob>,
    buf: Vec<u8>,
    cancel: Option<&'a AtomicBool>,
}

impl FileReader<'_> {
    fn run(&mut self, task: Task) -> Result<Vec<FileOutcome>> {
        match task {
            Task::Large(job) => Ok(vec![self.read_large(job)?]),
            Task::Batch(jobs) => self.read_batch(jobs),
        }
    }

    /// Hand a chunk to the sealers if no one stored it yet.
    fn store(&self, id: Id, data: &[u8]) -> Result<()> {
        if self.known.claim(id) {
            self.tx.send(PlainBlob { id, data: data.to_vec() }).map_err(|_| stopped())?;
        }
        Ok(())
    }

    fn read_large(&mut self, job: FileJob) -> Result<FileOutcome> {
        let (mut file, before) = match open_for_backup(&job) {
            Ok(f) => f,
            Err(e) => {
                let mut out = FileOutcome::new(job);
                out.skipped = Some(e.to_string());
                return Ok(out);
            }
        };
        let mut out = FileOutcome::new(job);
        let path = &out.job.path;
        let regions = data_regions(&file, &before);
        let sparse = regions.is_some();
        let mut pos = 0u64;
        let mut pieces = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        let this = &*self;
        let mut chunk_region =
            |file: &mut File, start: u64, len: Option<u64>, pieces: &mut Vec<Piece>| -> Result<u64> {
                if start > pos {
                    pieces.push(Piece::Hole { len: start - pos });
                }
                file.seek(SeekFrom::Start(start)).at(path)?;
                let reader: Box<dyn Read> = match len {
                    Some(l) => Box::new(Read::by_ref(file).take(l)),
                    None => Box::new(Read::by_ref(file)),
                };
                let n = this.chunker.chunk_stream(reader, &mut buf, |chunk| -> Result<()> {
                    if this.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        return Err(Error::Interrupted);
                    }
                    let id = this.keys.blob_id(chunk);
                    pieces.push(Piece::Chunk { id, len: chunk.len() as u32 });
                    this.store(id, chunk)
                })?;
                pos = start + n;
                Ok(n)
            };
        let mut read = 0;
        let result = match regions {
            Some(regions) => regions.into_iter().try_for_each(|(start, end)| {
                read += chunk_region(&mut file, start, Some(end - start), &mut pieces)?;
                Ok(())
            }),
            None => chunk_region(&mut file, 0, None, &mut pieces).map(|n| read += n),
        };
        self.buf = buf;
        match result {
            Ok(()) => {}
            // A file that cannot be read to its end (an I/O error, a file
            // system that went away) is left out; the backup goes on.
            Err(Error::Io { error, .. }) => {
                out.skipped = Some(format!("reading failed: {error}"));
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
        if sparse && before.len() > pos {
            pieces.push(Piece::Hole { len: before.len() - pos });
            pos = before.len();
        }
        let after = file.metadata().at(&out.job.path)?;
        out.changed = changed(&before, &after) || pos != before.len();
        out.pieces = pieces;
        out.size = pos;
        out.bytes_read = read;
        Ok(out)
    }

    /// Whether a small file is stored as a blob of its own rather than a
    /// slice of its directory's shared one. Sharing pays through
    /// compression across the files (text, code: often 1.3-4× smaller than
    /// compressing each alone) and through fewer blobs; but a shared blob
    /// lives as long as any file in it does, so after a prune it keeps the
    /// old versions of its changed neighbours. A file that will not
    /// compress gains nothing from sharing: at 4 KiB or more (where a
    /// blob's own ~100 bytes of nonce, tag and index entry cost little) it
    /// stands alone, and its space comes back once it changes and the
    /// snapshots that held it are forgotten.
    fn stands_alone(&self, data: &[u8]) -> bool {
        data.len() >= OWN_BLOB_FROM && (self.level == 0 || crate::engine::crypto::compresses_poorly(data))
    }

    fn read_batch(&mut self, jobs: Vec<FileJob>) -> Result<Vec<FileOutcome>> {
        let mut data: Vec<u8> = Vec::new();
        let mut outs = Vec::with_capacity(jobs.len());
        let limit = self.chunker.params().max_size as u64;
        for job in jobs {
            let opened = open_for_backup(&job);
            let mut out = FileOutcome::new(job);
            match opened {
                Ok((file, before)) => {
                    let start = data.len();
                    match (&file).take(limit).read_to_end(&mut data) {
                        Ok(_) => {
                            let after = file.metadata();
                            let len = (data.len() - start) as u64;
                            out.size = len;
                            out.bytes_read = len;
                            out.changed = after.map_or(true, |a| changed(&before, &a)) || len != before.len();
                            out.pieces = if self.stands_alone(&data[start..]) {
                                let id = self.keys.blob_id(&data[start..]);
                                self.store(id, &data[start..])?;
                                data.truncate(start);
                                vec![Piece::Chunk { id, len: len as u32 }]
                            } else {
                                vec![Piece::Slice { id: Id::ZERO, offset: start as u32, len: len as u32 }]
                            };
                        }
                        Err(e) => {
                            data.truncate(start);
                            out.skipped = Some(format!("reading failed: {e}"));
                        }
                    }
                }
                Err(e) => out.skipped = Some(e.to_string()),
            }
            outs.push(out);
        }
        let id = self.keys.blob_id(&data);
        for o in &mut outs {
            for p in &mut o.pieces {
                if let Piece::Slice { id: slot, len, .. } = p {
                    if *len == 0 {
                        o.pieces.clear();
                        break;
                    }
                    *slot = id;
                }
            }
        }
        if !data.is_empty() {
            self.store(id, &data)?;
        }
        Ok(outs)
    }
}

/// Open a file for reading, safely whatever it became since the scan:
/// `O_NOFOLLOW` (a symlink swapped in is not followed), `O_NONBLOCK` and
/// `O_NOCTTY` (a FIFO or terminal swapped in neither blocks the backup nor
/// becomes its terminal), `O_NOATIME` where the kernel allows it; then the
/// open file must be the regular file the scan saw (same device and inode).
fn open_for_backup(job: &FileJob) -> std::io::Result<(File, std::fs::Metadata)> {
    use nix::libc::{O_NOATIME, O_NOCTTY, O_NOFOLLOW, O_NONBLOCK};
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(&job.path);
    let base = O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
    let file = match open(base | O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => open(base),
        other => other,
    }
    .map_err(|e| match e.raw_os_error() {
        Some(nix::libc::ELOOP) => std::io::Error::other("replaced by a symlink since it was scanned"),
        Some(nix::libc::ENOENT) => std::io::Error::other("vanished since it was scanned"),
        _ => e,
    })?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other("replaced by something that is not a regular file since it was scanned"));
    }
    if md.dev() != job.dev || md.ino() != job.inode {
        return Err(std::io::Error::other("replaced by another file since it was scanned"));
    }
    Ok((file, md))
}

fn changed(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    before.len() != after.len()
        || before.mtime() != after.mtime()
        || before.mtime_nsec() != after.mtime_nsec()
        || before.ctime() != after.ctime()
        || before.ctime_nsec() != after.ctime_nsec()
}

/// A sealer thread: chunks from `rx` are compressed, encrypted and proven to
/// open to the same bytes before they go on to `tx` to be written.
pub(super) fn seal_blobs(
    keys: &Keys,
    level: i32,
    rx: &Mutex<Receiver<PlainBlob>>,
    tx: SyncSender<SealedBlob>,
    failure: &Failure,
) {
    loop {
        let blob = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(blob) = blob else { return };
        if failure.is_set() {
            continue; // drain so readers are not blocked
        }
        match keys.seal_proven(ObjectKind::Chunk, &blob.id, &blob.data, level) {
            Ok(sealed) => {
                if tx.send(SealedBlob { id: blob.id, sealed, raw_len: blob.data.len() }).is_err() {
                    return;
                }
            }
            Err(e) => failure.set(e),
        }
    }
}

/// The pack writer thread: sealed chunks into packs, shipped when full.
pub(super) fn write_packs(
    repo: &Repository,
    uploader: &PackUploader,
    rx: Receiver<SealedBlob>,
    pack_size: u64,
    failure: &Failure,
) -> BlobStats {
    let mut stats = BlobStats::default();
    let mut current = PackWriter::for_size(pack_size);
    let mut run = || -> Result<()> {
        for blob in rx.iter() {
            if failure.is_set() {
                continue;
            }
            current.add(blob.id, ObjectKind::Chunk, &blob.sealed, blob.raw_len);
            stats.add(blob.raw_len, blob.sealed.len());
            if current.size() >= pack_size {
                ship(repo, uploader, std::mem::replace(&mut current, PackWriter::for_size(pack_size)))?;
            }
        }
        if !failure.is_set() && !current.is_empty() {
            ship(repo, uploader, std::mem::take(&mut current))?;
        }
        Ok(())
    };
    if let Err(e) = run() {
        failure.set(e);
        for _ in rx.iter() {}
    }
    stats
}

/// Finish a pack, hand it to the uploader, and write a checkpoint index
/// when one is due.
pub(crate) fn ship(repo: &Repository, uploader: &PackUploader, pack: PackWriter) -> Result<()> {
    let pack = pack.finish(repo.keys())?;
    if pack.blobs.first().is_some_and(|b| b.kind == ObjectKind::Tree) {
        repo.keep_tree_pack(&pack.id, &pack.bytes);
    }
    uploader.submit(pack)?;
    if let Some(packs) = uploader.checkpoint() {
        repo.write_index_file(&IndexFile { packs })?;
    }
    Ok(())
}
