//! ZFS: one `zfs snapshot` command for all datasets of a pool (atomic within the pool),
//! read through the dataset's `.zfs/snapshot` directory. The `zfs` CLI is run like every
//! other tool (decisions/D-03-zfs-binding.md).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Volume;
use crate::error::Result;
use crate::mounts::Mount;

/// The dataset mounted at `mount` (its mount source).
pub(crate) fn dataset(mount: &Mount) -> String {
    mount.source.clone()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The snapshot name after `@`.
    pub name: String,
    /// (dataset, its mount point)
    pub datasets: Vec<(String, PathBuf)>,
}

impl Snapshot {
    pub(crate) fn plan(vol: &Volume, run: &str) -> Snapshot {
        Snapshot { name: format!("hero-snap-{run}"), datasets: vec![(vol.unit.clone(), vol.mount.mount_point.clone())] }
    }

    pub(crate) fn pool(&self) -> &str {
        self.datasets.first().map(|(d, _)| d.split('/').next().unwrap_or(d)).unwrap_or("")
    }

    pub(crate) fn take(&self) -> Result<()> {
        let names: Vec<String> = self.datasets.iter().map(|(d, _)| format!("{d}@{}", self.name)).collect();
        let mut argv = vec!["zfs", "snapshot"];
        argv.extend(names.iter().map(String::as_str));
        super::tool(&argv).map(|_| ())
    }

    pub(crate) fn view(&self, live: &Path) -> Option<PathBuf> {
        // The deepest dataset mount point that holds the path.
        self.datasets
            .iter()
            .filter(|(_, mp)| live.starts_with(mp))
            .max_by_key(|(_, mp)| mp.components().count())
            .map(|(_, mp)| mp.join(".zfs/snapshot").join(&self.name).join(live.strip_prefix(mp).expect("checked")))
    }

    pub(crate) fn remove(&self) -> Result<()> {
        for (d, _) in &self.datasets {
            let full = format!("{d}@{}", self.name);
            if super::tool(&["zfs", "list", "-H", "-t", "snapshot", "-o", "name", &full]).is_ok() {
                super::tool(&["zfs", "destroy", &full])?;
            }
        }
        Ok(())
    }
}
