//! Repositories in S3-compatible object storage, against a real Garage
//! cluster (3 nodes, replication factor 3, on loopback; see `garage`):
//! everything a local repository does, a node lost mid-backup, put-only
//! credentials (through a proxy that refuses DELETE and overwrites), kill -9
//! mid-upload, and an endpoint that does not answer.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::garage::{Bucket, Garage, Proxy, TlsFront};
use crate::jobs_util::JobEnv;
use crate::util::{PASSPHRASE, assert_same_tree, holdfast_bin, parse_json, restored, tree_fingerprint, write_random};

/// `holdfast --repo s3://bucket/prefix ARGS` with the bucket's endpoint and
/// keys in the AWS variables and the passphrase in `$HOLDFAST_PASSPHRASE`.
fn hf(bucket: &Bucket, prefix: &str, args: &[&str]) -> Command {
    let mut c = Command::new(holdfast_bin());
    c.arg("--repo").arg(bucket.url(prefix)).args(args).env("HOLDFAST_PASSPHRASE", PASSPHRASE);
    bucket.env(&mut c);
    c
}

/// Run it; stdout on success, panics with stderr otherwise.
fn ok(bucket: &Bucket, prefix: &str, args: &[&str]) -> String {
    let out = hf(bucket, prefix, args).output().expect("run holdfast");
    assert!(out.status.success(), "holdfast {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn snapshot_count(bucket: &Bucket, prefix: &str) -> usize {
    match parse_json(&ok(bucket, prefix, &["snapshots", "--json"])) {
        Value::Array(v) => v.len(),
        other => panic!("snapshots --json printed {other}"),
    }
}

fn check_read_data(bucket: &Bucket, prefix: &str) -> String {
    ok(bucket, prefix, &["check", "--read-data"])
}

/// A source tree: one large random file, a few small ones, a subdirectory.
fn make_source(dir: &Path, large: u64, seed: u64) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    write_random(&dir.join("large.bin"), seed, large);
    for i in 0..20 {
        fs::write(dir.join("sub").join(format!("small-{i}.txt")), format!("small file {i} of {seed}\n")).unwrap();
    }
}

