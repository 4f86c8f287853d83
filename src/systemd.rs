//! systemd units for jobs: a hardened oneshot service and a timer per job
//! (and a verify pair that tests every repository of the job when it has a
//! `verify_schedule`), plus one daily
//! `holdfast-prune` pair for the jobs that have a retention policy.
//!
//! The service runs `holdfast --config <exact path> run JOB`, calls
//! `recover JOB` from `ExecStopPost=` (so a killed run's `finally` hooks
//! still run), can write only the job's spool, repositories and metrics
//! directory, and gets secret files (passphrases, S3 keys) through `LoadCredential=`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{Config, Job};
use crate::secrets::credential_files;

/// `(file name, contents)` of every unit for `jobs`.
pub fn units(config: &Config, config_path: &Path, jobs: &[&Job], user: bool) -> Result<Vec<(String, String)>> {
    let exe = std::env::current_exe().context("finding the holdfast binary")?;
    let mut out = Vec::new();
    for job in jobs {
        let base = format!("{} --config {}", quote(&exe), quote(config_path));
        let run = format!("{base} run {}", job.name);
        let recover = format!("{base} recover {}", job.name);
        out.push((
            format!("holdfast-{}.service", job.name),
            service(config, job, "backup", &run, Some(&recover), user),
        ));
        if let Some(s) = &job.schedule {
            out.push((
                format!("holdfast-{}.timer", job.name),
                timer(job, s, "backup", &format!("holdfast-{}.service", job.name)),
            ));
        }
        if let Some(s) = &job.verify_schedule {
            // Every repository in turn: an off-site copy nobody ever restored
            // from is as untested as any other.
            let unit = format!("holdfast-verify-{}", job.name);
            let command = format!("{base} verify --every-repository {}", job.name);
            out.push((format!("{unit}.service"), service(config, job, "restore test", &command, None, user)));
            out.push((format!("{unit}.timer"), timer(job, s, "restore test", &format!("{unit}.service"))));
        }
    }
    // One prune for all jobs with a retention policy (prune is its own timer,
    // so it never delays a backup).
    let pruned: Vec<&Job> = jobs.iter().copied().filter(|j| !j.retention.is_empty()).collect();
    if !pruned.is_empty() {
        let base = format!("{} --config {}", quote(&exe), quote(config_path));
        let names: Vec<&str> = pruned.iter().map(|j| j.name.as_str()).collect();
        let mut svc = format!(
            "[Unit]\nDescription=holdfast prune (retention and garbage collection) of {}\n\n[Service]\nType=oneshot\nExecStart={base} prune {}\nNice=15\nIOSchedulingClass=idle\n",
            names.join(", "),
            names.join(" ")
        );
        if !user {
            svc.push_str("ProtectSystem=strict\n");
            let mut paths: Vec<PathBuf> = Vec::new();
            for j in &pruned {
                paths.push(j.spool.clone());
                paths.extend(
                    j.repositories
                        .iter()
                        .filter_map(|r| config.repositories.get(r)?.local_path().map(|p| p.to_path_buf())),
                );
            }
            paths.sort();
            paths.dedup();
            for p in paths {
                svc.push_str(&format!("ReadWritePaths=-{}\n", p.display()));
            }
            svc.push_str("PrivateTmp=true\nNoNewPrivileges=true\n");
            let mut credentials: Vec<String> = pruned.iter().flat_map(|j| load_credentials(config, j)).collect();
            credentials.sort();
            credentials.dedup();
            for c in credentials {
                svc.push_str(&c);
            }
        }
        out.push(("holdfast-prune.service".into(), svc));
        out.push((
            "holdfast-prune.timer".into(),
            "[Unit]\nDescription=holdfast prune, daily\n\n[Timer]\nOnCalendar=*-*-* 04:30:00\nPersistent=true\nRandomizedDelaySec=30m\nUnit=holdfast-prune.service\n\n[Install]\nWantedBy=timers.target\n".into(),
        ));
    }
    Ok(out)
}

fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains(char::is_whitespace) { format!("\"{s}\"") } else { s }
}

/// The hardened oneshot service that runs `command` (and `after_stop` once
/// it stopped, however it ended).
fn service(config: &Config, job: &Job, what: &str, command: &str, after_stop: Option<&str>, user: bool) -> String {
    let mut writable: Vec<PathBuf> = vec![job.spool.clone()];
    for name in &job.repositories {
        if let Some(r) = config.repositories.get(name) {
            writable.extend(r.local_path().map(|p| p.to_path_buf()));
        }
    }
    if let Some(m) = &job.metrics_dir {
        writable.push(m.clone());
    }
    let under_home = writable.iter().any(|p| p.starts_with("/home") || p.starts_with("/root"));
    let mut s = format!(
        "[Unit]\nDescription=holdfast {what} of job {}{}\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=oneshot\n",
        job.name,
        job.description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
    );
    s.push_str(&format!("ExecStart={command}\n"));
    if let Some(after) = after_stop {
        s.push_str(&format!("ExecStopPost={after}\n"));
    }
    s.push_str("Nice=10\nIOSchedulingClass=idle\n");
    if !user {
        s.push_str("ProtectSystem=strict\n");
        for p in &writable {
            s.push_str(&format!("ReadWritePaths=-{}\n", p.display()));
        }
        s.push_str("PrivateTmp=true\nNoNewPrivileges=true\n");
        if !under_home {
            s.push_str("ProtectHome=read-only\n");
        }
        for c in load_credentials(config, job) {
            s.push_str(&c);
        }
    }
    s
}

/// `LoadCredential=` lines (newline included) for the secret files of the
/// job's repositories.
fn load_credentials(config: &Config, job: &Job) -> Vec<String> {
    job.repositories
        .iter()
        .filter_map(|name| config.repositories.get(name))
        .flat_map(credential_files)
        .map(|(name, file)| format!("LoadCredential={name}:{}\n", file.display()))
        .collect()
}

fn timer(job: &Job, schedule: &str, what: &str, unit: &str) -> String {
    format!(
        "[Unit]\nDescription=holdfast {what} of job {} on schedule\n\n[Timer]\nOnCalendar={schedule}\nPersistent=true\nRandomizedDelaySec=5m\nUnit={unit}\n\n[Install]\nWantedBy=timers.target\n",
        job.name
    )
}
