//! Hooks: the commands a job runs at named phases to quiesce and wake its
//! application. A hook's strings are templates over the run's variables; it
//! runs in its own process group with a timeout (past which the whole group
//! is killed and the run fails); its output goes to the run's log.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};

use crate::config::{HookConfig, Job, Phase};
use crate::plan::When;
use crate::process::{self, Env, HeldProcess, ProcessSpec};
use crate::record::HookRecord;
use crate::template::{Vars, render, render_command};

/// Render a hook's command line and environment with `vars`.
pub fn render_hook(hook: &HookConfig, vars: &Vars) -> Result<(Vec<String>, Env), String> {
    let argv = hook.run.try_map_scripts(|s, script| render_command(s, vars, script))?.argv();
    let env = hook.env.iter().map(|(k, v)| Ok((k.clone(), render(v, vars)?))).collect::<Result<Vec<_>, String>>()?;
    Ok((argv, env))
}

/// The run's variables as every hook gets them in its environment (the
/// README lists them); a hook's own `env` comes after and may override.
fn run_variables(vars: &Vars, phase: Phase) -> Env {
    let mut env = crate::template::environment(vars);
    env.push(("HOLDFAST_PHASE".into(), phase.as_str().into()));
    env
}

/// A hook's rendered command as a process, and its record so far. With
/// `track_in`, the running hook is recorded there (see `process::end_leftovers`).
fn prepare(
    hook: &HookConfig,
    vars: &Vars,
    track_in: Option<&Path>,
) -> Result<(HookRecord, ProcessSpec), (HookRecord, anyhow::Error)> {
    let mut record = HookRecord {
        phase: hook.phase,
        command: crate::units::hide_credentials(&hook.run.display()),
        exit_status: None,
        duration_secs: 0.0,
        ok: false,
    };
    match render_hook(hook, vars) {
        Ok((argv, own_env)) => {
            record.command = crate::units::hide_credentials(&argv.join(" "));
            let mut env = run_variables(vars, hook.phase);
            env.extend(own_env);
            let spec = ProcessSpec {
                argv,
                cwd: hook.cwd.clone(),
                env,
                timeout: hook.timeout.0,
                user: hook.user.clone(),
                track_in: track_in.map(Path::to_path_buf),
                ..Default::default()
            };
            Ok((record, spec))
        }
        Err(e) => Err((record, anyhow::Error::msg(e))),
    }
}