/// Start `cmd` (its output captured) and wait until `prefix` holds `count`
/// objects, while it still runs.
fn start_and_wait_for_objects(mut cmd: Command, bucket: &Bucket, prefix: &str, count: usize) -> std::process::Child {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while bucket.objects(prefix).len() < count {
        assert!(Instant::now() < deadline, "{prefix} never held {count} objects");
        assert!(child.try_wait().unwrap().is_none(), "it ended before {prefix} held {count} objects");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn restore_and_compare(bucket: &Bucket, prefix: &str, src: &Path, out: &Path) {
    ok(bucket, prefix, &["restore", "latest", "--to", &out.to_string_lossy()]);
    assert_same_tree(&tree_fingerprint(src), &tree_fingerprint(&restored(out, src)));
}

#[test]
fn an_s3_repository_backs_up_restores_checks_and_prunes() {
    let bucket = Garage::shared().bucket();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 20 << 20, 1);
    // More directory levels, and two empty directories that share one tree.
    fs::create_dir_all(src.join("sub/deeper/deepest")).unwrap();
    fs::write(src.join("sub/deeper/deepest/leaf.txt"), "leaf\n").unwrap();
    fs::create_dir_all(src.join("empty-a")).unwrap();
    fs::create_dir_all(src.join("empty-b")).unwrap();

    ok(&bucket, "shop", &["init"]);
    ok(&bucket, "shop", &["backup", &src.to_string_lossy()]);
    write_random(&src.join("large.bin"), 2, 20 << 20);
    let second = parse_json(&ok(&bucket, "shop", &["backup", "--json", &src.to_string_lossy()]));
    assert!(second["summary"]["bytes_added"].as_u64().unwrap() > 10 << 20, "{second:#}");
    assert_eq!(snapshot_count(&bucket, "shop"), 2);
    restore_and_compare(&bucket, "shop", &src, &tmp.path().join("out1"));
    assert!(check_read_data(&bucket, "shop").contains("healthy"));

    // A third, unchanged backup finds every file in its parent's trees
    // (fetched from the bucket before the scan): it reads and stores nothing.
    let third = parse_json(&ok(&bucket, "shop", &["backup", "--json", &src.to_string_lossy()]));
    assert_eq!(third["summary"]["bytes_read"], 0, "{third:#}");
    assert_eq!(third["summary"]["files_unchanged"], third["summary"]["files"], "{third:#}");
    assert!(third["summary"]["bytes_added"].as_u64().unwrap() < 64 << 10, "{third:#}");

    // Prune: forget all but the newest, mark, then (grace 0) delete.
    let before: u64 = bucket.objects("shop/packs").values().map(|(size, _)| size).sum();
    ok(&bucket, "shop", &["prune", "--keep-last", "1", "--grace", "0s"]);
    ok(&bucket, "shop", &["prune", "--keep-last", "1", "--grace", "0s"]);
    let after: u64 = bucket.objects("shop/packs").values().map(|(size, _)| size).sum();
    assert_eq!(snapshot_count(&bucket, "shop"), 1);
    // Packs holding only the first large file's chunks go; a pack that also
    // holds a chunk still in use stays whole (no repacking).
    assert!(after < before, "no pack was deleted: {before} -> {after} bytes");
    assert!(check_read_data(&bucket, "shop").contains("healthy"));
    restore_and_compare(&bucket, "shop", &src, &tmp.path().join("out2"));

    // Disaster recovery: the bucket's snapshots copied into a new local
    // repository, which then restores without the bucket.
    let local = tmp.path().join("recovered").to_string_lossy().into_owned();
    let url = bucket.url("shop");
    let out3 = tmp.path().join("out3").to_string_lossy().into_owned();
    for args in [
        vec!["--repo", &local, "init", "--copy-params-from", &url],
        vec!["copy", "--from", &url, "--to", &local],
        vec!["--repo", &local, "restore", "latest", "--to", &out3],
    ] {
        let mut c = Command::new(holdfast_bin());
        c.args(&args).env("HOLDFAST_PASSPHRASE", PASSPHRASE).env("HOLDFAST_FROM_PASSPHRASE", PASSPHRASE);
        bucket.env(&mut c);
        let out = c.output().unwrap();
        assert!(out.status.success(), "holdfast {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out3 = Path::new(&out3);
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(out3, &src)));
}

#[test]
fn keys_are_added_changed_exported_and_listed_on_a_bucket() {
    let bucket = Garage::shared().bucket();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 1 << 20, 7);
    ok(&bucket, "k", &["init"]);
    ok(&bucket, "k", &["backup", &src.to_string_lossy()]);
    let with = |passphrase: &str, new: Option<&str>, args: &[&str]| {
        let mut c = hf(&bucket, "k", args);
        c.env("HOLDFAST_PASSPHRASE", passphrase);
        if let Some(n) = new {
            c.env("HOLDFAST_NEW_PASSPHRASE", n);
        }
        c.output().unwrap()
    };

    let added = with(PASSPHRASE, Some("second passphrase, for the other admin"), &["key", "add"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let changed = with(PASSPHRASE, Some("the first one, changed"), &["key", "passwd"]);
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));

    for (passphrase, opens) in
        [(PASSPHRASE, false), ("second passphrase, for the other admin", true), ("the first one, changed", true)]
    {
        let ls = with(passphrase, None, &["ls", "latest"]);
        assert_eq!(ls.status.success(), opens, "{passphrase:?}: {}", String::from_utf8_lossy(&ls.stderr));
        if opens {
            assert!(String::from_utf8_lossy(&ls.stdout).contains("small-19.txt"), "{ls:?}");
        }
    }
    let export = with("the first one, changed", None, &["key", "export"]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(!export.stdout.is_empty());
}

#[test]
fn an_https_endpoint_is_used_only_when_its_certificate_is_trusted() {
    let bucket = Garage::shared().bucket();
    let tls = TlsFront::start(&bucket);
    let https = bucket.via(&tls.endpoint);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 3 << 20, 11);

    // A certificate from a CA the system does not know: refused, and nothing is written.
    let untrusted = hf(&https, "tls", &["init"]).env_remove("SSL_CERT_FILE").output().unwrap();
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(bucket.objects("tls").is_empty());

    // Trusted (the CA in the certificates holdfast reads): a round trip.
    let trusted = |args: &[&str]| {
        let out = hf(&https, "tls", args).env("SSL_CERT_FILE", &tls.ca).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    trusted(&["init"]);
    trusted(&["backup", &src.to_string_lossy()]);
    let out = tmp.path().join("out");
    trusted(&["restore", "latest", "--to", &out.to_string_lossy()]);
    assert_same_tree(&tree_fingerprint(&src), &tree_fingerprint(&restored(&out, &src)));
}

#[test]
fn check_tells_a_missing_indexed_pack_from_a_stray_unindexed_one() {
    let bucket = Garage::shared().bucket();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 20 << 20, 9);
    ok(&bucket, "c", &["init"]);
    let id = ok(&bucket, "c", &["backup", &src.to_string_lossy()]);
    let packs = bucket.objects("c/packs");
    let largest = packs.iter().max_by_key(|(_, (size, _))| *size).map(|(k, _)| k.clone()).unwrap();
    bucket.delete(&largest);
    let stray = "c/packs/00/00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa";
    bucket.put(stray, b"left by something else");

    let out = hf(&bucket, "c", &["check"]).output().unwrap();
    assert!(!out.status.success());
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let missing = &largest.rsplit('/').next().unwrap()[..8];
    assert!(report.contains(&format!("pack {missing}")) && report.contains("indexed but missing"), "{report}");
    assert!(report.contains(&id[..8]), "the damaged snapshot should be named: {report}");
    assert!(report.contains("pack 00aa00aa is not in any index"), "{report}");
}

