//! Finding what was lost: `find` (which snapshots hold a path), `diff`
//! (what changed between two snapshots), `stats`, and the snapshot filters
//! (`--job`, `--host`, `--tag`, `--path`) the commands share.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

use crate::util::{TestRepo, parse_json, stdout_of, write_random};

/// Sets mtime to a fixed second, so "metadata only" changes are the ones a
/// test makes.
fn set_mtime(path: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

fn find_json(t: &TestRepo, args: &[&str]) -> Value {
    parse_json(&stdout_of(&t.cmd(["find", "--json"]).args(args).assert().success()))
}

/// The found paths (relative to `base`) with the short ids holding each.
fn found(v: &Value, base: &Path) -> Vec<(String, Vec<String>)> {
    let base = base.to_str().unwrap();
    v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let path = p["path"].as_str().unwrap().strip_prefix(base).unwrap().to_string();
            let ids =
                p["versions"].as_array().unwrap().iter().map(|v| v["short_id"].as_str().unwrap().into()).collect();
            (path, ids)
        })
        .collect()
}

#[test]
fn find_names_every_snapshot_that_still_holds_a_deleted_file_newest_first() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("docs/old")).unwrap();
    fs::write(src.join("docs/Notes.txt"), "first").unwrap();
    fs::write(src.join("docs/old/notes.txt"), "archived").unwrap();
    fs::write(src.join("keep.txt"), "k").unwrap();
    t.cmd(["backup", "--tag", "daily"]).arg(&src).assert().success();
    fs::write(src.join("docs/Notes.txt"), "second, longer").unwrap();
    t.cmd(["backup", "--tag", "weekly"]).arg(&src).assert().success();
    // The file is deleted, and another renamed: a later snapshot lacks both.
    fs::remove_file(src.join("docs/Notes.txt")).unwrap();
    fs::rename(src.join("docs/old/notes.txt"), src.join("docs/old/notes-2025.txt")).unwrap();
    t.cmd(["backup", "--tag", "daily"]).arg(&src).assert().success();
    let ids = t.short_ids();
    assert_eq!(ids.len(), 3);

    // By name at any depth, case-sensitive: only the archived one.
    let v = find_json(&t, &["notes.txt"]);
    assert_eq!(found(&v, &src), vec![("/docs/old/notes.txt".into(), vec![ids[1].clone(), ids[0].clone()])]);
    // Ignoring case, both; newest first, with each version's size.
    let v = find_json(&t, &["-i", "notes.txt"]);
    assert_eq!(
        found(&v, &src),
        vec![
            ("/docs/Notes.txt".into(), vec![ids[1].clone(), ids[0].clone()]),
            ("/docs/old/notes.txt".into(), vec![ids[1].clone(), ids[0].clone()]),
        ]
    );
    let sizes: Vec<u64> =
        v["paths"][0]["versions"].as_array().unwrap().iter().map(|v| v["entry"]["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [14, 5], "the newer version is the longer one");
    assert_eq!(v["snapshots_searched"], 3);

    // A glob on the full path, anchored at the root.
    let anchored = format!("{}/docs/*/notes*", src.display());
    let v = find_json(&t, &[&anchored]);
    assert_eq!(
        found(&v, &src),
        vec![
            ("/docs/old/notes-2025.txt".into(), vec![ids[2].clone()]),
            ("/docs/old/notes.txt".into(), vec![ids[1].clone(), ids[0].clone()]),
        ],
        "a rename is a new path from the snapshot it happened in"
    );

    // Narrowing: the newest snapshot only, a time, a tag, a path.
    assert!(found(&find_json(&t, &["-i", "notes.txt", "--newest", "1"]), &src).is_empty());
    assert_eq!(found(&find_json(&t, &["-i", "notes.txt", "--since", "1d"]), &src).len(), 2);
    assert!(found(&find_json(&t, &["-i", "notes.txt", "--since", "2999-01-01"]), &src).is_empty());
    let weekly = find_json(&t, &["-i", "notes.txt", "--tag", "weekly"]);
    assert_eq!(found(&weekly, &src)[0].1, vec![ids[1].clone()]);
    let below = src.join("docs/old");
    let v = find_json(&t, &["-i", "notes.txt", "--path", below.to_str().unwrap()]);
    assert_eq!(found(&v, &src).len(), 1, "--path keeps only matches below it");
    let other_host = find_json(&t, &["-i", "notes.txt", "--host", "no-such-host"]);
    assert_eq!(other_host["snapshots_searched"], 0);

    // The text form: the path, then one line per snapshot.
    let out = stdout_of(&t.cmd(["find", "notes.txt"]).assert().success());
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with("/docs/old/notes.txt"), "{out}");
    assert!(lines[1].trim_start().starts_with(&ids[1]) && lines[2].trim_start().starts_with(&ids[0]), "{out}");

    // The summary counts what was found apart from what was searched.
    let summary =
        String::from_utf8_lossy(&t.cmd(["find", "notes.txt"]).assert().success().get_output().stderr).into_owned();
    assert!(summary.contains("1 path(s) and 0 database(s) found; 3 snapshot(s) searched"), "{summary}");

    // A bad pattern, and searching no snapshots at all, are usage errors.
    t.cmd(["find", "[unclosed"]).assert().code(2);
    t.cmd(["find", "notes.txt", "--newest", "0"]).assert().code(2);
}

