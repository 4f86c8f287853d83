//! `holdfast validate`: check jobs without changing anything (also
//! `run --dry-run`, which adds the plan).

use std::io::Write;

use anyhow::Result;

use super::{Context, print_json};
use crate::config::Job;
use crate::exit::Exit;
use crate::plan::{Step, When};

pub type Args = super::JobsArgs;

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let config = ctx.config("validate")?;
    show(&ctx.jobs(config, &args.jobs)?, false, args.json)
}

/// Validate `jobs`; with `plan`, print what a run would do.
pub fn show(jobs: &[&Job], plan: bool, json: bool) -> Result<Exit> {
    let v = crate::validate::validate(jobs, plan);
    if json {
        print_json(&v)?;
    } else {
        for p in &v.plans {
            outln!("plan of job {}:", p.job);
            for (i, line) in p.steps.iter().enumerate() {
                let when = match line.step.when {
                    When::Ok => "",
                    When::Failed => " [only after a failure]",
                    When::Always => " [always]",
                };
                outln!("  {:>2}. {}{when}", i + 1, step_name(&line.step.step));
                for d in &line.details {
                    outln!("        {d}");
                }
            }
        }
        for f in &v.findings {
            outln!("{} {} [{}]: {}", if f.ok { "ok     " } else { "PROBLEM" }, f.job, f.check, f.message);
        }
        let problems = v.findings.iter().filter(|f| !f.ok).count();
        outln!(
            "{}",
            if problems == 0 { "valid: no problems found".to_string() } else { format!("{problems} problem(s) found") }
        );
    }
    Ok(if v.ok() { Exit::Success } else { Exit::Failed })
}

fn step_name(step: &Step) -> String {
    match step {
        Step::PrepareSpool => "prepare the spool".into(),
        Step::Hooks { phase, count } => format!("{} hooks ({count})", phase.as_str()),
        Step::Hold { hooks, locks } => format!("start holding ({hooks} hold hooks, {locks} locks)"),
        Step::Release => "release what is held".into(),
        Step::Dump { entry, kind, name, .. } => format!("dump {} {name} (entry {entry})", kind.as_str()),
        Step::Capture { .. } => "read dumps and files into the repository".into(),
        Step::Commit { .. } => "commit the snapshot".into(),
        Step::Copy { .. } => "copy the snapshot".into(),
        Step::CleanSpool => "clean the spool".into(),
    }
}
