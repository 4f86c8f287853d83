//! Whole-system file sets (P11): everything a Linux server's files carry
//! comes back — ACLs, capabilities, `trusted.`/`security.` attributes, inode
//! flags, device nodes, FIFOs, hard links, sparse files — checked with the
//! system's own tools (`getfacl`, `getcap`, `lsattr`, `getfattr`, `stat`,
//! `sha256sum`) on a tree made here and on this machine's `/etc` and
//! `/usr/bin`, and against what `tar --xattrs --acls --selinux` keeps.
//!
//! These tests need root (owners, capabilities, `trusted.` attributes,
//! `chattr +i`, device nodes, mounts) and the `acl`, `attr`, `libcap2-bin`
//! and `e2fsprogs` packages, which the test command installs.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{TestRepo, restored, stderr_of, write_random};

pub(crate) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the whole-system tests need root (capabilities, trusted.* attributes, chattr +i, mknod, mount)"
    );
}

/// Run a system tool in `dir`; its stdout. Fails the test, naming the tool,
/// when it is missing or fails.
pub(crate) fn tool(dir: &Path, argv: &[&str]) -> String {
    let out =
        Command::new(argv[0]).args(&argv[1..]).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("{}: {e} (the test command installs acl, attr, libcap2-bin, e2fsprogs)", argv[0])
        });
    assert!(
        out.status.success(),
        "{} in {} failed: {}",
        argv.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A shell pipeline run in `dir`; its stdout.
fn sh(dir: &Path, script: &str) -> String {
    tool(dir, &["sh", "-c", script])
}

/// Sorted lines, so two listings compare regardless of directory order.
fn sorted(text: String) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// `getfacl` and `getfattr` print a block per file (`# file: …` first, a
/// blank line after): one line per block, sorted.
fn blocks(text: String) -> Vec<String> {
    let mut out: Vec<String> =
        text.split("\n\n").map(|b| b.trim().replace('\n', " | ")).filter(|b| !b.is_empty()).collect();
    out.sort();
    out
}

/// What each tool says about the tree under `dir`, relative paths only:
/// ACLs, capabilities, inode flags, every extended attribute, type, mode,
/// owner, size, mtime, link target, device numbers, and the SHA-256 of
/// every regular file.
fn describe(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("getfacl -R", blocks(tool(dir, &["getfacl", "-R", "-p", "-n", "."]))),
        ("getcap -r", sorted(tool(dir, &["getcap", "-r", "."]))),
        // `I` (an indexed directory) and `e` (extents) are how ext4 laid a
        // file out, not attributes anyone sets: masked.
        (
            "lsattr -R",
            sorted(sh(
                dir,
                "find . \\( -type f -o -type d \\) -print0 | xargs -0 lsattr -d | sed 's/^\\(.\\{11\\}\\)I/\\1-/; s/^\\(.\\{14\\}\\)e/\\1-/'",
            )),
        ),
        ("getfattr", blocks(sh(dir, "getfattr -R -h -d -m - -e hex ."))),
        // A directory's size is how the file system laid it out, not metadata.
        (
            "stat",
            sorted(sh(dir, "find . -type d -printf '%p %y %m %U %G %T@\\n' -o -printf '%p %y %m %U %G %s %T@ %l\\n'")),
        ),
        ("devices", sorted(sh(dir, "find . \\( -type c -o -type b \\) -exec stat -c '%n %t:%T' {} +"))),
        ("sha256", sorted(sh(dir, "find . -type f -print0 | xargs -0 -r sha256sum"))),
    ]
}

/// Every tool of [`describe`] says the same of `actual` as of `expected`.
pub(crate) fn assert_same(expected: &Path, actual: &Path) {
    for ((what, want), (_, got)) in describe(expected).into_iter().zip(describe(actual)) {
        let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
        let extra: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: {} differs from {}\nmissing: {missing:#?}\nextra: {extra:#?}",
            actual.display(),
            expected.display()
        );
    }
}

/// Immutable and append-only files cannot be deleted; the temporary
/// directory's cleanup needs them cleared first.
struct ClearFlags(Vec<PathBuf>);

impl Drop for ClearFlags {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").args(["-R", "-i", "-a"]).arg(p).output();
        }
    }
}

/// A file or tree a test makes outside its temporary directory (in `/` or
/// `/usr/bin`), removed when the test ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("chattr").args(["-R", "-i", "-a"]).arg(&self.0).output();
        let _ = fs::remove_dir_all(&self.0).or_else(|_| fs::remove_file(&self.0));
    }
}

