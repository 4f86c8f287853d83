//! `prune`: keep rules, forgetting snapshots and the two-phase garbage
//! collection (mark in one prune, delete in a later one).
//!
//! - A dry run says what would go and why the rest stays, and changes
//!   nothing.
//! - Two prunes with `--grace 0s` give the space of forgotten data back.
//! - Backups and prunes running at the same time all succeed, and every
//!   snapshot left restores what its backup read.
//! - A prune killed at any moment leaves a repository that checks, prunes
//!   again and restores.
//! - Forgetting half of the history repacks partly used packs: after two
//!   prunes the repository is near the size of a fresh backup of what
//!   remains; a prune killed while repacking leaves a repository that
//!   checks, and the next prunes finish the job. Small files that do not
//!   compress give their space back too; small text files still share a
//!   blob.
//! - Job retention touches only the job's own snapshots;
//!   `prune_after_backup` applies it after each run.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::jobs_util::{JobEnv, time_key};
use crate::util::{
    Node, PASSPHRASE, TestRepo, assert_same_tree, holdfast_bin, parse_json, random_bytes, restored, stderr_of,
    stdout_of, tree_fingerprint, write_random,
};

const MIB: u64 = 1 << 20;

/// Every file under `dir` as (path relative to `dir`, size), sorted.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("list directory") {
            let e = e.expect("directory entry");
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.push((format!("{rel}/"), 0));
                stack.push(p);
            } else {
                out.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out.sort();
    out
}

/// Bytes of all files under `dir`.
fn total_size(dir: &Path) -> u64 {
    listing(dir).iter().map(|(_, s)| s).sum()
}

/// Files directly in `repo/<sub>/` (0 when it does not exist).
fn count(repo: &Path, sub: &str) -> usize {
    fs::read_dir(repo.join(sub)).map(|rd| rd.count()).unwrap_or(0)
}

/// The full ids of the repository's snapshots.
fn snapshot_ids(t: &TestRepo) -> Vec<String> {
    let mut ids: Vec<String> =
        t.snapshots_json().iter().map(|s| s["id"].as_str().expect("snapshot id").to_string()).collect();
    ids.sort();
    ids
}

/// `prune ARGS... --json` on `t`; the one report.
fn prune_json(t: &TestRepo, args: &[&str]) -> Value {
    let out = t.cmd(["prune"]).args(args).arg("--json").assert().success();
    let v = parse_json(&stdout_of(&out));
    let reports = v.as_array().expect("prune --json prints an array of reports");
    assert_eq!(reports.len(), 1, "one report for an ad hoc prune: {v:#}");
    reports[0].clone()
}

#[track_caller]
fn assert_checks(t: &TestRepo, read_data: bool, when: &str) {
    let (ok, report) = t.check(read_data);
    assert!(ok, "{when}: check{} should pass:\n{report}", if read_data { " --read-data" } else { "" });
}

/// Restore `id` into a fresh directory and compare it with `expected`, the
/// fingerprint of `src` when `id` was taken.
#[track_caller]
fn assert_restores(t: &TestRepo, id: &str, src: &Path, expected: &[Node], tag: &str) {
    let out = t.path(&format!("restore-{tag}"));
    t.restore(id, &out);
    assert_same_tree(expected, &tree_fingerprint(&restored(&out, src)));
    fs::remove_dir_all(&out).unwrap();
}

// ---------------------------------------------------------------- 1. dry run

