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

use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, futimens, mknod, utimensat};
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

/// Apply owner (as root only), xattrs, mode and times to a restored path,
/// through `open` when the caller holds the file open (no path lookups).
/// Owner first: `chown` clears setuid bits and capabilities. Xattrs before
/// the mode: the kernel refuses them on a read-only file to its owner.
pub fn apply_metadata(
    path: &Path,
    open: Option<&File>,
    meta: &Metadata,
    is_symlink: bool,
    names: &mut NameCache,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use xattr::FileExt;
    let io = |e: nix::Error| Error::io(path, std::io::Error::from(e));
    if nix::unistd::geteuid().is_root() {
        let (uid, gid) = (Some(Uid::from_raw(names.uid_for(meta))), Some(Gid::from_raw(names.gid_for(meta))));
        match open {
            Some(f) => fchown(f, uid, gid),
            None => fchownat(AT_FDCWD, path, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW),
        }
        .map_err(io)?;
    }
    if !is_symlink {
        for (name, value) in &meta.xattrs {
            let name = OsStr::from_bytes(name);
            match open {
                Some(f) => f.set_xattr(name, value),
                None => xattr::set(path, name, value),
            }
            .map_err(|e| Error::io(path, e))?;
        }
        let mode = std::fs::Permissions::from_mode(meta.mode);
        match open {
            Some(f) => f.set_permissions(mode),
            None => std::fs::set_permissions(path, mode),
        }
        .map_err(|e| Error::io(path, e))?;
    }
    let t = TimeSpec::new(meta.mtime.secs, meta.mtime.nanos as i64);
    match open {
        Some(f) => futimens(f, &t, &t),
        None => utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink),
    }
    .map_err(io)
}

/// Recreate a FIFO or device node.
pub fn make_node(path: &Path, kind: SFlag, rdev: u64) -> Result<()> {
    mknod(path, kind, Mode::from_bits_truncate(0o600), rdev).map_err(|e| Error::io(path, std::io::Error::from(e)))
}

pub fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}