/// A tree with every kind of metadata a server has. The socket is left
/// out: restore skips sockets (and says so), so it is made separately.
fn make_system_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("shared/project")).unwrap();
    fs::create_dir_all(p("bin")).unwrap();
    fs::create_dir_all(p("flags/noatime-dir")).unwrap();
    fs::create_dir_all(p("dev")).unwrap();
    fs::create_dir_all(p("links/a")).unwrap();
    fs::create_dir_all(p("links/b")).unwrap();

    // POSIX ACLs: an access ACL on a file, access and default ACLs on a
    // directory (what a shared folder has).
    fs::write(p("shared/report.txt"), b"quarterly numbers\n").unwrap();
    tool(root, &["setfacl", "-m", "u:nobody:rw,g:daemon:r", "shared/report.txt"]);
    tool(root, &["setfacl", "-m", "u:nobody:rwx", "shared/project"]);
    tool(root, &["setfacl", "-d", "-m", "u:nobody:rwx,g:daemon:rx", "shared/project"]);
    fs::write(p("shared/project/plan.md"), b"# plan\n").unwrap();

    // A capability (what /usr/bin/ping has), on a file owned by another
    // user: chown clears capabilities, so the restore must chown first.
    fs::write(p("bin/ping-like"), b"\x7fELF not really\n").unwrap();
    std::os::unix::fs::chown(p("bin/ping-like"), Some(65534), Some(65534)).unwrap();
    tool(root, &["chmod", "0755", "bin/ping-like"]);
    tool(root, &["setcap", "cap_net_raw,cap_net_admin+ep", "bin/ping-like"]);
    // A setuid file with an ACL: the mode's setuid bit survives the ACL.
    fs::write(p("bin/suid-acl"), b"#!/bin/sh\n").unwrap();
    tool(root, &["chmod", "4750", "bin/suid-acl"]);
    tool(root, &["setfacl", "-m", "u:nobody:r-x", "bin/suid-acl"]);

    // Attributes of every namespace root can write.
    fs::write(p("attrs.txt"), b"labelled\n").unwrap();
    xattr::set(p("attrs.txt"), "user.origin", b"upload").unwrap();
    xattr::set(p("attrs.txt"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(p("attrs.txt"), "security.holdfast-test", &[0, 1, 2, 255]).unwrap();
    xattr::set(p("shared"), "trusted.dir", b"on a directory").unwrap();

    // Inode flags: immutable and append-only (set last on restore),
    // no-dump, no-atime, and a directory with flags.
    fs::write(p("flags/immutable.conf"), b"do not touch\n").unwrap();
    fs::write(p("flags/append.log"), b"line 1\n").unwrap();
    fs::write(p("flags/nodump.tmp"), b"scratch\n").unwrap();
    fs::write(p("flags/noatime-dir/inside"), b"x\n").unwrap();
    // A hard link of an immutable file elsewhere: linking to it on restore
    // must happen before the flag is set.
    fs::write(p("flags/sealed"), b"sealed and linked\n").unwrap();
    fs::hard_link(p("flags/sealed"), p("links/a/sealed-link")).unwrap();

    // Device nodes and a FIFO.
    tool(root, &["mknod", "-m", "0666", "dev/null-like", "c", "1", "3"]);
    tool(root, &["mknod", "-m", "0660", "dev/loop-like", "b", "7", "200"]);
    std::os::unix::fs::chown(p("dev/loop-like"), Some(0), Some(6)).unwrap();
    tool(root, &["mkfifo", "-m", "0620", "dev/pipe"]);

    // Hard links across directories, a sparse file, a symlink.
    fs::write(p("links/a/one"), b"one inode, three names\n").unwrap();
    fs::hard_link(p("links/a/one"), p("links/b/two")).unwrap();
    fs::hard_link(p("links/a/one"), p("shared/three")).unwrap();
    {
        let f = fs::File::create(p("sparse.img")).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"data in the middle", 64 << 20).unwrap();
        f.set_len(256 << 20).unwrap();
    }
    symlink("../shared/report.txt", p("links/report")).unwrap();
    write_random(&p("bin/blob"), 7, 3 << 20);

    // Times, then the flags (which change only the ctime, and after which
    // an immutable file's times cannot be set).
    sh(root, "find . -print0 | xargs -0 touch -h -d '2021-04-05 06:07:08.123456789'");
    tool(root, &["chattr", "+i", "flags/immutable.conf", "flags/sealed"]);
    tool(root, &["chattr", "+a", "flags/append.log"]);
    tool(root, &["chattr", "+d", "flags/nodump.tmp"]);
    tool(root, &["chattr", "+A", "flags/noatime-dir"]);
}

