//! # hero_snap_core
//!
//! Makes a Hero instance portable: one consistent snapshot of every service's state,
//! streamed into one encrypted archive (tar + YAML manifest + zstd + age), restored whole,
//! per service or per context, after a pre-flight that refuses what would not work.
//!
//! The data's way, one module each: [`inventory`] (what state exists, where) →
//! [`mod@backup`] (select, archive) → [`archive`] (the format: write, read, verify) →
//! [`mod@preflight`] (may this archive be restored here?) → [`mod@restore`] (stage, verify, swap).
//!
//! ```no_run
//! use hero_snap_core::{backup_to_file, inventory::Inventory, BackupOptions, Selection, Encryption,
//!     NoProgress, Cancel};
//! # fn main() -> hero_snap_core::Result<()> {
//! let inv = Inventory::load("/etc/hero/inventory.yaml".as_ref())?;
//! let recipients = Encryption::parse_recipients(&["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"])?;
//! let mut opts = BackupOptions::new(Encryption::Recipients(recipients));
//! opts.selection = Selection { contexts: vec!["geomind".into()], ..Selection::default() };
//! let report = backup_to_file(&inv, &opts, "/backups/geomind.hsnap".as_ref(), &NoProgress, &Cancel::new())?;
//! println!("{} files, {} bytes", report.manifest.files, report.manifest.bytes);
//! # Ok(()) }
//! ```
//!
//! Restoring one context of that archive under a new name, with a progress callback and
//! a cancellation token another thread (or a signal handler) may trigger:
//!
//! ```no_run
//! use hero_snap_core::{restore, inventory::Inventory, Decryption, Event, RestoreOptions,
//!     RestoreSelection, Cancel, Status};
//! # fn main() -> hero_snap_core::Result<()> {
//! let target = Inventory::load("/etc/hero/inventory.yaml".as_ref())?;
//! let mut keys = Decryption::default();
//! keys.add_identity_file("/root/hero-snap.key".as_ref())?;
//! let opts = RestoreOptions {
//!     selection: RestoreSelection { contexts: vec!["geomind".into()], rename_to: Some("geomind2".into()), ..Default::default() },
//!     ..Default::default()
//! };
//! let cancel = Cancel::new();
//! let progress = |e: &Event| if let Event::Phase { phase } = e { eprintln!("{phase}") };
//! let file = std::fs::File::open("/backups/geomind.hsnap").map_err(|e| hero_snap_core::Error::Io {
//!     path: "/backups/geomind.hsnap".into(), action: "opening", source: e })?;
//! let report = restore(file, &keys, &target, &opts, &progress, &cancel)?;
//! for o in report.outcomes.iter().filter(|o| o.status != Status::Ok) {
//!     println!("{}: {} ({})", o.label(), o.status.as_str(), o.reason.as_deref().unwrap_or(""));
//! }
//! # Ok(()) }
//! ```
//!
//! Every entry point returns [`Error`], whose [`Error::exit_code`] and [`Error::kind`] are
//! the CLI's exit codes and `--json` error kinds (docs/CLI.md). A complete program that
//! backs up and restores one context is `examples/context_roundtrip.rs`.

#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod archive;
pub mod backup;
pub mod catalog;
mod crypto;
mod error;
mod freeze;
#[doc(hidden)]
pub mod fuzzing;
mod hooks;
mod journal;
pub mod inventory;
pub mod manifest;
pub mod outcome;
pub mod plan;
pub mod preflight;
mod progress;
pub mod restore;
mod snapshot;

/// Where journals and locks go when neither the caller nor the inventory says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hero-snap";

/// What `gc` completed: one entry per dead run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    /// The dead run.
    pub run_id: String,
    /// `backup-cleaned`, `rolled-back` or `completed`.
    pub action: String,
}

/// Completes the journals of dead runs in `state_dir`: thaws what a backup froze, runs its
/// post hooks, removes its snapshots; rolls back or completes an interrupted restore;
/// aborts the multipart upload a dead backup to object storage left.
pub fn gc(state_dir: &std::path::Path) -> Result<Vec<Recovered>> {
    let mut out = freeze::recover(state_dir)?;
    out.extend(restore::recover(state_dir)?);
    out.extend(archive::s3::recover(state_dir)?);
    Ok(out)
}

/// The plan a backup of `selection` would follow: volumes, backends, consistency.
pub fn plan(inv: &inventory::Inventory, selection: &Selection, allow_live: bool) -> Result<plan::Plan> {
    let (mut jobs, _, _, _) = backup::select(inv, selection)?;
    Ok(plan::place(inv, &mut jobs, allow_live)?.plan)
}

pub use archive::{backup_to, inspect, verify, Compression, Extent, Location, S3Config, S3Object, S3Prefix, VerifyReport};
pub use backup::{backup, backup_to_file, BackupOptions, BackupReport, Selection};
pub use crypto::{Decryption, Encryption};
pub use error::{Error, Result};
pub use preflight::{preflight, Refusal, RestorePlan, RestoreSelection};
pub use outcome::{Outcome, Status};
pub use progress::{Cancel, Event, NoProgress, Progress};
pub use restore::{restore, RestoreOptions, RestoreReport};

/// Test hook: when the environment variable `HERO_SNAP_FAILPOINT` names this point, the
/// process kills itself with SIGKILL here (used by the crash tests; a no-op otherwise).
/// `NAME:stop` stops it with SIGSTOP instead, so a test can look at the frozen state and
/// let the freeze deadline expire.
/// The variable is read once per process: some points are passed once per restored file.
pub(crate) fn failpoint(name: &str) {
    use nix::sys::signal::{raise, Signal};
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(v) = POINT.get_or_init(|| std::env::var_os("HERO_SNAP_FAILPOINT").map(|v| v.to_string_lossy().into_owned())) else { return };
    if v == name {
        let _ = raise(Signal::SIGKILL);
    } else if v.strip_suffix(":stop") == Some(name) {
        let _ = raise(Signal::SIGSTOP);
    }
}