#[test]
fn a_dry_run_says_what_would_go_and_why_the_rest_stays_and_changes_nothing() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        write_random(&src.join("data.bin"), 100 + i, 64 * 1024);
        ids.push(t.backup(&[&src]));
    }
    // A real prune first, so that the repository holds marks a dry run with
    // --grace 0s would act on: the dry run must still delete nothing.
    let first = prune_json(&t, &["--keep-last", "3", "--grace", "0s"]);
    assert_eq!(first["forgotten"], 1, "{first:#}");
    assert!(first["gc"]["packs_marked"].as_u64().unwrap() > 0, "the forgotten snapshot's pack is marked: {first:#}");
    write_random(&src.join("data.bin"), 200, 64 * 1024);
    ids.push(t.backup(&[&src]));
    // Newest first: ids[4], ids[3] kept by --keep-last 2; ids[2], ids[1] go.
    let before = listing(t.repo());
    let snaps_before = snapshot_ids(&t);

    let out =
        t.cmd(["prune", "--keep-last", "2", "--keep-daily", "1", "--grace", "0s", "--dry-run"]).assert().success();
    let text = stdout_of(&out);
    assert!(text.contains("dry run"), "the report says it is a dry run:\n{text}");
    let line_of = |id: &str| -> String {
        text.lines()
            .find(|l| l.contains(&id[..8]))
            .unwrap_or_else(|| panic!("no line for {}:\n{text}", &id[..8]))
            .to_string()
    };
    let newest = line_of(&ids[4]);
    assert!(newest.trim_start().starts_with("keep"), "{newest}");
    for why in ["newest", "last", "daily "] {
        assert!(newest.contains(why), "the newest is kept for {why:?}: {newest}");
    }
    let second = line_of(&ids[3]);
    assert!(second.trim_start().starts_with("keep") && second.contains("last"), "{second}");
    for gone in [&ids[2], &ids[1]] {
        let l = line_of(gone);
        assert!(l.trim_start().starts_with("forget"), "{l}");
    }
    assert!(text.contains("2 snapshot(s) would be forgotten"), "{text}");
    assert!(!text.contains(&ids[0][..8]), "the forgotten snapshot is not listed:\n{text}");

    let after = listing(t.repo());
    assert_eq!(before, after, "a dry run changes nothing in the repository");
    assert_eq!(snaps_before, snapshot_ids(&t));

    // The same in JSON: decisions with their reasons, still nothing changed.
    let r = prune_json(&t, &["--keep-last", "2", "--grace", "0s", "--dry-run"]);
    assert_eq!(r["dry_run"], true, "{r:#}");
    assert_eq!(r["forgotten"], 2, "{r:#}");
    let decisions = r["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 4, "{r:#}");
    let by_id: BTreeMap<&str, &Value> = decisions.iter().map(|d| (d["id"].as_str().unwrap(), d)).collect();
    assert_eq!(by_id[ids[4].as_str()]["keep"], true);
    assert_eq!(by_id[ids[4].as_str()]["reasons"], serde_json::json!(["newest", "last"]));
    assert_eq!(by_id[ids[3].as_str()]["reasons"], serde_json::json!(["last"]));
    for gone in [&ids[2], &ids[1]] {
        assert_eq!(by_id[gone.as_str()]["keep"], false);
        assert_eq!(by_id[gone.as_str()]["reasons"], serde_json::json!([]));
    }
    assert!(
        r["gc"]["packs_deleted"].as_u64().unwrap() > 0,
        "the dry run reports the marked pack it would delete: {r:#}"
    );
    assert_eq!(before, listing(t.repo()), "a dry run (--json) changes nothing in the repository");
    assert_eq!(snaps_before, snapshot_ids(&t));
}

// ---------------------------------------------------------------- 2. space

/// A snapshot file under a name that is not the hash of its bytes (here:
/// a copy under the upper-case name) is damaged every time prune reads the
/// list, not only the first: a name read before must not vouch for another.
#[test]
fn a_snapshot_file_under_a_name_that_is_not_its_hash_stops_prune_before_it_deletes_anything() {
    let t = TestRepo::init();
    let src = t_src(&t);
    write_random(&src.join("data.bin"), 1, 64 * 1024);
    let id = t.backup(&[&src]);
    let dir = t.repo().join("snapshots");
    fs::copy(dir.join(&id), dir.join(id.to_uppercase())).unwrap();
    let packs = pack_files(t.repo());
    let out = t.cmd(["prune", "--keep-last", "1", "--grace", "0s"]).assert().failure();
    let said = stderr_of(&out);
    assert!(said.contains("cannot be read"), "{said}");
    // Not `forget ABCD1234`: lower-cased, that would match the real one.
    assert!(said.contains(&format!("move snapshots/{} out of the repository", id.to_uppercase())), "{said}");
    assert_eq!(pack_files(t.repo()), packs, "nothing deleted");
    assert!(dir.join(&id).exists(), "the real snapshot file stays");
    fs::remove_file(dir.join(id.to_uppercase())).unwrap();
    // A name whose eighth byte is inside a character is named, not a crash.
    fs::write(dir.join("abcdefg\u{e9}"), b"junk").unwrap();
    let out = t.cmd(["prune", "--keep-last", "1", "--grace", "0s"]).assert().failure().code(1);
    assert!(stderr_of(&out).contains("snapshots/abcdefg\u{e9} out of the repository"), "{}", stderr_of(&out));
    fs::remove_file(dir.join("abcdefg\u{e9}")).unwrap();
    assert_checks(&t, true, "once the stray copy is gone");
    assert_eq!(snapshot_ids(&t), vec![id]);
}

/// A stray file in a pack directory, old enough to be swept as a leftover,
/// whose name does not start with two one-byte characters: prune goes on.
#[test]
fn a_stray_file_with_a_multibyte_name_among_the_packs_does_not_stop_prune() {
    let t = TestRepo::init();
    let src = t_src(&t);
    write_random(&src.join("data.bin"), 1, 64 * 1024);
    t.backup(&[&src]);
    let stray = t.repo().join("packs/ab");
    fs::create_dir_all(&stray).unwrap();
    let stray = stray.join("a\u{e9}-stray");
    fs::write(&stray, b"not a pack").unwrap();
    let st = Command::new("touch").arg("-d").arg("3 days ago").arg(&stray).status().unwrap();
    assert!(st.success());
    t.cmd(["prune", "--keep-last", "1", "--grace", "0s"]).assert().success();
    assert_checks(&t, true, "after the sweep");
}

#[test]
fn two_prunes_with_no_grace_give_the_space_of_forgotten_data_back() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut last = (String::new(), Vec::new());
    for i in 0..3 {
        write_random(&src.join("big.bin"), 7000 + i, 2 * MIB);
        let id = t.backup(&[&src]);
        last = (id, tree_fingerprint(&src));
    }
    let size_before = total_size(t.repo());

    let first = prune_json(&t, &["--keep-last", "1", "--grace", "0s"]);
    assert_eq!(first["forgotten"], 2, "{first:#}");
    assert!(first["gc"]["packs_marked"].as_u64().unwrap() >= 2, "{first:#}");
    assert_eq!(first["gc"]["packs_deleted"], 0, "the first prune only marks: {first:#}");
    assert!(count(t.repo(), "marks") >= 2, "marks are written: {:?}", listing(t.repo()));

    let second = prune_json(&t, &["--keep-last", "1", "--grace", "0s"]);
    assert!(second["gc"]["packs_deleted"].as_u64().unwrap() >= 2, "{second:#}");
    assert_eq!(count(t.repo(), "marks"), 0, "no marks are left: {:?}", listing(t.repo()));

    let size_after = total_size(t.repo());
    assert!(
        size_after + 3 * MIB < size_before,
        "two 2 MiB random files are gone: {size_before} bytes before, {size_after} after"
    );
    assert_eq!(snapshot_ids(&t), vec![last.0.clone()]);
    assert_checks(&t, true, "after two prunes");
    assert_restores(&t, &last.0, &src, &last.1, "kept");
}