#[test]
fn every_kind_of_metadata_a_server_has_comes_back_as_the_system_tools_see_it() {
    require_root();
    let t = TestRepo::init();
    let src = t.path("system");
    let out = t.path("out");
    let _clear = ClearFlags(vec![src.clone(), out.clone()]);
    make_system_tree(&src);
    // A socket: recorded, and skipped on restore with a message.
    let _listener = std::os::unix::net::UnixListener::bind(src.join("app.sock")).unwrap();

    let id = t.backup(&[&src]);
    let listing = String::from_utf8_lossy(&t.cmd(["ls", &id]).assert().success().get_output().stdout).into_owned();
    assert!(
        listing.lines().any(|l| l.starts_with('s') && l.ends_with("app.sock")),
        "the socket is recorded:\n{listing}"
    );

    let restore = t.cmd(["restore", &id, "--to"]).arg(&out).assert().success();
    let said = stderr_of(&restore);
    assert!(said.contains("app.sock") && said.contains("socket"), "restore says it skipped the socket: {said}");

    let back = restored(&out, &src);
    // Without the socket, and with the directory's time as it was.
    let md = fs::metadata(&src).unwrap();
    fs::remove_file(src.join("app.sock")).unwrap();
    let was = format!("@{}.{:09}", md.mtime(), md.mtime_nsec());
    tool(&src, &["touch", "-d", &was, "."]);
    assert_same(&src, &back);
    // The flags are really in force on the restored files.
    assert!(fs::write(back.join("flags/immutable.conf"), b"changed").is_err(), "immutable after restore");
    assert!(fs::remove_file(back.join("links/a/sealed-link")).is_err(), "a link of an immutable file is immutable");
    let appended = fs::OpenOptions::new().append(true).open(back.join("flags/append.log"));
    assert!(appended.is_ok(), "append-only file opens for appending");
    assert!(fs::write(back.join("flags/append.log"), b"overwrite").is_err(), "but not for writing over");
    let md = fs::symlink_metadata(back.join("dev/loop-like")).unwrap();
    assert_eq!((md.rdev() >> 8 & 0xfff, md.gid()), (7, 6), "the block device keeps its numbers and group");

    // Restoring into the same place again meets the immutable files: a
    // clear error that says what to do, and they are left as they were.
    let again = t.cmd(["restore", &id, "--to"]).arg(&out).assert().failure();
    assert!(stderr_of(&again).contains("chattr -i"), "{}", stderr_of(&again));
    assert_eq!(fs::read(back.join("flags/immutable.conf")).unwrap(), b"do not touch\n");
}

#[test]
fn holdfast_keeps_at_least_what_tar_with_xattrs_acls_and_selinux_keeps() {
    require_root();
    let t = TestRepo::init();
    let src = t.path("system");
    let (by_tar, out) = (t.path("by-tar"), t.path("out"));
    let _clear = ClearFlags(vec![src.clone(), by_tar.clone(), out.clone()]);
    make_system_tree(&src);
    fs::create_dir(&by_tar).unwrap();
    let archive = t.path("tree.tar");
    let tar_flags = ["--xattrs", "--xattrs-include=*", "--acls", "--selinux", "--numeric-owner"];
    let mut create = vec!["tar", "-cpf", archive.to_str().unwrap()];
    create.extend(tar_flags);
    create.extend(["-C", src.to_str().unwrap(), "."]);
    tool(&src, &create);
    let mut extract = vec!["tar", "-xpf", archive.to_str().unwrap()];
    extract.extend(tar_flags);
    extract.extend(["-C", by_tar.to_str().unwrap()]);
    tool(&by_tar, &extract);

    let id = t.backup(&[&src]);
    t.restore(&id, &out);
    let back = restored(&out, &src);
    let (original, ours, tars) = (describe(&src), describe(&back), describe(&by_tar));
    for (((what, want), (_, got)), (_, tar_got)) in original.iter().zip(&ours).zip(&tars) {
        // Whatever tar brought back as it was, holdfast did too.
        let tar_kept: Vec<&String> = want.iter().filter(|l| tar_got.contains(l)).collect();
        let lost: Vec<&&String> = tar_kept.iter().filter(|l| !got.contains(l)).collect();
        assert!(lost.is_empty(), "{what}: tar kept these and holdfast did not: {lost:#?}");
    }
    // And more than tar: the inode flags.
    let flags =
        |dir: &Path| sh(dir, "lsattr -d flags/immutable.conf").split_whitespace().next().unwrap_or("").to_string();
    assert!(flags(&back).contains('i'), "holdfast keeps the immutable flag");
    assert!(!flags(&by_tar).contains('i'), "tar does not (else this comparison proves nothing)");
}

