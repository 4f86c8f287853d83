//! `holdfast mount`: snapshots as a read-only FUSE file system, over the
//! real kernel FUSE (`/dev/fuse`): what `cp -a` and `diff -r` get out of it
//! is what a restore writes, sparse files report their holes, attributes
//! show, and SIGTERM unmounts without leaving a stale mount.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::jobs_util::{JobEnv, sqlite_exec};
use crate::util::{TestRepo, assert_same_tree, restored, tree_fingerprint, write_random};

/// A running `holdfast mount`, ended with SIGTERM (and waited for) on drop.
struct Mounted {
    child: Child,
    at: PathBuf,
    log: PathBuf,
}

impl Mounted {
    /// Start `cmd` (a `holdfast ... mount AT`) and wait until the mount answers.
    fn start(mut cmd: Command, at: &Path, log: PathBuf) -> Mounted {
        assert!(
            Path::new("/dev/fuse").exists(),
            "these tests need FUSE: /dev/fuse is missing (load the fuse module, or give the container the device)"
        );
        fs::create_dir_all(at).unwrap();
        let child = cmd.stderr(fs::File::create(&log).unwrap()).stdout(Stdio::null()).spawn().unwrap();
        let mut m = Mounted { child, at: at.to_path_buf(), log };
        let started = Instant::now();
        while !at.join("by-id").exists() {
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!("holdfast mount ended ({status}): {}", fs::read_to_string(&m.log).unwrap_or_default());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the mount did not come up in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM).ok();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                self.child.kill().ok();
                panic!("holdfast mount did not end within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        // Never leave a mount behind, whatever the test did.
        Command::new("umount").arg("-l").arg(&self.at).stderr(Stdio::null()).status().ok();
    }
}

/// `holdfast --repo REPO mount AT` for `t`'s repository.
fn mount_command(t: &TestRepo, at: &Path) -> Command {
    let mut cmd = Command::new(crate::util::holdfast_bin());
    cmd.args(["--repo"]).arg(t.repo()).arg("mount").arg(at);
    cmd.env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE).env("HOLDFAST_CACHE_DIR", crate::util::test_cache_dir());
    cmd
}

fn is_mounted(at: &Path) -> bool {
    let at = fs::canonicalize(at).unwrap_or(at.to_path_buf());
    fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.split(' ').nth(1) == at.to_str())
}

#[test]
fn a_mount_reads_like_a_restore_and_unmounts_on_sigterm() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("app/uploads")).unwrap();
    write_random(&src.join("app/big.bin"), 3, 5 << 20);
    for i in 0..50 {
        fs::write(src.join(format!("app/uploads/u{i:02}.txt")), format!("upload {i}\n").repeat(i + 1)).unwrap();
    }
    fs::hard_link(src.join("app/uploads/u01.txt"), src.join("app/uploads/u01-link.txt")).unwrap();
    std::os::unix::fs::symlink("uploads/u00.txt", src.join("app/first")).unwrap();
    xattr::set(src.join("app/uploads/u02.txt"), "user.origin", b"camera").unwrap();
    // Sparse: 8 MiB hole, 4 KiB of data, 8 MiB hole.
    let sparse = fs::File::create(src.join("app/sparse.img")).unwrap();
    sparse.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, &[7u8; 4096], 8 << 20).unwrap();
    drop(sparse);
    let first = t.backup(&[&src]);
    fs::write(src.join("app/later.txt"), "only in the second snapshot").unwrap();
    t.backup(&[&src]);

    let mnt = t.path("mnt");
    let mut m = Mounted::start(mount_command(&t, &mnt), &mnt, t.path("mount.log"));
    assert!(is_mounted(&mnt));

    // `latest` is the newest; both snapshots are there by id.
    let in_snapshot = |snap: &Path| snap.join(src.strip_prefix("/").unwrap());
    let latest = in_snapshot(&mnt.join("latest"));
    assert_eq!(fs::read_to_string(latest.join("app/later.txt")).unwrap(), "only in the second snapshot");
    let older = in_snapshot(&mnt.join("by-id").join(&first[..8]));
    assert!(older.join("app/big.bin").exists() && !older.join("app/later.txt").exists());

    // What diff -r and cp -a see is what a restore writes.
    let out = t.path("restored");
    t.restore("latest", &out);
    let status = Command::new("diff").arg("-r").arg(restored(&out, &src)).arg(&latest).status().unwrap();
    assert!(status.success(), "diff -r of a restore against the mount");
    let copied = t.path("copied");
    let status = Command::new("cp").arg("-a").arg(latest.join("app")).arg(&copied).status().unwrap();
    assert!(status.success());
    let mut expected = tree_fingerprint(&src.join("app"));
    let mut got = tree_fingerprint(&copied);
    // cp -a of separate inodes cannot rebuild a hard link the mount shows as two files.
    for tree in [&mut expected, &mut got] {
        for node in tree.iter_mut() {
            node.hard_link_group = None;
        }
    }
    assert_same_tree(&expected, &got);

    // Attributes, holes, links.
    assert_eq!(xattr::get(latest.join("app/uploads/u02.txt"), "user.origin").unwrap().as_deref(), Some(&b"camera"[..]));
    assert_eq!(fs::read_link(latest.join("app/first")).unwrap(), Path::new("uploads/u00.txt"));
    let img = fs::File::open(latest.join("app/sparse.img")).unwrap();
    let seek = |offset, whence| nix::unistd::lseek(&img, offset, whence);
    assert_eq!(seek(0, nix::unistd::Whence::SeekData).unwrap(), 8 << 20, "the first data is after the hole");
    assert_eq!(seek(8 << 20, nix::unistd::Whence::SeekHole).unwrap(), (8 << 20) + 4096);
    use std::os::unix::fs::MetadataExt;
    assert!(img.metadata().unwrap().blocks() * 512 < 1 << 20, "a sparse file reports its holes as unallocated");
    assert_eq!(fs::read(latest.join("app/sparse.img")).unwrap(), fs::read(src.join("app/sparse.img")).unwrap());

    // Reading one snapshot while another is listed.
    let big = latest.join("app/big.bin");
    let reader = std::thread::spawn(move || fs::read(big).unwrap());
    let listed: Vec<_> = fs::read_dir(older.join("app/uploads")).unwrap().collect();
    assert_eq!(listed.len(), 51);
    assert_eq!(reader.join().unwrap(), fs::read(src.join("app/big.bin")).unwrap());

    // Read-only.
    assert!(fs::write(latest.join("app/new.txt"), "x").is_err());
    assert!(fs::OpenOptions::new().write(true).open(latest.join("app/later.txt")).is_err());

    let status = m.stop();
    assert!(status.success(), "SIGTERM ends the mount cleanly: {status}");
    assert!(!is_mounted(&mnt), "no mount is left behind");
    assert!(fs::read_dir(&mnt).unwrap().next().is_none(), "the mount point is empty again");
}

