//! Check: is the repository whole, and if not, what is damaged and which
//! snapshots depend on it?
//!
//! The structural check reads every index file and snapshot (each must hash to
//! its name and authenticate), walks every snapshot's trees, and checks that
//! every chunk they reference is indexed and that its pack exists and is long
//! enough. `read_data` also reads every pack: its bytes must hash to its name
//! and every blob in it must authenticate and hash to its id.
//!
//! Leftovers of interrupted runs (unindexed packs, files in `tmp/`) are
//! reported as notes: they are harmless and do not make a repository unhealthy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use serde::Serialize;

use crate::engine::backend::short_name as short;
use crate::engine::backend::{INDEX, PACKS, TMP};
use crate::engine::crypto::{Id, ObjectKind};
use crate::engine::index::{Index, IndexBuilder};
use crate::engine::pack::read_header;
use crate::engine::progress::Progress;
use crate::engine::repository::Repository;
use crate::engine::tree::EntryKind;
use crate::error::Result;

#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub index_files: usize,
    pub packs: usize,
    pub blobs: usize,
    pub trees_checked: usize,
    pub bytes_read: u64,
    /// Damaged or missing objects, each with the snapshots that need it.
    pub problems: Vec<Problem>,
    /// Harmless findings (leftovers of interrupted runs).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub object: String,
    pub detail: String,
    pub snapshots: Vec<String>,
}