#[test]
fn find_reads_each_shared_directory_once_across_a_history() {
    let t = TestRepo::init();
    let src = t.path("src");
    for d in 0..20 {
        fs::create_dir_all(src.join(format!("d{d:02}/sub"))).unwrap();
        fs::write(src.join(format!("d{d:02}/sub/f")), format!("{d}")).unwrap();
    }
    for run in 0..10 {
        fs::write(src.join("d00/changing"), format!("run {run}")).unwrap();
        t.backup(&[&src]);
    }
    let v = find_json(&t, &["f"]);
    assert_eq!(v["snapshots_searched"], 10);
    assert_eq!(v["paths"].as_array().unwrap().len(), 20);
    assert!(v["paths"].as_array().unwrap().iter().all(|p| p["versions"].as_array().unwrap().len() == 10));
    // 10 roots and ancestors and d00 change each time; the 19 other d?? and
    // their 20 sub directories are read once, not 10 times.
    let read = v["directories_read"].as_u64().unwrap();
    let depth = src.components().count() as u64;
    assert!(read <= 10 * (depth + 1) + 19 + 20, "read {read} directories");
}

#[test]
fn diff_shows_added_removed_modified_type_and_metadata_changes() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("app/lib")).unwrap();
    fs::create_dir_all(src.join("app/cache")).unwrap();
    for (name, body) in [("a.txt", "alpha"), ("b.txt", "bravo"), ("c.txt", "charlie"), ("d.txt", "delta")] {
        fs::write(src.join("app").join(name), body).unwrap();
        set_mtime(&src.join("app").join(name), 1_700_000_000);
    }
    fs::write(src.join("app/lib/x.so"), "x").unwrap();
    fs::write(src.join("app/cache/c1"), "1").unwrap();
    write_random(&src.join("app/big.bin"), 1, 3 << 20);
    fs::hard_link(src.join("app/a.txt"), src.join("app/a-link.txt")).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("app/current")).unwrap();
    let first = t.backup(&[&src]);

    fs::write(src.join("app/b.txt"), "bravo, edited").unwrap(); // modified
    fs::set_permissions(src.join("app/c.txt"), fs::Permissions::from_mode(0o600)).unwrap(); // mode only
    set_mtime(&src.join("app/d.txt"), 1_700_000_500); // touched, same bytes
    fs::rename(src.join("app/lib/x.so"), src.join("app/lib/y.so")).unwrap(); // rename
    fs::remove_dir_all(src.join("app/cache")).unwrap();
    fs::write(src.join("app/cache"), "now a file").unwrap(); // type change
    fs::remove_file(src.join("app/current")).unwrap();
    std::os::unix::fs::symlink("b.txt", src.join("app/current")).unwrap(); // new target
    fs::create_dir(src.join("app/new")).unwrap();
    fs::write(src.join("app/new/n.txt"), "new").unwrap();
    let second = t.backup(&[&src]);

    let v = parse_json(&stdout_of(&t.cmd(["diff", "--json", &first[..8], &second[..8]]).assert().success()));
    let base = src.to_str().unwrap();
    let changes: Vec<(String, String)> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (c["change"].as_str().unwrap().to_string(), c["path"].as_str().unwrap().strip_prefix(base).unwrap().into())
        })
        .filter(|(_, p)| p != "/app" && p != "/app/lib")
        .collect();
    let want: Vec<(String, String)> = [
        ("modified", "/app/b.txt"),
        ("metadata", "/app/c.txt"),
        ("type", "/app/cache"),
        ("removed", "/app/cache/c1"),
        ("modified", "/app/current"),
        ("metadata", "/app/d.txt"),
        ("removed", "/app/lib/x.so"),
        ("added", "/app/lib/y.so"),
        ("added", "/app/new"),
        ("added", "/app/new/n.txt"),
    ]
    .iter()
    .map(|(c, p)| (c.to_string(), p.to_string()))
    .collect();
    assert_eq!(changes, want, "unchanged files (a.txt, its hard link, big.bin) are not listed");
    let of =
        |path: &str| v["changes"].as_array().unwrap().iter().find(|c| c["path"] == format!("{base}{path}")).unwrap();
    assert_eq!(of("/app/c.txt")["metadata"], serde_json::json!(["mode"]));
    assert_eq!(of("/app/d.txt")["metadata"], serde_json::json!(["mtime"]));
    assert_eq!(
        (of("/app/b.txt")["size_before"].as_u64(), of("/app/b.txt")["size_after"].as_u64()),
        (Some(5), Some(13))
    );
    assert_eq!(v["stat"]["added"]["files"], 2);
    assert_eq!(v["stat"]["removed"]["files"], 2);
    assert_eq!(v["stat"]["modified"]["files"], 1);

    // Only below a path; the text form marks each line; --stat only counts.
    let out = stdout_of(&t.cmd(["diff", &first[..8], &second[..8]]).arg(src.join("app/lib")).assert().success());
    let marked: Vec<&str> = out.lines().filter(|l| l.contains("/app/lib/")).collect();
    assert_eq!(marked.len(), 2, "{out}");
    assert!(out.lines().all(|l| !l.contains("/app/") || l.contains("/app/lib")), "{out}");
    assert!(marked[0].starts_with("-    ") && marked[0].ends_with("/app/lib/x.so"), "{out}");
    assert!(marked[1].starts_with("+    ") && marked[1].ends_with("/app/lib/y.so"), "{out}");
    let stat = stdout_of(&t.cmd(["diff", "--stat", &first[..8], "latest"]).assert().success());
    assert!(!stat.contains("/app/"), "{stat}");
    assert!(stat.contains("added:         2 files, 1 dirs"), "{stat}");
    assert!(stat.contains("metadata only: 4"), "c.txt, d.txt and the directories app and app/lib: {stat}");

    // The same snapshot twice: nothing read, nothing changed.
    let same = parse_json(&stdout_of(&t.cmd(["diff", "--json", "latest", "latest"]).assert().success()));
    assert_eq!(same["changes"].as_array().unwrap().len(), 0);
    assert_eq!(same["stat"]["directories_read"], 0);
    t.cmd(["diff", "latest", "0000dead"]).assert().failure();
}

