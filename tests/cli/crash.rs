//! Kill a backup with SIGKILL at several moments; after each kill the
//! repository must check clean, take a new backup, verify every byte, and
//! restore the newest snapshot exactly.
//!
//! The early moments are times (the key is still being derived, the tree is
//! being scanned); the later ones are events seen in the repository (a pack
//! being written, one and three packs committed), so that they land in the
//! same phase of the backup however fast the machine is.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    PASSPHRASE, TestRepo, assert_same_tree, holdfast_bin, restored, sql_dump, tree_fingerprint, write_random,
};

const MIB: u64 = 1 << 20;

/// When to kill the backup.
#[derive(Debug, Clone, Copy)]
enum Moment {
    After(Duration),
    /// A file appeared in `tmp/`: a pack is being written.
    PackBeingWritten,
    /// This many new packs were committed under `packs/`.
    PacksCommitted(usize),
}

const MOMENTS: [Moment; 5] = [
    Moment::After(Duration::from_millis(30)),
    Moment::After(Duration::from_millis(100)),
    Moment::PackBeingWritten,
    Moment::PacksCommitted(1),
    Moment::PacksCommitted(3),
];

/// New random data each round, so that every killed run has chunks to seal
/// and packs to write.
const CHURN: u64 = 32 * MIB;

/// Packs of 1 MiB (instead of 16 MiB) put many pack commits, each a moment a
/// kill can interrupt, into little data.
const PACK_SIZE: &str = "1048576";

/// Mixed data: a SQL dump (compresses well), random binaries (do not), many
/// small text files (read together into shared chunks), and `churn.bin`,
/// rewritten every round.
fn make_dataset(root: &Path) {
    fs::create_dir_all(root.join("db")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("db/dump.sql"), sql_dump(60_000, 0..0)).unwrap();
    for i in 0..2 {
        write_random(&root.join(format!("bin/blob-{i}.bin")), 500 + i, 2 * MIB);
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

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                let p = e.unwrap().path();
                if p.is_dir() { count_files(&p) } else { 1 }
            })
            .sum()
        })
        .unwrap_or(0)
}

/// Wait for `moment`, then SIGKILL the backup. Panics if it ended first.
fn kill_at(t: &TestRepo, mut child: Child, moment: Moment) {
    let packs_before = count_files(&t.repo().join("packs"));
    let started = Instant::now();
    let reached = || match moment {
        Moment::After(d) => started.elapsed() >= d,
        Moment::PackBeingWritten => count_files(&t.repo().join("tmp")) > 0,
        Moment::PacksCommitted(n) => count_files(&t.repo().join("packs")) >= packs_before + n,
    };
    while !reached() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended ({status}) before the moment to kill it: {moment:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{moment:?} never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().expect("send SIGKILL");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed at {moment:?}, the backup exited with {status}");
}

#[test]
fn a_backup_killed_at_any_moment_leaves_a_repository_that_checks_backs_up_and_restores() {
    let t = TestRepo::init_with(&["--pack-size", PACK_SIZE]);
    let data = t.path("data");
    make_dataset(&data);

    for (round, moment) in MOMENTS.into_iter().enumerate() {
        write_random(&data.join("churn.bin"), 1000 + round as u64, CHURN);
        let child = Command::new(holdfast_bin())
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
        kill_at(&t, child, moment);

        let (ok, report) = t.check(false);
        assert!(ok, "killed at {moment:?}, then check:\n{report}");

        t.backup(&[&data]);

        let (ok, report) = t.check(true);
        assert!(ok, "killed at {moment:?}, then backup, then check --read-data:\n{report}");

        let out = t.path(&format!("out-{round}"));
        t.restore("latest", &out);
        assert_same_tree(&tree_fingerprint(&data), &tree_fingerprint(&restored(&out, &data)));
        fs::remove_dir_all(&out).unwrap();
    }
}
