//! Trees: one directory's entries, stored as blobs themselves.
//!
//! A tree is encoded with postcard (compact and deterministic), so an
//! unchanged directory encodes to the same bytes, gets the same id and is
//! stored once. Names are raw bytes: non-UTF-8 file names survive.
//!
//! Format 2 (inode flags in [`Metadata`]) starts with [`TREE_V2`]: a zero
//! byte, which on its own is the empty format-1 tree, then `HF` and the
//! version, so no format-1 tree is mistaken for one. Format-1 trees (written
//! before flags were kept) are still read, with no flags.

use serde::{Deserialize, Serialize};

use crate::engine::crypto::Id;
use crate::error::{Error, Result};

/// A directory listing, entries sorted by name bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

/// One name in a directory and everything needed to recreate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub meta: Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub mtime: Timespec,
    /// Change time and inode: not restored, compared by the next backup to
    /// decide whether a file must be read again.
    pub ctime: Timespec,
    pub inode: u64,
    pub size: u64,
    /// Every extended attribute the backup could read, sorted by name:
    /// `user.`, `trusted.` (as root), `security.` (capabilities, SELinux
    /// labels) and POSIX ACLs (`system.posix_acl_access`/`_default`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Inode flags (`chattr`: immutable, append-only, no-dump, no-atime, …),
    /// the bits `fsmeta::KEPT_FLAGS` names.
    pub flags: u32,
}

impl Metadata {
    /// Metadata owned by root with `mode`, dated the epoch and nothing else
    /// set: for entries that stand for no file (the synthetic roots that join
    /// several backed-up paths), the same bytes from run to run.
    pub fn synthetic(mode: u32) -> Metadata {
        Metadata {
            mode,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Timespec { secs: 0, nanos: 0 },
            ctime: Timespec { secs: 0, nanos: 0 },
            inode: 0,
            size: 0,
            xattrs: Vec::new(),
            flags: 0,
        }
    }
}

/// Set in the flags of entries read from a format-1 tree: their
/// attributes were only the `user.` ones and their flags were not recorded,
/// so a backup must read both again even for an unchanged file.
pub const FLAGS_UNKNOWN: u32 = 1 << 31;

/// The first bytes of a format-2 tree.
const TREE_V2: &[u8] = b"\0HF\x02";

/// Format 1: a tree before inode flags were kept.
#[derive(Deserialize)]
struct TreeV1 {
    entries: Vec<EntryV1>,
}

#[derive(Deserialize)]
struct EntryV1 {
    name: Vec<u8>,
    kind: EntryKind,
    meta: MetadataV1,
}

