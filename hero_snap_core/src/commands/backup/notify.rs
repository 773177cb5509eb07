//! The inventory's `notify:` command, told about a backup run when it has ended: the run's
//! record as one JSON object on its stdin. Whatever the command does, the run's result
//! stands; its problems are warnings.

use std::path::Path;

use serde::Serialize;

use crate::archive::format::SelectionRecord;
use crate::hooks;
use crate::inventory::{Notify, NotifyOn};
use crate::state::runs::{selection_label, RecordedRun};

/// What the command reads on stdin: the run as `status --json` shows a run, with its
/// series and the event.
#[derive(Serialize)]
struct Notice<'a> {
    /// `failure` or `success`.
    event: &'static str,
    instance: &'a str,
    /// The series, as `status` and the metrics label it (`whole instance`, …).
    selection: String,
    selection_record: &'a SelectionRecord,
    #[serde(flatten)]
    run: &'a RecordedRun,
}

/// Runs `notify` when it wants runs like `run` (a failure, or a success when asked), with
/// the run on stdin and `{event}`, `{instance}`, `{selection}`, `{exit_code}` substituted.
/// A command that cannot start, fails, or passes its timeout (it is then killed) is
/// logged as a warning naming it and `inventory`, the file to fix.
pub(super) fn notify(notify: &Notify, inventory: &Path, instance: &str, selection: &SelectionRecord, run: &RecordedRun) {
    if !notify.wants(run.ok) {
        return;
    }
    let event = NotifyOn::of(run.ok).as_str();
    let label = selection_label(selection);
    let notice = Notice { event, instance, selection: label.clone(), selection_record: selection, run };
    let mut input = match serde_json::to_vec(&notice) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("notify: the run's JSON could not be made ({e}); the command under `notify` in {} was not run", inventory.display());
            return;
        }
    };
    input.push(b'\n');
    let code = run.exit_code.to_string();
    let vars = [("event", event), ("instance", instance), ("selection", label.as_str()), ("exit_code", code.as_str())];
    match hooks::run_with_input(&notify.command, &vars, &input) {
        Ok(out) => tracing::debug!("notify: `{}` said: {}", notify.command.argv.join(" "), out.trim()),
        Err(e) => tracing::warn!(
            "notify: {e}; the backup's own result and exit code stand; check the command under `notify` in {} (run it by hand with the run's JSON on stdin)",
            inventory.display()
        ),
    }
}
