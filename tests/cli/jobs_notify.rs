//! Notifications and templates: a `command` target hears the events it
//! listens for, retries included; a failing notification never fails the
//! run; an unknown template variable fails it, naming the variable.

use std::fs;

use crate::jobs_util::JobEnv;

/// A job `app` backing up `uploads/`, with `extra` (hooks, retries) and the
/// notify table `target` (keys after `[[jobs.app.notify]]`).
fn job_with_notify(env: &JobEnv, extra: &str, target: &str) {
    fs::create_dir_all(env.path("uploads")).unwrap();
    fs::write(env.path("uploads/a.txt"), "a\n").unwrap();
    env.config(&format!(
        "[jobs.app]\n{extra}\n[jobs.app.files]\npaths = [\"uploads\"]\n\n[[jobs.app.notify]]\n{target}"
    ))
    .init_repo();
}

/// [`job_with_notify`] with a command target that appends `{{job}} {{event}}` to `events`.
fn notifying_job(env: &JobEnv, extra: &str) {
    job_with_notify(
        env,
        extra,
        r#"events = ["success", "failure", "retry"]
command = ["/bin/sh", "-c", "echo \"$1\" >> events", "notify", "{{job}} {{event}}"]
"#,
    );
}

const FAILING_HOOK: &str = "[[jobs.app.hooks]]\nphase = \"before\"\nrun = \"exit 1\"\n";

#[test]
fn a_command_target_hears_success() {
    let env = JobEnv::new();
    notifying_job(&env, "");

    env.run(&["app"]).assert_ok();

    assert_eq!(env.lines("events"), ["app success"]);
}

#[test]
fn a_command_target_hears_failure() {
    let env = JobEnv::new();
    notifying_job(&env, FAILING_HOOK);

    env.run(&["app"]).assert_failed();

    assert_eq!(env.lines("events"), ["app failure"]);
}

#[test]
fn a_retried_failure_notifies_retry_then_failure() {
    let env = JobEnv::new();
    notifying_job(&env, &format!("retries = 1\nretry_delay = \"1s\"\n{FAILING_HOOK}"));

    let ran = env.run(&["app"]);

    ran.assert_failed().assert_says("2 attempt(s)");
    assert_eq!(env.lines("events"), ["app retry", "app failure"]);
}

#[test]
fn a_failing_notification_does_not_fail_the_run() {
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.app]\n[jobs.app.files]\npaths = [\"uploads\"]\n\n\
         [[jobs.app.notify]]\nevents = [\"start\", \"success\"]\ncommand = \"echo {{event}} >> events; exit 3\"\n\n\
         [[jobs.app.notify]]\nevents = [\"success\"]\ncommand = [\"/nonexistent/notifier\"]\n",
    )
    .init_repo();

    env.run(&["app"]).assert_ok();

    assert_eq!(env.lines("events"), ["start", "success"]);
    assert_eq!(env.snapshots_json("app").len(), 1);
}

#[test]
fn an_unknown_template_variable_in_a_hook_fails_the_run_naming_it() {
    let env = JobEnv::new();
    fs::create_dir(env.path("uploads")).unwrap();
    env.config(
        "[jobs.app]\n[[jobs.app.hooks]]\nphase = \"before\"\nrun = \"echo {{snapshot_id}} > out\"\n\n\
         [[jobs.app.hooks]]\nphase = \"finally\"\nrun = \"touch finally-ran\"\n\n\
         [jobs.app.files]\npaths = [\"uploads\"]\n",
    )
    .init_repo();

    env.run(&["app"]).assert_failed().assert_says("snapshot_id");

    assert!(!env.path("out").exists(), "the hook should not run with an unknown variable");
    assert!(env.path("finally-ran").exists(), "finally should still run");
    assert_eq!(env.snapshots_json("app").len(), 0);
}

#[test]
fn a_run_that_succeeds_on_its_retry_commits_once_and_notifies_retry_then_success() {
    let env = JobEnv::new();
    // Fails the first time only.
    let flaky =
        "[[jobs.app.hooks]]\nphase = \"before\"\nrun = \"if [ -e tried ]; then exit 0; fi; touch tried; exit 1\"\n";
    notifying_job(&env, &format!("retries = 1\nretry_delay = \"1s\"\n{flaky}"));

    env.run(&["app"]).assert_ok();

    assert_eq!(env.lines("events"), ["app retry", "app success"]);
    assert_eq!(env.snapshots_json("app").len(), 1);
    assert_eq!(env.job_spool("app"), ["lock"], "each attempt's spool directory is removed");
}

#[test]
fn a_run_whose_snapshot_is_committed_is_not_retried() {
    let env = JobEnv::new();
    let failing_on_success = "[[jobs.app.hooks]]\nphase = \"on_success\"\nrun = \"exit 1\"\n";
    notifying_job(&env, &format!("retries = 1\nretry_delay = \"1s\"\n{failing_on_success}"));

    env.run(&["app"]).assert_failed();

    // One run commits one snapshot: a retry after the commit would back
    // everything up again.
    assert_eq!(env.snapshots_json("app").len(), 1);
    assert_eq!(env.lines("events"), ["app failure"]);
}

/// A one-thread HTTP server on loopback that records each request's method,
/// path and body and answers 200 (or 500 when `fail`).
fn http_recorder(fail: bool) -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if fail { "500 Internal Server Error" } else { "200 OK" };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let mut parts = request_line.split_whitespace();
            let what = format!("{} {}", parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if tx.send((what, String::from_utf8_lossy(&body).into_owned())).is_err() {
                return;
            }
        }
    });
    (base, rx)
}

fn webhook_job(env: &JobEnv, url: &str, extra: &str) {
    job_with_notify(env, extra, &format!("events = [\"start\", \"success\", \"failure\"]\nwebhook = \"{url}\"\n"));
}

#[test]
fn a_webhook_target_gets_healthchecks_style_pings_with_a_json_body() {
    let (base, requests) = http_recorder(false);
    let env = JobEnv::new();
    webhook_job(&env, &format!("{base}/ping/check-uuid"), "");

    env.run(&["app"]).assert_ok();

    let got: Vec<(String, String)> = requests.try_iter().collect();
    let lines: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, ["POST /ping/check-uuid/start", "POST /ping/check-uuid"]);
    let body: serde_json::Value = serde_json::from_str(&got[1].1).unwrap();
    assert_eq!(body["job"], "app");
    assert_eq!(body["event"], "success");
    assert_eq!(body["snapshot"].as_str().unwrap().len(), 64);

    let env = JobEnv::new();
    webhook_job(&env, &format!("{base}/ping/check-uuid"), FAILING_HOOK);
    env.run(&["app"]).assert_failed();
    let lines: Vec<String> = requests.try_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, ["POST /ping/check-uuid/start", "POST /ping/check-uuid/fail"]);
}

#[test]
fn a_webhook_that_fails_or_is_unreachable_does_not_fail_the_run() {
    let (base, _requests) = http_recorder(true);
    let env = JobEnv::new();
    webhook_job(&env, &format!("{base}/hook"), "");
    env.run(&["app"]).assert_ok();

    // Nothing listens on this port (bound, then released).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let env = JobEnv::new();
    webhook_job(&env, &format!("http://{closed}/hook"), "");
    env.run(&["app"]).assert_ok();
}
