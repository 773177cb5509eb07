//! Swapping staged trees in with renames, the restore journal, and undoing or finishing
//! a restore (in-process on failure, or by `gc` after a crash).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inventory::Command;
use crate::outcome::{Outcome, Status};
use crate::restore::imports::{label, run_journaled, PendingImport};
use crate::state::{self, failpoint, Recovered};

/// One surface being restored: where it is staged, where it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Swap {
    pub(crate) target: PathBuf,
    pub(crate) stage: PathBuf,
    /// Where the replaced data is parked after the swap.
    pub(crate) old: PathBuf,
    pub(crate) had_old: bool,
    /// Inode of the staged root, to tell after a crash whether the swap happened.
    pub(crate) stage_ino: u64,
    /// Modification times (seconds, nanoseconds) of the staged root and of the replaced
    /// target: moving a directory to another parent resets its mtime on XFS, so both are
    /// put back after a swap or a rollback.
    #[serde(default)]
    pub(crate) stage_mtime: Option<(i64, u32)>,
    #[serde(default)]
    pub(crate) target_mtime: Option<(i64, u32)>,
}

pub(crate) fn mtime_of(p: &Path) -> Option<(i64, u32)> {
    fs::symlink_metadata(p).ok().map(|m| (m.mtime(), m.mtime_nsec() as u32))
}

pub(crate) fn set_mtime(p: &Path, t: Option<(i64, u32)>) {
    if let Some((secs, nanos)) = t {
        let t = filetime::FileTime::from_unix_time(secs, nanos);
        let _ = filetime::set_symlink_file_times(p, t, t);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    Extracting,
    Swapping,
    Committed,
}

/// The restore journal (state_dir/restore-<run>.json).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub(crate) run_id: String,
    pub(crate) pid: u32,
    pub(crate) phase: Phase,
    pub(crate) keep_old: bool,
    /// Staging and parking directories this run created.
    pub(crate) work_dirs: Vec<PathBuf>,
    /// Missing parents of targets this run created (topmost first).
    #[serde(default)]
    pub(crate) created_dirs: Vec<PathBuf>,
    /// Modification times (seconds, nanoseconds) of the existing directories this run adds
    /// entries to, put back when the run is undone, so that "as it was" is exact.
    #[serde(default)]
    pub(crate) parent_times: Vec<(PathBuf, i64, u32)>,
    pub(crate) swaps: Vec<Swap>,
    /// Services this run stopped, with their start hooks, for `gc` to start again.
    #[serde(default)]
    pub(crate) stopped: Vec<(String, Command)>,
    /// Where the archive's export copies are staged for their imports (D-16), in the state
    /// directory: removed by a rollback; after the commit, only once every import succeeded.
    #[serde(default)]
    pub(crate) imports_dir: Option<PathBuf>,
    /// The imports the committed restore still owes (journaled with the commit), for `gc`
    /// to run after a kill.
    #[serde(default)]
    pub(crate) imports: Vec<PendingImport>,
}

impl Journal {
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        state::journal::save(dir, "restore", &self.run_id, self)
    }
    pub(crate) fn remove(&self, dir: &Path) {
        state::journal::remove(dir, "restore", &self.run_id);
    }
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Puts the staged tree at the target; the replaced data goes to `old`.
pub(crate) fn swap_in(s: &mut Swap) -> Result<()> {
    if s.had_old {
        let parked = s.old.parent().expect("old has a parent");
        fs::create_dir_all(parked).map_err(Error::io(parked, "creating the parking directory"))?;
        exchange(&s.stage, &s.target).map_err(Error::io(&s.target, "swapping in the restored data"))?;
        fs::rename(&s.stage, &s.old).map_err(Error::io(&s.old, "parking the replaced data"))?;
    } else {
        fs::rename(&s.stage, &s.target).map_err(Error::io(&s.target, "moving the restored data into place"))?;
    }
    set_mtime(&s.target, s.stage_mtime);
    if let Some(p) = s.target.parent() {
        sync_dir(p);
    }
    Ok(())
}

