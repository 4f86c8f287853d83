//! The repository fault suite: damage one repository file at a time — every
//! kind of file, in every way a disk, a careless admin or a half-finished
//! copy damages files — and run every command on the damaged copy.
//!
//! Kinds: the marker `holdfast-repository`, `config`, `keys/*`, `index/*`,
//! `snapshots/*`, `packs/xx/*`, leftovers in `tmp/`, records in `running/`
//! and prune's `marks/*`. Faults: flip one bit, truncate, delete, swap the
//! contents with another file of the same kind (the marker and the config,
//! which are alone of their kind, get another repository's), zero a range.
//! Commands: `snapshots --json`, `ls latest --json`, `restore latest`,
//! `restore ID`, `check`, `check --read-data`, `prune --keep-last 100`,
//! `repair index` then `check --read-data`, `repair snapshots --read-data`,
//! `backup` (then a restore of what it saved), `forget ID --dry-run` and
//! `key export`.
//!
//! What must hold on every damaged copy, for every command:
//! - no panic (exit 101, "panicked") and no hang (a timeout per command);
//! - no silent wrong data: a restore that succeeds gives back exactly the
//!   tree that was backed up, `ls`/`snapshots --json` that succeed list
//!   exactly what was stored, `latest` never quietly means an older snapshot
//!   while the newest cannot be read, `check` finds damage to anything a
//!   snapshot needs;
//! - nothing needed is deleted: prune, repair and backup leave every pack a
//!   snapshot needs (damaged or not), every snapshot, key, the config and the
//!   marker as they found them; a repository whose only damage is to its
//!   index comes back whole with `repair index`, and `repair snapshots`
//!   declares nothing lost there (the packs still hold it all);
//! - read-only commands change nothing; damage to files nothing needs
//!   (`tmp/`, `running/`, `marks/`, a pack no snapshot needs, a key of
//!   another passphrase) breaks no command;
//! - a failing command says what it concerns (a pack, an index, a snapshot,
//!   a key, the config, a tree, a chunk, the repository) and exits with a
//!   documented code; a damaged key is never called a wrong passphrase.
//!
//! The cases are seeded and bounded. One cycle of cases tries every kind ×
//! fault × command at least once; CI runs one cycle with a fixed seed. Local
//! long runs: `HOLDFAST_FAULT_CASES=2000 HOLDFAST_FAULT_SEED=7 cargo test
//! --test cli faults::`. `HOLDFAST_FAULT_ONLY=N` runs case N alone and keeps
//! its directory, to reproduce a report by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

use crate::util::{Node, PASSPHRASE, holdfast, random_bytes, restored, tree_fingerprint, write_random};

/// The seed CI runs with: its cycle also picks, among others, the index
/// file of the forgotten snapshot for `index / Delete` under `prune`.
const DEFAULT_SEED: u64 = 7;

/// Commands per case: few, so that a cycle fits the CI budget.
const COMMANDS_PER_CASE: usize = 3;

/// Far longer than any command here takes (a fraction of a second); a
/// command still running then is a hang.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(40);

/// The passphrase of the repository's second key.
const SECOND_PASSPHRASE: &str = "faults: the second key 7d21";

/// Words a failing command's message must contain one of: it names what it
/// is about.
const OBJECT_WORDS: [&str; 9] = ["pack", "index", "snapshot", "key", "config", "tree", "chunk", "blob", "repository"];

// ---------------------------------------------------------------- what is tried

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum FileKind {
    Marker,
    Config,
    Key,
    Index,
    Snapshot,
    Pack,
    Tmp,
    Running,
    Mark,
}

impl FileKind {
    const ALL: [FileKind; 9] = [
        FileKind::Marker,
        FileKind::Config,
        FileKind::Key,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Pack,
        FileKind::Tmp,
        FileKind::Running,
        FileKind::Mark,
    ];

