//! Keys: export and import (file and paper forms), changing and adding
//! passphrases, and that no passphrase is ever stored.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{PASSPHRASE, TestRepo, stderr_of, stdout_of};

fn remove_all_keys(t: &TestRepo) {
    for e in fs::read_dir(t.repo().join("keys")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
}

/// A repository with one snapshot; returns its short id.
fn with_a_snapshot(t: &TestRepo) -> String {
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    t.backup(&[&src])[..8].to_string()
}

fn passphrase_file(t: &TestRepo, name: &str, passphrase: &str) -> PathBuf {
    let f = t.path(name);
    fs::write(&f, format!("{passphrase}\n")).unwrap();
    f
}

#[track_caller]
fn assert_opens_with(t: &TestRepo, passphrase: &str, short_id: &str) {
    let out = t.cmd_with_passphrase(passphrase, ["snapshots"]).assert().success();
    assert!(stdout_of(&out).contains(short_id));
}

#[track_caller]
fn assert_refuses(t: &TestRepo, passphrase: &str) {
    let out = t.cmd_with_passphrase(passphrase, ["snapshots"]).assert().failure();
    assert!(stderr_of(&out).contains("wrong passphrase"), "{}", stderr_of(&out));
}

fn lose_and_import_keys(t: &TestRepo, exported: &Path, id: &str) {
    remove_all_keys(t);
    let lost = t.cmd(["snapshots"]).assert().failure();
    assert!(stderr_of(&lost).contains("no key files"), "{}", stderr_of(&lost));

    t.cmd(["key", "import"]).arg(exported).assert().success();

    assert_opens_with(t, PASSPHRASE, id);
}

#[test]
fn an_exported_key_brings_back_a_repository_that_lost_its_keys() {
    let t = TestRepo::init();
    let id = with_a_snapshot(&t);
    let exported = t.path("key.json");
    let out = t.cmd(["key", "export"]).assert().success();
    fs::write(&exported, stdout_of(&out)).unwrap();

    lose_and_import_keys(&t, &exported, &id);
}

#[test]
fn a_paper_key_brings_back_a_repository_that_lost_its_keys() {
    let t = TestRepo::init();
    let id = with_a_snapshot(&t);
    let paper = t.path("key.txt");
    t.cmd(["key", "export", "--paper", "-o"]).arg(&paper).assert().success();
    let text = fs::read_to_string(&paper).unwrap();
    assert!(text.lines().all(|l| l.len() <= 80), "printable:\n{text}");

    lose_and_import_keys(&t, &paper, &id);
}

#[test]
fn a_key_of_another_repository_is_not_imported() {
    let ours = TestRepo::init();
    let theirs = TestRepo::init();
    let key = theirs.path("theirs.json");
    theirs.cmd(["key", "export", "-o"]).arg(&key).assert().success();
    let keys_before = fs::read_dir(ours.repo().join("keys")).unwrap().count();

    ours.cmd(["key", "import"]).arg(&key).assert().failure();

    assert_eq!(fs::read_dir(ours.repo().join("keys")).unwrap().count(), keys_before);
}

#[test]
fn key_passwd_replaces_the_old_passphrase_with_the_new_one() {
    let t = TestRepo::init();
    let id = with_a_snapshot(&t);
    let new = "a new passphrase for key passwd";
    let file = passphrase_file(&t, "new-pass", new);

    t.cmd(["key", "passwd", "--new-passphrase-file"]).arg(&file).assert().success();

    assert_refuses(&t, PASSPHRASE);
    assert_opens_with(&t, new, &id);
}

#[test]
fn key_add_lets_either_passphrase_open_the_repository() {
    let t = TestRepo::init();
    let id = with_a_snapshot(&t);
    let second = "a second passphrase from key add";
    let file = passphrase_file(&t, "second-pass", second);

    t.cmd(["key", "add", "--new-passphrase-file"]).arg(&file).assert().success();

    assert_opens_with(&t, PASSPHRASE, &id);
    assert_opens_with(&t, second, &id);
    assert_refuses(&t, "neither of them");
}

#[test]
fn no_passphrase_is_ever_written_into_the_repository() {
    let mut t = TestRepo::init();
    with_a_snapshot(&t);
    let added = "passphrase-added-with-key-add";
    let changed = "passphrase-set-with-key-passwd";
    let add_file = passphrase_file(&t, "added", added);
    let passwd_file = passphrase_file(&t, "changed", changed);
    t.cmd(["key", "add", "--new-passphrase-file"]).arg(&add_file).assert().success();
    t.cmd(["key", "passwd", "--new-passphrase-file"]).arg(&passwd_file).assert().success();
    t.set_passphrase(changed);
    let exported = t.path("exported.json");
    t.cmd(["key", "export", "-o"]).arg(&exported).assert().success();
    t.cmd(["check", "--read-data"]).assert().success();

    let mut files = t.repository_files();
    files.push(exported);
    assert!(files.len() > 5, "{files:?}");
    for f in files {
        let bytes = fs::read(&f).unwrap();
        for secret in [PASSPHRASE, added, changed] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} contains the passphrase {secret:?}",
                f.display()
            );
        }
    }
}
