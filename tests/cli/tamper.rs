//! Damage one repository file, then ask `check` (and `restore`) about it:
//! the damage must be found, named, and pinned on the snapshots that need it.
//!
//! Every test starts from two snapshots of two different trees, A and B,
//! which share no blob, and damages a file only A needs, so the report must
//! name A and must not name B.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::util::{TestRepo, assert_same_tree, restored, tree_fingerprint, write_random};

/// One snapshot and the repository files its backup wrote.
struct Backed {
    src: PathBuf,
    /// The short id `snapshots` prints.
    short_id: String,
    /// The pack of file data (the larger of its two packs).
    data_pack: PathBuf,
    /// The pack of trees (the smaller one).
    tree_pack: PathBuf,
    index: PathBuf,
    snapshot: PathBuf,
}

struct Fixture {
    t: TestRepo,
    a: Backed,
    b: Backed,
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.insert(p);
        }
    }
    out
}

fn back_up_tree(t: &TestRepo, name: &str, seed: u64) -> Backed {
    let src = t.path(name);
    fs::create_dir_all(src.join("docs")).unwrap();
    write_random(&src.join("data.bin"), seed, 1_500_000);
    fs::write(src.join("docs/readme.txt"), format!("tree {name}\n").repeat(50)).unwrap();
    let dirs = ["packs", "index", "snapshots"].map(|d| t.repo().join(d));
    let before: Vec<_> = dirs.iter().map(|d| files_in(d)).collect();
    let id = t.backup(&[&src]);
    let new: Vec<Vec<PathBuf>> =
        dirs.iter().zip(before).map(|(d, b)| files_in(d).difference(&b).cloned().collect()).collect();
    let mut packs = new[0].clone();
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    assert_eq!(packs.len(), 2, "one data pack and one tree pack: {packs:?}");
    assert_eq!(new[1].len(), 1, "one index file");
    assert_eq!(new[2].len(), 1, "one snapshot file");
    let short_id =
        t.short_ids().into_iter().find(|s| id.starts_with(s.as_str())).expect("snapshots lists the new snapshot");
    assert_eq!(short_id.len(), 8);
    Backed {
        src,
        short_id,
        data_pack: packs[1].clone(),
        tree_pack: packs[0].clone(),
        index: new[1][0].clone(),
        snapshot: new[2][0].clone(),
    }
}

fn two_snapshots() -> Fixture {
    let t = TestRepo::init();
    let a = back_up_tree(&t, "tree-a", 1);
    let b = back_up_tree(&t, "tree-b", 2);
    Fixture { t, a, b }
}

/// The short name (first 8 hex digits) of a repository file.
fn short_name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap()[..8].to_string()
}

fn flip_byte_in_the_middle(p: &Path) {
    let f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
}

/// Assert that `check`'s report names `object` as damaged, blames snapshot
/// `dependent`, and blames no snapshot of `innocent`.
#[track_caller]
fn assert_reported(report: &str, object: &str, dependent: &str, innocent: &str) {
    let damaged: Vec<&str> = report.lines().filter(|l| l.starts_with("DAMAGED")).collect();
    assert!(damaged.iter().any(|l| l.contains(object)), "the report should name {object}:\n{report}");
    assert!(
        damaged.iter().any(|l| l.contains(dependent)),
        "the report should name the snapshot {dependent}:\n{report}"
    );
    assert!(!report.contains(innocent), "snapshot {innocent} does not depend on the damage:\n{report}");
    assert!(report.contains("NOT HEALTHY"), "{report}");
}

#[test]
fn a_healthy_repository_passes_check_read_data_and_says_healthy() {
    let f = two_snapshots();

    let (ok, report) = f.t.check(true);

    assert!(ok, "{report}");
    assert!(report.contains("healthy"), "{report}");
    assert!(!report.contains("DAMAGED"), "{report}");
    assert!(!report.contains("NOT HEALTHY"), "{report}");
}

#[test]
fn a_flipped_byte_in_a_data_pack_is_found_by_check_read_data() {
    let f = two_snapshots();

    flip_byte_in_the_middle(&f.a.data_pack);

    let (ok, report) = f.t.check(true);
    assert!(!ok, "check --read-data must fail:\n{report}");
    assert_reported(&report, &format!("pack {}", short_name(&f.a.data_pack)), &f.a.short_id, &f.b.short_id);
}