    fn name(self) -> &'static str {
        match self {
            FileKind::Marker => "marker",
            FileKind::Config => "config",
            FileKind::Key => "key",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshot",
            FileKind::Pack => "pack",
            FileKind::Tmp => "tmp",
            FileKind::Running => "running",
            FileKind::Mark => "mark",
        }
    }

    /// The kind of the repository file at `rel` (relative to the repository).
    fn of(rel: &str) -> FileKind {
        match rel.split('/').next().unwrap_or("") {
            "holdfast-repository" => FileKind::Marker,
            "config" => FileKind::Config,
            "keys" => FileKind::Key,
            "index" => FileKind::Index,
            "snapshots" => FileKind::Snapshot,
            "packs" => FileKind::Pack,
            "tmp" => FileKind::Tmp,
            "running" => FileKind::Running,
            "marks" => FileKind::Mark,
            other => panic!("unexpected repository file {rel} ({other})"),
        }
    }

    /// Words by which a message names this kind of file.
    fn words(self) -> &'static [&'static str] {
        match self {
            FileKind::Marker => &["holdfast-repository", "marker", "repository"],
            FileKind::Config => &["config"],
            FileKind::Key => &["key"],
            FileKind::Index => &["index"],
            FileKind::Snapshot => &["snapshot"],
            FileKind::Pack => &["pack"],
            FileKind::Tmp => &["tmp"],
            FileKind::Running => &["running"],
            FileKind::Mark => &["mark"],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fault {
    Flip,
    Truncate,
    Delete,
    Swap,
    Zero,
}

impl Fault {
    const ALL: [Fault; 5] = [Fault::Flip, Fault::Truncate, Fault::Delete, Fault::Swap, Fault::Zero];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Cmd {
    Snapshots,
    LsLatest,
    RestoreLatest,
    RestoreId,
    Check,
    CheckReadData,
    Prune,
    RepairIndexThenCheck,
    RepairSnapshots,
    Backup,
    ForgetDryRun,
    KeyExport,
}

impl Cmd {
    const ALL: [Cmd; 12] = [
        Cmd::Snapshots,
        Cmd::LsLatest,
        Cmd::RestoreLatest,
        Cmd::RestoreId,
        Cmd::Check,
        Cmd::CheckReadData,
        Cmd::Prune,
        Cmd::RepairIndexThenCheck,
        Cmd::RepairSnapshots,
        Cmd::Backup,
        Cmd::ForgetDryRun,
        Cmd::KeyExport,
    ];
}

/// One damaged copy and the commands run on it.
#[derive(Debug, Clone)]
struct Case {
    index: usize,
    kind: FileKind,
    fault: Fault,
    cmds: Vec<Cmd>,
}

/// Cases in cycles: a cycle gives each kind × fault pair every command once,
/// `COMMANDS_PER_CASE` at a time, grouped differently in each cycle.
fn plan(seed: u64, cases: usize) -> Vec<Case> {
    let pairs: Vec<(FileKind, Fault)> =
        FileKind::ALL.iter().flat_map(|k| Fault::ALL.iter().map(move |f| (*k, *f))).collect();
    let groups = Cmd::ALL.len().div_ceil(COMMANDS_PER_CASE);
    let cycle = pairs.len() * groups;
    (0..cases)
        .map(|index| {
            let (round, within) = (index / cycle, index % cycle);
            let (pair, group) = (within % pairs.len(), within / pairs.len());
            let mut order = Cmd::ALL.to_vec();
            let mut rng = Rng::new(&[seed, round as u64, pair as u64, 0xC0DE]);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let cmds = order.into_iter().skip(group * COMMANDS_PER_CASE).take(COMMANDS_PER_CASE).collect();
            Case { index, kind: pairs[pair].0, fault: pairs[pair].1, cmds }
        })
        .collect()
}

fn cycle_len() -> usize {
    FileKind::ALL.len() * Fault::ALL.len() * Cmd::ALL.len().div_ceil(COMMANDS_PER_CASE)
}

/// xorshift64*, seeded through splitmix64: the same numbers for the same
/// seed on every machine.
struct Rng(u64);

impl Rng {
    fn new(parts: &[u64]) -> Rng {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for p in parts {
            x ^= *p;
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x = z ^ (z >> 31);
        }
        Rng(x | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------- the fixture

/// Which of the two snapshots that stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    A,
    B,
}

/// A source tree, a repository of it and what a healthy repository answers,
/// built once per run.
struct Fixture {
    dir: TempDir,
    src: PathBuf,
    base: PathBuf,
    /// Another repository, whose marker and config stand in for ours.
    foreign: PathBuf,
    /// The base's files by kind, relative to the repository, sorted.
    files: BTreeMap<FileKind, Vec<String>>,
    /// Every file of the base and its hash.
    base_state: State,
    /// Packs a snapshot needs (all but the forgotten snapshot's).
    live_packs: BTreeSet<String>,
    /// Index files that list only the forgotten snapshot's packs.
    dead_index: BTreeSet<String>,
    /// The key the test passphrase opens (the other one has its own).
    main_key: String,
    /// The older snapshot; the newer one was backed up incrementally after
    /// one file changed and one was added.
    snap_a: String,
    snap_b: String,
    tree_a: Vec<Node>,
    tree_b: Vec<Node>,
    ls_a: Value,
    ls_b: Value,
    /// `snapshots --json` of the base, by id.
    snapshots: BTreeMap<String, Value>,
    /// `key export -o` of the base.
    key_export: Vec<u8>,
    /// The modification time of every repository file: three hours ago, so
    /// that prune may delete what it judges unused (leftovers and marks older
    /// than an hour).
    old: SystemTime,
}

impl Fixture {
    fn build() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        write_random(&src.join("big.bin"), 15, 1_600_000);
        fs::write(src.join("small.txt"), "a small file\n").unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("small.txt", src.join("link")).unwrap();
        fs::write(src.join("sub/notes.txt"), "first version\n".repeat(20)).unwrap();

        let base = dir.path().join("base");
        let foreign = dir.path().join("foreign");
        must(&base, &["init"]);
        must(&foreign, &["init"]);
        let main_key = single_file(&base.join("keys"));
        let mut add = holdfast(&base);
        add.args(["key", "add"])
            .env("HOLDFAST_PASSPHRASE", PASSPHRASE)
            .env("HOLDFAST_NEW_PASSPHRASE", SECOND_PASSPHRASE);
        let out = add.output().unwrap();
        assert!(out.status.success(), "key add: {}", String::from_utf8_lossy(&out.stderr));

        // Index files in the order they were written (for choices that
        // mean the same file in every run of a seed).
        let mut index_order: Vec<String> = Vec::new();
        let note_new_index = |order: &mut Vec<String>| {
            for n in names_in(&base.join("index")) {
                let rel = format!("index/{n}");
                if !order.contains(&rel) {
                    order.push(rel);
                }
            }
        };
        let snap_a = backup_id(&base, &src);
        note_new_index(&mut index_order);
        let tree_a = tree_fingerprint(&src);
        // The incremental one: one file changed, one new; the rest is
        // taken from the parent unread.
        fs::write(src.join("sub/notes.txt"), "second version\n".repeat(30)).unwrap();
        fs::write(src.join("sub/new.bin"), random_bytes(16, 300_000)).unwrap();
        let snap_b = backup_id(&base, &src);
        note_new_index(&mut index_order);
        let tree_b = tree_fingerprint(&src);

        // A snapshot forgotten and pruned once: its packs are marked, so the
        // next prune deletes them (the marks are made older below).
        let gone = dir.path().join("gone");
        fs::create_dir(&gone).unwrap();
        write_random(&gone.join("old.bin"), 17, 400_000);
        let index_before = names_in(&base.join("index"));
        let snap_c = backup_id(&base, &gone);
        note_new_index(&mut index_order);
        let dead_index: BTreeSet<String> =
            names_in(&base.join("index")).difference(&index_before).map(|n| format!("index/{n}")).collect();
        must(&base, &["forget", &snap_c]);
        must(&base, &["prune", "--keep-last", "100"]);
        fs::remove_dir_all(&gone).unwrap();

        let now = SystemTime::now();
        let hours_ago = |h: u64, extra_min: u64| now - Duration::from_secs(h * 3600 + extra_min * 60);
        let marks: Vec<String> = names_in(&base.join("marks")).into_iter().collect();
        assert!(marks.len() >= 2, "prune marks the forgotten snapshot's data and tree packs: {marks:?}");
        for (i, m) in marks.iter().enumerate() {
            fs::write(base.join("marks").join(m), rfc3339(hours_ago(2, 10 * i as u64))).unwrap();
        }
        // Leftovers of an interrupted backup: part of a pack, a whole index.
        let big_pack = largest_file(&base.join("packs"));
        let bytes = fs::read(&big_pack).unwrap();
        fs::write(base.join("tmp/31337-0-6c6566746f766572.tmp"), &bytes[..100_000]).unwrap();
        let some_index = base.join("index").join(names_in(&base.join("index")).into_iter().next().unwrap());
        fs::copy(&some_index, base.join("tmp/31337-1-6f7468657273.tmp")).unwrap();
        // A backup running on another host, and one of a process here that
        // is gone.
        let record = |host: &str, pid: u32| {
            serde_json::json!({ "host": host, "pid": pid, "started": rfc3339(hours_ago(1, 0)) }).to_string()
        };
        fs::write(base.join("running/faults-otherhost-4242-0badcafe"), record("faults-otherhost", 4242)).unwrap();
        let host = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = exited.id();
        exited.wait().unwrap();
        fs::write(base.join(format!("running/{host}-{dead_pid}-deadbeef")), record(&host, dead_pid)).unwrap();

        let old = hours_ago(3, 0);
        let base_state = state(&base);
        for rel in base_state.keys() {
            set_mtime(&base.join(rel), old);
        }

        let mut files: BTreeMap<FileKind, Vec<String>> = BTreeMap::new();
        for rel in base_state.keys() {
            files.entry(FileKind::of(rel)).or_default().push(rel.clone());
        }
        for kind in FileKind::ALL {
            assert!(files.contains_key(&kind), "the base repository has no {} file: {files:?}", kind.name());
        }
        // The same choice picks the same file in every run of a seed (file
        // names are hashes of random keys and data): by role where there is
        // one, else by size.
        for list in files.values_mut() {
            list.sort_by_key(|rel| (fs::metadata(base.join(rel)).unwrap().len(), rel.clone()));
        }
        let main_key = format!("keys/{main_key}");
        files.get_mut(&FileKind::Key).unwrap().sort_by_key(|rel| *rel != main_key);
        files.get_mut(&FileKind::Snapshot).unwrap().sort_by_key(|rel| !rel.ends_with(&snap_a));
        let index = files.get_mut(&FileKind::Index).unwrap();
        assert_eq!(index.iter().collect::<BTreeSet<_>>(), index_order.iter().collect(), "one index file per backup");
        *index = index_order;
        assert_eq!(files[&FileKind::Key].len(), 2, "two keys");
        assert_eq!(files[&FileKind::Snapshot].len(), 2, "two snapshots stay");
        let dead_packs: BTreeSet<String> = marks.iter().map(|m| format!("packs/{}/{m}", &m[..2])).collect();
        let live_packs: BTreeSet<String> =
            files[&FileKind::Pack].iter().filter(|p| !dead_packs.contains(*p)).cloned().collect();
        assert!(live_packs.len() >= 3, "{live_packs:?}");

        let ls = |id: &str| {
            let (code, out, err) = plain(&base, &["ls", id, "--json"]);
            assert_eq!(code, Some(0), "{err}");
            serde_json::from_str::<Value>(&out).unwrap()
        };
        let (ls_a, ls_b) = (ls(&snap_a), ls(&snap_b));
        let (code, out, err) = plain(&base, &["snapshots", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let snapshots: BTreeMap<String, Value> = match serde_json::from_str::<Value>(&out).unwrap() {
            Value::Array(v) => v.into_iter().map(|s| (s["id"].as_str().unwrap().to_string(), s)).collect(),
            other => panic!("snapshots --json: {other}"),
        };
        assert_eq!(
            snapshots.keys().cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from([snap_a.clone(), snap_b.clone()])
        );
        let export = dir.path().join("exported.key");
        must(&base, &["key", "export", "-o", export.to_str().unwrap()]);
        let key_export = fs::read(&export).unwrap();
        let (code, out, err) = plain(&base, &["check", "--read-data"]);
        assert_eq!(code, Some(0), "the base repository is healthy:\n{out}{err}");

        Fixture {
            dir,
            src,
            base,
            foreign,
            files,
            base_state,
            live_packs,
            dead_index,
            main_key,
            snap_a,
            snap_b,
            tree_a,
            tree_b,
            ls_a,
            ls_b,
            snapshots,
            key_export,
            old,
        }
    }

    fn tree(&self, w: Which) -> &[Node] {
        match w {
            Which::A => &self.tree_a,
            Which::B => &self.tree_b,
        }
    }

    fn snapshot_file(&self, w: Which) -> String {
        format!(
            "snapshots/{}",
            match w {
                Which::A => &self.snap_a,
                Which::B => &self.snap_b,
            }
        )
    }
}

// ---------------------------------------------------------------- files

/// Repository-relative path → BLAKE3 of the file's bytes.
type State = BTreeMap<String, String>;

fn state(repo: &Path) -> State {
    let mut out = State::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(repo).unwrap().to_string_lossy().into_owned();
                let hash = fs::read(&p).map(|b| blake3::hash(&b).to_hex().to_string()).unwrap_or_default();
                out.insert(rel, hash);
            }
        }
    }
    out
}

/// Copy a repository with its files' permissions and modification times
/// (prune judges leftovers and marks by age).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::metadata(from).unwrap().permissions()).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
            set_mtime(&dst, fs::metadata(&src).unwrap().modified().unwrap());
        }
    }
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::open(path).unwrap().set_modified(t).unwrap();
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

fn single_file(dir: &Path) -> String {
    let names = names_in(dir);
    assert_eq!(names.len(), 1, "{}: {names:?}", dir.display());
    names.into_iter().next().unwrap()
}

fn largest_file(dir: &Path) -> PathBuf {
    let mut all = Vec::new();
    for sub in fs::read_dir(dir).unwrap() {
        for f in fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            all.push((fs::metadata(&p).unwrap().len(), p));
        }
    }
    all.into_iter().max().unwrap().1
}

