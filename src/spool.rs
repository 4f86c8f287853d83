//! The spool: the private directory where a run stages its database dumps.
//!
//! Dumps are plaintext copies of the databases, so the spool must be private:
//! it is created 0700, and a run refuses a spool that others can read or that
//! another user owns. Each run gets `<spool>/<job>/<run_id>/` with `dumps/`
//! (backed up as `/.holdfast/databases`) and `private/` (credential files
//! for the dump tools; never backed up). The run directory is removed after
//! the run, whatever its outcome. The job's lock file lives in `<spool>/<job>/`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

/// Create `dir` (and missing parents) with mode 0700, then check it is private.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    crate::fsutil::create_dir_all(dir, crate::fsutil::PRIVATE_DIR)
        .with_context(|| format!("creating the spool directory {}", dir.display()))?;
    check_private(dir)
}

/// The job is locked by a run in progress (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("job {job:?} is already running (pid {holder}); this {what} was not started")]
pub struct JobBusy {
    pub job: String,
    pub holder: String,
    pub what: &'static str,
}

/// Refuse a directory that others can read or that another user owns.
pub fn check_private(dir: &Path) -> Result<()> {
    let md = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        bail!(
            "the spool {} is owned by uid {}, not by the user running holdfast (uid {me}); dumps would not be private",
            dir.display(),
            md.uid()
        );
    }
    if md.mode() & 0o077 != 0 {
        bail!(
            "the spool {} has mode {:o}: other users could read the dumps; run `chmod 700 {}`",
            dir.display(),
            md.mode() & 0o777,
            dir.display()
        );
    }
    Ok(())
}

/// One run's directories in the spool.
#[derive(Debug)]
pub struct RunDir {
    pub root: PathBuf,
    pub dumps: PathBuf,
    pub private: PathBuf,
    /// Where the run's children are recorded while they run (see
    /// `process::end_leftovers`): `<run>/children/`.
    pub children: PathBuf,
}

impl RunDir {
    /// Create `<spool>/<job>/<run_id>/{dumps,private}`, all private.
    pub fn create(spool: &Path, job: &str, run_id: &str) -> Result<RunDir> {
        ensure_private_dir(spool)?;
        let root = spool.join(job).join(run_id);
        let dumps = root.join("dumps");
        let private = root.join("private");
        ensure_private_dir(&dumps)?;
        ensure_private_dir(&private)?;
        let children = root.join("children");
        Ok(RunDir { root, dumps, private, children })
    }

    /// Remove the run directory and everything in it.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cleaning the spool run directory {}", self.root.display())),
        }
    }

    /// Write a file only the current user can read (credentials for a tool).
    pub fn write_private(&self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        let p = self.private.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        f.write_all(contents).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }
}

/// An exclusive lock on a job, held for the length of a run.
pub struct JobLock {
    _lock: Flock<File>,
}

impl JobLock {
    /// Take the lock of `job` in `spool`, or fail at once naming the holder
    /// ([`JobBusy`]; `what` the caller was about to do).
    pub fn acquire(spool: &Path, job: &str, what: &'static str) -> Result<JobLock> {
        let dir = spool.join(job);
        ensure_private_dir(spool)?;
        ensure_private_dir(&dir)?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0)?;
                lock.rewind()?;
                write!(lock, "{}", std::process::id())?;
                Ok(JobLock { _lock: lock })
            }
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = if holder.trim().is_empty() { "unknown".to_string() } else { holder.trim().to_string() };
                Err(JobBusy { job: job.to_string(), holder, what }.into())
            }
        }
    }
}
