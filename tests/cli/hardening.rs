//! Issue #15's defects, one regression test each (or more): what a hostile
//! user, a careless admin or a failing disk did to holdfast before, and what
//! holdfast does now. The attack suites (`faults`, `restore_attacks`,
//! `secret_audit`, `signals`) keep attacking; these pin the exact cases.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::jobs_util::{JobEnv, q, shq};
use crate::util::{
    TestRepo, assert_same_tree, parse_json, restored, stderr_of, stdout_of, tree_fingerprint, write_random,
};

/// A source tree of a few files, one of them large enough for its own chunks.
fn source(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    fs::create_dir_all(src.join("docs")).unwrap();
    write_random(&src.join("big.bin"), 1, 3 << 20);
    fs::write(src.join("docs/a.txt"), b"alpha").unwrap();
    fs::write(src.join("docs/b.txt"), b"beta").unwrap();
    src
}

/// Files under `dir`, relative to it.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Make every pack look two hours old: old enough that a prune treats
/// unindexed ones as an interrupted run's leftovers.
fn age_packs(repo: &Path) {
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    for p in files_in(&repo.join("packs")) {
        let f = fs::File::options().write(true).open(repo.join("packs").join(p)).unwrap();
        f.set_modified(old).unwrap();
    }
}

/// The largest pack (relative to `packs/`): the one with the big file's chunks.
fn largest_pack(repo: &Path) -> PathBuf {
    let packs = repo.join("packs");
    files_in(&packs).into_iter().max_by_key(|p| fs::metadata(packs.join(p)).unwrap().len()).unwrap()
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

// ------------------------------------------------------------ 1, 2: index lost

/// #15.1: an index file is lost while its packs are intact. `check` must
/// not call those packs harmless, and `prune` must not delete them: it
/// stops, says to run `repair index`, and every pack is still there.
#[test]
fn prune_refuses_to_delete_packs_that_a_lost_index_placed() {
    let t = TestRepo::init();
    let src = source(&t);
    t.backup(&[&src]);
    fs::write(src.join("docs/c.txt"), b"gamma").unwrap();
    t.backup(&[&src]);
    for f in files_in(&t.repo().join("index")) {
        fs::remove_file(t.repo().join("index").join(f)).unwrap();
    }
    age_packs(t.repo());
    let packs_before = files_in(&t.repo().join("packs"));

    let (healthy, report) = t.check(false);
    assert!(!healthy, "check must not call this repository healthy:\n{report}");
    assert!(!report.contains("harmless"), "no pack is harmless while snapshots need what it may hold:\n{report}");
    assert!(report.contains("repair index"), "check should say what to do:\n{report}");

    let out = t.cmd(["prune", "--keep-last", "10"]).assert().failure().code(1);
    let err = stderr_of(&out);
    assert!(err.contains("repair index") && err.contains("nothing was deleted"), "{err}");
    assert_eq!(files_in(&t.repo().join("packs")), packs_before, "prune deleted packs a snapshot needs");
}

/// #15.2: with every index file gone, `repair index` rebuilds the index from
/// the packs themselves and the repository comes back whole: check is
/// healthy, every snapshot restores byte for byte, prune works again.
#[test]
fn repair_index_brings_back_a_repository_whose_index_files_are_all_lost() {
    let t = TestRepo::init();
    let src = source(&t);
    let first = t.backup(&[&src]);
    fs::write(src.join("docs/a.txt"), b"alpha, edited").unwrap();
    t.backup(&[&src]);
    let expected = tree_fingerprint(&src);
    for f in files_in(&t.repo().join("index")) {
        fs::remove_file(t.repo().join("index").join(f)).unwrap();
    }
    fs::remove_dir(t.repo().join("tmp")).unwrap();

    // A dry run reads and reports, and changes nothing.
    let dry = t.cmd(["repair", "index", "--dry-run", "--json"]).assert().success();
    let dry = parse_json(&stdout_of(&dry));
    assert_eq!(dry["dry_run"], true);
    assert!(dry["packs_recovered"].as_u64().unwrap() >= 2, "{dry:#}");
    assert_eq!(dry["blobs_still_missing"], 0, "{dry:#}");
    assert!(files_in(&t.repo().join("index")).is_empty(), "a dry run writes nothing");

    t.cmd(["repair", "index"]).assert().success();
    let (healthy, report) = t.check(true);
    assert!(healthy, "{report}");
    let out = t.path("out");
    t.restore("latest", &out);
    assert_same_tree(&expected, &tree_fingerprint(&restored(&out, &src)));
    let out1 = t.path("out1");
    t.restore(&first[..8], &out1);
    assert_eq!(fs::read(restored(&out1, &src).join("docs/a.txt")).unwrap(), b"alpha");
    t.cmd(["prune", "--keep-last", "1"]).assert().success();
}

/// #15.2: when a pack is really gone, `repair snapshots` writes new
/// snapshots without what was lost and names it; the damaged snapshot stays
/// until `forget`; a dry run changes nothing.
#[test]
fn repair_snapshots_keeps_what_can_be_read_and_names_what_was_lost() {
    let t = TestRepo::init();
    let src = source(&t);
    // The small files first, on their own: their chunk stays in that pack.
    t.backup(&[&src.join("docs")]);
    let damaged = t.backup(&[&src]);
    // The big file's chunks are in the largest pack: lose it.
    let packs = t.repo().join("packs");
    let largest = largest_pack(t.repo());
    fs::remove_file(packs.join(&largest)).unwrap();

    let dry = t.cmd(["repair", "snapshots", "--dry-run"]).assert().success();
    let text = stdout_of(&dry);
    assert!(text.contains("lost: /") && text.contains("big.bin"), "{text}");
    assert_eq!(t.snapshots_json().len(), 2, "a dry run writes nothing");

    let out = t.cmd(["repair", "snapshots", "--json"]).assert().success();
    let repairs = parse_json(&stdout_of(&out));
    let repaired = repairs[0]["repaired_as"].as_str().expect("a repaired snapshot").to_string();
    let lost: Vec<String> = repairs[0]["lost"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    assert_eq!(lost.len(), 1, "only the big file is lost: {lost:?}");

    let snaps = t.snapshots_json();
    assert_eq!(snaps.len(), 3, "the damaged snapshot is kept until forgotten");
    let new = snaps.iter().find(|s| s["id"] == repaired.as_str()).unwrap();
    assert!(new["tags"].as_array().unwrap().iter().any(|t| t == "repaired"), "{new:#}");
    assert_eq!(new["repaired"]["from"], damaged.as_str());

    // The repaired snapshot restores (without the lost file); latest is it.
    let to = t.path("out");
    t.restore(&repaired[..8], &to);
    let back = restored(&to, &src);
    assert_eq!(fs::read(back.join("docs/b.txt")).unwrap(), b"beta");
    assert!(!back.join("big.bin").exists());
    let (healthy, report) = t.check(false);
    assert!(!healthy && report.contains(&damaged[..8]), "{report}");

    t.cmd(["forget", "--dry-run", &damaged[..8]]).assert().success();
    assert_eq!(t.snapshots_json().len(), 3, "forget --dry-run changes nothing");
    t.cmd(["forget", &damaged[..8]]).assert().success();
    let (healthy, report) = t.check(false);
    assert!(healthy, "{report}");
}

// ------------------------------------------------------------ 6: secret outputs

/// #15.6: an exported key is 0600, even over an existing 0644 file; a dump
/// written with `--dump-to` is 0600.
#[test]
fn exported_keys_and_dumps_are_private() {
    let t = TestRepo::init();
    let key = t.path("key.json");
    fs::write(&key, b"old").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    t.cmd(["key", "export", "-o"]).arg(&key).assert().success();
    assert_eq!(mode_of(&key), 0o600);
    let paper = t.path("paper.txt");
    t.cmd(["key", "export", "--paper", "-o"]).arg(&paper).assert().success();
    assert_eq!(mode_of(&paper), 0o600);

    let env = JobEnv::new();
    let db = env.path("app.sqlite");
    crate::jobs_util::sqlite_exec(&db, "CREATE TABLE t (x); INSERT INTO t VALUES (42);");
    env.config(&format!("[jobs.app]\ndatabases = [{{ kind = \"sqlite\", path = {} }}]\n", q(&db))).init_repo();
    env.run(&["app"]).assert_ok();
    let dump = env.path("app-dump.sqlite");
    env.engine(["restore", "app", "--database", "app", "--dump-to"]).arg(&dump).assert().success();
    assert_eq!(mode_of(&dump), 0o600);
}

/// #15.6: metrics files are readable by the node_exporter user (0644 by
/// default, `metrics_mode` to choose); state stays private.
#[test]
fn metrics_files_get_their_configured_mode() {
    let env = JobEnv::new();
    fs::create_dir(env.path("data")).unwrap();
    fs::write(env.path("data/f"), b"x").unwrap();
    env.config(&format!(
        "[jobs.a]\nfiles = {{ paths = [{}] }}\nmetrics_dir = \"metrics\"\n\n\
         [jobs.b]\nfiles = {{ paths = [{}] }}\nmetrics_dir = \"metrics\"\nmetrics_mode = \"0640\"\n",
        q(env.path("data")),
        q(env.path("data"))
    ))
    .init_repo();
    env.run(&["a", "b"]).assert_ok();
    assert_eq!(mode_of(&env.path("metrics")), 0o755, "the exporter can reach the files");
    assert_eq!(mode_of(&env.path("metrics/holdfast-a.prom")), 0o644);
    assert_eq!(mode_of(&env.path("metrics/holdfast-b.prom")), 0o640);
    assert_eq!(mode_of(&env.path("state/a/state.json")), 0o600);
    assert_eq!(mode_of(&env.path("state/a")), 0o700);
    env.engine(["validate"]).assert().success();
    let bad = JobEnv::new();
    bad.config("[jobs.a]\nfiles = { paths = [\"/tmp\"] }\nmetrics_mode = \"rw-r--r--\"\n");
    let err = stderr_of(&bad.engine(["validate"]).assert().code(2));
    assert!(err.contains("holdfast.toml:") && err.contains("octal"), "{err}");
}

// ------------------------------------------------------------ 7: hangs

/// #15.7: a file replaced by a FIFO between the scan and the read never
/// blocks a backup: it is reported and left out. The swap is a race with the
/// scan; it is retried until it lands in the window, and every attempt must
/// end promptly whatever it hit. Small files of a directory are read
/// together once the directory is scanned, so a small victim followed by
/// 20,000 small siblings waits for the scan of all of them.
#[test]
fn a_file_replaced_by_a_fifo_after_the_scan_does_not_block_the_backup() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..20_000 {
        fs::write(src.join(format!("z{i:05}")), b"x").unwrap();
    }
    let victim = src.join("a");
    let backup = || {
        std::process::Command::new(crate::util::holdfast_bin())
            .arg("--repo")
            .arg(t.repo())
            .args(["backup", "--no-parent"])
            .arg(&src)
            .env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // How long a whole run takes here and now; the swaps are spread over
    // that time (golden-ratio steps), whatever the machine's load.
    fs::write(&victim, vec![7u8; 1000]).unwrap();
    let calibration = std::time::Instant::now();
    assert!(backup().wait().unwrap().success());
    let whole = calibration.elapsed();
    let mut hit = false;
    for attempt in 0..30u32 {
        let _ = fs::remove_file(&victim);
        fs::write(&victim, vec![7u8; 1000]).unwrap();
        let started = std::time::Instant::now();
        let mut child = backup();
        std::thread::sleep(whole.mul_f64((f64::from(attempt) * 0.618_034).fract()));
        fs::remove_file(&victim).unwrap();
        nix::unistd::mkfifo(&victim, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the backup hangs on a FIFO");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(matches!(status.code(), Some(0) | Some(3)), "attempt {attempt}: {status}: {err}");
        if err.contains("not a regular file") || err.contains("replaced") {
            assert_eq!(status.code(), Some(3), "an incomplete snapshot is exit code 3: {err}");
            hit = true;
            break;
        }
    }
    assert!(hit, "the swap never landed between scan and read");
}

// ------------------------------------------------------------ 8: unreadable files

/// Run `holdfast` as `nobody` (who cannot read root's 0600 files).
fn as_nobody(t: &TestRepo, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::util::holdfast_bin())
        .arg("--repo")
        .arg(t.repo())
        .args(args)
        .env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE)
        .current_dir("/");
    c.output().unwrap()
}

/// #15.8: a file that cannot be opened is not stored as an empty file (a
/// later restore with --overwrite would replace real data with nothing): it
/// is left out, the snapshot is marked incomplete, the exit code is 3.
#[test]
fn an_unreadable_file_is_left_out_and_the_snapshot_marked_incomplete() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("secret"), b"root's only").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    for p in [t.path(""), src.clone()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir(t.repo()).unwrap();
    nix::unistd::chown(t.repo(), Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let init = as_nobody(&t, &["init"]);
    assert!(init.status.success(), "{init:?}");

    let out = as_nobody(&t, &["backup", "--json", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("secret") && err.contains("not backed up"), "{err}");
    let snap = parse_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(snap["summary"]["incomplete"], true, "{snap:#}");
    assert_eq!(snap["summary"]["files"], 1, "{snap:#}");

    let ls = as_nobody(&t, &["ls", "latest", "--json"]);
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(listed.contains("readable") && !listed.contains("secret"), "{listed}");
}

/// The scan writes a directory's tree as soon as its files are read, and a
/// hard-linked inode is read once, through its first link. When that read
/// fails, every link of it is left out — including links in directories
/// scanned before the read came back — and the rest of each directory is
/// kept, with the right counts.
#[test]
fn an_unreadable_hard_linked_file_is_left_out_under_every_name() {
    let t = TestRepo::new();
    let src = t.path("src");
    for d in ["a", "b/deep", "c"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("a/secret"), vec![1u8; 300_000]).unwrap();
    fs::set_permissions(src.join("a/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(src.join("a/secret"), src.join("b/deep/secret-2")).unwrap();
    fs::hard_link(src.join("a/secret"), src.join("c/secret-3")).unwrap();
    for d in ["a", "b/deep", "c"] {
        fs::write(src.join(d).join("readable"), d.as_bytes()).unwrap();
    }
    for p in [t.path(""), src.clone(), src.join("a"), src.join("b"), src.join("b/deep"), src.join("c")] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir(t.repo()).unwrap();
    nix::unistd::chown(t.repo(), Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    assert!(as_nobody(&t, &["init"]).status.success());

    let out = as_nobody(&t, &["backup", "--json", src.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let snap = parse_json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(snap["summary"]["files"], 3, "only the readable files count: {snap:#}");
    let skipped = snap["summary"]["skipped"].to_string();
    assert!(skipped.contains("a/secret") && skipped.contains("secret-2") && skipped.contains("secret-3"), "{snap:#}");

    let ls = as_nobody(&t, &["ls", "latest", "--json"]);
    let listed = String::from_utf8_lossy(&ls.stdout);
    assert!(!listed.contains("secret"), "{listed}");
    assert_eq!(listed.matches("readable").count(), 3, "{listed}");
}

/// #15.8: a job run that commits an incomplete snapshot exits 3, notifies
/// `warning` (not `success`), and `status` does not call it ok.
#[test]
fn an_incomplete_job_run_warns_and_is_not_ok() {
    let env = JobEnv::new();
    let data = env.path("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("ok"), b"fine").unwrap();
    // A file that changes for as long as the run reads it.
    let log = data.join("growing.log");
    write_random(&log, 3, 64 << 20);
    env.config(&format!(
        "[jobs.app]\nfiles = {{ paths = [{}] }}\n\
         notify = [{{ events = [\"success\", \"warning\", \"failure\"], command = [\"sh\", \"-c\", {}] }}]\n",
        q(&data),
        q(format!("echo {{{{event}}}} >> {}", shq(env.path("events"))))
    ))
    .init_repo();
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + Duration::from_secs(20);
            let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
            while std::time::Instant::now() < end {
                std::io::Write::write_all(&mut f, b"still writing\n").unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let ran = env.run(&["app"]);
    writer.join().unwrap();
    assert_eq!(ran.status.code(), Some(3), "{ran:?}");
    ran.assert_says("INCOMPLETE");
    assert_eq!(env.lines("events"), ["warning"]);
    let status = env.engine(["status"]).assert().code(3);
    assert!(stdout_of(&status).contains("INCOMPLETE"), "{}", stdout_of(&status));
}

// ------------------------------------------------------------ 9: status and the spool

/// #15.9: `status` on a fresh machine creates nothing that breaks the next
/// `run`; state lives in `state_dir`, private, not in the spool.
#[test]
fn status_first_then_run_works_and_state_is_not_in_the_spool() {
    let env = JobEnv::new();
    fs::create_dir(env.path("data")).unwrap();
    fs::write(env.path("data/f"), b"x").unwrap();
    env.config(&format!("[jobs.app]\nfiles = {{ paths = [{}] }}\nmax_age = \"1d\"\n", q(env.path("data"))));
    env.init_repo();
    env.engine(["status"]).assert().code(1); // stale: never ran
    env.run(&["app"]).assert_ok();
    env.engine(["status"]).assert().success();
    assert!(env.path("state/app/state.json").exists());
    assert!(!env.spool().join("app/state.json").exists());
    for d in [env.spool(), env.spool().join("app"), env.path("state"), env.path("state/app")] {
        assert_eq!(mode_of(&d), 0o700, "{}", d.display());
    }
}

// ------------------------------------------------------------ 10: unit injection

/// #15.10: a newline in a value that reaches a unit is refused where it is
/// written (file:line:column); `%` and spaces are escaped so the units verify.
#[test]
fn unit_values_cannot_inject_directives() {
    for (key, value) in [
        ("description", "shop\\nExecStartPre=/bin/touch /tmp/pwned"),
        ("schedule", "daily\\nExecStartPre=/bin/touch /tmp/pwned"),
        ("spool", "/var/spool/x\\rExecStartPre=/bin/true"),
    ] {
        let env = JobEnv::new();
        env.config(&format!("[jobs.app]\nfiles = {{ paths = [\"/tmp\"] }}\n{key} = \"{value}\"\n"));
        let err = stderr_of(&env.engine(["systemd"]).assert().code(2));
        let config = env.config_path().display().to_string();
        assert!(err.contains(&format!("{config}:")) && err.contains("control character"), "{key}: {err}");
    }
    let env = JobEnv::new();
    fs::create_dir_all(env.path("my data")).unwrap();
    env.config(&format!(
        "[jobs.app]\nfiles = {{ paths = [{}] }}\ndescription = \"100% of the shop\"\nschedule = \"*-*-* 03:00\"\nspool = \"spool dir\"\n",
        q(env.path("my data"))
    ));
    let units = env.path("units");
    env.engine(["systemd", "--output"]).arg(&units).assert().success();
    let service = fs::read_to_string(units.join("holdfast-app.service")).unwrap();
    assert!(service.contains("100%% of the shop"), "{service}");
    assert!(service.contains("ReadWritePaths=\"-"), "{service}");
    assert_eq!(mode_of(&units.join("holdfast-app.service")), 0o644);
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(units.join("holdfast-app.service"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("Unknown key") && !said.contains("Invalid"), "{said}\n{service}");
}

// ------------------------------------------------------------ 11: errors that mislead

/// #15.11: a damaged key file is not "wrong passphrase": exit 4 and the
/// message names the key file and says what to do.
#[test]
fn a_damaged_key_file_is_reported_as_damaged() {
    let t = TestRepo::init();
    let keys = t.repo().join("keys");
    let key = keys.join(&files_in(&keys)[0]);
    let mut bytes = fs::read(&key).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(&key, bytes).unwrap();
    let err = stderr_of(&t.cmd(["snapshots"]).assert().code(4));
    assert!(!err.contains("wrong passphrase") && err.contains("key import"), "{err}");
    let err = stderr_of(&t.cmd_with_passphrase("not it", ["snapshots"]).assert().code(4));
    assert!(err.contains("cannot be used"), "{err}");
    // keys/ unreadable as a directory is not "no key files".
    fs::remove_dir_all(&keys).unwrap();
    fs::write(&keys, b"not a directory").unwrap();
    let err = stderr_of(&t.cmd(["snapshots"]).assert().failure());
    assert!(err.contains("cannot list the key files"), "{err}");
}

/// #15.11: a damaged newest snapshot does not make `latest` silently mean
/// the one before; `--skip-damaged` asks for exactly that.
#[test]
fn latest_fails_while_a_snapshot_cannot_be_read() {
    let t = TestRepo::init();
    let src = source(&t);
    let old = t.backup(&[&src]);
    fs::write(src.join("docs/a.txt"), b"newer").unwrap();
    let new = t.backup(&[&src]);
    let snap = t.repo().join("snapshots").join(&new);
    let mut bytes = fs::read(&snap).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x80;
    fs::write(&snap, bytes).unwrap();
    let err = stderr_of(&t.cmd(["restore", "latest", "--to"]).arg(t.path("out")).assert().code(1));
    assert!(err.contains(&new[..8]) && err.contains("--skip-damaged"), "{err}");
    assert!(!t.path("out").exists(), "nothing restored");
    let out = t.cmd(["restore", "latest", "--skip-damaged", "--to"]).arg(t.path("out")).assert().success();
    assert!(stderr_of(&out).contains(&old[..8]));
}

/// #15.11: a missing pack is named, with a file that needs it and the next
/// step — not a bare "No such file or directory". A missing `tmp/` makes
/// `check` unhealthy, and a backup recreates it.
#[test]
fn a_missing_pack_or_tmp_is_named_with_what_needs_it() {
    let t = TestRepo::init();
    let src = source(&t);
    t.backup(&[&src]);
    let packs = t.repo().join("packs");
    let largest = largest_pack(t.repo());
    fs::remove_file(packs.join(&largest)).unwrap();
    let err = stderr_of(&t.cmd(["restore", "latest", "--to"]).arg(t.path("out")).assert().code(1));
    let short = &largest.file_name().unwrap().to_string_lossy()[..8];
    assert!(err.contains(&format!("pack {short}")) && err.contains("check"), "{err}");
    assert!(err.contains("big.bin") || err.contains("docs/"), "the error names a file that needs the pack: {err}");

    let t = TestRepo::init();
    fs::remove_dir(t.repo().join("tmp")).unwrap();
    let (healthy, report) = t.check(false);
    assert!(!healthy && report.contains("tmp/"), "{report}");
    t.backup(&[&source(&t)]);
    let (healthy, report) = t.check(false);
    assert!(healthy, "{report}");
}

// ------------------------------------------------------------ 12: the minor ones

/// #15.12: `init --copy-params-from NAME` takes a configured repository's
/// name and its passphrase_file; without a passphrase for a path it names
/// the right variable.
#[test]
fn init_copy_params_from_takes_a_configured_repository() {
    let env = JobEnv::new();
    fs::write(env.path("offsite-passphrase"), "another passphrase\n").unwrap();
    env.config(&format!(
        "[repositories.offsite]\npath = \"offsite\"\npassphrase_file = \"offsite-passphrase\"\n\n\
         [jobs.app]\nfiles = {{ paths = [{}] }}\nrepositories = [\"main\", \"offsite\"]\n",
        q(env.path("data"))
    ));
    fs::create_dir(env.path("data")).unwrap();
    env.init_repo();
    env.engine(["--repo", "offsite", "init", "--copy-params-from", "main"]).assert().success();
    env.run(&["app"]).assert_ok();
    env.engine(["--repo", "offsite", "check"]).assert().success();

    let t = TestRepo::new();
    let err = stderr_of(
        &t.cmd(["init", "--copy-params-from"])
            .arg(env.repo())
            .env_remove("HOLDFAST_FROM_PASSPHRASE")
            .assert()
            .failure(),
    );
    assert!(!err.contains("set HOLDFAST_PASSPHRASE"), "{err}");
}

/// #15.12: a path given twice is backed up (and counted) once; a negative
/// compression level is accepted as the help says.
#[test]
fn a_path_given_twice_counts_once_and_negative_levels_are_accepted() {
    let t = TestRepo::init_with(&["--compression-level", "-7"]);
    let src = source(&t);
    let twice = t.backup_json(&[&src, &src]);
    let once = t.backup_json(&[&src]);
    assert_eq!(twice["summary"]["files"], once["summary"]["files"]);
    assert_eq!(twice["summary"]["files"], 3);
}

/// #15.12: `ls` escapes control characters in names (a name cannot forge
/// terminal output) and `--json` carries names that are not UTF-8 exactly.
#[test]
fn ls_escapes_control_characters_and_json_keeps_exact_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("evil\nname\x1b[31m"), b"x").unwrap();
    fs::write(src.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9")), b"y").unwrap();
    t.backup(&[&src]);
    let text = stdout_of(&t.cmd(["ls", "latest"]).assert().success());
    assert!(text.contains("evil\\nname\\u{1b}[31m") && !text.contains('\x1b'), "{text}");
    assert!(text.contains("latin1-\\xe9"), "{text}");
    let json = t.ls_json("latest");
    let e = json.iter().find(|e| e["path"].as_str().unwrap().contains("latin1")).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(e["path_base64"].as_str().unwrap()).unwrap();
    assert!(bytes.ends_with(b"latin1-\xe9"), "{e:#}");
}

/// `restore`'s warnings and errors name files from the snapshot: a name
/// with escape sequences and a line break neither drives the terminal nor
/// forges a line of output.
#[test]
fn restore_warnings_and_errors_escape_control_characters_in_names() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    let evil = "sock\x1b[2J\x1b[31mFAKE\nholdfast: restored everything";
    let _listener = std::os::unix::net::UnixListener::bind(src.join(evil)).unwrap();
    fs::write(src.join("plain.txt"), b"x").unwrap();
    t.backup(&[&src]);

    let warned = t.cmd(["restore", "latest", "--to"]).arg(t.path("out")).output().unwrap();
    let failed = t.cmd(["restore", "latest", "--path"]).arg(src.join(evil).join("below")).output().unwrap();

    for out in [&warned, &failed] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains('\x1b'), "a raw escape reached the terminal: {stderr:?}");
        assert!(!stderr.lines().any(|l| l.starts_with("holdfast: restored")), "a forged line: {stderr:?}");
    }
    assert!(String::from_utf8_lossy(&warned.stderr).contains("a socket; not restored"), "{warned:?}");
    assert!(!failed.status.success(), "{failed:?}");
}

/// #15.12: a reader that goes away (`holdfast ls | head -1`) is no error.
#[test]
fn a_broken_pipe_ends_quietly() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    for i in 0..3000 {
        fs::write(src.join(format!("file-{i}")), b"").unwrap();
    }
    t.backup(&[&src]);
    let script = format!(
        "{} --repo {} ls latest | head -1 >/dev/null; echo \"status ${{PIPESTATUS[0]}}\"",
        shq(crate::util::holdfast_bin()),
        shq(t.repo())
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .env("HOLDFAST_PASSPHRASE", crate::util::PASSPHRASE)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("status 0"), "{stdout}{stderr}");
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
}

// ------------------------------------------------------------ exit codes

/// The documented exit codes: usage 2, config 2, key 4, busy 5.
#[test]
fn exit_codes_say_what_went_wrong() {
    let t = TestRepo::init();
    t.cmd(["status"]).assert().code(2);
    t.cmd(["restore", "latest"]).assert().code(2);
    t.cmd(["no-such-command"]).assert().code(2);
    t.cmd_with_passphrase("wrong", ["snapshots"]).assert().code(4);
    let help = stdout_of(&t.cmd(["--help"]).assert().success());
    assert!(help.contains("Exit codes") && help.contains("143"), "{help}");

    let env = JobEnv::new();
    env.config("[jobs.app]\nfiles = { paths = [\"/tmp\"] }\nretries = \"many\"\n");
    let err = stderr_of(&env.engine(["validate"]).assert().code(2));
    assert!(err.contains("holdfast.toml:"), "{err}");

    let env = JobEnv::new();
    fs::create_dir(env.path("data")).unwrap();
    env.config(&format!(
        "[jobs.app]\nfiles = {{ paths = [{}] }}\nhooks = [{{ phase = \"before\", run = \"sleep 5\" }}]\n",
        q(env.path("data"))
    ))
    .init_repo();
    let first = env.start(env.cmd(["run", "app"]));
    crate::jobs_util::wait_for("the first run to hold the lock", Duration::from_secs(20), || {
        env.spool().join("app/journal.json").exists()
    });
    let second = env.run(&["app"]);
    assert_eq!(second.status.code(), Some(5), "{second:?}");
    second.assert_says("already running");
    first.wait().assert_ok();
}

#[test]
fn a_stray_file_with_a_non_ascii_name_in_the_repository_is_named_not_a_crash() {
    let t = TestRepo::init();
    t.backup(&[source(&t)]);
    // Three-byte characters where an id's first eight hex digits would be:
    // byte 8 falls inside one.
    fs::write(t.repo().join("snapshots/€€€€€€€€€"), b"not a snapshot").unwrap();
    fs::write(t.repo().join("index/€€€€€€€€€"), b"not an index").unwrap();
    for args in [&["snapshots"][..], &["check"], &["ls", "latest", "--skip-damaged"]] {
        let out = t.cmd(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
    }
    let check = t.cmd(["check"]).output().unwrap();
    assert!(String::from_utf8_lossy(&check.stdout).contains("€€€€€€€€"), "the stray file is named");
}
