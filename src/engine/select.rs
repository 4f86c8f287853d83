//! What a backup leaves out of the paths it is given.
//!
//! A whole-system backup (`/`, `/var`) must stay off other file systems when
//! asked, never read `/proc` or `/sys`, skip caches, and never back up the
//! backup itself. [`Selection`] says what to leave out; the scan asks it per
//! directory ([`Selection::contents`]) and per entry. Everything left out
//! for a reason other than a pattern is named once in the summary
//! (`left_out`), so a user can see why something is not in a snapshot.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::engine::fsmeta::{NODUMP_FLAG, Stat};

/// Glob patterns matched against absolute paths. A pattern that starts
/// with `/` (or `**`) is anchored: `/srv/*/cache` matches only there. Any
/// other pattern matches at any depth, as if it began with `**/`:
/// `node_modules` leaves out every directory of that name, `*.tmp` every
/// such file. A matching directory is left out with everything below it.
/// `*` also matches `/`.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    /// As written, with whether each ignores case.
    written: Vec<(String, bool)>,
    set: globset::GlobSet,
}

impl Patterns {
    /// Compile `patterns` (case-sensitive) and `ignore_case` patterns.
    pub fn new(patterns: &[String], ignore_case: &[String]) -> Result<Patterns, String> {
        let written: Vec<(String, bool)> =
            patterns.iter().map(|p| (p.clone(), false)).chain(ignore_case.iter().map(|p| (p.clone(), true))).collect();
        let mut b = globset::GlobSetBuilder::new();
        for (p, fold) in &written {
            // Refused rather than obeyed: an empty one (it would match every
            // path), and `cache/` (gitignore's "the directory cache"), which
            // would match nothing, or a file too.
            if p.chars().all(|c| c == '/') {
                return Err(format!("exclude pattern {p:?} would match every path"));
            }
            if p.ends_with('/') {
                return Err(format!(
                    "exclude pattern {p:?} ends in `/`: patterns match files and directories alike; write {:?}",
                    p.trim_end_matches('/')
                ));
            }
            let anchored = if p.starts_with('/') || p.starts_with("**") { p.clone() } else { format!("**/{p}") };
            let glob = globset::GlobBuilder::new(&anchored)
                .case_insensitive(*fold)
                .build()
                .map_err(|e| format!("exclude pattern {p:?}: {e}"))?;
            b.add(glob);
        }
        let set = b.build().map_err(|e| format!("exclude patterns: {e}"))?;
        Ok(Patterns { written, set })
    }

    /// Exclude patterns: like [`Patterns::new`], and none that matches
    /// every path (`*`, `**/*`, `/*`…: it would leave out everything, and
    /// the backup would still "succeed").
    pub fn excludes(patterns: &[String], ignore_case: &[String]) -> Result<Patterns, String> {
        if let Some(p) = patterns.iter().chain(ignore_case).find(|p| p.chars().all(|c| c == '*' || c == '/')) {
            return Err(format!("exclude pattern {p:?} would match every path"));
        }
        Patterns::new(patterns, ignore_case)
    }

    /// Patterns from a file: one a line; blank lines and lines starting
    /// with `#` are skipped (`--exclude-file`).
    pub fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
    }

    /// The patterns as written (case-sensitive ones).
    pub fn patterns(&self) -> Vec<&str> {
        self.written.iter().filter(|(_, fold)| !fold).map(|(p, _)| p.as_str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// Whether `path` (absolute) is excluded.
    pub fn is_match(&self, path: &Path) -> bool {
        !self.written.is_empty() && self.set.is_match(path)
    }
}

/// What a backup leaves out.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub exclude: Patterns,
    /// Do not descend into other file systems: a mount point below a
    /// source is kept as an empty directory.
    pub one_file_system: bool,
    /// Directories holding a valid `CACHEDIR.TAG` keep only the tag.
    pub exclude_caches: bool,
    /// Directories holding one of these names keep only that entry.
    pub exclude_if_present: Vec<OsString>,
    /// Files and directories with the no-dump flag (`chattr +d`) are left out.
    pub exclude_nodump: bool,
    /// holdfast's own directories (repositories, spool, state, cache,
    /// metrics), with what each is: never backed up, whatever else is set.
    /// A source that is one of them is still backed up (the dumps).
    pub internal: Vec<(String, PathBuf)>,
}

