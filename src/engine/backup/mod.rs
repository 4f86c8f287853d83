//! Backup: turn directory trees into a snapshot.
//!
//! A backup scans and reads at the same time:
//!
//! - **Scan** ([`scan`], one thread): walk the sources depth first in name
//!   order, record every entry's metadata, and compare each file with the
//!   parent snapshot (the newest one of the same paths and host). A file
//!   whose size, mtime, ctime and inode are unchanged reuses its recorded
//!   pieces and is not read; the others become tasks for the pipeline. A
//!   directory's tree is written as soon as its scan is done and its files
//!   are read, so memory holds the directories in progress, not the tree.
//! - **Content** ([`content`], all cores): readers read and chunk files and
//!   hash each chunk; a chunk not yet in the repository goes to the
//!   sealers, which compress, encrypt, then decrypt, decompress and re-hash
//!   it (a fault in zstd or RAM is caught before anything is written); one
//!   writer appends sealed chunks to packs. Small files of one directory are
//!   read into one shared chunk, so they compress together.
//! - **Commit**: the directories above the sources, then the index of the
//!   new packs, then the snapshot. A run that fails or is killed before the
//!   snapshot leaves only unreferenced packs.

mod content;
mod listahead;
mod scan;
mod stream;

pub use stream::{StoredStream, StreamAdded, store_stream};

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub(crate) use content::ship;
use content::with_pipeline;
use listahead::ListAhead;
use scan::{ParentTrees, ScanSettings, Scanned, Scanner, TreeWriter};

use crate::engine::crypto::Id;
use crate::engine::fsmeta::{NameCache, Stat, name_bytes, read_flags, read_metadata};
use crate::engine::index::IndexFile;
use crate::engine::pack::{Checkpoints, PackUploader};
use crate::engine::parallel::joined;
use crate::engine::progress::Progress;
use crate::engine::repository::{KnownBlobs, Repository};
use crate::engine::select::{Selection, Selector};
use crate::engine::snapshot::{Snapshot, Summary};
use crate::engine::tree::{Entry, EntryKind, Metadata, Tree};
use crate::error::{Error, IoContext, Result};

/// A path to back up, and where it appears inside the snapshot.
#[derive(Debug, Clone)]
pub struct BackupSource {
    pub local: PathBuf,
    /// Absolute path inside the snapshot; usually the same as `local`.
    pub at: PathBuf,
}

impl BackupSource {
    /// Back up `path` under its own absolute path.
    /// Back up `path` under its own absolute path (`.`, `..` and trailing
    /// slashes resolved lexically, symlinks left as they are).
    pub fn same_path(path: &Path) -> Result<BackupSource> {
        let abs = crate::fsutil::normalize(&std::path::absolute(path).at(path)?);
        Ok(BackupSource { local: abs.clone(), at: abs })
    }
}

/// What else a backup needs to know.
pub struct BackupOptions {
    pub tags: Vec<String>,
    pub host: String,
    /// Reuse unchanged files from the newest snapshot of the same paths and host.
    pub use_parent: bool,
    pub threads: usize,
    /// What to leave out of the paths.
    pub selection: Selection,
    /// Opaque data recorded in the snapshot (the job runner's metadata).
    pub extra: Option<serde_json::Value>,
    /// Set from elsewhere (a signal handler) to stop the backup early.
    pub cancel: Option<Arc<AtomicBool>>,
    /// How often packs uploaded so far are indexed while the backup runs.
    pub checkpoints: Checkpoints,
    /// Files and bytes found and done, for a display.
    pub progress: Option<Arc<Progress>>,
    /// Files stored beforehand ([`store_stream`]), each added to the
    /// directory of a source at this local path (which must exist).
    pub injected: Vec<(PathBuf, Entry)>,
    /// What storing the injected files added, counted into this snapshot's
    /// summary.
    pub injected_added: StreamAdded,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            tags: Vec::new(),
            host: crate::engine::running::hostname(),
            use_parent: true,
            threads: crate::engine::parallel::cpus(),
            selection: Selection::default(),
            extra: None,
            cancel: None,
            checkpoints: Checkpoints::default(),
            progress: None,
            injected: Vec::new(),
            injected_added: StreamAdded::default(),
        }
    }
}

/// The snapshot a backup committed.
#[derive(Debug, Clone)]
pub struct BackupResult {
    pub id: Id,
    pub snapshot: Snapshot,
}

/// Back up `sources` into `repo` as one snapshot.
pub fn backup(repo: &Repository, sources: &[BackupSource], opts: &BackupOptions) -> Result<BackupResult> {
    capture(repo, sources, opts)?.commit(repo, opts.extra.clone())
}

