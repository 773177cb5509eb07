//! `preflight`: may this archive be restored into this target? Reads only the manifest.

use crate::archive::Manifest;
use crate::error::Result;
use crate::inventory::Inventory;
use crate::restore::{preflight, RestorePlan, RestoreSelection};

/// Checks a manifest (from [`crate::inspect`]) against the target inventory: archive
/// format, services and surfaces, schemas and migrations, context collisions, secrets,
/// free space and inodes. Returns what a restore would do, or [`crate::Error::Preflight`]
/// with every refusal at once. Changes nothing.
pub fn preflight(manifest: &Manifest, target: &Inventory, selection: &RestoreSelection) -> Result<RestorePlan> {
    preflight::check(manifest, target, selection)
}
