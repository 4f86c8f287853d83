//! Decoder fuzzing: every parser of bytes that come from outside the
//! process, fed hostile input in every `cargo test`.
//!
//! The decoders, one `#[test]` each (the corpus directory is in brackets):
//!
//! - a whole pack file: name check, trailer, header length, sealed header
//!   (`pack::read_header`) [`pack`]; and the header's blob list behind
//!   authentication [`pack_header`];
//! - a repository file: cleartext header and sealed payload
//!   (`repository::open_file`) [`repo_file`];
//! - the sealed-object layer (`Keys::open`) on garbage, and on authentic
//!   bodies whose compression flag and zstd frame are hostile [`sealed`];
//! - trees (`Tree::decode`), index files (postcard `IndexFile`, then the
//!   in-memory `Index` and the read planner built on it), snapshots (JSON)
//!   [`tree`, `index`, `snapshot`];
//! - key files (`KeyFile::from_json`, the JSON and paper round trips, and
//!   `unlock` when its argon2 cost is tiny) and paper keys
//!   (`KeyFile::from_paper`) [`key_file`, `paper_key`];
//! - the repository marker and the sealed repository config, through
//!   `Repository::open` on a throwaway local repository whose key file has a
//!   tiny argon2 cost; an opened repository's chunker and compression level
//!   are then used once, as a backup would [`marker`, `repo_config`];
//! - the job config (`Config::from_text`) [`config_toml`];
//! - `holdfast serve`'s request stream (frames, postcard requests, names
//!   and ranges), served into a throwaway repository directory: nothing may
//!   appear outside it [`serve_request`].
//!
//! Each test (1) replays every file of `tests/corpus/<decoder>/`, then (2)
//! runs a seeded mutation loop over the corpus and fresh encodings made by the
//! real encoders: bit flips, byte inserts and deletes, truncation, splices of
//! two inputs, runs of repeated bytes, duplicated ranges, length fields
//! (postcard varints, little-endian u32/u64, decimal numbers) set to huge
//! values, dictionary tokens, and whole-line edits for the text formats; the
//! JSON and TOML targets also get structure-aware mutants (a node replaced by
//! an odd value of the same or another type, a key renamed or dropped, an
//! unknown key added), which stay well-formed and so reach the typed decoding
//! behind the parser; the zstd layer gets frames whose declared content size
//! is forged. A mutant joins the pool of inputs to mutate further when its
//! outcome is new (a new decoded value, or a new kind of error): a cheap
//! stand-in for coverage guidance. The
//! decoders behind authentication (tree, index, snapshot, pack header, repo
//! config, the zstd layer) get *authentic* hostile bytes: the plaintext is
//! mutated, then sealed properly with a test key, as a writer holding the key
//! (or a bug in holdfast itself) would.
//!
//! Every case must:
//! - not panic (`catch_unwind` around each case);
//! - stay within a memory budget (a counting global allocator of this test
//!   binary measures each case's peak of live bytes, on its own thread): a
//!   length prefix claiming 4 GiB must not allocate it. Above 1.5 GiB the
//!   allocator refuses, after the watchdog has saved the input;
//! - finish quickly (a case over 5 s fails; a watchdog thread saves a case
//!   stuck for 60 s and aborts the test binary, since a thread cannot be
//!   killed);
//! - return an error, or a value that re-encodes consistently (decode,
//!   encode, decode gives the same value; JSON and paper key round trips
//!   keep every field), plus decoder-specific rules (a pack is never
//!   accepted under a name that is not its hash; a right passphrase never
//!   turns into "wrong passphrase" because some other file is damaged; the
//!   read planner covers each blob once and within its read; an opened
//!   repository's config names the marker's repository).
//!
//! A failing case is shrunk (chunks removed while it still fails the same
//! way) and saved as `tests/corpus/<decoder>/crash-<hash>`, so it is
//! replayed by every later run; the test then fails, listing each failure.
//!
//! Corpus file names say what is expected of them: `ok-*` must decode (so the
//! corpus is also a format-compatibility check: a change that stops old
//! files from decoding fails here), `bad-*` must be refused, and `edge-*`
//! and `crash-*` must just be handled (no panic, bounded). The `ok-`, `bad-`
//! and `edge-` files are written by the ignored test `write_seed_corpus`
//! (`cargo test --lib decoder_fuzz::write_seed_corpus -- --ignored`), which
//! never touches `crash-*` files. Sealed corpus files are sealed with the
//! test master key below.
//!
//! Knobs: `HOLDFAST_FUZZ_CASES=N` mutated cases per decoder (default 2000:
//! the whole module takes about 3 s in a debug build, most of it in the two
//! targets that open a real repository per case); `HOLDFAST_FUZZ_SEED=S`
//! the seed (default: fixed, so CI is deterministic; with
//! `HOLDFAST_FUZZ_CASES` set and no seed, a new seed each run, printed on
//! failure with `--nocapture`). A long local run (about 4 minutes on 2
//! cores): `HOLDFAST_FUZZ_CASES=100000 cargo test --offline --lib
//! decoder_fuzz -- --nocapture`.
//!
//! Why this rather than cargo-fuzz. A nightly toolchain is installed here,
//! but neither the `cargo-fuzz` tool nor the `libfuzzer-sys` crate is, and
//! the project's CI installs neither; a fuzz build compiles the whole
//! dependency tree again with sanitizer and coverage instrumentation
//! (rusqlite's bundled SQLite, ring, tokio, object_store...), minutes of
//! both CPUs for a bounded check that takes seconds here; its targets, in a
//! crate of their own, could not reach the crate-private
//! `open_file`/`seal_file`, nor a global allocator that measures one case's
//! memory; and a libFuzzer run is open-ended, not the deterministic pass/fail
//! `cargo test` needs. These decoders are serde front ends (postcard, JSON,
//! TOML) and short hand-written parsers (pack trailer, repository file
//! header, paper key) whose branches a byte mutator with format-aware
//! generators reaches; the authenticated ones are reached only by sealing
//! mutated plaintext, which a coverage guide would not find by itself. So
//! there is no `fuzz/` directory: the long mode above is the local long run,
//! and coverage guidance is left out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::config::Config;
use crate::engine::backend::{Dir, Location};
use crate::engine::chunker::ChunkerParams;
use crate::engine::crypto::{FORMAT_VERSION, Id, Keys, MasterKey, ObjectKind, wrap_key};
use crate::engine::index::{Index, IndexFile};
use crate::engine::keyfile::{KdfParams, KeyFile};
use crate::engine::pack::IndexedPack;
use crate::engine::pack::{PackBlob, PackWriter, read_header};
use crate::engine::repository::{RepoConfig, Repository, open_file, plan_pack_reads, seal_file, sealed_blobs};
use crate::engine::snapshot::{Repaired, Snapshot, Summary};
use crate::engine::tree::{Entry, EntryKind, FileContent, Metadata, Piece, Timespec, Tree};
use crate::error::Error;

// ------------------------------------------------------------------ knobs

const DEFAULT_CASES: usize = 2000;
/// Mutants are cut to this size.
const MAX_INPUT: usize = 256 << 10;
/// A case slower than this fails (the decoders take microseconds).
const SLOW_CASE: Duration = Duration::from_secs(5);
/// A case stuck this long is saved and the test binary aborted.
const HUNG_CASE: Duration = Duration::from_secs(60);
/// Live bytes one case may hold before the allocator refuses (and the
/// binary aborts, after the watchdog saved the input).
const HARD_CAP: i64 = 1536 << 20;
/// Base of every case's memory budget (a case also gets a multiple of its
/// input's length, see [`Target::per_byte`]).
const BUDGET_BASE: i64 = 32 << 20;
/// The largest plaintext `Keys::open` accepts a zstd frame's claim for
/// (`crypto::MAX_PLAINTEXT`): it reserves that much before decompressing.
const MAX_PLAINTEXT: u64 = 1 << 30;
/// At most this many mutated inputs are kept as bases for more mutation.
const POOL_MAX: usize = 512;
/// Runs of a repeated byte go up to this long.
const MAX_REPEAT: usize = 64 << 10;

fn cases() -> usize {
    std::env::var("HOLDFAST_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES)
}

fn seed_for(decoder: &str) -> u64 {
    let base = match std::env::var("HOLDFAST_FUZZ_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| u64::from_le_bytes(blake3::hash(s.as_bytes()).as_bytes()[..8].try_into().unwrap())),
        Err(_) if std::env::var_os("HOLDFAST_FUZZ_CASES").is_some() => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
        Err(_) => 0x686f_6c64_6661_7374,
    };
    base ^ u64::from_le_bytes(blake3::hash(decoder.as_bytes()).as_bytes()[..8].try_into().unwrap())
}

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

// ----------------------------------------------------- memory accounting

/// The global allocator of the lib test binary: the system allocator, with
/// a count of live bytes for the thread running a fuzz case (other threads
/// and other tests only pay one thread-local read per allocation).
/// Allocations made by C code (zstd's own buffers) are not seen.
struct Accounting;

#[global_allocator]
static ALLOCATOR: Accounting = Accounting;

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    /// The watchdog of the case running on this thread (null when none).
    static WATCH: Cell<*const WatchState> = const { Cell::new(std::ptr::null()) };
}

/// Count `delta` bytes for this thread's case; false when that would put it
/// over [`HARD_CAP`] (the caller then refuses the allocation). Allocates
/// nothing.
fn account(delta: i64) -> bool {
    TRACKED
        .try_with(|tracked| {
            if !tracked.get() {
                return true;
            }
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
            if live <= HARD_CAP {
                return true;
            }
            tracked.set(false);
            let watch = WATCH.with(Cell::get);
            if !watch.is_null() {
                // SAFETY: set by `Watchdog::start` on this thread to a state
                // its `Arc` keeps alive until `Watchdog::drop` clears it.
                unsafe { (*watch).over_cap() };
            }
            false
        })
        .unwrap_or(true)
}

// SAFETY: every call goes to `System` with the caller's arguments; the
// accounting only reads and writes thread-local cells.
unsafe impl GlobalAlloc for Accounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !account(layout.size() as i64) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !account(layout.size() as i64) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !account(new_size as i64 - layout.size() as i64) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

// -------------------------------------------------------------- watchdog

struct WatchState {
    decoder: &'static str,
    /// The case running and when it started.
    current: Mutex<Option<(Vec<u8>, Instant)>>,
    stop: AtomicBool,
    over_cap: AtomicBool,
    saved: AtomicBool,
}

