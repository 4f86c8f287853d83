//! A run's plan: the ordered steps a job's run takes, as data.
//!
//! [`plan`] is a pure function of the validated job (no I/O); the runner
//! executes the steps and `run --dry-run` prints them. Each step says when it
//! runs: on the success path, only after a failure, or always — which is how
//! `on_failure` and `finally` hooks and the spool cleanup survive any failure.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{DatabaseKind, Job, Phase};
use crate::engine::repository::Repository;

/// The job's repositories that get a copy of another's snapshot instead of
/// reading the dumps and files again (they share its keys): target → source.
pub type Copies = BTreeMap<String, String>;

/// Which of the job's opened repositories (in the job's order) share the
/// first one's keys: each gets a copy from it (only new blobs move).
pub fn copies(repositories: &[(String, Repository)]) -> Copies {
    let Some(((first, first_repo), rest)) = repositories.split_first() else { return Copies::new() };
    rest.iter().filter(|(_, r)| r.shares_keys_with(first_repo)).map(|(n, _)| (n.clone(), first.clone())).collect()
}

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// While nothing has failed.
    Ok,
    /// Only once something failed.
    Failed,
    /// Whatever happened before.
    Always,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Create the run's private spool directory.
    PrepareSpool,
    /// Run the job's hooks of one phase, in the order they are declared.
    Hooks { phase: Phase, count: usize },
    /// Start the `hold` hooks (each waits for its ready line) and take the
    /// databases' native locks; they are held until `Release`.
    Hold { hooks: usize, locks: usize },
    /// Let go of everything `Hold` holds.
    Release,
    /// Dump one database entry into the spool.
    Dump { index: usize, entry: String, kind: DatabaseKind, name: String },
    /// Read the dumps and the file sets into the repository (not yet a snapshot).
    Capture { repository: String, dumps: bool, paths: Vec<PathBuf>, optional: Vec<PathBuf> },
    /// Write the snapshot: from here on the run's backup exists.
    Commit { repository: String },
    /// Copy the snapshot just committed to `from` (and any the target
    /// missed before) into a repository sharing its keys.
    Copy { repository: String, from: String },
    /// Remove the run's spool directory (dumps are plaintext secrets).
    CleanSpool,
}

impl Step {
    /// What the step is doing, for a progress display.
    pub fn doing(&self) -> String {
        match self {
            Step::PrepareSpool => "preparing the spool".into(),
            Step::Hooks { phase, .. } => format!("hooks {}", phase.as_str()),
            Step::Hold { .. } => "holding the application".into(),
            Step::Release => "releasing the application".into(),
            Step::Dump { entry, .. } => format!("dump of {entry}"),
            Step::Capture { repository, .. } => format!("files into {repository}"),
            Step::Commit { repository } => format!("commit to {repository}"),
            Step::Copy { repository, .. } => format!("copy to {repository}"),
            Step::CleanSpool => "cleaning the spool".into(),
        }
    }
}

