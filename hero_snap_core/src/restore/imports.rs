//! The imports of export surfaces after a restore's commit (D-16): run by the restore
//! after its start hooks, or by `gc` for a restore killed after its commit. Each import's
//! progress is in the restore journal, so that `gc` runs the ones that never started and
//! reports the one a kill interrupted: an import cannot be undone, and one that may have
//! half-run is not run again blind.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hooks;
use crate::inventory::Command;
use crate::outcome::{Outcome, Status};
use crate::restore::swap::Journal;
use crate::restore::PlannedImport;
use crate::state::failpoint;

/// One import still owed by a committed restore, as journaled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PendingImport {
    pub(crate) service: String,
    pub(crate) export: String,
    /// Context in the archive.
    pub(crate) context: String,
    /// Context on the target: the import's `{context}`.
    pub(crate) target_context: String,
    pub(crate) command: Command,
    /// The staged copy: the import's `{path}`.
    pub(crate) staged: PathBuf,
    /// Set (and journaled) just before the command runs: a kill after this point leaves
    /// an import that may have partly run.
    pub(crate) started: bool,
}

impl PendingImport {
    /// The planned imports whose copies were staged, none started yet.
    pub(crate) fn from_plan(imports: &[PlannedImport]) -> Vec<PendingImport> {
        imports
            .iter()
            .filter_map(|i| {
                Some(PendingImport {
                    service: i.service.clone(),
                    export: i.export.clone(),
                    context: i.context.clone(),
                    target_context: i.target_context.clone(),
                    command: i.command.clone(),
                    staged: i.staged.clone()?,
                    started: false,
                })
            })
            .collect()
    }

    fn outcome(&self, status: Status, why: String) -> Outcome {
        Outcome::new(&self.service, Some(&self.export), Some(&self.context), status, Some(why))
    }

    /// Runs the import on its staged copy, with `{service}`, `{context}` (the target's
    /// name) and `{path}`; the copy is removed when it succeeded and kept when it failed.
    pub(crate) fn run(&self) -> Outcome {
        let path = self.staged.display().to_string();
        let vars = [("service", self.service.as_str()), ("context", self.target_context.as_str()), ("path", path.as_str())];
        match hooks::run(&self.command, &vars) {
            Ok(_) => {
                let _ = std::fs::remove_dir_all(&self.staged);
                self.outcome(Status::Ok, format!("imported into context `{}` by `{}`", self.target_context, self.command.argv.join(" ")))
            }
            Err(e) => self.outcome(
                Status::Failed,
                format!(
                    "the import into context `{}` failed: {e}; the restored surfaces stay (an import cannot be rolled back); the staged copy is kept at {path}: fix the cause, run the import again with {{path}}={path}, then delete it",
                    self.target_context
                ),
            ),
        }
    }

    /// The outcome of an import a kill interrupted: it may have partly run, so it is not
    /// run again; its copy stays for the operator.
    pub(crate) fn interrupted(&self) -> Outcome {
        let path = self.staged.display();
        self.outcome(
            Status::Failed,
            format!(
                "the restore was killed while its import into context `{}` ran (`{}`), so it may have partly run and is not run again blind; the staged copy is kept at {path}: check the store, run the import again with {{path}}={path} if needed, then delete it",
                self.target_context,
                self.command.argv.join(" ")
            ),
        )
    }
}

/// `hero_db.memory[geomind]`: an import's outcome as warnings and `gc` name it.
pub(crate) fn label(o: &Outcome) -> String {
    format!("{}.{}[{}]", o.service, o.surface.as_deref().unwrap_or_default(), o.context.as_deref().unwrap_or_default())
}

/// Runs the journal's imports in order. Each is marked started in the journal before its
/// command runs and dropped from it once it ended; one found already started was
/// interrupted by a kill and is reported, not run. The staged copies' directory is
/// removed unless a copy is kept (a failed or interrupted import).
pub(crate) fn run_journaled(j: &mut Journal, state: &Path) -> Vec<Outcome> {
    let mut out = Vec::new();
    while let Some(next) = j.imports.first().cloned() {
        let outcome = if next.started {
            next.interrupted()
        } else {
            j.imports[0].started = true;
            match j.save(state) {
                Ok(()) => {
                    failpoint("restore-import-started");
                    next.run()
                }
                // Unjournaled, a kill during the import would have `gc` run it a second time.
                Err(e) => next.outcome(
                    Status::Failed,
                    format!(
                        "not run: the restore journal could not record it ({e}); the staged copy is kept at {}: run the import by hand",
                        next.staged.display()
                    ),
                ),
            }
        };
        j.imports.remove(0);
        let _ = j.save(state);
        out.push(outcome);
    }
    let kept = out.iter().any(|o| o.status == Status::Failed);
    if let (false, Some(d)) = (kept, &j.imports_dir) {
        let _ = std::fs::remove_dir_all(d);
    }
    out
}
