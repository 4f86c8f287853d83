//! Notifications: tell someone about a run's events (start, success,
//! failure, retry, ...). Targets are a command (an argv template) or a
//! webhook (an HTTP POST of a JSON body; healthchecks-style URLs get `/start`
//! and `/fail` appended for those events). A notification that fails is
//! logged and never fails the backup.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::json;

use crate::config::{Event, NotifyConfig};
use crate::process::{self, ProcessSpec};
use crate::template::{Vars, render, render_command};

/// Send `event` to every target of `targets` that listens for it.
pub fn notify(targets: &[NotifyConfig], event: Event, vars: &Vars) {
    let mut vars = vars.clone();
    vars.event = event.as_str().to_string();
    for target in targets.iter().filter(|t| t.events.contains(&event)) {
        let timeout = target.timeout.0;
        let result = if let Some(cmd) = &target.command {
            send_command(cmd, &vars, timeout)
        } else if let Some(url) = &target.webhook {
            send_webhook(url, &vars, timeout)
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!("notification of {} failed (the run is not affected): {e}", event.as_str());
        }
    }
}

fn send_command(cmd: &crate::config::CommandLine, vars: &Vars, timeout: Duration) -> Result<(), String> {
    let argv = cmd.try_map_scripts(|s, script| render_command(s, vars, script))?.argv();
    let env = crate::template::environment(vars);
    let spec = ProcessSpec { argv, env, timeout, ..Default::default() };
    let never = AtomicBool::new(false);
    let out = process::run(&spec, &never).map_err(|e| format!("{}: {e}", cmd.display()))?;
    if !out.success() {
        return Err(out.failure_message(&cmd.display()));
    }
    Ok(())
}

/// The URL a healthchecks-style endpoint expects for `event`.
pub fn webhook_url(url: &str, event: &str) -> String {
    let base = url.trim_end_matches('/');
    match event {
        "start" => format!("{base}/start"),
        "success" => base.to_string(),
        "retry" => format!("{base}/log"),
        _ => format!("{base}/fail"),
    }
}

fn send_webhook(url: &str, vars: &Vars, timeout: Duration) -> Result<(), String> {
    let url = render(url, vars)?;
    let body = json!({
        "job": vars.job, "event": vars.event, "run_id": vars.run_id, "snapshot": vars.snapshot,
        "error": vars.error, "time": vars.time, "host": vars.host,
    });
    let config = ureq::config::Config::builder().timeout_global(Some(timeout)).build();
    let agent = ureq::Agent::new_with_config(config);
    let target = webhook_url(&url, &vars.event);
    agent
        .post(&target)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| format!("POST {}: {e}", redact_url(&target)))?;
    Ok(())
}

/// A URL without its path (which may hold a check's secret UUID), for logs.
fn redact_url(url: &str) -> String {
    match url.find("://").and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j)) {
        Some(end) => format!("{}/…", &url[..end]),
        None => url.to_string(),
    }
}
