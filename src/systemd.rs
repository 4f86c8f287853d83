//! systemd units for jobs: a hardened oneshot service and a timer per job
//! (and a verify pair that tests every repository of the job when it has a
//! `verify_schedule`), plus one daily
//! `holdfast-prune` pair for the jobs that have a retention policy.
//!
//! The service runs `holdfast --config <exact path> run JOB`, calls
//! `recover JOB` from `ExecStopPost=` (so a killed run's `finally` hooks
//! still run), can write only the job's spool, state, repositories and
//! metrics directory, and gets secret files (passphrases, S3 keys) through
//! `LoadCredential=`.
//!
//! Every value written into a unit is checked and escaped here: control
//! characters are refused (the config already refuses them where they are
//! written), `%` specifiers and `$` expansions are escaped, and command
//! arguments and paths are quoted by systemd's rules. A description or path
//! can never add a directive.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::Job;
use crate::secrets::credential_files;

/// `(file name, contents)` of every unit for `jobs`.
pub fn units(config_path: &Path, jobs: &[&Job], user: bool) -> Result<Vec<(String, String)>> {
    let exe = std::env::current_exe().context("finding the holdfast binary")?;
    checked("the holdfast binary's path", &exe.to_string_lossy())?;
    checked("the config's path", &config_path.to_string_lossy())?;
    let mut out = Vec::new();
    for job in jobs {
        for p in unit_paths(job) {
            checked(&format!("job {}: path", job.name), &p.to_string_lossy())?;
        }
        for v in [&job.description, &job.schedule, &job.verify_schedule].into_iter().flatten() {
            checked(&format!("job {}", job.name), v)?;
        }
        let base = format!("{} --config {}", quote(&exe), quote(config_path));
        let run = format!("{base} run {}", job.name);
        let recover = format!("{base} recover {}", job.name);
        out.push((format!("holdfast-{}.service", job.name), service(job, "backup", &run, Some(&recover), user)));
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
            out.push((format!("{unit}.service"), service(job, "restore test", &command, None, user)));
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
                paths.extend(j.repositories.iter().filter_map(|r| r.local_path().map(|p| p.to_path_buf())));
            }
            paths.sort();
            paths.dedup();
            for p in paths {
                svc.push_str(&format!("ReadWritePaths={}\n", quote_word(&format!("-{}", p.display()))));
            }
            svc.push_str("PrivateTmp=true\nNoNewPrivileges=true\n");
            let mut credentials: Vec<String> = pruned.iter().flat_map(|j| load_credentials(j)).collect();
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

/// Drop-ins that give the packaged template timer `holdfast@JOB.timer`
/// (`packaging/systemd`) each job's `schedule`: `(relative path, contents)`.
/// Jobs without a schedule keep the template's daily one.
pub fn template_drop_ins(jobs: &[&Job]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for job in jobs {
        let Some(schedule) = &job.schedule else { continue };
        checked(&format!("job {}", job.name), schedule)?;
        out.push((
            format!("holdfast@{}.timer.d/schedule.conf", job.name),
            format!(
                "# Job {}'s schedule, written by `holdfast systemd --template`.\n[Timer]\nOnCalendar=\nOnCalendar={}\n",
                job.name,
                text(schedule)
            ),
        ));
    }
    Ok(out)
}

/// One word of a command line or path list, as systemd reads it back:
/// specifiers (`%`) and variable expansions (`$`) escaped; quoted, with C
/// escapes for `\` and `"`, unless it is plain.
fn quote_word(s: &str) -> String {
    let escaped = s.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty() && escaped.chars().all(|c| c.is_ascii_alphanumeric() || "/_.:@+=,-%$".contains(c));
    if plain { escaped } else { format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\"")) }
}

fn quote(p: &Path) -> String {
    quote_word(&p.to_string_lossy())
}

/// Free text for `Description=`: specifiers escaped, no line continuation.
fn text(s: &str) -> String {
    let mut t = s.replace('%', "%%");
    if t.ends_with('\\') {
        t.push(' ');
    }
    t
}

/// Refuse a value that would break a unit's line structure.
fn checked<'a>(what: &str, value: &'a str) -> Result<&'a str> {
    crate::config::check_line(value).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(value)
}

