//! What hero-snap keeps between runs, in the state directory: journals of runs in
//! progress (so that `gc` can finish or undo a dead run's work), the run lock, run ids,
//! the record of each backup series' last runs (`runs`, read by `status` and written out
//! as metrics by `metrics`), and the crash-test failpoints.

pub(crate) mod failpoint;
pub(crate) mod journal;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod runs;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::inventory::Inventory;

pub(crate) use failpoint::failpoint;
pub(crate) use lock::Lock;

/// Where journals and locks go when neither the caller nor the inventory says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hero-snap";

/// The state directory of a run: the caller's, else the inventory's `state_dir`, else
/// [`DEFAULT_STATE_DIR`].
///
/// ```
/// # use std::path::Path;
/// assert_eq!(hero_snap_core::state_dir(Some(Path::new("/run/hs")), None), Path::new("/run/hs"));
/// assert_eq!(hero_snap_core::state_dir(None, None), Path::new(hero_snap_core::DEFAULT_STATE_DIR));
/// ```
pub fn state_dir(explicit: Option<&Path>, inventory: Option<&Inventory>) -> PathBuf {
    explicit.or_else(|| inventory.and_then(|i| i.state_dir())).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// What `gc` completed: one entry per dead run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    /// The dead run.
    pub run_id: String,
    /// `backup-cleaned`, `rolled-back` or `completed`, or what was aborted.
    pub action: String,
    /// What became of the imports a restore killed after its commit still owed (D-16):
    /// `gc` runs them; a failed one (exit 9 from the CLI) keeps its staged copy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<crate::outcome::Outcome>,
}

/// Whether a process of this pid exists.
pub(crate) fn process_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// The current time as RFC 3339, UTC (the manifest's `created`).
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A run id: UTC time plus the process id, unique on one machine and sortable.
pub(crate) fn run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}-{}", now.year(), now.month() as u8, now.day(), now.hour(), now.minute(), now.second(), std::process::id())
}

/// When the run of `run_id` started, in whole seconds since the epoch (UTC); `None` for an
/// id that is not of [`run_id`]'s form.
pub(crate) fn run_started(run_id: &str) -> Option<i64> {
    let stamp = run_id.get(..15)?;
    let when = time::PrimitiveDateTime::parse(stamp, time::macros::format_description!("[year][month][day]T[hour][minute][second]")).ok()?;
    Some(when.assume_utc().unix_timestamp())
}

/// Replaces `path` with `data` atomically: a temporary file in the same directory, fsync,
/// rename. A reader sees the old contents or the new, never half of them. `what` names
/// the file in errors (`writing the run record`).
pub(crate) fn write_atomically(path: &Path, data: &[u8], what: &'static str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir).map_err(Error::io(dir, what))?;
    tmp.write_all(data).map_err(Error::io(tmp.path(), what))?;
    tmp.as_file().sync_all().map_err(Error::io(tmp.path(), what))?;
    // node_exporter and other readers run as other users: the file is world-readable, as
    // a file written with the usual umask would be (tempfile creates it 0600).
    use std::os::unix::fs::PermissionsExt;
    let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    tmp.persist(path).map_err(|e| Error::io(path, what)(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
