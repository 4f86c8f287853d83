//! Back up, restore, compare: contents, metadata, special files, sparse
//! files, hard links; incremental runs and deduplication; listing and
//! choosing snapshots; concurrent backups; files that change while read.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{
    Kind, TestRepo, allocated_bytes, assert_same_tree, holdfast_bin, restored, sql_dump, stderr_of, stdout_of,
    tree_fingerprint, write_random,
};

const MIB: u64 = 1 << 20;

/// A time with nanoseconds, `secs` after the epoch (before it if negative).
fn time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos)
    }
}

fn set_mtime(path: &Path, t: SystemTime) {
    File::open(path)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(t).set_accessed(t)))
        .unwrap_or_else(|e| panic!("set times of {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The tree of the round-trip tests: every kind of entry and metadata
/// holdfast promises to keep. Returns the paths tests refer to.
struct VariedTree {
    root: PathBuf,
    /// A 300 KiB file nothing else links to.
    medium: PathBuf,
    /// The sparse file: 1 GiB apparent, 1 MiB of data.
    sparse: PathBuf,
}

fn make_varied_tree(root: &Path) -> VariedTree {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("sub/deeper")).unwrap();
    fs::create_dir(p("setgid")).unwrap();
    fs::create_dir(p("sticky")).unwrap();
    fs::create_dir(p("readonly")).unwrap();

    // Regular files of many sizes: empty, tiny, small (read together into
    // one shared chunk), medium (chunked alone), large (several chunks).
    fs::write(p("empty"), b"").unwrap();
    fs::write(p("one-byte"), b"x").unwrap();
    fs::write(p("sub/hello.txt"), b"hello, world\n".repeat(300)).unwrap();
    write_random(&p("sub/deeper/small.bin"), 1, 100 * 1024);
    write_random(&p("sub/medium.bin"), 2, 300 * 1024);
    write_random(&p("large.bin"), 3, 6 * MIB + 12345);
    fs::write(p("setgid/inside.txt"), b"in a setgid directory\n").unwrap();
    fs::write(p("readonly/kept.txt"), b"written before the dir became 0555\n").unwrap();

    // Names that are not UTF-8, or are awkward.
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1 name\n").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"line\nbreak")), b"newline in name\n").unwrap();
    fs::write(p("sub/spaces and 'quotes'"), b"x y z\n").unwrap();

    // Hard links: a small file and a medium one, each with a second name in
    // another directory.
    fs::write(p("hard-small"), b"one inode, two names\n").unwrap();
    fs::hard_link(p("hard-small"), p("sub/hard-small-2")).unwrap();
    write_random(&p("hard-medium"), 4, 400 * 1024);
    fs::hard_link(p("hard-medium"), p("sub/deeper/hard-medium-2")).unwrap();

    // Symlinks: relative, absolute, dangling, to a directory, non-UTF-8.
    symlink("sub/hello.txt", p("link-relative")).unwrap();
    symlink(root.join("large.bin"), p("link-absolute")).unwrap();
    symlink("does/not/exist", p("link-dangling")).unwrap();
    symlink("sub", p("link-to-dir")).unwrap();
    symlink(OsStr::from_bytes(b"caf\xe9"), p("link-latin1")).unwrap();

    // A FIFO.
    nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();

    // A sparse file: 1 GiB apparent size, 4 x 256 KiB of data, a hole at
    // the start and one at the end.
    let sparse = p("sparse.img");
    {
        let f = File::create(&sparse).unwrap();
        for (i, at) in [1, 300, 700, 900].into_iter().enumerate() {
            let data = crate::util::random_bytes(10 + i as u64, 256 * 1024);
            f.write_all_at(&data, at * MIB).unwrap();
        }
        f.set_len(1024 * MIB).unwrap();
    }

    // Extended attributes (binary and empty values too), on files and dirs.
    xattr::set(p("sub/hello.txt"), "user.comment", b"greeting").unwrap();
    xattr::set(p("sub/hello.txt"), "user.binary", &[0, 255, 10, 13]).unwrap();
    xattr::set(p("sub/hello.txt"), "user.empty", b"").unwrap();
    xattr::set(p("sub"), "user.dir-attr", b"on a directory").unwrap();
    xattr::set(p("large.bin"), "user.checksum", b"sha256:0000").unwrap();

    fs::write(p("setuid-tool"), b"#!/bin/sh\necho hi\n").unwrap();

    // Owners (root only). Before the modes: chown clears setuid.
    if is_root() {
        std::os::unix::fs::chown(p("sub/medium.bin"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::chown(p("sub/deeper"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(p("link-dangling"), Some(1234), Some(5678)).unwrap();
    }

    // Modification times with nanoseconds (one before 1970); directories
    // last, deepest first, since adding entries changes a directory's mtime.
    let files = [
        ("empty", 1_500_000_000, 1),
        ("one-byte", 1_600_000_000, 999_999_999),
        ("sub/hello.txt", 1_234_567_890, 123_456_789),
        ("sub/deeper/small.bin", 1_700_000_000, 500),
        ("sub/medium.bin", 1_700_000_001, 42),
        ("large.bin", -1, 500_000_000),
        ("hard-medium", 1_650_000_000, 7),
        ("sparse.img", 1_690_000_000, 314_159_265),
        ("setuid-tool", 1_000_000_000, 1),
    ];
    for (rel, secs, nanos) in files {
        set_mtime(&p(rel), time(secs, nanos));
    }
    for (i, dir) in ["sub/deeper", "sub", "setgid", "sticky", "readonly", "."].into_iter().enumerate() {
        set_mtime(&p(dir), time(1_100_000_000 + i as i64, 271_828_182));
    }

    // Modes (changing them leaves mtimes alone).
    for (rel, mode) in [
        ("setuid-tool", 0o4755),
        ("sub/hello.txt", 0o600),
        // Read-only and in several chunks: its mode comes after its last write.
        ("large.bin", 0o555),
        ("one-byte", 0o400),
        ("empty", 0o000),
        ("setgid", 0o2775),
        ("sticky", 0o1777),
        ("sub/deeper", 0o750),
        ("readonly", 0o555),
    ] {
        chmod(&p(rel), mode);
    }

    VariedTree { root: root.to_path_buf(), medium: p("sub/medium.bin"), sparse }
}

#[test]
fn a_restored_tree_matches_the_original_byte_for_byte_and_metadata_for_metadata() {
    let t = TestRepo::init();
    let tree = make_varied_tree(&t.path("src"));
    let before = tree_fingerprint(&tree.root);

    t.backup(&[&tree.root]);
    let out = t.path("out");
    t.restore("latest", &out);

    let back = tree_fingerprint(&restored(&out, &tree.root));
    assert_same_tree(&before, &back);
    let kinds: Vec<Kind> = back.iter().map(|n| n.kind).collect();
    for k in [Kind::File, Kind::Dir, Kind::Symlink, Kind::Fifo] {
        assert!(kinds.contains(&k), "the tree should hold a {k:?}");
    }
    assert_eq!(
        back.iter().filter(|n| n.hard_link_group.is_some()).count(),
        4,
        "both pairs of hard links come back as links"
    );
}

#[test]
fn a_sparse_file_is_restored_sparse() {
    let t = TestRepo::init();
    let tree = make_varied_tree(&t.path("src"));

    t.backup(&[&tree.root]);
    let out = t.path("out");
    t.restore("latest", &out);

    let sparse = restored(&out, &tree.sparse);
    assert_eq!(fs::metadata(&sparse).unwrap().len(), 1024 * MIB);
    let used = allocated_bytes(&sparse);
    assert!(used < 4 * MIB, "a 1 GiB file with 1 MiB of data should take < 4 MiB on disk, takes {used} bytes");
}

#[test]
fn a_second_backup_of_an_unchanged_tree_reads_and_adds_nothing() {
    let t = TestRepo::init();
    let tree = make_varied_tree(&t.path("src"));
    let files = tree_fingerprint(&tree.root).iter().filter(|n| n.kind == Kind::File).count() as u64;

    let first = t.backup_json(&[&tree.root]);
    let second = t.backup_json(&[&tree.root]);

    let s = &second["summary"];
    assert_eq!(first["summary"]["files"], files);
    assert_eq!(s["files"], files);
    assert_eq!(s["files_unchanged"], files, "{second:#}");
    assert_eq!(s["bytes_read"], 0, "{second:#}");
    assert_eq!(second["parent"], first["id"]);
    // Nothing of the source is stored again. The snapshot also records the
    // source's ancestors (/tmp, the test's temporary directory); other tests
    // create directories in /tmp at any moment, so the trees that record
    // those ancestors may be stored anew: at most one per ancestor.
    let ancestors = tree.root.ancestors().count() as u64 - 1;
    assert!(s["blobs_added"].as_u64().unwrap() <= ancestors, "only ancestor trees may be added: {second:#}");
    assert!(s["bytes_added"].as_u64().unwrap() < 4096, "{second:#}");
}

#[test]
fn after_changing_one_file_only_that_file_is_read() {
    let t = TestRepo::init();
    let tree = make_varied_tree(&t.path("src"));
    t.backup(&[&tree.root]);

    write_random(&tree.medium, 99, 310 * 1024);
    let second = t.backup_json(&[&tree.root]);

    let s = &second["summary"];
    assert_eq!(s["bytes_read"], 310 * 1024, "{second:#}");
    assert_eq!(s["files_unchanged"].as_u64().unwrap(), s["files"].as_u64().unwrap() - 1, "{second:#}");
    let out = t.path("out");
    t.restore("latest", &out);
    assert_same_tree(&tree_fingerprint(&tree.root), &tree_fingerprint(&restored(&out, &tree.root)));
}

#[test]
fn an_edited_database_dump_stores_little_more_than_the_edited_rows() {
    let t = TestRepo::init();
    let dir = t.path("db");
    fs::create_dir(&dir).unwrap();
    let dump = dir.join("shop.sql");
    // ~40 MB, one INSERT per row; then an UPDATE of 2% of the rows, in one
    // run in the middle of the table (row values change length too).
    let rows = 360_000;
    fs::write(&dump, sql_dump(rows, 0..0)).unwrap();
    let first = t.backup_json(&[&dir]);
    fs::write(&dump, sql_dump(rows, rows / 2 - rows / 100..rows / 2 + rows / 100)).unwrap();
    let second = t.backup_json(&[&dir]);

    let size = fs::metadata(&dump).unwrap().len();
    assert!(size > 38_000_000, "the dump should be ~40 MB, is {size}");
    let added = |s: &serde_json::Value| s["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added(&second) * 4 < added(&first),
        "the edited dump added {} bytes, the first one {}: more than 25%",
        added(&second),
        added(&first)
    );
    let out = t.path("out");
    t.restore("latest", &out);
    assert_same_tree(&tree_fingerprint(&dir), &tree_fingerprint(&restored(&out, &dir)));
}

#[test]
fn restore_with_path_restores_only_that_path_and_its_ancestors() {
    let t = TestRepo::init();
    let tree = make_varied_tree(&t.path("src"));
    t.backup(&[&tree.root]);

    let wanted_dir = tree.root.join("sub/deeper");
    let wanted_file = tree.root.join("large.bin");
    let out = t.path("out");
    t.cmd(["restore", "latest", "--to"])
        .arg(&out)
        .arg("--path")
        .arg(&wanted_dir)
        .arg("--path")
        .arg(&wanted_file)
        .assert()
        .success();

    assert_same_tree(&tree_fingerprint(&wanted_dir), &tree_fingerprint(&restored(&out, &wanted_dir)));
    assert_same_tree(&tree_fingerprint(&wanted_file), &tree_fingerprint(&restored(&out, &wanted_file)));
    let names = |dir: &Path| {
        let mut v: Vec<_> = fs::read_dir(restored(&out, dir)).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&tree.root), ["large.bin", "sub"], "only the paths asked for (and their ancestors) are restored");
    assert_eq!(names(&tree.root.join("sub")), ["deeper"]);
}

#[test]
fn a_relative_source_path_is_stored_under_its_absolute_path() {
    let t = TestRepo::init();
    let data = t.path("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("sub/file.txt"), b"backed up by a relative path\n").unwrap();
    fs::create_dir_all(t.path("work/inner")).unwrap();
    let expected = tree_fingerprint(&data);
    let absolute = serde_json::json!([data.display().to_string()]);

    // (directory to run in, source argument): each names `data`.
    let forms = [("", "data"), ("", "./data/"), ("work", "../data"), ("work/inner", "../../data"), ("data/sub", "..")];
    let mut wrong = Vec::new();
    for (cwd, arg) in forms {
        let done = t.cmd(["backup", "--json", arg]).current_dir(t.path(cwd)).assert().success();
        let snap = crate::util::parse_json(&stdout_of(&done));
        let id = snap["id"].as_str().unwrap();
        let out = t.path(&format!("out-{}", &id[..8]));
        t.restore(id, &out);
        let at = restored(&out, &data);
        let problems = [
            (snap["paths"] != absolute).then(|| format!("recorded as {}", snap["paths"])),
            (!at.is_dir() || tree_fingerprint(&at) != expected).then(|| format!("restored as {:?}", files_under(&out))),
        ];
        for p in problems.into_iter().flatten() {
            wrong.push(format!("`backup {arg}` in ./{cwd}: {p}"));
        }
    }
    assert!(wrong.is_empty(), "each form should be stored as {absolute}:\n{}", wrong.join("\n"));
}

/// The files under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            out.extend(files_under(&p).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

#[test]
fn ls_lists_every_path_of_a_snapshot_as_text_and_as_json() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/a.txt"), b"a").unwrap();
    fs::write(src.join("b.txt"), b"bb").unwrap();
    symlink("b.txt", src.join("link")).unwrap();
    t.backup(&[&src]);

    let text = stdout_of(&t.cmd(["ls", "latest"]).assert().success());
    let root = src.display().to_string();
    for p in ["", "/docs", "/docs/a.txt", "/b.txt", "/link"] {
        let path = format!("{root}{p}");
        assert!(text.lines().any(|l| l.ends_with(&format!("  {path}"))), "ls should list {path}:\n{text}");
    }

    let json = t.ls_json("latest");
    let entry = |p: &str| {
        let path = format!("{root}{p}");
        json.iter()
            .find(|e| e["path"] == path.as_str())
            .unwrap_or_else(|| panic!("ls --json should list {path}: {json:?}"))
            .clone()
    };
    assert_eq!(entry("/b.txt")["type"], "file");
    assert_eq!(entry("/b.txt")["size"], 2);
    assert_eq!(entry("/docs")["type"], "dir");
    assert_eq!(entry("/link")["type"], "symlink");
    assert_eq!(entry("/link")["link_target"], "b.txt");

    let only_docs = stdout_of(&t.cmd(["ls", "latest"]).arg(src.join("docs")).assert().success());
    assert!(only_docs.contains("/docs/a.txt"), "{only_docs}");
    assert!(!only_docs.contains("b.txt"), "ls PATH lists only that path:\n{only_docs}");
}

#[test]
fn snapshots_json_describes_each_snapshot() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let first = t.backup(&[&src]);
    let second = stdout_of(&t.cmd(["backup", "--tag", "nightly", "--tag", "db"]).arg(&src).assert().success())
        .trim()
        .to_string();

    let snaps = t.snapshots_json();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["id"], first.as_str(), "oldest first");
    let s = &snaps[1];
    assert_eq!(s["id"], second.as_str());
    assert_eq!(s["short_id"], &second[..8]);
    assert!(s["time"].as_str().is_some_and(|t| t.len() >= 20), "{s:#}");
    assert_eq!(s["host"], nix::unistd::gethostname().unwrap().to_str().unwrap());
    assert_eq!(s["paths"], serde_json::json!([src.display().to_string()]));
    assert_eq!(s["tags"], serde_json::json!(["nightly", "db"]));
    assert_eq!(s["summary"]["files"], 1);
    assert_eq!(s["summary"]["bytes"], 4);
    assert_eq!(t.short_ids(), [&first[..8], &second[..8]]);
}

#[test]
fn latest_and_a_unique_id_prefix_both_name_a_snapshot() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"version 1").unwrap();
    let old = t.backup(&[&src]);
    fs::write(src.join("f"), b"version two").unwrap();
    let new = t.backup(&[&src]);

    let read_back = |spec: &str| {
        let out = t.path(&format!("out-{spec}"));
        t.restore(spec, &out);
        fs::read(restored(&out, &src).join("f")).unwrap()
    };
    assert_eq!(read_back("latest"), b"version two");
    assert_eq!(read_back(&new[..8]), b"version two");
    assert_eq!(read_back(&old[..8]), b"version 1");
    assert_eq!(read_back(&old), b"version 1");
    let listed = stdout_of(&t.cmd(["ls", &old[..6]]).assert().success());
    assert!(listed.contains(&src.join("f").display().to_string()));
}