/// A time as RFC 3339 in UTC, the way holdfast writes marks and records.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

// ---------------------------------------------------------------- running holdfast

/// What one command did.
struct Ran {
    /// The command line, for reports.
    line: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn run(repo: &Path, args: &[OsString]) -> Ran {
    let mut c = holdfast(repo);
    c.args(args).env("HOLDFAST_PASSPHRASE", PASSPHRASE).env_remove("HOLDFAST_CONFIG").timeout(COMMAND_TIMEOUT);
    let started = Instant::now();
    let out = c.output().expect("start holdfast");
    let line = format!("holdfast {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    Ran {
        line,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: out.status.code().is_none() && started.elapsed() >= COMMAND_TIMEOUT,
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn plain(repo: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let r = run(repo, &os(args));
    (r.code, r.stdout, r.stderr)
}

#[track_caller]
fn must(repo: &Path, args: &[&str]) -> String {
    let (code, out, err) = plain(repo, args);
    assert_eq!(code, Some(0), "holdfast {args:?}:\n{out}{err}");
    out
}

fn backup_id(repo: &Path, src: &Path) -> String {
    let id = must(repo, &["backup", src.to_str().unwrap()]).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    id
}

// ---------------------------------------------------------------- one case

/// What a fault did to the copy.
struct Applied {
    /// In words, with the file(s): "flipped bit 3 of byte 1234 of packs/ab/…".
    what: String,
}

/// Damage one file of `kind` in `repo`, chosen by `rng`.
fn apply(fx: &Fixture, repo: &Path, kind: FileKind, fault: Fault, rng: &mut Rng) -> Applied {
    let files = &fx.files[&kind];
    let rel = files[rng.below(files.len() as u64) as usize].clone();
    let path = repo.join(&rel);
    let bytes = fs::read(&path).unwrap();
    let len = bytes.len() as u64;
    assert!(len > 0, "{rel} is empty");
    let what = match fault {
        Fault::Flip => {
            let (at, bit) = (rng.below(len), rng.below(8));
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[bytes[at as usize] ^ (1 << bit)], at).unwrap();
            format!("flipped bit {bit} of byte {at} of {rel} ({len} bytes)")
        }
        Fault::Truncate => {
            let to = match rng.below(4) {
                0 => 0,
                1 => len - 1,
                _ => rng.below(len),
            };
            fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(to).unwrap();
            format!("truncated {rel} from {len} to {to} bytes")
        }
        Fault::Delete => {
            fs::remove_file(&path).unwrap();
            format!("deleted {rel}")
        }
        Fault::Swap if files.len() >= 2 => {
            let others: Vec<&String> = files.iter().filter(|f| **f != rel).collect();
            let other = others[rng.below(others.len() as u64) as usize];
            let other_bytes = fs::read(repo.join(other)).unwrap();
            fs::write(&path, &other_bytes).unwrap();
            fs::write(repo.join(other), &bytes).unwrap();
            set_mtime(&repo.join(other), fx.old);
            format!("swapped the contents of {rel} and {other}")
        }
        Fault::Swap => {
            fs::copy(fx.foreign.join(&rel), &path).unwrap();
            format!("replaced {rel} with another repository's {rel}")
        }
        Fault::Zero => loop {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(4096));
            let range = at as usize..(at + n) as usize;
            if bytes[range.clone()].iter().any(|b| *b != 0) {
                fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&vec![0; n as usize], at).unwrap();
                break format!("zeroed bytes {at}..{} of {rel} ({len} bytes)", at + n);
            }
        },
    };
    // Rot, not a new write: the file keeps its age.
    if path.exists() {
        set_mtime(&path, fx.old);
    }
    Applied { what }
}