#[test]
fn a_mount_of_snapshots_without_xattrs_says_so_and_shows_them_once_one_has_some() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("d/f{i:02}.txt")), format!("file {i}\n").repeat(i + 1)).unwrap();
    }
    let first = t.backup(&[&src]);
    let counted = |id: &str| {
        let snap = t.snapshots_json().into_iter().find(|s| s["id"] == id).unwrap();
        snap["summary"]["entries_with_xattrs"].as_u64().unwrap()
    };
    let before = counted(&first);
    let mnt = t.path("mnt");
    let in_snapshot = |snap: &Path| snap.join(src.strip_prefix("/").unwrap()).join("d");
    let mount = |log: &str| Mounted::start(mount_command(&t, &mnt), &mnt, t.path(log));

    // No snapshot holds an xattr: the kernel is told there are none, and a
    // copy out of the mount is still whole.
    assert_eq!(before, 0, "neither the source nor the directories above it hold an xattr");
    let m = mount("mount.log");
    let latest = in_snapshot(&mnt.join("latest"));
    let err = xattr::list(latest.join("f01.txt")).map(|l| l.count()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EOPNOTSUPP), "{err}");
    let copied = t.path("copied");
    assert!(Command::new("cp").arg("-a").arg(&latest).arg(&copied).status().unwrap().success());
    assert_same_tree(&tree_fingerprint(&src.join("d")), &tree_fingerprint(&copied));
    drop(m);

    // One file gains an xattr: the next snapshot counts it, and the mount
    // (of both) shows xattrs again.
    xattr::set(src.join("d/f02.txt"), "user.origin", b"camera").unwrap();
    let second = t.backup(&[&src]);
    assert_eq!(counted(&second), before + 1);
    let _m = mount("mount2.log");
    let latest = in_snapshot(&mnt.join("latest"));
    assert_eq!(xattr::get(latest.join("f02.txt"), "user.origin").unwrap().as_deref(), Some(&b"camera"[..]));
    let older = in_snapshot(&mnt.join("by-id").join(&first[..8]));
    assert_eq!(xattr::list(older.join("f02.txt")).unwrap().count(), 0);
}

