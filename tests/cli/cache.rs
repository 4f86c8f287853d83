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

/// The repository's snapshot cache file under `cache`.
fn cache_file(cache: &Path) -> Option<PathBuf> {
    let dir = fs::read_dir(cache).ok()?.next()?.ok()?.path();
    Some(dir.join("snapshots"))
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