/// How a file of the base fares in a damaged copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Intact,
    Damaged,
    Deleted,
}

/// One case's damaged copy and what was found on it.
struct Run<'a> {
    fx: &'a Fixture,
    case: &'a Case,
    applied: Applied,
    dir: PathBuf,
    damaged: PathBuf,
    /// The damaged copy's files.
    state: State,
    violations: Vec<String>,
    observations: Vec<(String, String)>,
    /// (command, exit code) of every holdfast run.
    ran: Vec<(Cmd, Option<i32>)>,
}

impl Run<'_> {
    fn status(&self, rel: &str) -> Status {
        match self.state.get(rel) {
            None => Status::Deleted,
            Some(h) if Some(h) == self.fx.base_state.get(rel) => Status::Intact,
            Some(_) => Status::Damaged,
        }
    }

    /// Base files the fault changed or removed.
    fn touched(&self) -> Vec<String> {
        self.fx.base_state.keys().filter(|rel| self.status(rel) != Status::Intact).cloned().collect()
    }

    fn violation(&mut self, cmd: Cmd, ran: &Ran, what: &str) {
        self.violations.push(format!(
            "case {} ({} / {:?}: {}), {:?} `{}` exited {:?}: {what}\n      output: {}",
            self.case.index,
            self.case.kind.name(),
            self.case.fault,
            self.applied.what,
            cmd,
            ran.line,
            ran.code,
            excerpt(&ran.text()),
        ));
    }

    fn observe(&mut self, category: &str, cmd: Cmd, ran: &Ran) {
        self.observations.push((
            category.to_string(),
            format!(
                "case {} ({}: {}), {:?} exited {:?}: {}",
                self.case.index,
                self.case.kind.name(),
                self.applied.what,
                cmd,
                ran.code,
                excerpt(&ran.text())
            ),
        ));
    }

    /// The snapshot `latest` must mean, or None when it must fail (the
    /// newest cannot be read, or nothing is left).
    fn expected_latest(&self) -> Option<Which> {
        match self.status(&self.fx.snapshot_file(Which::B)) {
            Status::Intact => Some(Which::B),
            Status::Deleted if self.status(&self.fx.snapshot_file(Which::A)) == Status::Intact => Some(Which::A),
            _ => None,
        }
    }

    /// Nothing the fault touched is needed by `cmd`: it must succeed as on
    /// a healthy repository.
    fn harmless_for(&self, cmd: Cmd) -> bool {
        let checks = matches!(cmd, Cmd::Check | Cmd::CheckReadData | Cmd::RepairIndexThenCheck);
        let reads_every_pack = matches!(cmd, Cmd::CheckReadData | Cmd::RepairIndexThenCheck);
        let key_swap = self.case.kind == FileKind::Key && self.case.fault == Fault::Swap;
        self.touched().iter().all(|rel| match FileKind::of(rel) {
            FileKind::Tmp | FileKind::Running | FileKind::Mark => true,
            FileKind::Key => !checks && (key_swap || *rel != self.fx.main_key),
            FileKind::Pack => !self.fx.live_packs.contains(rel) && !reads_every_pack,
            _ => false,
        })
    }

    /// Damage `check` (with `read_data`: `check --read-data`) must find.
    fn detectable(&self, read_data: bool) -> Option<String> {
        for rel in self.touched() {
            let status = self.status(&rel);
            let found = match FileKind::of(&rel) {
                FileKind::Index => status == Status::Damaged || !self.fx.dead_index.contains(&rel),
                FileKind::Snapshot => status == Status::Damaged,
                FileKind::Pack => self.fx.live_packs.contains(&rel) && (read_data || status == Status::Deleted),
                FileKind::Config => true,
                // A flipped bit may only change the case of a hex digit.
                FileKind::Marker => self.case.fault != Fault::Flip,
                _ => false,
            };
            if found {
                return Some(format!("{rel} is {status:?}"));
            }
        }
        None
    }

    fn exec(&mut self, cmd: Cmd, repo: &Path, args: &[OsString]) -> Ran {
        let ran = run(repo, args);
        self.ran.push((cmd, ran.code));
        self.common(cmd, &ran);
        ran
    }

    /// What every command must do, whatever it is.
    fn common(&mut self, cmd: Cmd, ran: &Ran) {
        if ran.timed_out {
            self.violation(cmd, ran, &format!("HANG: still running after {COMMAND_TIMEOUT:?}"));
            return;
        }
        if ran.code == Some(101) || ran.stderr.contains("panicked") {
            self.violation(cmd, ran, "PANIC");
        }
        let allowed: &[i32] = if cmd == Cmd::Backup { &[0, 1, 3, 4] } else { &[0, 1, 4] };
        match ran.code {
            Some(c) if allowed.contains(&c) => {}
            _ => self.violation(cmd, ran, &format!("exit code not among {allowed:?}")),
        }
        if ran.ok() || ran.code == Some(3) {
            return;
        }
        let text = ran.text().to_lowercase();
        // A path is not a name: "…/packs/ab/…: No such file or directory"
        // does not say that a pack is missing, nor what needs it.
        let words: String = text.split_whitespace().filter(|t| !t.contains('/')).collect::<Vec<_>>().join(" ");
        if text.trim().is_empty() {
            self.violation(cmd, ran, "failed without a word");
        } else if !OBJECT_WORDS.iter().any(|w| words.contains(w)) {
            self.violation(cmd, ran, &format!("the message names no object (none of {OBJECT_WORDS:?} outside paths)"));
        }
        let touched = self.touched();
        let names_it = touched.iter().any(|rel| {
            let short = rel.rsplit('/').next().unwrap_or(rel);
            text.contains(&short[..short.len().min(8)].to_lowercase())
                || FileKind::of(rel).words().iter().any(|w| text.contains(w))
        });
        if !names_it && !self.harmless_for(cmd) {
            self.observe("failure names neither the damaged file nor its kind", cmd, ran);
        }
        if touched.contains(&self.fx.main_key) && self.case.fault != Fault::Swap {
            if ran.code != Some(4) {
                self.violation(cmd, ran, "the key was damaged or removed: exit code 4 expected");
            }
            if self.case.fault != Fault::Delete && text.contains("wrong passphrase") {
                self.violation(cmd, ran, "a damaged key file reported as a wrong passphrase");
            }
        }
    }

    /// The command must have succeeded if the damage is harmless to it.
    fn harmless(&mut self, cmd: Cmd, ran: &Ran) {
        if !ran.ok() && !ran.timed_out && self.harmless_for(cmd) {
            self.violation(cmd, ran, "damage to a file nothing needs made the command fail");
        }
    }

    /// Nothing any snapshot needs may be gone or changed after `cmd` ran on
    /// `repo`, which was like the damaged copy before.
    fn preserved(&mut self, cmd: Cmd, ran: &Ran, repo: &Path) {
        let after = state(repo);
        let mut lost = Vec::new();
        for (rel, hash) in &self.state {
            let needed = match FileKind::of(rel) {
                FileKind::Pack => self.fx.live_packs.contains(rel),
                FileKind::Snapshot | FileKind::Key | FileKind::Config | FileKind::Marker => true,
                _ => false,
            };
            if needed && after.get(rel) != Some(hash) {
                lost.push(format!("{rel} {}", if after.contains_key(rel) { "changed" } else { "deleted" }));
            }
        }
        if !lost.is_empty() {
            self.violation(cmd, ran, &format!("DATA LOSS: {}", lost.join(", ")));
        }
    }

    fn unchanged(&mut self, cmd: Cmd, ran: &Ran) {
        let after = state(&self.damaged);
        if after != self.state {
            let diff: Vec<&String> = after
                .keys()
                .chain(self.state.keys())
                .filter(|k| after.get(*k) != self.state.get(*k))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            self.violation(cmd, ran, &format!("a read-only command changed the repository: {diff:?}"));
            self.state = after;
        }
    }

    /// A fresh copy of the damaged repository, for a command that writes.
    fn scratch_copy(&self, n: usize) -> PathBuf {
        let to = self.dir.join(format!("work-{n}"));
        copy_tree(&self.damaged, &to);
        to
    }

    fn restore_and_compare(&mut self, cmd: Cmd, repo: &Path, spec: &str, expect: Option<Which>, n: usize) -> Ran {
        let out = self.dir.join(format!("out-{n}"));
        let ran = self.exec(cmd, repo, &[OsString::from("restore"), spec.into(), "--to".into(), out.clone().into()]);
        if ran.ok() {
            match expect {
                None => self.violation(cmd, &ran, "SILENT: restored although the snapshot cannot be read"),
                Some(w) => {
                    let root = restored(&out, &self.fx.src);
                    let got = if root.exists() { tree_fingerprint(&root) } else { Vec::new() };
                    if let Some(d) = tree_difference(self.fx.tree(w), &got) {
                        self.violation(cmd, &ran, &format!("WRONG DATA: restore succeeded but {d}"));
                    }
                }
            }
        }
        ran
    }

    fn command(&mut self, cmd: Cmd, n: usize) {
        let fx = self.fx;
        let damaged = self.damaged.clone();
        match cmd {
            Cmd::Snapshots => {
                let ran = self.exec(cmd, &damaged, &os(&["snapshots", "--json"]));
                self.unchanged(cmd, &ran);
                self.harmless(cmd, &ran);
                if ran.ok() {
                    self.check_snapshot_list(cmd, &ran);
                }
            }
            Cmd::LsLatest => {
                let ran = self.exec(cmd, &damaged, &os(&["ls", "latest", "--json"]));
                self.unchanged(cmd, &ran);
                self.harmless(cmd, &ran);
                if ran.ok() {
                    match self.expected_latest() {
                        None => self.violation(
                            cmd,
                            &ran,
                            "SILENT: listed `latest` while the newest snapshot cannot be read",
                        ),
                        Some(w) => {
                            let want = if w == Which::A { &fx.ls_a } else { &fx.ls_b };
                            match serde_json::from_str::<Value>(&ran.stdout) {
                                Ok(got) if got == *want => {}
                                Ok(_) => self.violation(
                                    cmd,
                                    &ran,
                                    &format!("WRONG DATA: the listing is not snapshot {w:?}'s"),
                                ),
                                Err(e) => self.violation(cmd, &ran, &format!("not JSON: {e}")),
                            }
                        }
                    }
                }
            }
            Cmd::RestoreLatest => {
                let expect = self.expected_latest();
                let ran = self.restore_and_compare(cmd, &damaged, "latest", expect, n);
                self.unchanged(cmd, &ran);
                self.harmless(cmd, &ran);
            }
            Cmd::RestoreId => {
                let expect = (self.status(&fx.snapshot_file(Which::A)) == Status::Intact).then_some(Which::A);
                let ran = self.restore_and_compare(cmd, &damaged, &fx.snap_a[..8], expect, n);
                self.unchanged(cmd, &ran);
                self.harmless(cmd, &ran);
            }
            Cmd::Check | Cmd::CheckReadData => {
                let read_data = cmd == Cmd::CheckReadData;
                let args: &[&str] = if read_data { &["check", "--read-data"] } else { &["check"] };
                let ran = self.exec(cmd, &damaged, &os(args));
                self.unchanged(cmd, &ran);
                self.harmless(cmd, &ran);
                if ran.ok()
                    && let Some(d) = self.detectable(read_data)
                {
                    self.violation(cmd, &ran, &format!("UNDETECTED: check says healthy but {d}"));
                }
                // A key file whose content no longer matches its name locks
                // out whoever uses its passphrase; check could tell (no key
                // is needed to see it) but need not fail for it.
                if ran.ok()
                    && self
                        .touched()
                        .iter()
                        .any(|rel| FileKind::of(rel) == FileKind::Key && self.status(rel) == Status::Damaged)
                {
                    self.observe("check says healthy while a key file is damaged", cmd, &ran);
                }
            }
            Cmd::Prune => {
                let repo = self.scratch_copy(n);
                let ran = self.exec(cmd, &repo, &os(&["prune", "--keep-last", "100"]));
                self.preserved(cmd, &ran, &repo);
                self.harmless(cmd, &ran);
            }
            Cmd::RepairIndexThenCheck => {
                let repo = self.scratch_copy(n);
                let ran = self.exec(cmd, &repo, &os(&["repair", "index"]));
                self.preserved(cmd, &ran, &repo);
                self.harmless(cmd, &ran);
                let index_only = self.touched().iter().all(|rel| FileKind::of(rel) == FileKind::Index);
                if index_only && !ran.ok() {
                    self.violation(cmd, &ran, "only the index was damaged, and `repair index` did not rebuild it");
                }
                if ran.ok() {
                    let check = self.exec(cmd, &repo, &os(&["check", "--read-data"]));
                    self.harmless(cmd, &check);
                    if index_only && !check.ok() {
                        self.violation(
                            cmd,
                            &check,
                            "only the index was damaged; after `repair index` check is not healthy",
                        );
                    }
                }
            }
            Cmd::RepairSnapshots => {
                let repo = self.scratch_copy(n);
                let ran = self.exec(cmd, &repo, &os(&["repair", "snapshots", "--read-data"]));
                self.preserved(cmd, &ran, &repo);
                self.harmless(cmd, &ran);
                // Only the index is damaged: every blob is still in its pack
                // and `repair index` brings the repository back whole, so
                // nothing may be declared lost (a repaired snapshot would
                // become `latest` and restore without the "lost" files).
                if self.touched().iter().all(|rel| FileKind::of(rel) == FileKind::Index) {
                    let written: Vec<String> = state(&repo)
                        .into_keys()
                        .filter(|rel| FileKind::of(rel) == FileKind::Snapshot && !self.state.contains_key(rel))
                        .collect();
                    if !written.is_empty() {
                        self.violation(
                            cmd,
                            &ran,
                            &format!(
                                "only the index was damaged (the packs hold everything), yet it wrote {written:?} \
                                 declaring files lost"
                            ),
                        );
                    }
                    if !ran.ok() && !ran.text().contains("repair index") {
                        self.observe("repair snapshots on a damaged index does not point to `repair index`", cmd, &ran);
                    }
                }
            }
            Cmd::Backup => {
                let repo = self.scratch_copy(n);
                let ran = self.exec(cmd, &repo, &[OsString::from("backup"), fx.src.clone().into()]);
                self.preserved(cmd, &ran, &repo);
                self.harmless(cmd, &ran);
                if ran.ok() {
                    let id = ran.stdout.trim().to_string();
                    if id.len() != 64 {
                        self.violation(cmd, &ran, "backup succeeded but printed no snapshot id");
                        return;
                    }
                    let restore = self.restore_and_compare(cmd, &repo, &id, Some(Which::B), n);
                    if !restore.ok() && !restore.timed_out {
                        self.observe("backup said saved, but its snapshot does not restore", cmd, &restore);
                    }
                }
            }
            Cmd::ForgetDryRun => {
                let ran = self.exec(cmd, &damaged, &os(&["forget", &fx.snap_a[..8], "--dry-run"]));
                self.unchanged(cmd, &ran);
                self.harmless(cmd, &ran);
                if ran.ok() {
                    if self.status(&fx.snapshot_file(Which::A)) == Status::Deleted {
                        self.violation(cmd, &ran, "would forget a snapshot that is not there");
                    } else if !ran.stdout.contains(&fx.snap_a) {
                        self.violation(cmd, &ran, "does not say it would forget the snapshot");
                    }
                }
            }
            Cmd::KeyExport => {
                let out = self.dir.join(format!("key-{n}"));
                let ran = self.exec(
                    cmd,
                    &damaged,
                    &[OsString::from("key"), "export".into(), "-o".into(), out.clone().into()],
                );
                self.unchanged(cmd, &ran);
                self.harmless(cmd, &ran);
                if ran.ok() && fs::read(&out).ok().as_deref() != Some(&fx.key_export[..]) {
                    self.violation(cmd, &ran, "WRONG DATA: exported something else than the key");
                }
            }
        }
    }

    /// `snapshots --json` succeeded: it lists exactly the snapshots that can
    /// be read, as stored, and names every one that cannot.
    fn check_snapshot_list(&mut self, cmd: Cmd, ran: &Ran) {
        let listed: Vec<Value> = match serde_json::from_str::<Value>(&ran.stdout) {
            Ok(Value::Array(v)) => v,
            _ => return self.violation(cmd, ran, "not a JSON array"),
        };
        let mut ids = BTreeSet::new();
        for s in &listed {
            let id = s["id"].as_str().unwrap_or("").to_string();
            if self.fx.snapshots.get(&id) != Some(s) {
                self.violation(cmd, ran, &format!("WRONG DATA: lists snapshot {id} other than it was stored"));
            }
            ids.insert(id);
        }
        for id in self.fx.snapshots.keys() {
            match self.status(&format!("snapshots/{id}")) {
                Status::Intact if !ids.contains(id) => {
                    self.violation(cmd, ran, &format!("leaves out the readable snapshot {}", &id[..8]))
                }
                Status::Damaged if !ran.stderr.contains(&id[..8]) => {
                    self.violation(cmd, ran, &format!("SILENT: says nothing of the unreadable snapshot {}", &id[..8]))
                }
                _ => {}
            }
        }
    }
}

