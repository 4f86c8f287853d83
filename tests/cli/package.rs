//! The Debian package, as an admin meets it: built by `scripts/package.sh`,
//! installed with `dpkg -i` into a clean Debian root (a debootstrap-made
//! chroot, under an overlay so every run starts clean and the overlay's upper
//! layer shows exactly what the package left behind), used there, removed
//! and purged.
//!
//! Needs root, `debootstrap`, `cargo-deb`, `dpkg-dev` and `lintian`
//! (scripts/test-all.sh installs them). The base chroot is made once and kept
//! in `$HOLDFAST_TEST_CHROOT` (default `~/.cache/holdfast-tests/debian-<suite>`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::util::holdfast_bin;

/// Runs `cmd`, panics with its output unless it succeeded; its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}\n{}", out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// This host's Debian suite (the chroot is of the same release).
fn suite() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| "bookworm".into())
}

/// A minimal Debian with man-db, bash-completion and systemd (for `man -w`,
/// completion loading and `systemd-analyze verify`), made once.
fn base_chroot() -> PathBuf {
    let dir = std::env::var_os("HOLDFAST_TEST_CHROOT").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache/holdfast-tests").join(format!("debian-{}", suite()))
    });
    if dir.join("usr/bin/systemd-analyze").exists() {
        return dir;
    }
    let making = dir.with_extension("making");
    let _ = std::fs::remove_dir_all(&making);
    std::fs::create_dir_all(making.parent().expect("a parent")).expect("create the chroot's parent");
    let mirror = std::env::var("HOLDFAST_TEST_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    ok(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=man-db,bash-completion,systemd", &suite()])
        .arg(&making)
        .arg(mirror));
    std::fs::rename(&making, &dir).expect("keep the chroot");
    dir
}

/// A throwaway root over the base chroot: an overlay whose upper layer
/// collects every change, with /proc mounted for the tools that want it.
struct CleanRoot {
    dir: tempfile::TempDir,
}

impl CleanRoot {
    fn new() -> CleanRoot {
        let base = base_chroot();
        let dir = tempfile::tempdir().expect("a temporary directory");
        for d in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(d)).expect("overlay directories");
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        let root = CleanRoot { dir };
        ok(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(root.path()));
        ok(Command::new("mount").args(["-t", "proc", "proc"]).arg(root.path().join("proc")));
        root
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }

    /// `sh -c script` inside the root, with a plain environment.
    fn sh(&self, script: &str) -> Output {
        Command::new("chroot")
            .arg(self.path())
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .output()
            .expect("chroot")
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "in the chroot: {script}\n{}\n{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }
}

impl Drop for CleanRoot {
    fn drop(&mut self) {
        // Lazily: a process the test left in the root cannot keep the
        // mounts (and the base chroot's files below them) in the way of
        // removing the temporary directory.
        let _ = Command::new("umount").arg("-l").arg(self.path().join("proc")).status();
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// The package, built once for the tests of this binary (they share
/// `target/assets`), into cargo's scratch directory for tests.
fn package() -> &'static Path {
    static PACKAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PACKAGE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the package's directory");
        build_package(&dir)
    })
}

/// Builds the package from the binary these tests run (`cargo deb
/// --no-build` of the dev profile), into `dir`; its path.
fn build_package(dir: &Path) -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profile_dir = holdfast_bin().parent().expect("the binary's directory").to_path_buf();
    let profile = if profile_dir.ends_with("debug") { "dev" } else { "release" };
    ok(Command::new(project.join("scripts/package.sh"))
        .args(["--no-build", "--profile", profile, "--output"])
        .arg(dir));
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the package's directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one package: {debs:?}");
    debs[0].clone()
}

/// Every path below `dir`, relative, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    let out = ok(Command::new("find").arg(".").arg("-mindepth").arg("1").current_dir(dir));
    let mut v: Vec<String> = out.lines().map(|l| l.trim_start_matches("./").to_string()).collect();
    v.sort();
    v
}

