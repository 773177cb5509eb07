//! What a backup run leaves besides its archive: its series' run record in the state
//! directory (read by `status`), and the metrics file when one is asked for. Written after
//! every run, success or failure, including one refused before anything was frozen. Then
//! the inventory's `notify` command is told, when it asks for runs like this one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::notify;
use super::BackupReport;
use crate::archive::format::SelectionRecord;
use crate::error::{Error, Result};
use crate::inventory::{Inventory, Notify};
use crate::outcome::check_outcomes;
use crate::plan::Selection;
use crate::state::runs::{self, OutcomeCounts, RecordedRun, RunError};
use crate::state::{self, metrics};

/// Records a backup run: start it before anything that can fail (resolving the keys, the
/// target), then hand [`RunLog::finish`] the run's result.
///
/// ```no_run
/// use hero_snap_core::{backup_to, BackupOptions, Cancel, Encryption, Inventory, Location, NoProgress, RunLog};
/// # fn main() -> hero_snap_core::Result<()> {
/// let inv = Inventory::load("/etc/hero/inventory.yaml".as_ref())?;
/// let opts = BackupOptions::new(Encryption::None);
/// let log = RunLog::start(&inv, &opts.selection, None, "/backups/a.hsnap").metrics_file(Some("/var/lib/node_exporter/hero-snap.prom".into()));
/// let result = backup_to(&inv, &opts, &Location::File("/backups/a.hsnap".into()), &NoProgress, &Cancel::new());
/// let report = log.finish(result)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RunLog {
    state: PathBuf,
    instance: String,
    selection: SelectionRecord,
    to: String,
    started: String,
    clock: Instant,
    metrics_file: Option<PathBuf>,
    inventory: PathBuf,
    notify: Option<Notify>,
}

impl RunLog {
    /// A run of `selection` of `inv` to `to` starts now; its record goes to the state
    /// directory ([`crate::state_dir`] of `state_dir` and the inventory).
    pub fn start(inv: &Inventory, selection: &Selection, state_dir: Option<&Path>, to: impl Into<String>) -> RunLog {
        RunLog {
            state: state::state_dir(state_dir, Some(inv)),
            instance: inv.instance().to_string(),
            selection: selection.record(),
            to: to.into(),
            started: state::now_rfc3339(),
            clock: Instant::now(),
            metrics_file: None,
            inventory: inv.source().to_path_buf(),
            notify: inv.notify().cloned(),
        }
    }

    /// Also write the series' metrics to this file (node_exporter's textfile collector).
    pub fn metrics_file(mut self, path: Option<PathBuf>) -> RunLog {
        self.metrics_file = path;
        self
    }

    /// Records the run's `result` and returns it. A failed run stays failed whatever the
    /// recording does (its problems are logged); a run that succeeded fails with the
    /// recording's error, since `status` and the metrics would otherwise miss it. Last, the
    /// inventory's `notify` command is told about the run (the recording's failure
    /// included) when it asks for such runs; it never changes the result.
    pub fn finish(self, result: Result<BackupReport>) -> Result<BackupReport> {
        let mut run = self.entry(&result);
        let saved = runs::record(&self.state, &self.instance, &self.selection, run.clone());
        let written = match (&saved, &self.metrics_file) {
            (Ok(rec), Some(path)) => metrics::write(path, rec),
            _ => Ok(()),
        };
        let result = metrics::settle(result, saved.map(|_| ()).and(written), "backup", "recording it");
        if let (true, Err(e)) = (run.ok, &result) {
            let (code, error) = failure(e);
            (run.ok, run.exit_code, run.error) = (false, code, Some(error));
        }
        if let Some(n) = &self.notify {
            notify::notify(n, &self.inventory, &self.instance, &self.selection, &run);
        }
        result
    }

    fn entry(&self, result: &Result<BackupReport>) -> RecordedRun {
        let mut run = RecordedRun {
            run_id: None,
            started: self.started.clone(),
            finished: state::now_rfc3339(),
            duration_seconds: self.clock.elapsed().as_secs_f64(),
            ok: false,
            exit_code: 0,
            error: None,
            to: self.to.clone(),
            consistency: None,
            freeze_window_ms: None,
            archive_bytes: None,
            files: None,
            bytes: None,
            outcomes: OutcomeCounts::default(),
        };
        let verdict = match result {
            Ok(report) => {
                let m = &report.manifest;
                run.run_id = Some(m.run_id.clone());
                run.consistency = Some(m.consistency);
                run.freeze_window_ms = m.freeze_window_ms;
                (run.archive_bytes, run.files, run.bytes) = (Some(report.archive_bytes), Some(m.files), Some(m.bytes));
                run.outcomes = OutcomeCounts::of(&report.outcomes);
                check_outcomes(&report.outcomes).err().map(|e| failure(&e))
            }
            Err(e) => Some(failure(e)),
        };
        run.ok = verdict.is_none();
        if let Some((code, error)) = verdict {
            (run.exit_code, run.error) = (code, Some(error));
        }
        run
    }
}

/// The exit code and recorded error of a failed run.
fn failure(e: &Error) -> (i32, RunError) {
    (e.exit_code(), RunError { kind: e.kind().into(), message: e.to_string() })
}