fn excerpt(text: &str) -> String {
    let one_line = text.trim().replace('\n', " | ");
    if one_line.chars().count() > 400 {
        format!("{}…", one_line.chars().take(400).collect::<String>())
    } else {
        one_line
    }
}

/// The first difference between two trees, in words.
fn tree_difference(expected: &[Node], actual: &[Node]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let exp: BTreeMap<&[u8], &Node> = expected.iter().map(|n| (&n.path[..], n)).collect();
    let act: BTreeMap<&[u8], &Node> = actual.iter().map(|n| (&n.path[..], n)).collect();
    for (p, e) in &exp {
        match act.get(p) {
            None => return Some(format!("{} is missing", p.escape_ascii())),
            Some(a) if a != e => return Some(format!("expected {e:?}, got {a:?}")),
            _ => {}
        }
    }
    let extra = act.keys().find(|p| !exp.contains_key(*p)).map(|p| p.escape_ascii().to_string());
    Some(format!("{} is extra", extra.unwrap_or_default()))
}

/// Everything one case found.
struct Outcome {
    violations: Vec<String>,
    observations: Vec<(String, String)>,
    ran: Vec<(Cmd, Option<i32>)>,
}

fn run_case(fx: &Fixture, case: &Case, seed: u64, keep: bool) -> Outcome {
    let dir = tempfile::Builder::new().prefix(&format!("case-{}-", case.index)).tempdir_in(fx.dir.path()).unwrap();
    let damaged = dir.path().join("repo");
    copy_tree(&fx.base, &damaged);
    let mut rng = Rng::new(&[seed, case.index as u64, 0xFA17]);
    let applied = apply(fx, &damaged, case.kind, case.fault, &mut rng);
    let mut r = Run {
        fx,
        case,
        applied,
        dir: dir.path().to_path_buf(),
        state: state(&damaged),
        damaged,
        violations: Vec::new(),
        observations: Vec::new(),
        ran: Vec::new(),
    };
    for (n, cmd) in case.cmds.iter().enumerate() {
        r.command(*cmd, n);
    }
    if keep {
        eprintln!("case {}: {}; kept in {}", case.index, r.applied.what, dir.keep().display());
        for v in &r.violations {
            eprintln!("{v}");
        }
    }
    Outcome { violations: r.violations, observations: r.observations, ran: r.ran }
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

// ---------------------------------------------------------------- the suite

/// Every kind of repository file, damaged every way, under every command:
/// no panic, no hang, no silent wrong data, nothing needed deleted, and
/// every failure names what it concerns. Prints a one-line summary; fails
/// with the list of every violation found.
#[test]
fn every_command_survives_every_fault_in_every_repository_file() {
    let started = Instant::now();
    let seed = env_number("HOLDFAST_FAULT_SEED").unwrap_or(DEFAULT_SEED);
    let only = env_number("HOLDFAST_FAULT_ONLY").map(|n| n as usize);
    let cases = env_number("HOLDFAST_FAULT_CASES").map_or(cycle_len(), |n| n as usize);
    let mut planned = plan(seed, cases.max(only.map_or(0, |n| n + 1)));
    if let Some(n) = only {
        planned.retain(|c| c.index == n);
    }

    let fx = Fixture::build();
    if only.is_some() {
        eprintln!("fixture (source, base repository): {}", fx.dir.path().display());
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = planned.get(i) else { break };
                    let outcome = run_case(&fx, case, seed, only.is_some());
                    outcomes.lock().unwrap().push((i, outcome));
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by_key(|(i, _)| *i);

    // Coverage, failures by kind, violations and observations.
    let mut covered: BTreeSet<(FileKind, Fault, Cmd)> = BTreeSet::new();
    let mut by_kind: BTreeMap<FileKind, (usize, usize)> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut observations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut commands = 0;
    for (i, o) in &outcomes {
        let case = &planned[*i];
        for (cmd, code) in &o.ran {
            covered.insert((case.kind, case.fault, *cmd));
            let e = by_kind.entry(case.kind).or_default();
            e.0 += 1;
            e.1 += usize::from(*code != Some(0));
            commands += 1;
        }
        violations.extend(o.violations.iter().cloned());
        for (category, text) in &o.observations {
            observations.entry(category.clone()).or_default().push(text.clone());
        }
    }
    let failed: Vec<String> = by_kind.iter().map(|(k, (run, failed))| format!("{} {failed}/{run}", k.name())).collect();
    eprintln!(
        "faults: seed {seed:#x}, {} cases, {commands} commands in {:.1}s on {threads} threads; failed/run by kind: {}; \
         {} violations; observations: {}",
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        failed.join(", "),
        violations.len(),
        if observations.is_empty() {
            "none".to_string()
        } else {
            observations.iter().map(|(c, v)| format!("{} × {c}", v.len())).collect::<Vec<_>>().join("; ")
        }
    );
    for (category, list) in &observations {
        eprintln!("observation: {category} ({} cases), e.g.:", list.len());
        for text in list.iter().take(5) {
            eprintln!("  {text}");
        }
    }

    if only.is_none() && cases >= cycle_len() {
        let missing: Vec<String> = FileKind::ALL
            .iter()
            .flat_map(|k| Fault::ALL.iter().flat_map(move |f| Cmd::ALL.iter().map(move |c| (*k, *f, *c))))
            .filter(|t| !covered.contains(t))
            .map(|(k, f, c)| format!("{}/{f:?}/{c:?}", k.name()))
            .collect();
        assert!(missing.is_empty(), "combinations never tried: {missing:?}");
    }
    if only.is_some() {
        // Kept for a look by hand, with the case's directory inside.
        let _ = fx.dir.keep();
    }
    assert!(
        violations.is_empty(),
        "{} violation(s) (seed {seed:#x}; rerun one with HOLDFAST_FAULT_SEED={seed:#x} HOLDFAST_FAULT_ONLY=<case>):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}
