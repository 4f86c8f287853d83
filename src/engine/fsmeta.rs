//! Reading and applying file metadata: modes, owners, times, xattrs, holes.
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

use crate::engine::tree::{Metadata, Timespec};
use crate::error::{Error, Result};

/// Only this namespace is backed up: `security.` and `trusted.` need
/// privileges and belong to the system, not to the data.
const XATTR_PREFIX: &[u8] = b"user.";

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

/// The metadata to record for `path`, whose `lstat` result is `md`.
///
/// `prev` is the same path's entry in the parent snapshot: when its ctime and
/// inode are unchanged its xattrs are too (setting one changes the ctime), so
/// they are taken from there instead of asking the kernel again.
pub fn read_metadata(path: &Path, md: &FsMetadata, prev: Option<&Metadata>, names: &mut NameCache) -> Metadata {
    let ctime = Timespec { secs: md.ctime(), nanos: md.ctime_nsec() as u32 };
    let xattrs = match prev {
        Some(p) if p.ctime == ctime && p.inode == md.ino() => p.xattrs.clone(),
        _ => read_xattrs(path),
    };
    Metadata {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        user: names.user(md.uid()),
        group: names.group(md.gid()),
        mtime: Timespec { secs: md.mtime(), nanos: md.mtime_nsec() as u32 },
        ctime,
        inode: md.ino(),
        size: if md.is_file() { md.len() } else { 0 },
        xattrs,
    }
}

fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .filter(|n| n.as_bytes().starts_with(XATTR_PREFIX))
        .filter_map(|n| {
            let value = xattr::get(path, &n).ok().flatten()?;
            Some((n.as_bytes().to_vec(), value))
        })
        .collect();
    out.sort();
    out
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

/// Apply owner (as root only), xattrs, mode and times to a restored file or
/// directory through its open descriptor (no path lookup can be redirected).
/// Owner first: `chown` clears setuid bits and capabilities. Xattrs before
/// the mode: the kernel refuses them on a read-only file to its owner. The
/// mode comes last but one, so the file was never more open than it ends.
pub fn apply_to_file(file: &File, meta: &Metadata, names: &mut NameCache, shown: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use xattr::FileExt;
    let io = |e: nix::Error| Error::io(shown, std::io::Error::from(e));
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = (Some(Uid::from_raw(names.uid_for(meta))), Some(Gid::from_raw(names.gid_for(meta))));
        fchown(file, uid, gid).map_err(io)?;
    }
    for (name, value) in &meta.xattrs {
        file.set_xattr(OsStr::from_bytes(name), value).map_err(|e| Error::io(shown, e))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(meta.mode)).map_err(|e| Error::io(shown, e))?;
    let t = TimeSpec::new(meta.mtime.secs, meta.mtime.nanos as i64);
    futimens(file, &t, &t).map_err(io)
}

/// Apply owner, mode and times to a symlink, FIFO or device node `name` in
/// `dir`, never following it (a symlink keeps no mode of its own; special
/// files take no `user.` xattrs).
pub fn apply_to_special(
    dir: BorrowedFd,
    name: &OsStr,
    meta: &Metadata,
    is_symlink: bool,
    names: &mut NameCache,
    shown: &Path,
) -> Result<()> {
    let io = |e: nix::Error| Error::io(shown, std::io::Error::from(e));
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = (Some(Uid::from_raw(names.uid_for(meta))), Some(Gid::from_raw(names.gid_for(meta))));
        fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io)?;
    }
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
    let t = TimeSpec::new(meta.mtime.secs, meta.mtime.nanos as i64);
    utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(io)
}

/// Recreate a FIFO or device node as `name` in `dir`, mode 0600 to begin with.
pub fn make_node(dir: BorrowedFd, name: &OsStr, kind: SFlag, rdev: u64, shown: &Path) -> Result<()> {
    nix::sys::stat::mknodat(dir, name, kind, Mode::from_bits_truncate(0o600), rdev)
        .map_err(|e| Error::io(shown, std::io::Error::from(e)))
}

pub fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}