#[test]
fn a_job_backs_up_locally_and_copies_to_an_offsite_bucket_that_restores_alone() {
    let bucket = Garage::shared().bucket();
    let env = JobEnv::new();
    let data = env.path("data");
    make_source(&data, 6 << 20, 3);
    let offsite = bucket.repository_toml("offsite", "web", &env.path(""), "");
    env.config(&format!(
        "{offsite}\n[jobs.web]\nrepositories = [\"main\", \"offsite\"]\nfiles = {{ paths = [\"{}\"] }}\n",
        data.display()
    ));
    env.init_repo();
    env.engine(["--repo", "offsite", "init", "--copy-params-from"])
        .arg(env.repo())
        .env("HOLDFAST_FROM_PASSPHRASE", PASSPHRASE)
        .assert()
        .success();
    let first = env.run(&["web"]);
    first.assert_ok();
    fs::write(data.join("sub/small-0.txt"), "changed\n").unwrap();
    let second = env.run(&["web"]);
    second.assert_ok();

    let listed = env.engine(["--repo", "offsite", "snapshots", "--json"]).assert().success();
    let listed = parse_json(&String::from_utf8_lossy(&listed.get_output().stdout));
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed:#}");
    // The secret key is in no output and no snapshot.
    for text in [&first.stdout, &first.stderr, &second.stdout, &second.stderr, &listed.to_string()] {
        assert!(!text.contains(&bucket.secret), "the S3 secret key leaked: {text}");
    }
    env.engine(["status"]).assert().success();

    // The local repository is lost: the job restores from the bucket.
    fs::remove_dir_all(env.repo()).unwrap();
    let out = env.path("out");
    env.engine(["--repo", "offsite", "restore", "web", "--files", "--to"]).arg(&out).assert().success();
    assert_same_tree(&tree_fingerprint(&data), &tree_fingerprint(&restored(&out, &data)));
    env.engine(["--repo", "offsite", "check", "--read-data"]).assert().success();
    // The restore test reads from the bucket too when told to.
    let verified = env.engine(["--repo", "offsite", "verify", "web", "--json"]).assert().success();
    let verified = parse_json(&String::from_utf8_lossy(&verified.get_output().stdout));
    assert_eq!(verified[0]["repository"], "offsite", "{verified:#}");
    assert_eq!(verified[0]["ok"], true, "{verified:#}");
    assert!(verified[0]["files"]["files"].as_u64().is_some_and(|n| n >= 21), "{verified:#}");

    // The restore test judges the bucket, not this host's cached copy of
    // its tree packs: a tree pack damaged in the bucket fails it.
    let cache = env.path("own-cache");
    let engine = |args: &[&str]| {
        let mut c = env.engine(args);
        c.env("HOLDFAST_CACHE_DIR", &cache);
        c
    };
    engine(&["--repo", "offsite", "restore", "web", "--files", "--to"]).arg(env.path("out2")).assert().success();
    let cached: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path().join("tree-packs"))
        .filter(|d| d.is_dir())
        .flat_map(|d| fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .collect();
    assert!(!cached.is_empty(), "the restore cached the bucket's tree packs");
    let good = fs::read(&cached[0]).unwrap();
    let name = cached[0].file_name().unwrap().to_string_lossy().into_owned();
    let key = format!("web/packs/{}/{name}", &name[..2]);
    assert!(bucket.exists(&key), "{key}");
    let mut bad = good.clone();
    bad[30] ^= 1;
    bucket.put(&key, &bad);
    engine(&["--repo", "offsite", "verify", "web"]).assert().failure();
    bucket.put(&key, &good);
    engine(&["--repo", "offsite", "verify", "web"]).assert().success();

    // Under systemd the service gets the bucket's keys as credentials, so
    // it needs no right to read them where they are.
    let units = env.path("units");
    env.engine(["systemd", "web", "--output"]).arg(&units).assert().success();
    let service = fs::read_to_string(units.join("holdfast-web.service")).unwrap();
    let credentials = env.path("credentials");
    fs::create_dir(&credentials).unwrap();
    for (name, file) in [
        ("holdfast-s3-access-key-id-offsite", "offsite.s3.id"),
        ("holdfast-s3-secret-access-key-offsite", "offsite.s3.secret"),
    ] {
        let line = format!("LoadCredential={name}:{}", env.path(file).display());
        assert!(service.lines().any(|l| l == line), "{line} missing: {service}");
        fs::rename(env.path(file), credentials.join(name)).unwrap();
    }
    env.engine(["--repo", "offsite", "snapshots"]).assert().failure();
    env.engine(["--repo", "offsite", "snapshots"]).env("CREDENTIALS_DIRECTORY", &credentials).assert().success();
}

