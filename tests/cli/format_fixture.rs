//! The on-disk format, pinned: `tests/fixtures/repo-v1` and `repo-v2` are
//! small repositories written once by holdfast and committed. Every test run
//! opens them, checks every byte and restores them, so a change of the
//! format — pack, index, tree, snapshot, key, run record — can never slip in
//! unnoticed: old repositories must keep opening.
//!
//! - `repo-v1`: format 1 trees (before every xattr namespace and inode
//!   flags were kept), a file snapshot and a job snapshot.
//! - `repo-v2`: format 2 trees: the same tree with ACLs, a capability,
//!   `user.` and `trusted.` attributes and inode flags (made as root).
//!
//! Each was made by its writer, e.g.
//! `cargo test --test cli format_fixture::write_v2 -- --ignored --exact`,
//! and is never rewritten: after an intentional format change, keep the old
//! fixtures, add a new one, and keep the old ones restoring.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::util::{holdfast_bin, parse_json, stdout_of, tree_fingerprint};

/// Where fixture `name` lives in the source tree.
fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fixture() -> PathBuf {
    fixture_dir("repo-v1")
}

/// The directory the fixture's file snapshot was taken of (the path is
/// recorded in the snapshot, so it is fixed).
const SOURCE: &str = "/tmp/holdfast-fixture-v1/tree";

/// The fixture's passphrase (it protects nothing).
const PASSPHRASE: &str = "fixture passphrase v1";