#[test]
fn this_machines_etc_and_usr_bin_come_back_exactly() {
    require_root();
    let t = TestRepo::init();
    let out = t.path("out");
    // A file of /usr/bin given a capability for the test, as ping has one
    // on a full system (removed afterwards).
    let marked = Path::new("/usr/bin/holdfast-test-cap");
    fs::write(marked, b"#!/bin/sh\n").unwrap();
    let _remove = RemoveOnDrop(marked.to_path_buf());
    tool(Path::new("/"), &["setcap", "cap_net_raw+ep", marked.to_str().unwrap()]);

    let id = t.backup(&["/etc", "/usr/bin"]);
    t.restore(&id, &out);
    for dir in ["/etc", "/usr/bin"] {
        assert_same(Path::new(dir), &restored(&out, Path::new(dir)));
    }
    let caps = tool(&out.join("usr/bin"), &["getcap", "holdfast-test-cap"]);
    assert!(caps.contains("cap_net_raw"), "{caps}");
}

#[test]
fn a_capability_that_cannot_be_restored_is_named_per_file_not_dropped_silently() {
    require_root();
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("tool"), b"x").unwrap();
    tool(&src, &["setcap", "cap_net_raw+ep", "tool"]);
    xattr::set(src.join("tool"), "trusted.secret-label", b"t").unwrap();
    let id = t.backup(&[&src]);
    // Restoring as an ordinary user (nobody): no right to set either.
    let out = t.path("out");
    fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    let repo_dirs = [t.repo().to_path_buf(), t.path("")];
    for d in &repo_dirs {
        let _ = tool(Path::new("/"), &["chmod", "-R", "a+rX", d.to_str().unwrap()]);
    }
    let restore = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::util::holdfast_bin())
        .args(["--repo"])
        .arg(t.repo())
        .args(["--no-cache", "restore", &id, "--to"])
        .arg(&out)
        .env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&restore.stderr);
    assert_eq!(restore.status.code(), Some(3), "warnings exit with 3: {said}");
    let back = restored(&out, &src);
    assert_eq!(fs::read(back.join("tool")).unwrap(), b"x", "the content is restored: {said}");
    for attr in ["security.capability", "trusted.secret-label"] {
        assert!(said.contains(&format!("attribute {attr} not restored")) && said.contains("tool"), "{attr}: {said}");
    }
}

/// Paths of a snapshot as `ls` prints them (the last column).
fn paths_in(t: &TestRepo, id: &str) -> Vec<String> {
    t.ls_json(id).iter().map(|e| e["path"].as_str().unwrap().to_string()).collect()
}

/// The snapshot id a `backup` printed, and what it said on stderr.
fn saved(out: &assert_cmd::assert::Assert) -> (String, String) {
    (crate::util::stdout_of(out).trim().to_string(), stderr_of(out))
}

/// A tmpfs mounted for a test, unmounted when the test ends.
struct Mounted(PathBuf);

impl Mounted {
    fn new(kind: &str, at: &Path) -> Mounted {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", kind, kind]).arg(at).output().unwrap();
        assert!(out.status.success(), "mount -t {kind} {}: {}", at.display(), String::from_utf8_lossy(&out.stderr));
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn one_file_system_keeps_mount_points_empty_and_says_which() {
    require_root();
    let t = TestRepo::init();
    let src = t.path("root");
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("data/kept"), b"on the source's file system").unwrap();
    let _mnt = Mounted::new("tmpfs", &src.join("mnt"));
    fs::write(src.join("mnt/elsewhere"), b"on another file system").unwrap();

    let crossing = t.backup(&[&src]);
    let within = t.cmd(["backup", "--one-file-system"]).arg(&src).assert().success();
    let (within, said) = saved(&within);
    let mnt = src.join("mnt").display().to_string();
    assert_eq!(said.matches(&mnt).count(), 1, "the mount point is named once: {said}");
    assert!(said.contains("another file system"), "{said}");

    let has = |id: &str, p: &Path| paths_in(&t, id).contains(&p.display().to_string());
    assert!(has(&crossing, &src.join("mnt/elsewhere")), "without the option, mounts are crossed");
    assert!(has(&within, &src.join("mnt")), "the mount point itself is kept");
    assert!(!has(&within, &src.join("mnt/elsewhere")), "its contents are not");
    assert!(has(&within, &src.join("data/kept")));
}

#[test]
fn validate_lists_the_mounts_a_file_set_crosses_or_skips() {
    require_root();
    let env = crate::jobs_util::JobEnv::new();
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    let _tmp = Mounted::new("tmpfs", &data.join("scratch"));
    let _proc = Mounted::new("proc", &data.join("proc"));
    let validate = |one_file_system: bool| {
        env.config(&format!(
            "[jobs.site.files]\npaths = [{}]\none_file_system = {one_file_system}\n",
            crate::jobs_util::q(&data)
        ));
        let out = env.engine(["validate", "site"]).assert();
        String::from_utf8_lossy(&out.get_output().stdout).into_owned()
    };
    let (scratch, proc) = (data.join("scratch").display().to_string(), data.join("proc").display().to_string());
    let said = validate(false);
    assert!(said.contains(&format!("crosses mount {scratch} (tmpfs)")), "{said}");
    assert!(said.contains(&format!("skips (never backed up) mount {proc} (proc)")), "{said}");
    let said = validate(true);
    assert!(said.contains(&format!("skips (one_file_system) mount {scratch} (tmpfs, ")), "{said}");
    assert!(said.contains(&format!("skips (never backed up) mount {proc} (proc)")), "{said}");
}

#[test]
fn proc_and_sysfs_below_a_path_are_never_read_even_across_file_systems() {
    require_root();
    let t = TestRepo::init();
    let src = t.path("root");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"x").unwrap();
    let _proc = Mounted::new("proc", &src.join("proc"));
    let _sys = Mounted::new("sysfs", &src.join("sys"));
    let out = t.cmd(["backup"]).arg(&src).assert().success();
    let (id, said) = saved(&out);
    let paths = paths_in(&t, &id);
    assert!(paths.contains(&src.join("proc").display().to_string()), "the mount point is kept");
    assert!(!paths.iter().any(|p| p.starts_with(&src.join("proc/").display().to_string())), "nothing of /proc");
    assert!(!paths.iter().any(|p| p.starts_with(&src.join("sys/").display().to_string())), "nothing of /sys");
    assert!(said.contains("proc file system") && said.contains("sysfs file system"), "{said}");
}

