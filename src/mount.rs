//! `mount`: the repository's snapshots as a read-only FUSE file system, to
//! browse, `cp -a`, `rsync` or `diff -r` out of like plain directories.
//!
//! ```text
//! MOUNTPOINT/latest -> by-id/<newest>
//!            by-id/<short id>/…             every snapshot, by id
//!            by-time/<time>/…               every snapshot, by time
//!            by-job/<job>/<time>/…          a job's snapshots (and `latest`)
//! ```
//!
//! Directories are read from the repository when first listed or looked
//! up, and file contents when read: a read finds the pieces it covers and
//! takes their chunks from a small cache of recently read chunks (sequential
//! readers hit the read-ahead of the pack below). Holes are answered for
//! `SEEK_HOLE`/`SEEK_DATA`, attributes are the backed-up ones, and extended
//! attributes are listed as stored.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry, Request,
};
use nix::libc;

use crate::engine::crypto::Id;
use crate::engine::index::Index;
use crate::engine::repository::{PackFiles, Repository};
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::{EntryKind, FileContent, Metadata, Piece};
use crate::record::RunRecord;

/// How long the kernel may keep attributes and names: nothing changes.
const TTL: Duration = Duration::from_secs(3600);
/// Chunks kept for the next reads (a chunk is up to 2 MiB by default).
const CHUNK_CACHE_BYTES: usize = 64 << 20;
/// Chunks decoded ahead of a reader going through a file.
const READ_AHEAD_CHUNKS: usize = 6;
/// Entries after a file looked at for the chunks their reader will want.
const SIBLINGS_AHEAD: usize = 64;

/// The mounted repository.
pub struct SnapshotFs {
    repo: Arc<Repository>,
    index: Arc<Index>,
    /// For reading trees.
    packs: PackFiles,
    /// Inode `n` is `nodes[n - 1]`; inode 1 is the root.
    nodes: Vec<Node>,
    chunks: ChunkReader,
    /// Piece start offsets of recently read files.
    starts: HashMap<u64, Vec<u64>>,
    uid: u32,
    gid: u32,
    /// The newest snapshot's time: the made-up directories' times.
    time: SystemTime,
    /// Whether any mounted snapshot may hold extended attributes; when none
    /// does, the kernel is told the file system has none (`ENOSYS`) and
    /// stops asking: `cp -a` then makes no xattr request per file.
    xattrs: bool,
    /// Hard links, so `cp -a`, `rsync -H` and `tar` out of the mount link
    /// them as a restore does: per mounted snapshot root (an inode; one
    /// snapshot shows under by-id, by-time and by-job), the inode each link
    /// group's entries share.
    link_inodes: HashMap<u64, HashMap<u64, u64>>,
    /// Per snapshot root tree, how many entries each link group has; `None`
    /// when its trees could not all be read to count them.
    link_counts: HashMap<Id, Option<HashMap<u64, u32>>>,
}

/// A directory's entries: name and inode, sorted by name once complete.
type Listing = Vec<(Vec<u8>, u64)>;

struct Node {
    parent: u64,
    /// The inode of the snapshot root this node is under; 0 above them.
    snapshot: u64,
    /// The backed-up attributes; `None` for the directories the mount makes up.
    meta: Option<Metadata>,
    kind: Kind,
}

enum Kind {
    /// Children sorted by name; `None` until the tree is read.
    Dir {
        tree: Option<Id>,
        children: Option<Vec<(Vec<u8>, u64)>>,
    },
    File(FileContent),
    Symlink(Vec<u8>),
    Special {
        kind: FileType,
        rdev: u64,
    },
}

impl Node {
    fn file_type(&self) -> FileType {
        match &self.kind {
            Kind::Dir { .. } => FileType::Directory,
            Kind::File(_) => FileType::RegularFile,
            Kind::Symlink(_) => FileType::Symlink,
            Kind::Special { kind, .. } => *kind,
        }
    }
}

