//! A restore target as a handle: paths below it are resolved by the kernel
//! beneath it, never through a symlink.
//!
//! A restore writes into a directory that may already hold things — a
//! symlink `DEST/tmp -> /etc`, a FIFO where a file goes — and that another
//! local user may be changing while the restore runs. Joining paths and
//! hoping would follow such a symlink out of the target. Here every
//! directory below the target is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (on kernels without `openat2`, by a walk that opens
//! one component at a time with `O_NOFOLLOW`), and every file operation is
//! relative to such a directory handle with a single name: nothing the
//! restore does can leave the target or act on a symlink's target.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::{Error, Result};

/// The restore target, open.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

/// What is at a name in a directory (not following a symlink there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Nothing,
    Dir,
    /// Anything else: a file, a symlink, a FIFO, a socket, a device.
    Other(SFlag),
}

/// Set when the kernel has no `openat2` (before Linux 5.6): walk instead.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

impl Beneath {
    /// Open the target directory itself (the one path the user named).
    pub fn open(path: &Path) -> Result<Beneath> {
        let root =
            openat(nix::fcntl::AT_FDCWD, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| errno(path, e))?;
        Ok(Beneath { root, path: path.to_path_buf() })
    }

    /// Where `rel` is, for messages.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// The directory `rel` below the target (`""` is the target itself),
    /// opened without following any symlink on the way or at its end.
    pub fn dir(&self, rel: &Path) -> Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.root.try_clone().map_err(|e| Error::io(&self.path, e));
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = OpenHow::new().flags(DIR_FLAGS).resolve(
                ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
            match openat2(&self.root, rel, how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                Err(e) => return Err(self.refused(rel, e)),
            }
        }
        // One component at a time, none of them followed if a symlink.
        let mut fd = self.root.try_clone().map_err(|e| Error::io(&self.path, e))?;
        for c in rel.components() {
            let std::path::Component::Normal(name) = c else {
                return Err(Error::Invalid(format!("{}: not a plain path below the target", rel.display())));
            };
            fd = openat(&fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| self.refused(rel, e))?;
        }
        Ok(fd)
    }

    fn refused(&self, rel: &Path, e: Errno) -> Error {
        let path = self.display(rel);
        match e {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => Error::Invalid(format!(
                "{}: something on the way is a symlink or not a directory (it appeared during the restore?); \
                 nothing was written through it",
                path.display()
            )),
            e => errno(&path, e),
        }
    }
}

/// What `name` in `dir` is, without following it.
pub fn lookup(dir: BorrowedFd, name: &OsStr, shown: &Path) -> Result<Found> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
            Ok(if kind == SFlag::S_IFDIR { Found::Dir } else { Found::Other(kind) })
        }
        Err(Errno::ENOENT) => Ok(Found::Nothing),
        Err(e) => Err(errno(shown, e)),
    }
}

/// Make sure `name` in `dir` is a directory, creating it 0700 (it gets its
/// recorded mode when the restore ends). A directory already there is
/// narrowed to 0700 too while the restore writes into it (a private file of
/// the snapshot must not show through a wider directory that was there,
/// and a read-only one must take the new files). A non-directory in the way
/// — a file, a symlink, a FIFO — is removed, never followed. Returns whether
/// it was created.
pub fn ensure_dir(dir: BorrowedFd, name: &OsStr, shown: &Path) -> Result<bool> {
    for _ in 0..3 {
        match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => return Ok(true),
            Err(Errno::EEXIST) => match lookup(dir, name, shown)? {
                Found::Dir => {
                    narrow_dir(dir, name, shown)?;
                    return Ok(false);
                }
                Found::Nothing => continue,
                Found::Other(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| errno(shown, e))?,
            },
            Err(e) => return Err(errno(shown, e)),
        }
    }
    Err(Error::Invalid(format!("{}: keeps changing while the restore creates it", shown.display())))
}

/// Give an existing directory mode 0700 (not following a symlink). One
/// that is not ours to change (another user's, as non-root) is left as it is.
fn narrow_dir(dir: BorrowedFd, name: &OsStr, shown: &Path) -> Result<()> {
    let fd = match openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::EACCES) => return Ok(()),
        Err(e) => return Err(errno(shown, e)),
    };
    match nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EPERM) => Ok(()),
        Err(e) => Err(errno(shown, e)),
    }
}

