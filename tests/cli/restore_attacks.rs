//! Restoring into a target that fights back: what a hostile local user or a
//! careless admin leaves in the way of `holdfast restore` (symlinks out of
//! the target, FIFOs, device nodes, files where directories go and the
//! reverse, read-only directories), another user watching the target while
//! a restore writes secrets into it, job restores aimed at the wrong place,
//! and restores stopped midway. Each test is an attack and what the restore
//! must do about it: never write, chmod or read anything outside the
//! target, never open what it finds in the way, never let another user read
//! a private file, never leave a partial file under a real name.
//!
//! These tests run as root: they make device nodes, and run a spy (or
//! holdfast itself) as `nobody` with `setpriv`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Pid, User, mkfifo};

use crate::jobs_util::{JobEnv, q, wait_for};
use crate::util::{
    Node, PASSPHRASE, TestRepo, assert_same_tree, holdfast_bin, restored, tree_fingerprint, write_random,
};

// ---------------------------------------------------------------- helpers

/// What `path` is now, not following a symlink there: "dir", "file",
/// "symlink", "fifo", "char device", ... or "nothing".
fn kind(path: &Path) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Err(_) => "nothing",
        Ok(md) => {
            let t = md.file_type();
            if t.is_dir() {
                "dir"
            } else if t.is_file() {
                "file"
            } else if t.is_symlink() {
                "symlink"
            } else if t.is_fifo() {
                "fifo"
            } else if t.is_char_device() {
                "char device"
            } else if t.is_socket() {
                "socket"
            } else {
                "block device"
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The temporary names (`.hf-*`) a restore left anywhere under `root`.
fn temporaries(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".hf-") {
                found.push(e.path());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// The first component of the absolute path `p` (`tmp` for `/tmp/x/y`).
fn first_component(p: &Path) -> PathBuf {
    PathBuf::from(p.components().nth(1).expect("an absolute path below /").as_os_str())
}

/// Run the command `c` and assert it is refused: a failure exit code (not
/// a panic, not a signal) and, in its stderr, every one of `says`.
#[track_caller]
fn assert_refused(c: &mut assert_cmd::Command, says: &[&str]) -> String {
    let out = c.output().expect("run holdfast");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "holdfast should refuse (exit 1 or 2), exited {code:?}: {c:?}\n{stderr}"
    );
    for s in says {
        assert!(stderr.contains(s), "the refusal should say {s:?}: {c:?}\n{stderr}");
    }
    stderr
}

/// `nobody`'s uid and gid.
fn nobody() -> (u32, u32) {
    let u = User::from_name("nobody").expect("look up nobody").expect("a user nobody");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// `setpriv` as nobody (its own group only), then `program`; a clean
/// environment with a system PATH (nobody cannot reach root's tools).
fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let (uid, gid) = nobody();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8");
    c
}

fn chown_recursive_to_nobody(path: &Path) {
    let (uid, gid) = nobody();
    let ok = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(path).status().expect("run chown");
    assert!(ok.success(), "chown -R nobody {}", path.display());
}

/// A tree of `dirs` × `per_dir` small public files (0644 in 0755
/// directories) and a `big` file of `big` bytes, under `root`.
fn public_tree(root: &Path, dirs: usize, per_dir: usize, big: u64) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..per_dir {
            fs::write(dir.join(format!("f{i:03}")), format!("public {d} {i}\n")).unwrap();
        }
        set_mode(&dir, 0o755);
    }
    write_random(&root.join("big"), 7, big);
    set_mode(&root.join("big"), 0o644);
    set_mode(root, 0o755);
}

// ---------------------------------------------------------------- the spy

/// A process running as `nobody` that walks `root` over and over, opening
/// (non-blocking, not following symlinks) and reading every entry it finds
/// — temporary names included — until the stop file appears, then makes a
/// last pass and writes, as JSON, everything it managed to read and every
/// name it saw.
const SPY: &str = r#"
import json, os, sys
root, stop, ready, result = sys.argv[1:5]
read, names, passes = set(), set(), 0
open(ready, 'w').close()
while True:
    last = os.path.exists(stop)
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            names.add(os.path.relpath(p, root))
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                data = os.read(fd, 256)
                if data:
                    read.add((os.path.relpath(p, root), data.decode('latin-1')))
            except OSError:
                pass
            finally:
                os.close(fd)
    passes += 1
    if last:
        break
with open(result + '.tmp', 'w') as f:
    json.dump({'passes': passes, 'read': sorted(read), 'names': sorted(names)}, f)
os.rename(result + '.tmp', result)
"#;

struct Spy {
    child: Child,
    stop: PathBuf,
    result: PathBuf,
}

/// What the spy saw.
struct Seen {
    passes: u64,
    /// (path below the watched root, the first bytes it read).
    read: Vec<(String, String)>,
    names: Vec<String>,
}

