//! Progress reporting and cancellation, the two things an embedding program hands in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::manifest::Warning;

/// Something that happened during a run. Serialised as one JSON object (the CLI's
/// `--json` event stream, schema in docs/CLI.md).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A new phase started: `scan`, `archive`, `extract`, `verify`, `swap`, `hooks`, ...
    Phase { phase: String },
    /// Totals known up front, for progress bars.
    Totals { files: u64, bytes: u64 },
    /// Work on one surface started.
    Surface { service: String, surface: String, context: Option<String> },
    /// Bytes of file data done since the last event.
    Bytes { bytes: u64 },
    /// A warning that also goes into the manifest or the report.
    Warning { warning: Warning },
}

/// Receives [`Event`]s. Called from the working thread: keep it quick.
pub trait Progress: Send + Sync {
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
/// other. The run stops at the next file boundary and cleans up as on any failure.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::Cancelled)
        } else {
            Ok(())
        }
    }
}
