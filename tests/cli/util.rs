//! Helpers shared by the CLI tests: a throwaway repository driven through the
//! real binary ([`TestRepo`]), deterministic data generators, and
//! [`tree_fingerprint`], which turns a directory into a list that compares
//! equal only when contents *and* metadata match.
//!
//! Not for: anything that reaches into the library. The tests use holdfast
//! the way a person does, through its command line.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// The passphrase of every test repository. Distinctive, so a test can look
/// for it in the repository's bytes.
pub const PASSPHRASE: &str = "tests-passphrase: correct horse battery staple 41c9";

/// Longer than any one command of the suite should take; a hang fails the
/// test instead of blocking the run.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The `holdfast` binary cargo built for these tests.
pub fn holdfast_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("holdfast")
}

/// A temporary directory holding a repository at `repo/` and whatever else a
/// test makes next to it (sources, restore targets). Removed on drop.
pub struct TestRepo {
    dir: TempDir,
    repo: PathBuf,
    passphrase: String,
}

impl TestRepo {
    /// A temporary directory whose `repo/` does not exist yet.
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let repo = dir.path().join("repo");
        TestRepo { dir, repo, passphrase: PASSPHRASE.to_string() }
    }

    /// A temporary directory with a freshly initialised repository.
    pub fn init() -> TestRepo {
        TestRepo::init_with(&[])
    }

    /// Like [`TestRepo::init`], with more arguments for `init`.
    pub fn init_with(args: &[&str]) -> TestRepo {
        let t = TestRepo::new();
        t.cmd(["init"]).args(args).assert().success();
        t
    }

    /// A new repository sharing `from`'s keys and chunker (`init
    /// --copy-params-from`), so `copy` moves snapshots between the two.
    pub fn sharing_keys_with(from: &TestRepo) -> TestRepo {
        let t = TestRepo::new();
        t.cmd(["init", "--copy-params-from"])
            .arg(from.repo())
            .env("HOLDFAST_FROM_PASSPHRASE", PASSPHRASE)
            .assert()
            .success();
        t
    }

    /// Use `passphrase` from now on (after `key passwd`).
    pub fn set_passphrase(&mut self, passphrase: &str) {
        self.passphrase = passphrase.to_string();
    }

    /// The repository directory.
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// `rel` inside the temporary directory (next to the repository).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `holdfast --repo <repo> ARGS...` with the passphrase in
    /// `$HOLDFAST_PASSPHRASE` (never on the command line).
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd_with_passphrase(&self.passphrase, args)
    }

    /// Like [`TestRepo::cmd`], with another passphrase.
    pub fn cmd_with_passphrase<I, S>(&self, passphrase: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = holdfast(&self.repo);
        c.args(args).env("HOLDFAST_PASSPHRASE", passphrase);
        c
    }

    /// Back up `paths`; returns the snapshot id printed on stdout.
    pub fn backup<P: AsRef<Path>>(&self, paths: &[P]) -> String {
        let out = self.cmd(["backup"]).args(paths.iter().map(|p| p.as_ref())).assert().success();
        let id = stdout_of(&out).trim().to_string();
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "backup should print a 64-hex-digit snapshot id, printed {id:?}"
        );
        id
    }

    /// Back up `paths` with `--json`; returns the snapshot as JSON.
    pub fn backup_json<P: AsRef<Path>>(&self, paths: &[P]) -> Value {
        let out = self.cmd(["backup", "--json"]).args(paths.iter().map(|p| p.as_ref())).assert().success();
        parse_json(&stdout_of(&out))
    }

    /// Restore `snapshot` (an id prefix or `latest`) into `to`.
    pub fn restore(&self, snapshot: &str, to: &Path) {
        self.cmd(["restore", snapshot, "--to"]).arg(to).assert().success();
    }

    /// `snapshots --json`.
    pub fn snapshots_json(&self) -> Vec<Value> {
        let out = self.cmd(["snapshots", "--json"]).assert().success();
        match parse_json(&stdout_of(&out)) {
            Value::Array(v) => v,
            other => panic!("snapshots --json should print an array, printed {other}"),
        }
    }

    /// The short ids in the first column of `snapshots`, oldest first.
    pub fn short_ids(&self) -> Vec<String> {
        let out = self.cmd(["snapshots"]).assert().success();
        stdout_of(&out).lines().skip(1).filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect()
    }

    /// `ls SNAPSHOT --json`.
    pub fn ls_json(&self, snapshot: &str) -> Vec<Value> {
        let out = self.cmd(["ls", snapshot, "--json"]).assert().success();
        match parse_json(&stdout_of(&out)) {
            Value::Array(v) => v,
            other => panic!("ls --json should print an array, printed {other}"),
        }
    }

    /// `check` (with `--read-data` when asked); returns exit success and
    /// stdout followed by stderr, for the assertions of a test.
    pub fn check(&self, read_data: bool) -> (bool, String) {
        let mut c = self.cmd(["check"]);
        if read_data {
            c.arg("--read-data");
        }
        let out = c.output().expect("run holdfast check");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Every file under the repository directory.
    pub fn repository_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.repo.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).expect("list repository directory") {
                let e = e.expect("repository directory entry");
                if e.file_type().expect("file type").is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
}

