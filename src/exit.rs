//! Exit codes: what `holdfast` tells the shell, systemd and monitoring.
//!
//! One enum, documented in the README and `--help`. A command that ran
//! several jobs exits with the worst of their codes ([`Exit::worst`]); an
//! error is classified by the typed errors in its chain ([`Exit::of_error`]),
//! so a message never decides a code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything asked for was done.
    Success,
    /// 1: failed: nothing was committed, or a check found damage.
    Failed,
    /// 2: the command line or the configuration is wrong.
    Usage,
    /// 3: done, with warnings: the snapshot was committed but is incomplete
    /// (unreadable files, files changed while read).
    Warnings,
    /// 4: wrong passphrase, or no usable key.
    Key,
    /// 5: the job is locked by a run in progress.
    Locked,
    /// 130 (SIGINT) or 143 (SIGTERM): interrupted.
    Interrupted { sigterm: bool },
}

/// The exit codes as the README and `--help` list them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    failed: nothing committed, or a check found damage
  2    usage or configuration error
  3    completed with warnings: snapshot committed but incomplete
  4    wrong passphrase or key problem
  5    repository or job locked/busy
  130  interrupted by SIGINT; 143 by SIGTERM
Several jobs: the worst code wins.";

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Warnings => 3,
            Exit::Key => 4,
            Exit::Locked => 5,
            Exit::Interrupted { sigterm: false } => 130,
            Exit::Interrupted { sigterm: true } => 143,
        }
    }

    /// How bad it is, for [`Exit::worst`]: an interruption, then a broken
    /// setup (usage, keys), then a failure, a busy job, warnings, success.
    fn severity(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Warnings => 1,
            Exit::Locked => 2,
            Exit::Failed => 3,
            Exit::Key => 4,
            Exit::Usage => 5,
            Exit::Interrupted { .. } => 6,
        }
    }

    /// The worse of two outcomes (several jobs: the worst wins).
    pub fn worst(self, other: Exit) -> Exit {
        if other.severity() > self.severity() { other } else { self }
    }

    /// The code an error stands for, from the typed errors in its chain.
    pub fn of_error(error: &anyhow::Error, interrupt: Option<&Interrupt>) -> Exit {
        for cause in error.chain() {
            if let Some(e) = cause.downcast_ref::<crate::Error>() {
                if e.is_key_problem() {
                    return Exit::Key;
                }
                if matches!(e, crate::Error::Interrupted) {
                    return interrupt.and_then(Interrupt::exit).unwrap_or(Exit::Interrupted { sigterm: true });
                }
            }
            if cause.downcast_ref::<crate::config::ConfigError>().is_some() || cause.downcast_ref::<Usage>().is_some() {
                return Exit::Usage;
            }
            if cause.downcast_ref::<crate::spool::JobBusy>().is_some() {
                return Exit::Locked;
            }
        }
        interrupt.and_then(Interrupt::exit).unwrap_or(Exit::Failed)
    }
}

/// A mistake on the command line that clap cannot see (a missing
/// `--config`, options that do not go together): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// SIGTERM and SIGINT as a cancel flag: the first one asks the command to
/// stop at the next safe point (a run still runs its `finally` hooks); a
/// second one of either kind ends the process at once.
#[derive(Clone)]
pub struct Interrupt {
    cancel: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
    int: Arc<AtomicBool>,
}

impl Interrupt {
    /// Install the handlers (only commands that honour the flag do).
    pub fn install() -> std::io::Result<Interrupt> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let me = Interrupt {
            cancel: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicBool::new(false)),
            int: Arc::new(AtomicBool::new(false)),
        };
        for (sig, which) in [(SIGTERM, &me.term), (SIGINT, &me.int)] {
            // Order matters: the default action applies only when the flag
            // was already set by an earlier signal.
            signal_hook::flag::register_conditional_default(sig, me.cancel.clone())?;
            signal_hook::flag::register(sig, which.clone())?;
            signal_hook::flag::register(sig, me.cancel.clone())?;
        }
        Ok(me)
    }

    /// A flag no signal sets (for commands run without handlers).
    pub fn none() -> Interrupt {
        let f = || Arc::new(AtomicBool::new(false));
        Interrupt { cancel: f(), term: f(), int: f() }
    }

    /// Set when the command should stop.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.cancel
    }

    pub fn is_set(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The exit code of an interruption, if there was one.
    pub fn exit(&self) -> Option<Exit> {
        if self.term.load(Ordering::Relaxed) {
            Some(Exit::Interrupted { sigterm: true })
        } else if self.int.load(Ordering::Relaxed) {
            Some(Exit::Interrupted { sigterm: false })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_outcome_wins_in_any_order() {
        let all = [
            Exit::Success,
            Exit::Warnings,
            Exit::Locked,
            Exit::Failed,
            Exit::Key,
            Exit::Usage,
            Exit::Interrupted { sigterm: true },
        ];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                assert_eq!(a.worst(*b), all[i.max(j)]);
            }
        }
    }

    #[test]
    fn errors_map_to_codes_by_type() {
        let key: anyhow::Error = crate::Error::WrongPassphrase("/r".into()).into();
        assert_eq!(Exit::of_error(&key.context("opening"), None), Exit::Key);
        let usage: anyhow::Error = Usage("needs --config".into()).into();
        assert_eq!(Exit::of_error(&usage, None), Exit::Usage);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("disk full"), None), Exit::Failed);
    }
}
