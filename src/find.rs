//! `find`: every snapshot that holds a path matching a pattern, grouped by
//! path, newest first; and the database dumps whose database matches.
//!
//! A long history shares most of its trees (an unchanged directory keeps its
//! tree id), so the search reads each distinct directory — a tree id at a
//! path — once for all snapshots, a level at a time
//! ([`Repository::walk_trees`]), and remembers which directories lead to a
//! match. Each snapshot's hits are then gathered in memory by following only
//! the directories that lead somewhere.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::engine::crypto::Id;
use crate::engine::repository::Repository;
use crate::engine::select::Patterns;
use crate::engine::snapshot::Snapshot;
use crate::engine::tree::EntryKind;
use crate::listing::ListEntry;
use crate::record::RunRecord;

/// What to look for.
pub struct FindQuery {
    /// Globs as `exclude` patterns read them: one with a leading `/` is
    /// anchored at the root; any other matches at any depth (`notes.txt`,
    /// `*.sql`, `mail/cur/*`).
    pub patterns: Patterns,
    /// Only paths at or below one of these (all when empty).
    pub under: Vec<PathBuf>,
}

/// The answer: matching paths and database dumps, each with the snapshots
/// holding them, newest first. A version is two numbers (which snapshot,
/// which entry), so `find '*'` over a long history stays small; the JSON
/// form spells each one out as it is written.
#[derive(Debug)]
pub struct Found {
    pub paths: Vec<FoundPath>,
    pub databases: Vec<FoundDatabase>,
    pub snapshots_searched: usize,
    /// Distinct directories read for the whole search.
    pub directories_read: usize,
    snapshots: Vec<(Id, jiff::Timestamp)>,
    entries: Vec<ListEntry>,
}

/// A matching path: its versions as (snapshot, entry) numbers, newest first.
#[derive(Debug)]
pub struct FoundPath {
    pub path_bytes: Vec<u8>,
    versions: Vec<(u32, u32)>,
}

/// One snapshot's entry at a found path.
#[derive(Debug, Serialize)]
pub struct FoundVersion<'a> {
    pub snapshot: String,
    pub short_id: String,
    pub time: jiff::Timestamp,
    pub entry: &'a ListEntry,
}

impl Found {
    /// The versions of `path`, newest first.
    pub fn versions<'a>(&'a self, path: &'a FoundPath) -> impl Iterator<Item = FoundVersion<'a>> + 'a {
        path.versions.iter().map(|(s, e)| {
            let (id, time) = &self.snapshots[*s as usize];
            FoundVersion { snapshot: id.to_hex(), short_id: id.short(), time: *time, entry: &self.entries[*e as usize] }
        })
    }
}

impl Serialize for Found {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};
        struct Paths<'a>(&'a Found);
        struct OnePath<'a>(&'a Found, &'a FoundPath);
        impl Serialize for Paths<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.paths.len()))?;
                for p in &self.0.paths {
                    seq.serialize_element(&OnePath(self.0, p))?;
                }
                seq.end()
            }
        }
        impl Serialize for OnePath<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let Some((_, first)) = self.1.versions.first() else { return serializer.serialize_none() };
                let first = &self.0.entries[*first as usize];
                let mut st = serializer.serialize_struct("FoundPath", 3)?;
                st.serialize_field("path", &first.path)?;
                if let Some(b64) = &first.path_base64 {
                    st.serialize_field("path_base64", b64)?;
                }
                st.serialize_field("versions", &self.0.versions(self.1).collect::<Vec<_>>())?;
                st.end()
            }
        }
        let mut st = serializer.serialize_struct("Found", 4)?;
        st.serialize_field("paths", &Paths(self))?;
        st.serialize_field("databases", &self.databases)?;
        st.serialize_field("snapshots_searched", &self.snapshots_searched)?;
        st.serialize_field("directories_read", &self.directories_read)?;
        st.end()
    }
}

/// A database whose name (or entry) matched, with the dumps of it.
#[derive(Debug, Serialize)]
pub struct FoundDatabase {
    pub job: String,
    pub entry: String,
    pub kind: String,
    pub name: String,
    pub versions: Vec<FoundDump>,
}

#[derive(Debug, Serialize)]
pub struct FoundDump {
    pub snapshot: String,
    pub short_id: String,
    pub time: jiff::Timestamp,
    /// The dump's path inside the snapshot.
    pub file: String,
    pub size: u64,
}

/// A directory as the search met it: a tree id at a path.
struct Dir {
    children: Vec<usize>,
    /// Indexes into the matched entries.
    hits: Vec<usize>,
    /// This directory or one below it has a hit.
    leads_to_hit: bool,
}