#[test]
fn two_backups_into_one_repository_at_the_same_time_both_succeed_and_restore() {
    let t = TestRepo::init();
    let (a, b) = (t.path("tree-a"), t.path("tree-b"));
    for (dir, seed) in [(&a, 100), (&b, 200)] {
        fs::create_dir_all(dir.join("nested")).unwrap();
        write_random(&dir.join("big.bin"), seed, 3 * MIB);
        write_random(&dir.join("nested/small.bin"), seed + 1, 10_000);
        // The same file in both: both runs may store its chunk.
        write_random(&dir.join("shared.bin"), 7, MIB);
    }

    let spawn = |dir: &Path| {
        std::process::Command::new(holdfast_bin())
            .arg("--repo")
            .arg(t.repo())
            .arg("backup")
            .arg(dir)
            .env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE)
            .env_remove("HOLDFAST_REPOSITORY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start holdfast backup")
    };
    let (pa, pb) = (spawn(&a), spawn(&b));
    let (oa, ob) = (pa.wait_with_output().unwrap(), pb.wait_with_output().unwrap());
    for o in [&oa, &ob] {
        assert!(o.status.success(), "both backups succeed: {}", String::from_utf8_lossy(&o.stderr));
    }

    for (dir, o) in [(&a, &oa), (&b, &ob)] {
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let out = t.path(&format!("out-{}", &id[..8]));
        t.restore(&id, &out);
        assert_same_tree(&tree_fingerprint(dir), &tree_fingerprint(&restored(&out, dir)));
    }
    let (healthy, report) = t.check(true);
    assert!(healthy, "{report}");
}