impl Spy {
    /// Start watching `root`; `spool` is a directory the spy may write to
    /// (its ready mark and what it saw). Returns once the spy runs.
    fn start(root: &Path, spool: &Path) -> Spy {
        fs::create_dir_all(spool).unwrap();
        set_mode(spool, 0o777);
        let (stop, ready, result) = (spool.join("stop"), spool.join("ready"), spool.join("seen.json"));
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let child = as_nobody(python)
            .arg("-c")
            .arg(SPY)
            .arg(root)
            .arg(&stop)
            .arg(&ready)
            .arg(&result)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the spy as nobody");
        let mut spy = Spy { child, stop, result };
        wait_for("the spy to start", Duration::from_secs(20), || {
            assert!(spy.child.try_wait().unwrap().is_none(), "the spy died at its start");
            ready.exists()
        });
        spy
    }

    /// Stop it (after one last pass) and collect what it saw.
    fn finish(mut self) -> Seen {
        fs::write(&self.stop, "").unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < end, "the spy did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = fs::read_to_string(&self.result).expect("the spy's findings");
        let v = crate::util::parse_json(&out);
        let pairs = v["read"].as_array().unwrap().iter().map(|p| {
            let p = p.as_array().unwrap();
            (p[0].as_str().unwrap().to_string(), p[1].as_str().unwrap().to_string())
        });
        Seen {
            passes: v["passes"].as_u64().unwrap(),
            read: pairs.collect(),
            names: v["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect(),
        }
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Seen {
    /// Panic if the spy read `secret`, naming where.
    #[track_caller]
    fn assert_never_read(&self, secret: &str) {
        let leaks: Vec<&(String, String)> = self.read.iter().filter(|(_, data)| data.contains(secret)).collect();
        assert!(leaks.is_empty(), "the spy (user nobody) read the secret during the restore: {leaks:?}");
    }

    fn read_any(&self, text: &str) -> bool {
        self.read.iter().any(|(_, data)| data.contains(text))
    }
}

// ---------------------------------------------------------------- symlinks in the target

/// A source directory with a few files at several depths.
fn small_source(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    write(&src.join("top.txt"), "top of the snapshot\n");
    write(&src.join("sub/deeper.txt"), "deeper in the snapshot\n");
    set_mode(&src.join("sub"), 0o751);
    src
}

/// An outside directory with a file in it and an unusual mode, to see any
/// write or chmod through a symlink.
fn outside_dir(path: &Path) -> Vec<Node> {
    write(&path.join("canary.txt"), "outside the target: never to be touched\n");
    set_mode(path, 0o710);
    tree_fingerprint(path)
}

/// `DEST/tmp` — a directory of the snapshot's paths — is a symlink to a
/// directory outside the target (or, in a second target, the backed-up
/// directory itself is one): the restore replaces the link with a real
/// directory and writes nothing, chmods nothing, in the directory it
/// pointed to.
#[test]
fn a_symlink_where_a_directory_goes_is_replaced_and_never_followed() {
    let t = TestRepo::init();
    let src = small_source(&t);
    t.backup(&[&src]);

    // The first directory of the snapshot's paths (`tmp`) is a link out.
    let (out, outside) = (t.path("out"), t.path("outside"));
    fs::create_dir(&out).unwrap();
    let before = outside_dir(&outside);
    symlink(&outside, out.join(first_component(&src))).unwrap();
    // In another target, the backed-up directory itself is a link out.
    let (out2, outside2) = (t.path("out2"), t.path("outside2"));
    let before2 = outside_dir(&outside2);
    fs::create_dir_all(restored(&out2, &src).parent().unwrap()).unwrap();
    symlink(&outside2, restored(&out2, &src)).unwrap();

    t.restore("latest", &out);
    t.restore("latest", &out2);

    assert_same_tree(&before, &tree_fingerprint(&outside));
    assert_same_tree(&before2, &tree_fingerprint(&outside2));
    assert_eq!(kind(&out.join(first_component(&src))), "dir", "the link is now a real directory");
    assert_eq!(kind(&restored(&out2, &src)), "dir", "the link is now a real directory");
    for o in [&out, &out2] {
        assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(o, &src)));
    }
}

/// A file's path in the target is a symlink to a file outside, another is
/// a dangling symlink to a path outside, a third a hard link to a file
/// outside: the outside files are not written, truncated or chmodded,
/// nothing is created where the dangling link points, and the target holds
/// the restored regular files.
#[test]
fn a_link_where_a_file_goes_is_replaced_and_what_it_links_to_untouched() {
    let t = TestRepo::init();
    let src = small_source(&t);
    write(&src.join("sub/linked.txt"), "restored over a hard link\n");
    set_mode(&src.join("top.txt"), 0o604);
    set_mode(&src.join("sub/linked.txt"), 0o604);
    t.backup(&[&src]);
    let (outside, hard) = (t.path("outside.txt"), t.path("outside-hard.txt"));
    for f in [&outside, &hard] {
        write(f, "an outside file: never to be written\n");
        set_mode(f, 0o640);
    }
    let before = [tree_fingerprint(&outside), tree_fingerprint(&hard)];
    let nowhere = t.path("created-through-a-link");
    let out = t.path("out");
    fs::create_dir_all(restored(&out, &src.join("sub"))).unwrap();
    symlink(&outside, restored(&out, &src.join("top.txt"))).unwrap();
    symlink(&nowhere, restored(&out, &src.join("sub/deeper.txt"))).unwrap();
    fs::hard_link(&hard, restored(&out, &src.join("sub/linked.txt"))).unwrap();

    t.restore("latest", &out);

    assert_same_tree(&before[0], &tree_fingerprint(&outside));
    assert_same_tree(&before[1], &tree_fingerprint(&hard));
    assert_eq!(kind(&nowhere), "nothing", "nothing was created through the dangling link");
    for f in ["top.txt", "sub/deeper.txt", "sub/linked.txt"] {
        assert_eq!(kind(&restored(&out, &src.join(f))), "file", "{f} is now a regular file");
    }
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
}

// ---------------------------------------------------------------- special files in the way

/// A FIFO where a file goes and a FIFO where a directory goes: the restore
/// does not block on them (it would, forever, were it to open one for
/// writing) and replaces them. A character device (a copy of /dev/full,
/// made with mknod) where a file goes is replaced and never written: a
/// write to it fails with "no space left", which would fail the restore.
/// A listening socket where a file goes is replaced too.
#[test]
fn fifos_and_devices_in_the_way_are_replaced_never_opened() {
    let t = TestRepo::init();
    let src = small_source(&t);
    write(&src.join("device.txt"), "where the device was\n");
    write(&src.join("socket.txt"), "where the socket was\n");
    t.backup(&[&src]);
    let out = t.path("out");
    let at = |rel: &str| restored(&out, &src.join(rel));
    fs::create_dir_all(at("")).unwrap();
    mkfifo(&at("top.txt"), Mode::from_bits_truncate(0o666)).unwrap();
    mkfifo(&at("sub"), Mode::from_bits_truncate(0o666)).unwrap();
    mknod(&at("device.txt"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 7))
        .expect("mknod a copy of /dev/full (the tests run as root)");
    assert_eq!(
        fs::write(at("device.txt"), "x").unwrap_err().raw_os_error(),
        Some(nix::libc::ENOSPC),
        "the node is /dev/full"
    );
    let _listener = std::os::unix::net::UnixListener::bind(at("socket.txt")).unwrap();

    t.cmd(["restore", "latest", "--to"]).arg(&out).timeout(Duration::from_secs(30)).assert().success();

    assert_eq!(kind(&at("top.txt")), "file");
    assert_eq!(kind(&at("sub")), "dir");
    assert_eq!(kind(&at("device.txt")), "file");
    assert_eq!(kind(&at("socket.txt")), "file");
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&at("")));
}