#[test]
fn a_backup_succeeds_when_a_node_dies_in_the_middle_of_it() {
    let mut garage = Garage::start(3);
    let bucket = garage.bucket();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 160 << 20, 4);
    ok(&bucket, "r", &["init"]);

    let mut cmd = hf(&bucket, "r", &["backup", &src.to_string_lossy()]);
    cmd.env("HOLDFAST_S3_CONNECTIONS", "1");
    let backup = start_and_wait_for_objects(cmd, &bucket, "r/packs", 2);
    garage.kill_node(2);
    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(bucket.objects("r/packs").len() >= 10);
    restore_and_compare(&bucket, "r", &src, &tmp.path().join("out"));
    assert!(check_read_data(&bucket, "r").contains("healthy"));
}

#[test]
fn put_only_credentials_back_up_never_delete_or_overwrite_and_cannot_prune() {
    let bucket = Garage::shared().bucket();
    let proxy = Proxy::put_only(&bucket);
    let limited = bucket.via(&proxy.endpoint);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 8 << 20, 5);

    ok(&limited, "p", &["init"]);
    ok(&limited, "p", &["backup", &src.to_string_lossy()]);
    let first = bucket.objects("p");
    fs::write(src.join("sub/small-1.txt"), "edited\n").unwrap();
    ok(&limited, "p", &["backup", &src.to_string_lossy()]);
    ok(&limited, "p", &["backup", &src.to_string_lossy()]);
    let log = proxy.log();
    assert_eq!(log.refused_deletes, 0, "a backup sent DELETE: {:#?}", log.requests);
    assert_eq!(log.refused_overwrites, 0, "a backup tried to overwrite: {:#?}", log.requests);
    assert!(log.requests.iter().any(|r| r.starts_with("PUT ") && r.ends_with(" 200")), "{:#?}", log.requests);
    let after = bucket.objects("p");
    for (key, meta) in &first {
        assert_eq!(after.get(key), Some(meta), "{key} changed or vanished");
    }
    // The backups could not delete their running/ records; they left
    // "finished" companions instead.
    let running: Vec<&String> = after.keys().filter(|k| k.starts_with("p/running/")).collect();
    assert_eq!(running.len(), 6, "{running:#?}");
    assert_eq!(running.iter().filter(|k| k.ends_with(".done")).count(), 3);

    // Prune needs DELETE: through the proxy it fails, clearly and harmlessly.
    let pruned = hf(&limited, "p", &["prune", "--keep-last", "1", "--grace", "0s"]).output().unwrap();
    assert!(!pruned.status.success());
    let err = String::from_utf8_lossy(&pruned.stderr);
    assert!(err.contains("refused by the put-only policy") || err.to_lowercase().contains("denied"), "{err}");
    assert!(proxy.log().refused_deletes >= 1);
    assert_eq!(snapshot_count(&bucket, "p"), 3);
    assert_eq!(bucket.objects("p"), after, "a refused prune changed the bucket");
    assert!(check_read_data(&bucket, "p").contains("healthy"));

    // With full rights (elsewhere), prune works and cleans the records up.
    ok(&bucket, "p", &["prune", "--keep-last", "1"]);
    assert_eq!(snapshot_count(&bucket, "p"), 1);
    assert!(bucket.objects("p/running").is_empty());
    restore_and_compare(&bucket, "p", &src, &tmp.path().join("out"));
}

