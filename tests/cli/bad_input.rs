//! Wrong passphrases, wrong paths, wrong ids: each fails with one clear
//! message, a non-zero exit, and no change to anything on disk.

use std::fs;
use std::path::Path;

use crate::util::{
    PASSPHRASE, TestRepo, assert_same_tree, holdfast, stderr_of, stdout_of, tree_fingerprint, write_random,
};

/// The commands that open an existing repository, as a person would run them.
fn opening_commands(source: &Path) -> Vec<Vec<String>> {
    vec![vec!["backup".into(), source.display().to_string()], vec!["snapshots".into()], vec!["check".into()]]
}

#[test]
fn a_wrong_passphrase_is_one_clear_line_that_does_not_echo_the_passphrase() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    let wrong = "Tr0ub4dor&3-not-the-passphrase";

    let mut cmds = opening_commands(&src);
    cmds.push(vec!["ls".into(), "latest".into()]);
    for args in cmds {
        let failed = t.cmd_with_passphrase(wrong, &args).assert().failure();
        let stderr = stderr_of(&failed);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: exactly one line on stderr:\n{stderr}");
        assert!(stderr.contains("wrong passphrase"), "{args:?}: {stderr}");
        assert!(!stderr.contains(wrong), "{args:?} echoes the passphrase");
        assert!(!stderr.contains(PASSPHRASE), "{args:?} leaks the passphrase");
        assert_eq!(stdout_of(&failed), "", "{args:?}");
    }
    assert!(t.short_ids().is_empty(), "the failed backup stored no snapshot");
}

#[test]
fn a_missing_repository_directory_is_not_a_repository_and_is_not_created() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();

    for args in opening_commands(&src) {
        let failed = t.cmd(&args).assert().failure();
        let stderr = stderr_of(&failed);
        assert!(stderr.contains("not a holdfast repository"), "{args:?}: {stderr}");
        assert!(!t.repo().exists(), "{args:?} created {}", t.repo().display());
    }
}

#[test]
fn a_foreign_directory_is_not_a_repository_and_is_left_untouched() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    let foreign = t.repo();
    fs::create_dir_all(foreign.join("photos")).unwrap();
    write_random(&foreign.join("photos/cat.jpg"), 1, 20_000);
    fs::write(foreign.join("notes.txt"), b"not a repository\n").unwrap();
    fs::write(foreign.join("config"), b"[core]\n").unwrap();
    let before = tree_fingerprint(foreign);

    for args in opening_commands(&src) {
        let failed = t.cmd(&args).assert().failure();
        let stderr = stderr_of(&failed);
        assert!(stderr.contains("not a holdfast repository"), "{args:?}: {stderr}");
        assert_same_tree(&before, &tree_fingerprint(foreign));
    }
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let t = TestRepo::new();
    fs::create_dir(t.repo()).unwrap();
    fs::write(t.repo().join("precious.txt"), b"keep me\n").unwrap();
    let before = tree_fingerprint(t.repo());

    let failed = t.cmd(["init"]).assert().failure();

    assert!(stderr_of(&failed).contains("not empty"), "{}", stderr_of(&failed));
    assert_same_tree(&before, &tree_fingerprint(t.repo()));
}

#[test]
fn init_refuses_an_existing_repository_and_leaves_it_working() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    let id = t.backup(&[&src]);

    t.cmd(["init"]).assert().failure();
    t.cmd_with_passphrase("another passphrase", ["init"]).assert().failure();

    assert_eq!(t.short_ids(), [&id[..8]]);
}