/// Everything of a snapshot but the snapshot itself: its data, trees and
/// index are durable; [`Capture::commit`] makes it exist. A capture that is
/// never committed leaves only unreferenced blobs.
#[derive(Debug)]
pub struct Capture {
    root: Id,
    paths: Vec<String>,
    parent: Option<Id>,
    host: String,
    tags: Vec<String>,
    summary: Summary,
    started: Instant,
    /// Registered as running until the snapshot is committed.
    _running: crate::engine::running::Running,
}

impl Capture {
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Write the snapshot, recording `extra` in it.
    pub fn commit(self, repo: &Repository, extra: Option<serde_json::Value>) -> Result<BackupResult> {
        let mut summary = self.summary;
        summary.duration_secs = self.started.elapsed().as_secs_f64();
        let snapshot = Snapshot {
            time: jiff::Timestamp::now(),
            host: self.host,
            tags: self.tags,
            paths: self.paths,
            root: self.root,
            parent: self.parent,
            summary,
            extra,
            repaired: None,
        };
        let id = repo.write_snapshot(&snapshot)?;
        Ok(BackupResult { id, snapshot })
    }
}

/// Read `sources` into `repo` (packs, trees, index) without committing.
pub fn capture(repo: &Repository, sources: &[BackupSource], opts: &BackupOptions) -> Result<Capture> {
    let started = Instant::now();
    if sources.is_empty() {
        return Err(Error::Invalid("nothing to back up: no paths given".into()));
    }
    for s in sources {
        if !s.at.is_absolute() {
            return Err(Error::Invalid(format!("{} is not an absolute path", s.at.display())));
        }
    }
    // A path given twice, or inside another given path, is backed up once.
    let mut sorted: Vec<&BackupSource> = sources.iter().collect();
    sorted.sort_by(|a, b| a.at.cmp(&b.at));
    let mut kept: Vec<&BackupSource> = Vec::new();
    for s in sorted {
        match kept.iter().find(|k| s.at.starts_with(&k.at)) {
            Some(k) if k.at == s.at && k.local != s.local => {
                return Err(Error::Invalid(format!(
                    "{} and {} would both be stored as {}",
                    k.local.display(),
                    s.local.display(),
                    s.at.display()
                )));
            }
            Some(k) if k.local == k.at && s.local == s.at => {}
            // Beside the entries of `/` (the dumps of a job backing up `/`).
            Some(k) if k.at == Path::new("/") && k.local == k.at => kept.push(s),
            Some(k) => {
                return Err(Error::Invalid(format!("{} overlaps {}", s.at.display(), k.at.display())));
            }
            None => kept.push(s),
        }
    }
    let sources: Vec<BackupSource> = kept.into_iter().cloned().collect();
    let paths: Vec<String> = sources.iter().map(|s| crate::engine::snapshot::path_text(&s.at)).collect();
    let select = Selector::new(&opts.selection);
    let (sources, within, root_left_out) = expand_root(sources, &select)?;
    let sources = &sources[..];

    // Register first, then read marks and index: a prune deletes no pack
    // marked after this backup started until it has finished.
    // The reads after that are independent: they run at once, so a backup
    // to a remote repository waits for the longest of them (two round
    // trips: a listing, then what it names), not for their sum.
    let running = crate::engine::running::register_backup(repo)?;
    let (marked, index, listed, parent) = std::thread::scope(|s| {
        let marked = s.spawn(|| crate::engine::running::marked_pack_ids(repo));
        let index = s.spawn(|| repo.load_index());
        let listed = s.spawn(|| repo.backend().list(crate::engine::backend::PACKS));
        let parent = if opts.use_parent { find_parent(repo, &paths, &opts.host) } else { Ok(None) };
        Ok::<_, Error>((joined(marked)?, joined(index)?, joined(listed)?, parent?))
    })?;
    let (index, _damaged) = index;
    // Blobs are reused only from packs that are there, whole: a pack lost
    // or cut short since it was indexed makes its blobs stored again.
    let sizes: HashMap<Id, u64> = listed.iter().filter_map(|f| Some((Id::from_hex(&f.name)?, f.size))).collect();
    let unusable: std::collections::HashSet<Id> = index
        .packs()
        .filter(|(p, end)| sizes.get(*p).is_none_or(|size| *size < *end))
        .map(|(p, _)| *p)
        .chain(marked.iter().copied())
        .collect();
    let mut index = index.without_packs(&unusable);
    let adopted = crate::engine::running::adopt_recent_leftovers(repo, &running, &index, &marked, &listed)?;
    index.add_file(&IndexFile { packs: adopted.clone() });
    let mut parent_trees = ParentTrees::new(repo, &index, parent.as_ref().map(|(_, snap)| snap.root));
    let parent_root = parent.as_ref().and_then(|(_, snap)| parent_trees.get(&snap.root));

    // Scan, with the content pipeline beside it; trees are written as
    // their directories complete.
    let known = KnownBlobs::new(&index);
    let uploader = PackUploader::start(repo.shared_backend(), repo.backend().parallelism(), opts.checkpoints);
    let mut names = NameCache::default();
    let (skeleton, starts) = Skeleton::build(sources, &mut parent_trees, parent_root.as_ref(), &mut names)?;
    let settings = ScanSettings {
        index: &index,
        parent_trees,
        sources: sources.len(),
        select,
        progress: opts.progress.as_deref(),
        cancel: opts.cancel.as_deref(),
        injected: {
            let mut by_dir: HashMap<PathBuf, Vec<Entry>> = HashMap::new();
            for (dir, e) in &opts.injected {
                by_dir.entry(dir.clone()).or_default().push(e.clone());
            }
            for entries in by_dir.values_mut() {
                entries.sort_by(|a, b| a.name.cmp(&b.name));
            }
            by_dir
        },
    };
    let trees = TreeWriter::new(repo, &uploader, &known);
    let (scanned, content_stats) =
        with_pipeline(repo, &uploader, &known, opts.threads.max(1), opts.cancel.as_deref(), |feed, failure| {
            listahead::raise_open_files_limit();
            let ahead = ListAhead::new(&settings.select.selection.exclude);
            std::thread::scope(|s| {
                let _workers = ahead.start(s, listahead::workers());
                let mut scan = Scanner::new(repo, settings, trees, feed, failure, &ahead);
                for (i, (source, (name, prev))) in sources.iter().zip(starts).enumerate() {
                    scan.scan_source(i, &source.local, name, prev.as_ref(), within[i])?;
                }
                scan.finish()
            })
        })?;
    let Scanned { mut summary, mut sources, mut trees } = scanned;
    summary.left_out.splice(0..0, root_left_out);
    // Anything not backed up as it was (unreadable, vanished, changed while
    // read) makes the snapshot incomplete: the run says so (exit code 3).
    summary.incomplete = !summary.warnings.is_empty();

    // Commit: the directories above the sources, then the index.
    let root_id = skeleton.write(&mut trees, &mut sources)?;
    let (tree_stats, entries_with_xattrs) = trees.finish()?;
    let mut new_packs = adopted;
    new_packs.extend(uploader.finish()?);
    if !new_packs.is_empty() {
        repo.write_index_file(&IndexFile { packs: new_packs })?;
    }
    let streamed = opts.injected_added;
    summary.blobs_added = content_stats.blobs + tree_stats.blobs + streamed.blobs;
    summary.bytes_new = content_stats.raw_bytes + tree_stats.raw_bytes + streamed.raw_bytes;
    summary.bytes_added = content_stats.sealed_bytes + tree_stats.sealed_bytes + streamed.sealed_bytes;
    summary.entries_with_xattrs = Some(entries_with_xattrs);
    Ok(Capture {
        root: root_id,
        paths,
        parent: parent.map(|(id, _)| id),
        host: opts.host.clone(),
        tags: opts.tags.clone(),
        summary,
        started,
        _running: running,
    })
}

