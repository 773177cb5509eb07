//! `list`: the archives of a directory or S3 prefix, with a summary of each manifest.

use std::path::Path;

use crate::archive::catalog::Catalog;
use crate::archive::folder::{read_folder, Folder, Listed};
use crate::archive::Decryption;
use crate::error::Result;

/// Lists the regular files directly in `folder` (not in subdirectories; names starting
/// with `.` are skipped: they are backups still being written). Archives come first,
/// newest first; files that are not readable archives follow, by name.
///
/// Plaintext archives are read without asking; encrypted ones need `keys`, or were
/// written by this host and are in the catalog of its state directory `state`
/// (decisions/D-15): then their summary comes from there, marked `from_catalog`.
///
/// ```no_run
/// use hero_snap_core::{list, Decryption, Folder};
/// # fn main() -> hero_snap_core::Result<()> {
/// let mut keys = Decryption::default();
/// keys.add_identity_file("/root/hero-snap.key".as_ref())?;
/// let folder = Folder::parse("s3://backups/hero/", &Default::default())?;
/// for f in list(&folder, &keys, None)? {
///     match (&f.summary, &f.problem) {
///         (Some(s), _) => println!("{} {} {}", s.created, s.instance, f.path),
///         (None, Some(p)) => println!("{}: {p}", f.path),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub fn list(folder: &Folder, keys: &Decryption, state: Option<&Path>) -> Result<Vec<Listed>> {
    let catalog = state.map(Catalog::open);
    read_folder(folder, keys, catalog.as_ref())
}