/// The same bytes can be stored as a slice of a shared chunk in one
/// snapshot and as a chunk of their own in another (here: backed up into an
/// uncompressed repository, where small files of 4 KiB or more stand alone,
/// and copied into a compressed one, where text shares a chunk). `diff`
/// tells by content, not by how it is stored.
#[test]
fn diff_tells_equal_bytes_stored_as_a_slice_and_as_a_chunk_apart_from_changed_ones() {
    let plain = TestRepo::init_with(&["--compression-level", "0"]);
    let src = plain.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("same.txt"), "a line of notes\n".repeat(600)).unwrap();
    fs::write(src.join("edited.txt"), "another line\n".repeat(700)).unwrap();
    plain.backup(&[&src]);

    let packed = TestRepo::sharing_keys_with(&plain);
    packed
        .cmd(["copy", "--from"])
        .arg(plain.repo())
        .arg("--to")
        .arg(packed.repo())
        .env("HOLDFAST_FROM_PASSPHRASE", crate::util::PASSPHRASE)
        .assert()
        .success();
    set_mtime(&src.join("same.txt"), 1_700_000_000); // touched, same bytes
    fs::write(src.join("edited.txt"), "another lime\n".repeat(700)).unwrap(); // same size, new bytes
    let second = packed.backup(&[&src]);
    let copied = packed.snapshots_json()[0]["id"].as_str().unwrap().to_string();

    let v = parse_json(&stdout_of(&packed.cmd(["diff", "--json", &copied[..8], &second[..8]]).assert().success()));
    let base = src.to_str().unwrap();
    let change =
        |name: &str| v["changes"].as_array().unwrap().iter().find(|c| c["path"] == format!("{base}/{name}")).cloned();
    assert_eq!(change("same.txt").map(|c| c["change"].clone()), Some("metadata".into()), "{v:#}");
    assert_eq!(change("edited.txt").map(|c| c["change"].clone()), Some("modified".into()), "{v:#}");
}

