//! The repository engine: chunking, encryption, packs, index, trees,
//! snapshots, and the backup, restore and check operations over them.
//!
//! The engine knows nothing about jobs, databases or hooks; it backs up paths
//! and stores whatever opaque metadata its caller hands it.

pub mod backend;
pub mod backup;
pub mod beneath;
pub mod cache;
pub mod check;
pub mod chunker;
pub mod copy;
pub mod crypto;
#[cfg(test)]
mod decoder_fuzz;
pub(crate) mod early_reads;
pub mod file_cache;
pub mod fsmeta;
pub mod gc;
pub mod index;
pub mod index_cache;
pub mod keyfile;
pub mod pack;
pub mod parallel;
pub mod progress;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod running;
pub mod select;
pub mod snapshot;
pub mod tree;
