//! Directories listed ahead of the scan.
//!
//! The scan walks one directory at a time on one thread, and on a big tree
//! most of its time went to the kernel: a walk of the whole path and an
//! `lstat` per entry. Here a directory is listed through its open
//! descriptor and every entry is `statx`ed by its name relative to it (one
//! lookup, not one per path component), and worker threads list the
//! directories the scan will enter next, in the order its depth-first walk
//! needs them, a bounded number ahead, so that the scan mostly finds them
//! ready.
//!
//! Only directories the scan will enter are listed ahead: on the same file
//! system as their parent, not excluded, not holdfast's own (one that then
//! turns out to be a cache directory or marked no-dump is dropped). A name
//! the exclude patterns leave out is never `stat`ed: an excluded dead
//! network mount must not hang the scan.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::Scope;

use crate::engine::fsmeta::Stat;
use crate::engine::select::Patterns;

/// Listed directories held ready at most (entries, directories): a few
/// MiB, however far ahead the workers could go. Each holds a descriptor,
/// so no more than a sixteenth of the open files limit is held this way.
const READY_ENTRIES: usize = 20_000;
const READY_DIRS: usize = 64;
/// Directories waiting to be listed at most; the ones the walk needs last
/// are dropped first (the scan lists those itself when it gets there).
const WANTED_DIRS: usize = 4_096;

/// One directory's entries in name order, and what could not be read.
#[derive(Default)]
pub(super) struct Listing {
    pub entries: Vec<Listed>,
    /// The directory, open: its entries' xattrs and flags are read by name
    /// in it.
    pub dir: Option<rustix::fs::Dir>,
    /// Why the directory, or the rest of its listing, could not be read.
    pub error: Option<std::io::Error>,
}

/// An entry of a listed directory, with its `lstat` (or why that failed).
pub(super) struct Listed {
    pub name: Vec<u8>,
    pub path: PathBuf,
    pub stat: std::io::Result<Stat>,
}

/// List directory `path` (not following it if it became a symlink),
/// leaving out the names `exclude` matches, and `lstat` what is kept.
pub(super) fn list_dir(path: &Path, exclude: &Patterns) -> Listing {
    use rustix::fs::{Dir, Mode, OFlags, open};
    let mut listing = Listing::default();
    let how = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = match open(path, how, Mode::empty()).and_then(Dir::new) {
        Ok(dir) => dir,
        Err(e) => {
            listing.error = Some(e.into());
            return listing;
        }
    };
    let mut names = Vec::new();
    for entry in dir.by_ref() {
        match entry {
            Ok(e) => {
                let name = e.file_name().to_bytes();
                if name != b"." && name != b".." {
                    names.push(name.to_vec());
                }
            }
            Err(e) => {
                listing.error = Some(e.into());
                break;
            }
        }
    }
    names.sort_unstable();
    let Ok(fd) = dir.fd() else { return listing };
    let entries = names
        .into_iter()
        .filter_map(|name| {
            let child = path.join(OsStr::from_bytes(&name));
            if exclude.is_match(&child) {
                return None;
            }
            let stat = Stat::at(fd.as_fd(), OsStr::from_bytes(&name));
            Some(Listed { name, path: child, stat })
        })
        .collect();
    listing.entries = entries;
    listing.dir = Some(dir);
    listing
}

/// Only `name` of directory `path` (a directory that keeps one entry),
/// unless `exclude` leaves it out too.
pub(super) fn list_one(path: &Path, name: &[u8], exclude: &Patterns) -> Listing {
    let child = path.join(OsStr::from_bytes(name));
    if exclude.is_match(&child) {
        return Listing::default();
    }
    let stat = Stat::of_path(&child);
    Listing { entries: vec![Listed { name: name.to_vec(), path: child, stat }], dir: None, error: None }
}

/// How many threads list ahead: the scan's own thread is busy with the
/// rest, and more than a few gain nothing.
pub(super) fn workers() -> usize {
    crate::engine::parallel::cpus().saturating_sub(1).clamp(1, 3)
}

