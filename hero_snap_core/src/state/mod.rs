//! What hero-snap keeps between runs, in the state directory: journals of runs in
//! progress (so that `gc` can finish or undo a dead run's work), the run lock, run ids,
//! and the crash-test failpoints.

pub(crate) mod failpoint;
pub(crate) mod journal;
pub(crate) mod lock;

use std::path::{Path, PathBuf};

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
