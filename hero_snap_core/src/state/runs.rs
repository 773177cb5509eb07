//! Run records: for each backup series (an instance and a selection, as `prune` counts
//! them) the last run and the last good run, in `state_dir/runs/<instance>-<key>.json`.
//! Every backup run writes its series' record when it ends, failed or not; `status` reads
//! them, the metrics file is made from them (decisions/D-12).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::format::{Consistency, SelectionRecord};
use crate::error::{Error, Result};
use crate::outcome::{Outcome, Status};

/// The version of the run record's layout.
pub const RUN_RECORD_FORMAT: u32 = 1;

/// What the state directory remembers of one backup series: its last run and its last
/// good one ([`crate::status`] reads them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RUN_RECORD_FORMAT`].
    pub format: u32,
    /// The instance backed up.
    pub instance: String,
    /// The selection of the series (whole instance when empty).
    pub selection: SelectionRecord,
    /// The most recent run, whatever its result.
    pub last: RecordedRun,
    /// The most recent run that succeeded (exit 0), if any ever did.
    pub last_good: Option<RecordedRun>,
}

/// One backup run, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRun {
    /// The run id of the archive's manifest; `None` when the run failed before it had one.
    pub run_id: Option<String>,
    /// When it started, RFC 3339 UTC.
    pub started: String,
    /// When it ended, RFC 3339 UTC.
    pub finished: String,
    /// How long it took.
    pub duration_seconds: f64,
    /// Whether the run succeeded (exit 0). A run with a failed outcome (exit 9) wrote an
    /// archive but is not good.
    pub ok: bool,
    /// The CLI's exit code for the run (docs/CLI.md).
    pub exit_code: i32,
    /// Why it failed.
    pub error: Option<RunError>,
    /// Where the archive went (file, `-`, `s3://…`).
    pub to: String,
    /// The consistency reached, when an archive was written.
    pub consistency: Option<Consistency>,
    /// How long the services were frozen, in milliseconds, when an archive was written.
    pub freeze_window_ms: Option<u64>,
    /// Bytes of the archive, when one was written.
    pub archive_bytes: Option<u64>,
    /// Regular files archived.
    pub files: Option<u64>,
    /// Bytes of file data archived.
    pub bytes: Option<u64>,
    /// The run's outcomes, counted by status.
    pub outcomes: OutcomeCounts,
}

/// The error of a failed run, as `--json` reports errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// [`Error::kind`].
    pub kind: String,
    /// The error's message.
    pub message: String,
}

/// Outcomes of a run by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Surfaces archived.
    pub ok: u64,
    /// Surfaces left out on purpose.
    pub skipped: u64,
    /// Surfaces asked for and not archived.
    pub failed: u64,
}

impl OutcomeCounts {
    pub(crate) fn of(outcomes: &[Outcome]) -> OutcomeCounts {
        let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count() as u64;
        OutcomeCounts { ok: count(Status::Ok), skipped: count(Status::Skipped), failed: count(Status::Failed) }
    }
}

impl RecordedRun {
    /// When the run ended, in seconds since the Unix epoch.
    pub fn finished_unix(&self) -> Option<f64> {
        let t = time::OffsetDateTime::parse(&self.finished, &time::format_description::well_known::Rfc3339).ok()?;
        Some(t.unix_timestamp_nanos() as f64 / 1e9)
    }
}

/// `whole instance`, or `services a,b; contexts c; derived`: the series, for people and
/// for metric labels.
pub fn selection_label(s: &SelectionRecord) -> String {
    let mut parts = Vec::new();
    if !s.services.is_empty() {
        parts.push(format!("services {}", s.services.join(",")));
    }
    if !s.contexts.is_empty() {
        parts.push(format!("contexts {}", s.contexts.join(",")));
    }
    if parts.is_empty() {
        parts.push("whole instance".into());
    }
    if s.include_derived {
        parts.push("derived".into());
    }
    parts.join("; ")
}

/// The directory of the records.
pub(crate) fn dir(state: &Path) -> PathBuf {
    state.join("runs")
}

/// `runs/<instance>-<hash of the selection>.json`: names are safe path components, and the
/// order in which services or contexts were named does not make another series.
fn path(state: &Path, instance: &str, selection: &SelectionRecord) -> PathBuf {
    let mut s = selection.clone();
    s.services.sort();
    s.contexts.sort();
    let canonical = serde_json::to_vec(&s).unwrap_or_default();
    let hash = blake3::hash(&canonical).to_hex();
    dir(state).join(format!("{instance}-{}.json", &hash[..12]))
}