#[test]
fn stats_counts_logical_unique_and_stored_bytes() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    write_random(&src.join("random.bin"), 7, 2 << 20);
    fs::write(src.join("text.txt"), "the same line again\n".repeat(100_000)).unwrap();
    t.cmd(["backup", "--tag", "one"]).arg(&src).assert().success();
    t.cmd(["backup", "--tag", "two"]).arg(&src).assert().success();
    let v = parse_json(&stdout_of(&t.cmd(["stats", "--json"]).assert().success()));
    let all = &v["all"];
    let size = (2 << 20) + 2_000_000u64;
    assert_eq!(all["snapshots"], 2);
    assert_eq!(all["files"], 4);
    assert_eq!(all["logical_bytes"].as_u64(), Some(2 * size));
    assert_eq!(all["unique_bytes"].as_u64(), Some(size), "two backups of the same files store them once");
    let dedup = all["dedup_ratio"].as_f64().unwrap();
    assert!((dedup - 2.0).abs() < 0.01, "dedup {dedup}");
    let stored = all["stored_bytes"].as_u64().unwrap();
    assert!(
        stored > 2 << 20 && stored < (2 << 20) + 200_000,
        "the text compresses, the random data does not: {stored}"
    );
    assert!(v["repository"]["pack_bytes"].as_u64().unwrap() >= stored);
    assert_eq!(v["repository"]["unreferenced_bytes"], 0);

    // One snapshot; a filter (no repository line: not everything is counted).
    let one = parse_json(&stdout_of(&t.cmd(["stats", "--json", "latest"]).assert().success()));
    assert_eq!(one["all"]["logical_bytes"].as_u64(), Some(size));
    let tagged = parse_json(&stdout_of(&t.cmd(["stats", "--json", "--tag", "one"]).assert().success()));
    assert_eq!(tagged["all"]["snapshots"], 1);
    assert!(tagged.get("repository").is_none());
    let text = stdout_of(&t.cmd(["stats"]).assert().success());
    assert!(text.contains("all snapshots") && text.contains("2.0x"), "{text}");
}

