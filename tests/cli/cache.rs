//! The local cache of a bucket's snapshots: it saves fetching every
//! snapshot object on each run, and must never change an answer.
//!
//! - It is private (0700) and sealed: no host name or path in clear.
//! - A snapshot object replaced after it was cached (same size, same
//!   second) is read again and its damage reported; a forgotten snapshot is
//!   not listed from the cache.
//! - A damaged cache costs nothing but speed; `--no-cache` writes none; a
//!   local repository is read as it is (no cache: reading its files is what
//!   finds a snapshot file a failing disk damaged).
//! - The index of a bucket, and of a repository big enough, is kept in the
//!   index cache: it deduplicates and restores as the index files do, and a
//!   damaged block of it is never believed.
//! - A bucket's tree packs and index files are kept by the hash of their
//!   bytes: a damaged cached copy is fetched again, `check` reads the bucket
//!   itself, and `--cache-size` caps what is kept.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::garage::{Bucket, Garage};
use crate::util::{PASSPHRASE, TestRepo, holdfast_bin};

/// `holdfast --repo s3://bucket/PREFIX ARGS` with its cache in `cache`.
fn hf(bucket: &Bucket, cache: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(holdfast_bin());
    c.arg("--repo").arg(bucket.url("cached")).args(args);
    c.env("HOLDFAST_PASSPHRASE", PASSPHRASE).env("HOLDFAST_CACHE_DIR", cache);
    bucket.env(&mut c);
    c.output().expect("run holdfast")
}