#[test]
fn caches_markers_and_nodump_files_are_left_out_when_asked() {
    require_root();
    let t = TestRepo::init();
    let src = t.path("home");
    let _clear = ClearFlags(vec![src.clone()]);
    for d in ["cache", "fake-cache", "scratch", "work"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n").unwrap();
    fs::write(src.join("cache/thumb.png"), b"cached").unwrap();
    // Without the signature it is not a cache tag.
    fs::write(src.join("fake-cache/CACHEDIR.TAG"), b"not a signature\n").unwrap();
    fs::write(src.join("fake-cache/kept"), b"kept").unwrap();
    fs::write(src.join("scratch/.nobackup"), b"").unwrap();
    fs::write(src.join("scratch/big.iso"), b"iso").unwrap();
    fs::write(src.join("work/report"), b"keep me").unwrap();
    fs::write(src.join("work/core"), b"dump").unwrap();
    fs::create_dir(src.join("work/build")).unwrap();
    fs::write(src.join("work/build/out.o"), b"obj").unwrap();
    tool(&src, &["chattr", "+d", "work/core", "work/build"]);

    let all = t.backup(&[&src]);
    let out = t
        .cmd(["backup", "--exclude-caches", "--exclude-if-present", ".nobackup", "--exclude-nodump"])
        .arg(&src)
        .assert()
        .success();
    let (some, said) = saved(&out);
    let rel = |id: &str| -> Vec<String> {
        let base = src.display().to_string();
        paths_in(&t, id).into_iter().filter_map(|p| p.strip_prefix(&format!("{base}/")).map(str::to_string)).collect()
    };
    let (all, some) = (rel(&all), rel(&some));
    assert!(all.contains(&"cache/thumb.png".to_string()) && all.contains(&"work/core".to_string()));
    for gone in ["cache/thumb.png", "scratch/big.iso", "work/core", "work/build", "work/build/out.o"] {
        assert!(!some.contains(&gone.to_string()), "{gone} is left out: {some:?}");
    }
    for kept in ["cache", "cache/CACHEDIR.TAG", "fake-cache/kept", "scratch", "scratch/.nobackup", "work/report"] {
        assert!(some.contains(&kept.to_string()), "{kept} is kept: {some:?}");
    }
    for why in ["CACHEDIR.TAG", ".nobackup", "no-dump"] {
        assert!(said.contains(why), "the output says why ({why}): {said}");
    }
}

#[test]
fn exclude_patterns_anchored_unanchored_from_a_file_and_ignoring_case() {
    let t = TestRepo::init();
    let src = t.path("srv");
    for d in ["app/node_modules/x", "app/tmp", "other/app/tmp", "logs"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    for f in ["app/node_modules/x/a.js", "app/tmp/t", "other/app/tmp/t", "logs/a.log", "logs/B.LOG", "logs/keep.txt"] {
        fs::write(src.join(f), f.as_bytes()).unwrap();
    }
    fs::write(src.join("movie.ISO"), b"iso").unwrap();
    let list = t.path("excludes");
    let anchored = format!("{}/app/tmp", src.display());
    fs::write(&list, format!("# build output\nnode_modules\n\n{anchored}\n")).unwrap();
    let out = t
        .cmd(["backup", "--exclude", "*.log", "--iexclude", "*.iso", "--exclude-file"])
        .arg(&list)
        .arg(&src)
        .assert()
        .success();
    let (id, _) = saved(&out);
    let base = format!("{}/", src.display());
    let paths: Vec<String> =
        paths_in(&t, &id).into_iter().filter_map(|p| p.strip_prefix(&base).map(str::to_string)).collect();
    for gone in ["app/node_modules", "app/tmp", "logs/a.log", "movie.ISO"] {
        assert!(!paths.contains(&gone.to_string()), "{gone} excluded: {paths:?}");
    }
    // `*.log` is case-sensitive; the anchored pattern matches only there.
    for kept in ["logs/B.LOG", "logs/keep.txt", "other/app/tmp/t"] {
        assert!(paths.contains(&kept.to_string()), "{kept} kept: {paths:?}");
    }
    // A bad pattern fails before anything is read, naming it.
    let bad = t.cmd(["backup", "--exclude", "a[", "--json"]).arg(&src).assert().failure();
    assert!(stderr_of(&bad).contains("a["), "{}", stderr_of(&bad));
}

/// `holdfast ARGS` under a pseudo-terminal (`script`): what the terminal
/// received, and the exit status.
fn on_a_terminal(t: &TestRepo, args: &str) -> (String, bool) {
    let command = format!("{} --repo {} {args}", crate::util::holdfast_bin().display(), t.repo().display());
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE)
        .env("HOLDFAST_CACHE_DIR", crate::util::test_cache_dir())
        .env("TERM", "xterm-256color")
        .output()
        .expect("script(1), from util-linux");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.success())
}