// ---------------------------------------------------------------- 3. concurrency

/// Between two backups: two new files (some with the content of files
/// deleted earlier, so a backup meets blobs of forgotten, marked packs), and
/// the oldest file goes.
fn churn(src: &Path, round: u64) {
    for k in 0..2 {
        let n = round * 2 + k;
        // Every third file repeats the content of a file of 9 files ago.
        let seed = if n.is_multiple_of(3) && n >= 9 { 50_000 + n - 9 } else { 50_000 + n };
        write_random(&src.join(format!("f{n:05}.bin")), seed, 48 * 1024 + (n % 7) * 20_000);
    }
    let mut names: Vec<PathBuf> = fs::read_dir(src).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    if names.len() > 6 {
        fs::remove_file(&names[0]).unwrap();
    }
}

fn run_logged(mut c: Command) -> Result<String, String> {
    let out = c.stdin(Stdio::null()).output().map_err(|e| format!("start holdfast: {e}"))?;
    let text = format!(
        "{}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() { Ok(String::from_utf8_lossy(&out.stdout).into_owned()) } else { Err(text) }
}

fn std_cmd(repo: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(holdfast_bin());
    c.arg("--repo")
        .arg(repo)
        .args(args)
        .env("HOLDFAST_PASSPHRASE", PASSPHRASE)
        .env_remove("HOLDFAST_REPOSITORY")
        .env_remove("HOLDFAST_CONFIG");
    c
}

#[test]
fn backups_and_prunes_at_the_same_time_all_succeed_and_every_snapshot_restores() {
    let t = TestRepo::init_with(&["--pack-size", "262144"]);
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    churn(&src, 0);
    let repo = t.repo().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(22);

    let backups = {
        let (repo, src, failures, stop) = (repo.clone(), src.clone(), failures.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut taken: BTreeMap<String, Vec<Node>> = BTreeMap::new();
            let mut round = 1;
            while Instant::now() < deadline {
                match run_logged(std_cmd(&repo, &["backup", src.to_str().unwrap()])) {
                    Ok(out) => {
                        taken.insert(out.trim().to_string(), tree_fingerprint(&src));
                    }
                    Err(e) => failures.lock().unwrap().push(format!("backup {round}: {e}")),
                }
                churn(&src, round);
                round += 1;
            }
            stop.store(true, Ordering::SeqCst);
            (taken, round - 1)
        })
    };
    let prunes = {
        let (repo, failures, stop) = (repo.clone(), failures.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            let mut deleted = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match run_logged(std_cmd(&repo, &["prune", "--keep-last", "2", "--grace", "0s", "--json"])) {
                    Ok(out) => deleted += parse_json(&out)[0]["gc"]["packs_deleted"].as_u64().unwrap_or(0),
                    Err(e) => failures.lock().unwrap().push(format!("prune {n}: {e}")),
                }
            }
            (n, deleted)
        })
    };
    let (taken, backups_run) = backups.join().expect("the backup thread");
    let (prunes_run, packs_deleted) = prunes.join().expect("the prune thread");
    let failures = failures.lock().unwrap().clone();
    if !failures.is_empty() {
        let (_, check) = t.check(true);
        panic!(
            "every backup and prune should succeed; {} of {backups_run} backups and {prunes_run} prunes failed, the first:\n{}\n\ncheck --read-data then says:\n{check}",
            failures.len(),
            failures[..failures.len().min(3)].join("\n\n")
        );
    }
    assert!(backups_run >= 5 && prunes_run >= 5, "{backups_run} backups and {prunes_run} prunes ran");
    assert!(packs_deleted > 0, "the prunes deleted packs ({prunes_run} prunes)");

    assert_checks(&t, true, &format!("after {backups_run} backups and {prunes_run} prunes at the same time"));
    let left = snapshot_ids(&t);
    assert!(left.len() >= 2, "at least the two newest snapshots stay: {left:?}");
    for (i, id) in left.iter().enumerate() {
        let expected = taken.get(id).unwrap_or_else(|| panic!("snapshot {id} was not made by a backup of the test"));
        assert_restores(&t, id, &src, expected, &format!("{i}"));
    }
}

