//! Export surfaces at backup time (decisions/D-16): before the freeze, each export command
//! fills an empty directory under the run's state directory with one context's data of
//! an instance-scoped store; the backup archives those directories; they are removed when
//! the run ends, whatever its end. A killed run's directory is removed by the next run or
//! `gc`, from its journal (`export-<run>.json`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::format::Warning;
use crate::error::{Error, Result};
use crate::hooks;
use crate::plan::ExportJob;
use crate::progress::Cancel;
use crate::state::{self, failpoint, Recovered};

/// What a dead run's directory is found by.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    run_id: String,
    pid: u32,
    dir: PathBuf,
}

/// The filled export directories of a run, one per job (in the jobs' order). Dropping it
/// removes them and the journal.
pub(crate) struct Exported {
    state: PathBuf,
    run: String,
    dir: PathBuf,
    /// Where each job's data is.
    pub(crate) dirs: Vec<PathBuf>,
}

impl Drop for Exported {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        state::journal::remove(&self.state, "export", &self.run);
    }
}

/// Runs every export job into `<state>/export-<run>/<service>/<context>/<export>`, with
/// `{service}`, `{context}` and `{path}`. The first failure ends the run, naming the
/// service, context and command; nothing is left behind.
pub(crate) fn run_exports(jobs: &[ExportJob], inventory: &Path, state: &Path, run: &str, cancel: &Cancel) -> Result<Exported> {
    let dir = state.join(format!("export-{run}"));
    let mut exported = Exported { state: state.to_path_buf(), run: run.to_string(), dir: dir.clone(), dirs: Vec::new() };
    if jobs.is_empty() {
        return Ok(exported);
    }
    // Journaled before the directory exists: a killed run's directory is always found.
    state::journal::save(state, "export", run, &Journal { run_id: run.to_string(), pid: std::process::id(), dir: dir.clone() })?;
    for job in jobs {
        cancel.check()?;
        let path = dir.join(&job.service).join(&job.context).join(&job.export);
        fs::create_dir_all(&path).map_err(Error::io(&path, "creating the export directory"))?;
        let vars = [("service", job.service.as_str()), ("context", job.context.as_str()), ("path", &path.display().to_string())];
        hooks::run(&job.command, &vars).map_err(|e| {
            Error::command_caused(
                format!(
                    "{}.{}[{}]: the export failed, so the backup stopped and wrote no archive: {e}; fix the command under services.{}.exports in {}, or run it by hand to see why",
                    job.service,
                    job.export,
                    job.context,
                    job.service,
                    inventory.display()
                ),
                e,
            )
        })?;
        failpoint("backup-exported");
        exported.dirs.push(path);
    }
    Ok(exported)
}

/// The manifest's warning for each export: its data is its own logical instant.
pub(crate) fn warnings(jobs: &[ExportJob]) -> Vec<Warning> {
    jobs.iter()
        .map(|j| Warning {
            code: "export-own-instant".into(),
            message: format!(
                "{}.{}[{}]: written by the service's export command before the freeze; it is its own logical instant, not the snapshot's",
                j.service, j.export, j.context
            ),
        })
        .collect()
}

/// Removes the export directories of dead runs (for `gc` and the start of every backup).
pub(crate) fn recover(state: &Path) -> Result<Vec<Recovered>> {
    let mut out = Vec::new();
    for (path, j) in state::journal::dead::<Journal>(state, "export", |j| j.pid)? {
        if j.dir.starts_with(state) {
            let _ = fs::remove_dir_all(&j.dir);
        }
        let _ = fs::remove_file(&path);
        out.push(Recovered { run_id: j.run_id, action: "export-removed".into(), outcomes: Vec::new() });
    }
    Ok(out)
}