impl WatchState {
    /// Called by the allocator of a case over the hard cap: wait (without
    /// allocating) until the watchdog has saved the input.
    fn over_cap(&self) {
        self.over_cap.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !self.saved.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A thread that saves the running case when it allocates without bound or
/// never ends, and then ends the test binary (the only way to stop it).
struct Watchdog {
    state: Arc<WatchState>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(decoder: &'static str) -> Watchdog {
        let state = Arc::new(WatchState {
            decoder,
            current: Mutex::new(None),
            stop: AtomicBool::new(false),
            over_cap: AtomicBool::new(false),
            saved: AtomicBool::new(false),
        });
        let s = state.clone();
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                let over = s.over_cap.load(Ordering::SeqCst);
                let stuck =
                    s.current.lock().ok().and_then(|c| {
                        c.as_ref().filter(|(_, t)| over || t.elapsed() > HUNG_CASE).map(|(i, _)| i.clone())
                    });
                let Some(input) = stuck else { continue };
                let path = save_crash(s.decoder, &input);
                let why = if over { "allocated more than the hard cap" } else { "did not finish" };
                // Straight to the process's stderr: the test harness's
                // capture would be lost with the abort.
                let _ = writeln!(
                    std::io::stderr(),
                    "decoder_fuzz: a {} case {why}; saved as {}; aborting",
                    s.decoder,
                    path.display()
                );
                if over {
                    // The allocator refuses once this is set: the binary aborts.
                    s.saved.store(true, Ordering::SeqCst);
                    return;
                }
                std::process::abort();
            }
        });
        WATCH.with(|w| w.set(Arc::as_ptr(&state)));
        Watchdog { state, thread: Some(thread) }
    }

    fn begin(&self, input: &[u8]) {
        if let Ok(mut c) = self.state.current.lock() {
            *c = Some((input.to_vec(), Instant::now()));
        }
    }

    fn end(&self) {
        if let Ok(mut c) = self.state.current.lock() {
            *c = None;
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        WATCH.with(|w| w.set(std::ptr::null()));
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn save_crash(decoder: &str, input: &[u8]) -> PathBuf {
    let dir = corpus_root().join(decoder);
    let path = dir.join(format!("crash-{}", &blake3::hash(input).to_hex()[..16]));
    if !path.exists() {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(&path, input);
    }
    path
}

// --------------------------------------------------------------- panics

thread_local! {
    /// Set on a thread running fuzz cases: its panics are expected to be
    /// caught and reported, so the panic hook stays quiet for it.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// Where the last quiet panic happened.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keep the default panic output for every other thread (other tests).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let at = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                default(info);
            }
        }));
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

// ------------------------------------------------------------ harness

/// What a decoder made of an input (a rule it broke is an `Err(String)`),
/// with a fingerprint of the value or of the kind of error: an input whose
/// fingerprint is new joins the pool of inputs to mutate (a cheap stand-in
/// for coverage guidance: new values and new error paths are worth more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Decoded(u64),
    Refused(u64),
}

impl Outcome {
    fn decoded(&self) -> bool {
        matches!(self, Outcome::Decoded(_))
    }
}

fn fingerprint(text: &str) -> u64 {
    u64::from_le_bytes(blake3::hash(text.as_bytes()).as_bytes()[..8].try_into().unwrap_or_default())
}

/// Decoded into `value`.
fn decoded(value: &impl std::fmt::Debug) -> Outcome {
    Outcome::Decoded(fingerprint(&format!("{value:?}")))
}

/// Refused with `error`: its kind is its message without numbers, cut short
/// (positions and quoted input would make every message new).
fn refused(error: &impl std::fmt::Display) -> Outcome {
    let kind: String = error.to_string().chars().filter(|c| !c.is_ascii_digit()).take(60).collect();
    Outcome::Refused(fingerprint(&kind))
}

type Decode<'a> = dyn Fn(&[u8]) -> Result<Outcome, String> + 'a;
type Generate<'a> = dyn Fn(&mut Rng, &[Vec<u8>]) -> Vec<u8> + 'a;

/// One decoder under test.
struct Target<'a> {
    /// Also the corpus directory's name.
    name: &'static str,
    decode: &'a Decode<'a>,
    /// Fresh valid encodings made by the real encoders.
    seeds: Vec<Vec<u8>>,
    /// Tokens the mutator splices in.
    dict: &'a [&'a [u8]],
    /// Bytes of memory budget per input byte (on top of [`BUDGET_BASE`]).
    per_byte: i64,
    /// Extra budget an input is entitled to (the zstd layer's reservation).
    allowance: &'a dyn Fn(&[u8]) -> i64,
    /// Another way to make inputs, used for a third of the cases.
    generate: Option<&'a Generate<'a>>,
}

/// A case that broke a rule: `key` groups repeats of the same failure.
struct Failure {
    key: String,
    message: String,
}

fn exec(watch: &Watchdog, t: &Target, input: &[u8], max_peak: &mut i64) -> Result<Outcome, Failure> {
    watch.begin(input);
    PANIC_AT.with(|p| p.borrow_mut().take());
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    let start = Instant::now();
    TRACKED.with(|c| c.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| (t.decode)(input)));
    TRACKED.with(|c| c.set(false));
    let took = start.elapsed();
    let peak = PEAK.with(Cell::get);
    *max_peak = (*max_peak).max(peak);
    watch.end();
    let budget = BUDGET_BASE + t.per_byte * input.len() as i64 + (t.allowance)(input);
    match result {
        Err(payload) => {
            let at = PANIC_AT.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "unknown place".into());
            Err(Failure {
                key: format!("panic at {at}"),
                message: format!("panicked at {at}: {}", panic_text(&*payload)),
            })
        }
        Ok(Err(rule)) => Err(Failure {
            key: format!("rule {}", rule.split(':').next().unwrap_or_default()),
            message: format!("broke a rule: {rule}"),
        }),
        Ok(Ok(_)) if peak > budget => Err(Failure {
            key: "memory".into(),
            message: format!("held {peak} bytes at its peak for a {}-byte input (budget {budget})", input.len()),
        }),
        Ok(Ok(_)) if took > SLOW_CASE => {
            Err(Failure { key: "slow".into(), message: format!("took {took:?} for a {}-byte input", input.len()) })
        }
        Ok(Ok(outcome)) => Ok(outcome),
    }
}