/// What the package ships is made by the binary itself, from the same
/// definitions as `--help`: a man page per command, completions per shell.
#[test]
fn generate_writes_a_man_page_per_command_and_completions_for_each_shell() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    ok(Command::new(holdfast_bin()).args(["generate", "man"]).arg(dir.path()));
    let pages = files_below(dir.path());
    for page in ["holdfast.1", "holdfast-run.1", "holdfast-restore.1", "holdfast-key-export.1", "holdfast-serve.1"] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    let run = std::fs::read_to_string(dir.path().join("holdfast-run.1")).expect("holdfast-run.1");
    // Readable by man for every user, whatever holdfast's own umask.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("holdfast-run.1")).expect("stat").permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    let title = format!(".TH holdfast-run 1  \"holdfast {}", env!("CARGO_PKG_VERSION"));
    assert!(run.contains(&title), "a roff page naming its version: {run}");
    assert!(run.contains("dry"), "the page documents run's options: {run}");
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(Command::new(holdfast_bin()).args(["generate", "completions", shell]));
        assert!(script.contains("holdfast") && script.contains("restore"), "{shell}: {script}");
    }
    let refused = Command::new(holdfast_bin()).args(["generate", "completions", "tcsh"]).output().expect("holdfast");
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn the_debian_package_installs_works_and_purges_cleanly_in_a_clean_root() {
    let deb = package();

    // What is in it, and what it declares.
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(deb));
    assert!(info.contains("Depends: libc6"), "dependencies from the binary:\n{info}");
    assert!(info.contains("Recommends: postgresql-client"), "{info}");
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for path in [
        "./usr/bin/holdfast",
        "./usr/share/man/man1/holdfast.1.gz",
        "./usr/share/man/man1/holdfast-run.1.gz",
        "./usr/share/bash-completion/completions/holdfast",
        "./usr/share/zsh/vendor-completions/_holdfast",
        "./usr/share/fish/vendor_completions.d/holdfast.fish",
        "./usr/lib/systemd/system/holdfast@.service",
        "./usr/lib/systemd/system/holdfast@.timer",
        "./usr/lib/systemd/system/holdfast-status.timer",
        "./usr/share/holdfast/hooks/fsfreeze",
        "./usr/share/doc/holdfast/examples/example.toml",
        "./usr/share/doc/holdfast/copyright",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "{path} is not in the package:\n{contents}");
    }

    let root = CleanRoot::new();
    std::fs::copy(deb, root.path().join("tmp/holdfast.deb")).expect("copy the package in");
    root.sh_ok("dpkg -i /tmp/holdfast.deb && rm /tmp/holdfast.deb");

    // The version names the commit it was built from.
    let version = root.sh_ok("holdfast --version");
    assert_eq!(
        version.trim(),
        format!("holdfast {} ({})", env!("CARGO_PKG_VERSION"), env!("HOLDFAST_GIT_COMMIT")),
        "the installed binary's version"
    );
    if let Ok(head) = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output()
        && head.status.success()
    {
        assert!(version.contains(text(&head.stdout).trim()), "{version} names the checkout's commit");
    }

    // Man pages where man finds them; completions that complete.
    assert_eq!(root.sh_ok("man -w holdfast").trim(), "/usr/share/man/man1/holdfast.1.gz");
    assert_eq!(root.sh_ok("man -w holdfast-restore").trim(), "/usr/share/man/man1/holdfast-restore.1.gz");
    let completed = root.sh_ok(
        r#"exec bash -c '. /usr/share/bash-completion/bash_completion
           _completion_loader holdfast
           COMP_WORDS=(holdfast ba); COMP_CWORD=1; COMP_LINE="holdfast ba"; COMP_POINT=11
           $(complete -p holdfast | sed -E "s/.*-F ([^ ]+).*/\1/") holdfast ba holdfast
           echo "${COMPREPLY[@]}"'"#,
    );
    assert!(completed.split_whitespace().any(|w| w == "backup"), "bash completes `holdfast ba`: {completed:?}");

    // Private directories, made by the package.
    let modes =
        root.sh_ok("stat -c '%n %a %U' /etc/holdfast/jobs.d /var/spool/holdfast /var/lib/holdfast /var/cache/holdfast");
    for line in modes.lines() {
        assert!(line.ends_with(" 700 root"), "private and root's: {line}");
    }

    // The example job, as its comments tell an admin to set it up; then
    // validated, run, and scheduled through the template units.
    // Until the admin has done each step, validate says which is missing.
    root.sh_ok("cp /usr/share/doc/holdfast/examples/example.toml /etc/holdfast/jobs.d/etc.toml");
    let validate = "holdfast --config /etc/holdfast/jobs.d validate 2>&1";
    let missing = root.sh(validate);
    assert!(!missing.status.success() && text(&missing.stdout).contains("/etc/holdfast/passphrase"), "{missing:?}");
    root.sh_ok("(umask 077; echo 'package test passphrase' > /etc/holdfast/passphrase)");
    let missing = root.sh(validate);
    assert!(!missing.status.success() && text(&missing.stdout).contains("holdfast init"), "{missing:?}");
    root.sh_ok("holdfast --config /etc/holdfast/jobs.d --repo local init");
    root.sh_ok(validate);
    root.sh_ok("holdfast --config /etc/holdfast/jobs.d run etc");
    let listed = root.sh_ok("holdfast --config /etc/holdfast/jobs.d --repo local ls latest /etc/os-release");
    assert!(listed.contains("/etc/os-release"), "the job backed up /etc: {listed}");
    let status = root.sh_ok("holdfast --config /etc/holdfast/jobs.d status");
    assert!(status.contains("etc"), "{status}");
    root.sh_ok("holdfast --config /etc/holdfast/jobs.d systemd --template --output /etc/systemd/system etc");
    let drop_in = root.sh_ok("cat /etc/systemd/system/holdfast@etc.timer.d/schedule.conf");
    assert!(drop_in.contains("OnCalendar=*-*-* 02:30:00"), "{drop_in}");
    let verified = root.sh("cd /usr/lib/systemd/system && systemd-analyze verify --man=no \
         holdfast@etc.service holdfast@etc.timer holdfast-status.service holdfast-status.timer 2>&1");
    assert!(
        verified.status.success() && !text(&verified.stdout).contains("holdfast"),
        "systemd-analyze verify:\n{}",
        text(&verified.stdout)
    );

    // Removal keeps the admin's jobs, passphrase and repository; purge also
    // leaves nothing of holdfast's own behind.
    root.sh_ok("dpkg -r holdfast");
    assert!(!root.path().join("usr/bin/holdfast").exists());
    assert!(root.path().join("etc/holdfast/jobs.d/etc.toml").exists());
    root.sh_ok("dpkg -P holdfast");
    // The overlay's upper layer holds everything that differs from the
    // clean root: past dpkg's own records and logs, only the admin's files.
    let base = base_chroot();
    let left: Vec<String> = files_below(&root.upper())
        .into_iter()
        .filter(|p| {
            !["var/lib/dpkg", "var/log", "var/cache/debconf", "var/cache/man", "tmp", "root", "proc", "dev", "run"]
                .iter()
                .any(|skip| p == skip || p.starts_with(&format!("{skip}/")))
        })
        // A directory of the clean root that only changed (copied up).
        .filter(|p| !(base.join(p).is_dir() && root.upper().join(p).is_dir()))
        .collect();
    let admins = |p: &String| {
        ["etc/holdfast", "etc/holdfast/jobs.d", "etc/holdfast/jobs.d/etc.toml", "etc/holdfast/passphrase"]
            .contains(&p.as_str())
            || p == "var/backups/holdfast"
            || p.starts_with("var/backups/holdfast/")
    };
    let stray: Vec<&String> = left.iter().filter(|p| !admins(p)).collect();
    assert!(stray.is_empty(), "after purge, files that are not the admin's: {stray:?}");
    assert!(left.iter().any(|p| p == "var/backups/holdfast/config"), "the repository stays: {left:?}");
}

/// Lintian's verdict, with each tag we keep explained.
#[test]
fn lintian_finds_nothing_unexplained_in_the_package() {
    let deb = package();
    let out =
        Command::new("lintian").args(["--tag-display-limit", "0", "--allow-root"]).arg(deb).output().expect("lintian");
    let report = text(&out.stdout);
    // Tags we accept, and why:
    let explained = [
        // Not an upload to Debian's archive: there is no ITP bug to close.
        "initial-upload-closes-no-bugs",
    ];
    let unexplained: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .filter(|l| !explained.iter().any(|t| l.contains(&format!(" {t}"))))
        .collect();
    assert!(unexplained.is_empty(), "lintian:\n{report}");
}
