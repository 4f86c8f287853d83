//! Work spread over a few threads: items taken in order, in small groups,
//! each thread with its own state (open files, read caches); the first
//! error stops the rest. Restore and copy read and write this way.

use std::sync::Mutex;

use crate::error::{Error, Result};

/// Run `work(i, state)` for `i` in `0..n` on one thread per element of
/// `state` (each thread with its own: caches, open files), each taking
/// `grab` consecutive items at a time; the first error.
pub fn for_each_parallel_with<S: Send>(
    n: usize,
    state: &[Mutex<S>],
    grab: usize,
    work: impl Fn(usize, &mut S) -> Result<()> + Sync,
) -> Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for slot in state.iter().take(n.max(1)) {
            let (next, first_error, work) = (&next, &first_error, &work);
            s.spawn(move || {
                let Ok(mut own) = slot.lock() else { return };
                'grabs: loop {
                    let first = next.fetch_add(grab.max(1), std::sync::atomic::Ordering::Relaxed);
                    for i in first..(first + grab.max(1)).min(n) {
                        if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                            break 'grabs;
                        }
                        if let Err(e) = work(i, &mut own) {
                            if let Ok(mut fe) = first_error.lock() {
                                fe.get_or_insert(e);
                            }
                            break 'grabs;
                        }
                    }
                    if first >= n {
                        break;
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// The CPUs this process may use (its affinity mask counts; 2 when unknown).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// What a thread of a scope returned (its panic, as an error): for reads
/// started together so that a remote repository answers them in one round
/// trip.
pub fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    thread.join().unwrap_or_else(|_| Err(Error::Invalid("a thread reading the repository panicked".into())))
}
