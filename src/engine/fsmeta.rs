//! Reading and applying file metadata: modes, owners, times, xattrs, ACLs,
//! inode flags, holes.
//!
//! Everything here is a thin, named wrapper over a system call, so the backup
//! and restore code reads as what it does.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata as FsMetadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use std::os::fd::BorrowedFd;

use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, futimens, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Group, Uid, User, fchown, fchownat};

use crate::engine::tree::{FLAGS_UNKNOWN, Metadata, Timespec};
use crate::error::{Error, Result};

/// POSIX ACLs, stored as the kernel's `system.posix_acl_*` attributes:
/// restored after the mode (setting the mode rewrites the ACL's mask).
const ACL_PREFIX: &[u8] = b"system.posix_acl_";

/// The inode flags (`chattr`) kept and restored: the ones a user or root
/// can set (the kernel's `FS_FL_USER_MODIFIABLE`, plus data journalling,
/// no-COW and project inheritance). Flags the file system keeps for itself
/// (extents `e`, inline data, encryption) are not kept.
pub const KEPT_FLAGS: u32 = 0x0003_80FF | 0x0000_4000 | 0x0080_0000 | 0x2000_0000;
/// `d`: left out of backups by `exclude_nodump`.
pub const NODUMP_FLAG: u32 = 0x0000_0040;

/// Caches uid/gid -> name lookups for one run.
#[derive(Default)]
pub struct NameCache {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
}

impl NameCache {
    pub fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name))
            .clone()
    }

    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| Group::from_gid(Gid::from_raw(gid)).ok().flatten().map(|g| g.name))
            .clone()
    }

    /// The uid to restore: the recorded name's uid on this system, else the id.
    pub fn uid_for(&mut self, meta: &Metadata) -> u32 {
        let Some(name) = &meta.user else {
            return meta.uid;
        };
        self.uids
            .entry(name.clone())
            .or_insert_with(|| User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()))
            .unwrap_or(meta.uid)
    }

    pub fn gid_for(&mut self, meta: &Metadata) -> u32 {
        let Some(name) = &meta.group else {
            return meta.gid;
        };
        self.gids
            .entry(name.clone())
            .or_insert_with(|| Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw()))
            .unwrap_or(meta.gid)
    }
}

/// What `lstat` says of an entry: the fields the scan, the selection and
/// the recorded metadata need. Read for one name relative to an open
/// directory ([`Stat::at`]: no walk of the whole path per entry, which was
/// the largest cost of scanning a big tree), or from a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub mtime: Timespec,
    pub ctime: Timespec,
}

impl Stat {
    /// `lstat` of `path` (a symlink is not followed).
    pub fn of_path(path: &Path) -> std::io::Result<Stat> {
        std::fs::symlink_metadata(path).map(|md| Stat::from(&md))
    }

    /// `lstat` of `name` in the directory open as `dir`.
    pub fn at(dir: BorrowedFd, name: &OsStr) -> std::io::Result<Stat> {
        use rustix::fs::{AtFlags, StatxFlags, makedev, statx};
        let x = statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)?;
        Ok(Stat {
            dev: makedev(x.stx_dev_major, x.stx_dev_minor),
            ino: x.stx_ino,
            mode: u32::from(x.stx_mode),
            nlink: u64::from(x.stx_nlink),
            uid: x.stx_uid,
            gid: x.stx_gid,
            rdev: makedev(x.stx_rdev_major, x.stx_rdev_minor),
            size: x.stx_size,
            mtime: Timespec { secs: x.stx_mtime.tv_sec, nanos: x.stx_mtime.tv_nsec },
            ctime: Timespec { secs: x.stx_ctime.tv_sec, nanos: x.stx_ctime.tv_nsec },
        })
    }

    fn file_type(&self) -> rustix::fs::FileType {
        rustix::fs::FileType::from_raw_mode(self.mode)
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == rustix::fs::FileType::Directory
    }
    pub fn is_file(&self) -> bool {
        self.file_type() == rustix::fs::FileType::RegularFile
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == rustix::fs::FileType::Symlink
    }
    pub fn is_fifo(&self) -> bool {
        self.file_type() == rustix::fs::FileType::Fifo
    }
    pub fn is_char_device(&self) -> bool {
        self.file_type() == rustix::fs::FileType::CharacterDevice
    }
    pub fn is_block_device(&self) -> bool {
        self.file_type() == rustix::fs::FileType::BlockDevice
    }
}