#[test]
fn progress_is_drawn_on_a_terminal_updates_and_ends_cleanly_and_never_shows_without_one() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..300 {
        fs::write(src.join(format!("many/f{i}")), format!("file {i}")).unwrap();
    }
    write_random(&src.join("big.bin"), 3, 160 << 20);

    let (screen, ok) = on_a_terminal(&t, &format!("backup {}", src.display()));
    assert!(ok, "{screen}");
    let draws = screen.matches("backup: ").count();
    assert!(draws >= 2, "the display appears and updates ({draws} draws):\n{screen:?}");
    assert!(screen.contains("files") && screen.contains('\x1b'), "{screen:?}");
    // It ends cleanly: the summary comes after the last draw, on its own line.
    let last_draw = screen.rfind("backup: ").unwrap();
    let summary = screen.rfind("saved:").expect("the summary line");
    assert!(summary > last_draw, "the summary follows the display:\n{screen:?}");

    let out = t.path("out");
    let (screen, ok) = on_a_terminal(&t, &format!("restore latest --to {}", out.display()));
    assert!(ok, "{screen}");
    assert!(screen.contains("restore: "), "a restore shows progress too:\n{screen:?}");

    // Without a terminal (a pipe, as under systemd): no display at all.
    let quiet = t.cmd(["backup"]).arg(&src).assert().success();
    let said = stderr_of(&quiet);
    assert!(!said.contains('\x1b') && !said.contains("backup: "), "{said:?}");
    assert_eq!(said.lines().count(), 1, "one summary line: {said:?}");
    // Unless asked for JSON lines.
    let json = t.cmd(["--json-progress", "backup"]).arg(&src).assert().success();
    let lines: Vec<serde_json::Value> = stderr_of(&json).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let last = lines.last().expect("JSON progress lines");
    assert_eq!(last["done"], true);
    assert_eq!(last["progress"]["files_done"], 301);
    assert_eq!(last["progress"]["files_total"], 301);
    assert_eq!(last["progress"]["total_known"], true);
    // `check --read-data` counts the bytes it reads.
    let check = t.cmd(["--json-progress", "check", "--read-data"]).assert().success();
    let lines: Vec<serde_json::Value> =
        stderr_of(&check).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let last = &lines.last().expect("JSON progress lines")["progress"];
    assert!(last["bytes_total"].as_u64().unwrap() > 160 << 20, "{last}");
    assert_eq!(last["bytes_done"], last["bytes_total"]);
    // `prune` shows its phases; the second one deletes the big file's packs.
    fs::remove_file(src.join("big.bin")).unwrap();
    t.backup(&[&src]);
    let prune = || {
        let out = t.cmd(["--json-progress", "prune", "--keep-last", "1", "--grace", "0s"]).assert().success();
        let lines: Vec<serde_json::Value> =
            stderr_of(&out).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        lines.last().expect("JSON progress lines")["progress"].clone()
    };
    let marked = prune();
    assert!(marked["phase"].as_str().is_some_and(|p| p.starts_with("prune")), "{marked}");
    let deleted = prune();
    assert_eq!(deleted["phase"], "prune: deleting", "{deleted}");
    assert!(deleted["bytes_done"].as_u64().unwrap() > 100 << 20, "{deleted}");
    assert_eq!(deleted["bytes_done"], deleted["bytes_total"]);
}

