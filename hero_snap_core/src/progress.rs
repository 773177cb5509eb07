//! Progress reporting and cancellation, the two things an embedding program hands in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::archive::format::Warning;
use crate::outcome::Outcome;

/// Something that happened during a run. Serialised with its kind in `event`; the CLI's
/// `--json` stream (docs/CLI.md, docs/events.schema.json) is built from these.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A new phase started: `freeze`, `scan`, `archive`, `extract`, `verify`, `swap`, `migrate`, ...
    Phase {
        /// The phase's name.
        phase: String,
    },
    /// Totals known up front, for progress bars.
    Totals {
        /// Regular files the run will read or write.
        files: u64,
        /// Bytes of file data the run will read or write.
        bytes: u64,
    },
    /// Work on one surface started.
    Surface {
        /// The service.
        service: String,
        /// The surface.
        surface: String,
        /// The context of a per-context surface.
        context: Option<String>,
    },
    /// Bytes of file data done since the last event.
    Bytes {
        /// The increment.
        bytes: u64,
    },
    /// A warning that also goes into the manifest or the report.
    Warning {
        /// The warning.
        warning: Warning,
    },
    /// The result for one service or surface, sent when the run has decided it.
    Outcome(Outcome),
}

/// Receives [`Event`]s. Called from the working thread: keep it quick.
///
/// Any `Fn(&Event) + Send + Sync` closure is a `Progress`:
///
/// ```
/// use hero_snap_core::{Event, Progress};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let done = AtomicU64::new(0);
/// let progress = |e: &Event| {
///     if let Event::Bytes { bytes } = e {
///         done.fetch_add(*bytes, Ordering::Relaxed);
///     }
/// };
/// progress.event(&Event::Bytes { bytes: 4096 });
/// assert_eq!(done.load(Ordering::Relaxed), 4096);
/// ```
pub trait Progress: Send + Sync {
    /// Called for every event of the run, in order.
    fn event(&self, event: &Event);
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: &Event) {}
}

impl<F: Fn(&Event) + Send + Sync> Progress for F {
    fn event(&self, event: &Event) {
        self(event)
    }
}

/// A cancellation token: clone it, hand one to the run, call [`Cancel::cancel`] on the
/// other (from any thread, or from a signal handler through [`Cancel::flag`]). The run
/// stops at the next file boundary and cleans up as on any failure: services thawed,
/// snapshots removed, no archive published, a restore rolled back. It then returns
/// [`crate::Error::Cancelled`].
///
/// ```
/// use hero_snap_core::Cancel;
///
/// let cancel = Cancel::new();
/// let handle = cancel.clone();
/// std::thread::spawn(move || handle.cancel()).join().unwrap();
/// assert!(cancel.is_cancelled());
/// ```
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token that is not cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the run to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }

    /// Whether [`Cancel::cancel`] was called (or the flag was set).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The shared flag behind the token, for code that can only set an `AtomicBool`, such
    /// as a signal handler (`signal_hook::flag::register(SIGINT, cancel.flag())`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Once cancelled, whatever error ended the run (a hook killed by the same Ctrl-C, a
    /// read interrupted mid-file) is reported as the cancellation it is.
    pub(crate) fn explain(&self, e: crate::Error) -> crate::Error {
        if self.is_cancelled() {
            crate::Error::Cancelled
        } else {
            e
        }
    }
}