#[derive(Deserialize)]
struct MetadataV1 {
    mode: u32,
    uid: u32,
    gid: u32,
    user: Option<String>,
    group: Option<String>,
    mtime: Timespec,
    ctime: Timespec,
    inode: u64,
    size: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl From<EntryV1> for Entry {
    fn from(e: EntryV1) -> Entry {
        let m = e.meta;
        let meta = Metadata {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            user: m.user,
            group: m.group,
            mtime: m.mtime,
            ctime: m.ctime,
            inode: m.inode,
            size: m.size,
            xattrs: m.xattrs,
            flags: FLAGS_UNKNOWN,
        };
        Entry { name: e.name, kind: e.kind, meta }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timespec {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File(FileContent),
    Dir { tree: Id },
    Symlink { target: Vec<u8> },
    Fifo,
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
    Socket,
}

/// A regular file's bytes as a sequence of pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    pub pieces: Vec<Piece>,
    /// Entries sharing this number were hard links to one inode.
    pub hardlink: Option<u64>,
    /// The file changed while it was read; its content may be torn.
    pub changed_while_read: bool,
}

impl FileContent {
    /// The file's length: its pieces end to end. `None` when they could not
    /// be a file (longer than `off_t` reaches, or a slice past 4 GiB), which
    /// `Tree::decode` refuses, so a decoded tree never makes a restore
    /// write for ever or index past its chunk.
    pub fn checked_len(&self) -> Option<u64> {
        let mut total = 0u64;
        for piece in &self.pieces {
            if let Piece::Slice { offset, len, .. } = piece {
                offset.checked_add(*len)?;
            }
            total = total.checked_add(piece.len())?;
        }
        (total <= i64::MAX as u64).then_some(total)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Piece {
    /// A whole chunk.
    Chunk { id: Id, len: u32 },
    /// Part of a chunk shared by several small files of one directory.
    Slice { id: Id, offset: u32, len: u32 },
    /// A hole in a sparse file: zeros that take no disk space.
    Hole { len: u64 },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Chunk { len, .. } | Piece::Slice { len, .. } => *len as u64,
            Piece::Hole { len } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn chunk(&self) -> Option<&Id> {
        match self {
            Piece::Chunk { id, .. } | Piece::Slice { id, .. } => Some(id),
            Piece::Hole { .. } => None,
        }
    }
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        postcard::to_extend(self, TREE_V2.to_vec()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Tree> {
        let damaged = |e| Error::damaged("tree", e);
        let tree: Tree = match bytes.strip_prefix(TREE_V2) {
            Some(rest) => postcard::from_bytes(rest).map_err(damaged)?,
            None => {
                let v1: TreeV1 = postcard::from_bytes(bytes).map_err(damaged)?;
                Tree { entries: v1.entries.into_iter().map(Entry::from).collect() }
            }
        };
        for e in &tree.entries {
            if let EntryKind::File(content) = &e.kind {
                content.checked_len().ok_or_else(|| Error::damaged("tree", "a file whose pieces no file can hold"))?;
            }
        }
        Ok(tree)
    }

    pub fn find(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|i| &self.entries[i])
    }
}

impl EntryKind {
    /// The type's name in listings and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::File(_) => "file",
            EntryKind::Dir { .. } => "dir",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::CharDevice { .. } => "chardev",
            EntryKind::BlockDevice { .. } => "blockdev",
            EntryKind::Socket => "socket",
        }
    }

    pub fn type_char(&self) -> char {
        match self {
            EntryKind::File(_) => '-',
            EntryKind::Dir { .. } => 'd',
            EntryKind::Symlink { .. } => 'l',
            EntryKind::Fifo => 'p',
            EntryKind::CharDevice { .. } => 'c',
            EntryKind::BlockDevice { .. } => 'b',
            EntryKind::Socket => 's',
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_meta() -> impl Strategy<Value = Metadata> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<i64>(),
            0u32..1_000_000_000,
            any::<u64>(),
            proptest::option::of("[a-z]{1,8}"),
        )
            .prop_map(|(mode, uid, secs, nanos, size, user)| Metadata {
                mode,
                uid,
                gid: uid ^ 1,
                user: user.clone(),
                group: user,
                mtime: Timespec { secs, nanos },
                ctime: Timespec { secs: secs / 2, nanos },
                inode: size ^ 7,
                size,
                xattrs: vec![(b"user.k".to_vec(), vec![0, 255, 1])],
                flags: (size as u32) & 0x10,
            })
    }

    fn arb_kind() -> impl Strategy<Value = EntryKind> {
        prop_oneof![
            proptest::collection::vec((any::<[u8; 32]>(), any::<u32>(), any::<bool>()), 0..5).prop_map(|v| {
                EntryKind::File(FileContent {
                    pieces: v
                        .into_iter()
                        .map(
                            |(id, len, hole)| {
                                if hole { Piece::Hole { len: len as u64 } } else { Piece::Chunk { id: Id(id), len } }
                            },
                        )
                        .collect(),
                    hardlink: None,
                    changed_while_read: false,
                })
            }),
            any::<[u8; 32]>().prop_map(|id| EntryKind::Dir { tree: Id(id) }),
            proptest::collection::vec(any::<u8>(), 1..50).prop_map(|target| EntryKind::Symlink { target }),
            Just(EntryKind::Fifo),
            any::<u64>().prop_map(|rdev| EntryKind::CharDevice { rdev }),
        ]
    }

    #[test]
    fn a_tree_whose_file_could_not_exist_is_damaged_not_obeyed() {
        let meta = Metadata::synthetic(0o644);
        let file = |pieces| Tree {
            entries: vec![Entry {
                name: b"f".to_vec(),
                kind: EntryKind::File(FileContent { pieces, hardlink: None, changed_while_read: false }),
                meta: meta.clone(),
            }],
        };
        let id = Id([7; 32]);
        let ok = file(vec![Piece::Hole { len: 1 << 40 }, Piece::Chunk { id, len: 5 }]);
        assert_eq!(Tree::decode(&ok.encode()).unwrap(), ok);
        for pieces in [
            vec![Piece::Hole { len: 1 << 63 }],
            vec![Piece::Hole { len: u64::MAX }, Piece::Chunk { id, len: 2 }],
            vec![Piece::Slice { id, offset: u32::MAX, len: 2 }],
        ] {
            let err = Tree::decode(&file(pieces).encode()).unwrap_err();
            assert!(err.to_string().contains("no file can hold"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn trees_round_trip(entries in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..40), arb_kind(), arb_meta()), 0..20)
        ) {
            let mut entries: Vec<Entry> = entries.into_iter().map(|(name, kind, meta)| Entry { name, kind, meta }).collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let tree = Tree { entries };
            let bytes = tree.encode();
            prop_assert_eq!(Tree::decode(&bytes).unwrap(), tree.clone());
            prop_assert_eq!(tree.encode(), bytes, "encoding is deterministic");
        }
    }
}