/// Raise this process's soft limit of open files to its hard limit (as Go
/// programs do): directories listed ahead, and those along the scan's
/// path, each hold a descriptor, and a soft limit of 64 or 1,024 must not
/// turn into directories stored empty.
pub(super) fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // (`None` is unlimited: a soft limit below an unlimited hard one stays,
    // since no soft limit of open files may be unlimited.)
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let _ = setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, ..limit });
    }
}

#[derive(Default)]
struct State {
    /// Directories to list, the one the walk needs next at the back.
    wanted: VecDeque<PathBuf>,
    /// Being listed by a worker.
    listing: Vec<PathBuf>,
    /// Being listed, but the walk will not enter them after all.
    forgotten: Vec<PathBuf>,
    ready: HashMap<PathBuf, Listing>,
    ready_entries: usize,
    stop: bool,
}

/// Worker threads listing the directories the scan asked for ahead.
pub(super) struct ListAhead<'e> {
    state: Mutex<State>,
    changed: Condvar,
    exclude: &'e Patterns,
    ready_dirs: usize,
}

impl<'e> ListAhead<'e> {
    pub fn new(exclude: &'e Patterns) -> Self {
        let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        let ready_dirs = usize::try_from(open_files / 16).unwrap_or(READY_DIRS).clamp(1, READY_DIRS);
        ListAhead { state: Mutex::new(State::default()), changed: Condvar::new(), exclude, ready_dirs }
    }

    /// Start `workers` threads in `scope`; they end when the returned guard
    /// is dropped (also when the scan unwinds), so the scope can end.
    #[must_use]
    pub fn start<'s>(&'s self, scope: &'s Scope<'s, '_>, workers: usize) -> Workers<'s, 'e>
    where
        'e: 's,
    {
        for _ in 0..workers {
            scope.spawn(|| self.work());
        }
        Workers(self)
    }

    /// Stop the workers (a listing under way is finished first).
    fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn work(&self) {
        let mut state = self.lock();
        loop {
            if state.stop {
                return;
            }
            let full =
                state.ready_entries >= READY_ENTRIES || state.ready.len() + state.listing.len() >= self.ready_dirs;
            let Some(path) = (!full).then(|| state.wanted.pop_back()).flatten() else {
                state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            };
            state.listing.push(path.clone());
            drop(state);
            let listing = list_dir(&path, self.exclude);
            state = self.lock();
            state.listing.retain(|p| p != &path);
            if let Some(at) = state.forgotten.iter().position(|p| p == &path) {
                state.forgotten.swap_remove(at);
            } else if listing.error.is_none() {
                // (A listing that failed is not kept: the scan lists the
                // directory again itself, so a passing failure, such as too
                // many open files, does not become a directory stored empty,
                // and a lasting one is reported from where it is met.)
                state.ready_entries += listing.entries.len();
                state.ready.insert(path, listing);
            }
            self.changed.notify_all();
        }
    }

    /// The walk will enter these directories next, in this order.
    pub fn want(&self, dirs: Vec<PathBuf>) {
        if dirs.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.wanted.extend(dirs.into_iter().rev());
        let over = state.wanted.len().saturating_sub(WANTED_DIRS);
        state.wanted.drain(..over);
        drop(state);
        self.changed.notify_all();
    }

    /// Directory `path`'s listing: listed ahead, or listed now.
    pub fn take(&self, path: &Path) -> Listing {
        let mut state = self.lock();
        loop {
            if let Some(listing) = state.ready.remove(path) {
                state.ready_entries -= listing.entries.len();
                drop(state);
                self.changed.notify_all();
                return listing;
            }
            if !state.listing.iter().any(|p| p == path) {
                break;
            }
            state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if let Some(at) = state.wanted.iter().rposition(|p| p == path) {
            state.wanted.remove(at);
        }
        drop(state);
        list_dir(path, self.exclude)
    }

    /// The walk will not enter `path` after all (left out once its own
    /// flags or contents were known): drop what was listed of it.
    pub fn forget(&self, path: &Path) {
        let mut state = self.lock();
        if let Some(at) = state.wanted.iter().rposition(|p| p == path) {
            state.wanted.remove(at);
        }
        if state.listing.iter().any(|p| p == path) {
            state.forgotten.push(path.to_path_buf());
        }
        if let Some(listing) = state.ready.remove(path) {
            state.ready_entries -= listing.entries.len();
            drop(state);
            self.changed.notify_all();
        }
    }
}

/// The running workers of a [`ListAhead`]: dropped, they stop.
pub(super) struct Workers<'s, 'e>(&'s ListAhead<'e>);

impl Drop for Workers<'_, '_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(listing: &Listing) -> Vec<&[u8]> {
        listing.entries.iter().map(|e| e.name.as_slice()).collect()
    }