impl From<&FsMetadata> for Stat {
    fn from(md: &FsMetadata) -> Stat {
        Stat {
            dev: md.dev(),
            ino: md.ino(),
            mode: md.mode(),
            nlink: md.nlink(),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            size: md.size(),
            mtime: Timespec { secs: md.mtime(), nanos: md.mtime_nsec() as u32 },
            ctime: Timespec { secs: md.ctime(), nanos: md.ctime_nsec() as u32 },
        }
    }
}

/// The metadata to record for `path`, whose `lstat` result is `md`.
///
/// `prev` is the same path's entry in the parent snapshot: when its ctime and
/// inode are unchanged its xattrs and flags are too (setting one changes the
/// ctime), so they are taken from there instead of asking the kernel again —
/// unless the parent is from before all of them were kept.
///
/// `dir`, when given, is `path`'s directory, open: the entry is then opened
/// by its name in it (one lookup, not a walk of the whole path) and its
/// xattrs and flags are read through that one descriptor.
pub fn read_metadata(
    path: &Path,
    dir: Option<BorrowedFd>,
    md: &Stat,
    prev: Option<&Metadata>,
    names: &mut NameCache,
) -> Metadata {
    let (xattrs, flags) = match prev {
        Some(p) if p.ctime == md.ctime && p.inode == md.ino && p.flags & FLAGS_UNKNOWN == 0 => {
            (p.xattrs.clone(), p.flags)
        }
        _ => match open_entry(dir, path, md) {
            Some(file) => (file_xattrs(&file), read_open_flags(&file)),
            // A symlink, device or FIFO, or a file that cannot be opened.
            None => (read_xattrs(path), 0),
        },
    };
    Metadata {
        mode: md.mode & 0o7777,
        uid: md.uid,
        gid: md.gid,
        user: names.user(md.uid),
        group: names.group(md.gid),
        mtime: md.mtime,
        ctime: md.ctime,
        inode: md.ino,
        size: if md.is_file() { md.size } else { 0 },
        xattrs,
        flags,
    }
}

/// Regular file or directory `path` opened to read its xattrs and flags
/// (never following a symlink, never blocking): by its name in `dir` when
/// that is open, else by the whole path.
fn open_entry(dir: Option<BorrowedFd>, path: &Path, md: &Stat) -> Option<File> {
    use rustix::fs::{CWD, Mode as RMode, OFlags};
    if !md.is_file() && !md.is_dir() {
        return None;
    }
    let how = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
    let (dir, name) = match dir {
        Some(dir) => (dir, path.file_name()?),
        None => (CWD, path.as_os_str()),
    };
    rustix::fs::openat(dir, name, how, RMode::empty()).ok().map(File::from)
}

/// Every extended attribute of an open file, as [`read_xattrs`].
fn file_xattrs(file: &File) -> Vec<(Vec<u8>, Vec<u8>)> {
    use xattr::FileExt;
    let Ok(names) = file.list_xattr() else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> =
        names.filter_map(|n| Some((n.as_bytes().to_vec(), file.get_xattr(&n).ok().flatten()?))).collect();
    out.sort();
    out
}

/// The kept inode flags of an open file (0 where it has none).
fn read_open_flags(file: &File) -> u32 {
    rustix::fs::ioctl_getflags(file).map(|f| f.bits() & KEPT_FLAGS).unwrap_or(0)
}

/// Every extended attribute of `path` (never following a symlink) that the
/// running user can read: all namespaces, ACLs and capabilities included.
fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter_map(|n| {
            let value = xattr::get(path, &n).ok().flatten()?;
            Some((n.as_bytes().to_vec(), value))
        })
        .collect();
    out.sort();
    out
}