/// The tree the file snapshot holds, built the same way every time:
/// contents, modes, mtimes, a symlink, a hard link, an empty file and a
/// name that is not UTF-8.
fn build_tree(root: &Path) {
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    fs::create_dir_all(root.join("etc/app")).unwrap();
    fs::create_dir_all(root.join("var/data")).unwrap();
    let files: [(&str, Vec<u8>, u32, u64); 5] = [
        ("etc/app/app.conf", b"listen = 127.0.0.1:8080\nworkers = 4\n".to_vec(), 0o644, 1_700_000_000),
        ("etc/app/secret.key", b"-----BEGIN FIXTURE KEY-----\nnot a real key\n".to_vec(), 0o600, 1_700_000_100),
        ("var/data/empty", Vec::new(), 0o640, 1_700_000_200),
        // Several chunks of incompressible bytes and a compressible text.
        ("var/data/blob.bin", pseudo_random(300 * 1024), 0o644, 1_700_000_300),
        ("var/data/log.txt", "line of a log file\n".repeat(4000).into_bytes(), 0o644, 1_700_000_400),
    ];
    for (rel, bytes, mode, mtime) in files {
        let p = root.join(rel);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        fs::File::options().write(true).open(&p).unwrap().set_modified(at(mtime)).unwrap();
    }
    fs::hard_link(root.join("etc/app/app.conf"), root.join("etc/app/app.conf.link")).unwrap();
    symlink("../etc/app/app.conf", root.join("var/current.conf")).unwrap();
    let t = nix::sys::time::TimeSpec::new(1_700_000_600, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &root.join("var/current.conf"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"var/data/caf\xe9.txt");
    fs::write(root.join(odd), b"latin-1 name\n").unwrap();
    fs::File::options().write(true).open(root.join(odd)).unwrap().set_modified(at(1_700_000_500)).unwrap();
    fs::set_permissions(root.join("var/data"), fs::Permissions::from_mode(0o750)).unwrap();
    for dir in ["etc/app", "etc", "var/data", "var", ""] {
        fs::File::open(root.join(dir)).unwrap().set_modified(at(1_700_001_000)).unwrap();
    }
}

use std::os::unix::ffi::OsStrExt;

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The config the fixture's job snapshot was made with (and is read with).
fn config_text(dir: &Path) -> String {
    format!(
        "[repositories.fixture]\npath = \"{repo}\"\npassphrase = \"{PASSPHRASE}\"\n\n\
         [jobs.shop]\nrepositories = [\"fixture\"]\nspool = \"{dir}/spool\"\nstate_dir = \"{dir}/state\"\nretries = 0\n\n\
         [[jobs.shop.databases]]\nkind = \"sqlite\"\npath = \"{dir}/shop.db\"\n\
         [[jobs.shop.databases.verify]]\nsql = \"select count(*) from orders\"\nexpect = \"= 3\"\n\n\
         [jobs.shop.files]\npaths = [\"{SOURCE}/etc\"]\n",
        repo = dir.join("repo").display(),
        dir = dir.display()
    )
}

fn holdfast(args: &[&str]) -> Command {
    let mut c = Command::new(holdfast_bin());
    c.args(args).env("HOLDFAST_PASSPHRASE", PASSPHRASE).env_remove("HOLDFAST_CONFIG").env_remove("HOLDFAST_REPOSITORY");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Make the fixture anew (only after an intentional format change).
#[test]
#[ignore = "writes tests/fixtures/repo-v1; run by hand after a format change"]
fn write_v1() {
    let source = Path::new(SOURCE);
    let _ = fs::remove_dir_all(source.parent().unwrap());
    build_tree(source);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let r = repo.to_str().unwrap();
    run_ok(holdfast(&["--repo", r, "init"]).args(["--avg-chunk-size", "65536"]));
    run_ok(&mut holdfast(&["--repo", r, "backup", "--tag", "fixture", SOURCE]));
    let db = work.path().join("shop.db");
    let sql = "create table orders(id integer primary key, item text); \
               insert into orders(item) values ('tea'), ('coffee'), ('caf\u{e9} au lait');";
    assert!(Command::new("sqlite3").arg(&db).arg(sql).status().unwrap().success());
    fs::write(work.path().join("holdfast.toml"), config_text(work.path())).unwrap();
    let config = work.path().join("holdfast.toml");
    run_ok(&mut holdfast(&["--config", config.to_str().unwrap(), "run", "shop"]));
    let _ = fs::remove_dir_all(fixture());
    fs::create_dir_all(fixture().parent().unwrap()).unwrap();
    assert!(Command::new("cp").arg("-a").arg(&repo).arg(fixture()).status().unwrap().success());
    let _ = fs::remove_dir_all(source.parent().unwrap());
}

/// A writable copy of the v1 fixture (opening a repository may add its
/// working directories; the committed one stays as it is).
fn copy_of_fixture(dir: &Path) -> PathBuf {
    copy_of(&fixture(), dir)
}

fn copy_of(fixture: &Path, dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    assert!(Command::new("cp").arg("-a").arg(fixture).arg(&repo).status().unwrap().success());
    // git keeps no empty directories; a repository has these from `init`.
    for empty in ["marks", "running", "tmp"] {
        fs::create_dir_all(repo.join(empty)).unwrap();
    }
    repo
}

#[test]
fn the_committed_v1_repository_checks_whole_and_restores_exactly_what_it_held() {
    let work = tempfile::tempdir().unwrap();
    let repo = copy_of_fixture(work.path());
    let r = repo.to_str().unwrap();
    let check = run_ok(&mut holdfast(&["--repo", r, "check", "--read-data"]));
    assert!(check.contains("healthy: 2 snapshots"), "{check}");

    let snaps = parse_json(&run_ok(&mut holdfast(&["--repo", r, "snapshots", "--json"])));
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let files = snaps.iter().find(|s| s["tags"][0] == "fixture").expect("the file snapshot");
    assert_eq!(files["paths"][0], SOURCE);

    let expected = work.path().join("expected");
    build_tree(&expected);
    let to = work.path().join("restored");
    run_ok(&mut holdfast(&["--repo", r, "restore", files["id"].as_str().unwrap(), "--to", to.to_str().unwrap()]));
    let restored = to.join(SOURCE.trim_start_matches('/'));
    crate::util::assert_same_tree(&tree_fingerprint(&expected), &tree_fingerprint(&restored));
}

#[test]
fn the_committed_v1_job_snapshot_still_reads_as_a_job_run_and_its_dump_reloads() {
    let work = tempfile::tempdir().unwrap();
    copy_of_fixture(work.path());
    let config = work.path().join("holdfast.toml");
    fs::write(&config, config_text(work.path())).unwrap();
    let c = config.to_str().unwrap();

    let listing = run_ok(&mut holdfast(&["--config", c, "snapshots", "shop"]));
    assert!(listing.contains("sqlite") && listing.contains(&format!("{SOURCE}/etc")), "{listing}");

    let dump = work.path().join("shop.db");
    let a = assert_cmd::Command::from_std(holdfast(&[
        "--config",
        c,
        "restore",
        "shop",
        "--database",
        "shop",
        "--dump-to",
        dump.to_str().unwrap(),
    ]))
    .assert()
    .success();
    let _ = stdout_of(&a);
    // An SQLite dump is a consistent copy of the database file.
    let rows = Command::new("sqlite3").arg(&dump).arg("select item from orders order by id").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout), "tea\ncoffee\ncaf\u{e9} au lait\n");

    // The recorded smoke query still parses and passes against the reloaded dump.
    let verified = run_ok(&mut holdfast(&["--config", c, "verify", "shop"]));
    assert!(verified.contains("verified"), "{verified}");
}

