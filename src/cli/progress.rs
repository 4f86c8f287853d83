//! The progress display of long commands: a bar on stderr when it is a
//! terminal (indicatif), JSON lines with `--json-progress` (for wrappers
//! and GUIs), nothing otherwise — under systemd the journal gets only the
//! summary lines. The engine only bumps [`Progress`] counters; a thread
//! here reads them a few times a second.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::progress::{Progress, ProgressView};
use crate::units::human;

/// How progress is shown (`--progress`, `--no-progress`, `--json-progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Off,
    /// A bar on stderr; `forced` draws it even when stderr is no terminal.
    Bar {
        forced: bool,
    },
    Json,
}

impl ProgressMode {
    pub fn from_flags(progress: bool, no_progress: bool, json: bool) -> ProgressMode {
        if json {
            ProgressMode::Json
        } else if no_progress {
            ProgressMode::Off
        } else if progress {
            ProgressMode::Bar { forced: !std::io::stderr().is_terminal() }
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bar { forced: false }
        } else {
            ProgressMode::Off
        }
    }
}

/// A running display; dropping it ends the display cleanly (the bar is
/// cleared, a last JSON line written).
pub struct ProgressDisplay {
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressDisplay {
    /// Start showing a new [`Progress`] in its first `phase`; `None` when
    /// progress is not shown.
    pub fn start(mode: ProgressMode, phase: &str) -> Option<ProgressDisplay> {
        if mode == ProgressMode::Off {
            return None;
        }
        let progress = Arc::new(Progress::default());
        progress.phase(phase);
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (progress.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || match mode {
                ProgressMode::Json => json_lines(&p, &s),
                ProgressMode::Bar { forced } => bar(&p, &s, forced),
                ProgressMode::Off => {}
            })
            .ok()?;
        Some(ProgressDisplay { progress, stop, thread: Some(thread) })
    }

    /// The counters the operation bumps.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The bar being drawn, if any: log lines go above it ([`LogWriter`]).
static DRAWN: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

/// stderr for log lines: written above the bar while one is drawn, so a
/// line and the bar never cut into each other.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let drawn = DRAWN.lock().ok().and_then(|b| b.clone());
        match drawn {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn set_drawn(bar: Option<ProgressBar>) {
    if let Ok(mut d) = DRAWN.lock() {
        *d = bar;
    }
}

/// How often the display reads the counters.
const TICK: Duration = Duration::from_millis(100);
/// How often a JSON line is written.
const JSON_EVERY: Duration = Duration::from_secs(1);

fn json_lines(p: &Progress, stop: &AtomicBool) {
    let started = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        let ending = stop.load(Ordering::Relaxed);
        if ending || last.is_none_or(|l| l.elapsed() >= JSON_EVERY) {
            let line = JsonLine { progress: p.view(), elapsed_secs: started.elapsed().as_secs_f64(), done: ending };
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
            last = Some(Instant::now());
        }
        if ending {
            return;
        }
        std::thread::sleep(TICK);
    }
}

#[derive(serde::Serialize)]
struct JsonLine {
    progress: ProgressView,
    elapsed_secs: f64,
    /// The last line of this display.
    done: bool,
}

fn bar(p: &Progress, stop: &AtomicBool, forced: bool) {
    let target = if forced { ProgressDrawTarget::term_like(Box::new(Stderr)) } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(None, target);
    let counting =
        ProgressStyle::with_template("{spinner} {prefix}: {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    let known =
        ProgressStyle::with_template("{prefix}: [{bar:25}] {percent:>3}% {msg} {binary_bytes_per_sec} ETA {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(counting.clone());
    set_drawn(Some(bar.clone()));
    let mut phase = String::new();
    while !stop.load(Ordering::Relaxed) {
        let v = p.view();
        if v.phase != phase {
            phase = v.phase.clone();
            bar.reset();
            bar.set_style(counting.clone());
            bar.set_length(0);
            bar.set_prefix(phase.clone());
        }
        if v.total_known && bar.length() != Some(v.bytes_total) {
            bar.set_style(known.clone());
            bar.set_length(v.bytes_total);
        }
        bar.set_position(v.bytes_done);
        bar.set_message(message(&v));
        bar.tick();
        std::thread::sleep(TICK);
    }
    set_drawn(None);
    bar.finish_and_clear();
}

/// Files and bytes done of the total known so far, and where it is.
fn message(v: &ProgressView) -> String {
    let so_far = if v.total_known { "" } else { " so far" };
    let mut text = format!("{}/{}{so_far}", human(v.bytes_done), human(v.bytes_total));
    if v.files_total > 0 {
        text = format!("{}/{} files, {text}", v.files_done, v.files_total);
    }
    if !v.current.is_empty() {
        text.push(' ');
        text.push_str(&shorten(&v.current, 40));
    }
    text
}

/// The end of `path`, at most `max` characters, with `…` where cut.
fn shorten(path: &str, max: usize) -> String {
    let n = path.chars().count();
    if n <= max {
        return path.to_string();
    }
    let tail: String = path.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}

/// stderr as a terminal for indicatif when it is not one (`--progress`
/// into a file or a pipe): plain ANSI sequences.
#[derive(Debug)]
struct Stderr;

impl indicatif::TermLike for Stderr {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { write!(std::io::stderr(), "\x1b[{n}A") } else { Ok(()) }
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { write!(std::io::stderr(), "\x1b[{n}B") } else { Ok(()) }
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { write!(std::io::stderr(), "\x1b[{n}C") } else { Ok(()) }
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 { write!(std::io::stderr(), "\x1b[{n}D") } else { Ok(()) }
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        writeln!(std::io::stderr(), "{s}")
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        write!(std::io::stderr(), "{s}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        write!(std::io::stderr(), "\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_keep_their_end() {
        assert_eq!(shorten("/srv/a", 40), "/srv/a");
        let s = shorten("/srv/nextcloud/data/alice/files/Photos/2024/holiday/IMG_0001.jpg", 30);
        assert_eq!(s.chars().count(), 30);
        assert!(s.starts_with('…') && s.ends_with("IMG_0001.jpg"));
    }
}
