//! The host's catalog (decisions/D-15): what this host remembers of each archive it wrote,
//! so that `list` and `prune` work where only the recipients' public keys are, without the
//! identity that opens the archives.
//!
//! One small YAML file per archive in `<state dir>/catalog/`, written when the archive is
//! published and removed when `prune` deletes it. It holds the manifest's summary, the
//! archive's location and size: nothing that leaves the host, nothing about files.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::folder::Summary;
use super::format::Manifest;
use crate::error::{Error, Result};

/// One archive as the host that wrote it remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CatalogEntry {
    /// Absolute file path or `s3://` URL, as [`super::chain::location_key`] gives it.
    pub location: String,
    /// The archive's size when it was written.
    pub size: u64,
    pub summary: Summary,
}

/// The catalog directory of a state directory.
pub(crate) struct Catalog {
    entries: HashMap<String, (PathBuf, CatalogEntry)>,
}

impl Catalog {
    /// The catalog of `state`, read whole (a few hundred bytes per archive). A missing
    /// directory is an empty catalog; an unreadable entry is skipped (it only ever adds
    /// what a manifest would say).
    pub(crate) fn open(state: &Path) -> Catalog {
        let dir = state.join("catalog");
        let mut entries = HashMap::new();
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".yaml") {
                continue;
            }
            let Ok(text) = fs::read_to_string(e.path()) else { continue };
            if let Ok(entry) = serde_saphyr::from_str::<CatalogEntry>(&text) {
                entries.insert(entry.location.clone(), (e.path(), entry));
            }
        }
        Catalog { entries }
    }

    /// Records an archive just published at `location`.
    pub(crate) fn record(state: &Path, location: &str, size: u64, manifest: &Manifest) -> Result<()> {
        let dir = state.join("catalog");
        fs::create_dir_all(&dir).map_err(Error::io(&dir, "creating the catalog"))?;
        let entry = CatalogEntry { location: location.to_string(), size, summary: Summary::of(manifest) };
        let yaml = serde_saphyr::to_string(&entry).map_err(|e| Error::command(format!("cannot write the catalog entry: {e}")))?;
        let path = dir.join(format!("{}.yaml", manifest.run_id));
        let tmp = dir.join(format!(".hero-snap-{}.yaml.partial", manifest.run_id));
        fs::write(&tmp, yaml).map_err(Error::io(&tmp, "writing"))?;
        fs::rename(&tmp, &path).map_err(Error::io(&path, "writing"))
    }

    /// What the catalog says of the archive at `location`, if this host wrote it and it
    /// still has the size it was written with (a file replaced since is not trusted).
    pub(crate) fn summary(&self, location: &str, size: u64) -> Option<Summary> {
        self.entries.get(location).filter(|(_, e)| e.size == size).map(|(_, e)| e.summary.clone())
    }

    /// Forgets a deleted archive.
    pub(crate) fn forget(&self, location: &str) {
        if let Some((path, _)) = self.entries.get(location) {
            let _ = fs::remove_file(path);
        }
    }
}