impl CheckReport {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What is damaged: object → (what is wrong, the snapshots that need it).
#[derive(Default)]
struct Damage(BTreeMap<String, (String, BTreeSet<String>)>);

impl Damage {
    /// Record `object` as damaged (the first detail given stays).
    fn add(&mut self, object: String, detail: String) {
        self.0.entry(object).or_insert_with(|| (detail, BTreeSet::new()));
    }
}

/// Check `repo`; with `read_data`, read and authenticate every blob.
pub fn check(repo: &Repository, read_data: bool, threads: usize, progress: Option<&Progress>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut damage = Damage::default();
    check_layout_and_keys(repo, &mut damage)?;
    let (index, index_damaged) = read_index(repo, &mut report, &mut damage)?;
    let (bad_packs, bad_blobs, unindexed) = check_packs(repo, &index, read_data, threads, progress, &mut report)?;
    for (pack, why) in &bad_packs {
        damage.add(format!("pack {}", pack.short()), why.clone());
    }
    let trees = check_snapshots(repo, &index, &bad_packs, &bad_blobs, &mut report, &mut damage)?;
    look_into_unindexed(repo, unindexed, &trees, index_damaged, &mut report, &mut damage);
    // A damaged or missing pack that no snapshot needs loses nothing: a
    // note, with how it goes away.
    let unneeded: Vec<String> = bad_packs
        .keys()
        .map(|p| format!("pack {}", p.short()))
        .filter(|o| damage.0.get(o).is_some_and(|(_, snaps)| snaps.is_empty()))
        .collect();
    for object in unneeded {
        if let Some((detail, _)) = damage.0.remove(&object) {
            report.notes.push(format!(
                "{object}: {detail}; no snapshot needs it (prune removes an unused pack; \
                 `holdfast repair index` drops a missing one from the index)"
            ));
        }
    }
    report.problems = damage
        .0
        .into_iter()
        .map(|(object, (detail, snaps))| Problem { object, detail, snapshots: snaps.into_iter().collect() })
        .collect();
    Ok(report)
}

/// The repository's directories (a backup needs every one of them) and its
/// key files (named by the hash of their bytes, so damage shows without a
/// passphrase; a damaged key no longer opens the repository).
fn check_layout_and_keys(repo: &Repository, damage: &mut Damage) -> Result<()> {
    for dir in repo.backend().missing_layout()? {
        damage.add(
            format!("directory {dir}/"),
            "missing: backups cannot write into the repository; `holdfast repair index` recreates it".into(),
        );
    }
    for name in repo.backend().list(crate::engine::backend::KEYS)?.into_iter().map(|f| f.name) {
        let problem = match repo.backend().get(crate::engine::backend::KEYS, &name) {
            Err(e) => Some(format!("cannot be read ({e})")),
            Ok(bytes) if Id::of_bytes(&bytes).to_hex() != name => Some("its content does not match its name".into()),
            Ok(bytes) => crate::engine::keyfile::KeyFile::from_json(&bytes).err().map(|e| e.detail()),
        };
        if let Some(why) = problem {
            damage.add(
                format!("key file {}", short(&name)),
                format!(
                    "{why}: it no longer opens the repository; remove it and `holdfast key add` (or `key import` an export)"
                ),
            );
        }
    }
    Ok(())
}

/// Every readable index file, and whether any could not be read.
fn read_index(repo: &Repository, report: &mut CheckReport, damage: &mut Damage) -> Result<(Index, bool)> {
    let mut index = IndexBuilder::default();
    let mut index_damaged = false;
    for name in repo.backend().list(INDEX)?.into_iter().map(|f| f.name) {
        report.index_files += 1;
        match repo.read_index_file(&name) {
            Ok(f) => index.add(&f),
            Err(e) => {
                index_damaged = true;
                damage.add(
                    format!("index {}", short(&name)),
                    format!("{e}; the packs it lists may hold needed blobs: run `holdfast repair index`"),
                )
            }
        }
    }
    let index = index.finish();
    report.blobs = index.len();
    Ok((index, index_damaged))
}

/// Packs that are damaged or missing (with why), blobs that fail to read
/// (`read_data`), and the packs on disk that no index lists.
type PackFindings = (HashMap<Id, String>, HashMap<Id, String>, Vec<Id>);

/// The packs on disk against the packs in the index (and, with
/// `read_data`, every byte of them); leftovers noted.
fn check_packs(
    repo: &Repository,
    index: &Index,
    read_data: bool,
    threads: usize,
    progress: Option<&Progress>,
    report: &mut CheckReport,
) -> Result<PackFindings> {
    let on_disk: HashMap<Id, u64> =
        repo.backend().list(PACKS)?.into_iter().filter_map(|f| Some((Id::from_hex(&f.name)?, f.size))).collect();
    report.packs = on_disk.len();
    let mut bad_packs: HashMap<Id, String> = HashMap::new();
    for (pack, end) in index.packs() {
        match on_disk.get(pack) {
            None => {
                bad_packs.insert(*pack, "indexed but missing".into());
            }
            Some(&size) if size < end => {
                bad_packs.insert(*pack, format!("truncated: {size} bytes, blobs reach {end}"));
            }
            _ => {}
        }
    }
    let unindexed: Vec<Id> = on_disk.keys().filter(|p| !index.has_pack(p)).copied().collect();
    if let Ok(tmp) = repo.backend().list(TMP)
        && !tmp.is_empty()
    {
        report.notes.push(format!("{} unfinished file(s) in tmp/ (left by an interrupted run; harmless)", tmp.len()));
    }
    if let Ok(marks) = repo.backend().list(crate::engine::backend::MARKS)
        && !marks.is_empty()
    {
        report.notes.push(format!("{} pack(s) marked unused by prune, to be deleted by a later prune", marks.len()));
    }
    let mut bad_blobs: HashMap<Id, String> = HashMap::new();
    if read_data {
        let threads = threads.max(repo.backend().parallelism());
        let (packs, blobs, bytes) = read_all_packs(repo, index, &on_disk, threads, progress);
        bad_packs.extend(packs);
        bad_blobs.extend(blobs);
        report.bytes_read = bytes;
    }
    Ok((bad_packs, bad_blobs, unindexed))
}

/// Every snapshot and every tree below it, a level at a time: what each
/// tree needs itself (its own blob, its files' chunks) and which trees are
/// below it; each damaged object is charged to the snapshots that need it.
fn check_snapshots(
    repo: &Repository,
    index: &Index,
    bad_packs: &HashMap<Id, String>,
    bad_blobs: &HashMap<Id, String>,
    report: &mut CheckReport,
    damage: &mut Damage,
) -> Result<HashMap<Id, TreeDamage>> {
    let (snaps, unreadable) = repo.snapshots_from_files()?;
    report.snapshots = snaps.len() + unreadable.len();
    for (name, e) in unreadable {
        damage.add(format!("snapshot {}", short(&name)), e.to_string());
    }
    let mut trees: HashMap<Id, TreeDamage> = HashMap::new();
    let mut queued: HashSet<Id> = snaps.iter().map(|(_, s)| s.root).collect();
    let roots = queued.iter().map(|id| (*id, ())).collect();
    repo.walk_trees_tolerant(index, roots, |tid, tree, ()| {
        let mut node = TreeDamage::default();
        let mut next = Vec::new();
        check_blob(tid, index, bad_packs, bad_blobs, &mut node);
        match tree {
            Ok(tree) => {
                for entry in &tree.entries {
                    match &entry.kind {
                        EntryKind::Dir { tree } => {
                            node.subtrees.push(*tree);
                            if queued.insert(*tree) {
                                next.push((*tree, ()));
                            }
                        }
                        EntryKind::File(c) => {
                            for id in c.pieces.iter().filter_map(|p| p.chunk()) {
                                check_blob(id, index, bad_packs, bad_blobs, &mut node);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                node.unreadable = true;
                node.own.insert((format!("tree {}", tid.short()), e.detail()));
            }
        }
        trees.insert(*tid, node);
        Ok(next)
    })?;
    report.trees_checked = trees.len();
    // A snapshot depends on everything below its root, shared subtrees included.
    let mut below: HashMap<Id, BTreeSet<(String, String)>> = HashMap::new();
    for (sid, snap) in &snaps {
        for (object, detail) in damage_below(snap.root, &trees, &mut below) {
            damage.0.entry(object).or_insert_with(|| (detail, BTreeSet::new())).1.insert(sid.short());
        }
    }
    Ok(trees)
}

/// Packs no index lists: harmless leftovers of an interrupted run, unless
/// snapshots need blobs that no index places — then such a pack may hold
/// them, and is looked into.
fn look_into_unindexed(
    repo: &Repository,
    unindexed: Vec<Id>,
    trees: &HashMap<Id, TreeDamage>,
    index_damaged: bool,
    report: &mut CheckReport,
    damage: &mut Damage,
) {
    let needed_unplaced: HashSet<Id> = trees.values().flat_map(|t| t.unplaced.iter().copied()).collect();
    let needs_unknown = trees.values().any(|t| t.unreadable);
    for pack in unindexed {
        let object = format!("pack {}", pack.short());
        if needed_unplaced.is_empty() && !index_damaged && !needs_unknown {
            report.notes.push(format!(
                "{object} is not in any index (left by an interrupted backup; harmless, prune removes it)"
            ));
            continue;
        }
        let held = repo.backend().get(PACKS, &pack.to_hex()).and_then(|bytes| read_header(&pack, &bytes, repo.keys()));
        match held {
            Ok(blobs) => {
                let needed = blobs.iter().filter(|b| needed_unplaced.contains(&b.id)).count();
                if needed > 0 {
                    damage.add(
                        object,
                        format!(
                            "holds {needed} blob(s) that snapshots need but is in no index \
                             (an index file was lost): run `holdfast repair index`; prune refuses to run until then"
                        ),
                    );
                } else if index_damaged && !needs_unknown {
                    report.notes.push(format!(
                        "{object} is not in any readable index and holds nothing the snapshots need; \
                         `holdfast repair index` lists it again"
                    ));
                } else if needs_unknown {
                    damage.add(
                        object,
                        "is in no readable index, and some trees cannot be read, so it may hold what they need: \
                         run `holdfast repair index`; prune refuses to run until then"
                            .into(),
                    );
                } else {
                    report.notes.push(format!(
                        "{object} is not in any index and holds nothing the snapshots need (harmless, prune removes it)"
                    ));
                }
            }
            Err(e) => damage.add(
                object,
                format!(
                    "is in no index and cannot be read ({e}); snapshots need blobs that no index places \
                     and it may have held them"
                ),
            ),
        }
    }
}

/// One tree as the check saw it.
#[derive(Default)]
struct TreeDamage {
    /// (object, detail) of what this tree itself needs and cannot have.
    own: BTreeSet<(String, String)>,
    subtrees: Vec<Id>,
    /// Blobs it needs that no index places.
    unplaced: Vec<Id>,
    /// The tree itself could not be read: what it needs is unknown.
    unreadable: bool,
}

/// Everything damaged at or below tree `root`, remembered per tree in
/// `below` (a subtree shared by many snapshots is added up once).
fn damage_below(
    root: Id,
    trees: &HashMap<Id, TreeDamage>,
    below: &mut HashMap<Id, BTreeSet<(String, String)>>,
) -> BTreeSet<(String, String)> {
    // Depth first without recursion: a tree is summed up after its subtrees.
    let mut stack = vec![(root, false)];
    while let Some((id, subtrees_done)) = stack.pop() {
        if below.contains_key(&id) {
            continue;
        }
        let Some(node) = trees.get(&id) else {
            below.insert(id, BTreeSet::new());
            continue;
        };
        if subtrees_done {
            let mut all = node.own.clone();
            for sub in &node.subtrees {
                all.extend(below.get(sub).into_iter().flatten().cloned());
            }
            below.insert(id, all);
        } else {
            stack.push((id, true));
            stack.extend(node.subtrees.iter().filter(|s| !below.contains_key(*s)).map(|s| (*s, false)));
        }
    }
    below.get(&root).cloned().unwrap_or_default()
}

/// Record why blob `id` cannot be read, if it cannot.
fn check_blob(
    id: &Id,
    index: &Index,
    bad_packs: &HashMap<Id, String>,
    bad_blobs: &HashMap<Id, String>,
    node: &mut TreeDamage,
) {
    let deps = &mut node.own;
    match index.get(id) {
        None => {
            node.unplaced.push(*id);
            deps.insert((
                format!("blob {}", id.short()),
                "referenced but not in any index: run `holdfast repair index` (it may be in a pack no index lists)"
                    .into(),
            ));
        }
        Some(loc) => {
            if let Some(why) = bad_packs.get(&loc.pack) {
                deps.insert((format!("pack {}", loc.pack.short()), why.clone()));
            }
            if let Some(why) = bad_blobs.get(id) {
                deps.insert((format!("blob {} in pack {}", id.short(), loc.pack.short()), why.clone()));
            }
        }
    }
}

/// Read every indexed pack: damaged packs and damaged blobs, and bytes read.
pub(crate) fn read_all_packs(
    repo: &Repository,
    index: &Index,
    on_disk: &HashMap<Id, u64>,
    threads: usize,
    progress: Option<&Progress>,
) -> (HashMap<Id, String>, HashMap<Id, String>, u64) {
    let mut by_pack: HashMap<Id, Vec<Id>> = HashMap::new();
    for (id, loc) in index.iter() {
        by_pack.entry(loc.pack).or_default().push(id);
    }
    let work: Vec<(Id, Vec<Id>)> = by_pack.into_iter().filter(|(p, _)| on_disk.contains_key(p)).collect();
    if let Some(p) = progress {
        p.add_total(0, work.iter().filter_map(|(pack, _)| on_disk.get(pack)).sum());
        p.total_known();
    }
    let queue = Mutex::new(work.into_iter());
    let out = Mutex::new((HashMap::new(), HashMap::new(), 0u64));
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some((pack, blobs)) = next else { break };
                    let (bad_pack, bad_blobs, n) = read_pack(repo, index, &pack, &blobs);
                    if let Some(p) = progress {
                        p.done(0, on_disk.get(&pack).copied().unwrap_or(n));
                    }
                    if let Ok(mut o) = out.lock() {
                        if let Some(why) = bad_pack {
                            o.0.insert(pack, why);
                        }
                        o.1.extend(bad_blobs);
                        o.2 += n;
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_default()
}

fn read_pack(repo: &Repository, index: &Index, pack: &Id, blobs: &[Id]) -> (Option<String>, Vec<(Id, String)>, u64) {
    let bytes = match repo.backend().get(PACKS, &pack.to_hex()) {
        Ok(b) => b,
        Err(e) => return (Some(e.to_string()), Vec::new(), 0),
    };
    let mut bad_pack = None;
    if let Err(e) = read_header(pack, &bytes, repo.keys()) {
        bad_pack = Some(e.to_string());
    }
    let mut bad = Vec::new();
    for id in blobs {
        let Some(loc) = index.get(id) else { continue };
        let range = loc.offset as usize..(loc.offset as usize + loc.length as usize);
        let result = match bytes.get(range) {
            None => Err("beyond the end of the pack".to_string()),
            Some(sealed) => match repo.keys().open(loc.kind, id, sealed) {
                Err(e) => Err(e.to_string()),
                Ok(plain) if repo.keys().blob_id(&plain) != *id => Err("content does not match its id".into()),
                Ok(_) if loc.kind != ObjectKind::Chunk && loc.kind != ObjectKind::Tree => Err("unexpected kind".into()),
                Ok(_) => Ok(()),
            },
        };
        if let Err(why) = result {
            bad.push((*id, why));
        }
    }
    (bad_pack, bad, bytes.len() as u64)
}