#[test]
fn a_job_never_backs_up_its_own_repository_spool_or_state_and_says_so_once() {
    use crate::jobs_util::JobEnv;
    let env = JobEnv::new();
    // The file set is the whole directory: the repository, the spool and
    // the state directory are all below it, as /var/backups is below /var.
    fs::create_dir_all(env.path("www/cache")).unwrap();
    fs::write(env.path("www/index.html"), b"<h1>shop</h1>").unwrap();
    fs::write(env.path("www/cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    fs::write(env.path("www/cache/page"), b"cached").unwrap();
    fs::write(env.path("www/.nobackup-here"), b"").unwrap();
    env.config(&format!(
        "[jobs.site.files]\npaths = [{}]\none_file_system = true\nexclude_caches = true\nexclude_nodump = true\n\
         exclude_if_present = [\".never\"]\nexclude = [\"*.swp\"]\niexclude = [\"*.BAK\"]\n",
        crate::jobs_util::q(env.path(""))
    ))
    .init_repo();
    fs::write(env.path("www/old.bak"), b"backup copy").unwrap();
    // The first run makes the spool and the state directory.
    env.run(&["site"]).assert_ok();

    let validate = env.engine(["validate", "site"]).assert().success();
    let said = String::from_utf8_lossy(&validate.get_output().stdout).into_owned();
    for own in ["repo", "spool", "state"] {
        let shown = format!("leaves out {}", env.path(own).display());
        assert!(said.contains(&shown), "validate names {own}: {said}");
    }
    assert!(said.contains("*.swp") && said.contains("CACHEDIR.TAG"), "{said}");
    // Each subtree the walk leaves out, with the size of what it holds
    // (the cache's page, not its tag), as the backup below will.
    let www = env.path("www").display().to_string();
    for line in [
        format!("leaves out {www}/cache, 6 B: cache directory (CACHEDIR.TAG)"),
        format!("leaves out {www}/old.bak, 11 B: excluded by pattern"),
    ] {
        assert!(said.contains(&line), "{line}: {said}");
    }
    assert!(said.contains("would back up "), "{said}");

    let ran = env.run(&["site"]);
    ran.assert_ok();
    let snaps = env.snapshots_json("site");
    assert_eq!(snaps.len(), 2);
    for own in ["repo", "spool", "state"] {
        let shown = format!("{}: ", env.path(own).display());
        let said = format!("{}{}", ran.stdout, ran.stderr);
        assert_eq!(said.matches(&shown).count(), 1, "{own} is named once: {ran:?}");
    }
    let paths = env.ls("latest");
    let base = env.path("").display().to_string().trim_end_matches('/').to_string();
    let has = |rel: &str| paths.contains(&format!("{base}/{rel}"));
    assert!(has("www/index.html") && has("holdfast.toml") && has("www/cache/CACHEDIR.TAG"), "{paths:#?}");
    for gone in ["repo", "spool", "state", "www/cache/page", "www/old.bak"] {
        assert!(!has(gone), "{gone} is not in the snapshot: {paths:#?}");
    }
}

#[test]
fn a_backup_of_root_with_one_file_system_skips_proc_sys_and_other_mounts() {
    require_root();
    let t = TestRepo::init();
    // All of `/` but its small, telling parts: the rest is excluded by
    // anchored patterns (as an admin would exclude /var/lib/docker).
    // An entry of `/` with the no-dump flag: left out like any other
    // (it is not a source the admin named).
    let nodump = format!("hf-nodump-{}", std::process::id());
    let nodump_path = Path::new("/").join(&nodump);
    fs::create_dir(&nodump_path).unwrap();
    let _cleanup = RemoveOnDrop(nodump_path.clone());
    fs::write(nodump_path.join("secret"), "x").unwrap();
    let flagged = Command::new("chattr").arg("+d").arg(&nodump_path).status().is_ok_and(|s| s.success());
    let keep = ["etc", "proc", "sys", "dev", "run", nodump.as_str()];
    let mut args = vec!["backup".to_string(), "--one-file-system".to_string(), "--exclude-nodump".to_string()];
    for e in fs::read_dir("/").unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !keep.contains(&name.as_str()) {
            args.extend(["--exclude".to_string(), format!("/{name}")]);
        }
    }
    args.push("/".into());
    // A live system: a file of /run or /etc may change while it is read,
    // which makes the snapshot incomplete (exit 3), not failed.
    let live = |a: assert_cmd::assert::Assert| {
        let code = a.get_output().status.code();
        assert!(matches!(code, Some(0 | 3)), "{}", stderr_of(&a));
        a
    };
    let out = live(t.cmd(&args).assert());
    let (id, said) = saved(&out);
    let paths = paths_in(&t, &id);
    assert!(paths.contains(&"/etc/hostname".to_string()) || paths.contains(&"/etc/passwd".to_string()), "{said}");
    for dir in ["/proc", "/sys"] {
        assert!(paths.contains(&dir.to_string()), "{dir} itself is kept, empty");
        assert!(!paths.iter().any(|p| p.starts_with(&format!("{dir}/"))), "nothing below {dir}");
    }
    let root_dev = fs::metadata("/").unwrap().dev();
    for dir in ["/dev", "/run"] {
        if fs::metadata(dir).is_ok_and(|m| m.dev() != root_dev) {
            assert!(!paths.iter().any(|p| p.starts_with(&format!("{dir}/"))), "{dir} is another file system");
            assert!(said.contains(&format!("{dir}: ")), "{dir} is named: {said}");
        }
    }
    assert!(said.contains("/proc: proc file system"), "{said}");
    if flagged {
        assert!(!paths.iter().any(|p| p.starts_with(&format!("/{nodump}"))), "{paths:#?}");
        assert!(said.contains(&format!("/{nodump}: no-dump flag")), "{said}");
    }
    // The snapshot is of `/`, and the next backup finds it as its parent.
    let snap = t.snapshots_json().pop().unwrap();
    assert_eq!(snap["paths"], serde_json::json!(["/"]));
    live(t.cmd(&args).assert());
    let newest = t.snapshots_json().pop().unwrap();
    assert_eq!(newest["parent"].as_str(), Some(id.as_str()), "{newest}");
    // And it restores: /etc comes back as it is.
    let out_dir = t.path("out");
    t.cmd(["restore", &id, "--path", "/etc", "--to"]).arg(&out_dir).assert().success();
    assert_same(Path::new("/etc"), &out_dir.join("etc"));
}

#[test]
fn a_job_on_a_terminal_shows_its_current_step_and_its_log_lines_whole() {
    use crate::jobs_util::JobEnv;
    let env = JobEnv::new();
    fs::create_dir_all(env.path("data")).unwrap();
    write_random(&env.path("data/big.bin"), 5, 96 << 20);
    env.config(&format!(
        "[jobs.site]\n[[jobs.site.hooks]]\nphase = \"before\"\nrun = [\"sleep\", \"0.5\"]\n\
         [jobs.site.files]\npaths = [{}]\n",
        crate::jobs_util::q(env.path("data"))
    ))
    .init_repo();
    let command =
        format!("{} --config {} run site", crate::util::holdfast_bin().display(), env.config_path().display());
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .current_dir(env.path(""))
        .env("HOLDFAST_CACHE_DIR", crate::util::test_cache_dir())
        .env("TERM", "xterm-256color")
        .output()
        .expect("script(1), from util-linux");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("job site: hooks before"), "the step is shown: {screen:?}");
    assert!(screen.contains("job site: files into main"), "{screen:?}");
    // Log lines are written above the bar, whole.
    assert!(screen.contains("reading dumps and files into repository \"main\""), "{screen:?}");
}

