//! Repositories on another host over SSH (`url = "ssh://…"`), against a real
//! OpenSSH `sshd` on a loopback port ([`Sshd`]) whose `authorized_keys`
//! forces `holdfast serve --append-only DIR` for one key and `holdfast
//! serve DIR` for another. No sftp subsystem is configured: none is needed.
//!
//! Round trip; a job copying to the SSH repository and a restore from it
//! alone; an append-only key that cannot delete or overwrite, even for a
//! client that sends such requests by hand; prune through the full key;
//! sshd killed mid-backup (the next run uploads nothing twice); a host that
//! accepts TCP and never answers (bounded failure, `finally` runs).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast::engine::backend::Dir;
use holdfast::engine::backend::protocol::{self, FailureKind, Op, Reply, Request, Response};
use tempfile::TempDir;

use crate::jobs_util::{JobEnv, q};
use crate::util::{PASSPHRASE, assert_same_tree, holdfast_bin, parse_json, restored, tree_fingerprint, write_random};

/// A private sshd on 127.0.0.1 for one test.
struct Sshd {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

/// Which of the two client keys to use.
#[derive(Clone, Copy)]
enum Key {
    AppendOnly,
    Full,
}

impl Key {
    fn file(self) -> &'static str {
        match self {
            Key::AppendOnly => "id_append",
            Key::Full => "id_full",
        }
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Sshd {
    /// Keys, host key, config and a started daemon; the served repository is
    /// `repo/` in its directory (not created yet: `init` makes it).
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_ed25519", Key::AppendOnly.file(), Key::Full.file()] {
            run_ok(
                Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"]).arg(d.join(key)),
            );
        }
        let serve = |extra: &str| {
            format!("command=\"{} serve {extra}{}\",restrict", holdfast_bin().display(), d.join("repo").display())
        };
        let public = |key: Key| fs::read_to_string(d.join(format!("{}.pub", key.file()))).unwrap();
        fs::write(
            d.join("authorized_keys"),
            format!("{} {}{} {}", serve("--append-only "), public(Key::AppendOnly), serve(""), public(Key::Full)),
        )
        .unwrap();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\nAuthorizedKeysFile {keys}\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PermitRootLogin forced-commands-only\nAllowUsers {user}\nLogLevel ERROR\n",
                host = d.join("host_ed25519").display(),
                pid = d.join("sshd.pid").display(),
                keys = d.join("authorized_keys").display(),
                user = user.trim(),
            ),
        )
        .unwrap();
        let host_key = fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
        fs::write(d.join("known_hosts"), format!("[127.0.0.1]:{port} {host_key}")).unwrap();
        // sshd's privilege separation directory (Debian's unit makes it).
        let _ = fs::create_dir_all("/run/sshd");
        let mut sshd = Sshd { dir, port, child: None };
        sshd.launch();
        sshd
    }

    fn launch(&mut self) {
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.path().join("sshd.log")).unwrap())
            .spawn()
            .expect("start /usr/sbin/sshd (Debian's openssh-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// SIGKILL the daemon and every session it started (their `holdfast
    /// serve` included): the host is gone.
    fn kill_all(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut doomed = descendants(child.id());
            doomed.push(child.id());
            for pid in doomed {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// The served repository's directory on the "host".
    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn url(&self) -> String {
        format!("ssh://127.0.0.1:{}{}", self.port, self.repo().display())
    }

    /// A `[repositories.NAME]` table reaching this host with `key`.
    fn repository_toml(&self, name: &str, key: Key, extra: &str) -> String {
        format!(
            "[repositories.{name}]\nurl = {}\nidentity_file = {}\nknown_hosts_file = {}\n\
             passphrase_file = \"passphrase\"\ntimeout = \"10s\"\n{extra}\n",
            q(self.url()),
            q(self.dir.path().join(key.file())),
            q(self.dir.path().join("known_hosts")),
        )
    }

    /// The system's ssh with `key`, as holdfast runs it, for a hand-made client.
    fn ssh(&self, key: Key) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-T", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-p", &self.port.to_string(), "-i"])
            .arg(self.dir.path().join(key.file()))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.dir.path().join("known_hosts").display()))
            .args(["127.0.0.1", "holdfast serve"]);
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Every process below `pid` (by parent ids from /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let p: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in parents.iter().filter(|(_, pp)| *pp == p) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}