    #[test]
    fn a_listing_is_sorted_stats_each_entry_and_never_touches_excluded_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b", "a", "skip.tmp", "c"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("link")).unwrap();
        let exclude = Patterns::new(&["*.tmp".to_string()], &[]).unwrap();
        let listing = list_dir(dir.path(), &exclude);
        assert!(listing.error.is_none());
        assert_eq!(names(&listing), [&b"a"[..], b"b", b"c", b"link", b"sub"]);
        let stat = |n: &str| listing.entries.iter().find(|e| e.name == n.as_bytes()).unwrap().stat.as_ref().unwrap();
        assert!(stat("a").is_file() && stat("a").size == 1);
        assert!(stat("link").is_symlink(), "a symlink is not followed");
        assert!(stat("sub").is_dir());
        assert_eq!(*stat("c"), Stat::of_path(&dir.path().join("c")).unwrap());
    }

    #[test]
    fn a_directory_that_cannot_be_listed_says_why_and_a_symlink_to_one_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("swapped")).unwrap();
        let none = Patterns::default();
        assert!(list_dir(&dir.path().join("gone"), &none).error.is_some());
        let swapped = list_dir(&dir.path().join("swapped"), &none);
        assert!(swapped.error.is_some() && swapped.entries.is_empty());
    }

    #[test]
    fn a_listing_that_failed_ahead_is_listed_again_when_the_scan_gets_there() {
        let dir = tempfile::tempdir().unwrap();
        let late = dir.path().join("late");
        let none = Patterns::default();
        let ahead = ListAhead::new(&none);
        std::thread::scope(|s| {
            let _workers = ahead.start(s, 1);
            ahead.want(vec![late.clone()]);
            // The worker tries, fails (not there yet) and keeps nothing.
            while {
                let state = ahead.lock();
                !state.wanted.is_empty() || !state.listing.is_empty()
            } {
                std::thread::yield_now();
            }
            assert!(ahead.lock().ready.is_empty());
            std::fs::create_dir(&late).unwrap();
            std::fs::write(late.join("f"), b"x").unwrap();
            let listing = ahead.take(&late);
            assert!(listing.error.is_none());
            assert_eq!(names(&listing), [&b"f"[..]]);
        });
    }

    #[test]
    fn directories_wanted_ahead_come_back_whole_whatever_order_they_are_taken_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut subdirs = Vec::new();
        for i in 0..50 {
            let sub = dir.path().join(format!("d{i:02}"));
            std::fs::create_dir(&sub).unwrap();
            for j in 0..i {
                std::fs::write(sub.join(format!("f{j}")), b"").unwrap();
            }
            subdirs.push(sub);
        }
        let none = Patterns::default();
        let ahead = ListAhead::new(&none);
        std::thread::scope(|s| {
            let _workers = ahead.start(s, 2);
            ahead.want(subdirs.clone());
            // Taken in the wanted order, then out of it, then one never wanted.
            for (i, sub) in subdirs.iter().enumerate().take(20) {
                assert_eq!(ahead.take(sub).entries.len(), i);
            }
            ahead.forget(&subdirs[20]);
            for (i, sub) in subdirs.iter().enumerate().skip(21).rev() {
                assert_eq!(ahead.take(sub).entries.len(), i);
            }
            assert_eq!(ahead.take(dir.path()).entries.len(), 50);
        });
        let state = ahead.lock();
        assert!(
            state.ready.is_empty()
                && state.ready_entries == 0
                && state.listing.is_empty()
                && state.forgotten.is_empty()
        );
    }
}
