//! `holdfast prune`: forget snapshots by retention rules (a job's, or the
//! `--keep-*` flags) and collect garbage.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;

use super::{Context, FilterArgs, print_json, short};
use crate::engine::gc::GcOptions;
use crate::exit::{Exit, Usage};
use crate::prune::{PruneReport, prune_ad_hoc, prune_job};
use crate::retention::Policy;
use crate::units::{DurationSpec, human, local_time, parse_duration};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub jobs: Vec<String>,
    /// Only these snapshots are subject to the policy; the others stay.
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long)]
    pub keep_last: Option<usize>,
    #[arg(long)]
    pub keep_hourly: Option<usize>,
    #[arg(long)]
    pub keep_daily: Option<usize>,
    #[arg(long)]
    pub keep_weekly: Option<usize>,
    #[arg(long)]
    pub keep_monthly: Option<usize>,
    #[arg(long)]
    pub keep_yearly: Option<usize>,
    /// Keep every snapshot younger than this before the newest (e.g. 2d).
    #[arg(long, value_parser = parse_duration)]
    pub keep_within: Option<Duration>,
    /// Delete packs only after they were marked unreferenced this long ago.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,
    /// Repack partly used packs until unused space is at most this share of
    /// the repository: a percentage (e.g. 5%, 0% to repack every partly
    /// used pack) or `unlimited` (never repack). Small packs (under a
    /// quarter of the pack size; each backup leaves one or two) are merged
    /// into full-size ones once there are 32, unless `unlimited`.
    #[arg(long, default_value = "5%", value_parser = parse_max_unused)]
    pub max_unused: f64,
    /// Say what would go and why the rest stays; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

/// `5%`, `5` or `unlimited` as a share of the repository (0.05, 1.0).
fn parse_max_unused(text: &str) -> std::result::Result<f64, String> {
    if text == "unlimited" {
        return Ok(1.0);
    }
    let number = text.strip_suffix('%').unwrap_or(text).trim();
    match number.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(format!("expected a percentage from 0% to 100% or `unlimited`, not `{text}`")),
    }
}

impl Args {
    fn gc(&self) -> GcOptions {
        GcOptions { grace: self.grace, max_unused: self.max_unused, dry_run: self.dry_run }
    }

    /// The retention policy the `--keep-*` flags give.
    fn policy(&self) -> Policy {
        Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within.map(DurationSpec),
        }
    }
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    // With a config (and no --repo outside it), jobs prune by their own
    // retention; --keep-* flags (or a --repo outside the config) say what
    // to keep in --repo instead, of the named job's snapshots if one is.
    let by_jobs = match ctx.config_if_given() {
        _ if !args.policy().is_empty() => None,
        Some(config) if ctx.repo_name().is_none_or(|n| config.repositories.contains_key(&n)) => {
            (args.jobs.is_empty() || config.jobs.contains_key(&args.jobs[0])).then_some(config)
        }
        _ => None,
    };
    let display = ctx.show_progress("prune");
    let progress = display.as_ref().map(|d| d.progress());
    let progress = progress.as_deref();
    let mut filter = args.filter.filter();
    if by_jobs.is_none() && !args.jobs.is_empty() {
        if args.jobs.len() > 1 || filter.job.as_ref().is_some_and(|j| *j != args.jobs[0]) {
            return Err(Usage("with --keep-* flags, name at most one job".into()).into());
        }
        filter.job = Some(args.jobs[0].clone());
    }
    let reports = match by_jobs {
        Some(config) => {
            let mut all = Vec::new();
            let mut names = args.jobs.clone();
            names.extend(filter.job.clone());
            for job in ctx.jobs(config, &names)? {
                all.extend(prune_job(job, &filter, &args.gc(), progress)?);
            }
            all
        }
        None => {
            let policy = args.policy();
            if policy.is_empty() {
                return Err(Usage(
                    "say what to keep: --keep-last, --keep-daily, ... (without one, prune would keep only the newest)"
                        .into(),
                )
                .into());
            }
            vec![prune_ad_hoc(&ctx.open()?, &policy, &filter, &args.gc(), progress)?]
        }
    };
    drop(display);
    if args.json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            print_report(r)?;
        }
    }
    Ok(Exit::Success)
}

fn print_report(r: &PruneReport) -> Result<()> {
    let mut out = super::stdout_in_blocks();
    writeln!(
        out,
        "repository {}{}{}:",
        r.repository,
        r.job.as_deref().map(|j| format!(", job {j}")).unwrap_or_default(),
        if r.dry_run { " (dry run: nothing changed)" } else { "" }
    )?;
    for d in &r.decisions {
        let when = local_time(&d.time);
        if d.keep {
            writeln!(out, "  keep   {} {when}  ({})", short(&d.id), d.reasons.join(", "))?;
        } else {
            writeln!(out, "  forget {} {when}", short(&d.id))?;
        }
    }
    let g = &r.gc;
    writeln!(
        out,
        "  {} snapshot(s) {}; packs: {} newly marked unused, {} unmarked (in use again), {} waiting out the grace period, {} deleted; {} leftovers deleted; {} freed",
        r.forgotten,
        if r.dry_run { "would be forgotten" } else { "forgotten" },
        g.packs_marked,
        g.packs_unmarked,
        g.packs_waiting,
        g.packs_deleted,
        g.leftovers_deleted,
        human(g.bytes_deleted)
    )?;
    if g.packs_repacked > 0 {
        writeln!(
            out,
            "  repacked {} partly used or small pack(s) ({} small ones merged): {} of used data {} to new packs; the old packs are marked",
            g.packs_repacked,
            g.packs_merged,
            human(g.bytes_repacked),
            if r.dry_run { "would be written" } else { "written" },
        )?;
    }
    writeln!(out, "  {} unused left (a later prune deletes what is marked)", human(g.bytes_unused_left))?;
    out.flush()?;
    Ok(())
}