fn ok(bucket: &Bucket, cache: &Path, args: &[&str]) -> String {
    let out = hf(bucket, cache, args);
    assert!(out.status.success(), "holdfast {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cache directory of the one repository under `cache` (named by its
/// id; `key-files` beside it is not one).
fn repo_dir(cache: &Path) -> Option<PathBuf> {
    let mut dirs = fs::read_dir(cache).ok()?.map(|e| e.unwrap().path());
    dirs.find(|d| d.file_name().is_some_and(|n| n != "key-files"))
}

/// The repository's snapshot cache file under `cache`.
fn cache_file(cache: &Path) -> Option<PathBuf> {
    Some(repo_dir(cache)?.join("snapshots"))
}

fn source(dir: &Path) -> PathBuf {
    let src = dir.join("secret-project-src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"a").unwrap();
    src
}

#[test]
fn a_buckets_snapshots_are_cached_sealed_and_checked_against_the_listing() {
    let bucket = Garage::shared().bucket();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = source(tmp.path());
    let src_arg = src.to_string_lossy().into_owned();
    ok(&bucket, &cache, &["init"]);
    let first = ok(&bucket, &cache, &["backup", &src_arg]).trim().to_string();
    let second = ok(&bucket, &cache, &["backup", &src_arg]).trim().to_string();
    let listed = ok(&bucket, &cache, &["snapshots"]);
    assert!(listed.contains(&first[..8]) && listed.contains(&second[..8]), "{listed}");

    let file = cache_file(&cache).expect("the cache is written");
    let mode = fs::metadata(file.parent().unwrap()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
    // A bucket's index is cached too (fetched once, not on every run).
    let entries = entries_file(&cache);
    assert_eq!(fs::metadata(&entries).unwrap().permissions().mode() & 0o777, 0o600);
    let text = String::from_utf8_lossy(&fs::read(&file).unwrap()).into_owned();
    assert!(!text.contains("secret-project-src") && !text.contains(&first), "sealed: nothing in clear");
    assert_eq!(ok(&bucket, &cache, &["snapshots"]), listed, "from the cache: the same answer");

    // A damaged cache is rebuilt, with the same answer.
    fs::write(&file, b"not a cache").unwrap();
    assert_eq!(ok(&bucket, &cache, &["snapshots"]), listed);
    assert_ne!(fs::read(&file).unwrap(), b"not a cache");

    // Forgotten: no longer listed, although the cache held it.
    ok(&bucket, &cache, &["forget", &first[..8]]);
    let after = ok(&bucket, &cache, &["snapshots"]);
    assert!(!after.contains(&first[..8]) && after.contains(&second[..8]), "{after}");

    // The newest snapshot object replaced behind holdfast's back by as many
    // zeros: `latest` refuses it instead of answering from the cache.
    let key = format!("cached/snapshots/{second}");
    let (size, _) = bucket.objects("cached/snapshots")[&key];
    bucket.put(&key, &vec![0u8; size as usize]);
    let out = tmp.path().join("out");
    let refused = hf(&bucket, &cache, &["restore", "latest", "--to", &out.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&second[..8]), "{stderr}");
    assert!(!out.exists(), "nothing restored");

    // --no-cache writes none.
    let none = tmp.path().join("none");
    let listed = hf(&bucket, &none, &["--no-cache", "snapshots"]);
    assert!(String::from_utf8_lossy(&listed.stderr).contains(&second[..8]), "the damaged snapshot is named");
    assert!(!none.exists(), "--no-cache leaves no cache");
}

#[test]
fn a_local_repository_is_read_as_it_is() {
    let t = TestRepo::init();
    let cache = t.path("cache");
    let src = source(&t.path("src"));
    t.backup(&[&src]);
    t.cmd(["snapshots"]).env("HOLDFAST_CACHE_DIR", &cache).assert().success();
    assert!(!cache.exists(), "no cache for a local repository");
}

/// `holdfast ARGS` on `t`'s repository with its index kept in the index
/// cache under `cache`, as a big repository's is (the size above which
/// that happens set to nothing).
fn with_index_cache(t: &TestRepo, cache: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut c = t.cmd(args);
    c.env("HOLDFAST_CACHE_DIR", cache).env("HOLDFAST_INDEX_CACHE_ABOVE", "0");
    c
}

/// The index cache's entries file under `cache` (one repository).
fn entries_file(cache: &Path) -> PathBuf {
    let dir = repo_dir(cache).expect("the repository's cache directory");
    let found: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "entries"))
        .collect();
    assert_eq!(found.len(), 1, "one entries file: {found:?}");
    found[0].clone()
}

#[test]
fn a_big_repositorys_index_on_disk_deduplicates_restores_and_is_never_believed_when_damaged() {
    use crate::util::{assert_same_tree, parse_json, restored, stderr_of, stdout_of, tree_fingerprint, write_random};
    let t = TestRepo::init();
    let cache = t.path("cache");
    let src = t.path("src");
    for i in 0..40u64 {
        let dir = src.join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        write_random(&dir.join(format!("f{i}")), i, 1_000 + i * 30_000);
    }
    let src_arg = src.to_string_lossy().into_owned();
    let backup = |extra: &[&str]| {
        let args: Vec<&str> = ["backup", "--json"].iter().chain(extra).chain([&src_arg.as_str()]).copied().collect();
        let out = with_index_cache(&t, &cache, &args).assert().success();
        (parse_json(&stdout_of(&out)), stderr_of(&out))
    };
    let (first, _) = backup(&[]);
    // The cache made now holds the first backup's index; read again
    // without the parent, every chunk is found through it: nothing is
    // stored twice.
    fs::remove_dir_all(&cache).unwrap();
    let (again, _) = backup(&["--no-parent"]);
    assert!(again["summary"]["bytes_read"].as_u64().unwrap() > 500_000, "{again:#}");
    assert!(again["summary"]["bytes_added"].as_u64().unwrap() < 8192, "deduplicated through the cache: {again:#}");

    // Private: the directory 0700, the files 0600, no path or name in clear.
    let entries = entries_file(&cache);
    assert!(fs::metadata(&entries).unwrap().len() >= 40 * 48, "an entry per chunk and tree");
    let dir = entries.parent().unwrap();
    assert_eq!(fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700);
    for f in fs::read_dir(dir).unwrap() {
        let f = f.unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{:?}", f.path());
        let bytes = fs::read(f.path()).unwrap();
        assert!(!bytes.windows(3).any(|w| w == b"src"), "no names in the cache");
    }

    write_random(&src.join("d1/f5"), 99, 200_000);
    let (changed, _) = backup(&[]);
    assert!(changed["summary"]["bytes_added"].as_u64().unwrap() >= 190_000, "{changed:#}");
    assert_eq!(entries_file(&cache), entries, "a backup's new index file is read beside the cache, not rebuilt");

    let restore_and_compare = |snapshot: &str, what: &str| {
        let out = t.path(&format!("out-{what}"));
        with_index_cache(&t, &cache, &["restore", snapshot, "--to", &out.to_string_lossy()]).assert().success();
        assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
    };
    restore_and_compare("latest", "latest");

    // Damage one block of the entries: no lookup believes it (a backup
    // stores those chunks again, everything still restores), it is said,
    // and the cache is rebuilt on the next run.
    let mut bytes = fs::read(&entries).unwrap();
    bytes[100] ^= 0x40;
    fs::write(&entries, &bytes).unwrap();
    let (after, stderr) = backup(&["--no-parent"]);
    assert!(stderr.contains("index cache") && stderr.contains("damaged"), "{stderr}");
    assert!(after["summary"]["bytes_added"].as_u64().unwrap() > 0, "the chunks it hid are stored again: {after:#}");
    let (checked, report) = t.check(true);
    assert!(checked, "{report}");
    restore_and_compare("latest", "after-damage");
    assert_ne!(entries_file(&cache), entries, "rebuilt");

    // A prune (forget, delete, index files merged) changes what it was built
    // from: rebuilt, and every kept snapshot restores through it.
    let first_id = first["id"].as_str().unwrap();
    with_index_cache(&t, &cache, &["forget", first_id]).assert().success();
    with_index_cache(&t, &cache, &["prune", "--keep-last", "10", "--grace", "0s", "--max-unused", "0%"])
        .assert()
        .success();
    with_index_cache(&t, &cache, &["prune", "--keep-last", "10", "--grace", "0s", "--max-unused", "0%"])
        .assert()
        .success();
    restore_and_compare("latest", "after-prune");
    let (checked, report) = t.check(true);
    assert!(checked, "{report}");
}

/// The cached files of one kind (`tree-packs`, `index-files`) of the one
/// repository under `cache`.
fn cached_files(cache: &Path, kind: &str) -> Vec<PathBuf> {
    let Some(repo) = repo_dir(cache) else { return Vec::new() };
    let Ok(dir) = fs::read_dir(repo.join(kind)) else { return Vec::new() };
    dir.map(|e| e.unwrap().path()).filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect()
}

fn tree_packs(cache: &Path) -> Vec<PathBuf> {
    cached_files(cache, "tree-packs")
}

#[test]
fn a_buckets_tree_packs_are_cached_checked_by_hash_and_capped_and_check_reads_the_bucket() {
    use crate::util::{assert_same_tree, tree_fingerprint};
    let bucket = Garage::shared().bucket();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = source(tmp.path());
    for d in ["a/b/c", "a/d", "e"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("f.txt"), d.as_bytes()).unwrap();
    }
    let src_arg = src.to_string_lossy().into_owned();
    ok(&bucket, &cache, &["init"]);
    ok(&bucket, &cache, &["backup", &src_arg]);
    // What a backup uploads is kept as it goes: its tree packs and its
    // index file, under their names in the bucket.
    assert!(!tree_packs(&cache).is_empty(), "the backup's own tree packs are cached");
    let index_files = cached_files(&cache, "index-files");
    assert!(!index_files.is_empty(), "the backup's index file is cached");
    for f in &index_files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(bucket.exists(&format!("cached/index/{name}")), "named as the bucket's index file");
        assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let restore = |args: &[&str], to: &str| {
        let out = tmp.path().join(to);
        let mut all = args.to_vec();
        all.extend(["restore", "latest", "--to", out.to_str().unwrap()]);
        ok(&bucket, &cache, &all);
        assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&crate::util::restored(&out, &src)));
    };
    // An unchanged backup walks its parent's trees: their packs are kept.
    ok(&bucket, &cache, &["backup", &src_arg]);
    let packs = tree_packs(&cache);
    assert!(!packs.is_empty(), "the parent's tree packs are cached");
    let dir = packs[0].parent().unwrap();
    assert_eq!(fs::metadata(dir).unwrap().permissions().mode() & 0o777, 0o700);
    let key = |p: &Path| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        format!("cached/packs/{}/{name}", &name[..2])
    };
    for p in &packs {
        assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(bucket.exists(&key(p)), "named as the bucket's pack");
    }

    // A cached pack changed on disk is not believed: read from the bucket,
    // and the cached copy is made whole again.
    let pack = &packs[0];
    let good = fs::read(pack).unwrap();
    let mut bad = good.clone();
    bad[30] ^= 1; // inside the first sealed tree
    fs::write(pack, &bad).unwrap();
    restore(&[], "from-damaged-cache");
    assert_eq!(fs::read(pack).unwrap(), good, "fetched and cached again");

    // The bucket's copy damaged behind the cache's back: commands that read
    // trees go on from the cache, but `check` reads the bucket and says so.
    bucket.put(&key(pack), &bad);
    restore(&[], "from-cache");
    let checked = hf(&bucket, &cache, &["check"]);
    assert!(!checked.status.success(), "check judges the bucket, not the cache");
    let said = String::from_utf8_lossy(&checked.stdout).into_owned() + &String::from_utf8_lossy(&checked.stderr);
    assert!(said.contains("DAMAGED tree"), "{said}");
    bucket.put(&key(pack), &good);
    ok(&bucket, &cache, &["check"]);

    // A wiped cache costs only time; `--cache-size 0` and `--no-cache` keep
    // no tree packs.
    fs::remove_dir_all(&cache).unwrap();
    restore(&["--cache-size", "0"], "uncached");
    assert!(tree_packs(&cache).is_empty());
    restore(&["--no-cache"], "no-cache");
    assert!(tree_packs(&cache).is_empty());
    // A cap below a tree pack: trees are read range by range, none is kept.
    restore(&["--cache-size", "100"], "tiny-cap");
    assert!(tree_packs(&cache).is_empty());
    restore(&[], "wiped");
    assert!(!tree_packs(&cache).is_empty());
    let refused = hf(&bucket, &cache, &["--cache-size", "lots", "snapshots"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid size"));
}

#[test]
fn the_key_file_that_opened_a_bucket_is_remembered_and_used_only_while_the_bucket_lists_it() {
    let bucket = Garage::shared().bucket();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let with = |passphrase: &str, new: Option<&str>, args: &[&str]| {
        let mut c = Command::new(holdfast_bin());
        c.arg("--repo").arg(bucket.url("cached")).args(args);
        c.env("HOLDFAST_PASSPHRASE", passphrase).env("HOLDFAST_CACHE_DIR", &cache);
        if let Some(n) = new {
            c.env("HOLDFAST_NEW_PASSPHRASE", n);
        }
        bucket.env(&mut c);
        c.output().unwrap()
    };
    let opens = |passphrase: &str| with(passphrase, None, &["snapshots"]).status.success();
    let remembered = || -> Vec<PathBuf> {
        fs::read_dir(cache.join("key-files")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
    };
    ok(&bucket, &cache, &["init"]);
    ok(&bucket, &cache, &["snapshots"]);

    // Kept as the bucket holds it (wrapped by the passphrase), 0600, under
    // a name that is not the bucket's address.
    let kept = remembered();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let bytes = fs::read(&kept[0]).unwrap();
    let name = blake3::hash(&bytes).to_hex().to_string();
    assert!(bucket.exists(&format!("cached/keys/{name}")), "the bucket's key file");
    assert_eq!(fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!String::from_utf8_lossy(&bytes).contains(PASSPHRASE));
    let file_name = kept[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(!file_name.contains("cached") && !file_name.contains("127.0.0.1"));

    // A wrong passphrase is still refused, as a wrong passphrase.
    let wrong = with("not the passphrase", None, &["snapshots"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("passphrase"), "{wrong:?}");

    // After `key passwd` the old key file is gone from the bucket: the
    // remembered copy no longer opens it, the new passphrase does.
    // The old key file is not kept here either: `key passwd` leaves the new
    // one in its place, and a copy the repository no longer lists is
    // forgotten by the next open.
    let changed = with(PASSPHRASE, Some("changed passphrase"), &["key", "passwd"]);
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    let now = fs::read(&remembered()[0]).unwrap();
    assert_ne!(now, bytes, "the new key file is remembered");
    assert!(!opens(PASSPHRASE), "the old passphrase no longer opens it");
    fs::write(&remembered()[0], &bytes).unwrap();
    assert!(!opens(PASSPHRASE), "a removed key file must not open the repository");
    assert!(remembered().is_empty(), "a key file the repository no longer lists is forgotten");
    assert!(opens("changed passphrase"));
    assert_eq!(fs::read(&remembered()[0]).unwrap(), now);

    // A damaged remembered key costs nothing; --no-cache keeps none.
    fs::write(&remembered()[0], b"{ not a key file").unwrap();
    assert!(opens("changed passphrase"));
    fs::remove_dir_all(&cache).unwrap();
    assert!(with("changed passphrase", None, &["--no-cache", "snapshots"]).status.success());
    assert!(remembered().is_empty());
}