/// Chunks for file reads: a cache shared with threads that decode, on the
/// other cores, the chunks a reader going through a file will want next
/// (the FUSE requests themselves are answered on one thread).
struct ChunkReader {
    repo: Arc<Repository>,
    index: Arc<Index>,
    shared: Arc<SharedChunks>,
    ahead: std::sync::mpsc::Sender<Id>,
    packs: PackFiles,
}

#[derive(Default)]
struct SharedChunks {
    state: Mutex<ChunkState>,
    /// Signalled whenever a chunk stops being in flight.
    done: Condvar,
}

#[derive(Default)]
struct ChunkState {
    chunks: HashMap<Id, Arc<Vec<u8>>>,
    order: VecDeque<Id>,
    bytes: usize,
    /// Being read by some thread.
    in_flight: HashSet<Id>,
}

impl ChunkReader {
    fn start(repo: Arc<Repository>, index: Arc<Index>) -> ChunkReader {
        let shared = Arc::new(SharedChunks::default());
        let (ahead, queue) = std::sync::mpsc::channel::<Id>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..crate::engine::parallel::cpus() {
            let (repo, index, shared, queue) = (repo.clone(), index.clone(), shared.clone(), queue.clone());
            // Ends when the reader (the sender) is dropped.
            std::thread::spawn(move || {
                let mut packs = PackFiles::default();
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(id) = next else { break };
                    let data = read_chunk(&repo, &index, &id, &mut packs).ok();
                    shared.finish(&id, data);
                }
            });
        }
        ChunkReader { repo, index, shared, ahead, packs: PackFiles::default() }
    }

    /// Queue `ids` for the reader threads, unless cached or in flight.
    fn read_ahead<'a>(&self, ids: impl Iterator<Item = &'a Id>) {
        let mut state = self.shared.lock();
        for id in ids {
            if !state.chunks.contains_key(id) && state.in_flight.insert(*id) && self.ahead.send(*id).is_err() {
                state.in_flight.remove(id);
            }
        }
    }

    /// A chunk's bytes: cached, or waited for while a reader thread has it,
    /// or read here.
    fn get(&mut self, id: &Id) -> Result<Arc<Vec<u8>>, i32> {
        let mut state = self.shared.lock();
        loop {
            if let Some(c) = state.chunks.get(id) {
                return Ok(c.clone());
            }
            if !state.in_flight.contains(id) {
                break;
            }
            let (next, waited) =
                self.shared.done.wait_timeout(state, Duration::from_secs(10)).unwrap_or_else(|p| p.into_inner());
            state = next;
            if waited.timed_out() {
                // A reader thread is stuck (or gone): read it here too.
                break;
            }
        }
        state.in_flight.insert(*id);
        drop(state);
        let data = read_chunk(&self.repo, &self.index, id, &mut self.packs);
        self.shared.finish(id, data.as_ref().ok().cloned());
        data
    }
}

impl SharedChunks {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChunkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `id` is no longer in flight; cache what was read of it.
    fn finish(&self, id: &Id, data: Option<Arc<Vec<u8>>>) {
        let mut state = self.lock();
        state.in_flight.remove(id);
        if let Some(data) = data
            && !state.chunks.contains_key(id)
        {
            state.bytes += data.len();
            state.chunks.insert(*id, data);
            state.order.push_back(*id);
            while state.bytes > CHUNK_CACHE_BYTES {
                let Some(old) = state.order.pop_front() else { break };
                if let Some(c) = state.chunks.remove(&old) {
                    state.bytes -= c.len();
                }
            }
        }
        drop(state);
        self.done.notify_all();
    }
}

/// One chunk out of the repository, authenticated.
fn read_chunk(repo: &Repository, index: &Index, id: &Id, packs: &mut PackFiles) -> Result<Arc<Vec<u8>>, i32> {
    let loc = index.get(id).ok_or(libc::EIO)?;
    let data = repo.read_blob_ahead(id, &loc, index, packs).map_err(|e| {
        tracing::warn!("mount: chunk {} cannot be read: {e}", id.short());
        libc::EIO
    })?;
    Ok(Arc::new(data))
}