// ---------------------------------------------------------------- files and directories swapped

/// A regular file where the snapshot has a directory: the file is
/// replaced by the directory, with everything in it.
#[test]
fn a_file_where_a_directory_goes_is_replaced_by_the_directory() {
    let t = TestRepo::init();
    let src = small_source(&t);
    t.backup(&[&src]);
    let out = t.path("out");
    write(&restored(&out, &src.join("sub")), "a file in the way of the directory\n");

    t.restore("latest", &out);

    assert_eq!(kind(&restored(&out, &src.join("sub"))), "dir");
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
}

/// A directory (with someone's file in it) where the snapshot has a file:
/// the restore stops with an error naming the path, the directory and its
/// content stay, nothing is written outside the target (a symlink out of
/// the target elsewhere in the way is not followed either), and no
/// temporary file is left.
#[test]
fn a_directory_where_a_file_goes_stops_the_restore_with_an_error_naming_it() {
    let t = TestRepo::init();
    let src = small_source(&t);
    t.backup(&[&src]);
    let (out, outside) = (t.path("out"), t.path("outside"));
    let before = outside_dir(&outside);
    let in_the_way = restored(&out, &src.join("top.txt"));
    write(&in_the_way.join("mine.txt"), "someone's file\n");
    symlink(&outside, restored(&out, &src.join("sub"))).unwrap();

    let stderr = assert_refused(
        t.cmd(["restore", "latest", "--to"]).arg(&out),
        &[&in_the_way.display().to_string(), "directory"],
    );

    assert_eq!(fs::read_to_string(in_the_way.join("mine.txt")).unwrap(), "someone's file\n", "{stderr}");
    assert_same_tree(&before, &tree_fingerprint(&outside));
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new(), "no temporary file is left");
}

// ---------------------------------------------------------------- read-only directories