/// Undoes the swaps of a journal (in-process or after a crash). Works from what is on disk.
pub(crate) fn rollback(j: &Journal) -> Result<()> {
    let mut first_err = None;
    for s in j.swaps.iter().rev() {
        let swapped = fs::symlink_metadata(&s.target).is_ok_and(|m| m.ino() == s.stage_ino && s.stage_ino != 0);
        let res = (|| -> Result<()> {
            if !swapped {
                return Ok(());
            }
            if s.had_old {
                if fs::symlink_metadata(&s.old).is_ok() {
                    exchange(&s.old, &s.target).map_err(Error::io(&s.target, "putting the old data back"))?;
                } else {
                    // Crashed between the exchange and the parking rename: the old data is at `stage`.
                    exchange(&s.stage, &s.target).map_err(Error::io(&s.target, "putting the old data back"))?;
                }
                set_mtime(&s.target, s.target_mtime);
            } else {
                fs::remove_dir_all(&s.target).map_err(Error::io(&s.target, "removing restored data"))?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    undo_dirs(j);
    first_err.map_or(Ok(()), Err)
}

/// Removes the run's work directories and the parents it created, and puts back the
/// modification times of the directories it touched.
pub(crate) fn undo_dirs(j: &Journal) {
    if let Some(d) = &j.imports_dir {
        let _ = fs::remove_dir_all(d);
    }
    for d in &j.work_dirs {
        let _ = fs::remove_dir_all(d);
        let _ = fs::remove_dir_all(d.with_extension("old"));
    }
    for top in j.created_dirs.iter().rev() {
        // Only empty directories: anything else in there is not ours to delete.
        for e in walkdir::WalkDir::new(top).contents_first(true).into_iter().flatten() {
            if e.file_type().is_dir() {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    for (dir, secs, nanos) in j.parent_times.iter().rev() {
        let t = filetime::FileTime::from_unix_time(*secs, *nanos);
        let _ = filetime::set_file_mtime(dir, t);
    }
}

/// After commit: delete (or keep) the replaced data, remove the work directories.
pub(crate) fn complete(j: &Journal) -> Vec<PathBuf> {
    let mut kept = Vec::new();
    for s in &j.swaps {
        if s.had_old && fs::symlink_metadata(&s.old).is_ok() {
            if j.keep_old {
                kept.push(s.old.clone());
            } else {
                let _ = fs::remove_dir_all(&s.old);
            }
        }
    }
    for d in &j.work_dirs {
        let _ = fs::remove_dir_all(d);
        if !j.keep_old {
            let _ = fs::remove_dir(d.with_extension("old"));
        }
    }
    kept
}

/// Finishes or undoes the restores of dead processes found in `state_dir`. A restore
/// killed after its commit is completed as it would have been: the start hooks of the
/// services it stopped, then the imports it still owed (D-16: after the start hooks).
pub(crate) fn recover(state_dir: &Path) -> Result<Vec<Recovered>> {
    let mut out = Vec::new();
    for (_, mut j) in state::journal::dead::<Journal>(state_dir, "restore", |j| j.pid)? {
        let committed = j.phase == Phase::Committed;
        if committed {
            complete(&j);
        } else {
            rollback(&j)?;
        }
        failpoint("gc-restore-finished");
        for (name, start) in std::mem::take(&mut j.stopped) {
            // The service may be needed whatever happened; a failure is only reported.
            if let Err(e) = crate::hooks::run(&start, &[("service", &name)]) {
                tracing::warn!("{name}: start hook failed after recovering run {}: {e}", j.run_id);
            }
        }
        let (action, outcomes) = if committed { completed(&mut j, state_dir) } else { ("rolled-back".to_string(), Vec::new()) };
        j.remove(state_dir);
        out.push(Recovered { run_id: j.run_id, action, outcomes });
    }
    Ok(out)
}

/// Runs a committed restore's owed imports: `completed`, with what became of each, and
/// their outcomes.
fn completed(j: &mut Journal, state_dir: &Path) -> (String, Vec<Outcome>) {
    if j.imports.is_empty() {
        // A journal of an older build names only the directory of the copies.
        let action = match j.imports_dir.as_ref().filter(|d| d.exists()) {
            Some(d) => format!(
                "completed; imports may not have run: the staged export copies are kept in {} (run each service's import on them, then delete it)",
                d.display()
            ),
            None => "completed".to_string(),
        };
        return (action, Vec::new());
    }
    let outcomes = run_journaled(j, state_dir);
    let said: Vec<String> = outcomes
        .iter()
        .map(|o| {
            let why = o.reason.as_deref().unwrap_or_default();
            match o.status {
                Status::Ok => format!("import {} run: {why}", label(o)),
                _ => format!("import {} FAILED: {why}", label(o)),
            }
        })
        .collect();
    (format!("completed; {}", said.join("; ")), outcomes)
}

/// Atomically exchanges two paths (renameat2 RENAME_EXCHANGE): neither is ever missing.
pub(crate) fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    let cwd = nix::fcntl::AT_FDCWD;
    renameat2(cwd, a, cwd, b, RenameFlags::RENAME_EXCHANGE).map_err(std::io::Error::from)
}