// ---------------------------------------------------------------- 4. kill -9

/// Copy the repository of `from` into a fresh [`TestRepo`].
fn copy_of(from: &TestRepo) -> TestRepo {
    let t = TestRepo::new();
    let st = Command::new("cp").arg("-a").arg(from.repo()).arg(t.repo()).status().expect("run cp");
    assert!(st.success(), "cp -a the repository");
    t
}

/// Pack files in the repository.
fn pack_files(repo: &Path) -> usize {
    listing(&repo.join("packs")).iter().filter(|(p, _)| !p.ends_with('/')).count()
}

/// The names in `repo/index/`.
fn index_files(repo: &Path) -> Vec<(String, u64)> {
    listing(&repo.join("index"))
}

/// When to kill the second prune.
#[derive(Debug, Clone, Copy)]
enum Moment {
    After(Duration),
    /// `index/` changed: the consolidated index is being written or the old
    /// files are going, no pack deleted yet.
    IndexChanged,
    /// At least one marked pack is gone.
    PackDeleted,
}

#[test]
fn a_prune_killed_at_any_moment_leaves_a_repository_that_checks_prunes_and_restores() {
    let base = TestRepo::init_with(&["--pack-size", "262144"]);
    let src = t_src(&base);
    let mut kept = (String::new(), Vec::new());
    for i in 0..4 {
        write_random(&src.join("data.bin"), 9000 + i, 3 * MIB);
        kept = (base.backup(&[&src]), tree_fingerprint(&src));
    }
    let first = prune_json(&base, &["--keep-last", "1", "--grace", "0s"]);
    assert_eq!(first["forgotten"], 3, "{first:#}");
    let marked = count(base.repo(), "marks");
    assert!(marked >= 10, "many packs to delete: {first:#}");
    let packs_before = pack_files(base.repo());
    let index_before = index_files(base.repo());

    let moments = [
        Moment::After(Duration::from_millis(1)),
        Moment::After(Duration::from_millis(5)),
        Moment::After(Duration::from_millis(20)),
        Moment::IndexChanged,
        Moment::PackDeleted,
    ];
    let mut outcomes = Vec::new();
    let mut mid_way = 0;
    for (round, moment) in moments.into_iter().enumerate() {
        let t = copy_of(&base);
        let mut child = std_cmd(t.repo(), &["prune", "--keep-last", "1", "--grace", "0s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start holdfast prune");
        let started = Instant::now();
        let reached = || match moment {
            Moment::After(d) => started.elapsed() >= d,
            Moment::IndexChanged => index_files(t.repo()) != index_before,
            Moment::PackDeleted => pack_files(t.repo()) < packs_before,
        };
        // Busy: deleting a few packs takes well under a millisecond.
        while !reached() && child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(60), "{moment:?} never came");
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        let deleted = packs_before.saturating_sub(pack_files(t.repo()));
        let killed = status.signal() == Some(9);
        if killed && matches!(moment, Moment::IndexChanged | Moment::PackDeleted) && deleted < marked {
            mid_way += 1;
        }
        outcomes.push(format!("{moment:?}: {status}, {deleted} of {marked} marked packs deleted"));
        let when = format!("prune killed at {moment:?} ({status}, {deleted} of {marked} marked packs deleted)");

        assert_checks(&t, false, &when);
        let again = t.cmd(["prune", "--keep-last", "1", "--grace", "0s", "--json"]).output().unwrap();
        assert!(
            again.status.success(),
            "{when}: the next prune should succeed: {}\n{}",
            again.status,
            String::from_utf8_lossy(&again.stderr)
        );
        let again = parse_json(&String::from_utf8_lossy(&again.stdout));
        assert_checks(&t, true, &format!("{when}, then pruned again"));
        assert_eq!(snapshot_ids(&t), vec![kept.0.clone()], "{when}");
        assert_eq!(
            packs_before - pack_files(t.repo()),
            marked,
            "{when}: after the next prune every marked pack is gone: {again:#}"
        );
        assert_restores(&t, &kept.0, &src, &kept.1, &format!("{round}"));
    }
    // Not a failure of holdfast, but then the test did not test what it is for.
    assert!(mid_way > 0, "no kill landed in the middle of the deletion: {outcomes:#?}");
}