/// Remove chunks of `input` while it still fails with `key` (bounded).
fn shrink(watch: &Watchdog, t: &Target, input: Vec<u8>, key: &str) -> Vec<u8> {
    let mut best = input;
    let mut tries = 1000;
    let mut chunk = best.len().div_ceil(2);
    while chunk >= 1 && tries > 0 {
        let mut i = 0;
        let mut progressed = false;
        while i < best.len() && tries > 0 {
            tries -= 1;
            let candidate: Vec<u8> = best[..i].iter().chain(&best[(i + chunk).min(best.len())..]).copied().collect();
            match exec(watch, t, &candidate, &mut 0) {
                Err(f) if f.key == key => {
                    best = candidate;
                    progressed = true;
                }
                _ => i += chunk,
            }
        }
        if !progressed {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    best
}

/// The files of `tests/corpus/<decoder>/`, by name.
fn corpus(decoder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_root().join(decoder);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let bytes = std::fs::read(e.path()).ok()?;
                    (!name.starts_with('.')).then_some((name, bytes))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Replay the corpus, then mutate; panics with every failure found.
fn fuzz(t: Target) {
    install_panic_hook();
    QUIET.with(|q| q.set(true));
    let watch = Watchdog::start(t.name);
    let mut failures: Vec<String> = Vec::new();
    let mut pool: Vec<Vec<u8>> = t.seeds.clone();
    // Failures the corpus already reproduces are not saved again.
    let mut known: HashSet<String> = HashSet::new();
    let mut fingerprints: HashSet<Outcome> = HashSet::new();
    let mut max_peak = 0i64;

    let files = corpus(t.name);
    if !files.iter().any(|(name, _)| name.starts_with("ok-")) {
        failures.push(format!("tests/corpus/{}/ has no ok-* file (run write_seed_corpus)", t.name));
    }
    for (name, bytes) in &files {
        let outcome = exec(&watch, &t, bytes, &mut max_peak);
        if let Ok(o) = outcome {
            fingerprints.insert(o);
        }
        match outcome {
            Err(f) => {
                failures.push(format!("corpus file {name}: {}", f.message));
                known.insert(f.key);
            }
            Ok(o) if !o.decoded() && name.starts_with("ok-") => {
                failures.push(format!("corpus file {name} no longer decodes (format compatibility)"))
            }
            Ok(o) if o.decoded() && name.starts_with("bad-") => {
                failures.push(format!("corpus file {name} is accepted; it must be refused"))
            }
            Ok(_) => {}
        }
        if !name.starts_with("crash-") {
            pool.push(bytes.clone());
        }
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let fixed = pool.len();

    let seed = seed_for(t.name);
    let mut rng = Rng(seed);
    let (mut decoded, mut refused) = (0usize, 0usize);
    let mut seen: HashMap<String, (usize, PathBuf, String)> = HashMap::new();
    let started = Instant::now();
    for _ in 0..cases() {
        let input = match t.generate {
            Some(g) if rng.one_in(3) => {
                let mut made = g(&mut rng, &pool);
                made.truncate(MAX_INPUT);
                made
            }
            _ => {
                let base = &pool[rng.below(pool.len())];
                mutate(&mut rng, base, &pool, t.dict)
            }
        };
        match exec(&watch, &t, &input, &mut max_peak) {
            Ok(outcome) => {
                if outcome.decoded() {
                    decoded += 1;
                } else {
                    refused += 1;
                }
                if fingerprints.insert(outcome) {
                    if pool.len() < POOL_MAX {
                        pool.push(input);
                    } else {
                        let i = fixed + rng.below(POOL_MAX - fixed);
                        pool[i] = input;
                    }
                }
            }
            Err(f) if known.contains(&f.key) => {}
            Err(f) => match seen.get_mut(&f.key) {
                Some((count, _, _)) => *count += 1,
                None => {
                    let small = shrink(&watch, &t, input, &f.key);
                    let message = exec(&watch, &t, &small, &mut 0).err().map_or(f.message, |f| f.message);
                    let path = save_crash(t.name, &small);
                    seen.insert(f.key.clone(), (1, path, message));
                }
            },
        }
    }
    drop(watch);
    QUIET.with(|q| q.set(false));
    eprintln!(
        "decoder_fuzz {}: seed {seed}, {} corpus files, {} mutants ({decoded} decoded, {refused} refused, \
         {} distinct outcomes) in {:?}, peak {} KiB",
        t.name,
        files.len(),
        cases(),
        fingerprints.len(),
        started.elapsed(),
        max_peak >> 10
    );
    for (key, (count, path, message)) in seen {
        failures.push(format!("{count} mutant(s): {message} [{key}]; shrunk input saved as {}", path.display()));
    }
    assert!(failures.is_empty(), "decoder {} failed:\n- {}", t.name, failures.join("\n- "));
}

fn no_allowance(_: &[u8]) -> i64 {
    0
}

// ------------------------------------------------------------ mutation

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING_BYTES: &[u8] =
    &[0, 1, 2, 0x7f, 0x80, 0x81, 0xfe, 0xff, b'0', b'9', b'"', b'\\', b'\n', b'{', b'}', b'[', b']', b',', b':', b'|'];
const HUGE: &[u64] = &[
    0,
    0xff,
    0xffff,
    0x7fff_ffff,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
    1 << 30,
    (1 << 30) + 1,
];
const HUGE_DECIMAL: &[&str] = &[
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "-9223372036854775809",
    "1e999",
    "-0",
    "1.5",
    "99999999999999999999999999999",
    "0x10",
    "nan",
    "inf",
];

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Write `bytes` at `at`, inserting or overwriting (and extending).
fn put(v: &mut Vec<u8>, at: usize, bytes: &[u8], insert: bool) {
    let at = at.min(v.len());
    if insert {
        v.splice(at..at, bytes.iter().copied());
    } else {
        let end = (at + bytes.len()).min(v.len());
        v.splice(at..end, bytes.iter().copied());
    }
}

/// One to three (sometimes up to sixteen) mutations of `base`.
fn mutate(rng: &mut Rng, base: &[u8], pool: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = base.to_vec();
    let most = if rng.one_in(4) { 16 } else { 3 };
    let rounds = 1 + rng.below(most);
    for _ in 0..rounds {
        mutate_once(rng, &mut v, pool, dict);
        v.truncate(MAX_INPUT);
    }
    v
}

fn mutate_once(rng: &mut Rng, v: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[&[u8]]) {
    let len = v.len();
    let pos = rng.below(len + 1);
    let insert = rng.one_in(2);
    match rng.below(17) {
        0 if len > 0 => {
            let i = rng.below(len);
            v[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            v[i] = rng.next() as u8;
        }
        2 if len > 0 => {
            let i = rng.below(len);
            v[i] = *rng.pick(INTERESTING_BYTES);
        }
        3 => {
            let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
            put(v, pos, &bytes, true);
        }
        4 if len > 0 => {
            let a = rng.below(len);
            let most = if rng.one_in(4) { len - a } else { (len - a).min(16) };
            let n = 1 + rng.below(most);
            v.drain(a..a + n);
        }
        5 => v.truncate(rng.below(len + 1)),
        6 => {
            let byte = if len > 0 && rng.one_in(2) { v[rng.below(len)] } else { *rng.pick(INTERESTING_BYTES) };
            let most = if rng.one_in(8) { MAX_REPEAT } else { 64 };
            let n = 1 + rng.below(most);
            v.splice(pos..pos, std::iter::repeat_n(byte, n));
        }
        7 if len > 0 => {
            let a = rng.below(len);
            let n = 1 + rng.below((len - a).min(4096));
            let chunk = v[a..a + n].to_vec();
            let most = if rng.one_in(8) { 64 } else { 3 };
            for _ in 0..1 + rng.below(most) {
                v.splice(pos..pos, chunk.iter().copied());
            }
        }
        8 => {
            let other = rng.pick(pool);
            let from = rng.below(other.len() + 1);
            v.truncate(pos);
            v.extend_from_slice(&other[from..]);
        }
        9 => {
            let other = rng.pick(pool);
            if !other.is_empty() {
                let a = rng.below(other.len());
                let n = 1 + rng.below((other.len() - a).min(512));
                v.splice(pos..pos, other[a..a + n].iter().copied());
            }
        }
        10 => {
            let bytes = varint(*rng.pick(HUGE));
            put(v, pos, &bytes, insert);
        }
        11 => {
            let h = *rng.pick(HUGE);
            let bytes = if rng.one_in(2) { (h as u32).to_le_bytes().to_vec() } else { h.to_le_bytes().to_vec() };
            put(v, pos, &bytes, insert);
        }
        12 if !dict.is_empty() => {
            let token = *rng.pick(dict);
            put(v, pos, token, insert);
        }
        13 => {
            // A decimal number, replacing the digits around `pos` if any.
            let number = rng.pick(HUGE_DECIMAL).as_bytes();
            let is_digit = |b: u8| b.is_ascii_digit() || b == b'-' || b == b'.';
            let (mut a, mut b) = (pos, pos);
            while a > 0 && is_digit(v[a - 1]) {
                a -= 1;
            }
            while b < len && is_digit(v[b]) {
                b += 1;
            }
            v.splice(a..b, number.iter().copied());
        }
        14 => {
            // Whole lines: drop, duplicate, swap or move one.
            let mut lines: Vec<Vec<u8>> = v.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            let n = lines.len();
            let (i, j) = (rng.below(n), rng.below(n));
            match rng.below(4) {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let line = lines[i].clone();
                    lines.insert(j, line);
                }
                2 => lines.swap(i, j),
                _ => {
                    let line = lines.remove(i);
                    lines.insert(j.min(lines.len()), line);
                }
            }
            *v = lines.join(&b'\n');
        }
        15 if len > 0 => {
            // A huge little-endian u32 near the end (where pack trailers keep
            // their length field).
            let from_end = 1 + rng.below(len.min(16));
            let bytes = (*rng.pick(HUGE) as u32).to_le_bytes();
            put(v, len - from_end, &bytes, false);
        }
        _ => {
            let (i, j) = (rng.below(len.max(1)), rng.below(len.max(1)));
            if len > 0 {
                v.swap(i, j);
            }
        }
    }
}

// ---------------------------------------------- structure-aware mutation

/// A JSON mutant that is still JSON: one to three nodes of a pool entry
/// replaced, removed, duplicated or renamed, so the typed decoding behind
/// the parser (field types, ranges, ids, timestamps) is what gets tested.
fn mutate_json(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let base = rng.pick(pool).clone();
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&base) else {
        return mutate(rng, &base, pool, JSON_TOKENS);
    };
    for _ in 0..1 + rng.below(3) {
        mutate_json_node(rng, &mut value, 0);
    }
    let out = if rng.one_in(2) { serde_json::to_vec(&value) } else { serde_json::to_vec_pretty(&value) };
    out.unwrap_or(base)
}

fn mutate_json_node(rng: &mut Rng, v: &mut serde_json::Value, depth: usize) {
    use serde_json::Value;
    let descend = depth < 32 && rng.below(4) != 0;
    match v {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).cloned().unwrap_or_default();
            if let Some(child) = map.get_mut(&key) {
                return mutate_json_node(rng, child, depth + 1);
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = rng.below(items.len());
            return mutate_json_node(rng, &mut items[i], depth + 1);
        }
        _ => {}
    }
    match v {
        Value::Object(map) if rng.one_in(2) => {
            let key = map.keys().nth(rng.below(map.len().max(1))).cloned();
            match (rng.below(3), key) {
                (0, Some(key)) => {
                    map.remove(&key);
                }
                (1, Some(key)) => {
                    if let Some(child) = map.remove(&key) {
                        map.insert(mutate_name(rng, &key), child);
                    }
                }
                _ => {
                    map.insert("unexpected".into(), interesting_json(rng));
                }
            }
        }
        Value::Array(items) if rng.one_in(2) => match rng.below(3) {
            0 if !items.is_empty() => {
                items.remove(rng.below(items.len()));
            }
            1 if !items.is_empty() => {
                let item = items[rng.below(items.len())].clone();
                let most = if rng.one_in(8) { 1000 } else { 3 };
                let times = 1 + rng.below(most);
                items.extend(std::iter::repeat_n(item, times));
            }
            _ => items.push(interesting_json(rng)),
        },
        _ if rng.one_in(2) => *v = similar_json(rng, v),
        _ => *v = interesting_json(rng),
    }
}

/// A value of the same type as `v` (so the decoding goes on past it), but
/// an odd one.
fn similar_json(rng: &mut Rng, v: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    match v {
        Value::Number(_) => match rng.below(12) {
            0 => json!(0),
            1 => json!(1),
            2 => json!(-1),
            3 => json!(7),
            4 => json!(255),
            5 => json!(256),
            6 => json!(65536),
            7 => json!(u32::MAX),
            8 => json!(u32::MAX as u64 + 1),
            9 => json!(u64::MAX),
            10 => json!(i64::MIN),
            _ => json!(1.5),
        },
        Value::String(s) => Value::String(match rng.below(6) {
            0 => mutate_name(rng, s),
            1 => String::new(),
            2 => s.repeat(1 + rng.below(64)),
            3 => s.to_uppercase(),
            4 => s.chars().rev().collect(),
            _ => format!("{s}0"),
        }),
        Value::Bool(b) => Value::Bool(!b),
        _ => interesting_json(rng),
    }
}

/// A key or name changed a little: a character swapped, dropped or added
/// (a backtick or a multibyte one too: error messages quote names).
fn mutate_name(rng: &mut Rng, name: &str) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    let at = rng.below(chars.len() + 1);
    match rng.below(4) {
        0 if at < chars.len() => {
            chars.remove(at);
        }
        1 if at < chars.len() => chars[at] = *rng.pick(&['x', '_', '`', 'é', ' ', '\u{0}']),
        _ => chars.insert(at, *rng.pick(&['s', '`', 'é', '日', '-', '.'])),
    }
    chars.into_iter().collect()
}

fn interesting_json(rng: &mut Rng) -> serde_json::Value {
    use serde_json::{Value, json};
    let hex = |n: usize| Value::String("a".repeat(n));
    match rng.below(26) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(255),
        5 => json!(256),
        6 => json!(u32::MAX),
        7 => json!(u32::MAX as u64 + 1),
        8 => json!(u64::MAX),
        9 => json!(i64::MIN),
        10 => json!(0.5),
        11 => json!(1e300),
        12 => json!(""),
        13 => hex(64),
        14 => hex(63),
        15 => Value::String("x".repeat(10_000)),
        16 => json!("é\u{0}\u{7}日本"),
        17 => json!("2026-13-45T00:00:00Z"),
        18 => json!("-009999-01-01T00:00:00Z"),
        19 => json!("9999-12-31T23:59:59.999999999Z"),
        20 => json!([]),
        21 => json!({}),
        22 => (0..60).fold(json!(1), |inner, _| json!([inner])),
        23 => json!({"a": [1, "b", null]}),
        24 => json!("argon2id"),
        _ => json!(4096),
    }
}

/// A TOML mutant that is still TOML: a value replaced, a key renamed or
/// dropped, or an unknown key added, so the config's resolution (not just
/// the parser) sees odd but well-formed files.
fn mutate_toml(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let base = rng.pick(pool).clone();
    let text = String::from_utf8_lossy(&base);
    let Ok(mut table) = toml::from_str::<toml::Table>(&text) else {
        return mutate(rng, &base, pool, TOML_TOKENS);
    };
    for _ in 0..1 + rng.below(3) {
        mutate_toml_table(rng, &mut table, 0);
    }
    toml::to_string(&table).map(String::into_bytes).unwrap_or(base)
}

