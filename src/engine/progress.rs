//! How far a long operation is: counters the engine bumps as it works and a
//! display reads (the command line draws a bar on a terminal or writes JSON
//! lines; under systemd nobody reads them). Cheap enough to bump per file.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shared between the operation (writer) and a display (reader).
#[derive(Debug, Default)]
pub struct Progress {
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    /// The totals are final (a backup's scan has ended; a restore knows
    /// them from the start).
    total_known: AtomicBool,
    phase: Mutex<String>,
    current: Mutex<String>,
}

/// What a display shows at one moment.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ProgressView {
    pub phase: String,
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_total: u64,
    pub bytes_total: u64,
    pub total_known: bool,
    pub current: String,
}

impl Progress {
    /// Start a phase ("files of /srv", "restore"): counters start again.
    pub fn phase(&self, name: impl Into<String>) {
        *lock(&self.phase) = name.into();
        lock(&self.current).clear();
        for c in [&self.files_done, &self.bytes_done, &self.files_total, &self.bytes_total] {
            c.store(0, Ordering::Relaxed);
        }
        self.total_known.store(false, Ordering::Relaxed);
    }

    /// More work found (a backup's scan finds files as it goes).
    pub fn add_total(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// No more work will be found: an end time can be estimated.
    pub fn total_known(&self) {
        self.total_known.store(true, Ordering::Relaxed);
    }

    pub fn done(&self, files: u64, bytes: u64) {
        self.files_done.fetch_add(files, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Where the operation is now.
    pub fn at(&self, path: &Path) {
        let mut current = lock(&self.current);
        current.clear();
        current.push_str(&path.to_string_lossy());
    }

    pub fn view(&self) -> ProgressView {
        ProgressView {
            phase: lock(&self.phase).clone(),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            total_known: self.total_known.load(Ordering::Relaxed),
            current: lock(&self.current).clone(),
        }
    }
}

/// A poisoned lock still holds a usable string.
fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_starts_its_counters_again() {
        let p = Progress::default();
        p.phase("dump shop");
        p.add_total(1, 100);
        p.done(1, 100);
        p.total_known();
        p.phase("files");
        p.add_total(2, 10);
        p.done(1, 4);
        p.at(Path::new("/srv/a"));
        let v = p.view();
        assert_eq!((v.files_done, v.bytes_done, v.files_total, v.bytes_total), (1, 4, 2, 10));
        assert!(!v.total_known);
        assert_eq!((v.phase.as_str(), v.current.as_str()), ("files", "/srv/a"));
    }
}
