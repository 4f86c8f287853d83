//! Which snapshots a command looks at: the `--job`, `--host`, `--tag` and
//! `--path` filters that `snapshots`, `find`, `stats`, `prune`, `restore`
//! and `copy` share, so each flag means the same everywhere.

use std::path::{Path, PathBuf};

use crate::engine::snapshot::Snapshot;
use crate::record::RunRecord;

/// A snapshot passes when it passes every filter that is set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotFilter {
    /// Made by this job (its run record names it).
    pub job: Option<String>,
    /// Made on one of these hosts.
    pub hosts: Vec<String>,
    /// Carries every one of these tags.
    pub tags: Vec<String>,
    /// Holds each of these paths: one of its backed-up paths is the path,
    /// lies above it, or below it.
    pub paths: Vec<PathBuf>,
}

impl SnapshotFilter {
    pub fn is_empty(&self) -> bool {
        *self == SnapshotFilter::default()
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        self.job.as_ref().is_none_or(|j| RunRecord::of(s).is_some_and(|r| &r.job == j))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h == &s.host))
            && self.tags.iter().all(|t| s.has_tag(t))
            && self.paths.iter().all(|p| holds_path(s, p))
    }
}

/// Whether `path` overlaps one of the snapshot's backed-up paths.
fn holds_path(s: &Snapshot, path: &Path) -> bool {
    let path = Path::new("/").join(crate::engine::snapshot::path_text(path));
    s.paths.iter().map(|p| Path::new("/").join(p)).any(|p| path.starts_with(&p) || p.starts_with(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(host: &str, tags: &[&str], paths: &[&str]) -> Snapshot {
        Snapshot {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            extra: Some(
                serde_json::json!({"job": "shop", "run_id": "r", "databases": [], "file_sets": [], "hooks": []}),
            ),
            ..Snapshot::blank(host)
        }
    }

    #[test]
    fn every_set_filter_must_pass() {
        let s = snap("web1", &["daily", "app"], &["/srv/app", "/.holdfast/databases"]);
        assert!(SnapshotFilter::default().matches(&s));
        let f = |job: Option<&str>, hosts: &[&str], tags: &[&str], paths: &[&str]| SnapshotFilter {
            job: job.map(String::from),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            paths: paths.iter().map(PathBuf::from).collect(),
        };
        assert!(f(Some("shop"), &["web2", "web1"], &["daily"], &["/srv/app/uploads"]).matches(&s));
        assert!(f(None, &[], &[], &["/srv"]).matches(&s), "a path above a backed-up one overlaps it");
        assert!(!f(Some("blog"), &[], &[], &[]).matches(&s));
        assert!(!f(None, &["web2"], &[], &[]).matches(&s));
        assert!(!f(None, &[], &["daily", "weekly"], &[]).matches(&s), "every tag must be there");
        assert!(!f(None, &[], &[], &["/srv/application"]).matches(&s), "paths compare by component");
        assert!(!f(None, &[], &[], &["/etc"]).matches(&s));
    }
}