#[test]
fn a_cache_tag_that_is_a_symlink_or_a_fifo_is_no_tag_and_a_name_cannot_forge_an_output_line() {
    let t = TestRepo::init();
    let src = t.path("src");
    for d in ["linked", "piped", "real\nleft out: /etc: forged"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("data"), b"keep").unwrap();
    }
    let tag = t.path("valid-tag");
    fs::write(&tag, b"Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    symlink(&tag, src.join("linked/CACHEDIR.TAG")).unwrap();
    nix::unistd::mkfifo(&src.join("piped/CACHEDIR.TAG"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    fs::copy(&tag, src.join("real\nleft out: /etc: forged/CACHEDIR.TAG")).unwrap();

    // A FIFO is never opened for waiting: the backup ends.
    let out =
        t.cmd(["backup", "--exclude-caches"]).arg(&src).timeout(std::time::Duration::from_secs(60)).assert().success();
    let (id, said) = saved(&out);
    let paths = paths_in(&t, &id);
    for kept in ["linked/data", "piped/data"] {
        assert!(
            paths.contains(&src.join(kept).display().to_string()),
            "{kept}: a tag that is no regular file: {paths:?}"
        );
    }
    assert!(!paths.iter().any(|p| p.ends_with("forged/data")), "the real tag works: {paths:?}");
    // One line per thing left out, the newline shown escaped.
    assert!(said.contains("real\\nleft out: /etc: forged"), "{said}");
    assert!(!said.lines().any(|l| l.starts_with("left out: /etc")), "no forged line: {said}");
}