fn mutate_toml_table(rng: &mut Rng, table: &mut toml::Table, depth: usize) {
    let Some(key) = table.keys().nth(rng.below(table.len().max(1))).cloned() else {
        table.insert("unexpected".into(), interesting_toml(rng));
        return;
    };
    if depth < 8 && rng.below(3) != 0 {
        match table.get_mut(&key) {
            Some(toml::Value::Table(t)) => return mutate_toml_table(rng, t, depth + 1),
            Some(toml::Value::Array(items)) if !items.is_empty() => {
                let i = rng.below(items.len());
                if let toml::Value::Table(t) = &mut items[i] {
                    return mutate_toml_table(rng, t, depth + 1);
                }
                items[i] = interesting_toml(rng);
                return;
            }
            _ => {}
        }
    }
    match rng.below(7) {
        0 => {
            table.remove(&key);
        }
        5 | 6 => {
            let similar = match table.get(&key) {
                Some(toml::Value::String(s)) => toml::Value::String(mutate_name(rng, s)),
                Some(toml::Value::Integer(n)) => toml::Value::Integer(match rng.below(4) {
                    0 => -n,
                    1 => n.saturating_mul(1 << 20),
                    2 => n.saturating_add(1),
                    _ => 0,
                }),
                Some(toml::Value::Array(items)) => {
                    let mut items = items.clone();
                    if let Some(first) = items.first().cloned() {
                        items.push(first);
                    }
                    toml::Value::Array(items)
                }
                _ => interesting_toml(rng),
            };
            table.insert(key, similar);
        }
        1 => {
            if let Some(v) = table.remove(&key) {
                table.insert(mutate_name(rng, &key), v);
            }
        }
        2 => {
            table.insert(mutate_name(rng, &key), interesting_toml(rng));
        }
        _ => {
            table.insert(key, interesting_toml(rng));
        }
    }
}

fn interesting_toml(rng: &mut Rng) -> toml::Value {
    use toml::Value;
    let s = |t: &str| Value::String(t.into());
    match rng.below(30) {
        0 => Value::Integer(0),
        1 => Value::Integer(-1),
        2 => Value::Integer(i64::MAX),
        3 => Value::Integer(u32::MAX as i64 + 1),
        4 => Value::Integer(65536),
        5 => Value::Float(f64::NAN),
        6 => Value::Float(f64::INFINITY),
        7 => Value::Float(0.5),
        8 => Value::Boolean(true),
        9 => s(""),
        10 => s("a\nb"),
        11 => s("é日本\u{7}"),
        12 => s("0777"),
        13 => s("08"),
        14 => s("99999999999h"),
        15 => s("1h30m"),
        16 => s("-5m"),
        17 => s("*-*-* 03:15:00"),
        18 => s("s3://"),
        19 => s("s3://bucket/"),
        20 => s("http://[::1]:99999"),
        21 => s("{{job"),
        22 => s("{{#each x}}"),
        23 => s(".."),
        24 => s("/"),
        25 => Value::Array(vec![]),
        26 => Value::Array(vec![s("main"), s("main")]),
        27 => Value::Table(toml::Table::new()),
        28 => s(">= x"),
        _ => s("all"),
    }
}

// --------------------------------------------------------- test fixtures

/// The test master key: every sealed corpus file is sealed with it.
const TEST_MASTER: [u8; 32] = [0x5a; 32];
/// The test repository's id (marker, config, key files).
const TEST_REPO: Id = Id([0x11; 32]);
/// The object id `sealed` bodies are sealed under.
const TEST_OBJECT: Id = Id([0x22; 32]);
const PASSPHRASE: &[u8] = b"pw";

fn keys() -> Keys {
    Keys::derive(&MasterKey(TEST_MASTER))
}

/// Seal `body` (compression flag and payload, as `Keys::open` expects after
/// decryption) exactly as `Keys::seal` would, so a hostile flag or zstd
/// frame arrives authentic. Mirrors `crypto`'s format; the
/// `helpers_match_the_product` test keeps the two in step.
fn seal_body(kind: ObjectKind, id: &Id, body: &[u8]) -> Vec<u8> {
    let context = if kind == ObjectKind::Chunk {
        "holdfast 2026-11 data encryption"
    } else {
        "holdfast 2026-11 metadata encryption"
    };
    let key = blake3::derive_key(context, &TEST_MASTER);
    let cipher = XChaCha20Poly1305::new((&key).into());
    let nonce = [0x24u8; 24];
    let mut ad = b"holdfast".to_vec();
    ad.push(FORMAT_VERSION);
    ad.push(kind as u8);
    ad.extend_from_slice(&id.0);
    let ct = cipher.encrypt(&XNonce::from(nonce), Payload { msg: body, aad: &ad }).expect("encrypt");
    [nonce.as_slice(), &ct].concat()
}

/// A pack holding `data` (the blob section) and a header sealed from
/// `header` (postcard plaintext) as `PackWriter::finish` does.
fn assemble_pack(keys: &Keys, data: &[u8], header: &[u8]) -> Vec<u8> {
    let sealed = keys.seal(ObjectKind::PackHeader, &Id::of_bytes(data), header, 3).expect("seal");
    let mut pack = data.to_vec();
    pack.extend_from_slice(&sealed);
    pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    pack.extend_from_slice(b"HFPK");
    pack.push(FORMAT_VERSION);
    pack
}

/// The zstd content size a sealed body's frame declares, when `Keys::open`
/// would reserve it (flag 1, at most `MAX_PLAINTEXT`).
fn declared_size(body: &[u8]) -> i64 {
    match body.split_first() {
        Some((1, frame)) => match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(n)) if n <= MAX_PLAINTEXT => n as i64,
            _ => 0,
        },
        _ => 0,
    }
}

/// A zstd body whose frame header is rewritten to declare another content
/// size (an 8-byte field, single segment), the blocks left as they were:
/// sizes up to `MAX_PLAINTEXT` are reserved by `Keys::open` before it
/// decompresses, larger ones go to the streaming decoder.
fn forge_content_size(rng: &mut Rng, _pool: &[Vec<u8>]) -> Vec<u8> {
    let text: Vec<u8> = (0..rng.below(5000)).map(|i| (i % 7) as u8 + rng.below(2) as u8).collect();
    let frame = zstd::bulk::compress(&text, 3).unwrap_or_default();
    if frame.len() < 6 {
        return frame;
    }
    let fhd = frame[4];
    let single_segment = fhd & 0x20 != 0;
    let fcs_len = match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let header_len = 5 + usize::from(!single_segment) + [0, 1, 2, 4][(fhd & 3) as usize] + fcs_len;
    let real = text.len() as u64;
    let declared = match rng.below(10) {
        0 => real.wrapping_sub(1),
        1 => real + 1,
        2 => real,
        3 => 1 << 20,
        4 => MAX_PLAINTEXT,
        5 => MAX_PLAINTEXT + 1,
        6 => u32::MAX as u64,
        7 => u64::MAX,
        _ => rng.next() % MAX_PLAINTEXT,
    };
    let mut out = vec![1u8];
    out.extend_from_slice(&frame[..4]);
    out.push(0xe0 | (fhd & 0x04));
    out.extend_from_slice(&declared.to_le_bytes());
    out.extend_from_slice(frame.get(header_len..).unwrap_or_default());
    out
}

/// The key file `Repository::open` uses in the marker and config targets:
/// a tiny argon2 cost (8 KiB, 1 pass), so opening takes microseconds.
fn cheap_key_file(repo: &Id) -> KeyFile {
    let kdf = KdfParams {
        algorithm: "argon2id".into(),
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
        salt: hex::encode([0x33u8; 16]),
    };
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32)).expect("params");
    let mut wrapping = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(PASSPHRASE, &[0x33u8; 16], &mut wrapping)
        .expect("argon2");
    let wrapped = wrap_key(&wrapping, repo, &MasterKey(TEST_MASTER)).expect("wrap");
    KeyFile { holdfast_key: 1, repository: repo.to_hex(), kdf, wrapped: hex::encode(wrapped) }
}

/// The binary behind a paper key (as `KeyFile::to_paper` lays it out).
fn paper_bin(kf: &KeyFile) -> Vec<u8> {
    let mut bin = vec![kf.holdfast_key];
    bin.extend_from_slice(&hex::decode(&kf.repository).expect("repository hex"));
    for v in [kf.kdf.memory_kib, kf.kdf.iterations, kf.kdf.parallelism] {
        bin.extend_from_slice(&v.to_le_bytes());
    }
    let salt = hex::decode(&kf.kdf.salt).expect("salt hex");
    bin.push(salt.len() as u8);
    bin.extend_from_slice(&salt);
    bin.extend_from_slice(&hex::decode(&kf.wrapped).expect("wrapped hex"));
    bin
}

/// A paper key for any binary, with correct line and end checksums, so a
/// mutated binary gets past them (mirrors `KeyFile::to_paper`).
fn render_paper(bin: &[u8]) -> String {
    let mut out = String::from("holdfast paper key, format 1\n\n");
    for (n, line) in bin.chunks(16).enumerate() {
        let groups: Vec<String> = line.chunks(4).map(hex::encode).collect();
        let mut h = blake3::Hasher::new();
        h.update(&(n as u64).to_le_bytes());
        h.update(line);
        out.push_str(&format!("{:02}: {} | {}\n", n + 1, groups.join(" "), hex::encode(&h.finalize().as_bytes()[..2])));
    }
    out.push_str(&format!("end {}\n", hex::encode(&blake3::hash(bin).as_bytes()[..4])));
    out
}

/// A throwaway local repository for `Repository::open`: the marker, a
/// cheap key file and the sealed config, written by hand.
struct TestRepo {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl TestRepo {
    fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().join("repo");
        for sub in ["keys", "packs", "index", "snapshots", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).expect("layout");
        }
        let key = cheap_key_file(&TEST_REPO).to_json();
        std::fs::write(root.join("keys").join(Id::of_bytes(key.as_bytes()).to_hex()), key).expect("key file");
        let repo = TestRepo { _dir: dir, root };
        repo.write_marker(&seed_markers()[0].1);
        repo.write_config(&seed_repo_configs()[0].1);
        repo
    }

    fn write_marker(&self, bytes: &[u8]) {
        std::fs::write(self.root.join("holdfast-repository"), bytes).expect("marker");
    }

    fn write_config(&self, json: &[u8]) {
        let sealed = seal_file(&keys(), ObjectKind::Config, &TEST_REPO, json).expect("seal config");
        std::fs::write(self.root.join("config"), sealed).expect("config");
    }

    /// Open it with the right passphrase. A damaged marker or config must
    /// give an error, and never "wrong passphrase": the passphrase is right.
    /// An opened repository's config is used as a backup would.
    fn open(&self) -> Result<Outcome, String> {
        match Repository::open(&Location::Local(self.root.clone()), PASSPHRASE) {
            Ok(repo) => {
                if repo.config().id != TEST_REPO {
                    return Err(format!(
                        "config id: opened with a config naming repository {}, not the marker's {}",
                        repo.config().id,
                        TEST_REPO
                    ));
                }
                let sample: Vec<u8> = (0..64u32 << 10).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
                let chunker = repo.chunker();
                let cut = chunker.cut(&sample);
                if cut > sample.len() {
                    return Err(format!("chunker: a cut at {cut} of {} bytes", sample.len()));
                }
                let id = repo.keys().blob_id(&sample);
                let sealed = repo
                    .keys()
                    .seal(ObjectKind::Chunk, &id, &sample, repo.config().compression_level)
                    .map_err(|e| format!("seal at the config's compression level: {e}"))?;
                match repo.keys().open(ObjectKind::Chunk, &id, &sealed) {
                    Ok(back) if back == sample => Ok(decoded(repo.config())),
                    _ => Err("seal: a chunk sealed at the config's level does not open".into()),
                }
            }
            Err(Error::WrongPassphrase(_)) => Err("wrong passphrase: the right passphrase was refused".into()),
            Err(e) => Ok(refused(&e)),
        }
    }
}