#[test]
fn failed_and_throttled_requests_are_retried_and_the_backup_succeeds() {
    let bucket = Garage::shared().bucket();
    ok(&bucket, "f", &["init"]);
    // Every third request (uploads, reads, listings) gets 503 SlowDown.
    let proxy = Proxy::flaky(&bucket, 3);
    let flaky = bucket.via(&proxy.endpoint);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src, 40 << 20, 8);
    ok(&flaky, "f", &["backup", &src.to_string_lossy()]);
    restore_and_compare(&flaky, "f", &src, &tmp.path().join("out"));
    let log = proxy.log();
    assert!(log.failed >= 5, "{:#?}", log.requests);
    assert!(log.requests.iter().any(|r| r.starts_with("PUT ") && r.contains("/packs/") && r.ends_with(" 503")));
    assert!(check_read_data(&bucket, "f").contains("healthy"));
}

#[test]
fn a_backup_killed_mid_upload_is_resumed_by_the_next_one_without_uploading_it_again() {
    let bucket = Garage::shared().bucket();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let total: u64 = 128 << 20;
    make_source(&src, total, 6);
    ok(&bucket, "k", &["init"]);

    let mut cmd = hf(&bucket, "k", &["backup", &src.to_string_lossy()]);
    cmd.env("HOLDFAST_CHECKPOINT_PACKS", "1").env("HOLDFAST_S3_CONNECTIONS", "1");
    // Three index files: at least two checkpoints are written.
    let mut backup = start_and_wait_for_objects(cmd, &bucket, "k/index", 3);
    backup.kill().unwrap(); // SIGKILL
    backup.wait().unwrap();
    let uploaded: u64 = bucket.objects("k/packs").values().map(|(size, _)| size).sum();
    assert!(uploaded >= 32 << 20, "{uploaded}");
    assert_eq!(snapshot_count(&bucket, "k"), 0);

    let next = parse_json(&ok(&bucket, "k", &["backup", "--json", &src.to_string_lossy()]));
    let added = next["summary"]["bytes_added"].as_u64().unwrap();
    // Nothing uploaded before the kill is uploaded again: checkpointed packs
    // are indexed, the rest are adopted (the slack is trees and metadata).
    assert!(
        added + uploaded <= total + (1 << 20),
        "the next backup added {added} bytes though {uploaded} of {total} were uploaded already"
    );
    assert!(!check_read_data(&bucket, "k").contains("not in any index"));
    assert!(check_read_data(&bucket, "k").contains("healthy"));
    restore_and_compare(&bucket, "k", &src, &tmp.path().join("out"));
}

#[test]
fn an_endpoint_that_never_answers_fails_the_run_in_bounded_time_and_finally_still_runs() {
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let bucket = Bucket { name: "never-there".into(), key_id: "id".into(), secret: "secret".into(), endpoint };
    let env = JobEnv::new();
    let data = env.path("data");
    make_source(&data, 1 << 20, 7);
    let repo = bucket.repository_toml("offsite", "x", &env.path(""), "timeout = \"2s\"");
    env.config(&format!(
        "{repo}\n[jobs.web]\nrepositories = [\"offsite\"]\nfiles = {{ paths = [\"{}\"] }}\n\
         [[jobs.web.hooks]]\nphase = \"finally\"\nrun = \"touch finally-ran\"\n",
        data.display()
    ));
    let started = Instant::now();
    let ran = env.run(&["web"]);
    let took = started.elapsed();
    ran.assert_failed().assert_says("never-there");
    assert!(took < Duration::from_secs(90), "the run took {took:?}");
    assert!(env.path("finally-ran").exists(), "the finally hook did not run");
    drop(silent);
}