// ---------------------------------------------------------------- 5. repacking

/// Bytes of the pack files.
fn pack_bytes(repo: &Path) -> u64 {
    listing(&repo.join("packs")).iter().map(|(_, s)| s).sum()
}

/// The source as it is at `round`: 40 files of 64 KiB; each round after
/// the first gives four of them new content.
fn history_state(src: &Path, round: u64) {
    for f in 0..40u64 {
        // File f last changed in the latest round r <= round with r % 10 == f % 10.
        let changed = (0..=round).rev().find(|r| *r > 0 && r % 10 == f % 10).unwrap_or(0);
        write_random(&src.join(format!("f{f:02}")), 100 * f + changed, 64 * 1024);
    }
}

/// Ten states of a source (`state(src, round)`) backed up into one
/// repository, and the last five into a fresh one: the repository, the
/// source, each backup's id with the tree it read, and the fresh copy.
fn ten_states_and_a_fresh_copy_of_the_last_five(
    state: fn(&Path, u64),
) -> (TestRepo, PathBuf, Vec<(String, Vec<Node>)>, TestRepo) {
    let t = TestRepo::init();
    let src = t_src(&t);
    let mut ids = Vec::new();
    for round in 0..10 {
        state(&src, round);
        ids.push((t.backup(&[&src]), tree_fingerprint(&src)));
    }
    let fresh = TestRepo::init();
    for round in 5..10 {
        state(&src, round);
        fresh.backup(&[&src]);
    }
    (t, src, ids, fresh)
}