/// A source with a read-only (0555) directory holding a 0644 and a 0400
/// file and a read-only subdirectory.
fn read_only_source(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    write(&src.join("ro/open.txt"), "readable by all\n");
    write(&src.join("ro/owner-only.txt"), "readable by its owner only\n");
    write(&src.join("ro/inner/deep.txt"), "in a read-only directory in a read-only directory\n");
    set_mode(&src.join("ro/owner-only.txt"), 0o400);
    set_mode(&src.join("ro/inner"), 0o555);
    set_mode(&src.join("ro"), 0o555);
    set_mode(&src, 0o755);
    src
}

/// A snapshot with read-only directories and a 0400 file restores exactly
/// (the directories can be filled because they get their modes only at the
/// end), and restores again over itself to the same tree.
#[test]
fn read_only_directories_and_files_are_restored_exactly() {
    let t = TestRepo::init();
    let src = read_only_source(&t);
    t.backup(&[&src]);
    let out = t.path("out");

    t.restore("latest", &out);
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
    t.restore("latest", &out);
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
}

/// The same, restored by an unprivileged user (nobody, with a copy of the
/// repository it may read): the tree comes back with the same modes, times
/// and contents (owned by nobody), and a second restore by the same user
/// into the same target gives the same tree again — read-only directories
/// of its own making do not stop it.
#[test]
fn read_only_directories_restore_twice_for_an_unprivileged_user() {
    let t = TestRepo::init();
    let src = read_only_source(&t);
    t.backup(&[&src]);
    set_mode(&t.path(""), 0o755);
    chown_recursive_to_nobody(t.repo());
    let out = t.path("nobody-out");
    fs::create_dir(&out).unwrap();
    chown_recursive_to_nobody(&out);
    let (uid, gid) = nobody();
    let expected: Vec<Node> = tree_fingerprint(&src).into_iter().map(|n| Node { uid, gid, ..n }).collect();
    let restore_as_nobody = || {
        let mut c = assert_cmd::Command::from_std(as_nobody(holdfast_bin()));
        c.arg("--repo").arg(t.repo()).args(["restore", "latest", "--to"]).arg(&out);
        c.env("HOLDFAST_PASSPHRASE", PASSPHRASE).timeout(Duration::from_secs(60));
        c
    };

    restore_as_nobody().assert().success();
    assert_same_tree(&expected, &tree_fingerprint(&restored(&out, &src)));

    let again = restore_as_nobody().output().unwrap();
    assert!(
        again.status.success(),
        "a second restore by nobody into its own restored tree should succeed, exited {:?}:\n{}",
        again.status.code(),
        String::from_utf8_lossy(&again.stderr)
    );
    assert_same_tree(&expected, &tree_fingerprint(&restored(&out, &src)));
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------- twice into the same target

/// A second restore into the same target gives the same tree as the first
/// (and as the source): files, an empty file, a sparse file, hard links,
/// symlinks (one dangling), a FIFO, a read-only directory, a 0400 file, a
/// setgid directory, an extended attribute; and no temporary file is left.
#[test]
fn restoring_twice_into_the_same_target_gives_the_same_tree() {
    let t = TestRepo::init();
    let src = t.path("src");
    write(&src.join("a.txt"), "a\n");
    write(&src.join("empty"), "");
    fs::hard_link(src.join("a.txt"), src.join("a-link.txt")).unwrap();
    symlink("a.txt", src.join("rel-link")).unwrap();
    symlink("/nonexistent/target", src.join("dangling")).unwrap();
    mkfifo(&src.join("pipe"), Mode::from_bits_truncate(0o640)).unwrap();
    {
        let f = fs::File::create(src.join("sparse")).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"data in the middle", 4 << 20).unwrap();
    }
    write(&src.join("shared/note.txt"), "group work\n");
    set_mode(&src.join("shared"), 0o2775);
    write(&src.join("ro/locked.txt"), "owner only\n");
    set_mode(&src.join("ro/locked.txt"), 0o400);
    set_mode(&src.join("ro"), 0o555);
    xattr::set(src.join("a.txt"), "user.origin", b"restore_attacks").unwrap();
    t.backup(&[&src]);
    let out = t.path("out");

    t.restore("latest", &out);
    let first = tree_fingerprint(&out);
    t.restore("latest", &out);

    assert_same_tree(&first, &tree_fingerprint(&out));
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new(), "no temporary file is left");
}

// ---------------------------------------------------------------- another user watching

/// The marker of the spy tests' secret: in a root-owned 0600 file, never
/// readable by another user.
const SECRET: &str = "HF-SPY-SECRET 7e1f0c: the launch codes";