impl SnapshotFs {
    /// The file system over `snapshots` (oldest first).
    pub fn new(repo: Repository, index: Index, snapshots: &[(Id, Snapshot)]) -> SnapshotFs {
        let time = snapshots.last().map(|(_, s)| system_time(s.time.as_second(), 0)).unwrap_or(UNIX_EPOCH);
        let (repo, index) = (Arc::new(repo), Arc::new(index));
        let mut fs = SnapshotFs {
            chunks: ChunkReader::start(repo.clone(), index.clone()),
            repo,
            index,
            packs: PackFiles::default(),
            nodes: Vec::new(),
            starts: HashMap::new(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            time,
            xattrs: snapshots.iter().any(|(_, s)| may_hold_xattrs(s)),
            link_inodes: HashMap::new(),
            link_counts: HashMap::new(),
        };
        let root = fs.add_virtual(1);
        let by_id = fs.add_virtual(root);
        let by_time = fs.add_virtual(root);
        let by_job = fs.add_virtual(root);
        let mut top: Vec<(Vec<u8>, u64)> = vec![(b"by-id".to_vec(), by_id), (b"by-time".to_vec(), by_time)];
        let mut ids = Vec::new();
        let mut times = Vec::new();
        // Per job: its directory and the snapshots listed in it.
        let mut jobs: BTreeMap<String, (u64, Listing)> = BTreeMap::new();
        for (id, s) in snapshots {
            let name_by_time = unique_name(&times, time_name(&s.time), id);
            let short = unique_name(&ids, id.short(), id);
            let as_id = fs.add_snapshot(by_id, s);
            ids.push((short.into_bytes(), as_id));
            let as_time = fs.add_snapshot(by_time, s);
            times.push((name_by_time.into_bytes(), as_time));
            // A job's name becomes a directory name: one that cannot be is left out.
            if let Some(record) = RunRecord::of(s).filter(|r| is_file_name(&r.job)) {
                let (dir, listed) = jobs.entry(record.job).or_insert_with(|| (fs.add_virtual(by_job), Vec::new()));
                let name = unique_name(listed, time_name(&s.time), id);
                let node = fs.add_snapshot(*dir, s);
                listed.push((name.into_bytes(), node));
            }
        }
        if let Some((newest, _)) = ids.last() {
            let target = [b"by-id/".as_slice(), newest].concat();
            top.push((b"latest".to_vec(), fs.add_node(root, None, Kind::Symlink(target))));
        }
        let mut job_entries = Vec::new();
        for (job, (dir, mut listed)) in jobs {
            if let Some((newest, _)) = listed.last() {
                let link = fs.add_node(dir, None, Kind::Symlink(newest.clone()));
                listed.push((b"latest".to_vec(), link));
            }
            fs.set_children(dir, listed);
            job_entries.push((job.into_bytes(), dir));
        }
        if !job_entries.is_empty() {
            top.push((b"by-job".to_vec(), by_job));
        }
        fs.set_children(by_id, ids);
        fs.set_children(by_time, times);
        fs.set_children(by_job, job_entries);
        fs.set_children(root, top);
        fs
    }

    fn add_node(&mut self, parent: u64, meta: Option<Metadata>, kind: Kind) -> u64 {
        let snapshot = self.node(parent).map_or(0, |p| p.snapshot);
        self.nodes.push(Node { parent, snapshot, meta, kind });
        self.nodes.len() as u64
    }

    fn add_virtual(&mut self, parent: u64) -> u64 {
        self.add_node(parent, None, Kind::Dir { tree: None, children: Some(Vec::new()) })
    }

    /// A snapshot's root directory: its tree, with the snapshot's time.
    fn add_snapshot(&mut self, parent: u64, s: &Snapshot) -> u64 {
        let ino = self.add_node(parent, None, Kind::Dir { tree: Some(s.root), children: None });
        if let Some(node) = self.node_mut(ino) {
            node.snapshot = ino;
        }
        ino
    }

    fn set_children(&mut self, dir: u64, mut children: Vec<(Vec<u8>, u64)>) {
        children.sort();
        if let Some(Node { kind: Kind::Dir { children: c, .. }, .. }) = self.node_mut(dir) {
            *c = Some(children);
        }
    }

    fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get((ino as usize).checked_sub(1)?)
    }