#[test]
fn a_file_that_changes_while_it_is_read_is_stored_with_a_warning_and_marked() {
    let t = TestRepo::init();
    let dir = t.path("live");
    fs::create_dir(&dir).unwrap();
    let growing = dir.join("growing.log");
    {
        // 128 MiB of zeros (cheap to store: every chunk is the same).
        let f = File::create(&growing).unwrap();
        let block = vec![0u8; 4 << 20];
        for i in 0..32u64 {
            f.write_all_at(&block, i * block.len() as u64).unwrap();
        }
    }

    // A writer appends to the file for as long as the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), growing.clone());
        std::thread::spawn(move || {
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            let mut appended = 0u64;
            while !stop.load(Ordering::Relaxed) {
                use std::io::Write;
                f.write_all(b"a log line appended while the backup reads\n").unwrap();
                appended += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            appended
        })
    };
    let result = t.cmd(["backup"]).arg(&dir).assert();
    stop.store(true, Ordering::Relaxed);
    let appended = writer.join().unwrap();
    assert!(appended > 0);

    // Committed but incomplete: exit code 3, not 0.
    let result = result.code(3);
    let stderr = stderr_of(&result);
    let path = growing.display().to_string();
    assert!(
        stderr.lines().any(|l| l.contains("warning") && l.contains(&path)),
        "a warning should name {path}:\n{stderr}"
    );
    let listed = t.ls_json("latest");
    let entry = listed.iter().find(|e| e["path"] == path.as_str()).expect("the file is in the snapshot");
    assert_eq!(entry["changed_while_read"], true, "{entry:#}");
}

/// Directories listed ahead of the scan each hold a descriptor: a tree
/// wider and deeper than a low open-files limit (soft and hard, so holdfast
/// cannot raise it) still backs up whole, exit 0, not "incomplete".
#[test]
fn a_backup_under_a_low_open_files_limit_stores_every_file() {
    let t = TestRepo::init();
    let src = t.path("src");
    for i in 0..40 {
        let mut dir = src.join(format!("d{i:02}"));
        for depth in 0..6 {
            dir = dir.join(format!("level{depth}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("f"), format!("{i}/{depth}")).unwrap();
        }
    }
    let mut backup = t.cmd(["backup"]);
    backup.arg(&src);
    let mut limited = std::process::Command::new("sh");
    limited.args(["-c", "ulimit -n 24 && exec \"$@\"", "sh"]).arg(backup.get_program()).args(backup.get_args());
    for (key, value) in backup.get_envs() {
        if let Some(value) = value {
            limited.env(key, value);
        }
    }
    let out = limited.output().unwrap();
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let to = t.path("out");
    t.restore(&id, &to);
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&to, &src)));
}