#[test]
fn forgetting_half_the_history_repacks_until_the_repository_is_near_a_fresh_copys_size() {
    let (t, src, ids, fresh) = ten_states_and_a_fresh_copy_of_the_last_five(history_state);
    let first = prune_json(&t, &["--keep-last", "5", "--grace", "0s"]);
    assert_eq!(first["forgotten"], 5, "{first:#}");
    assert!(first["gc"]["packs_repacked"].as_u64().unwrap() >= 1, "partly used packs are repacked: {first:#}");
    assert_checks(&t, true, "after repacking, before the old packs go");
    let second = prune_json(&t, &["--keep-last", "5", "--grace", "0s"]);
    assert!(second["gc"]["packs_deleted"].as_u64().unwrap() >= 1, "{second:#}");
    assert_eq!(second["gc"]["packs_repacked"], 0, "nothing left to repack: {second:#}");
    let (left, fresh_size) = (pack_bytes(t.repo()), pack_bytes(fresh.repo()));
    assert!(
        left as f64 <= fresh_size as f64 * 1.1,
        "{left} bytes of packs left; a fresh backup of what remains stores {fresh_size}"
    );
    assert_checks(&t, true, "after two prunes");
    for (round, (id, expected)) in ids.iter().enumerate().skip(5) {
        assert_restores(&t, id, &src, expected, &format!("kept-{round}"));
    }
    // `--max-unused unlimited` never repacks; a bad value is refused.
    t.cmd(["prune", "--keep-last", "1", "--grace", "0s", "--max-unused", "unlimited", "--dry-run", "--json"])
        .assert()
        .success();
    let bad = t.cmd(["prune", "--keep-last", "1", "--max-unused", "150%"]).assert().failure();
    assert!(stderr_of(&bad).contains("percentage"), "{}", stderr_of(&bad));
}

/// The source at `round`: 120 small incompressible files (8-40 KiB, under
/// the chunker's minimum, so the backup reads them in directory batches) in
/// two directories; each round after the first gives 12 of them, spread
/// over both directories, new content and leaves the rest untouched.
fn small_files_state(src: &Path, round: u64) {
    for f in 0..120u64 {
        let changed = (1..=round).rev().find(|r| (f * 7 + r * 13) % 10 == 0).unwrap_or(0);
        let dir = src.join(format!("d{}", f % 2));
        let path = dir.join(format!("f{f:03}"));
        let content = random_bytes(1000 * f + changed, 8 * 1024 + (f as usize * 2713) % (32 * 1024));
        // An unchanged file is left as it is (same mtime, not read again).
        if fs::read(&path).ok().as_ref() != Some(&content) {
            fs::create_dir_all(&dir).unwrap();
            fs::write(&path, content).unwrap();
        }
    }
}