/// The files under `dir` with their sizes and modification times.
fn files_with_times(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if !e.path().starts_with(dir.join("tmp")) {
                out.push((e.path(), md.len(), md.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn source(env: &JobEnv, megabytes: u64, seed: u64) -> PathBuf {
    let src = env.path("data");
    fs::create_dir_all(src.join("sub")).unwrap();
    write_random(&src.join("large.bin"), seed, megabytes << 20);
    for i in 0..20 {
        fs::write(src.join("sub").join(format!("small-{i}.txt")), format!("small file {i} of {seed}\n")).unwrap();
    }
    src
}

fn snapshot_count(env: &JobEnv, repo: &str) -> usize {
    let out = env.engine(["--repo", repo, "snapshots", "--json"]).assert().success();
    parse_json(&String::from_utf8_lossy(&out.get_output().stdout)).as_array().unwrap().len()
}

/// The `box` repository checks healthy, reading every blob, and its newest
/// snapshot restores `src` exactly.
fn assert_healthy_and_restores(env: &JobEnv, src: &Path) {
    let check = env.engine(["--repo", "box", "check", "--read-data"]).assert().success();
    assert!(String::from_utf8_lossy(&check.get_output().stdout).contains("healthy"));
    let out = env.path("out");
    env.engine(["--repo", "box", "restore", "latest", "--to"]).arg(&out).assert().success();
    assert_same_tree(&tree_fingerprint(src), &tree_fingerprint(&restored(&out, src)));
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

#[test]
fn an_ssh_repository_backs_up_restores_checks_finds_and_prunes() {
    let sshd = Sshd::start();
    let env = JobEnv::new();
    env.config(&sshd.repository_toml("box", Key::Full, ""));
    let src = source(&env, 12, 1);
    env.engine(["--repo", "box", "init"]).assert().success();
    assert!(sshd.repo().join("packs").is_dir(), "init did not make the repository on the host");
    env.engine(["--repo", "box", "backup"]).arg(&src).assert().success();
    fs::write(src.join("sub/small-3.txt"), "changed\n").unwrap();
    env.engine(["--repo", "box", "backup"]).arg(&src).assert().success();

    assert_healthy_and_restores(&env, &src);
    let found = env.engine(["--repo", "box", "find", "small-3.txt", "--json"]).assert().success();
    let found = parse_json(&String::from_utf8_lossy(&found.get_output().stdout));
    assert_eq!(found["paths"][0]["versions"].as_array().map(Vec::len), Some(2), "{found}");

    // The full key may prune.
    env.engine(["--repo", "box", "prune", "--keep-last", "1", "--grace", "0s"]).assert().success();
    assert_eq!(snapshot_count(&env, "box"), 1);
    // `--repo ssh://…` works without a config: ssh's own configuration says
    // which key and known hosts (here an `ssh` first on $PATH that adds -F).
    let ssh_config = env.path("ssh_config");
    fs::write(
        &ssh_config,
        format!(
            "Host 127.0.0.1\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n",
            sshd.dir.path().join(Key::Full.file()).display(),
            sshd.dir.path().join("known_hosts").display()
        ),
    )
    .unwrap();
    let wrapper = env.path("bin/ssh");
    fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
    fs::write(&wrapper, format!("#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n", ssh_config.display())).unwrap();
    fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", wrapper.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let listed = assert_cmd::Command::new(holdfast_bin())
        .args(["--repo", &sshd.url(), "snapshots", "--json"])
        .env("PATH", path)
        .env("HOLDFAST_PASSPHRASE", PASSPHRASE)
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    assert_eq!(parse_json(&String::from_utf8_lossy(&listed.get_output().stdout)).as_array().unwrap().len(), 1);
}

#[test]
fn a_job_copies_to_the_ssh_repository_and_restores_from_it_alone() {
    let sshd = Sshd::start();
    let env = JobEnv::new();
    let src = source(&env, 4, 2);
    env.config(&format!(
        "{}\n[jobs.app]\nfiles = {{ paths = [{}] }}\nrepositories = [\"main\", \"box\"]\n",
        sshd.repository_toml("box", Key::AppendOnly, ""),
        q(&src)
    ));
    env.init_repo();
    env.engine(["--repo", "box", "init", "--copy-params-from", "main"]).assert().success();
    env.run(&["app"]).assert_ok();
    env.run(&["app"]).assert_ok();
    assert_eq!(snapshot_count(&env, "box"), 2);

    // The local repository is lost; the off-site copy alone restores.
    fs::remove_dir_all(env.repo()).unwrap();
    let out = env.path("restore");
    env.engine(["--repo", "box", "restore", "app", "--files", "--to"]).arg(&out).assert().success();
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
    env.engine(["--repo", "box", "check", "--read-data"]).assert().success();
}

#[test]
fn the_append_only_key_cannot_delete_or_overwrite_even_by_hand() {
    let sshd = Sshd::start();
    let env = JobEnv::new();
    env.config(&format!(
        "{}{}",
        sshd.repository_toml("box", Key::AppendOnly, ""),
        sshd.repository_toml("admin", Key::Full, "")
    ));
    let src = source(&env, 4, 3);
    env.engine(["--repo", "box", "init"]).assert().success();
    for _ in 0..3 {
        fs::write(src.join("sub/small-1.txt"), format!("{:?}\n", Instant::now())).unwrap();
        env.engine(["--repo", "box", "backup"]).arg(&src).assert().success();
    }
    // Backups through it removed nothing: their running/ records stay,
    // each with a "finished" companion.
    let running: Vec<_> = fs::read_dir(sshd.repo().join("running")).unwrap().collect();
    assert_eq!(running.len(), 6);
    let before = files_with_times(&sshd.repo());

    // prune and forget fail cleanly and change nothing.
    let pruned = env.engine(["--repo", "box", "prune", "--keep-last", "1", "--grace", "0s"]).assert().failure();
    assert!(stderr(&pruned).contains("append-only"), "{}", stderr(&pruned));
    let snapshot = fs::read_dir(sshd.repo().join("snapshots")).unwrap().next().unwrap().unwrap().file_name();
    let snapshot = snapshot.to_string_lossy().into_owned();
    let forgot = env.engine(["--repo", "box", "forget", &snapshot]).assert().failure();
    assert!(stderr(&forgot).contains("append-only"), "{}", stderr(&forgot));
    assert_eq!(files_with_times(&sshd.repo()), before);

    // A modified client sends what holdfast never would through this key.
    let requests = [
        Op::Remove { dir: Dir::Snapshots, name: snapshot.clone() },
        Op::PutNew { dir: Dir::Snapshots, name: snapshot.clone() },
        Op::PutState { dir: Dir::Snapshots, name: snapshot.clone() },
        Op::Remove { dir: Dir::Keys, name: "../../authorized_keys".into() },
        Op::PutNew { dir: Dir::Root, name: "../escaped".into() },
        Op::Get { dir: Dir::Root, name: "../authorized_keys".into() },
    ];
    let replies = hand_made_client(&sshd, Key::AppendOnly, &requests);
    assert!(matches!(replies[0], Reply::Failed { kind: FailureKind::Refused, .. }), "{replies:?}");
    assert_eq!(replies[1], Reply::Stored(false), "an existing name was not left alone");
    for r in &replies[2..] {
        assert!(matches!(r, Reply::Failed { kind: FailureKind::Refused, .. }), "{replies:?}");
    }
    assert_eq!(files_with_times(&sshd.repo()), before, "a refused request changed the repository");
    assert!(!sshd.dir.path().join("escaped").exists());
    env.engine(["--repo", "box", "check", "--read-data"]).assert().success();

    // The full key prunes, and cleans the records up.
    env.engine(["--repo", "admin", "prune", "--keep-last", "1", "--grace", "0s"]).assert().success();
    assert_eq!(snapshot_count(&env, "box"), 1);
    assert_eq!(fs::read_dir(sshd.repo().join("running")).unwrap().count(), 0);
    let out = env.path("out");
    env.engine(["--repo", "box", "restore", "latest", "--to"]).arg(&out).assert().success();
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
}

/// Speak the protocol by hand: hello, then `ops` one at a time (the body of
/// a put is garbage).
fn hand_made_client(sshd: &Sshd, key: Key, ops: &[Op]) -> Vec<Reply> {
    let mut child = sshd.ssh(key).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let (mut to, mut from) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let mut ask = |id: u64, op: Op| -> Reply {
        let body: &[u8] = if matches!(op, Op::Hello { .. }) { b"" } else { b"forged bytes" };
        protocol::write_frame(&mut to, &Request { id, op }, body).unwrap();
        let (r, _): (Response, Vec<u8>) = protocol::read_frame(&mut from, u64::MAX).unwrap().unwrap();
        assert_eq!(r.id, id);
        r.reply
    };
    let hello = ask(0, Op::Hello { version: protocol::VERSION });
    assert_eq!(hello, Reply::Hello { version: protocol::VERSION, append_only: matches!(key, Key::AppendOnly) });
    let replies = ops.iter().enumerate().map(|(i, op)| ask(i as u64 + 1, op.clone())).collect();
    drop(to);
    let mut rest = Vec::new();
    let _ = from.read_to_end(&mut rest);
    let _ = child.wait();
    replies
}

#[test]
fn sshd_killed_mid_backup_fails_the_run_and_the_next_one_uploads_nothing_twice() {
    let mut sshd = Sshd::start();
    let env = JobEnv::new();
    env.config(&sshd.repository_toml("box", Key::AppendOnly, "connections = 1"));
    let total: u64 = 96 << 20;
    let src = source(&env, total >> 20, 4);
    env.engine(["--repo", "box", "init"]).assert().success();

    let mut backup = env.cmd(["--repo", "box", "backup"]);
    backup.arg(&src).env("HOLDFAST_CHECKPOINT_PACKS", "1");
    let started = env.start(backup);
    let deadline = Instant::now() + Duration::from_secs(120);
    while fs::read_dir(sshd.repo().join("index")).map_or(0, |d| d.count()) < 3 {
        assert!(Instant::now() < deadline, "no checkpoints were written");
        std::thread::sleep(Duration::from_millis(20));
    }
    sshd.kill_all();
    let t = Instant::now();
    let ran = started.wait();
    ran.assert_failed().assert_says("127.0.0.1");
    assert!(t.elapsed() < Duration::from_secs(90), "the failing backup took {:?}", t.elapsed());
    let packs = |repo: &Path| -> u64 { files_with_times(&repo.join("packs")).iter().map(|(_, size, _)| size).sum() };
    let uploaded = packs(&sshd.repo());
    assert!(uploaded >= 24 << 20, "{uploaded}");

    sshd.launch();
    let next = env.engine(["--repo", "box", "backup", "--json"]).arg(&src).assert().success();
    let next = parse_json(&String::from_utf8_lossy(&next.get_output().stdout));
    let added = next["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added + uploaded <= total + (1 << 20),
        "the next backup added {added} bytes though {uploaded} of {total} were uploaded already"
    );
    assert_healthy_and_restores(&env, &src);
}

#[test]
fn a_connection_cut_mid_backup_is_opened_again_and_the_backup_succeeds() {
    let sshd = Sshd::start();
    let env = JobEnv::new();
    env.config(&sshd.repository_toml("box", Key::AppendOnly, "connections = 1"));
    let src = source(&env, 64, 5);
    env.engine(["--repo", "box", "init"]).assert().success();
    let mut backup = env.cmd(["--repo", "box", "backup", "--json"]);
    backup.arg(&src).env("HOLDFAST_CHECKPOINT_PACKS", "1");
    let started = env.start(backup);
    let deadline = Instant::now() + Duration::from_secs(120);
    while fs::read_dir(sshd.repo().join("index")).map_or(0, |d| d.count()) < 2 {
        assert!(Instant::now() < deadline, "no checkpoints were written");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kill the session (its sshd and holdfast serve), not the daemon.
    let sessions = descendants(sshd.child.as_ref().unwrap().id());
    assert!(!sessions.is_empty());
    for pid in sessions {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
    }
    let ran = started.wait();
    ran.assert_ok();
    assert_healthy_and_restores(&env, &src);
}

#[test]
fn a_host_that_accepts_tcp_but_never_answers_fails_in_bounded_time_and_finally_runs() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let env = JobEnv::new();
    let src = source(&env, 1, 6);
    fs::write(env.path("known_hosts"), "").unwrap();
    env.config(&format!(
        "[repositories.box]\nurl = \"ssh://127.0.0.1:{port}/srv/r\"\nknown_hosts_file = \"known_hosts\"\n\
         passphrase_file = \"passphrase\"\ntimeout = \"2s\"\n\n\
         [jobs.web]\nrepositories = [\"box\"]\nfiles = {{ paths = [{}] }}\n\
         [[jobs.web.hooks]]\nphase = \"finally\"\nrun = \"touch finally-ran\"\n",
        q(&src)
    ));
    let t = Instant::now();
    let ran = env.run(&["web"]);
    ran.assert_failed().assert_says(&format!("ssh://127.0.0.1:{port}/srv/r"));
    assert!(t.elapsed() < Duration::from_secs(60), "the run took {:?}", t.elapsed());
    assert!(env.path("finally-ran").exists(), "the finally hook did not run");
    drop(silent);
}

#[test]
fn a_wrong_key_or_an_unknown_host_key_fails_clearly() {
    let sshd = Sshd::start();
    let env = JobEnv::new();
    let stranger = env.path("id_stranger");
    run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&stranger));
    fs::write(env.path("empty_known_hosts"), "").unwrap();
    let repo = |name: &str, key: &Path, known: &Path| {
        format!(
            "[repositories.{name}]\nurl = {}\nidentity_file = {}\nknown_hosts_file = {}\npassphrase_file = \"passphrase\"\ntimeout = \"10s\"\n",
            q(sshd.url()),
            q(key),
            q(known)
        )
    };
    env.config(&format!(
        "{}{}",
        repo("stranger", &stranger, &sshd.dir.path().join("known_hosts")),
        repo("unknown", &sshd.dir.path().join(Key::Full.file()), &env.path("empty_known_hosts"))
    ));
    let err = stderr(&env.engine(["--repo", "stranger", "init"]).assert().failure());
    assert!(err.contains("Permission denied"), "{err}");
    let err = stderr(&env.engine(["--repo", "unknown", "init"]).assert().failure());
    assert!(err.contains("Host key verification failed"), "{err}");
    assert!(!sshd.repo().exists());
}
