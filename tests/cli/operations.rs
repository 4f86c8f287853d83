//! Operations: `status` (the dead man's switch: last run, newest snapshot,
//! staleness against `max_age`, snapshots that disappeared), the metrics a
//! run leaves for Prometheus (`metrics_dir`), and the units `systemd`
//! writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::jobs_util::{JobEnv, Ran, q};
use crate::util::parse_json;

/// A files-only job `app` backing up `uploads/`, with `extra` keys and
/// tables before its `files` table. Its `before` hook fails while the file
/// `fail` exists.
fn files_job(env: &JobEnv, extra: &str) {
    fs::create_dir_all(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    env.config(&format!(
        "[jobs.app]\n{extra}\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = \"test ! -e fail\"\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n"
    ))
    .init_repo();
}

/// `status ARGS...` to its end.
fn status(env: &JobEnv, args: &[&str]) -> Ran {
    env.start(env.cmd(["status"].iter().chain(args))).wait()
}

/// The one job of `status app --json` and whether status exited 0.
fn status_json(env: &JobEnv) -> (bool, Value, Ran) {
    let ran = status(env, &["app", "--json"]);
    let all = parse_json(&ran.stdout);
    let arr = all.as_array().unwrap_or_else(|| panic!("status --json should print an array: {ran:?}"));
    assert_eq!(arr.len(), 1, "{ran:?}");
    (ran.status.success(), arr[0].clone(), ran)
}

fn newest_id(env: &JobEnv) -> String {
    let snaps = env.snapshots_json("app");
    snaps.last().expect("a snapshot")["id"].as_str().expect("id").to_string()
}

#[test]
fn status_of_a_fresh_successful_job_is_healthy() {
    let env = JobEnv::new();
    files_job(&env, "max_age = \"1h\"\nschedule = \"daily\"\n");
    env.run(&["app"]).assert_ok();
    let id = newest_id(&env);

    let (ok, s, ran) = status_json(&env);

    assert!(ok, "status of a fresh job should exit 0: {ran:?}");
    assert_eq!(s["last_run"]["ok"], true, "{s:#}");
    assert_eq!(s["last_run"]["snapshot"], id.as_str(), "{s:#}");
    assert_eq!(s["snapshots"], 1, "{s:#}");
    assert_eq!(s["newest_snapshot"], id.as_str(), "{s:#}");
    assert_eq!(s["stale"], false, "{s:#}");
    assert_eq!(s["max_age_secs"], 3600, "{s:#}");
    assert!(s["problems"].as_array().is_some_and(|p| p.is_empty()), "{s:#}");
    if have_systemd_analyze() {
        assert!(s["next_run"].is_string(), "next_run should come from systemd-analyze: {s:#}");
    }
    // The text form exits 0 too and names the job.
    status(&env, &[]).assert_ok().assert_says("app");
}

#[test]
fn a_stale_job_fails_status_and_notifies_once_per_episode() {
    let env = JobEnv::new();
    files_job(
        &env,
        "max_age = \"1s\"\n\n[[jobs.app.notify]]\nevents = [\"stale\"]\n\
         command = [\"/bin/sh\", \"-c\", \"echo \\\"$1\\\" >> stale\", \"notify\", \"{{job}} {{event}}\"]\n",
    );
    env.run(&["app"]).assert_ok();
    std::thread::sleep(Duration::from_secs(2));

    for i in 0..3 {
        let (ok, s, ran) = status_json(&env);
        assert!(!ok, "status #{i} of a stale job should exit non-zero: {ran:?}");
        assert_eq!(s["stale"], true, "{s:#}");
    }
    status(&env, &[]).assert_failed().assert_says("STALE");
    assert_eq!(env.lines("stale"), ["app stale"], "one notification for one stale episode");

    env.run(&["app"]).assert_ok();
    let (ok, s, ran) = status_json(&env);
    assert!(ok, "status right after a new run should exit 0: {ran:?}");
    assert_eq!(s["stale"], false, "{s:#}");
    assert_eq!(env.lines("stale"), ["app stale"]);

    std::thread::sleep(Duration::from_secs(2));
    status(&env, &["app"]).assert_failed();
    status(&env, &["app"]).assert_failed();
    assert_eq!(env.lines("stale"), ["app stale", "app stale"], "a second episode notifies again, once");
}

#[test]
fn a_failed_last_run_fails_status_and_shows_the_error() {
    let env = JobEnv::new();
    files_job(&env, "");
    env.run(&["app"]).assert_ok();
    fs::write(env.path("fail"), "").unwrap();
    env.run(&["app"]).assert_failed();

    let (ok, s, ran) = status_json(&env);

    assert!(!ok, "status after a failed run should exit non-zero: {ran:?}");
    assert_eq!(s["failed"], true, "{s:#}");
    assert_eq!(s["last_run"]["ok"], false, "{s:#}");
    let err = s["last_run"]["error"].as_str().unwrap_or_else(|| panic!("the last run's error: {s:#}"));
    assert!(err.contains("before"), "the error should name the failed hook: {err}");
    status(&env, &["app"]).assert_failed().assert_says("FAILED").assert_says(err);
}

#[test]
fn a_snapshot_missing_from_the_repository_is_a_problem() {
    let env = JobEnv::new();
    files_job(&env, "");
    env.run(&["app"]).assert_ok();
    fs::write(env.path("uploads/b.txt"), "b\n").unwrap();
    env.run(&["app"]).assert_ok();
    let id = newest_id(&env);
    let file = find_file(&env.repo().join("snapshots"), &id)
        .unwrap_or_else(|| panic!("the file of snapshot {id} under repo/snapshots"));
    fs::remove_file(&file).unwrap();

    let (ok, s, ran) = status_json(&env);

    assert!(!ok, "status should exit non-zero when a snapshot disappeared: {ran:?}");
    let problems = s["problems"].to_string();
    assert!(problems.contains(&id[..8]), "the problems should name snapshot {id}: {s:#}");
    assert_eq!(s["snapshots"], 1, "{s:#}");
    status(&env, &["app"]).assert_failed().assert_says("PROBLEM").assert_says(&id[..8]);
}

#[test]
fn a_run_writes_prometheus_metrics() {
    let env = JobEnv::new();
    files_job(&env, &format!("metrics_dir = {}\n", q(env.path("metrics"))));
    let prom = env.path("metrics/holdfast-app.prom");

    env.run(&["app"]).assert_ok();
    let text = fs::read_to_string(&prom).unwrap_or_else(|e| panic!("{}: {e}", prom.display()));
    for name in [
        "holdfast_last_success_timestamp_seconds",
        "holdfast_last_run_duration_seconds",
        "holdfast_last_run_success",
        "holdfast_last_run_bytes_read",
        "holdfast_last_run_bytes_added",
        "holdfast_snapshots",
        "holdfast_repository_bytes",
    ] {
        assert!(metric(&text, name).is_some(), "{name}{{job=\"app\"}} should be in:\n{text}");
    }
    assert_eq!(metric(&text, "holdfast_last_run_success").as_deref(), Some("1"), "{text}");
    assert_eq!(metric(&text, "holdfast_snapshots").as_deref(), Some("1"), "{text}");
    assert!(metric(&text, "holdfast_last_run_bytes_read").is_some_and(|v| v != "0"), "{text}");
    assert!(metric(&text, "holdfast_repository_bytes").is_some_and(|v| v != "0"), "{text}");
    assert!(text.contains("holdfast_repository_bytes{job=\"app\",repository=\"main\"}"), "one per repository: {text}");

    env.run(&["app"]).assert_ok();
    let text = fs::read_to_string(&prom).unwrap();
    assert_eq!(metric(&text, "holdfast_snapshots").as_deref(), Some("2"), "{text}");

    fs::write(env.path("fail"), "").unwrap();
    env.run(&["app"]).assert_failed();
    let text = fs::read_to_string(&prom).unwrap();
    assert_eq!(metric(&text, "holdfast_last_run_success").as_deref(), Some("0"), "{text}");
    assert_eq!(metric(&text, "holdfast_snapshots").as_deref(), Some("2"), "{text}");
    assert!(metric(&text, "holdfast_last_success_timestamp_seconds").is_some(), "the last success stays: {text}");
}

/// The packaged template units (`holdfast@JOB.timer`) get a job's schedule
/// from a drop-in; a job without one keeps the template's.
#[test]
fn systemd_template_writes_a_schedule_drop_in_per_scheduled_job() {
    let env = JobEnv::new();
    files_job(
        &env,
        "schedule = \"Mon..Fri *-*-* 22:30:00\"\n[jobs.manual]\n[jobs.manual.files]\npaths = [\"uploads\"]",
    );
    let out = env.path("system");
    let written = env.engine(["systemd", "--template", "--output"]).arg(&out).assert().success();
    // The config is not the packaged directory the template units read.
    let said = String::from_utf8_lossy(&written.get_output().stderr).into_owned();
    assert!(said.contains("/etc/holdfast/jobs.d"), "{said}");
    let drop_in = fs::read_to_string(out.join("holdfast@app.timer.d/schedule.conf")).unwrap();
    assert!(drop_in.contains("[Timer]\nOnCalendar=\nOnCalendar=Mon..Fri *-*-* 22:30:00\n"), "{drop_in}");
    assert!(!out.join("holdfast@manual.timer.d").exists(), "a job without a schedule keeps the daily template");
    // Per-user units have no packaged template.
    env.engine(["systemd", "--template", "--user"]).assert().code(2);
}

#[test]
fn systemd_writes_hardened_units_that_verify() {
    let env = JobEnv::new();
    files_job(&env, "schedule = \"*-*-* 03:00:00\"\nverify_schedule = \"Sun *-*-* 05:00:00\"\n");
    let out = env.path("units");

    env.engine(["systemd", "app", "--output"]).arg(&out).assert().success();

    let names = unit_names(&out);
    assert_eq!(
        names,
        ["holdfast-app.service", "holdfast-app.timer", "holdfast-verify-app.service", "holdfast-verify-app.timer"]
    );
    let read = |n: &str| fs::read_to_string(out.join(n)).unwrap();
    let config = env.config_path();
    assert!(config.is_absolute());
    let service = read("holdfast-app.service");
    let lines: Vec<&str> = service.lines().collect();
    assert!(lines.contains(&"Type=oneshot"), "{service}");
    let exec = lines.iter().find(|l| l.starts_with("ExecStart=")).unwrap_or_else(|| panic!("ExecStart: {service}"));
    assert!(exec.ends_with(&format!(" --config {} run app", config.display())), "{service}");
    let stop = lines.iter().find(|l| l.starts_with("ExecStopPost=")).unwrap_or_else(|| panic!("{service}"));
    assert!(stop.ends_with(&format!(" --config {} recover app", config.display())), "{service}");
    assert!(lines.contains(&"ProtectSystem=strict"), "{service}");
    for dir in [env.spool(), env.repo()] {
        assert!(
            lines.iter().any(|l| l
                .strip_prefix("ReadWritePaths=")
                .is_some_and(|p| p.trim_start_matches('-') == dir.to_str().unwrap())),
            "ReadWritePaths for {}: {service}",
            dir.display()
        );
    }
    let verify = read("holdfast-verify-app.service");
    assert!(verify.contains(&format!(" --config {} verify --every-repository app\n", config.display())), "{verify}");
    let timer = read("holdfast-app.timer");
    assert!(timer.lines().any(|l| l == "OnCalendar=*-*-* 03:00:00"), "{timer}");
    assert!(timer.lines().any(|l| l == "Persistent=true"), "{timer}");
    assert!(timer.lines().any(|l| l == "Unit=holdfast-app.service"), "{timer}");
    let vtimer = read("holdfast-verify-app.timer");
    assert!(vtimer.lines().any(|l| l == "OnCalendar=Sun *-*-* 05:00:00"), "{vtimer}");
    assert!(vtimer.lines().any(|l| l == "Persistent=true"), "{vtimer}");

    assert_systemd_accepts(&out, &names);
}

#[test]
fn the_restore_test_unit_tests_every_repository_of_a_job() {
    let env = JobEnv::new();
    fs::create_dir_all(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    env.config(
        "[repositories.offsite]\npath = \"offsite\"\npassphrase_file = \"passphrase\"\n\n\
         [jobs.app]\nrepositories = [\"main\", \"offsite\"]\nverify_schedule = \"Sun *-*-* 05:00:00\"\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n",
    )
    .init_repo();
    env.engine(["--repo", "offsite", "init"]).assert().success();
    env.run(&["app"]).assert_ok();
    let out = env.path("units");

    env.engine(["systemd", "app", "--output"]).arg(&out).assert().success();

    let names = unit_names(&out);
    assert_eq!(names, ["holdfast-app.service", "holdfast-verify-app.service", "holdfast-verify-app.timer"]);
    assert_systemd_accepts(&out, &names);
    let unit = fs::read_to_string(out.join("holdfast-verify-app.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap_or_else(|| panic!("{unit}"));
    assert!(exec.ends_with(" verify --every-repository app"), "{unit}");

    // What the unit runs tests both copies, one after the other.
    let verify = env.engine(["verify", "--every-repository", "app"]).assert().success();
    let stdout = String::from_utf8_lossy(&verify.get_output().stdout).into_owned();
    for repo in ["main", "offsite"] {
        assert!(stdout.contains(&format!(" in {repo} verified")), "{repo}: {stdout}");
    }
    // With the local repository lost, the off-site one is still tested and
    // the unit fails, naming what is wrong.
    fs::remove_dir_all(env.repo()).unwrap();
    let failed = env.engine(["verify", "--every-repository", "app"]).assert().failure();
    let stdout = String::from_utf8_lossy(&failed.get_output().stdout).into_owned();
    let stderr = String::from_utf8_lossy(&failed.get_output().stderr).into_owned();
    assert!(stdout.contains(" in offsite verified"), "{stdout}");
    assert!(stderr.contains(&env.repo().display().to_string()), "{stderr}");
}

// ---------------------------------------------------------------- helpers

/// The unit files `systemd --output` wrote into `dir`, sorted.
fn unit_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `systemd-analyze verify` accepts the units (where it is installed).
fn assert_systemd_accepts(dir: &Path, names: &[String]) {
    if !have_systemd_analyze() {
        println!("note: systemd-analyze is not installed; not verifying the units with it");
        return;
    }
    let units: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let v = Command::new("systemd-analyze").arg("verify").args(&units).output().expect("run systemd-analyze");
    assert!(
        v.status.success(),
        "systemd-analyze verify should accept the units ({}):\n{}{}",
        v.status,
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// The value of `name{job="app"}` in Prometheus text.
/// The value of metric `name` of job `app` (whatever other labels it has).
fn metric(text: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}{{job=\"app\"");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split_once("} "))
        .map(|(_, value)| value.to_string())
}

/// A file under `dir` whose name contains `needle`.
fn find_file(dir: &Path, needle: &str) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, needle) {
                return Some(f);
            }
        } else if e.file_name().to_string_lossy().contains(needle) {
            return Some(p);
        }
    }
    None
}