/// The inode flags of a regular file or directory (0 for other kinds, and
/// where the file system has none or the file cannot be opened). Opened
/// without following links and without blocking, so a FIFO swapped in
/// since the `lstat` does not hang the scan.
pub fn read_flags(path: &Path, md: &Stat) -> u32 {
    open_entry(None, path, md).map_or(0, |file| read_open_flags(&file))
}

/// Flags as `lsattr` letters, for messages.
pub fn flag_letters(flags: u32) -> String {
    const LETTERS: [(u32, char); 14] = [
        (0x1, 's'),
        (0x2, 'u'),
        (0x4, 'c'),
        (0x8, 'S'),
        (0x10, 'i'),
        (0x20, 'a'),
        (0x40, 'd'),
        (0x80, 'A'),
        (0x4000, 'j'),
        (0x8000, 't'),
        (0x1_0000, 'D'),
        (0x2_0000, 'T'),
        (0x80_0000, 'C'),
        (0x2000_0000, 'P'),
    ];
    LETTERS.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, c)| *c).collect()
}

/// Give an open regular file or directory its recorded inode flags (the
/// kept ones; others it has are left as they are).
pub fn apply_flags(fd: std::os::fd::BorrowedFd, flags: u32) -> std::io::Result<()> {
    use rustix::fs::IFlags;
    let now = rustix::fs::ioctl_getflags(fd)?.bits();
    let wanted = (now & !KEPT_FLAGS) | (flags & KEPT_FLAGS);
    if wanted != now {
        rustix::fs::ioctl_setflags(fd, IFlags::from_bits_retain(wanted))?;
    }
    Ok(())
}

/// The data regions `(start, end)` of a file that has holes, or `None` when
/// the file is not sparse (then it is read as one region).
pub fn data_regions(file: &File, md: &FsMetadata) -> Option<Vec<(u64, u64)>> {
    use nix::unistd::{Whence, lseek};
    let size = md.len();
    if size == 0 || md.blocks() * 512 >= size {
        return None;
    }
    let mut regions = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let start = match lseek(file, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return None,
        };
        let end = lseek(file, start, Whence::SeekHole).ok()?;
        regions.push((start as u64, (end as u64).min(size)));
        pos = end;
    }
    Some(regions)
}

/// An attribute that could not be put back (not root, no support in the
/// target file system): said per file, the restore goes on.
pub fn unrestored(shown: &Path, name: &[u8], e: &std::io::Error) -> String {
    format!("{}: attribute {} not restored: {e}", shown.display(), String::from_utf8_lossy(name))
}

/// Set the recorded ACLs (`acls`) or every other attribute with `set`; each
/// that fails becomes a note.
fn set_xattrs(
    meta: &Metadata,
    acls: bool,
    set: impl Fn(&OsStr, &[u8]) -> std::io::Result<()>,
    shown: &Path,
    notes: &mut Vec<String>,
) {
    for (name, value) in meta.xattrs.iter().filter(|(n, _)| n.starts_with(ACL_PREFIX) == acls) {
        if let Err(e) = set(OsStr::from_bytes(name), value) {
            notes.push(unrestored(shown, name, &e));
        }
    }
}

/// Apply owner (as root only), xattrs, mode, ACLs and times to a restored
/// file or directory through its open descriptor (no path lookup can be
/// redirected). The order matters:
/// - owner first: `chown` clears setuid bits and capabilities;
/// - attributes (capabilities, labels, `user.`) before the mode: the kernel
///   refuses a `user.` attribute on a read-only file to its owner;
/// - the mode, so the file was never more open than it ends;
/// - ACLs after the mode, which would otherwise rewrite their mask;
/// - times last (inode flags, which may forbid all of this, come after the
///   whole restore: [`apply_flags`]).
///
/// Attributes that cannot be set are returned as messages, one per
/// attribute; anything else that fails is an error.
pub fn apply_to_file(file: &File, meta: &Metadata, names: &mut NameCache, shown: &Path) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    use xattr::FileExt;
    let io = |e: nix::Error| Error::io(shown, std::io::Error::from(e));
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = (Some(Uid::from_raw(names.uid_for(meta))), Some(Gid::from_raw(names.gid_for(meta))));
        fchown(file, uid, gid).map_err(io)?;
    }
    let set = |name: &OsStr, value: &[u8]| file.set_xattr(name, value);
    let mut notes = Vec::new();
    set_xattrs(meta, false, set, shown, &mut notes);
    file.set_permissions(std::fs::Permissions::from_mode(meta.mode)).map_err(|e| Error::io(shown, e))?;
    set_xattrs(meta, true, set, shown, &mut notes);
    let t = TimeSpec::new(meta.mtime.secs, meta.mtime.nanos as i64);
    futimens(file, &t, &t).map_err(io)?;
    Ok(notes)
}