/// Runs steps by their `When` — the one lifecycle of runs and restores:
/// `Ok` steps while nothing has failed, `Failed` steps once something has,
/// `Always` steps in any case (so `finally` hooks and cleanups survive any
/// failure). `run` gets each step and the first failure so far (for
/// `HOLDFAST_ERROR`); that first failure is the outcome, later ones are
/// logged. `failed` is a failure from before the first step.
pub fn execute<S>(
    failed: Option<anyhow::Error>,
    steps: impl IntoIterator<Item = (When, S)>,
    mut run: impl FnMut(When, S, Option<&anyhow::Error>) -> anyhow::Result<()>,
) -> Option<anyhow::Error> {
    let mut failure = failed;
    for (when, step) in steps {
        let due = match when {
            When::Ok => failure.is_none(),
            When::Failed => failure.is_some(),
            When::Always => true,
        };
        if !due {
            continue;
        }
        if let Err(e) = run(when, step, failure.as_ref()) {
            match &failure {
                None => failure = Some(e),
                Some(_) => tracing::error!("(while handling an earlier failure) {e:#}"),
            }
        }
    }
    failure
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedStep {
    pub when: When,
    #[serde(flatten)]
    pub step: Step,
}

/// The steps of one attempt of `job`, in order; `copies` are the
/// repositories that get a copy rather than a capture of their own.
pub fn plan(job: &Job, copies: &Copies) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    let mut add = |when, step| steps.push(PlannedStep { when, step });
    let hooks = |phase: Phase| job.hooks.iter().filter(|h| h.phase == phase).count();
    add(When::Ok, Step::PrepareSpool);
    let hook_step = |add: &mut dyn FnMut(When, Step), when, phase| {
        let count = hooks(phase);
        if count > 0 {
            add(when, Step::Hooks { phase, count });
        }
    };
    hook_step(&mut add, When::Ok, Phase::Before);
    let locks = job.databases.iter().filter(|d| d.lock.is_some()).count();
    let holds = hooks(Phase::Hold) + locks > 0;
    if holds {
        add(When::Ok, Step::Hold { hooks: hooks(Phase::Hold), locks });
    }
    for (index, db) in job.databases.iter().enumerate() {
        let name = match (&db.name, &db.path) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => p.display().to_string(),
            _ => String::new(),
        };
        add(When::Ok, Step::Dump { index, entry: db.entry_name(), kind: db.kind, name });
    }
    hook_step(&mut add, When::Ok, Phase::AfterDumps);
    // Every repository gets the same dumps and files; each commits only
    // after all were captured and the `after_files` hooks ran.
    for repository in job.repositories.iter().filter(|r| !copies.contains_key(&r.name)) {
        add(
            When::Ok,
            Step::Capture {
                repository: repository.name.clone(),
                dumps: !job.databases.is_empty(),
                paths: job.files.paths.clone(),
                optional: job.files.optional.clone(),
            },
        );
    }
    if holds {
        add(When::Always, Step::Release);
    }
    hook_step(&mut add, When::Ok, Phase::AfterFiles);
    for repository in &job.repositories {
        let step = match copies.get(&repository.name) {
            Some(from) => Step::Copy { repository: repository.name.clone(), from: from.clone() },
            None => Step::Commit { repository: repository.name.clone() },
        };
        add(When::Ok, step);
    }
    hook_step(&mut add, When::Ok, Phase::OnSuccess);
    hook_step(&mut add, When::Failed, Phase::OnFailure);
    hook_step(&mut add, When::Always, Phase::Finally);
    add(When::Always, Step::CleanSpool);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn job(tail: &str) -> crate::config::Job {
        let text = format!(
            "[repositories.local]\npath = \"/srv/repo\"\n[repositories.offsite]\npath = \"/mnt/offsite\"\n\
             [jobs.shop]\nrepositories = [\"local\", \"offsite\"]\n{tail}"
        );
        let config = Config::from_text(std::path::Path::new("/etc/holdfast/shop.toml"), &text).unwrap();
        config.jobs["shop"].clone()
    }

    fn plan_of(job: &crate::config::Job) -> Vec<PlannedStep> {
        plan(job, &Copies::new())
    }

    fn names(steps: &[PlannedStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match &s.step {
                Step::Hooks { phase, .. } => format!("hooks {}", phase.as_str()),
                Step::Dump { entry, .. } => format!("dump {entry}"),
                Step::Capture { repository, .. } => format!("capture {repository}"),
                Step::Commit { repository } => format!("commit {repository}"),
                Step::Copy { repository, from } => format!("copy {from} to {repository}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_files_only_job_captures_then_commits_every_repository_and_always_cleans_the_spool() {
        let steps = plan_of(&job("[jobs.shop.files]\npaths = [\"/srv/shop\"]\n"));
        assert_eq!(
            names(&steps),
            ["PrepareSpool", "capture local", "capture offsite", "commit local", "commit offsite", "CleanSpool"]
        );
        assert_eq!(steps.last().map(|s| s.when), Some(When::Always));
        assert!(steps.iter().all(|s| s.when == When::Always || s.step != Step::CleanSpool));
    }

    #[test]
    fn dumps_and_files_are_captured_while_held_and_released_whatever_happens() {
        let steps = plan_of(&job("[[jobs.shop.hooks]]\nphase = \"before\"\nrun = [\"true\"]\n\
             [[jobs.shop.hooks]]\nphase = \"hold\"\nrun = [\"hold\"]\nready = \"held\"\n\
             [[jobs.shop.hooks]]\nphase = \"on_failure\"\nrun = [\"alert\"]\n\
             [[jobs.shop.hooks]]\nphase = \"finally\"\nrun = [\"wake\"]\n\
             [[jobs.shop.databases]]\nkind = \"sqlite\"\npath = \"/srv/shop.db\"\n\
             [jobs.shop.files]\npaths = [\"/srv/shop\"]\n"));
        let n = names(&steps);
        let at =
            |name: &str| n.iter().position(|s| s.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {n:?}"));
        assert!(at("hooks before") < at("Hold") && at("Hold") < at("dump shop"));
        assert!(at("dump") < at("capture local") && at("capture offsite") < at("Release"));
        assert!(at("Release") < at("commit local"), "snapshots are committed after the application is released");
        let when = |name: &str| steps[at(name)].when;
        assert_eq!(when("Release"), When::Always);
        assert_eq!(when("hooks on_failure"), When::Failed);
        assert_eq!(when("hooks finally"), When::Always);
        assert!(at("hooks finally") < at("CleanSpool"));
        match &steps[at("capture local")].step {
            Step::Capture { dumps, paths, .. } => assert!(*dumps && paths == &[PathBuf::from("/srv/shop")]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn phases_without_hooks_and_holds_without_hooks_or_locks_are_left_out() {
        let n = names(&plan_of(&job("[jobs.shop.files]\npaths = [\"/srv\"]\n")));
        assert!(
            !n.iter().any(|s| s.starts_with("hooks") || s == "Hold { hooks: 0, locks: 0 }" || s == "Release"),
            "{n:?}"
        );
    }

    #[test]
    fn a_repository_sharing_the_first_ones_keys_gets_a_copy_and_no_capture_of_its_own() {
        let copies = Copies::from([("offsite".to_string(), "local".to_string())]);
        let steps = plan(&job("[jobs.shop.files]\npaths = [\"/srv/shop\"]\n"), &copies);
        assert_eq!(
            names(&steps),
            ["PrepareSpool", "capture local", "commit local", "copy local to offsite", "CleanSpool"]
        );
    }

    #[test]
    fn execute_runs_ok_steps_until_a_failure_then_the_failure_and_always_steps_with_it() {
        let mut ran: Vec<(&str, Option<String>)> = Vec::new();
        let steps = [
            (When::Ok, "a"),
            (When::Ok, "b"),
            (When::Ok, "c"),
            (When::Failed, "on_failure"),
            (When::Always, "finally"),
            (When::Always, "cleanup"),
        ];
        let failure = execute(None, steps, |_, step, failed| {
            ran.push((step, failed.map(|e| e.to_string())));
            match step {
                "b" => anyhow::bail!("b broke"),
                "finally" => anyhow::bail!("finally broke too"),
                _ => Ok(()),
            }
        });
        assert_eq!(failure.map(|e| e.to_string()).as_deref(), Some("b broke"), "the first failure is the outcome");
        let broke = Some("b broke".to_string());
        assert_eq!(
            ran,
            [("a", None), ("b", None), ("on_failure", broke.clone()), ("finally", broke.clone()), ("cleanup", broke)]
        );
        let mut ran = Vec::new();
        let ok = execute(None, steps, |_, step, _| {
            ran.push(step);
            Ok(())
        });
        assert!(ok.is_none());
        assert_eq!(ran, ["a", "b", "c", "finally", "cleanup"]);
    }
}