/// Postcard value round trip: decode(encode(v)) == v, and encoding is stable.
fn postcard_round_trip<T>(v: &T) -> Result<(), String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = postcard::to_stdvec(v).map_err(|e| format!("re-encode: {e}"))?;
    let back: T =
        postcard::from_bytes(&bytes).map_err(|e| format!("re-decode: a re-encoded value does not decode: {e}"))?;
    if &back != v {
        return Err("re-decode: a re-encoded value decodes differently".into());
    }
    if postcard::to_stdvec(&back).ok().as_deref() != Some(&bytes[..]) {
        return Err("re-encode: encoding is not stable".into());
    }
    Ok(())
}

/// The index and the read planner over hostile (authentic) index data:
/// every blob read once, within its read.
fn index_consumers(file: &IndexFile) -> Result<(), String> {
    let index = Index::from_files([file.clone()]);
    for p in &file.packs {
        if !index.has_pack(&p.pack) {
            return Err("index: a listed pack is not known".into());
        }
    }
    let locations: Vec<_> = index.iter().collect();
    let reads = plan_pack_reads(locations.clone());
    let mut planned = 0;
    for read in &reads {
        if read.start > read.end {
            return Err(format!("planner: a read from {} to {}", read.start, read.end));
        }
        for (_, loc) in &read.blobs {
            let (start, end) = (loc.offset as u64, loc.offset as u64 + loc.length as u64);
            if loc.pack != read.pack || start < read.start || end > read.end {
                return Err(format!("planner: blob {start}..{end} outside its read {}..{}", read.start, read.end));
            }
        }
        planned += read.blobs.len();
        let bytes = vec![0u8; (read.end - read.start).min(4096) as usize];
        for (_, loc, sealed) in sealed_blobs(read, &bytes) {
            if let Ok(s) = sealed
                && s.len() != loc.length as usize
            {
                return Err("sealed_blobs: a blob of the wrong length".into());
            }
        }
    }
    if planned != locations.len() {
        return Err(format!("planner: {planned} blobs planned for {} indexed", locations.len()));
    }
    Ok(())
}

/// JSON values equal, floats to within rounding (serde_json parses floats
/// to the nearest value only with its `float_roundtrip` feature).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A paper key read back must be the key file it was made from.
fn same_key(a: &KeyFile, b: &KeyFile) -> Result<(), String> {
    let bytes = |s: &str| hex::decode(s).ok();
    let same = a.holdfast_key == b.holdfast_key
        && a.repo_id().ok() == b.repo_id().ok()
        && a.kdf.algorithm == b.kdf.algorithm
        && (a.kdf.memory_kib, a.kdf.iterations, a.kdf.parallelism)
            == (b.kdf.memory_kib, b.kdf.iterations, b.kdf.parallelism)
        && bytes(&a.kdf.salt) == bytes(&b.kdf.salt)
        && bytes(&a.wrapped) == bytes(&b.wrapped);
    if same {
        Ok(())
    } else {
        Err(format!(
            "paper round trip: to_paper wrote a paper key that reads back as another key file \
             (algorithm {:?} -> {:?}, salt {} -> {} bytes, wrapped {} -> {} bytes)",
            a.kdf.algorithm,
            b.kdf.algorithm,
            a.kdf.salt.len() / 2,
            b.kdf.salt.len() / 2,
            a.wrapped.len() / 2,
            b.wrapped.len() / 2
        ))
    }
}

// ----------------------------------------------------------------- seeds
//
// Valid encodings made by the real encoders (used at run time, and written
// to the corpus as `ok-*` by `write_seed_corpus`), and hand-made edge cases
// (corpus only).

fn meta(mode: u32, user: Option<&str>) -> Metadata {
    Metadata {
        mode,
        uid: 1000,
        gid: 1000,
        user: user.map(String::from),
        group: user.map(String::from),
        mtime: Timespec { secs: 1_780_000_000, nanos: 123_456_789 },
        ctime: Timespec { secs: -5, nanos: 999_999_999 },
        inode: 42,
        size: 5000,
        xattrs: vec![(b"user.comment".to_vec(), vec![0, 1, 255])],
        flags: 0x10,
    }
}

fn sample_tree() -> Tree {
    let id = |b: u8| Id([b; 32]);
    let mut entries = vec![
        Entry {
            name: b"a.txt".to_vec(),
            kind: EntryKind::File(FileContent {
                pieces: vec![
                    Piece::Chunk { id: id(1), len: 4096 },
                    Piece::Slice { id: id(2), offset: 10, len: 20 },
                    Piece::Hole { len: 1 << 40 },
                ],
                hardlink: Some(7),
                changed_while_read: true,
            }),
            meta: meta(0o100644, Some("alice")),
        },
        Entry { name: b"dir".to_vec(), kind: EntryKind::Dir { tree: id(3) }, meta: meta(0o40755, None) },
        Entry {
            name: b"link".to_vec(),
            kind: EntryKind::Symlink { target: b"../x".to_vec() },
            meta: meta(0o120777, None),
        },
        Entry { name: b"fifo".to_vec(), kind: EntryKind::Fifo, meta: meta(0o10600, None) },
        Entry { name: b"tty".to_vec(), kind: EntryKind::CharDevice { rdev: 0x0501 }, meta: meta(0o20620, None) },
        Entry { name: b"sda".to_vec(), kind: EntryKind::BlockDevice { rdev: 0x0800 }, meta: meta(0o60660, None) },
        Entry { name: b"sock".to_vec(), kind: EntryKind::Socket, meta: meta(0o140755, None) },
        Entry {
            name: vec![0xff, 0xfe, b'n'],
            kind: EntryKind::File(FileContent::default()),
            meta: meta(0o100600, None),
        },
    ];
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Tree { entries }
}

fn seed_trees() -> Vec<(&'static str, Vec<u8>)> {
    vec![("ok-every-kind", sample_tree().encode()), ("ok-empty", Tree::default().encode())]
}

fn sample_blobs() -> Vec<PackBlob> {
    vec![
        PackBlob { id: Id([1; 32]), kind: ObjectKind::Chunk, offset: 0, length: 100, raw_length: 59 },
        PackBlob { id: Id([2; 32]), kind: ObjectKind::Tree, offset: 100, length: 4000, raw_length: 9000 },
        PackBlob { id: Id([3; 32]), kind: ObjectKind::Chunk, offset: u32::MAX - 50, length: 50, raw_length: 9 },
    ]
}

fn seed_indexes() -> Vec<(&'static str, Vec<u8>)> {
    let file = IndexFile {
        packs: vec![
            IndexedPack { pack: Id([9; 32]), blobs: sample_blobs() },
            IndexedPack { pack: Id([8; 32]), blobs: sample_blobs()[..1].to_vec() },
            IndexedPack { pack: Id([7; 32]), blobs: vec![] },
        ],
    };
    vec![
        ("ok-three-packs", postcard::to_stdvec(&file).unwrap()),
        ("ok-empty", postcard::to_stdvec(&IndexFile::default()).unwrap()),
    ]
}

fn seed_pack_headers() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("ok-three-blobs", postcard::to_stdvec(&sample_blobs()).unwrap()),
        ("ok-none", postcard::to_stdvec(&Vec::<PackBlob>::new()).unwrap()),
    ]
}

/// The blob section the `pack_header` target's packs carry.
fn pack_data() -> Vec<u8> {
    let keys = keys();
    let mut w = PackWriter::new();
    for text in [&b"first blob"[..], b"second blob, a little longer"] {
        let id = keys.blob_id(text);
        w.add(id, ObjectKind::Chunk, &keys.seal(ObjectKind::Chunk, &id, text, 3).unwrap(), text.len());
    }
    let pack = w.finish(&keys).unwrap();
    let end = pack.blobs.last().map_or(0, |b| (b.offset + b.length) as usize);
    pack.bytes[..end].to_vec()
}

fn seed_packs() -> Vec<(&'static str, Vec<u8>)> {
    let keys = keys();
    let mut chunks = PackWriter::new();
    for text in [&b"alpha"[..], b"beta beta beta beta beta beta beta beta", b""] {
        let id = keys.blob_id(text);
        chunks.add(id, ObjectKind::Chunk, &keys.seal(ObjectKind::Chunk, &id, text, 3).unwrap(), text.len());
    }
    let mut trees = PackWriter::new();
    let tree = sample_tree().encode();
    let id = keys.blob_id(&tree);
    trees.add(id, ObjectKind::Tree, &keys.seal(ObjectKind::Tree, &id, &tree, 3).unwrap(), tree.len());
    vec![
        ("ok-chunks", chunks.finish(&keys).unwrap().bytes),
        ("ok-tree", trees.finish(&keys).unwrap().bytes),
        ("ok-empty", PackWriter::new().finish(&keys).unwrap().bytes),
    ]
}

fn sample_snapshot() -> Snapshot {
    Snapshot {
        time: "2026-05-01T03:15:00.123456789Z".parse().unwrap(),
        host: "db1.example".into(),
        tags: vec!["shop".into(), "production".into()],
        paths: vec!["/srv/shop".into(), "/srv/é ünïcode".into()],
        root: Id([4; 32]),
        parent: Some(Id([5; 32])),
        summary: Summary {
            files: 10,
            dirs: 2,
            other: 1,
            bytes: 1 << 33,
            bytes_read: 77,
            files_unchanged: 8,
            blobs_added: 3,
            bytes_new: 100,
            bytes_added: 60,
            duration_secs: 1.25,
            warnings: vec!["/srv/shop/gone: vanished".into()],
            incomplete: true,
            skipped: vec!["/srv/shop/unreadable".into()],
            left_out: vec!["/srv/shop/cache: cache directory (CACHEDIR.TAG)".into()],
            entries_with_xattrs: Some(2),
        },
        extra: Some(
            serde_json::json!({"job": "shop", "dumps": [{"db": "shop", "bytes": 123, "ratio": 0.5}], "n": null}),
        ),
        repaired: Some(Repaired { from: Id([6; 32]), lost: vec!["/srv/shop/lost".into()] }),
    }
}

fn seed_snapshots() -> Vec<(&'static str, Vec<u8>)> {
    let mut minimal = sample_snapshot();
    minimal.extra = None;
    minimal.repaired = None;
    minimal.parent = None;
    minimal.summary = Summary::default();
    vec![
        ("ok-full", serde_json::to_vec(&sample_snapshot()).unwrap()),
        ("ok-minimal", serde_json::to_vec(&minimal).unwrap()),
    ]
}

