//! Input a hostile user or a careless admin gives holdfast, found by review
//! in wave 2, one test per finding: what it did before (in each test's
//! comment) and what it does now. Secrets here are marked `Secret` so that a
//! leak is easy to see.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::jobs_util::JobEnv;
use crate::util::{TestRepo, holdfast, parse_json, stderr_of, stdout_of};

/// A config whose parse fails: holdfast's stderr, asserted to name the file
/// and to be a config error (non-zero exit).
fn config_error(env: &JobEnv, jobs: &str) -> String {
    env.config(jobs);
    let failed = env.engine(["validate"]).assert().failure();
    let stderr = stderr_of(&failed);
    assert!(stderr.contains(&env.config_path().display().to_string()), "the error names the file: {stderr}");
    stderr
}

#[test]
fn a_variable_that_is_not_utf8_reaches_hooks_unchanged_instead_of_crashing_the_run() {
    // Before: `std::env::vars()` panicked (exit 101) as soon as a hook ran.
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\n\
         [[jobs.app.hooks]]\nphase = \"before\"\nrun = [\"sh\", \"-c\", \"printf %s \\\"$ODD\\\" > odd\"]\n",
    )
    .init_repo();
    let mut cmd = env.cmd(["run", "app"]);
    cmd.env("ODD", OsStr::from_bytes(b"caf\xe9"));
    let ran = env.start(cmd).wait();
    ran.assert_ok();
    assert_eq!(fs::read(env.path("odd")).unwrap(), b"caf\xe9", "the hook sees the variable's bytes");
}

#[test]
fn two_sources_whose_names_differ_only_in_bytes_that_are_not_utf8_are_two_timelines() {
    // Before: both were stored as `d\u{fffd}`; prune took them for one
    // timeline and forgot the only snapshot of one of them, and `--path`
    // matched neither.
    let t = TestRepo::init();
    let (a, b) = (t.path("").join(OsStr::from_bytes(b"d\xff")), t.path("").join(OsStr::from_bytes(b"d\xfe")));
    // And one named with the four characters `\xff`: a third timeline.
    let c = t.path("d\\xff");
    for (dir, text) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("f"), text).unwrap();
        t.backup(&[dir]);
    }
    t.cmd(["prune", "--keep-last", "1", "--grace", "0s"]).assert().success();
    assert_eq!(t.short_ids().len(), 3, "each source keeps its only snapshot");

    let out = t.cmd(["snapshots", "--json", "--path"]).arg(&a).assert().success();
    let found = parse_json(&stdout_of(&out));
    assert_eq!(found.as_array().map(Vec::len), Some(1), "--path picks out one of them: {found}");
    let to = t.path("out");
    t.cmd(["restore", "latest", "--to"]).arg(&to).arg("--path").arg(&a).assert().success();
    let restored = to.join(a.strip_prefix("/").unwrap()).join("f");
    assert_eq!(fs::read_to_string(&restored).unwrap(), "a", "the latest snapshot holding {a:?}");
}

#[test]
fn an_empty_exclude_pattern_is_refused_where_it_is_written() {
    // Before: `""` became `**/` and left out everything; the run "succeeded"
    // with no files.
    let env = JobEnv::new();
    let stderr =
        config_error(&env, "[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\nexclude = [\"*.tmp\", \"\"]\n");
    assert!(stderr.contains(":14:") && stderr.contains("match every path"), "{stderr}");

    let t = TestRepo::init();
    fs::create_dir(t.path("src")).unwrap();
    let failed = t.cmd(["backup", "--exclude", ""]).arg(t.path("src")).assert().failure().code(2);
    assert!(stderr_of(&failed).contains("match every path"), "{}", stderr_of(&failed));
    assert!(t.short_ids().is_empty());
    // `find ''` would have listed every path of every snapshot.
    t.cmd(["find", ""]).assert().failure().code(2);
}

#[test]
fn exclude_patterns_that_match_everything_or_end_in_a_slash_are_refused() {
    // Before: `*/` and `**/` left out every file (0 files, exit 0, and
    // `validate` found nothing), and `cache/` matched nothing.
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("keep"), "y").unwrap();
    for pattern in ["*", "*/", "**/", "/*", "**/*"] {
        let failed = t.cmd(["backup", "--exclude", pattern]).arg(&src).assert().failure().code(2);
        assert!(stderr_of(&failed).contains("match every path"), "{pattern}: {}", stderr_of(&failed));
    }
    let failed = t.cmd(["backup", "--exclude", "cache/"]).arg(&src).assert().failure().code(2);
    assert!(stderr_of(&failed).contains("write \"cache\""), "{}", stderr_of(&failed));
    assert!(t.short_ids().is_empty(), "nothing was stored");
    t.cmd(["backup", "--exclude", "cache"]).arg(&src).assert().success();
    let paths: Vec<String> = t.ls_json("latest").iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    assert!(paths.iter().any(|p| p.ends_with("/keep")) && !paths.iter().any(|p| p.ends_with("/cache")), "{paths:?}");

    let env = JobEnv::new();
    let stderr = config_error(&env, "[jobs.app]\n[jobs.app.files]\npaths = [\"u\"]\nexclude = [\"**/\"]\n");
    assert!(stderr.contains(":14:") && stderr.contains("match every path"), "{stderr}");
}

