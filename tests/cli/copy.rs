//! Copying snapshots to a second repository that shares the first one's
//! keys (`init --copy-params-from`): only missing blobs move, the copy
//! restores on its own, and unrelated repositories are refused.

use std::fs;

use crate::util::{
    PASSPHRASE, TestRepo, assert_same_tree, holdfast_bin, parse_json, restored, tree_fingerprint, write_random,
};

/// `holdfast copy --from A --to B --json` with both passphrases in the environment.
fn copy(from: &TestRepo, to: &TestRepo) -> std::process::Output {
    std::process::Command::new(holdfast_bin())
        .args(["copy", "--json", "--from"])
        .arg(from.repo())
        .arg("--to")
        .arg(to.repo())
        .env("HOLDFAST_FROM_PASSPHRASE", PASSPHRASE)
        .env("HOLDFAST_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap()
}

#[test]
fn a_copy_holds_the_same_snapshots_restores_alone_and_moves_only_what_is_missing() {
    let a = TestRepo::init();
    let src = a.path("src");
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("big.bin"), 7, 3 << 20);
    fs::write(src.join("notes.txt"), "first\n").unwrap();
    a.backup(&[&src]);
    let b = TestRepo::new();
    b.cmd(["init", "--copy-params-from"]).arg(a.repo()).env("HOLDFAST_FROM_PASSPHRASE", PASSPHRASE).assert().success();

    let first = copy(&a, &b);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first = parse_json(&String::from_utf8_lossy(&first.stdout));
    assert_eq!(first["snapshots_copied"], 1);

    // A second backup changes one small file: the next copy moves little.
    fs::write(src.join("notes.txt"), "second\n").unwrap();
    a.backup(&[&src]);
    let second = parse_json(&String::from_utf8_lossy(&copy(&a, &b).stdout));
    assert_eq!(second["snapshots_copied"], 1);
    assert_eq!(second["snapshots_present"], 1);
    assert!(second["bytes_copied"].as_u64().unwrap() < 100_000, "{second:#}");
    let third = parse_json(&String::from_utf8_lossy(&copy(&a, &b).stdout));
    assert_eq!(third["snapshots_copied"], 0);

    let (healthy, report) = b.check(true);
    assert!(healthy, "{report}");
    assert_eq!(b.snapshots_json().len(), 2);
    let out = b.path("out");
    b.restore("latest", &out);
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
}

#[test]
fn a_repository_with_its_own_keys_is_refused() {
    let a = TestRepo::init();
    let src = a.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    a.backup(&[&src]);
    let c = TestRepo::init();

    let out = copy(&a, &c);

    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--copy-params-from"));
    assert!(c.snapshots_json().is_empty());
}