/// A source for the spy tests: 2000 public files and a 32 MiB file (a
/// restore that takes a noticeable time), with a root-owned 0600 file
/// holding [`SECRET`] in the middle of them, all in directories anyone may
/// enter.
fn spy_source(src: &Path) {
    public_tree(src, 20, 100, 32 << 20);
    write(&src.join("d15/secret.key"), &format!("{SECRET}\n"));
    set_mode(&src.join("d15/secret.key"), 0o600);
    set_mode(&src.join("d15"), 0o755);
}

/// `nobody`, walking and reading everything under the target over and over
/// during two restores into it (the first into an empty target, the second
/// over the first, while the tree is already open to all), never reads the
/// root-owned 0600 secret, though it reads the public files.
#[test]
fn another_user_never_reads_a_private_file_during_an_engine_restore() {
    let t = TestRepo::init();
    set_mode(&t.path(""), 0o755);
    let src = t.path("src");
    spy_source(&src);
    t.backup(&[&src]);
    let out = t.path("out");
    fs::create_dir(&out).unwrap();
    set_mode(&out, 0o755);

    let spy = Spy::start(&out, &t.path("spy"));
    t.restore("latest", &out);
    t.restore("latest", &out);
    let seen = spy.finish();

    seen.assert_never_read(SECRET);
    // It was looking: it read the public files between the restores. (It
    // never sees the temporary files: a restore narrows every directory it
    // writes into to 0700 until it is done, even one that was already there.)
    assert!(seen.read_any("public 19 99"), "the spy reads what is public ({} passes)", seen.passes);
    let secret = restored(&out, &src.join("d15/secret.key"));
    assert_eq!(fs::read_to_string(&secret).unwrap(), format!("{SECRET}\n"));
    assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o7777, 0o600);
}

/// A directory already in the target with a wider mode (0755) than the
/// snapshot's (0700), holding in the snapshot a 0644 file whose privacy
/// comes from its directory: `nobody`, watching during the restore, never
/// reads that file — the restore does not fill a directory that others
/// may enter before it has its recorded mode.
#[test]
fn a_wider_directory_already_in_the_target_does_not_expose_a_private_one() {
    let t = TestRepo::init();
    set_mode(&t.path(""), 0o755);
    let src = t.path("src");
    spy_source(&src);
    write(&src.join("vault/id.key"), &format!("{SECRET} (in a 0700 directory)\n"));
    set_mode(&src.join("vault/id.key"), 0o644);
    set_mode(&src.join("vault"), 0o700);
    t.backup(&[&src]);
    let out = t.path("out");
    // An older copy, from before the directory was made private.
    fs::create_dir_all(restored(&out, &src.join("vault"))).unwrap();
    Command::new("chmod").arg("-R").arg("755").arg(&out).status().unwrap();

    let spy = Spy::start(&out, &t.path("spy"));
    t.restore("latest", &out);
    let seen = spy.finish();

    seen.assert_never_read(SECRET);
    assert!(seen.read_any("public 19 99"), "the spy reads what is public ({} passes)", seen.passes);
    assert_eq!(fs::metadata(restored(&out, &src.join("vault"))).unwrap().mode() & 0o7777, 0o700);
}

/// `nobody`, walking and reading everything beside and under a job
/// restore's target during a restore into it and a second one with
/// `--overwrite`, never reads the root-owned 0600 secret — it does see the
/// staging directory the restore fills (it was looking at the right time).
#[test]
fn another_user_never_reads_a_private_file_during_a_job_restore() {
    let env = JobEnv::new();
    set_mode(&env.path(""), 0o755);
    spy_source(&env.path("data"));
    env.config("[jobs.app]\n[jobs.app.files]\npaths = [\"data\"]\n").init_repo();
    env.run(&["app"]).assert_ok();
    let restores = env.path("restores");
    fs::create_dir(&restores).unwrap();
    set_mode(&restores, 0o755);
    let out = restores.join("out");

    let spy = Spy::start(&restores, &env.path("spy"));
    env.engine(["restore", "app", "--files", "--to"]).arg(&out).assert().success();
    env.engine(["restore", "app", "--files", "--overwrite", "--to"]).arg(&out).assert().success();
    let seen = spy.finish();

    seen.assert_never_read(SECRET);
    assert!(
        seen.names.iter().any(|n| n.starts_with(".out.holdfast-partial-")),
        "the spy saw the staging directory ({} passes): {:?}",
        seen.passes,
        &seen.names[..seen.names.len().min(20)]
    );
    let secret = restored(&out, &env.path("data/d15/secret.key"));
    assert_eq!(fs::read_to_string(&secret).unwrap(), format!("{SECRET}\n"));
}

// ---------------------------------------------------------------- job restore targets

/// A job `app` with one file set, run once; returns the set's directory.
fn job_with_files(env: &JobEnv, config: Option<String>) -> PathBuf {
    let data = env.path("data");
    write(&data.join("report.txt"), "quarterly figures\n");
    write(&data.join("sub/notes.txt"), "notes\n");
    match config {
        Some(text) => {
            fs::create_dir_all(env.config_path().parent().unwrap()).unwrap();
            fs::write(env.config_path(), text).unwrap();
        }
        None => {
            env.config("[jobs.app]\n[jobs.app.files]\npaths = [\"data\"]\n");
        }
    }
    env.init_repo();
    env.run(&["app"]).assert_ok();
    data
}

