//! Prune: apply a keep policy to snapshots, forget the others, collect
//! garbage (see `engine::gc` for why this never blocks or breaks a backup).
//!
//! For a job, the policy applies only to that job's snapshots in each of its
//! repositories; ad hoc (`--repo`), to snapshots not made by a job, grouped
//! by host and paths.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::config::Job;
use crate::engine::crypto::Id;
use crate::engine::gc::{GcOptions, GcReport, collect_garbage, forget};
use crate::engine::progress::Progress;
use crate::engine::repository::Repository;
use crate::engine::snapshot::Snapshot;
use crate::filter::SnapshotFilter;
use crate::retention::{Policy, apply};
use crate::secrets::open_repository;

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDecision {
    pub id: String,
    pub time: jiff::Timestamp,
    pub keep: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub repository: String,
    pub job: Option<String>,
    pub dry_run: bool,
    pub decisions: Vec<SnapshotDecision>,
    pub forgotten: usize,
    pub gc: GcReport,
}

/// Decide which `snapshots` `policy` keeps.
fn decide(snapshots: &[&(Id, Snapshot)], policy: &Policy) -> Vec<SnapshotDecision> {
    let items: Vec<(Id, jiff::Timestamp)> = snapshots.iter().map(|(id, s)| (*id, s.time)).collect();
    apply(&items, policy, &jiff::tz::TimeZone::system())
        .into_iter()
        .map(|d| SnapshotDecision { id: d.item.to_hex(), time: d.time, keep: d.keep, reasons: d.reasons })
        .collect()
}

/// Forget what `decisions` drop and collect garbage.
fn finish(
    repo: &Repository,
    name: &str,
    job: Option<&str>,
    decisions: Vec<SnapshotDecision>,
    gc: &GcOptions,
    progress: Option<&Progress>,
) -> Result<PruneReport> {
    let dry_run = gc.dry_run;
    let doomed: Vec<Id> = decisions.iter().filter(|d| !d.keep).filter_map(|d| Id::from_hex(&d.id)).collect();
    if !dry_run {
        forget(repo, &doomed)?;
    }
    let gc = collect_garbage(repo, gc, progress)?;
    Ok(PruneReport {
        repository: name.to_string(),
        job: job.map(str::to_string),
        dry_run,
        decisions,
        forgotten: doomed.len(),
        gc,
    })
}

/// Prune `job`'s snapshots in each of its repositories.
/// Only the snapshots that pass `filter` are subject to the policy (its
/// `job` is `job`'s own name here).
pub fn prune_job(
    job: &Job,
    filter: &SnapshotFilter,
    gc: &GcOptions,
    progress: Option<&Progress>,
) -> Result<Vec<PruneReport>> {
    let filter = SnapshotFilter { job: Some(job.name.clone()), ..filter.clone() };
    let mut out = Vec::new();
    for repository in &job.repositories {
        let repo = open_repository(repository)?;
        let (snaps, _) = repo.snapshots()?;
        let mine: Vec<&(Id, Snapshot)> = snaps.iter().filter(|(_, s)| filter.matches(s)).collect();
        let decisions = if job.retention.is_empty() {
            // No policy: keep everything, only collect garbage.
            decide(&mine, &Policy { last: Some(usize::MAX), ..Default::default() })
        } else {
            decide(&mine, &job.retention)
        };
        out.push(finish(&repo, &repository.name, Some(&job.name), decisions, gc, progress)?);
    }
    Ok(out)
}

/// Prune the snapshots of `repo` that no job made (with `filter.job`, that
/// job's), per host and paths; only those that pass `filter`.
pub fn prune_ad_hoc(
    repo: &Repository,
    policy: &Policy,
    filter: &SnapshotFilter,
    gc: &GcOptions,
    progress: Option<&Progress>,
) -> Result<PruneReport> {
    let (snaps, _) = repo.snapshots()?;
    // Snapshots of the same host and paths form one timeline.
    type Timeline<'a> = Vec<&'a (Id, Snapshot)>;
    let mut groups: BTreeMap<(String, Vec<String>), Timeline> = BTreeMap::new();
    let by_job = |s: &Snapshot| filter.job.is_some() || crate::record::RunRecord::of(s).is_none();
    for s in snaps.iter().filter(|(_, s)| by_job(s) && filter.matches(s)) {
        groups.entry((s.1.host.clone(), s.1.paths.clone())).or_default().push(s);
    }
    let decisions: Vec<SnapshotDecision> = groups.values().flat_map(|g| decide(g, policy)).collect();
    finish(repo, &repo.location(), None, decisions, gc, progress)
}