/// Search `snapshots` (oldest first, as [`Repository::snapshots`] gives them).
pub fn find(repo: &Repository, snapshots: &[(Id, Snapshot)], query: &FindQuery) -> Result<Found> {
    let (index, _) = repo.load_index()?;
    let under: Vec<PathBuf> = query.under.iter().map(|u| Path::new("/").join(u)).collect();
    let mut dirs: Vec<Dir> = Vec::new();
    let mut seen: HashMap<(Id, PathBuf), usize> = HashMap::new();
    let mut hits: Vec<ListEntry> = Vec::new();
    let mut roots = Vec::new();
    let mut walk_roots = Vec::new();
    for (_, s) in snapshots {
        let key = (s.root, PathBuf::from("/"));
        let n = *seen.entry(key).or_insert_with(|| {
            dirs.push(Dir { children: Vec::new(), hits: Vec::new(), leads_to_hit: false });
            walk_roots.push((s.root, (dirs.len() - 1, PathBuf::from("/"))));
            dirs.len() - 1
        });
        roots.push(n);
    }
    repo.walk_trees(&index, walk_roots, |_, tree, (n, dir)| {
        let mut next = Vec::new();
        for e in &tree.entries {
            let path = dir.join(OsStr::from_bytes(&e.name));
            let below = under.is_empty() || under.iter().any(|u| path.starts_with(u));
            if below && query.patterns.is_match(&path) {
                dirs[n].hits.push(hits.len());
                hits.push(ListEntry::new(&path, e));
            }
            let EntryKind::Dir { tree } = &e.kind else { continue };
            if !below && !under.iter().any(|u| u.starts_with(&path)) {
                continue;
            }
            let key = (*tree, path);
            let child = match seen.get(&key) {
                Some(c) => *c,
                None => {
                    dirs.push(Dir { children: Vec::new(), hits: Vec::new(), leads_to_hit: false });
                    let c = dirs.len() - 1;
                    next.push((*tree, (c, key.1.clone())));
                    seen.insert(key, c);
                    c
                }
            };
            dirs[n].children.push(child);
        }
        Ok(next)
    })?;
    // A directory is met before any directory below it, so one pass from
    // the deepest up settles which lead to a hit.
    for n in (0..dirs.len()).rev() {
        let leads = !dirs[n].hits.is_empty() || dirs[n].children.iter().any(|c| dirs[*c].leads_to_hit);
        dirs[n].leads_to_hit = leads;
    }
    // Versions per path: a path's number, given when an entry first has it.
    let mut path_numbers: HashMap<&[u8], usize> = HashMap::new();
    let hit_paths: Vec<usize> = hits
        .iter()
        .map(|e| {
            let next = path_numbers.len();
            *path_numbers.entry(e.path_bytes.as_slice()).or_insert(next)
        })
        .collect();
    let mut versions: Vec<Vec<(u32, u32)>> = vec![Vec::new(); path_numbers.len()];
    for (s, root) in roots.iter().enumerate().rev() {
        let mut stack = vec![*root];
        while let Some(n) = stack.pop() {
            let dir = &dirs[n];
            for h in &dir.hits {
                versions[hit_paths[*h]].push((s as u32, *h as u32));
            }
            stack.extend(dir.children.iter().filter(|c| dirs[**c].leads_to_hit));
        }
    }
    let mut paths: Vec<FoundPath> = path_numbers
        .into_iter()
        .map(|(bytes, n)| FoundPath { path_bytes: bytes.to_vec(), versions: std::mem::take(&mut versions[n]) })
        .filter(|p| !p.versions.is_empty())
        .collect();
    paths.sort_by(|a, b| a.path_bytes.cmp(&b.path_bytes));
    Ok(Found {
        paths,
        databases: find_databases(snapshots, &query.patterns),
        snapshots_searched: snapshots.len(),
        directories_read: dirs.len(),
        snapshots: snapshots.iter().map(|(id, s)| (*id, s.time)).collect(),
        entries: hits,
    })
}

/// Dumps whose database name or entry name matches, from the run records
/// (no tree is read for them).
fn find_databases(snapshots: &[(Id, Snapshot)], patterns: &Patterns) -> Vec<FoundDatabase> {
    let mut found: BTreeMap<(String, String, String), FoundDatabase> = BTreeMap::new();
    for (id, s) in snapshots.iter().rev() {
        let Some(record) = RunRecord::of(s) else { continue };
        for d in &record.databases {
            let matches = |name: &str| patterns.is_match(&Path::new("/").join(name));
            if !matches(&d.name) && !matches(&d.entry) {
                continue;
            }
            let key = (record.job.clone(), d.entry.clone(), d.name.clone());
            let db = found.entry(key).or_insert_with(|| FoundDatabase {
                job: record.job.clone(),
                entry: d.entry.clone(),
                kind: d.kind.as_str().to_string(),
                name: d.name.clone(),
                versions: Vec::new(),
            });
            db.versions.push(FoundDump {
                snapshot: id.to_hex(),
                short_id: id.short(),
                time: s.time,
                file: d.file.clone(),
                size: d.size,
            });
        }
    }
    found.into_values().collect()
}