/// `--to` an existing regular file, or a non-empty directory, without
/// `--overwrite`: refused before anything moves; the file and the
/// directory are as they were.
#[test]
fn a_job_restore_refuses_an_existing_file_or_non_empty_directory_without_overwrite() {
    let env = JobEnv::new();
    job_with_files(&env, None);
    let file = env.path("precious.txt");
    write(&file, "precious, not a directory\n");
    let dir = env.path("full");
    write(&dir.join("mine.txt"), "mine\n");
    let (file_before, dir_before) = (tree_fingerprint(&file), tree_fingerprint(&dir));

    assert_refused(env.engine(["restore", "app", "--files", "--to"]).arg(&file), &["--overwrite"]);
    assert_refused(env.engine(["restore", "app", "--files", "--to"]).arg(&dir), &["not empty", "--overwrite"]);

    assert_same_tree(&file_before, &tree_fingerprint(&file));
    assert_same_tree(&dir_before, &tree_fingerprint(&dir));
    assert_eq!(staging_dirs(&env.path("")), Vec::<String>::new());
}

/// `--overwrite` of a directory with a file system mounted inside it (here
/// one that `one_file_system` kept out of the snapshot): refused before
/// anything moves, so nothing on the mount is deleted and the mount stays
/// where it is.
#[test]
fn overwrite_refuses_a_directory_with_a_file_system_mounted_inside() {
    let env = JobEnv::new();
    let site = env.path("site");
    write(&site.join("index.html"), "<h1>shop</h1>\n");
    fs::create_dir_all(site.join("uploads")).unwrap();
    let mounted = crate::util::SmallTmpfs::mount(&site.join("uploads"), 4);
    write(&site.join("uploads/photo.jpg"), "only on the mount\n");
    env.config("[jobs.site]\n[jobs.site.files]\npaths = [\"site\"]\none_file_system = true\n").init_repo();
    env.run(&["site"]).assert_ok();
    let before = tree_fingerprint(&site);

    assert_refused(
        env.engine(["restore", "site", "--files", "--path"]).arg(&site).args(["--overwrite", "--to"]).arg(&site),
        &["mounted below", "uploads", "unmount"],
    );

    assert_same_tree(&before, &tree_fingerprint(&site));
    assert_eq!(fs::read_to_string(site.join("uploads/photo.jpg")).unwrap(), "only on the mount\n");
    assert_eq!(staging_dirs(&env.path("")), Vec::<String>::new());
    drop(mounted);
}

/// The staging directories (`.NAME.holdfast-partial-*`) in `dir`.
fn staging_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".holdfast-partial-"))
        .collect();
    v.sort();
    v
}

/// `--to` a symlink to a directory (here, the directory that holds the
/// repository): refused without `--overwrite`, the link and the directory
/// untouched; with `--overwrite`, the link itself is replaced by the
/// restored tree and the directory it pointed to (the repository) is
/// untouched.
#[test]
fn a_job_restore_to_a_symlink_never_touches_where_it_points() {
    let env = JobEnv::new();
    let data = job_with_files(&env, None);
    let link = env.path("link");
    symlink(env.path(""), &link).unwrap();
    let repo_before = tree_fingerprint(&env.repo());

    assert_refused(env.engine(["restore", "app", "--files", "--to"]).arg(&link), &["symlink", "--overwrite"]);
    assert_eq!(fs::read_link(&link).unwrap(), env.path(""), "the link is as it was");
    assert_same_tree(&repo_before, &tree_fingerprint(&env.repo()));

    env.engine(["restore", "app", "--files", "--overwrite", "--to"]).arg(&link).assert().success();
    assert_eq!(kind(&link), "dir", "the link itself was replaced");
    assert_eq!(fs::read_to_string(restored(&link, &data.join("report.txt"))).unwrap(), "quarterly figures\n");
    assert_eq!(kind(&env.repo()), "dir");
    env.engine(["snapshots", "app"]).assert().success();
    assert_eq!(staging_dirs(&env.path("")), Vec::<String>::new());
}