#[test]
fn hard_links_share_one_inode_per_snapshot_so_cp_a_out_of_the_mount_keeps_them() {
    use std::os::unix::fs::MetadataExt;
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    fs::write(src.join("a/report.txt"), "first quarter\n".repeat(100)).unwrap();
    fs::hard_link(src.join("a/report.txt"), src.join("b/report-link.txt")).unwrap();
    fs::hard_link(src.join("a/report.txt"), src.join("b/third.txt")).unwrap();
    fs::write(src.join("a/alone.txt"), "alone").unwrap();
    // Linked to a file the backup does not hold: alone in the snapshot.
    fs::write(t.path("outside.txt"), "half").unwrap();
    fs::hard_link(t.path("outside.txt"), src.join("a/half.txt")).unwrap();
    let first = t.backup(&[&src]);
    fs::write(src.join("a/report.txt"), "second quarter\n".repeat(100)).unwrap();
    let second = t.backup(&[&src]);

    let mnt = t.path("mnt");
    let _m = Mounted::start(mount_command(&t, &mnt), &mnt, t.path("mount.log"));
    let in_snapshot = |id: &str| mnt.join("by-id").join(&id[..8]).join(src.strip_prefix("/").unwrap());
    let md = |snap: &Path, p: &str| fs::metadata(snap.join(p)).unwrap();
    for (id, text) in [(&second, "second quarter\n"), (&first, "first quarter\n")] {
        let snap = in_snapshot(id);
        let report = md(&snap, "a/report.txt");
        assert_eq!(report.nlink(), 3, "the three names of one file");
        for link in ["b/report-link.txt", "b/third.txt"] {
            assert_eq!(md(&snap, link).ino(), report.ino(), "{link} is the same inode as a/report.txt");
            assert_eq!(fs::read_to_string(snap.join(link)).unwrap(), text.repeat(100));
        }
        assert_eq!(md(&snap, "a/alone.txt").nlink(), 1);
        assert_eq!(md(&snap, "a/half.txt").nlink(), 1, "its other name is not in the snapshot");
        assert_ne!(md(&snap, "a/half.txt").ino(), report.ino());
    }
    // Link groups are numbered per snapshot: the two snapshots' files stay apart.
    assert_ne!(md(&in_snapshot(&first), "a/report.txt").ino(), md(&in_snapshot(&second), "a/report.txt").ino());
    // The same snapshots by time: counted once, linked the same way.
    for by_time in fs::read_dir(mnt.join("by-time")).unwrap() {
        let snap = by_time.unwrap().path().join(src.strip_prefix("/").unwrap());
        let report = md(&snap, "a/report.txt");
        assert_eq!((report.nlink(), md(&snap, "b/third.txt").ino()), (3, report.ino()));
    }

    let copied = t.path("copied");
    assert!(Command::new("cp").arg("-a").arg(in_snapshot(&first)).arg(&copied).status().unwrap().success());
    let report = md(&copied, "a/report.txt");
    assert_eq!(report.nlink(), 3, "cp -a linked the copies as the snapshot had them");
    assert_eq!(md(&copied, "b/third.txt").ino(), report.ino());
    assert_eq!(fs::read_to_string(copied.join("b/report-link.txt")).unwrap(), "first quarter\n".repeat(100));
    assert_eq!(md(&copied, "a/half.txt").nlink(), 1);
}

#[test]
fn a_jobs_snapshots_are_under_by_job_with_their_database_dumps() {
    let env = JobEnv::new();
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/config.php"), "<?php // config").unwrap();
    sqlite_exec(&env.path("app.db"), "CREATE TABLE t (v);\nINSERT INTO t VALUES ('dumped');");
    env.config(
        "[jobs.app]\n[jobs.app.files]\npaths = [\"files\"]\n[[jobs.app.databases]]\nkind = \"sqlite\"\npath = \"app.db\"\n",
    )
    .init_repo();
    env.run(&["app"]).assert_ok();
    env.run(&["app"]).assert_ok();
    let dump = env.path("dump.db");
    env.engine(["restore", "app", "--database", "app", "--dump-to"]).arg(&dump).assert().success();

    let mnt = env.path("mnt");
    let mut cmd = env.cmd(["--repo", "main", "mount", "--job", "app"]);
    cmd.arg(&mnt);
    let m = Mounted::start(cmd, &mnt, env.path("mount.log"));
    let job = mnt.join("by-job/app");
    let times: Vec<String> =
        fs::read_dir(&job).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(times.len(), 3, "two snapshots and `latest`: {times:?}");
    let latest = job.join("latest");
    let dumps: Vec<PathBuf> = walk(&latest.join(".holdfast/databases")).into_iter().filter(|p| p.is_file()).collect();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    assert_eq!(
        fs::read(&dumps[0]).unwrap(),
        fs::read(&dump).unwrap(),
        "the dump in the mount is the one restore gives"
    );
    let files = latest.join(env.path("files").strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(files.join("config.php")).unwrap(), "<?php // config");
    drop(m);
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_without_fuse_fails_at_once_and_says_why() {
    let t = TestRepo::init();
    let mnt = t.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    // A mount namespace whose /dev has no fuse device.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} --repo {} mount {}",
        crate::util::holdfast_bin().display(),
        t.repo().display(),
        mnt.display()
    );
    let started = Instant::now();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FUSE is not available here (/dev/fuse:"), "{stderr}");

    // A mount point that is not a directory is named.
    fs::write(t.path("file"), "").unwrap();
    let out = t.cmd(["mount"]).arg(t.path("file")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));
}

#[test]
fn a_mount_killed_hard_leaves_a_dead_mount_that_the_next_mount_names_with_the_fix() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    t.backup(&[&src]);
    let mnt = t.path("mnt");
    let mount_cmd = || mount_command(&t, &mnt);
    let mut m = Mounted::start(mount_cmd(), &mnt, t.path("mount.log"));
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    // The kernel's mount outlives its server: the next mount says what to do.
    let out = mount_cmd().output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("umount -l"), "{stderr}");
    drop(m);
    assert!(!is_mounted(&mnt));
    // After `umount -l` (done by the drop above) it mounts again.
    let again = Mounted::start(mount_cmd(), &mnt, t.path("mount2.log"));
    drop(again);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
