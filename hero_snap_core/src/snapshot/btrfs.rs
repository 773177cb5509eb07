//! btrfs: a read-only snapshot of the subvolume that encloses the surfaces.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Volume;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The subvolume's root directory (live).
    pub subvolume: PathBuf,
    /// Where the read-only snapshot is created.
    pub snapshot: PathBuf,
}

/// The root directory of the subvolume that holds `path`, looking no higher than `mount_point`.
pub(crate) fn subvolume_root(path: &Path, mount_point: &Path) -> Result<PathBuf> {
    let mut p = path;
    loop {
        if libbtrfsutil::is_subvolume(p).map_err(|e| Error::command(format!("{}: btrfs: {e}", p.display())))? {
            return Ok(p.to_path_buf());
        }
        if p == mount_point {
            return Ok(p.to_path_buf());
        }
        p = p.parent().ok_or_else(|| Error::Refused(format!("{}: no btrfs subvolume above it", path.display())))?;
    }
}

impl Snapshot {
    pub(crate) fn plan(vol: &Volume, run: &str, n: usize) -> Snapshot {
        let subvolume = PathBuf::from(&vol.unit);
        let snapshot = vol.mount.mount_point.join(format!("{}{run}.snap", super::RESERVED_PREFIX)).join(n.to_string());
        Snapshot { subvolume, snapshot }
    }

    pub(crate) fn take(&self) -> Result<()> {
        let parent = self.snapshot.parent().expect("planned under a directory");
        std::fs::create_dir_all(parent).map_err(Error::io(parent, "creating the snapshot directory"))?;
        libbtrfsutil::CreateSnapshotOptions::new()
            .readonly(true)
            .create(&self.subvolume, &self.snapshot)
            .map_err(|e| Error::command(format!("btrfs snapshot of {} into {}: {e}", self.subvolume.display(), self.snapshot.display())))
    }

    pub(crate) fn view(&self, live: &Path) -> Option<PathBuf> {
        live.strip_prefix(&self.subvolume).ok().map(|rel| self.snapshot.join(rel))
    }

    pub(crate) fn remove(&self) -> Result<()> {
        if std::fs::symlink_metadata(&self.snapshot).is_ok() {
            libbtrfsutil::delete_subvolume(&self.snapshot).map_err(|e| Error::command(format!("deleting btrfs snapshot {}: {e}", self.snapshot.display())))?;
        }
        if let Some(parent) = self.snapshot.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}