/// The hardened oneshot service that runs `command` (and `after_stop` once
/// it stopped, however it ended).
/// The paths a job's units name: what they may write.
fn unit_paths(job: &Job) -> Vec<PathBuf> {
    let mut writable: Vec<PathBuf> = vec![job.spool.clone(), job.state_dir.clone()];
    for r in &job.repositories {
        writable.extend(r.local_path().map(|p| p.to_path_buf()));
    }
    if let Some(m) = &job.metrics_dir {
        writable.push(m.clone());
    }
    writable
}

fn service(job: &Job, what: &str, command: &str, after_stop: Option<&str>, user: bool) -> String {
    let writable = unit_paths(job);
    let under_home = writable.iter().any(|p| p.starts_with("/home") || p.starts_with("/root"));
    let mut s = format!(
        "[Unit]\nDescription=holdfast {what} of job {}{}\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=oneshot\n",
        job.name,
        job.description.as_deref().map(|d| format!(" ({})", text(d))).unwrap_or_default()
    );
    s.push_str(&format!("ExecStart={command}\n"));
    if let Some(after) = after_stop {
        s.push_str(&format!("ExecStopPost={after}\n"));
    }
    // Exit code 3 (committed but incomplete) fails the unit too: an
    // incomplete backup is not "ok" (OnFailure= hears of it).
    s.push_str("Nice=10\nIOSchedulingClass=idle\n");
    if !user {
        s.push_str("ProtectSystem=strict\n");
        for p in &writable {
            s.push_str(&format!("ReadWritePaths={}\n", quote_word(&format!("-{}", p.display()))));
        }
        s.push_str("PrivateTmp=true\nNoNewPrivileges=true\n");
        if !under_home {
            s.push_str("ProtectHome=read-only\n");
        }
        for c in load_credentials(job) {
            s.push_str(&c);
        }
    }
    s
}

/// `LoadCredential=` lines (newline included) for the secret files of the
/// job's repositories.
fn load_credentials(job: &Job) -> Vec<String> {
    job.repositories
        .iter()
        .flat_map(credential_files)
        .map(|(name, file)| format!("LoadCredential={name}:{}\n", file.display().to_string().replace('%', "%%")))
        .collect()
}

fn timer(job: &Job, schedule: &str, what: &str, unit: &str) -> String {
    format!(
        "[Unit]\nDescription=holdfast {what} of job {} on schedule\n\n[Timer]\nOnCalendar={}\nPersistent=true\nRandomizedDelaySec=5m\nUnit={unit}\n\n[Install]\nWantedBy=timers.target\n",
        job.name,
        text(schedule)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_and_escaped_by_systemds_rules() {
        assert_eq!(quote_word("/usr/bin/holdfast"), "/usr/bin/holdfast");
        assert_eq!(quote_word("/srv/my backups"), "\"/srv/my backups\"");
        assert_eq!(quote_word("/srv/100%"), "/srv/100%%");
        assert_eq!(quote_word("/a\"b\\c"), "\"/a\\\"b\\\\c\"");
        assert_eq!(quote_word("$HOME"), "$$HOME");
        assert!(checked("x", "one\nExecStartPre=/bin/evil").is_err());
        assert_eq!(text("50% done"), "50%% done");
    }

    #[test]
    fn template_drop_ins_give_each_scheduled_job_its_own_calendar() {
        let text = "[repositories.local]\npath = \"/srv/repo\"\n\
                    [jobs.shop]\nrepositories = [\"local\"]\nschedule = \"*-*-* 03:15:00\"\n\
                    [jobs.adhoc]\nrepositories = [\"local\"]\n";
        let config = crate::config::Config::from_text(Path::new("/etc/holdfast/jobs.d/shop.toml"), text).unwrap();
        let jobs: Vec<&Job> = config.jobs.values().collect();
        let drop_ins = template_drop_ins(&jobs).unwrap();
        // The job without a schedule keeps the template timer's daily one.
        assert_eq!(drop_ins.len(), 1);
        let (name, body) = &drop_ins[0];
        assert_eq!(name, "holdfast@shop.timer.d/schedule.conf");
        // The template's OnCalendar= is reset, not added to.
        assert!(body.contains("[Timer]\nOnCalendar=\nOnCalendar=*-*-* 03:15:00\n"), "{body}");
    }
}