#[test]
fn without_a_passphrase_commands_fail_clearly_instead_of_prompting() {
    let t = TestRepo::init();

    // holdfast() sets no passphrase; the test's stdin is not a terminal.
    let failed = holdfast(t.repo()).arg("snapshots").assert().failure();
    let stderr = stderr_of(&failed);
    assert!(stderr.contains("no passphrase"), "{stderr}");
    assert!(stderr.contains("HOLDFAST_PASSPHRASE"), "{stderr}");

    let fresh = t.path("fresh");
    let failed = holdfast(&fresh).arg("init").assert().failure();
    assert!(stderr_of(&failed).contains("no passphrase"));
    assert!(!fresh.exists(), "init without a passphrase created nothing");

    let failed = holdfast(t.repo()).arg("snapshots").env("HOLDFAST_PASSPHRASE", "").assert().failure();
    assert!(stderr_of(&failed).contains("empty"), "an empty passphrase is refused: {}", stderr_of(&failed));
}

#[test]
fn an_unknown_snapshot_id_is_a_clear_error() {
    let t = TestRepo::init();
    let out = t.path("out");

    let failed = t.cmd(["restore", "latest", "--to"]).arg(&out).assert().failure();
    assert!(
        stderr_of(&failed).contains("no snapshot matches"),
        "restore latest of an empty repository: {}",
        stderr_of(&failed)
    );

    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    t.backup(&[&src]);
    for args in [vec!["ls", "deadbeef"], vec!["restore", "deadbeef", "--to", out.to_str().unwrap()]] {
        let failed = t.cmd(&args).assert().failure();
        let stderr = stderr_of(&failed);
        assert!(stderr.contains("no snapshot matches") && stderr.contains("deadbeef"), "{args:?}: {stderr}");
    }
    assert!(!out.exists(), "a failed restore created {}", out.display());
}

#[test]
fn a_path_that_is_not_in_the_snapshot_is_a_clear_error() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("present.txt"), b"here\n").unwrap();
    t.backup(&[&src]);
    let missing = src.join("absent.txt");

    let failed = t.cmd(["ls", "latest"]).arg(&missing).assert().failure();
    assert!(stderr_of(&failed).contains("not in the snapshot"), "ls: {}", stderr_of(&failed));

    let out = t.path("out");
    let failed = t.cmd(["restore", "latest", "--to"]).arg(&out).arg("--path").arg(&missing).assert().failure();
    let stderr = stderr_of(&failed);
    assert!(stderr.contains("not in the snapshot"), "restore: {stderr}");
    assert!(!stderr.contains("restored"), "a failed restore must not report success: {stderr}");
}

#[test]
fn malformed_s3_settings_in_the_environment_are_one_clear_line_not_a_crash() {
    let t = TestRepo::new();
    // `snapshots` of a bucket with these AWS variables: its one stderr line.
    let snapshots = |endpoint: &str, region: &str, key_id: &str| {
        let failed = holdfast(Path::new("s3://backups/shop"))
            .arg("snapshots")
            .env("HOLDFAST_PASSPHRASE", PASSPHRASE)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", region)
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", "not-a-secret")
            .current_dir(t.path("."))
            .assert()
            .failure()
            .code(1);
        let stderr = stderr_of(&failed);
        assert_eq!(stderr.lines().count(), 1, "{endpoint} {region} {key_id:?}: one line:\n{stderr}");
        assert!(!stderr.contains("not-a-secret"), "{stderr}");
        stderr
    };
    for endpoint in ["http://", "garage:3900", "ftp://127.0.0.1:3900"] {
        let stderr = snapshots(endpoint, "garage", "id");
        assert!(stderr.contains(&format!("{endpoint:?} is not an S3 endpoint")), "{stderr}");
    }
    let stderr = snapshots("http://admin:hunter2@127.0.0.1:9", "garage", "id");
    assert!(stderr.contains("holds credentials") && !stderr.contains("hunter2"), "{stderr}");
    // A key id the HTTP client cannot put in a header, and a region with a space.
    let stderr = snapshots("http://127.0.0.1:9", "garage", "id\twith-tab");
    assert!(stderr.contains("the access key id is empty or holds spaces"), "{stderr}");
    let stderr = snapshots("http://127.0.0.1:9", "eu west", "id");
    assert!(stderr.contains("is not a region"), "{stderr}");
}