#[test]
fn small_files_that_do_not_compress_give_their_space_back_and_text_still_shares_blobs() {
    let (t, src, ids, fresh) = ten_states_and_a_fresh_copy_of_the_last_five(small_files_state);
    for _ in 0..2 {
        prune_json(&t, &["--keep-last", "5", "--grace", "0s"]);
    }
    let (left, fresh_size) = (pack_bytes(t.repo()), pack_bytes(fresh.repo()));
    assert!(
        left as f64 <= fresh_size as f64 * 1.1,
        "{left} bytes of packs left; a fresh backup of what remains stores {fresh_size}: \
         a file's old version lives on in a blob its unchanged neighbours share"
    );
    assert_checks(&t, true, "after two prunes");
    for (round, (id, expected)) in ids.iter().enumerate().skip(5) {
        assert_restores(&t, id, &src, expected, &format!("small-{round}"));
    }

    // Small text files still share a blob per directory: stored in one
    // compressed piece, far smaller than each compressed alone would be.
    let text = TestRepo::init();
    let notes = t.path("notes");
    fs::create_dir_all(&notes).unwrap();
    for f in 0..60 {
        let line = format!("note {f}: the quarterly figures are in the shared folder, see the usual place\n");
        fs::write(notes.join(format!("n{f:02}.txt")), line.repeat(100)).unwrap();
    }
    text.backup(&[&notes]);
    let v = parse_json(&stdout_of(&text.cmd(["stats", "--json"]).assert().success()));
    assert_eq!(v["all"]["files"], 60, "{v:#}");
    assert_eq!(v["all"]["chunks"], 1, "60 small text files, one shared blob: {v:#}");
    let expected = tree_fingerprint(&notes);
    let out = t.path("notes-out");
    text.restore("latest", &out);
    assert_same_tree(&expected, &tree_fingerprint(&restored(&out, &notes)));
}