    fn node_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut((ino as usize).checked_sub(1)?)
    }

    /// A directory's children, reading its tree the first time.
    fn children(&mut self, ino: u64) -> Result<&[(Vec<u8>, u64)], i32> {
        let tree = match &self.node(ino).ok_or(libc::ENOENT)?.kind {
            Kind::Dir { children: Some(_), .. } => None,
            Kind::Dir { tree: Some(tree), children: None } => Some(*tree),
            Kind::Dir { .. } => return Err(libc::EIO),
            _ => return Err(libc::ENOTDIR),
        };
        if let Some(tree) = tree {
            let tree = self.repo.load_tree(&self.index, &tree, &mut self.packs).map_err(|e| {
                tracing::warn!("mount: directory cannot be read: {e}");
                libc::EIO
            })?;
            let mut listed = Vec::with_capacity(tree.entries.len());
            for e in tree.entries {
                let kind = match e.kind {
                    EntryKind::Dir { tree } => Kind::Dir { tree: Some(tree), children: None },
                    EntryKind::File(content) if content.hardlink.is_some() => {
                        let child = self.hard_linked_file(ino, e.meta, content);
                        listed.push((e.name, child));
                        continue;
                    }
                    EntryKind::File(content) => Kind::File(content),
                    EntryKind::Symlink { target } => Kind::Symlink(target),
                    EntryKind::Fifo => Kind::Special { kind: FileType::NamedPipe, rdev: 0 },
                    EntryKind::Socket => Kind::Special { kind: FileType::Socket, rdev: 0 },
                    EntryKind::CharDevice { rdev } => Kind::Special { kind: FileType::CharDevice, rdev },
                    EntryKind::BlockDevice { rdev } => Kind::Special { kind: FileType::BlockDevice, rdev },
                };
                let child = self.add_node(ino, Some(e.meta), kind);
                listed.push((e.name, child));
            }
            self.set_children(ino, listed);
        }
        match &self.node(ino).ok_or(libc::ENOENT)?.kind {
            Kind::Dir { children: Some(c), .. } => Ok(c),
            _ => Err(libc::EIO),
        }
    }

    /// The inode of a hard-linked file listed in directory `dir`: the one
    /// its link group already has in this snapshot, else a new one. The
    /// first such file of a snapshot counts the links of all its groups.
    fn hard_linked_file(&mut self, dir: u64, meta: Metadata, content: FileContent) -> u64 {
        let snapshot = self.node(dir).map_or(0, |d| d.snapshot);
        let group = content.hardlink.unwrap_or_default();
        if let Some(root) = self.root_tree(snapshot)
            && !self.link_counts.contains_key(&root)
        {
            let counts = self.count_links(root);
            self.link_counts.insert(root, counts);
        }
        if let Some(first) = self.link_inodes.get(&snapshot).and_then(|l| l.get(&group)) {
            return *first;
        }
        let child = self.add_node(dir, Some(meta), Kind::File(content));
        self.link_inodes.entry(snapshot).or_default().insert(group, child);
        child
    }

    /// The root tree of the snapshot whose root is inode `snapshot`.
    fn root_tree(&self, snapshot: u64) -> Option<Id> {
        match self.node(snapshot)?.kind {
            Kind::Dir { tree, .. } => tree,
            _ => None,
        }
    }

    /// How many entries of the snapshot with root tree `root` each link
    /// group has: a walk of all its trees (a level at a time, opened on all
    /// cores), done once per snapshot that has hard links at all. The mount
    /// answers nothing else meanwhile.
    fn count_links(&mut self, root: Id) -> Option<HashMap<u64, u32>> {
        let mut counts = HashMap::new();
        let walked = self.repo.walk_trees(&self.index, vec![(root, ())], |_, tree, ()| {
            let mut below = Vec::new();
            for e in &tree.entries {
                match &e.kind {
                    EntryKind::Dir { tree } => below.push((*tree, ())),
                    EntryKind::File(FileContent { hardlink: Some(group), .. }) => {
                        *counts.entry(*group).or_insert(0u32) += 1;
                    }
                    _ => {}
                }
            }
            Ok(below)
        });
        match walked {
            Ok(()) => Some(counts),
            Err(e) => {
                tracing::warn!("mount: hard links cannot be counted: {e}");
                None
            }
        }
    }

    /// Up to a reply's worth of a directory's entries from `offset` (`.`
    /// and `..` first): each child, the offset after it, its name.
    fn listing(&mut self, ino: u64, offset: i64) -> Result<Vec<(u64, i64, Vec<u8>)>, i32> {
        self.children(ino)?;
        let Some(Node { parent, kind: Kind::Dir { children: Some(children), .. }, .. }) = self.node(ino) else {
            return Err(libc::EIO);
        };
        let dots = [(b".".to_vec(), ino), (b"..".to_vec(), *parent)];
        Ok(dots
            .iter()
            .chain(children.iter())
            .enumerate()
            .skip(offset.max(0) as usize)
            .take(256)
            .map(|(i, (name, child))| (*child, i as i64 + 1, name.clone()))
            .collect())
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.node(ino)?;
        let kind = node.file_type();
        let mut attr = FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind,
            perm: if kind == FileType::Directory { 0o555 } else { 0o444 },
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        match &node.kind {
            Kind::File(content) => {
                if let Some(group) = content.hardlink {
                    let root = self.root_tree(node.snapshot);
                    let counts = root.and_then(|r| self.link_counts.get(&r)).and_then(Option::as_ref);
                    // Uncounted: still more than one, so copies keep the link.
                    attr.nlink = counts.and_then(|c| c.get(&group).copied()).unwrap_or(2);
                }
                let data: u64 = content.pieces.iter().filter(|p| p.chunk().is_some()).map(Piece::len).sum();
                attr.blocks = data.div_ceil(512);
            }
            Kind::Symlink(target) => attr.size = target.len() as u64,
            Kind::Special { rdev, .. } => attr.rdev = *rdev as u32,
            Kind::Dir { .. } => {}
        }
        if let Some(m) = &node.meta {
            let t = system_time(m.mtime.secs, m.mtime.nanos);
            (attr.atime, attr.mtime, attr.ctime, attr.crtime) = (t, t, t, t);
            attr.perm = (m.mode & 0o7777) as u16;
            (attr.uid, attr.gid) = (m.uid, m.gid);
            if let Kind::File(_) = node.kind {
                attr.size = m.size;
            }
        }
        Some(attr)
    }

    /// `size` bytes of file `ino` from `offset`.
    fn read_file(&mut self, ino: u64, offset: u64, size: u64) -> Result<Vec<u8>, i32> {
        let SnapshotFs { nodes, chunks, starts, .. } = self;
        let Some(Node { kind: Kind::File(content), meta, .. }) = nodes.get((ino as usize).wrapping_sub(1)) else {
            return Err(libc::EISDIR);
        };
        let total = meta.as_ref().map_or(0, |m| m.size);
        let pieces = &content.pieces;
        if starts.len() > 1024 && !starts.contains_key(&ino) {
            starts.clear();
        }
        let starts = starts.entry(ino).or_insert_with(|| piece_starts(pieces));
        let end = offset.saturating_add(size).min(total);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        let mut i = starts.partition_point(|s| *s <= offset).saturating_sub(1);
        // A reader going through the file wants the next chunks soon; one
        // that reached its end and goes through the directory (`cp -a`,
        // `tar`, `rsync`) wants the next files' first chunks.
        let next = pieces.iter().skip(i + 1).filter_map(Piece::chunk).take(READ_AHEAD_CHUNKS);
        chunks.read_ahead(next);
        if end >= total {
            chunks.read_ahead(next_files_chunks(nodes, ino));
        }
        while pos < end && i < pieces.len() {
            let within = pos - starts[i];
            let take = (pieces[i].len().saturating_sub(within)).min(end - pos);
            match &pieces[i] {
                Piece::Hole { .. } => out.resize(out.len() + take as usize, 0),
                Piece::Chunk { id, .. } | Piece::Slice { id, .. } => {
                    let base = match &pieces[i] {
                        Piece::Slice { offset, .. } => *offset as u64,
                        _ => 0,
                    };
                    let chunk = chunks.get(id)?;
                    let from = (base + within) as usize;
                    let bytes = chunk.get(from..from + take as usize).ok_or(libc::EIO)?;
                    out.extend_from_slice(bytes);
                }
            }
            pos += take;
            i += 1;
        }
        Ok(out)
    }
}