#[test]
fn credentials_in_urls_are_never_echoed() {
    // Before: the config loader quoted the bad value (`(at `http://…`)`),
    // `--repo s3://key:secret@bucket` repeated it, and `ssh://user:pw@host`
    // was passed to ssh as `-l user:pw`.
    let env = JobEnv::new();
    let stderr = config_error(
        &env,
        "[repositories.box]\nurl = \"s3://bucket/x\"\nendpoint = \"http://AKIA:Secret@s3.local:3900/\"\n\
         passphrase_file = \"passphrase\"\n",
    );
    assert!(!stderr.contains("Secret") && stderr.contains("credentials"), "{stderr}");
    let stderr = config_error(
        &env,
        "[repositories.box]\nurl = \"ssh://alice:Secret@box/srv\"\npassphrase_file = \"passphrase\"\n",
    );
    assert!(!stderr.contains("Secret") && stderr.contains("identity_file"), "{stderr}");
    let stderr = config_error(&env, "[repositories.box]\npath = \"r\"\npassphrase = 12345678\n");
    assert!(!stderr.contains("12345678"), "a passphrase's value is not quoted: {stderr}");
    for env_line in ["env = { MYSQL_PWD = hunter2 }", "env = { DB_PASSWORD = 12345678 }", "env = { API = hunter2 }"] {
        let stderr = config_error(
            &env,
            &format!(
                "[jobs.app]\n[jobs.app.files]\npaths = [\"u\"]\n[[jobs.app.hooks]]\nphase = \"before\"\n{env_line}\nrun = \"true\"\n"
            ),
        );
        assert!(!stderr.contains("hunter2") && !stderr.contains("12345678"), "{env_line}: {stderr}");
    }

    for url in [
        "s3://AKIA:Secret@bucket/x",
        "s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYSecret@mybucket/p",
        "ssh://alice:Secret@127.0.0.1/srv/r",
        "ssh://alice:p#Secret@127.0.0.1/srv/r",
        "ssh://alice:p/Secret@127.0.0.1/srv/r",
    ] {
        let failed = holdfast(Path::new(url)).args(["snapshots"]).env("HOLDFAST_PASSPHRASE", "p").assert().failure();
        let stderr = stderr_of(&failed);
        let explained = stderr.contains("credentials") || stderr.contains("password") || stderr.contains("port");
        assert!(!stderr.contains("Secret") && !stderr.contains("wJal") && explained, "{url}: {stderr}");
    }
}

#[test]
fn a_webhook_that_fails_is_logged_without_its_credentials_path_or_query() {
    // Before: only the path was hidden; `user:password@` and `?token=` were
    // logged.
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\n\n[[jobs.app.notify]]\n\
         events = [\"success\"]\nwebhook = \"http://bob:Sec/ret@127.0.0.1:9/ping?token=Secret2\"\n",
    )
    .init_repo();
    let ran = env.run(&["app"]);
    assert!(ran.stderr.contains("127.0.0.1:9"), "the failure is logged: {ran:?}");
    assert!(!ran.stderr.contains("Sec") && !ran.stdout.contains("Sec"), "{ran:?}");
}

#[test]
fn a_failing_hook_that_prints_a_url_with_a_password_is_logged_without_it() {
    // Before: the error line of the run's log carried the hook's output as
    // it was (the state file and $HOLDFAST_ERROR were already masked).
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\n[[jobs.app.hooks]]\nphase = \"before\"\n\
         run = [\"sh\", \"-c\", \"echo cannot reach postgresql://app:Hun/ter2@db.internal/shop >&2; exit 1\"]\n\
         [jobs.ok]\n[jobs.ok.files]\npaths = [\"uploads\"]\n[[jobs.ok.hooks]]\nphase = \"before\"\n\
         run = [\"echo\", \"postgresql://app:Hun/ter2@db.internal/shop\"]\n",
    )
    .init_repo();
    let ran = env.run(&["app"]);
    ran.assert_failed().assert_says("db.internal");
    assert!(!ran.stderr.contains("Hun") && !ran.stdout.contains("Hun"), "{ran:?}");
    // A hook's command line is recorded in the snapshot: without it too.
    let ran = env.run(&["ok"]);
    ran.assert_ok();
    assert!(!ran.stderr.contains("Hun") && !ran.stdout.contains("Hun"), "{ran:?}");
    let snapshot = env.only_snapshot("ok").to_string();
    assert!(snapshot.contains("db.internal") && !snapshot.contains("Hun"), "{snapshot}");
}