/// A backup of `/` is a backup of each entry of `/` (the root tree has no
/// entry of its own; it is stored with fixed metadata like the directories
/// above any source). Entries the selection leaves out are not sources, and
/// each keeps `/`'s device as its file system, so `one_file_system` and the
/// pseudo file systems (`/proc`) apply to them as to any mount point.
/// Returns the sources, for each the device it counts as within (`None`:
/// its own), and what was left out of `/`.
type Expanded = (Vec<BackupSource>, Vec<Option<u64>>, Vec<String>);

fn expand_root(sources: Vec<BackupSource>, select: &Selector) -> Result<Expanded> {
    use std::os::unix::fs::MetadataExt;
    let root = Path::new("/");
    let Some(i) = sources.iter().position(|s| s.at == root) else {
        let n = sources.len();
        return Ok((sources, vec![None; n], Vec::new()));
    };
    if sources[i].local != root {
        return Err(Error::Invalid(format!("cannot store {} as / itself", sources[i].local.display())));
    }
    let dev = std::fs::symlink_metadata(root).at(root)?.dev();
    let mut out: Vec<BackupSource> = Vec::new();
    let mut left_out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(root).at(root)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        if select.selection.exclude.is_match(&path) {
            continue;
        }
        let Ok(md) = Stat::of_path(&path) else { continue };
        // An entry of `/` is not a source the admin named: no-dump applies.
        if let Some(why) = select.leaves_out(&md, read_flags(&path, &md)) {
            left_out.push(format!("{}: {why}", path.display()));
            continue;
        }
        out.push(BackupSource { local: path.clone(), at: path });
    }
    let mut within = vec![Some(dev); out.len()];
    for (j, s) in sources.into_iter().enumerate() {
        if j != i {
            out.push(s);
            within.push(None);
        }
    }
    Ok((out, within, left_out))
}

