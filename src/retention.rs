//! Retention: which snapshots a keep policy keeps, and why.
//!
//! The semantics of borg's and restic's keep rules: snapshots are taken
//! newest first; `last N` keeps the N newest; `hourly/daily/weekly/monthly/
//! yearly N` keep the newest snapshot of each of the N most recent calendar
//! periods (local time) that have one; `within D` keeps everything younger
//! than D before the newest snapshot. A snapshot kept by any rule stays, and
//! the newest is always kept. Pure: no I/O.

use serde::{Deserialize, Serialize};

use crate::units::DurationSpec;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub last: Option<usize>,
    pub hourly: Option<usize>,
    pub daily: Option<usize>,
    pub weekly: Option<usize>,
    pub monthly: Option<usize>,
    pub yearly: Option<usize>,
    pub within: Option<DurationSpec>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// The decision for one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Decision<T> {
    pub item: T,
    pub time: jiff::Timestamp,
    pub keep: bool,
    /// The rules that keep it (empty when it goes).
    pub reasons: Vec<String>,
}

/// Apply `policy` to `snapshots` (any order) in time zone `tz`; returns the
/// decisions newest first.
pub fn apply<T: Clone>(
    snapshots: &[(T, jiff::Timestamp)],
    policy: &Policy,
    tz: &jiff::tz::TimeZone,
) -> Vec<Decision<T>> {
    let mut sorted: Vec<(T, jiff::Timestamp)> = snapshots.to_vec();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut out: Vec<Decision<T>> = sorted
        .iter()
        .map(|(item, time)| Decision { item: item.clone(), time: *time, keep: false, reasons: Vec::new() })
        .collect();
    let Some(newest) = sorted.first().map(|s| s.1) else { return out };
    out[0].keep = true;
    out[0].reasons.push("newest".into());
    if let Some(n) = policy.last {
        for d in out.iter_mut().take(n) {
            d.keep = true;
            d.reasons.push("last".into());
        }
    }
    type Bucket = fn(&jiff::Zoned) -> String;
    let rules: [(&str, Option<usize>, Bucket); 5] = [
        ("hourly", policy.hourly, |z| z.strftime("%Y-%m-%d %H").to_string()),
        ("daily", policy.daily, |z| z.strftime("%Y-%m-%d").to_string()),
        ("weekly", policy.weekly, |z| {
            let w = z.date().iso_week_date();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", policy.monthly, |z| z.strftime("%Y-%m").to_string()),
        ("yearly", policy.yearly, |z| z.strftime("%Y").to_string()),
    ];
    for (name, count, bucket) in rules {
        let Some(n) = count else { continue };
        let mut last_bucket: Option<String> = None;
        let mut kept = 0;
        for d in out.iter_mut() {
            if kept >= n {
                break;
            }
            let b = bucket(&d.time.to_zoned(tz.clone()));
            if last_bucket.as_ref() != Some(&b) {
                d.keep = true;
                d.reasons.push(format!("{name} {b}"));
                kept += 1;
                last_bucket = Some(b);
            }
        }
    }
    if let Some(within) = policy.within {
        let span = jiff::SignedDuration::try_from(within.0).unwrap_or(jiff::SignedDuration::MAX);
        for d in out.iter_mut() {
            if newest.duration_since(d.time) <= span {
                d.keep = true;
                d.reasons.push("within".into());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn kept(snaps: &[&str], policy: &Policy) -> Vec<String> {
        let v: Vec<(String, jiff::Timestamp)> = snaps.iter().map(|s| (s.to_string(), at(s))).collect();
        apply(&v, policy, &jiff::tz::TimeZone::UTC).into_iter().filter(|d| d.keep).map(|d| d.item).collect()
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let snaps = ["2026-11-20T01:00:00Z", "2026-11-20T23:00:00Z", "2026-11-21T05:00:00Z", "2026-11-22T05:00:00Z"];
        let p = Policy { daily: Some(2), ..Default::default() };
        assert_eq!(kept(&snaps, &p), ["2026-11-22T05:00:00Z", "2026-11-21T05:00:00Z"]);
        let p = Policy { daily: Some(5), ..Default::default() };
        assert_eq!(kept(&snaps, &p), ["2026-11-22T05:00:00Z", "2026-11-21T05:00:00Z", "2026-11-20T23:00:00Z"]);
    }

    #[test]
    fn the_newest_is_always_kept_and_last_counts_from_it() {
        let snaps = ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"];
        assert_eq!(kept(&snaps, &Policy::default()), ["2026-01-03T00:00:00Z"]);
        let p = Policy { last: Some(2), ..Default::default() };
        assert_eq!(kept(&snaps, &p), ["2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z"]);
    }

    #[test]
    fn within_is_measured_from_the_newest_snapshot() {
        let snaps = ["2026-01-01T00:00:00Z", "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z"];
        let p = Policy { within: Some(DurationSpec(std::time::Duration::from_secs(2 * 86400))), ..Default::default() };
        assert_eq!(kept(&snaps, &p), ["2026-01-06T00:00:00Z", "2026-01-05T00:00:00Z"]);
    }

    #[test]
    fn periods_without_snapshots_do_not_use_up_the_count() {
        // Weekly snapshots with a four-week gap: weekly 3 keeps three weeks that have one.
        let snaps = ["2026-01-05T12:00:00Z", "2026-01-12T12:00:00Z", "2026-02-16T12:00:00Z", "2026-02-23T12:00:00Z"];
        let p = Policy { weekly: Some(3), ..Default::default() };
        assert_eq!(kept(&snaps, &p), ["2026-02-23T12:00:00Z", "2026-02-16T12:00:00Z", "2026-01-12T12:00:00Z"]);
    }

    #[test]
    fn rules_combine_and_each_keeps_the_newest_of_its_periods() {
        let snaps = [
            "2024-06-01T00:00:00Z",
            "2025-03-01T00:00:00Z",
            "2025-12-31T23:00:00Z",
            "2026-01-15T00:00:00Z",
            "2026-02-01T00:00:00Z",
            "2026-02-01T05:00:00Z",
            "2026-02-01T05:30:00Z",
        ];
        let p = Policy { hourly: Some(2), monthly: Some(2), yearly: Some(3), ..Default::default() };
        let d: Vec<_> = {
            let v: Vec<(String, jiff::Timestamp)> = snaps.iter().map(|s| (s.to_string(), at(s))).collect();
            apply(&v, &p, &jiff::tz::TimeZone::UTC)
        };
        let keep: Vec<&str> = d.iter().filter(|x| x.keep).map(|x| x.item.as_str()).collect();
        assert_eq!(
            keep,
            [
                "2026-02-01T05:30:00Z",
                "2026-02-01T00:00:00Z",
                "2026-01-15T00:00:00Z",
                "2025-12-31T23:00:00Z",
                "2024-06-01T00:00:00Z"
            ]
        );
        let why = |t: &str| d.iter().find(|x| x.item == t).map(|x| x.reasons.join(", ")).unwrap_or_default();
        assert_eq!(why("2026-02-01T05:30:00Z"), "newest, hourly 2026-02-01 05, monthly 2026-02, yearly 2026");
        assert_eq!(why("2025-12-31T23:00:00Z"), "yearly 2025");
        assert!(why("2026-02-01T05:00:00Z").is_empty(), "same hour as a newer one");
    }

    #[test]
    fn buckets_follow_the_local_calendar_across_a_dst_change() {
        // Europe/Berlin leaves DST on 2026-10-25 at 03:00 local (01:00 UTC).
        let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let snaps: Vec<(u32, jiff::Timestamp)> =
            vec![(1, at("2026-10-24T22:30:00Z")), (2, at("2026-10-25T22:30:00Z")), (3, at("2026-10-25T23:30:00Z"))];
        // Local times: #1 00:30 on the 25th (CEST), #2 23:30 on the 25th (CET),
        // #3 00:30 on the 26th: #1 and #2 share a local day although 24 h apart.
        let p = Policy { daily: Some(3), ..Default::default() };
        let keep: Vec<u32> = apply(&snaps, &p, &tz).into_iter().filter(|d| d.keep).map(|d| d.item).collect();
        assert_eq!(keep, [3, 2]);
        let p = Policy { weekly: Some(1), ..Default::default() };
        let keep: Vec<u32> = apply(&snaps, &p, &tz).into_iter().filter(|d| d.keep).map(|d| d.item).collect();
        assert_eq!(keep, [3]);
    }
}
