//! Kill a backup with SIGKILL at several moments; after each kill the
//! repository must check clean, take a new backup, verify every byte, and
//! restore the newest snapshot exactly.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{
    PASSPHRASE, TestRepo, assert_same_tree, holdfast_bin, restored, sql_dump, tree_fingerprint, write_random,
};

const MIB: u64 = 1 << 20;

/// Kill delays, from "still deriving the key" to "writing packs".
const KILL_AFTER_MS: [u64; 5] = [50, 200, 500, 1000, 1600];

/// New data each round, so every killed run has chunks to seal and packs to
/// write (more than one 16 MiB pack).
const CHURN: u64 = 24 * MIB;

/// Mixed data: a SQL dump (compresses well), random binaries (do not), and
/// many small text files (read together into shared chunks).
fn make_dataset(root: &Path) {
    fs::create_dir_all(root.join("db")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("db/dump.sql"), sql_dump(100_000, 0..0)).unwrap();
    for i in 0..2 {
        write_random(&root.join(format!("bin/blob-{i}.bin")), 500 + i, 8 * MIB);
    }
    for d in 0..10 {
        let dir = root.join(format!("docs/{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            let line = format!("document {d}/{f}: some text that compresses well\n");
            fs::write(dir.join(format!("{f:03}.txt")), line.repeat(20 + f * 7)).unwrap();
        }
    }
}

#[test]
fn a_backup_killed_at_any_moment_leaves_a_repository_that_checks_backs_up_and_restores() {
    let t = TestRepo::init();
    let data = t.path("data");
    make_dataset(&data);
    let mut leftovers_seen = false;

    for (round, delay) in KILL_AFTER_MS.into_iter().enumerate() {
        write_random(&data.join("churn.bin"), 1000 + round as u64, CHURN);

        let mut child = Command::new(holdfast_bin())
            .arg("--repo")
            .arg(t.repo())
            .arg("backup")
            .arg(&data)
            .env("HOLDFAST_PASSPHRASE", PASSPHRASE)
            .env_remove("HOLDFAST_REPOSITORY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start holdfast backup");
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().expect("send SIGKILL");
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the backup should still be running after {delay} ms \
             (it exited with {status}); give it more data"
        );

        let (ok, report) = t.check(false);
        assert!(ok, "round {round} (killed after {delay} ms): check:\n{report}");
        leftovers_seen |= report.contains("note:");

        t.backup(&[&data]);

        let (ok, report) = t.check(true);
        assert!(ok, "round {round} (killed after {delay} ms): check --read-data:\n{report}");

        let out = t.path(&format!("out-{round}"));
        t.restore("latest", &out);
        assert_same_tree(&tree_fingerprint(&data), &tree_fingerprint(&restored(&out, &data)));
        fs::remove_dir_all(&out).unwrap();
    }
    assert!(leftovers_seen, "no kill left a pack or temporary file behind: none hit a backup while it wrote");
}