fn sample_repo_config() -> RepoConfig {
    RepoConfig {
        version: FORMAT_VERSION,
        id: TEST_REPO,
        chunker: ChunkerParams::default(),
        compression_level: 3,
        pack_size: 16 << 20,
    }
}

fn seed_repo_configs() -> Vec<(&'static str, Vec<u8>)> {
    let mut small = sample_repo_config();
    small.chunker = ChunkerParams::with_average(4096).unwrap();
    small.compression_level = -7;
    vec![
        ("ok-default", serde_json::to_vec(&sample_repo_config()).unwrap()),
        ("ok-small-chunks", serde_json::to_vec(&small).unwrap()),
    ]
}

fn seed_repo_files() -> Vec<(&'static str, Vec<u8>)> {
    let keys = keys();
    let seal = |kind, id: &Id, plain: &[u8]| seal_file(&keys, kind, id, plain).unwrap();
    vec![
        ("ok-index", seal(ObjectKind::Index, &Id([0x44; 32]), &seed_indexes()[0].1)),
        ("ok-snapshot", seal(ObjectKind::Snapshot, &Id([0x55; 32]), &seed_snapshots()[0].1)),
        ("ok-config", seal(ObjectKind::Config, &TEST_REPO, &seed_repo_configs()[0].1)),
    ]
}

fn seed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let text = sample_tree().encode();
    let framed = |frame: Vec<u8>| [vec![1u8], frame].concat();
    let bulk = zstd::bulk::compress(&text, 3).unwrap();
    let mut stream = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    stream.write_all(&text).unwrap();
    let unsized_frame = stream.finish().unwrap();
    // A skippable frame (magic 0x184D2A50, 4-byte length) before a real one.
    let skippable = [&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3][..], &bulk].concat();
    vec![
        ("ok-raw", [&[0u8][..], b"plain bytes, stored raw"].concat()),
        ("ok-raw-empty", vec![0]),
        ("ok-zstd", framed(bulk.clone())),
        ("ok-zstd-no-size", framed(unsized_frame)),
        ("ok-zstd-empty", framed(zstd::bulk::compress(b"", 3).unwrap())),
        ("edge-zstd-two-frames", framed([bulk.clone(), bulk].concat())),
        ("edge-zstd-skippable", framed(skippable)),
    ]
}

fn seed_key_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![("ok-cheap", cheap_key_file(&TEST_REPO).to_json().into_bytes())]
}

fn seed_papers() -> Vec<(&'static str, Vec<u8>)> {
    let paper = cheap_key_file(&TEST_REPO).to_paper().unwrap();
    vec![("ok-cheap", paper.clone().into_bytes()), ("ok-crlf", paper.replace('\n', "\r\n").into_bytes())]
}

fn seed_markers() -> Vec<(&'static str, Vec<u8>)> {
    let pretty = format!("{{\n  \"holdfast_repository\": {FORMAT_VERSION},\n  \"id\": \"{}\"\n}}", TEST_REPO.to_hex());
    let compact = format!("{{\"id\":\"{}\",\"holdfast_repository\":{FORMAT_VERSION}}}", TEST_REPO.to_hex());
    vec![("ok-pretty", pretty.into_bytes()), ("ok-compact", compact.into_bytes())]
}

/// A compact config using every section (`jobs.example.toml` is in the corpus).
const SAMPLE_TOML: &str = r#"[repositories.main]
path = "repo"
passphrase_file = "passphrase"

[repositories.bucket]
url = "s3://bucket/prefix"
endpoint = "http://127.0.0.1:3900"
region = "garage"
passphrase = "demo"

[defaults]
spool = "spool"
state_dir = "state"
repositories = ["main"]
retries = 1
retry_delay = "30s"

[jobs.shop]
description = "Shop: MariaDB + uploads"
schedule = "*-*-* 03:15:00"
max_age = "26h"
tags = ["production"]
metrics_mode = "0640"
repositories = ["main", "bucket"]

[[jobs.shop.hooks]]
phase = "before"
run = ["wp", "maintenance-mode", "activate"]
timeout = "2m"
env = { A = "b" }

[[jobs.shop.databases]]
kind = "mysql"
name = "shop"
port = 3306
password_env = "SHOP_DB_PASSWORD"

[[jobs.shop.databases.verify]]
sql = "SELECT 1"
expect = ">= 1"

[jobs.shop.retention]
last = 3
daily = 7

[jobs.shop.files]
paths = ["/srv/shop"]
exclude = ["**/cache/**"]

[[jobs.shop.notify]]
events = ["failure"]
command = ["/usr/local/bin/page", "{{job}}"]

[jobs.lite]
[[jobs.lite.databases]]
kind = "sqlite"
path = "app.db"
"#;

fn seed_tomls() -> Vec<(&'static str, Vec<u8>)> {
    vec![("ok-sample.toml", SAMPLE_TOML.as_bytes().to_vec())]
}

/// Hand-made edge cases, corpus only: (decoder, file name, bytes).
fn edge_cases() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |decoder: &'static str, name: &str, bytes: Vec<u8>| out.push((decoder, name.to_string(), bytes));

    // Packs: nothing, a bare trailer claiming a 4 GiB header, a real pack
    // whose header length says 4 GiB.
    add("pack", "bad-empty", vec![]);
    add("pack", "bad-trailer-only", [&u32::MAX.to_le_bytes()[..], b"HFPK", &[FORMAT_VERSION]].concat());
    let mut huge_len = seed_packs()[0].1.clone();
    let at = huge_len.len() - 9;
    huge_len[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    add("pack", "bad-header-length-4gib", huge_len);
    // Postcard: counts and lengths claiming 2^64-1 / 4 GiB with nothing behind.
    add("pack_header", "bad-count-huge", varint(u64::MAX));
    add("pack_header", "bad-count-4gib", varint(u32::MAX as u64));
    add("tree", "bad-count-huge", varint(u64::MAX));
    add("tree", "bad-name-4gib", [varint(1), varint(u32::MAX as u64), b"abc".to_vec()].concat());
    add("index", "bad-count-huge", varint(u64::MAX));
    add("index", "bad-blobs-4gib", [varint(1), vec![9; 32], varint(u32::MAX as u64)].concat());
    // Snapshots: nesting past serde_json's recursion limit, a year out of range.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let mut snap = String::from_utf8(seed_snapshots()[0].1.clone()).unwrap();
    snap = snap.replacen("\"extra\":", &format!("\"extra\":{deep},\"x\":"), 1);
    add("snapshot", "bad-deep-extra", snap.into_bytes());
    let far = String::from_utf8(seed_snapshots()[1].1.clone()).unwrap().replace("2026-05-01", "99999-05-01");
    add("snapshot", "bad-year-99999", far.into_bytes());
    // The sealed layer: an unknown flag, a frame whose header claims 2^40
    // bytes (more than MAX_PLAINTEXT) with nothing behind it.
    add("sealed", "bad-flag-2", vec![2, 1, 2, 3]);
    add("sealed", "bad-zstd-garbage", [vec![1u8], b"not a zstd frame".to_vec()].concat());
    let mut claim = vec![1u8, 0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x00];
    claim.extend_from_slice(&(1u64 << 40).to_le_bytes());
    add("sealed", "bad-zstd-claims-1tib", claim);
    // Repository files: the wrong kind, a cut header.
    let mut wrong_kind = seed_repo_files()[0].1.clone();
    wrong_kind[9] = 99;
    add("repo_file", "bad-unknown-kind", wrong_kind);
    add("repo_file", "bad-header-only", b"holdfast\x01\x04".to_vec());
    // Key files: costs far beyond the bounds, an unknown field, a 300-byte
    // salt (more than the paper form's one-byte length can say).
    let cheap = cheap_key_file(&TEST_REPO);
    let mut costly = cheap.clone();
    costly.kdf.memory_kib = u32::MAX;
    costly.kdf.iterations = u32::MAX;
    add("key_file", "edge-costs-out-of-bounds", costly.to_json().into_bytes());
    let unknown = cheap.to_json().replacen('{', "{\n  \"extra\": 1,", 1);
    add("key_file", "bad-unknown-field", unknown.into_bytes());
    let mut long_salt = cheap.clone();
    long_salt.kdf.salt = hex::encode([7u8; 300]);
    add("key_file", "edge-salt-300-bytes", long_salt.to_json().into_bytes());
    let mut scrypt = cheap.clone();
    scrypt.kdf.algorithm = "scrypt".into();
    add("key_file", "edge-unknown-kdf", scrypt.to_json().into_bytes());
    // Paper keys: no end line, a line out of order.
    let paper = cheap.to_paper().unwrap();
    add(
        "paper_key",
        "bad-no-end",
        paper.lines().filter(|l| !l.starts_with("end ")).collect::<Vec<_>>().join("\n").into(),
    );
    let mut lines: Vec<&str> = paper.lines().collect();
    let first = lines.iter().position(|l| l.starts_with("01:")).unwrap();
    lines.swap(first, first + 1);
    add("paper_key", "bad-swapped-lines", lines.join("\n").into_bytes());
    add("paper_key", "bad-numbered-zero", b"00: 00 | 0000\nend 00000000\n".to_vec());
    // Markers: a newer format, not JSON, a u8 overflow.
    add("marker", "bad-format-2", format!("{{\"holdfast_repository\":2,\"id\":\"{}\"}}", TEST_REPO.to_hex()).into());
    add("marker", "bad-not-json", b"holdfast".to_vec());
    add(
        "marker",
        "bad-format-256",
        format!("{{\"holdfast_repository\":256,\"id\":\"{}\"}}", TEST_REPO.to_hex()).into(),
    );
    // Repository configs: chunk sizes and pack sizes no `init` accepts.
    for (name, min, avg, max) in [
        ("edge-chunker-zero", 0, 0, 0),
        ("edge-chunker-avg-2gib", 1, 1 << 31, u32::MAX),
        ("edge-chunker-odd", 4097, 8193, 16385),
        ("edge-chunker-min-over-max", 1 << 20, 1 << 16, 1 << 12),
    ] {
        let mut c = sample_repo_config();
        c.chunker = ChunkerParams { min_size: min, avg_size: avg, max_size: max };
        add("repo_config", name, serde_json::to_vec(&c).unwrap());
    }
    let mut level = sample_repo_config();
    level.compression_level = i32::MAX;
    add("repo_config", "edge-compression-level-max", serde_json::to_vec(&level).unwrap());
    // Job configs: a multibyte character at an error, a control character, a
    // duplicate key.
    add("config_toml", "bad-name-multibyte", "[jobs.\"é\"]\nretries = 1\n".into());
    add("config_toml", "bad-control-char", "[jobs.a]\ndescription = \"a\\u0007b\"\n".into());
    add("config_toml", "bad-duplicate-key", "[jobs.a]\nretries = 1\nretries = 2\n".into());
    add("config_toml", "bad-error-after-multibyte", "[jobs.a]\ndescription = \"日本語\"\nretries = \"日本\"\n".into());
    out
}