/// holdfast's own directories `internal`, and its cache where it has one:
/// what [`Selection::internal`] holds for a backup.
pub fn with_cache(mut internal: Vec<(String, PathBuf)>) -> Vec<(String, PathBuf)> {
    if let Some(cache) = crate::engine::cache::cache_root() {
        internal.push(("holdfast's cache".into(), cache));
    }
    internal
}

/// What of a directory's entries the scan reads.
#[derive(Debug, PartialEq, Eq)]
pub enum Contents {
    All,
    /// Only this entry (a cache tag or an exclusion marker).
    Only(Vec<u8>),
    /// Nothing: the directory is kept empty.
    Nothing,
}

/// Why a no-dump entry is left out.
pub const NODUMP_REASON: &str = "no-dump flag (exclude_nodump)";

/// The signature that makes a `CACHEDIR.TAG` valid
/// (<https://bford.info/cachedir/>).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// File systems that hold no data worth keeping and may hang or mislead a
/// reader (`/proc/kcore`): never entered, whatever `one_file_system` says.
/// Their `statfs` magic numbers, with names for the summary.
const PSEUDO_FILE_SYSTEMS: [(i64, &str); 12] = [
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x1cd1, "devpts"),
    (0x2762_3146, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0xcafe_4a11, "bpf"),
    (0x6e73_6673, "nsfs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6573_5546, "fusectl"),
];

/// The selection as the scan applies it: holdfast's own directories by
/// device and inode (a path reached through a symlink is still found).
pub(crate) struct Selector<'a> {
    pub selection: &'a Selection,
    internal: HashMap<(u64, u64), String>,
}

impl<'a> Selector<'a> {
    pub fn new(selection: &'a Selection) -> Self {
        let internal = selection
            .internal
            .iter()
            .filter_map(|(what, path)| {
                let md = std::fs::metadata(path).ok()?;
                Some(((md.dev(), md.ino()), what.clone()))
            })
            .collect();
        Selector { selection, internal }
    }

    /// Why an entry (not a source) whose `lstat` is `md` is left out with
    /// everything below it as one of holdfast's own directories.
    pub fn own(&self, md: &Stat) -> Option<String> {
        let what = self.internal.get(&(md.dev, md.ino)).filter(|_| md.is_dir())?;
        Some(format!("{what}, holdfast's own: never backed up"))
    }

    /// Why an entry below a source (lstat `md`, inode flags `flags`) is
    /// left out with everything below it, if it is: one of holdfast's own
    /// directories, or the no-dump flag when asked.
    pub fn leaves_out(&self, md: &Stat, flags: u32) -> Option<String> {
        if let Some(why) = self.own(md) {
            return Some(why);
        }
        (self.selection.exclude_nodump && flags & NODUMP_FLAG != 0).then(|| NODUMP_REASON.to_string())
    }

    /// What to read of directory `path` (lstat `md`, in a directory on
    /// device `parent_dev`; `source_dev` is its source's device), and why
    /// less than all of it (without the path).
    pub fn contents(&self, path: &Path, md: &Stat, parent_dev: u64, source_dev: u64) -> (Contents, String) {
        if md.dev != parent_dev
            && let Some(name) = pseudo_file_system(path)
        {
            return (Contents::Nothing, format!("{name} file system, never backed up"));
        }
        if self.selection.one_file_system && md.dev != source_dev {
            return (Contents::Nothing, "another file system (one_file_system)".into());
        }
        let s = self.selection;
        if s.exclude_caches && has_cache_tag(path) {
            return (Contents::Only(b"CACHEDIR.TAG".to_vec()), "cache directory (CACHEDIR.TAG)".into());
        }
        for marker in &s.exclude_if_present {
            if std::fs::symlink_metadata(path.join(marker)).is_ok() {
                let shown = marker.to_string_lossy();
                return (Contents::Only(marker.as_bytes().to_vec()), format!("holds {shown}"));
            }
        }
        (Contents::All, String::new())
    }
}