/// `holdfast --repo REPO` with no passphrase and none of holdfast's
/// variables inherited from the environment the tests run in.
pub fn holdfast(repo: &Path) -> Command {
    let mut c = Command::new(holdfast_bin());
    c.arg("--repo")
        .arg(repo)
        .env_remove("HOLDFAST_PASSPHRASE")
        .env_remove("HOLDFAST_NEW_PASSPHRASE")
        .env_remove("HOLDFAST_REPOSITORY")
        .env("HOLDFAST_CACHE_DIR", test_cache_dir())
        .timeout(TIMEOUT);
    c
}

/// The cache directory of this test run's holdfast commands (one per test
/// process, not the machine's: caches are per repository id inside it).
pub fn test_cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("holdfast-test-cache-{}", std::process::id()))
}

pub fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

pub fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

pub fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// Where a restore into `out` puts the snapshot path `source`: the snapshot
/// keeps each source under its absolute path.
pub fn restored(out: &Path, source: &Path) -> PathBuf {
    out.join(source.strip_prefix("/").expect("sources are absolute paths"))
}

// ---------------------------------------------------------------- data

/// `len` pseudo-random bytes, the same for the same seed (BLAKE3 in XOF
/// mode: deterministic and fast even in a debug build).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(b"holdfast test data");
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Write `len` pseudo-random bytes to `path`, 4 MiB at a time.
pub fn write_random(path: &Path, seed: u64, len: u64) {
    let mut f = fs::File::create(path).expect("create data file");
    let mut xof = {
        let mut h = blake3::Hasher::new();
        h.update(b"holdfast test data");
        h.update(&seed.to_le_bytes());
        h.finalize_xof()
    };
    let mut buf = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write data file");
        left -= n as u64;
    }
}

/// One line of a SQL dump: row `row`, its values drawn from `seed`.
pub fn sql_row(row: u64, seed: u64) -> String {
    let mut x = (row.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: [&str; 8] = ["shipped", "pending", "returned", "gift", "express", "fragile", "bulk", "priority"];
    format!(
        "INSERT INTO orders (id, customer_id, amount_cents, status, note) VALUES ({row}, {}, {}, '{}', 'order {} for customer {}');\n",
        next() % 1_000_000,
        next() % 10_000_000,
        WORDS[(next() % 8) as usize],
        next() % 100_000_000,
        next() % 1_000_000,
    )
}

/// A SQL dump of `rows` rows; rows in `edited` get other values (an UPDATE
/// between two dumps).
pub fn sql_dump(rows: u64, edited: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows as usize * 110);
    out.extend_from_slice(b"-- holdfast test dump\nBEGIN;\n");
    for row in 0..rows {
        let seed = if edited.contains(&row) { 2 } else { 1 };
        out.extend_from_slice(sql_row(row, seed).as_bytes());
    }
    out.extend_from_slice(b"COMMIT;\n");
    out
}

