//! `holdfast mount MOUNTPOINT`: browse snapshots as read-only directories
//! (FUSE) until SIGINT/SIGTERM or `umount`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::{Context, FilterArgs};
use crate::exit::Exit;
use crate::mount::SnapshotFs;

pub const EXAMPLES: &str = "\
The mount shows:
  latest -> by-id/<newest>            the newest snapshot
  by-id/<id>/...                      every snapshot by its short id
  by-time/<time>/...                  every snapshot by time
  by-job/<job>/<time>/..., latest     each job's snapshots; dumps are under
                                      .holdfast/databases/ in each
It stays mounted until Ctrl-C, SIGTERM or `umount MOUNTPOINT`.

Examples:
  holdfast mount /mnt/backup &
  cp -a /mnt/backup/by-job/shop/latest/srv/shop/uploads /srv/shop/
  diff -r /mnt/backup/latest/etc /etc
  holdfast mount --job shop /mnt/shop                 only the shop job";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Let other users than the one mounting in (needs `user_allow_other`
    /// in /etc/fuse.conf for users other than root); permissions are still
    /// checked against the backed-up modes.
    #[arg(long)]
    pub allow_other: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

pub fn run(args: &Args, ctx: &Context) -> Result<Exit> {
    let meta = std::fs::metadata(&args.mountpoint)
        .map_err(|e| anyhow::anyhow!("mount point {}: {e}{}", args.mountpoint.display(), dead_mount_hint(&e, args)))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", args.mountpoint.display());
    }
    // Say plainly when FUSE is missing, before opening the repository.
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").map_err(|e| {
        anyhow::anyhow!(
            "FUSE is not available here (/dev/fuse: {e}): load the module (`modprobe fuse`), \
             install fuse3, or in a container pass the device (--device /dev/fuse)"
        )
    })?;
    let repo = ctx.open_for_job(args.filter.job.as_deref())?;
    let snapshots = ctx.snapshots(&repo, &args.filter.filter())?;
    let (index, _) = repo.load_index()?;
    let fs = SnapshotFs::new(repo, index, &snapshots);
    let mut options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("holdfast".into()),
        fuser::MountOption::Subtype("holdfast".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if args.allow_other {
        options.push(fuser::MountOption::AllowOther);
    }
    let mut session = fuser::Session::new(fs, &args.mountpoint, &options)
        .map_err(|e| anyhow::anyhow!("mounting at {}: {e}{}", args.mountpoint.display(), dead_mount_hint(&e, args)))?;
    let mut unmount = session.unmount_callable();
    let serving = std::thread::spawn(move || session.run());
    eprintln!(
        "{} snapshot(s) mounted at {}; Ctrl-C, SIGTERM or `umount` ends it",
        snapshots.len(),
        args.mountpoint.display()
    );
    let flag = ctx.interrupt.flag().clone();
    while !serving.is_finished() && !flag.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !serving.is_finished() {
        unmount.unmount().context("unmounting")?;
        if !finishes_within(&serving, Duration::from_secs(1)) {
            // Busy (a shell in it, a file open): detach it from the tree
            // now; the kernel ends the connection when holdfast exits.
            nix::mount::umount2(&args.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", args.mountpoint.display()))?;
            if !finishes_within(&serving, Duration::from_secs(1)) {
                eprintln!(
                    "unmounted {} (it was busy: what still had files open there now gets errors)",
                    args.mountpoint.display()
                );
                return Ok(Exit::Success);
            }
        }
    }
    match serving.join() {
        Ok(result) => result.context("serving the mount")?,
        Err(_) => bail!("the mount's thread panicked"),
    }
    eprintln!("unmounted {}", args.mountpoint.display());
    Ok(Exit::Success)
}

/// Whether `thread` ends within `limit`.
fn finishes_within<T>(thread: &std::thread::JoinHandle<T>, limit: Duration) -> bool {
    let started = std::time::Instant::now();
    while !thread.is_finished() {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// What to do about a mount point whose earlier mount died with its server.
fn dead_mount_hint(e: &std::io::Error, args: &Args) -> String {
    if e.raw_os_error() == Some(nix::libc::ENOTCONN) {
        format!(" (a mount there died with its server; `umount -l {}` clears it)", args.mountpoint.display())
    } else {
        String::new()
    }
}