/// `--overwrite` into a directory that holds the repository, the spool,
/// holdfast's state or the config file in use (each in its own directory;
/// named directly, through a symlinked parent, or as a parent of all) is
/// refused with a message naming what it holds, and nothing moves.
#[test]
fn a_job_restore_never_overwrites_the_repository_spool_state_or_config() {
    let env = JobEnv::with_config_file("etc/holdfast.toml", "main");
    let d = env.path("");
    let config = format!(
        "[repositories.main]\npath = {}\npassphrase_file = {}\n\n\
         [defaults]\nspool = {}\nstate_dir = {}\nrepositories = [\"main\"]\nretries = 0\n\n\
         [jobs.app]\n[jobs.app.files]\npaths = [{}]\n",
        q(d.join("vault/repo")),
        q(d.join("passphrase")),
        q(d.join("var/spool")),
        q(d.join("lib/state")),
        q(d.join("data")),
    );
    job_with_files(&env, Some(config));
    symlink(&d, env.path("alias")).unwrap();
    let everything =
        || ["vault", "var", "lib", "etc"].iter().map(|p| (p.to_string(), names_under(&d.join(p)))).collect::<Vec<_>>();
    let before = everything();
    let config_text = fs::read_to_string(env.config_path()).unwrap();

    for (to, says) in [
        (d.join("vault"), "repository"),
        (env.path("alias/vault"), "repository"),
        (d.join("vault/repo"), "repository"),
        (d.join("var"), "spool"),
        (d.join("lib"), "state"),
        (d.join("etc"), "config"),
        (d.join("etc/holdfast.toml"), "config"),
        (d.clone(), "repository"),
    ] {
        assert_refused(env.engine(["restore", "app", "--files", "--overwrite", "--to"]).arg(&to), &[says]);
    }

    assert_eq!(everything(), before, "nothing moved");
    assert_eq!(fs::read_to_string(env.config_path()).unwrap(), config_text);
    assert_eq!(staging_dirs(&d), Vec::<String>::new());
    env.engine(["snapshots", "app"]).assert().success();
}

/// Every path under `dir`, relative, sorted (what a move would change).
fn names_under(dir: &Path) -> Vec<String> {
    tree_fingerprint(dir)
        .into_iter()
        .filter(|n| n.kind != crate::util::Kind::File || !String::from_utf8_lossy(&n.path).contains("lock"))
        .map(|n| String::from_utf8_lossy(&n.path).into_owned())
        .collect()
}

/// `--overwrite` into a directory inside the repository (its `snapshots`
/// or `packs`) or inside the spool is refused like one that holds them:
/// replacing it would destroy the repository's snapshots or data, or the
/// job's spool. The repository still lists its snapshot afterwards.
#[test]
fn a_job_restore_never_overwrites_a_directory_inside_the_repository_or_spool() {
    let env = JobEnv::new();
    job_with_files(&env, None);
    let repo_before = names_under(&env.repo());

    for (to, says) in [
        (env.repo().join("snapshots"), "repository"),
        (env.repo().join("packs"), "repository"),
        (env.spool().join("app"), "spool"),
    ] {
        assert_refused(env.engine(["restore", "app", "--files", "--overwrite", "--to"]).arg(&to), &[says]);
    }

    assert_eq!(names_under(&env.repo()), repo_before, "nothing in the repository moved");
    assert_eq!(env.snapshots_json("app").len(), 1, "the repository still lists its snapshot");
    assert_eq!(staging_dirs(&env.repo()), Vec::<String>::new());
}

// ---------------------------------------------------------------- sockets

/// A socket in the snapshot is not recreated: the restore says so on
/// stderr, naming its place in the target (an engine restore and a job
/// restore alike), and restores the rest.
#[test]
fn a_socket_in_the_snapshot_is_not_restored_and_the_restore_says_so() {
    let env = JobEnv::new();
    let data = env.path("data");
    write(&data.join("app.conf"), "listen = app.sock\n");
    let _listener = std::os::unix::net::UnixListener::bind(data.join("app.sock")).unwrap();
    env.config("[jobs.app]\n[jobs.app.files]\npaths = [\"data\"]\n").init_repo();
    env.run(&["app"]).assert_ok();
    let (out, job_out) = (env.path("out"), env.path("job-out"));

    let engine = env.engine(["--repo", "main", "restore", "latest", "--to"]).arg(&out).output().unwrap();
    let job = env.engine(["restore", "app", "--files", "--to"]).arg(&job_out).output().unwrap();

    for (ran, target) in [(&engine, &out), (&job, &job_out)] {
        let stderr = String::from_utf8_lossy(&ran.stderr);
        assert!(matches!(ran.status.code(), Some(0) | Some(3)), "the restore is done: {stderr}");
        let sock = restored(target, &data.join("app.sock"));
        assert!(
            stderr.contains("socket") && stderr.contains(&sock.display().to_string()),
            "a warning names {} as a socket not restored:\n{stderr}",
            sock.display()
        );
        assert!(!stderr.contains("holdfast-partial"), "the warning names the target, not a staging path:\n{stderr}");
        assert_eq!(kind(&sock), "nothing");
        assert_eq!(fs::read_to_string(restored(target, &data.join("app.conf"))).unwrap(), "listen = app.sock\n");
    }
}

// ---------------------------------------------------------------- interrupted

const BIG: u64 = 128 << 20;