#[test]
fn snapshots_restore_copy_and_prune_take_the_same_filters() {
    let t = TestRepo::init();
    let (a, b) = (t.path("a"), t.path("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("f"), "a1").unwrap();
    fs::write(b.join("f"), "b1").unwrap();
    t.cmd(["backup", "--tag", "web"]).arg(&a).assert().success();
    t.cmd(["backup", "--tag", "db"]).arg(&b).assert().success();
    fs::write(a.join("f"), "a2").unwrap();
    t.cmd(["backup", "--tag", "web"]).arg(&a).assert().success();
    let count = |args: &[&str]| -> usize {
        let out = t.cmd(["snapshots", "--json"]).args(args).assert().success();
        parse_json(&stdout_of(&out)).as_array().unwrap().len()
    };
    assert_eq!(count(&[]), 3);
    assert_eq!(count(&["--tag", "web"]), 2);
    assert_eq!(count(&["--tag", "web", "--tag", "db"]), 0, "every tag must be there");
    assert_eq!(count(&["--path", b.to_str().unwrap()]), 1);
    assert_eq!(count(&["--path", b.join("f").to_str().unwrap()]), 1, "a snapshot of b holds b/f");
    assert_eq!(count(&["--host", "no-such-host"]), 0);

    // restore latest --tag: the newest snapshot with that tag, not the newest.
    let out = t.path("out");
    t.cmd(["restore", "latest", "--tag", "db", "--to"]).arg(&out).assert().success();
    assert_eq!(fs::read_to_string(crate::util::restored(&out, &b).join("f")).unwrap(), "b1");
    t.cmd(["restore", "latest", "--tag", "nothing", "--to"]).arg(t.path("none")).assert().failure();

    // copy --tag: only those snapshots go to the other repository.
    let other = TestRepo::sharing_keys_with(&t);
    t.cmd(["copy", "--tag", "web", "--from"])
        .arg(t.repo())
        .arg("--to")
        .arg(other.repo())
        .env("HOLDFAST_FROM_PASSPHRASE", crate::util::PASSPHRASE)
        .assert()
        .success();
    assert_eq!(other.snapshots_json().len(), 2);
    assert!(other.snapshots_json().iter().all(|s| s["tags"] == serde_json::json!(["web"])));

    // prune --tag: only those snapshots are subject to the policy.
    t.cmd(["prune", "--keep-last", "1", "--tag", "db"]).assert().success();
    assert_eq!(count(&[]), 3, "the web snapshots are not the db ones' to prune");
    t.cmd(["prune", "--keep-last", "1", "--tag", "web"]).assert().success();
    assert_eq!(count(&["--tag", "web"]), 1, "the older web snapshot went");
    assert_eq!(count(&["--tag", "db"]), 1);
}

#[test]
fn find_star_lists_every_path_once_with_non_utf8_names_kept_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let odd = src.join(std::ffi::OsStr::from_bytes(b"d/caf\xe9.txt"));
    fs::write(&odd, "latin-1 name").unwrap();
    fs::write(src.join("d/plain.txt"), "p").unwrap();
    for _ in 0..3 {
        t.backup(&[&src]);
    }
    let v = find_json(&t, &["*"]);
    let paths = v["paths"].as_array().unwrap();
    // Every path below and including the backed-up tree's ancestors, once each.
    let count = |suffix: &str| paths.iter().filter(|p| p["path"].as_str().unwrap().ends_with(suffix)).count();
    assert_eq!(count("/d/plain.txt"), 1);
    assert!(paths.iter().all(|p| p["versions"].as_array().unwrap().len() == 3), "each path in all 3 snapshots");
    let odd_found =
        paths.iter().find(|p| p.get("path_base64").is_some()).expect("the non-UTF-8 name carries its bytes");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(odd_found["path_base64"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, odd.as_os_str().as_bytes());
    // The text form escapes it instead of printing raw bytes.
    let out = stdout_of(&t.cmd(["find", "caf*"]).assert().success());
    assert!(out.contains("caf\\xe9.txt"), "{out}");
}

#[test]
fn find_diff_and_stats_over_a_damaged_tree_fail_and_say_so_instead_of_answering_short() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f.txt"), "one").unwrap();
    let first = t.backup(&[&src]);
    fs::write(src.join("d/f.txt"), "two, longer").unwrap();
    t.backup(&[&src]);
    // Flip a byte in the middle of every pack: trees and chunks alike.
    for pack in t.repository_files().into_iter().filter(|p| p.to_string_lossy().contains("/packs/")) {
        let f = fs::OpenOptions::new().read(true).write(true).open(&pack).unwrap();
        let at = f.metadata().unwrap().len() / 3;
        let mut b = [0u8];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x01], at).unwrap();
    }
    for args in [vec!["find", "f.txt"], vec!["diff", &first[..8], "latest"], vec!["stats"]] {
        let out = t.cmd(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("damaged") || stderr.contains("cannot be read"), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("f.txt"), "{args:?}: no partial answer");
    }
}