/// Run one hook. `Err` carries the record too: a failed hook is still recorded.
pub fn run_hook(
    hook: &HookConfig,
    vars: &Vars,
    cancel: &AtomicBool,
    track_in: Option<&Path>,
) -> Result<HookRecord, (HookRecord, anyhow::Error)> {
    let (mut record, spec) = prepare(hook, vars, track_in)?;
    let result = (|| -> Result<()> {
        if let Some(cwd) = &spec.cwd
            && !cwd.is_dir()
        {
            bail!("hook {:?}: its cwd {} does not exist", record.command, cwd.display());
        }
        let out = process::run(&spec, cancel)
            .map_err(|e| anyhow::anyhow!("hook {:?} could not start: {e}", record.command))?;
        record.exit_status = out.code;
        record.duration_secs = out.duration.as_secs_f64();
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .filter(|l| !l.trim().is_empty())
        {
            tracing::info!("hook {}: {}", hook.phase.as_str(), crate::units::hide_credentials(line));
        }
        if !out.success() {
            bail!("{}", out.failure_message(&format!("{} hook {:?}", hook.phase.as_str(), record.command)));
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            record.ok = true;
            Ok(record)
        }
        Err(e) => Err((record, e)),
    }
}

/// A running `hold` hook.
pub struct HeldHook {
    process: HeldProcess,
    record: HookRecord,
    grace: std::time::Duration,
    started: std::time::Instant,
    /// Output lines already logged.
    logged: usize,
}

/// Where a phase's hooks are, for callers that record them (the runner's
/// journal): the hook's index in the job, and its record once it ended.
#[derive(Clone, Copy)]
pub enum HookProgress<'a> {
    Started(usize),
    Finished(usize, &'a HookRecord),
}

/// Run every hook of `phase` in the order the job declares them; the first
/// failure stops the phase. `children` is where the run tracks its child
/// processes (see `process`), when it does.
pub fn run_phase(
    job: &Job,
    phase: Phase,
    vars: &Vars,
    cancel: &AtomicBool,
    children: Option<&Path>,
    mut progress: impl FnMut(HookProgress),
) -> Result<()> {
    for (i, hook) in job.hooks.iter().enumerate().filter(|(_, h)| h.phase == phase) {
        tracing::info!(
            "job {}: {} hook: {}",
            job.name,
            phase.as_str(),
            crate::units::hide_credentials(&hook.run.display())
        );
        progress(HookProgress::Started(i));
        let (record, result) = match run_hook(hook, vars, cancel, children) {
            Ok(r) => (r, Ok(())),
            Err((r, e)) => (r, Err(e)),
        };
        progress(HookProgress::Finished(i, &record));
        result?;
    }
    Ok(())
}

/// The run's lifecycle (`plan::execute`) around `body`: the `before` hooks,
/// then `body` if they all succeeded, then the `after` hooks whatever
/// happened (with the error in `HOLDFAST_ERROR`). The first error is the
/// outcome.
pub fn around<T>(
    job: &Job,
    (before, after): (Phase, Phase),
    vars: &mut Vars,
    cancel: &AtomicBool,
    body: impl FnOnce() -> Result<T>,
) -> Result<T> {
    enum Part {
        Before,
        Body,
        After,
    }
    let mut body = Some(body);
    let mut value = None;
    let parts = [(When::Ok, Part::Before), (When::Ok, Part::Body), (When::Always, Part::After)];
    let failure = crate::plan::execute(None, parts, |_, part, failed| {
        if let Some(e) = failed {
            vars.error = crate::units::error_text(e);
        }
        match part {
            Part::Before => run_phase(job, before, vars, cancel, None, |_| {}),
            Part::Body => {
                let body = body.take().ok_or_else(|| anyhow::anyhow!("the body runs once"))?;
                value = Some(body()?);
                Ok(())
            }
            Part::After => run_phase(job, after, vars, cancel, None, |_| {}),
        }
    });
    match (failure, value) {
        (Some(e), _) => Err(e),
        (None, Some(v)) => Ok(v),
        (None, None) => bail!("the body did not run"),
    }
}

/// Start a `hold` hook and wait for its ready line.
pub fn start_hold(
    hook: &HookConfig,
    vars: &Vars,
    cancel: &AtomicBool,
    track_in: Option<&Path>,
) -> Result<HeldHook, (HookRecord, anyhow::Error)> {
    let (record, spec) = prepare(hook, vars, track_in)?;
    let ready = hook.ready.clone().unwrap_or_default();
    let started = std::time::Instant::now();
    match HeldProcess::start(&spec, &ready, cancel) {
        Ok(process) => {
            for line in &process.output {
                tracing::info!("hook hold: {line}");
            }
            let logged = process.output.len();
            Ok(HeldHook { process, record, grace: hook.grace.0, started, logged })
        }
        Err(e) => {
            let msg = format!("hold hook {:?} {e}", record.command);
            Err((record, anyhow::Error::msg(msg)))
        }
    }
}

impl HeldHook {
    /// Fails if the hook stopped holding (exited) before it was released.
    pub fn check(&mut self) -> Result<()> {
        self.process.check_alive().map_err(|e| anyhow::anyhow!("hold hook {:?} {e}", self.record.command))
    }

    /// Let go: close its stdin, then SIGTERM after the grace period.
    pub fn release(self) -> HookRecord {
        let mut record = self.record;
        let released = self.process.release(self.grace);
        for line in released.output.iter().skip(self.logged) {
            tracing::info!("hook hold: {line}");
        }
        record.exit_status = released.code;
        // Being terminated after the grace period is how a hold that ignores
        // its stdin ends; only an error exit on its own counts as not ok.
        record.ok = !released.ended_by_itself || released.code == Some(0);
        if !released.ended_by_itself {
            tracing::info!("hook hold: did not exit within {:?} of its stdin closing; terminated", self.grace);
        }
        record.duration_secs = self.started.elapsed().as_secs_f64();
        record
    }
}