/// The newest snapshot of exactly these paths from this host.
fn find_parent(repo: &Repository, paths: &[String], host: &str) -> Result<Option<(Id, Snapshot)>> {
    repo.newest_snapshot_where(|s| s.host == host && s.paths == paths)
}

/// The directories above the sources (`/srv` above `/srv/app`), built
/// before the scan and written after it, with each source's entry in its
/// place.
struct Skeleton(DirNode);

/// A source's name in its directory and its entry in the parent snapshot.
type SourceStart = (Vec<u8>, Option<Entry>);

/// A directory of the skeleton.
struct DirNode {
    meta: Metadata,
    children: BTreeMap<Vec<u8>, Node>,
}

enum Node {
    Dir(DirNode),
    /// Where source number `i` goes.
    Source(usize),
}

impl DirNode {
    /// A directory that exists only inside the snapshot (a mount point for a
    /// source stored under another path, or the root). Fixed metadata keeps
    /// its encoding, and so its id, the same from run to run.
    fn synthetic() -> DirNode {
        DirNode { meta: Metadata::synthetic(0o755), children: BTreeMap::new() }
    }
}

impl Skeleton {
    /// The skeleton of `sources`, and for each source its name and its
    /// entry in the parent snapshot.
    fn build(
        sources: &[BackupSource],
        parent_trees: &mut ParentTrees,
        parent_root: Option<&Tree>,
        names: &mut NameCache,
    ) -> Result<(Skeleton, Vec<SourceStart>)> {
        let mut root = DirNode::synthetic();
        let mut starts = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let components: Vec<Vec<u8>> = source
                .at
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(name_bytes(n)),
                    _ => None,
                })
                .collect();
            let Some((last, ancestors)) = components.split_last() else {
                return Err(Error::Invalid(format!("cannot back up {} as the root itself", source.at.display())));
            };
            let same_path = source.at == source.local;
            let mut dir = &mut root;
            let mut parent_tree = parent_root.cloned();
            let mut real = PathBuf::from("/");
            for name in ancestors {
                real.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
                let meta = if same_path {
                    let md = Stat::of_path(&real).at(&real)?;
                    read_metadata(&real, None, &md, None, names)
                } else {
                    DirNode::synthetic().meta
                };
                parent_tree = parent_trees.child(parent_tree.as_ref(), name);
                let node = dir
                    .children
                    .entry(name.clone())
                    .or_insert_with(|| Node::Dir(DirNode { meta, children: BTreeMap::new() }));
                dir = match node {
                    Node::Dir(d) => d,
                    Node::Source(_) => {
                        return Err(Error::Invalid(format!("{} overlaps another source", source.at.display())));
                    }
                };
            }
            starts.push((last.clone(), parent_tree.as_ref().and_then(|t| t.find(last)).cloned()));
            dir.children.insert(last.clone(), Node::Source(i));
        }
        Ok((Skeleton(root), starts))
    }

    /// Write the skeleton's trees, bottom-up; the root tree's id.
    fn write(self, trees: &mut TreeWriter, sources: &mut [Option<Entry>]) -> Result<Id> {
        fn write_dir(dir: DirNode, trees: &mut TreeWriter, sources: &mut [Option<Entry>]) -> Result<Id> {
            let mut entries = Vec::with_capacity(dir.children.len());
            for (name, node) in dir.children {
                match node {
                    Node::Dir(d) => {
                        let meta = d.meta.clone();
                        entries.push(Entry {
                            name,
                            kind: EntryKind::Dir { tree: write_dir(d, trees, sources)? },
                            meta,
                        });
                    }
                    Node::Source(i) => {
                        if let Some(mut e) = sources.get_mut(i).and_then(Option::take) {
                            e.name = name;
                            entries.push(e);
                        }
                    }
                }
            }
            trees.write(entries)
        }
        write_dir(self.0, trees, sources)
    }
}