#[test]
fn bounds_on_numbers_are_checked_when_the_config_is_read() {
    // Before: `connections = 1000000000000` aborted allocating queues
    // (exit 134) and `retries = 4294967295` wrapped ("attempt 1 of 0").
    let env = JobEnv::new();
    let stderr = config_error(
        &env,
        "[repositories.box]\nurl = \"s3://bucket/x\"\nconnections = 1000000000000\npassphrase_file = \"passphrase\"\n",
    );
    assert!(stderr.contains("connections") && stderr.contains("64"), "{stderr}");
    let stderr = config_error(&env, "[jobs.app]\nretries = 4294967295\n[jobs.app.files]\npaths = [\"u\"]\n");
    assert!(stderr.contains(":12:") && stderr.contains("at most 100"), "{stderr}");
    let stderr = config_error(&env, "[jobs.app]\n[jobs.app.files]\npaths = [\"\"]\n");
    assert!(stderr.contains("empty path"), "{stderr}");
    let stderr = config_error(&env, "[jobs.app]\n[jobs.app.files]\npaths = [\"/srv/a\\u0000b\"]\n");
    assert!(stderr.contains("NUL"), "{stderr}");

    let failed = holdfast(Path::new("s3://bucket/x"))
        .arg("snapshots")
        .env("HOLDFAST_PASSPHRASE", "p")
        .env("AWS_ACCESS_KEY_ID", "k")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("HOLDFAST_S3_CONNECTIONS", "1000000000000")
        .assert()
        .failure();
    assert!(stderr_of(&failed).contains("HOLDFAST_S3_CONNECTIONS"), "{}", stderr_of(&failed));
    TestRepo::init().cmd(["--cache-size", "1iB", "snapshots"]).assert().failure().code(2);
}

#[test]
fn restore_refuses_dot_dot_in_a_path_and_a_target_inside_the_repository() {
    // Before: `--path P/a/..` restored P/a, and `--to REPO` wrote the
    // snapshot into the repository (and made it mode 1777).
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/f"), "f").unwrap();
    t.backup(&[&src]);
    let up: PathBuf = src.join("a/..");
    let failed = t.cmd(["restore", "latest", "--to"]).arg(t.path("out")).arg("--path").arg(&up).assert().failure();
    assert_eq!(failed.get_output().status.code(), Some(2), "{}", stderr_of(&failed));
    assert!(!t.path("out").exists());

    let before = fs::metadata(t.repo()).unwrap();
    for into in [t.repo().to_path_buf(), t.repo().join("packs/new")] {
        let failed = t.cmd(["restore", "latest", "--to"]).arg(&into).assert().failure();
        assert!(stderr_of(&failed).contains("the repository"), "{}", stderr_of(&failed));
    }
    // Nor through a link to it, nor below a directory not made yet.
    std::os::unix::fs::symlink(t.repo(), t.path("link")).unwrap();
    for into in [t.path("link"), t.repo().join("a/b")] {
        let failed = t.cmd(["restore", "latest", "--to"]).arg(&into).assert().failure();
        assert!(stderr_of(&failed).contains("the repository"), "{into:?}: {}", stderr_of(&failed));
    }
    assert_eq!(fs::metadata(t.repo()).unwrap().mode(), before.mode());
    assert!(!t.repo().join("packs/new").exists() && !t.repo().join("a").exists());
    // `--to .` (here: a directory of its own) is a place like any other.
    fs::create_dir(t.path("here")).unwrap();
    t.cmd(["restore", "latest", "--to", "."]).current_dir(t.path("here")).assert().success();
    assert!(t.path("here").join(src.join("a/f").strip_prefix("/").unwrap()).exists());
    assert!(t.check(true).0, "the repository is untouched");
}

#[test]
fn diff_of_a_path_in_neither_snapshot_is_an_error_not_no_changes() {
    let t = TestRepo::init();
    let src = t.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "1").unwrap();
    t.backup(&[&src]);
    fs::write(src.join("f"), "22").unwrap();
    t.backup(&[&src]);
    let ids = t.short_ids();
    let diff = |path: &Path| t.cmd(["diff", &ids[0], &ids[1]]).arg(path).assert();
    let changed = diff(&src).success();
    assert!(stdout_of(&changed).contains("/f"), "{}", stdout_of(&changed));
    let failed = diff(&t.path("no/such/path")).failure();
    assert!(stderr_of(&failed).contains("neither snapshot"), "{}", stderr_of(&failed));
    diff(&src.join("..")).failure().code(2);
}
