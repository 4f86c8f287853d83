//! Hooks: the commands a job runs at named phases to quiesce and wake its
//! application. A hook's strings are templates over the run's variables; it
//! runs in its own process group with a timeout (past which the whole group
//! is killed and the run fails); its output goes to the run's log.

use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::{HookConfig, Phase};
use crate::process::{self, Env, ProcessSpec};
use crate::template::{Vars, render};

/// What a hook did; recorded in the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookRecord {
    pub phase: Phase,
    pub command: String,
    /// Exit status; `None` when it was killed or could not start.
    pub exit_status: Option<i32>,
    pub duration_secs: f64,
    pub ok: bool,
}

/// Render a hook's command line and environment with `vars`.
pub fn render_hook(hook: &HookConfig, vars: &Vars) -> Result<(Vec<String>, Env), String> {
    let argv = hook.run.try_map(|s| render(s, vars))?.argv();
    let env = hook.env.iter().map(|(k, v)| Ok((k.clone(), render(v, vars)?))).collect::<Result<Vec<_>, String>>()?;
    Ok((argv, env))
}

/// Run one hook. `Err` carries the record too: a failed hook is still recorded.
pub fn run_hook(
    hook: &HookConfig,
    vars: &Vars,
    cancel: &AtomicBool,
) -> Result<HookRecord, (HookRecord, anyhow::Error)> {
    let mut record =
        HookRecord { phase: hook.phase, command: hook.run.display(), exit_status: None, duration_secs: 0.0, ok: false };
    let result = (|| -> Result<()> {
        let (argv, env) = render_hook(hook, vars).map_err(anyhow::Error::msg)?;
        record.command = argv.join(" ");
        if let Some(cwd) = &hook.cwd
            && !cwd.is_dir()
        {
            bail!("hook {:?}: its cwd {} does not exist", record.command, cwd.display());
        }
        let spec = ProcessSpec { argv, cwd: hook.cwd.clone(), env, timeout: hook.timeout(), stdout_file: None };
        let out = process::run(&spec, cancel)
            .map_err(|e| anyhow::anyhow!("hook {:?} could not start: {e}", record.command))?;
        record.exit_status = out.code;
        record.duration_secs = out.duration.as_secs_f64();
        for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
            tracing::info!("hook {}: {line}", phase_name(hook.phase));
        }
        if !out.success() {
            bail!("{}", out.failure_message(&format!("{} hook {:?}", phase_name(hook.phase), record.command)));
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

pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Before => "before",
        Phase::AfterDumps => "after_dumps",
        Phase::AfterFiles => "after_files",
        Phase::OnSuccess => "on_success",
        Phase::OnFailure => "on_failure",
        Phase::Finally => "finally",
    }
}
