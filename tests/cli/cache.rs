//! The local cache of a repository's snapshots: it saves reading every
//! snapshot file on each run, and must never change an answer.
//!
//! - It is private (0700) and sealed: no host name or path in clear.
//! - A snapshot file changed after it was cached is read again (and its
//!   damage reported); a forgotten snapshot is not listed from the cache.
//! - A damaged, foreign or unwritable cache costs nothing but speed.
//! - `--no-cache` writes none.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::{TestRepo, stderr_of, stdout_of};

/// `t`'s commands with the cache in `cache`.
fn with_cache(t: &TestRepo, cache: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    t.cmd(args).env("HOLDFAST_CACHE_DIR", cache).assert()
}

/// The repository's snapshot cache file under `cache`.
fn cache_file(cache: &Path) -> Option<PathBuf> {
    let dir = fs::read_dir(cache).ok()?.next()?.ok()?.path();
    Some(dir.join("snapshots"))
}

fn source(t: &TestRepo) -> PathBuf {
    let src = t.path("secret-project-src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"a").unwrap();
    src
}

fn listed(t: &TestRepo, cache: &Path) -> String {
    stdout_of(&with_cache(t, cache, &["snapshots"]).success())
}

#[test]
fn the_cache_is_private_sealed_and_follows_the_repository() {
    let t = TestRepo::init();
    let cache = t.path("cache");
    let src = source(&t);
    let first = t.backup(&[&src]);
    let second = t.backup(&[&src]);
    let before = listed(&t, &cache);
    assert!(before.contains(&first[..8]) && before.contains(&second[..8]), "{before}");
    let file = cache_file(&cache).expect("`snapshots` writes the cache");
    let mode = fs::metadata(file.parent().unwrap()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
    let bytes = fs::read(&file).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("secret-project-src") && !text.contains(&first), "sealed, nothing in clear");
    assert_eq!(listed(&t, &cache), before, "read from the cache, the same answer");

    // Forgotten: no longer listed, although the cache still held it.
    with_cache(&t, &cache, &["forget", &first[..8]]).success();
    let after = listed(&t, &cache);
    assert!(!after.contains(&first[..8]) && after.contains(&second[..8]), "{after}");

    // A snapshot file damaged after it was cached is read again: `latest`
    // refuses it rather than trusting the cache.
    let snap = t.repo().join("snapshots").join(&second);
    let mut bytes = fs::read(&snap).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x80;
    fs::write(&snap, bytes).unwrap();
    let out = t.path("out");
    let refused = with_cache(&t, &cache, &["restore", "latest", "--to", out.to_str().unwrap()]).code(1);
    assert!(stderr_of(&refused).contains(&second[..8]), "{}", stderr_of(&refused));
    assert!(!out.exists(), "nothing restored");
}

#[test]
fn a_damaged_foreign_or_unwritable_cache_changes_no_answer() {
    let t = TestRepo::init();
    let cache = t.path("cache");
    let src = source(&t);
    let id = t.backup(&[&src]);
    let expected = listed(&t, &cache);
    let file = cache_file(&cache).unwrap();

    fs::write(&file, b"not a cache at all").unwrap();
    assert_eq!(listed(&t, &cache), expected, "a damaged cache is rebuilt");
    assert_ne!(fs::read(&file).unwrap(), b"not a cache at all");

    // Another repository's cache file in this one's place does not open.
    let other = TestRepo::init();
    other.backup(&[&source(&other)]);
    let other_cache = t.path("other-cache");
    listed(&other, &other_cache);
    fs::copy(cache_file(&other_cache).unwrap(), &file).unwrap();
    assert_eq!(listed(&t, &cache), expected, "a foreign cache is not used");

    // A cache that cannot be written (a file where its directory goes).
    let blocked = t.path("blocked");
    fs::write(&blocked, b"").unwrap();
    assert_eq!(listed(&t, &blocked.join("below")), expected);
    let out = t.path("out");
    with_cache(&t, &blocked.join("below"), &["restore", &id[..8], "--to", out.to_str().unwrap()]).success();

    // --no-cache writes none.
    let none = t.path("none");
    t.cmd(["--no-cache", "snapshots"]).env("HOLDFAST_CACHE_DIR", &none).assert().success();
    assert!(!none.exists(), "--no-cache leaves no cache");
}
