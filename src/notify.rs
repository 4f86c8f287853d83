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
    // A template error quotes the template: not the URL's secret parts.
    let url = render(url, vars).map_err(|e| e.replace(url, &redact_url(url)))?;
    let body = json!({
        "job": vars.job, "event": vars.event, "run_id": vars.run_id, "snapshot": vars.snapshot,
        "error": vars.error, "time": vars.time, "host": vars.host,
    });
    let config = ureq::config::Config::builder().timeout_global(Some(timeout)).build();
    let agent = ureq::Agent::new_with_config(config);
    let target = webhook_url(&url, &vars.event);
    agent.post(&target).header("Content-Type", "application/json").send(body.to_string()).map_err(|e| {
        let shown = redact_url(&target);
        let why = crate::units::hide_credentials(&e.to_string().replace(&target, &shown));
        format!("POST {shown}: {why}")
    })?;
    Ok(())
}

/// A URL as logs may show it: scheme, host and port only. Its path and
/// query may hold a check's secret UUID or a token, its user part a
/// password.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(at) = url.find("://") else { return "…".into() };
    let (_, rest) = crate::units::split_userinfo(&url[at + 3..]);
    let host = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let more = if host.len() < rest.len() { "/…" } else { "" };
    format!("{}://{host}{more}", &url[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_keep_only_scheme_host_and_port() {
        assert_eq!(redact_url("https://hc-ping.com/0f2a-uuid"), "https://hc-ping.com/…");
        assert_eq!(redact_url("https://bob:Secret@hooks.example:8443/h?token=T"), "https://hooks.example:8443/…");
        assert_eq!(redact_url("http://hooks.example?token=T"), "http://hooks.example/…");
        assert_eq!(redact_url("http://hooks.example"), "http://hooks.example");
        assert_eq!(redact_url("not a url"), "…");
        assert_eq!(redact_url("http://bob:S3c/ret@127.0.0.1:9/hook/T"), "http://127.0.0.1:9/…");
    }
}