/// Apply owner, xattrs, mode and times to a symlink, FIFO or device node
/// `name` in `dir`, never following it (a symlink keeps no mode of its
/// own). Attributes that cannot be set are returned as messages.
pub fn apply_to_special(
    dir: BorrowedFd,
    name: &OsStr,
    meta: &Metadata,
    is_symlink: bool,
    names: &mut NameCache,
    shown: &Path,
) -> Result<Vec<String>> {
    let io = |e: nix::Error| Error::io(shown, std::io::Error::from(e));
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = (Some(Uid::from_raw(names.uid_for(meta))), Some(Gid::from_raw(names.gid_for(meta))));
        fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io)?;
    }
    // Attributes by name through the directory's descriptor: `lsetxattr`
    // on one component, which it does not follow.
    let in_dir = Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string()).join(name);
    let set = |attr: &OsStr, value: &[u8]| xattr::set(&in_dir, attr, value);
    let mut notes = Vec::new();
    set_xattrs(meta, false, set, shown, &mut notes);
    if !is_symlink {
        // chmod has no "do not follow": change the mode through a handle on
        // the node itself (O_PATH opens it without opening the device).
        let node = nix::fcntl::openat(
            dir,
            name,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
        match nix::sys::stat::fchmodat(
            AT_FDCWD,
            proc_path.as_str(),
            Mode::from_bits_truncate(meta.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        ) {
            Ok(()) => {}
            // No /proc: the name itself (the node was just made in a
            // directory this restore created or was given).
            Err(nix::errno::Errno::ENOENT) => nix::sys::stat::fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(meta.mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(io)?,
            Err(e) => return Err(io(e)),
        }
    }
    set_xattrs(meta, true, set, shown, &mut notes);
    let t = TimeSpec::new(meta.mtime.secs, meta.mtime.nanos as i64);
    utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(io)?;
    Ok(notes)
}

/// Recreate a FIFO or device node as `name` in `dir`, mode 0600 to begin with.
pub fn make_node(dir: BorrowedFd, name: &OsStr, kind: SFlag, rdev: u64, shown: &Path) -> Result<()> {
    nix::sys::stat::mknodat(dir, name, kind, Mode::from_bits_truncate(0o600), rdev)
        .map_err(|e| Error::io(shown, std::io::Error::from(e)))
}

pub fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_file_reuses_its_parent_attributes_unless_the_parent_did_not_keep_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        xattr::set(&path, "user.kept", b"1").unwrap();
        let md = Stat::of_path(&path).unwrap();
        let mut names = NameCache::default();
        let now = read_metadata(&path, None, &md, None, &mut names);
        assert_eq!(now.xattrs, vec![(b"user.kept".to_vec(), b"1".to_vec())]);
        // Same ctime and inode: taken from the parent, not the kernel.
        let parent = Metadata { xattrs: vec![(b"user.from-parent".to_vec(), Vec::new())], ..now.clone() };
        assert_eq!(read_metadata(&path, None, &md, Some(&parent), &mut names).xattrs, parent.xattrs);
        // A parent from a format-1 tree: read again.
        let old = Metadata { flags: FLAGS_UNKNOWN, ..parent };
        let again = read_metadata(&path, None, &md, Some(&old), &mut names);
        assert_eq!((again.xattrs, again.flags & FLAGS_UNKNOWN), (now.xattrs, 0));
    }
}
