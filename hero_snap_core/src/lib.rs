//! # hero_snap_core
//!
//! Makes a Hero instance portable: one consistent snapshot of every service's state,
//! streamed into one encrypted archive (tar + YAML manifest + zstd + age), restored whole,
//! per service or per context, after a pre-flight that refuses what would not work.
//!
//! The data's way: the inventory (what state exists, where) → the plan (which volume and
//! snapshot backend holds each surface, what consistency that gives) → the freeze
//! (quiesce, snapshot, thaw) → the archive (walk, tar, zstd, age) → the restore
//! (pre-flight, stage, verify, swap). The verbs compose those steps: [`plan()`],
//! [`backup_to`], [`inspect`], [`verify`], [`preflight()`], [`restore()`], [`gc`],
//! [`list`], [`prune`], [`status`], and for single files [`ls()`] and [`extract()`]. Every public type is re-exported here, at one path.
//! ARCHITECTURE.md maps the modules.
//!
//! ```no_run
//! use hero_snap_core::{backup_to_file, Inventory, BackupOptions, Selection, Encryption,
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
//! use hero_snap_core::{restore, Inventory, Decryption, Event, RestoreOptions,
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

// The layers, in the data's order; none of them imports a verb.
mod archive;
mod error;
mod exports;
mod freeze;
mod fs_tree;
mod hooks;
mod inventory;
mod mounts;
mod outcome;
mod plan;
mod process;
mod progress;
mod restore;
mod retention;
mod size;
mod snapshot;
mod state;
// The verbs: the only modules that compose the layers.
mod commands;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use archive::{
    Ancestors, BytesPerSec, Compression, Consistency, Decryption, DecryptionChoice, Encryption, EncryptionChoice, Extent, Folder, LeftOut, Listed, Location,
    Manifest, ManifestService, ManifestSurface, ParentFetch, ParentRecord, PathPatterns, S3Config, S3Object, S3Prefix, SelectionRecord, Since, Summary,
    Warning, ARCHIVE_FORMAT, INCREMENTAL_FORMAT,
};
pub use commands::backup::{backup, backup_to, backup_to_file, BackupOptions, BackupReport, RunLog};
pub use commands::diff::{diff, diff_live, Change, DiffEntry, DiffReport, DiffSide};
pub use commands::extract::{extract, ExtractOptions, ExtractReport};
pub use commands::gc::gc;
pub use commands::inspect::inspect;
pub use commands::inventory::{surface_table, SurfaceRow};
pub use commands::list::list;
pub use commands::ls::{ls, LsEntry, LsReport};
pub use commands::plan::plan;
pub use commands::preflight::preflight;
pub use commands::prune::{prune, with_prune_metrics, Kept, MinFree, PruneOptions, PruneReport, PrunedSeries, SpaceCheck};
pub use commands::restore::{restore, restore_chain, RestoreOptions, RestoreReport};
pub use commands::status::{status, MaxAge, SeriesStatus, StatusOptions, StatusReport};
pub use commands::verify::{check_verified, verify, verify_chain, verify_newest, with_verify_metrics, VerifiedArchive, VerifyReport};
pub use error::{BoxError, Error, Result};
pub use freeze::watchdog::run_watchdog_if_invoked;
pub use inventory::{
    Class, Command, Export, Hooks, Inventory, Migration, Notify, NotifyOn, OnError, Quiesce, Scope, SecretStore, Service, SnapshotBackend, Surface,
    CONTEXT_PLACEHOLDER, INVENTORY_FORMAT,
};
pub use mounts::Mount;
pub use outcome::{check_outcomes, failures, Outcome, Status};
pub use plan::{Plan, Selection};
pub use progress::{Cancel, Event, NoProgress, Progress};
pub use restore::{NotInArchive, PlannedImport, PlannedMigration, Refusal, RestorePlan, RestoreSelection, SurfaceRef, TargetSurface};
pub use retention::{Retention, Within};
pub use snapshot::Volume;

pub use state::runs::{selection_label, OutcomeCounts, RecordedRun, RunError, RunRecord, RUN_RECORD_FORMAT};
pub use state::{state_dir, Recovered, DEFAULT_STATE_DIR};