/// The directory the v2 fixture's snapshot was taken of.
const SOURCE_V2: &str = "/tmp/holdfast-fixture-v2/tree";

/// [`build_tree`] with what tree format 2 added: an ACL and a default ACL,
/// a capability, `user.` and `trusted.` attributes, and inode flags.
fn build_tree_v2(root: &Path) {
    use crate::whole_system::tool;
    build_tree(root);
    for argv in [
        &["setfattr", "-n", "user.fixture", "-v", "format 2", "etc/app/app.conf"][..],
        &["setfattr", "-n", "trusted.fixture", "-v", "root only", "var/data/empty"],
        &["setfacl", "-m", "u:65534:r--", "etc/app/secret.key"],
        &["setfacl", "-d", "-m", "g:65534:r-x", "var/data"],
        &["setcap", "cap_net_bind_service+ep", "var/data/blob.bin"],
        &["chattr", "+d", "var/data/log.txt"],
        &["chattr", "+A", "etc/app"],
    ] {
        tool(root, argv);
    }
}

/// Make the v2 fixture anew (as root; only after an intentional format change).
#[test]
#[ignore = "writes tests/fixtures/repo-v2; run by hand, as root, after a format change"]
fn write_v2() {
    let source = Path::new(SOURCE_V2);
    let _ = fs::remove_dir_all(source.parent().unwrap());
    build_tree_v2(source);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let r = repo.to_str().unwrap();
    run_ok(holdfast(&["--repo", r, "init"]).args(["--avg-chunk-size", "65536"]));
    run_ok(&mut holdfast(&["--repo", r, "backup", "--tag", "fixture-v2", SOURCE_V2]));
    let _ = fs::remove_dir_all(fixture_dir("repo-v2"));
    assert!(Command::new("cp").arg("-a").arg(&repo).arg(fixture_dir("repo-v2")).status().unwrap().success());
    let _ = Command::new("chattr").args(["-R", "-d", "-A"]).arg(source).status();
    let _ = fs::remove_dir_all(source.parent().unwrap());
}

#[test]
fn the_committed_v2_repository_restores_every_acl_capability_attribute_and_flag() {
    crate::whole_system::require_root();
    let work = tempfile::tempdir().unwrap();
    let repo = copy_of(&fixture_dir("repo-v2"), work.path());
    let r = repo.to_str().unwrap();
    let check = run_ok(&mut holdfast(&["--repo", r, "check", "--read-data"]));
    assert!(check.contains("healthy: 1 snapshots"), "{check}");

    let expected = work.path().join("expected");
    build_tree_v2(&expected);
    let to = work.path().join("restored");
    run_ok(&mut holdfast(&["--repo", r, "restore", "latest", "--to", to.to_str().unwrap()]));
    crate::whole_system::assert_same(&expected, &to.join(SOURCE_V2.trim_start_matches('/')));
}