/// The mount points strictly below `path`, with their file system types,
/// from `/proc/self/mountinfo` (what `validate` shows a file set crosses).
pub fn mounts_below(path: &Path) -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, String)> = text
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let at = PathBuf::from(unescape_mount_path(left.split(' ').nth(4)?));
            let kind = right.split(' ').next()?.to_string();
            (at != path && at.starts_with(path)).then_some((at, kind))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a file system type is one of the pseudo file systems a backup
/// never enters.
pub fn is_pseudo(kind: &str) -> bool {
    PSEUDO_FILE_SYSTEMS.iter().any(|(_, name)| *name == kind)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name of the pseudo file system mounted at `path`, if it is one.
fn pseudo_file_system(path: &Path) -> Option<&'static str> {
    let fs = rustix::fs::statfs(path).ok()?;
    let magic = fs.f_type as i64;
    PSEUDO_FILE_SYSTEMS.iter().find(|(m, _)| *m == magic).map(|(_, name)| *name)
}

/// Whether `dir` holds a `CACHEDIR.TAG` that starts with the signature.
fn has_cache_tag(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    // Never follow a link, never wait on a FIFO.
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let open = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits()).open(dir.join("CACHEDIR.TAG"));
    let Ok(mut f) = open else { return false };
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    f.read_exact(&mut head).is_ok() && head == CACHEDIR_SIGNATURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanchored_patterns_match_at_any_depth_anchored_ones_only_there() {
        let p =
            Patterns::new(&["node_modules".into(), "/srv/*/tmp".into(), "*.log".into()], &["*.ISO".into()]).unwrap();
        assert!(p.is_match(Path::new("/srv/app/node_modules")));
        assert!(p.is_match(Path::new("/node_modules")));
        assert!(!p.is_match(Path::new("/srv/app/node_modules_old")));
        assert!(p.is_match(Path::new("/srv/app/tmp")));
        assert!(!p.is_match(Path::new("/home/srv/app/tmp")));
        assert!(p.is_match(Path::new("/var/log/x/syslog.log")));
        assert!(p.is_match(Path::new("/home/a/disk.iso")) && p.is_match(Path::new("/home/a/DISK.Iso")));
        assert!(!p.is_match(Path::new("/home/a/disk.img")));
        assert!(!Patterns::default().is_match(Path::new("/x")));
    }

    #[test]
    fn pattern_files_skip_comments_and_blank_lines() {
        let lines = Patterns::lines("# caches\n\n  *.tmp  \n/srv/x\n   # indented comment\n");
        assert_eq!(lines, vec!["*.tmp".to_string(), "/srv/x".to_string()]);
    }

    #[test]
    fn mount_paths_with_spaces_are_unescaped() {
        assert_eq!(unescape_mount_path("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert!(mounts_below(Path::new("/")).iter().any(|(at, kind)| at == Path::new("/proc") && kind == "proc"));
    }

    #[test]
    fn patterns_that_match_everything_or_end_in_a_slash_are_refused() {
        for all in ["", "/", "//", "*", "**", "*/", "**/", "/*", "**/*"] {
            let e = Patterns::excludes(&["*.tmp".into()], &[all.into()]).unwrap_err();
            assert!(e.contains("match every path"), "{all:?}: {e}");
        }
        let e = Patterns::new(&["cache/".into()], &[]).unwrap_err();
        assert!(e.contains("write \"cache\""), "{e}");
        assert!(Patterns::excludes(&["*.log".into(), "/srv/*/tmp".into(), "**/cache/**".into()], &[]).is_ok());
        assert!(Patterns::new(&["*".into()], &[]).is_ok(), "`find '*'` lists everything");
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let e = Patterns::new(&["a[".into()], &[]).unwrap_err();
        assert!(e.contains("a["), "{e}");
    }
}