// ------------------------------------------------------------- targets

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"1e999",
    b"-0.0",
    b"18446744073709551616",
    b"\"2026-01-01T00:00:00Z\"",
    b"\"-009999-01-01T00:00:00Z\"",
    b"\"0000000000000000000000000000000000000000000000000000000000000000\"",
    b"\xef\xbb\xbf",
    b"\xc3\xa9",
];

const TOML_TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b"\"",
    b"\"\"\"",
    b"'''",
    b"#",
    b"\n",
    b"\r\n",
    b".",
    b"{",
    b"}",
    b"[jobs.x]\n",
    b"[[jobs.x.hooks]]\n",
    b"[repositories.r]\n",
    b"[defaults]\n",
    b"1979-05-27T07:32:00Z",
    b"inf",
    b"nan",
    b"0x7fffffff",
    b"-9223372036854775809",
    b"\"\\u00e9\"",
    b"\xc3\xa9",
    b"\xe6\x97\xa5\xe6\x9c\xac",
    b"\xf0\x9f\x92\xbe",
    b"\\",
    b"\t",
];

const PAPER_TOKENS: &[&[u8]] =
    &[b"end ", b" | ", b": ", b"\n", b"\r\n", b"00", b"ff", b"01:", b"99:", b"-1:", b"|", b"repository "];

/// Key files whose argon2 cost is this small are unlocked (microseconds).
fn cheap_to_unlock(kf: &KeyFile) -> bool {
    kf.kdf.memory_kib <= 1024 && kf.kdf.iterations <= 4 && kf.kdf.parallelism <= 4
}

fn owned(seeds: Vec<(&'static str, Vec<u8>)>) -> Vec<Vec<u8>> {
    seeds.into_iter().map(|(_, b)| b).collect()
}

#[test]
fn pack() {
    let keys = keys();
    let decode = |input: &[u8]| -> Result<Outcome, String> {
        if read_header(&Id::ZERO, input, &keys).is_ok() {
            return Err("name: a pack was accepted under a name that is not its hash".into());
        }
        match read_header(&Id::of_bytes(input), input, &keys) {
            Ok(blobs) => postcard_round_trip(&blobs).map(|_| decoded(&blobs)),
            Err(e) => Ok(refused(&e)),
        }
    };
    fuzz(Target {
        name: "pack",
        decode: &decode,
        seeds: owned(seed_packs()),
        dict: &[b"HFPK", b"HFPK\x01", b"\xff\xff\xff\xff"],
        per_byte: 64,
        allowance: &no_allowance,
        generate: None,
    });
}

#[test]
fn pack_header() {
    let keys = keys();
    let data = pack_data();
    let decode = |input: &[u8]| -> Result<Outcome, String> {
        let pack = assemble_pack(&keys, &data, input);
        match read_header(&Id::of_bytes(&pack), &pack, &keys) {
            Ok(blobs) => {
                postcard_round_trip(&blobs)?;
                let outcome = decoded(&blobs);
                index_consumers(&IndexFile { packs: vec![IndexedPack { pack: Id::of_bytes(&pack), blobs }] })?;
                Ok(outcome)
            }
            Err(e) => Ok(refused(&e)),
        }
    };
    fuzz(Target {
        name: "pack_header",
        decode: &decode,
        seeds: owned(seed_pack_headers()),
        dict: &[&[0u8; 32], &[0xffu8; 32], b"\x01", b"\x07", b"\x08"],
        per_byte: 64,
        allowance: &no_allowance,
        generate: None,
    });
}

#[test]
fn repo_file() {
    let keys = keys();
    let decode = |input: &[u8]| -> Result<Outcome, String> {
        let mut outcome = None;
        let mut errors = String::new();
        for kind in [ObjectKind::Index, ObjectKind::Snapshot, ObjectKind::Config] {
            for expect in [None, Some(&TEST_REPO)] {
                let plain = match open_file(&keys, kind, input, expect) {
                    Ok(plain) => plain,
                    Err(e) => {
                        errors.push_str(&e.to_string());
                        continue;
                    }
                };
                outcome = Some(decoded(&(kind, expect.is_some(), &plain)));
                match kind {
                    ObjectKind::Index => {
                        if let Ok(file) = postcard::from_bytes::<IndexFile>(&plain) {
                            postcard_round_trip(&file)?;
                        }
                    }
                    ObjectKind::Snapshot => {
                        let _ = serde_json::from_slice::<Snapshot>(&plain);
                    }
                    _ => {
                        let _ = serde_json::from_slice::<RepoConfig>(&plain);
                    }
                }
            }
        }
        Ok(outcome.unwrap_or_else(|| refused(&errors)))
    };
    fuzz(Target {
        name: "repo_file",
        decode: &decode,
        seeds: owned(seed_repo_files()),
        dict: &[b"holdfast", b"holdfast\x01\x04", b"holdfast\x01\x05", b"holdfast\x01\x06", &[0x11; 32]],
        per_byte: 64,
        allowance: &no_allowance,
        generate: None,
    });
}

#[test]
fn sealed() {
    let keys = keys();
    let decode = |body: &[u8]| -> Result<Outcome, String> {
        if keys.open(ObjectKind::Tree, &TEST_OBJECT, body).is_ok() {
            return Err("authentication: unsealed bytes were accepted".into());
        }
        match keys.open(ObjectKind::Tree, &TEST_OBJECT, &seal_body(ObjectKind::Tree, &TEST_OBJECT, body)) {
            Ok(plain) => {
                if body.first() == Some(&0) && plain != body[1..] {
                    return Err("raw: a raw body does not open as itself".into());
                }
                if plain.len() as u64 > MAX_PLAINTEXT {
                    return Err(format!("zstd: opened to {} bytes, more than MAX_PLAINTEXT", plain.len()));
                }
                Ok(decoded(&plain))
            }
            Err(e) => Ok(refused(&e)),
        }
    };
    fuzz(Target {
        name: "sealed",
        decode: &decode,
        seeds: owned(seed_bodies()),
        dict: &[&[0x28, 0xb5, 0x2f, 0xfd], &[0x50, 0x2a, 0x4d, 0x18], &[0xff; 8], &[0x00], &[0x01]],
        per_byte: 64,
        allowance: &declared_size,
        generate: Some(&forge_content_size),
    });
}

#[test]
fn tree() {
    let keys = keys();
    let decode = |plain: &[u8]| -> Result<Outcome, String> {
        let id = keys.blob_id(plain);
        let sealed = keys.seal(ObjectKind::Tree, &id, plain, 3).map_err(|e| format!("seal: {e}"))?;
        let opened = keys.open(ObjectKind::Tree, &id, &sealed).map_err(|e| format!("open: {e}"))?;
        match Tree::decode(&opened) {
            Ok(tree) => {
                let again = Tree::decode(&tree.encode()).map_err(|e| format!("re-decode: {e}"))?;
                if again != tree || again.encode() != tree.encode() {
                    return Err("re-encode: a tree does not survive encode and decode".into());
                }
                for e in &tree.entries {
                    let _ = tree.find(&e.name);
                    if let EntryKind::File(f) = &e.kind {
                        let _: u64 = f.pieces.iter().map(|p| p.len()).fold(0, u64::saturating_add);
                    }
                }
                Ok(decoded(&tree))
            }
            Err(e) => Ok(refused(&e)),
        }
    };
    fuzz(Target {
        name: "tree",
        decode: &decode,
        seeds: owned(seed_trees()),
        dict: &[&[0u8; 32], &[0x01], &[0x06], &[0x07], &[0xff, 0xff, 0xff, 0xff, 0x0f]],
        per_byte: 64,
        allowance: &no_allowance,
        generate: None,
    });
}

#[test]
fn index() {
    let keys = keys();
    let decode = |plain: &[u8]| -> Result<Outcome, String> {
        let sealed = seal_file(&keys, ObjectKind::Index, &Id([0x44; 32]), plain).map_err(|e| format!("seal: {e}"))?;
        let opened = open_file(&keys, ObjectKind::Index, &sealed, None).map_err(|e| format!("open: {e}"))?;
        match postcard::from_bytes::<IndexFile>(&opened) {
            Ok(file) => {
                postcard_round_trip(&file)?;
                index_consumers(&file)?;
                Ok(decoded(&file))
            }
            Err(e) => Ok(refused(&e)),
        }
    };
    fuzz(Target {
        name: "index",
        decode: &decode,
        seeds: owned(seed_indexes()),
        dict: &[&[0u8; 32], &[0xffu8; 32], &[0x01], &[0x02], &[0xff, 0xff, 0xff, 0xff, 0x0f]],
        per_byte: 64,
        allowance: &no_allowance,
        generate: None,
    });
}

#[test]
fn snapshot() {
    let keys = keys();
    let decode = |plain: &[u8]| -> Result<Outcome, String> {
        let sealed =
            seal_file(&keys, ObjectKind::Snapshot, &Id([0x55; 32]), plain).map_err(|e| format!("seal: {e}"))?;
        let opened = open_file(&keys, ObjectKind::Snapshot, &sealed, None).map_err(|e| format!("open: {e}"))?;
        match serde_json::from_slice::<Snapshot>(&opened) {
            Ok(snap) => {
                let json = serde_json::to_vec(&snap).map_err(|e| format!("re-encode: {e}"))?;
                let again: Snapshot =
                    serde_json::from_slice(&json).map_err(|e| format!("re-decode: a re-encoded snapshot: {e}"))?;
                let (a, b) = (serde_json::to_value(&snap).unwrap(), serde_json::to_value(&again).unwrap());
                if !same_json(&a, &b) {
                    return Err("re-decode: a snapshot changes when written back".into());
                }
                Ok(decoded(&snap))
            }
            Err(e) => Ok(refused(&e)),
        }
    };
    fuzz(Target {
        name: "snapshot",
        decode: &decode,
        seeds: owned(seed_snapshots()),
        dict: JSON_TOKENS,
        per_byte: 64,
        allowance: &no_allowance,
        generate: Some(&mutate_json),
    });
}

#[test]
fn key_file() {
    let decode = |json: &[u8]| -> Result<Outcome, String> {
        let kf = match KeyFile::from_json(json) {
            Ok(kf) => kf,
            Err(e) => return Ok(refused(&e)),
        };
        let again = KeyFile::from_json(kf.to_json().as_bytes()).map_err(|e| format!("re-decode: {e}"))?;
        if again != kf {
            return Err("re-encode: a key file changes when written back".into());
        }
        if let Ok(paper) = kf.to_paper() {
            let back = KeyFile::from_paper(&paper).map_err(|e| format!("paper round trip: {e}"))?;
            same_key(&kf, &back)?;
        }
        if cheap_to_unlock(&kf) {
            let _ = kf.unlock(PASSPHRASE);
        }
        Ok(decoded(&kf))
    };
    fuzz(Target {
        name: "key_file",
        decode: &decode,
        seeds: owned(seed_key_files()),
        dict: JSON_TOKENS,
        per_byte: 64,
        allowance: &no_allowance,
        generate: Some(&mutate_json),
    });
}

#[test]
fn paper_key() {
    let decode = |text: &[u8]| -> Result<Outcome, String> {
        let text = String::from_utf8_lossy(text);
        let kf = match KeyFile::from_paper(&text) {
            Ok(kf) => kf,
            Err(e) => return Ok(refused(&e)),
        };
        let paper = kf.to_paper().map_err(|e| format!("re-encode: a paper key read back cannot be written: {e}"))?;
        let back = KeyFile::from_paper(&paper).map_err(|e| format!("paper round trip: {e}"))?;
        if back != kf {
            return Err("paper round trip: a paper key changes when written back".into());
        }
        if cheap_to_unlock(&kf) {
            let _ = kf.unlock(PASSPHRASE);
        }
        Ok(decoded(&kf))
    };
    // Mutate the binary behind a paper key, then write it with correct
    // checksums, so the parse behind them is reached.
    let bins: Vec<Vec<u8>> = vec![paper_bin(&cheap_key_file(&TEST_REPO))];
    let generate = |rng: &mut Rng, _pool: &[Vec<u8>]| -> Vec<u8> {
        let base = bins[rng.below(bins.len())].clone();
        let bin = mutate(rng, &base, &bins, &[&[0u8; 4], &[0xff; 4], &[0, 0, 0, 1]]);
        render_paper(&bin).into_bytes()
    };
    fuzz(Target {
        name: "paper_key",
        decode: &decode,
        seeds: owned(seed_papers()),
        dict: PAPER_TOKENS,
        per_byte: 64,
        allowance: &no_allowance,
        generate: Some(&generate),
    });
}

#[test]
fn marker() {
    let repo = TestRepo::new();
    let decode = |marker: &[u8]| -> Result<Outcome, String> {
        repo.write_marker(marker);
        repo.open()
    };
    fuzz(Target {
        name: "marker",
        decode: &decode,
        seeds: owned(seed_markers()),
        dict: JSON_TOKENS,
        per_byte: 64,
        allowance: &no_allowance,
        generate: Some(&mutate_json),
    });
}

#[test]
fn repo_config() {
    let repo = TestRepo::new();
    let decode = |json: &[u8]| -> Result<Outcome, String> {
        repo.write_config(json);
        repo.open()
    };
    fuzz(Target {
        name: "repo_config",
        decode: &decode,
        seeds: owned(seed_repo_configs()),
        dict: JSON_TOKENS,
        per_byte: 64,
        allowance: &no_allowance,
        generate: Some(&mutate_json),
    });
}

#[test]
fn config_toml() {
    let file = Path::new("/etc/holdfast/fuzz.toml");
    let decode = |text: &[u8]| -> Result<Outcome, String> {
        let text = String::from_utf8_lossy(text);
        let first = Config::from_text(file, &text);
        let second = Config::from_text(file, &text);
        if format!("{first:?}") != format!("{second:?}") {
            return Err("determinism: the same text parses two ways".into());
        }
        Ok(match &first {
            Ok(config) => decoded(config),
            Err(e) => refused(e),
        })
    };
    fuzz(Target {
        name: "config_toml",
        decode: &decode,
        seeds: owned(seed_tomls()),
        dict: TOML_TOKENS,
        per_byte: 256,
        allowance: &no_allowance,
        generate: Some(&mutate_toml),
    });
}

/// `holdfast serve` reads whatever an SSH client sends: after a proper
/// hello, the mutated bytes are its request stream. Every frame either gets
/// an answer or ends the session with an error; nothing is created outside
/// the served directory, whatever names and ranges the requests carry.
#[test]
fn serve_request() {
    use crate::engine::backend::protocol::{Op, Request, Response, write_frame};
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let root = scratch.path().join("repo");
    crate::engine::backend::Backend::create_layout(&crate::engine::backend::LocalBackend::new(&root))
        .expect("a layout");
    std::fs::write(root.join("index/00ff"), b"0123456789").expect("an index file");
    let hello = {
        let mut v = Vec::new();
        write_frame(
            &mut v,
            &Request { id: 0, op: Op::Hello { version: crate::engine::backend::protocol::VERSION } },
            &[],
        )
        .expect("a hello");
        v
    };
    let decode = |stream: &[u8]| -> Result<Outcome, String> {
        let input = [&hello[..], stream].concat();
        let mut output = Vec::new();
        let served = crate::engine::backend::serve::serve(&root, true, &input[..], &mut output);
        let outside: Vec<_> = std::fs::read_dir(scratch.path())
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| n != "repo")
            .collect();
        if !outside.is_empty() {
            return Err(format!("escape: the server created {outside:?} outside its directory"));
        }
        let mut replies = Vec::new();
        let mut out = &output[..];
        while let Some((r, _)) = crate::engine::backend::protocol::read_frame::<Response>(&mut out, u64::MAX)
            .map_err(|e| format!("answer: the server wrote a broken frame: {e}"))?
        {
            replies.push(format!("{:?}", r.reply).chars().take(40).collect::<String>());
        }
        replies.sort();
        Ok(match served {
            Ok(()) => decoded(&replies),
            Err(e) => refused(&e),
        })
    };
    fuzz(Target {
        name: "serve_request",
        decode: &decode,
        seeds: owned(seed_serve_requests()),
        dict: &[b"..", b"/", &[0xff, 0xff, 0xff, 0xff, 0x0f], &u64::MAX.to_le_bytes(), &[0x08], &[0x09]],
        per_byte: 64,
        allowance: &no_allowance,
        generate: None,
    });
}