#[test]
fn a_prune_killed_while_repacking_leaves_a_repository_that_checks_and_the_next_prunes_finish_the_job() {
    let base = TestRepo::init_with(&["--pack-size", "262144"]);
    let src = t_src(&base);
    let mut ids = Vec::new();
    for round in 0..6 {
        history_state(&src, round * 3);
        ids.push((base.backup(&[&src]), tree_fingerprint(&src)));
    }
    let mut outcomes = Vec::new();
    let mut killed = 0;
    for delay in [1u64, 5, 20, 60] {
        let t = copy_of(&base);
        let mut child = std_cmd(t.repo(), &["prune", "--keep-last", "3", "--grace", "0s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start holdfast prune");
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let status = child.wait().unwrap();
        killed += usize::from(status.signal() == Some(9));
        let when = format!("prune killed after {delay} ms ({status}, {} packs)", pack_files(t.repo()));
        outcomes.push(when.clone());
        assert_checks(&t, true, &when);
        for round in 0..3 {
            let again = t.cmd(["prune", "--keep-last", "3", "--grace", "0s", "--json"]).output().unwrap();
            assert!(
                again.status.success(),
                "{when}: prune {round} after it: {}",
                String::from_utf8_lossy(&again.stderr)
            );
        }
        assert_checks(&t, true, &format!("{when}, then pruned again"));
        for (id, expected) in ids.iter().skip(3) {
            assert_restores(&t, id, &src, expected, &format!("{delay}"));
        }
        let settled = prune_json(&t, &["--keep-last", "3", "--grace", "0s"]);
        let gc = &settled["gc"];
        assert_eq!(
            (&gc["packs_marked"], &gc["packs_repacked"], &gc["packs_deleted"]),
            (&Value::from(0), &Value::from(0), &Value::from(0)),
            "{when}: three prunes settle the repository: {settled:#}"
        );
    }
    // Not a failure of holdfast, but then the test did not test what it is for.
    assert!(killed > 0, "every prune ended before its kill: {outcomes:#?}");
}

fn t_src(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    src
}

// ---------------------------------------------------------------- 5. jobs

/// The ids of `job`'s snapshots, oldest first.
fn job_ids(env: &JobEnv, job: &str) -> Vec<String> {
    let mut snaps = env.snapshots_json(job);
    snaps.sort_by_key(|s| time_key(s["time"].as_str().expect("snapshot time")));
    snaps.iter().map(|s| s["id"].as_str().expect("snapshot id").to_string()).collect()
}

#[test]
fn job_retention_keeps_the_jobs_newest_and_leaves_other_jobs_alone() {
    let env = JobEnv::new();
    env.config(
        "[jobs.app]\n[jobs.app.files]\npaths = [\"app\"]\n[jobs.app.retention]\nlast = 2\n\n\
         [jobs.other]\n[jobs.other.files]\npaths = [\"other\"]\n",
    )
    .init_repo();
    fs::create_dir_all(env.path("app")).unwrap();
    fs::create_dir_all(env.path("other")).unwrap();
    for i in 0..4 {
        write_random(&env.path("app/data.bin"), 300 + i, 100 * 1024);
        env.run(&["app"]).assert_ok();
    }
    for i in 0..2 {
        write_random(&env.path("other/data.bin"), 400 + i, 100 * 1024);
        env.run(&["other"]).assert_ok();
    }
    let app = job_ids(&env, "app");
    let other = job_ids(&env, "other");
    assert_eq!((app.len(), other.len()), (4, 2));

    env.engine(["prune", "app", "--grace", "0s"]).assert().success();
    assert_eq!(job_ids(&env, "app"), app[2..].to_vec(), "the two newest snapshots of app stay");
    assert_eq!(job_ids(&env, "other"), other, "the other job's snapshots are untouched");
    // A second prune deletes what the first marked; both jobs still restore.
    env.engine(["prune", "app", "--grace", "0s"]).assert().success();
    assert_eq!(job_ids(&env, "app"), app[2..].to_vec());
    assert_eq!(job_ids(&env, "other"), other);
    env.engine(["--repo", "main", "check", "--read-data"]).assert().success();
    let out = env.restore(&app[3], "restored-app");
    assert_eq!(
        fs::read(restored(&out, &env.path("app/data.bin"))).unwrap(),
        fs::read(env.path("app/data.bin")).unwrap()
    );
    let out = env.restore(&other[0], "restored-other");
    assert_eq!(
        fs::read(restored(&out, &env.path("other/data.bin"))).unwrap(),
        crate::util::random_bytes(400, 100 * 1024)
    );
}

#[test]
fn prune_after_backup_keeps_one_snapshot_after_each_run() {
    let env = JobEnv::new();
    env.config(
        "[jobs.app]\nprune_after_backup = true\n[jobs.app.files]\npaths = [\"app\"]\n[jobs.app.retention]\nlast = 1\n",
    )
    .init_repo();
    fs::create_dir_all(env.path("app")).unwrap();
    let mut seen = Vec::new();
    for i in 0..3 {
        write_random(&env.path("app/data.bin"), 500 + i, 100 * 1024);
        env.run(&["app"]).assert_ok();
        let ids = job_ids(&env, "app");
        assert_eq!(ids.len(), 1, "after run {i}: one snapshot of app: {ids:?}");
        assert!(!seen.contains(&ids[0]), "after run {i}: the snapshot is the new one");
        seen.push(ids[0].clone());
    }
    env.engine(["--repo", "main", "check", "--read-data"]).assert().success();
    let out = env.restore(&seen[2], "restored");
    assert_eq!(
        fs::read(restored(&out, &env.path("app/data.bin"))).unwrap(),
        fs::read(env.path("app/data.bin")).unwrap()
    );
}
