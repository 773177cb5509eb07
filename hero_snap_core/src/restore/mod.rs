//! Transactional restore, the parts below the `restore` verb: pre-flight ([`preflight`]),
//! extraction into staging beside each target ([`extract`], with a pool of file
//! [`writers`]), the rules for where a member may go ([`paths`]), and swapping in with
//! renames, rolled back on failure and finished or undone by `gc` ([`swap`]). [`pick`]
//! takes chosen files out into a directory outside the instance (`extract`).

pub(crate) mod extract;
pub(crate) mod imports;
pub(crate) mod paths;
pub(crate) mod pick;
pub(crate) mod preflight;
pub(crate) mod swap;
mod writers;

pub use preflight::{NotInArchive, PlannedImport, PlannedMigration, Refusal, RestorePlan, RestoreSelection, SurfaceRef, TargetSurface};
pub(crate) use swap::recover;