/// Request streams (after the hello) a client sends.
fn seed_serve_requests() -> Vec<(&'static str, Vec<u8>)> {
    use crate::engine::backend::protocol::{Op, Request, write_frame};
    let frame = |op: Op, body: &[u8]| {
        let mut v = Vec::new();
        write_frame(&mut v, &Request { id: 1, op }, body).expect("a frame");
        v
    };
    vec![
        ("ok-put-pack", frame(Op::PutNew { dir: Dir::Packs, name: "ab".repeat(32) }, b"pack")),
        ("ok-get-range", frame(Op::GetRange { dir: Dir::Index, name: "00ff".into(), start: 2, end: 5 }, b"")),
        (
            "ok-list-then-remove",
            [frame(Op::List { dir: Dir::Index }, b""), frame(Op::Remove { dir: Dir::Index, name: "00ff".into() }, b"")]
                .concat(),
        ),
        ("ok-get-outside", frame(Op::Get { dir: Dir::Root, name: "../repo".into() }, b"")),
    ]
}

// ------------------------------------------------------ the rest

/// The helpers that make authentic inputs produce what the product itself
/// writes: a body sealed by hand opens, a hand-assembled pack reads back, a
/// hand-rendered paper key is the product's, and the cheap key file unlocks.
#[test]
fn helpers_match_the_product() {
    let keys = keys();
    let sealed = seal_body(ObjectKind::Tree, &TEST_OBJECT, b"\x00hello");
    assert_eq!(keys.open(ObjectKind::Tree, &TEST_OBJECT, &sealed).unwrap(), b"hello");
    let data = pack_data();
    let header = postcard::to_stdvec(&sample_blobs()).unwrap();
    let pack = assemble_pack(&keys, &data, &header);
    assert_eq!(read_header(&Id::of_bytes(&pack), &pack, &keys).unwrap(), sample_blobs());
    let kf = cheap_key_file(&TEST_REPO);
    assert_eq!(kf.unlock(PASSPHRASE).unwrap().map(|m| m.0), Some(TEST_MASTER));
    assert_eq!(render_paper(&paper_bin(&kf)).lines().last(), kf.to_paper().unwrap().lines().last());
    assert_eq!(KeyFile::from_paper(&render_paper(&paper_bin(&kf))).unwrap(), kf);
    let repo = TestRepo::new();
    assert!(repo.open().is_ok_and(|o| o.decoded()), "the test repository opens");
}

/// The corpus stays small enough to keep in the repository.
#[test]
fn corpus_is_small() {
    let mut total = 0;
    for dir in std::fs::read_dir(corpus_root()).expect("tests/corpus exists") {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            total += file.unwrap().metadata().unwrap().len();
        }
    }
    assert!(total < 200 << 10, "tests/corpus holds {total} bytes; keep it under 200 KB");
}

/// Write the `ok-*`, `bad-*` and `edge-*` corpus files (never `crash-*`).
#[test]
#[ignore = "writes tests/corpus: run by hand when the formats change"]
fn write_seed_corpus() {
    let root = corpus_root();
    let mut files: Vec<(&str, String, Vec<u8>)> = Vec::new();
    for (decoder, seeds) in [
        ("pack", seed_packs()),
        ("pack_header", seed_pack_headers()),
        ("repo_file", seed_repo_files()),
        ("sealed", seed_bodies()),
        ("tree", seed_trees()),
        ("index", seed_indexes()),
        ("snapshot", seed_snapshots()),
        ("key_file", seed_key_files()),
        ("paper_key", seed_papers()),
        ("marker", seed_markers()),
        ("repo_config", seed_repo_configs()),
        ("config_toml", seed_tomls()),
        ("serve_request", seed_serve_requests()),
    ] {
        files.extend(seeds.into_iter().map(|(name, bytes)| (decoder, name.to_string(), bytes)));
    }
    // A key file at the product's real cost (not unlocked by the fuzz loop)
    // and its paper form, and the example job config.
    let real = KeyFile::create(PASSPHRASE, &TEST_REPO, &MasterKey(TEST_MASTER)).unwrap();
    files.push(("key_file", "ok-default-cost".into(), real.to_json().into_bytes()));
    files.push(("paper_key", "ok-default-cost".into(), real.to_paper().unwrap().into_bytes()));
    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs.example.toml")).unwrap();
    files.push(("config_toml", "ok-jobs.example.toml".into(), example));
    files.extend(edge_cases());
    for (decoder, name, bytes) in files {
        let dir = root.join(decoder);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// An authentic zstd frame that declares no content size (or more than
/// MAX_PLAINTEXT) once opened without limit (a 40 KB sealed object to
/// 1.1 GiB); `Keys::open` now refuses anything past MAX_PLAINTEXT however
/// the frame is made. Ignored in CI only for the memory it takes to prove.
#[test]
#[ignore = "needs about 2.5 GiB of memory for a moment: run by hand"]
fn an_authentic_zstd_bomb_stops_at_max_plaintext() {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1100 {
        encoder.write_all(&zeros).unwrap();
    }
    let body = [vec![1u8], encoder.finish().unwrap()].concat();
    let sealed = seal_body(ObjectKind::Tree, &TEST_OBJECT, &body);
    match keys().open(ObjectKind::Tree, &TEST_OBJECT, &sealed) {
        Err(_) => {}
        Ok(plain) => panic!(
            "a {}-byte sealed object opened to {} bytes, past MAX_PLAINTEXT ({MAX_PLAINTEXT})",
            sealed.len(),
            plain.len()
        ),
    }
}