impl Filesystem for SnapshotFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut fuser::KernelConfig) -> Result<(), libc::c_int> {
        // Large sequential reads: fewer round trips through the kernel.
        let _ = config.set_max_readahead(1 << 20);
        // Listings carry each entry's attributes, so walking a tree needs
        // no lookup per name (half the round trips of a small file).
        let _ = config.add_capabilities(fuser::consts::FUSE_DO_READDIRPLUS);
        // Symlinks never change: without this the kernel asks for `latest`'s
        // target on every path resolved through it (two round trips per
        // file that `cp -a mnt/latest/…` copies).
        let _ = config.add_capabilities(fuser::consts::FUSE_CACHE_SYMLINKS);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .children(parent)
            .map(|c| c.binary_search_by(|(n, _)| n.as_slice().cmp(name.as_bytes())).ok().map(|i| c[i].1));
        match found {
            Ok(Some(ino)) => match self.attr(ino) {
                Some(attr) => reply.entry(&TTL, &attr, 0),
                None => reply.error(libc::ENOENT),
            },
            Ok(None) => reply.error(libc::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.node(ino).map(|n| &n.kind) {
            Some(Kind::Symlink(target)) => reply.data(target),
            _ => reply.error(libc::EINVAL),
        }
    }

    /// Not implemented on purpose: the kernel then stops sending opens and
    /// releases (two round trips per file fewer) and keeps the page cache,
    /// and the read-only mount refuses writes before they reach us.
    fn open(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: fuser::ReplyOpen) {
        reply.error(libc::ENOSYS);
    }

    /// As [`SnapshotFs::open`], for directories.
    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: fuser::ReplyOpen) {
        reply.error(libc::ENOSYS);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        match self.read_file(ino, offset.max(0) as u64, size as u64) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        match self.listing(ino, offset) {
            Ok(entries) => {
                for (child, next, name) in entries {
                    let kind = self.node(child).map_or(FileType::RegularFile, Node::file_type);
                    if reply.add(child, next, kind, OsStr::from_bytes(&name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectoryPlus) {
        match self.listing(ino, offset) {
            Ok(entries) => {
                for (child, next, name) in entries {
                    let Some(attr) = self.attr(child) else { continue };
                    if reply.add(child, next, OsStr::from_bytes(&name), &TTL, &attr, 0) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: fuser::ReplyXattr) {
        if !self.xattrs {
            return reply.error(libc::ENOSYS);
        }
        let value = self
            .node(ino)
            .and_then(|n| n.meta.as_ref())
            .and_then(|m| m.xattrs.iter().find(|(n, _)| n.as_slice() == name.as_bytes()))
            .map(|(_, v)| v.clone());
        match value {
            None => reply.error(libc::ENODATA),
            Some(v) => xattr_reply(reply, &v, size),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: fuser::ReplyXattr) {
        if !self.xattrs {
            return reply.error(libc::ENOSYS);
        }
        let mut names = Vec::new();
        for (n, _) in self.node(ino).and_then(|n| n.meta.as_ref()).map(|m| m.xattrs.as_slice()).unwrap_or_default() {
            names.extend_from_slice(n);
            names.push(0);
        }
        xattr_reply(reply, &names, size);
    }

    fn lseek(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, whence: i32, reply: fuser::ReplyLseek) {
        let Some(Node { kind: Kind::File(content), meta: Some(meta), .. }) = self.node(ino) else {
            return reply.error(libc::EINVAL);
        };
        match seek_data_or_hole(&content.pieces, meta.size, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(e),
        }
    }
}

/// Whether snapshot `s` may hold an entry with extended attributes: it has
/// counted some, or was made before they were counted.
fn may_hold_xattrs(s: &Snapshot) -> bool {
    s.summary.entries_with_xattrs != Some(0)
}

/// The first chunks of the files listed after file `ino` in its directory
/// (a directory's entries are consecutive nodes); a run of small files
/// batched into one chunk names it once.
fn next_files_chunks(nodes: &[Node], ino: u64) -> impl Iterator<Item = &Id> {
    let index = ino as usize;
    let parent = index.checked_sub(1).and_then(|i| nodes.get(i)).map(|n| n.parent);
    let mut last = None;
    nodes
        .get(index..)
        .unwrap_or_default()
        .iter()
        .take_while(move |n| Some(n.parent) == parent)
        .take(SIBLINGS_AHEAD)
        .filter_map(|n| match &n.kind {
            Kind::File(content) => content.pieces.iter().find_map(Piece::chunk),
            _ => None,
        })
        .filter(move |id| last.replace(*id) != Some(*id))
        .take(READ_AHEAD_CHUNKS)
}

/// Answer an xattr request: its size when asked for 0 bytes, else the bytes.
fn xattr_reply(reply: fuser::ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(value);
    }
}

/// `SEEK_DATA`/`SEEK_HOLE` from `offset` over a file's pieces.
fn seek_data_or_hole(pieces: &[Piece], size: u64, offset: i64, whence: i32) -> Result<i64, i32> {
    let offset = u64::try_from(offset).map_err(|_| libc::EINVAL)?;
    if offset >= size {
        return Err(libc::ENXIO);
    }
    let want_data = match whence {
        libc::SEEK_DATA => true,
        libc::SEEK_HOLE => false,
        _ => return Err(libc::EINVAL),
    };
    let mut start = 0u64;
    for p in pieces {
        let end = start + p.len();
        let is_data = p.chunk().is_some();
        if end > offset && is_data == want_data {
            return Ok(start.max(offset) as i64);
        }
        start = end;
    }
    // Past the last data there is no data; the end of a file is a hole.
    if want_data { Err(libc::ENXIO) } else { Ok(size as i64) }
}

fn piece_starts(pieces: &[Piece]) -> Vec<u64> {
    let mut at = 0;
    pieces
        .iter()
        .map(|p| {
            let s = at;
            at += p.len();
            s
        })
        .collect()
}

fn system_time(secs: i64, nanos: u32) -> SystemTime {
    let d = Duration::new(secs.unsigned_abs(), nanos.min(999_999_999));
    if secs >= 0 { UNIX_EPOCH + d } else { UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH) }
}

/// A snapshot's directory name by time: local, to the second, no spaces.
fn time_name(t: &jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Whether `name` can be one directory entry's name.
fn is_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// `name`, or `name-<id>` when a sibling already has it.
fn unique_name(siblings: &[(Vec<u8>, u64)], name: String, id: &Id) -> String {
    if siblings.iter().any(|(n, _)| n == name.as_bytes()) { format!("{name}-{}", id.to_hex()) } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_that_cannot_be_directory_names_are_refused() {
        assert!(is_file_name("shop") && is_file_name("shop.v2"));
        for bad in ["", ".", "..", "a/b", "../etc", "nul\0"] {
            assert!(!is_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_snapshots_that_counted_no_xattrs_let_the_mount_say_it_has_none() {
        let mut snapshot = Snapshot::blank("web");
        snapshot.summary.entries_with_xattrs = Some(0);
        assert!(!may_hold_xattrs(&snapshot));
        snapshot.summary.entries_with_xattrs = Some(3);
        assert!(may_hold_xattrs(&snapshot));
        // A snapshot written before the count existed has no such field.
        let mut json = serde_json::to_value(&snapshot).expect("json");
        json["summary"].as_object_mut().expect("summary").remove("entries_with_xattrs");
        let old: Snapshot = serde_json::from_value(json).expect("an older snapshot reads");
        assert_eq!(old.summary.entries_with_xattrs, None);
        assert!(may_hold_xattrs(&old));
    }

    #[test]
    fn the_files_after_one_in_its_directory_name_their_first_chunks() {
        let file = |parent, ids: &[u8]| Node {
            parent,
            snapshot: 0,
            meta: None,
            kind: Kind::File(FileContent {
                pieces: ids.iter().map(|i| Piece::Slice { id: Id([*i; 32]), offset: 0, len: 10 }).collect(),
                ..FileContent::default()
            }),
        };
        let dir = |parent| Node { parent, snapshot: 0, meta: None, kind: Kind::Dir { tree: None, children: None } };
        // Inodes 2..=6 are in directory 1; 7 is in directory 4.
        let nodes = vec![dir(1), file(1, &[1]), file(1, &[1]), dir(1), file(1, &[2, 3]), file(1, &[4]), file(4, &[9])];
        let ahead: Vec<Id> = next_files_chunks(&nodes, 2).copied().collect();
        assert_eq!(ahead, [Id([1; 32]), Id([2; 32]), Id([4; 32])]);
        assert_eq!(next_files_chunks(&nodes, 6).count(), 0, "the directory's last file");
        assert_eq!(next_files_chunks(&nodes, 0).count() + next_files_chunks(&nodes, 99).count(), 0);
    }

    #[test]
    fn seek_data_and_hole_follow_the_pieces() {
        let id = Id([1; 32]);
        // 8 KiB hole, 4 KiB data, 8 KiB hole.
        let pieces = [Piece::Hole { len: 8192 }, Piece::Chunk { id, len: 4096 }, Piece::Hole { len: 8192 }];
        let size = 20480;
        assert_eq!(seek_data_or_hole(&pieces, size, 0, libc::SEEK_DATA), Ok(8192));
        assert_eq!(seek_data_or_hole(&pieces, size, 9000, libc::SEEK_DATA), Ok(9000));
        assert_eq!(seek_data_or_hole(&pieces, size, 0, libc::SEEK_HOLE), Ok(0));
        assert_eq!(seek_data_or_hole(&pieces, size, 8192, libc::SEEK_HOLE), Ok(12288));
        assert_eq!(seek_data_or_hole(&pieces, size, 13000, libc::SEEK_DATA), Err(libc::ENXIO));
        assert_eq!(seek_data_or_hole(&pieces, size, size as i64, libc::SEEK_HOLE), Err(libc::ENXIO));
        assert_eq!(seek_data_or_hole(&pieces, size, -1, libc::SEEK_DATA), Err(libc::EINVAL));
        // A file of data only: its hole is its end.
        let data = [Piece::Chunk { id, len: 100 }];
        assert_eq!(seek_data_or_hole(&data, 100, 10, libc::SEEK_HOLE), Ok(100));
    }
}