/// Create a new file `name` in `dir`, mode 0600, failing if anything is
/// there (temporary names are new; nothing existing is ever opened).
pub fn create_file(dir: BorrowedFd, name: &OsStr, shown: &Path) -> Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o600)).map_err(|e| errno(shown, e))?;
    Ok(File::from(fd))
}

/// Open for writing a file this restore created (`name` is its temporary name).
pub fn reopen_file(dir: BorrowedFd, name: &OsStr, shown: &Path) -> Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).map_err(|e| errno(shown, e))?;
    Ok(File::from(fd))
}

/// Open a regular file of the restore to read its flags or set them
/// (never following a link, never blocking on a FIFO put there since).
pub fn open_file(dir: BorrowedFd, name: &OsStr, shown: &Path) -> Result<File> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).map_err(|e| errno(shown, e))?;
    Ok(File::from(fd))
}

/// Give `from` (a temporary name) its final name `to` in the same
/// directory, replacing a non-directory there (the old name is not followed:
/// a symlink or FIFO at `to` is replaced, not written through). A directory
/// at `to` stops the restore with a clear error.
pub fn rename_into_place(dir: BorrowedFd, from: &OsStr, to: &OsStr, shown: &Path) -> Result<()> {
    match nix::fcntl::renameat(dir, from, dir, to) {
        Ok(()) => Ok(()),
        Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST) => {
            let _ = unlinkat(dir, from, UnlinkatFlags::NoRemoveDir);
            Err(Error::Invalid(format!(
                "{}: a directory is in the way of a file of the snapshot; remove it or restore elsewhere",
                shown.display()
            )))
        }
        // An immutable or append-only file is in the way (a restore of a
        // file with `chattr +i` into the same place before): say so.
        Err(Errno::EPERM) => {
            let _ = unlinkat(dir, from, UnlinkatFlags::NoRemoveDir);
            Err(Error::Invalid(format!(
                "{}: the file there may not be replaced (immutable or append-only? `lsattr` shows it, `chattr -i -a` clears it)",
                shown.display()
            )))
        }
        Err(e) => Err(errno(shown, e)),
    }
}

/// Remove a temporary name, if it is still there (cleanup after a failure).
pub fn remove_temporary(dir: BorrowedFd, name: &OsStr) {
    let _ = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir);
}

/// A name as the kernel takes it (the bytes of a tree entry).
pub fn name(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// An open directory as the borrowed handle the functions above take.
pub fn fd(dir: &OwnedFd) -> BorrowedFd<'_> {
    dir.as_fd()
}

fn errno(path: &Path, e: Errno) -> Error {
    Error::io(path, std::io::Error::from(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_on_the_way_is_refused_and_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let (target, outside) = (t.path().join("target"), t.path().join("outside"));
        std::fs::create_dir_all(target.join("real")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("tmp")).unwrap();
        let b = Beneath::open(&target).unwrap();
        assert!(b.dir(Path::new("real")).is_ok());
        let err = b.dir(Path::new("tmp")).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        // Creating a directory where the symlink is replaces the link.
        let root = b.dir(Path::new("")).unwrap();
        assert!(ensure_dir(fd(&root), name(b"tmp"), &target.join("tmp")).unwrap());
        assert!(std::fs::symlink_metadata(target.join("tmp")).unwrap().is_dir());
        assert!(outside.exists() && std::fs::read_dir(&outside).unwrap().next().is_none());
    }

    #[test]
    fn a_file_replaces_a_symlink_or_fifo_but_not_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        std::fs::write(&secret, b"keep").unwrap();
        std::os::unix::fs::symlink(&secret, t.path().join("link")).unwrap();
        std::fs::create_dir(t.path().join("dir")).unwrap();
        let b = Beneath::open(t.path()).unwrap();
        let root = b.dir(Path::new("")).unwrap();
        for (target, ok) in [("link", true), ("dir", false)] {
            drop(create_file(fd(&root), name(b".tmp"), t.path()).unwrap());
            let r = rename_into_place(fd(&root), name(b".tmp"), name(target.as_bytes()), t.path());
            assert_eq!(r.is_ok(), ok, "{target}");
        }
        assert_eq!(std::fs::read(&secret).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(t.path().join("link")).unwrap().is_file());
    }
}