/// A temporary file of the restore in `dir` that has some of its bytes
/// written, and how many.
fn partly_written(dir: &Path) -> Option<(PathBuf, u64)> {
    fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let md = e.metadata().ok()?;
        let written = md.blocks() * 512;
        (e.file_name().to_string_lossy().starts_with(".hf-") && md.is_file() && written > 0 && written < md.len())
            .then(|| (e.path(), written))
    })
}

/// Start `restore latest --to out` of `t`, wait until the big file is
/// being written (under its temporary name) and send `signal`; how it
/// ended.
fn interrupt_restore(t: &TestRepo, src: &Path, out: &Path, signal: Signal) -> (std::process::Output, u64) {
    let mut child = Command::new(holdfast_bin())
        .arg("--repo")
        .arg(t.repo())
        .args(["restore", "latest", "--to"])
        .arg(out)
        .env("HOLDFAST_PASSPHRASE", PASSPHRASE)
        .env_remove("HOLDFAST_REPOSITORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = restored(out, src);
    let end = Instant::now() + Duration::from_secs(60);
    let written = loop {
        if let Some((_, written)) = partly_written(&dir) {
            break written;
        }
        if child.try_wait().unwrap().is_some() {
            panic!("the restore ended before it could be caught writing the big file");
        }
        assert!(Instant::now() < end, "the restore never started writing");
        std::thread::sleep(Duration::from_millis(1));
    };
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the restore did not stop after {signal}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (child.wait_with_output().unwrap(), written)
}

/// A source with one big file (and a small one).
fn big_source(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    write(&src.join("small.txt"), "small\n");
    write_random(&src.join("big"), 10, BIG);
    src
}

/// SIGTERM while the big file is being written: the restore stops (exit
/// 143), the big file is not under its name with part of its content, and
/// no temporary file is left.
#[test]
fn a_restore_stopped_by_sigterm_leaves_no_partial_file_and_no_temporaries() {
    let t = TestRepo::init();
    let src = big_source(&t);
    t.backup(&[&src]);
    let out = t.path("out");

    let (ran, written) = interrupt_restore(&t, &src, &out, Signal::SIGTERM);

    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(143), "caught after {written} bytes:\n{stderr}");
    assert_no_partial_file(&restored(&out, &src.join("big")), &src.join("big"));
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new(), "SIGTERM removes the temporary files");
}

/// SIGKILL while the big file is being written: temporary files may stay,
/// but the big file is never under its name with part of its content.
#[test]
fn a_restore_killed_midway_leaves_no_partial_file_under_its_name() {
    let t = TestRepo::init();
    let src = big_source(&t);
    t.backup(&[&src]);
    let out = t.path("out");

    let (ran, written) = interrupt_restore(&t, &src, &out, Signal::SIGKILL);

    assert_eq!(ran.status.code(), None, "killed after {written} bytes");
    assert_no_partial_file(&restored(&out, &src.join("big")), &src.join("big"));
}

/// `path` is absent, or the whole of `source`.
#[track_caller]
fn assert_no_partial_file(path: &Path, source: &Path) {
    if kind(path) == "nothing" {
        return;
    }
    assert!(
        fs::read(path).unwrap() == fs::read(source).unwrap(),
        "{} is under its final name with partial content",
        path.display()
    );
}

/// SIGTERM during a job restore with `--overwrite`: the restore stops
/// (exit 143), its staging directory is removed, and the target is as it
/// was.
#[test]
fn a_job_restore_stopped_by_sigterm_leaves_the_target_as_it_was() {
    let env = JobEnv::new();
    write(&env.path("big/small.txt"), "small\n");
    write_random(&env.path("big/blob"), 11, BIG);
    env.config("[jobs.big]\n[jobs.big.files]\npaths = [\"big\"]\n").init_repo();
    env.run(&["big"]).assert_ok();
    let dest = env.path("dest");
    write(&dest.join("known.txt"), "the old content\n");
    let before = tree_fingerprint(&dest);

    let mut cmd = env.cmd(["restore", "big", "--files", "--overwrite", "--to"]);
    cmd.arg(&dest);
    let mut restore = env.start(cmd);
    let staged = |env: &JobEnv| {
        staging_dirs(&env.path("")).iter().find_map(|s| partly_written(&restored(&env.path(s), &env.path("big"))))
    };
    wait_for("the restore to write the big file", Duration::from_secs(60), || {
        assert!(restore.is_running(), "the restore ended before it could be caught writing");
        staged(&env).is_some()
    });
    kill(Pid::from_raw(restore.pid() as i32), Signal::SIGTERM).unwrap();
    let ran = restore.wait();

    assert_eq!(ran.status.code(), Some(143), "{ran:?}");
    assert_same_tree(&before, &tree_fingerprint(&dest));
    assert_eq!(staging_dirs(&env.path("")), Vec::<String>::new(), "the staging directory is removed");
}
