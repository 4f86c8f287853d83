//! Files and directories holdfast creates for itself, private by
//! construction: every directory is made by [`create_dir_all`] (mode 0700
//! unless a caller says why not), every file by [`write_atomically`] (mode
//! given, applied before a byte is written, then renamed into place).
//!
//! Not for: restored files (the engine's restore gives those their recorded
//! modes, see `engine::restore`).

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// The mode of every directory holdfast creates for itself.
pub const PRIVATE_DIR: u32 = 0o700;
/// The mode of every file holdfast writes for itself.
pub const PRIVATE_FILE: u32 = 0o600;

/// Create `dir` and its missing parents, each with exactly `mode` (0700
/// unless the directory is meant to be read by others, like a metrics
/// directory; the umask does not narrow it). Existing directories are left
/// as they are.
pub fn create_dir_all(dir: &Path, mode: u32) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while std::fs::symlink_metadata(at).is_err() {
        missing.push(at);
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(mode).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).at(d)?,
            // Made by someone else meanwhile: theirs, left as it is.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(crate::Error::io(d, e)),
        }
    }
    if !dir.is_dir() {
        return Err(crate::Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")));
    }
    Ok(())
}

/// Write `bytes` to `path` through a temporary file that has `mode` from
/// its creation on, fsynced and renamed over `path`: a reader sees the old
/// file or the new one, never a part, and never a wider mode than asked.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A new file under a name nobody can guess: whoever may write in `dir`
    // (a metrics directory of another user) cannot have put a symlink there
    // for holdfast to write through.
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| crate::Error::io(path, std::io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", u64::from_le_bytes(random)));
    let mut created = false;
    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        created = true;
        // The umask may have narrowed it: set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() && created {
        let _ = std::fs::remove_file(&tmp);
    }
    written.at(path)
}

/// Create `path`, which must not exist, with mode 0600, and write into it
/// (dump files, key exports: a reader never sees them wider).
pub fn create_private(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new().write(true).create_new(true).mode(PRIVATE_FILE).open(path).at(path)
}

/// Open `path` for reading only if it is a regular file: never through a
/// symlink, never waiting on a FIFO someone put where a file of holdfast's
/// own (a cache file) should be.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY;
    let file = OpenOptions::new().read(true).custom_flags(flags).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// An absolute path with `.` and `..` resolved lexically.
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The bytes an unprivileged writer can still use on `path`'s file system.
pub fn free_space(path: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(path).ok()?;
    Some(fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// Whether `dir`'s file system has room for a file of `bytes`, with 10%
/// and `slack` to spare (a dump extracted or loaded there; it may grow).
pub fn has_room(dir: &Path, bytes: u64, slack: u64) -> bool {
    free_space(dir).is_some_and(|free| free >= bytes.saturating_add(bytes / 10).saturating_add(slack))
}

/// Make a pipe 1 MiB (the unprivileged maximum) instead of 64 KiB, so a
/// writer (ssh, a dump tool) can run that far ahead of a reader busy with
/// what it read last. Not a pipe (sshd may use a socket pair), or not
/// allowed: left as it is.
pub fn widen_pipe(fd: std::os::fd::BorrowedFd<'_>) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn created_directories_and_files_have_exactly_their_mode() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_all(&deep, PRIVATE_DIR).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(std::fs::metadata(t.path().join(d)).unwrap().mode() & 0o777, 0o700, "{d}");
        }
        let f = deep.join("state.json");
        write_atomically(&f, b"one", 0o644).unwrap();
        write_atomically(&f, b"two", PRIVATE_FILE).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert!(create_private(&f).is_err(), "never over an existing file");
    }

    #[test]
    fn a_symlink_where_a_file_is_written_is_replaced_never_written_through() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"root's own").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let metrics = t.path().join("holdfast-shop.prom");
        std::os::unix::fs::symlink(&victim, &metrics).unwrap();
        // Old-style guessable temporary names, planted in advance.
        for pid in [std::process::id(), 1, 2] {
            std::os::unix::fs::symlink(&victim, t.path().join(format!(".holdfast-shop.prom.{pid}.tmp"))).unwrap();
        }

        write_atomically(&metrics, b"metrics", 0o644).unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"root's own");
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);
        assert!(std::fs::symlink_metadata(&metrics).unwrap().is_file());
        assert_eq!(std::fs::read(&metrics).unwrap(), b"metrics");
    }
}