// ---------------------------------------------------------------- fingerprints

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Everything a restore must bring back about one path, in a form that
/// compares with `==`. Timestamps other than mtime, inode numbers and the
/// sizes of directories are left out: no restore can (or should) keep them.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    /// Path relative to the fingerprinted directory, `.` for itself.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and symlinks only.
    pub size: u64,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Extended attributes of every namespace (ACLs and capabilities
    /// included), sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub link_target: Option<Vec<u8>>,
    /// BLAKE3 of a regular file's bytes.
    pub content: Option<String>,
    /// For hard links: the first path (in sorted order) of the paths in the
    /// tree that share this entry's inode.
    pub hard_link_group: Option<Vec<u8>>,
    /// A regular file that occupies less disk than its size (it has holes).
    /// The exact block count is left out: it depends on how the filesystem
    /// laid the extents out; see [`allocated_bytes`] for sparse checks.
    pub has_holes: bool,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} mode={:o} owner={}:{} size={} mtime={}.{:09}",
            self.path.escape_ascii(),
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.mtime.0,
            self.mtime.1
        )?;
        for (k, v) in &self.xattrs {
            write!(f, " xattr {}={}", k.escape_ascii(), v.escape_ascii())?;
        }
        if let Some(t) = &self.link_target {
            write!(f, " -> {}", t.escape_ascii())?;
        }
        if let Some(c) = &self.content {
            write!(f, " blake3={}", &c[..16])?;
        }
        if let Some(g) = &self.hard_link_group {
            write!(f, " linked-with={}", g.escape_ascii())?;
        }
        if self.has_holes {
            write!(f, " sparse")?;
        }
        Ok(())
    }
}

/// Walk `root` (not following symlinks) and describe every entry, itself
/// included, sorted by path bytes.
pub fn tree_fingerprint(root: &Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    walk(root, b".".to_vec(), &mut nodes, &mut inodes);
    for paths in inodes.values().filter(|p| p.len() > 1) {
        let first = paths.iter().min().cloned();
        for n in nodes.iter_mut().filter(|n| paths.contains(&n.path)) {
            n.hard_link_group = first.clone();
        }
    }
    nodes.sort();
    nodes
}

fn walk(path: &Path, rel: Vec<u8>, nodes: &mut Vec<Node>, inodes: &mut BTreeMap<(u64, u64), Vec<Vec<u8>>>) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else {
        Kind::BlockDevice
    };
    let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(path)
        .map(|names| {
            names
                .filter_map(|n| {
                    let v = xattr::get(path, &n).ok().flatten()?;
                    Some((n.as_bytes().to_vec(), v))
                })
                .collect()
        })
        .unwrap_or_default();
    xattrs.sort();
    if kind == Kind::File && md.nlink() > 1 {
        inodes.entry((md.dev(), md.ino())).or_default().push(rel.clone());
    }
    nodes.push(Node {
        path: rel.clone(),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if matches!(kind, Kind::File | Kind::Symlink) { md.len() } else { 0 },
        mtime: (md.mtime(), md.mtime_nsec()),
        xattrs,
        link_target: (kind == Kind::Symlink)
            .then(|| fs::read_link(path).expect("read symlink").as_os_str().as_bytes().to_vec()),
        content: (kind == Kind::File).then(|| content_hash(path)),
        hard_link_group: None,
        has_holes: kind == Kind::File && md.blocks() * 512 < md.len(),
    });
    if kind == Kind::Dir {
        for e in fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            let e = e.expect("directory entry");
            let name = e.file_name();
            let child_rel =
                if rel == b"." { name.as_bytes().to_vec() } else { [&rel[..], b"/", name.as_bytes()].concat() };
            walk(&e.path(), child_rel, nodes, inodes);
        }
    }
}

fn content_hash(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read file");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_hex().to_string()
}

/// Disk space a file occupies (`st_blocks` × 512).
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::symlink_metadata(path).expect("stat").blocks() * 512
}

/// Panic with a readable difference unless the two trees are the same.
#[track_caller]
pub fn assert_same_tree(expected: &[Node], actual: &[Node]) {
    if expected == actual {
        return;
    }
    let exp: BTreeMap<&[u8], &Node> = expected.iter().map(|n| (&n.path[..], n)).collect();
    let act: BTreeMap<&[u8], &Node> = actual.iter().map(|n| (&n.path[..], n)).collect();
    let mut report = String::new();
    for (p, e) in &exp {
        match act.get(p) {
            None => report.push_str(&format!("  missing:  {e:?}\n")),
            Some(a) if a != e => {
                report.push_str(&format!("  expected: {e:?}\n  actual:   {a:?}\n"));
            }
            _ => {}
        }
    }
    for (p, a) in &act {
        if !exp.contains_key(p) {
            report.push_str(&format!("  extra:    {a:?}\n"));
        }
    }
    panic!("the trees differ:\n{report}");
}

/// A tmpfs of `mib` MiB at `at` (a test's spool, or a mount inside a
/// restore target), unmounted on drop.
pub struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    pub fn mount(at: &std::path::Path, mib: u32) -> SmallTmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        SmallTmpfs(at.to_path_buf())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).output();
    }
}