#[test]
fn a_flipped_byte_in_a_tree_pack_is_found_by_a_plain_check() {
    let f = two_snapshots();

    flip_byte_in_the_middle(&f.a.tree_pack);

    let (ok, report) = f.t.check(false);
    assert!(!ok, "check must fail:\n{report}");
    assert_reported(&report, "tree", &f.a.short_id, &f.b.short_id);
}

#[test]
fn a_flipped_byte_in_an_index_file_is_found_by_a_plain_check() {
    let f = two_snapshots();

    flip_byte_in_the_middle(&f.a.index);

    let (ok, report) = f.t.check(false);
    assert!(!ok, "check must fail:\n{report}");
    assert_reported(&report, &format!("index {}", short_name(&f.a.index)), &f.a.short_id, &f.b.short_id);
}

#[test]
fn a_flipped_byte_in_a_snapshot_file_is_found_by_a_plain_check_naming_that_snapshot() {
    let f = two_snapshots();

    flip_byte_in_the_middle(&f.a.snapshot);

    let (ok, report) = f.t.check(false);
    assert!(!ok, "check must fail:\n{report}");
    assert_reported(&report, &format!("snapshot {}", f.a.short_id), &f.a.short_id, &f.b.short_id);
}

#[test]
fn a_truncated_pack_is_found_by_a_plain_check() {
    let f = two_snapshots();

    let pack = OpenOptions::new().write(true).open(&f.a.data_pack).unwrap();
    pack.set_len(pack.metadata().unwrap().len() / 2).unwrap();

    let (ok, report) = f.t.check(false);
    assert!(!ok, "check must fail:\n{report}");
    assert_reported(&report, &format!("pack {}", short_name(&f.a.data_pack)), &f.a.short_id, &f.b.short_id);
}

#[test]
fn restoring_from_a_damaged_data_pack_fails_and_does_not_report_success() {
    let f = two_snapshots();
    flip_byte_in_the_middle(&f.a.data_pack);

    let out = f.t.path("out-a");
    let failed = f.t.cmd(["restore", &f.a.short_id, "--to"]).arg(&out).assert().failure();
    let stderr = crate::util::stderr_of(&failed);
    assert!(!stderr.contains("restored"), "a failed restore must not report success:\n{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");

    // The undamaged snapshot still restores.
    let out = f.t.path("out-b");
    f.t.restore(&f.b.short_id, &out);
    assert_same_tree(&tree_fingerprint(&f.b.src), &tree_fingerprint(&restored(&out, &f.b.src)));
}

#[test]
fn damage_below_a_directory_two_snapshots_share_is_pinned_on_both() {
    // Two backups of the same tree: only top.txt changes, so the second
    // snapshot reuses the first one's tree of shared/ and everything below it.
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("shared/deeper")).unwrap();
    write_random(&src.join("shared/deeper/data.bin"), 7, 1_500_000);
    fs::write(src.join("top.txt"), "first\n").unwrap();
    let packs_dir = t.repo().join("packs");
    let first = t.backup(&[&src]);
    let mut packs: Vec<PathBuf> = files_in(&packs_dir).into_iter().collect();
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let data_pack = packs.last().unwrap().clone();
    fs::write(src.join("top.txt"), "second\n").unwrap();
    let second = t.backup(&[&src]);

    flip_byte_in_the_middle(&data_pack);

    let (ok, report) = t.check(true);
    assert!(!ok, "check --read-data must fail:\n{report}");
    let damaged: Vec<&str> = report.lines().filter(|l| l.starts_with("DAMAGED")).collect();
    for snapshot in [&first, &second] {
        assert!(
            damaged.iter().any(|l| l.contains(&snapshot[..8])),
            "both snapshots need shared/deeper/data.bin, so the report must name {}:\n{report}",
            &snapshot[..8]
        );
    }
}

/// A FIFO and a symlink to an endless device planted among a local
/// repository's key files: opening the repository neither waits on the
/// FIFO forever nor reads the device without bound; the real key still
/// opens it.
#[test]
fn a_fifo_or_an_endless_symlink_among_the_key_files_neither_hangs_nor_exhausts_memory() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    write_random(&src.join("a.bin"), 7, 10_000);
    t.backup(&[&src]);
    let keys = t.repo().join("keys");
    nix::unistd::mkfifo(&keys.join("0000"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", keys.join("0001")).unwrap();

    let out = t.cmd(["snapshots"]).timeout(std::time::Duration::from_secs(60)).output().unwrap();

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(t.short_ids().len(), 1);
}