/// The record of a series, if a run of it was ever recorded.
#[cfg(test)]
fn load(state: &Path, instance: &str, selection: &SelectionRecord) -> Result<Option<RunRecord>> {
    read(&path(state, instance, selection))
}

fn read(path: &Path) -> Result<Option<RunRecord>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, "reading the run record")(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("{}: not a run record ({e}); delete it, the next backup writes it again", path.display())))
}

/// Records `run` as its series' last run (and last good run when it succeeded), keeping
/// the previous last good run otherwise. Read, update and replace under a lock, so that
/// two runs ending together both count.
pub(crate) fn record(state: &Path, instance: &str, selection: &SelectionRecord, run: RecordedRun) -> Result<RunRecord> {
    let dir = dir(state);
    fs::create_dir_all(&dir).map_err(Error::io(&dir, "creating the run records' directory"))?;
    let lock_path = dir.join(".lock");
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(Error::io(&lock_path, "opening the lock"))?;
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| Error::io(&lock_path, "locking")(e.into()))?;
    let path = path(state, instance, selection);
    // A damaged record must not stop the runs that would repair it: it is replaced.
    let previous = read(&path).unwrap_or_else(|e| {
        tracing::warn!("{e}");
        None
    });
    let last_good = if run.ok { Some(run.clone()) } else { previous.and_then(|p| p.last_good) };
    let rec = RunRecord { format: RUN_RECORD_FORMAT, instance: instance.into(), selection: selection.clone(), last: run, last_good };
    let data = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    super::write_atomically(&path, &data, "writing the run record")?;
    Ok(rec)
}

/// Every record in the state directory, by instance and selection label.
pub(crate) fn all(state: &Path) -> Result<Vec<RunRecord>> {
    let dir = dir(state);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, "listing the run records")(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        out.extend(read(&entry.path())?);
    }
    out.sort_by_key(|r| (r.instance.clone(), selection_label(&r.selection)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ok: bool, finished: &str) -> RecordedRun {
        RecordedRun {
            run_id: None,
            started: finished.into(),
            finished: finished.into(),
            duration_seconds: 1.5,
            ok,
            exit_code: if ok { 0 } else { 1 },
            error: (!ok).then(|| RunError { kind: "io".into(), message: "x: reading: gone".into() }),
            to: "a.hsnap".into(),
            consistency: None,
            freeze_window_ms: None,
            archive_bytes: None,
            files: None,
            bytes: None,
            outcomes: OutcomeCounts::default(),
        }
    }

    #[test]
    fn a_failed_run_keeps_the_last_good_one_and_selections_are_series() {
        let state = tempfile::tempdir().unwrap();
        let whole = SelectionRecord::default();
        let two = SelectionRecord { services: vec!["b".into(), "a".into()], ..SelectionRecord::default() };
        let same = SelectionRecord { services: vec!["a".into(), "b".into()], ..SelectionRecord::default() };
        record(state.path(), "i", &whole, run(true, "2026-01-01T00:00:00Z")).unwrap();
        let rec = record(state.path(), "i", &whole, run(false, "2026-01-02T00:00:00Z")).unwrap();
        assert!(!rec.last.ok);
        assert_eq!(rec.last_good.as_ref().map(|r| r.finished.as_str()), Some("2026-01-01T00:00:00Z"));
        record(state.path(), "i", &two, run(false, "2026-01-03T00:00:00Z")).unwrap();
        assert_eq!(load(state.path(), "i", &same).unwrap().map(|r| r.last.finished), Some("2026-01-03T00:00:00Z".into()));
        let all = all(state.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(selection_label(&all[0].selection), "services b,a");
        assert_eq!(all[0].last_good, None);
        assert_eq!(all[1].last_good.as_ref().and_then(RecordedRun::finished_unix), Some(1_767_225_600.0));
    }

    #[test]
    fn a_damaged_record_is_named_and_replaced_by_the_next_run() {
        let state = tempfile::tempdir().unwrap();
        let whole = SelectionRecord::default();
        record(state.path(), "i", &whole, run(true, "2026-01-01T00:00:00Z")).unwrap();
        let file = fs::read_dir(dir(state.path())).unwrap().flatten().find(|e| e.file_name().to_string_lossy().ends_with(".json")).unwrap().path();
        fs::write(&file, "{").unwrap();
        let e = all(state.path()).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()) && e.contains("delete it"), "{e}");
        let rec = record(state.path(), "i", &whole, run(false, "2026-01-02T00:00:00Z")).unwrap();
        assert_eq!(rec.last_good, None);
        assert_eq!(all(state.path()).unwrap().len(), 1);
    }
}
