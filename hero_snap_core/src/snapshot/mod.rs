//! Snapshot backends, one per file behind one small interface: `take` a volume's snapshot
//! (inside the freeze window), find a live path's `view` in it, `remove` it. A snapshot is
//! described by a [`Taken`] value that is journaled *before* it is created, so that `gc`
//! can remove what a dead run left, whatever point it died at.

pub(crate) mod btrfs;
pub(crate) mod lvm;
pub(crate) mod reflink;
pub(crate) mod zfs;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inventory::SnapshotBackend;
use crate::mounts::Mount;

pub(crate) use crate::fs_tree::RESERVED_PREFIX;
pub(crate) use crate::process::{tool, tool_in};

/// What is snapshotted as one unit: a btrfs subvolume, a ZFS dataset, an LVM LV, or the
/// surfaces of one filesystem copied by reflink (or read as they are).
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// Stable key within the plan, e.g. `btrfs:/srv/hero@/var/lib/hero`.
    pub id: String,
    /// How the volume is snapshotted.
    pub backend: SnapshotBackend,
    /// The mount the volume is on.
    pub mount: Mount,
    /// btrfs: the subvolume root directory; ZFS: the dataset name; LVM: vg/lv.
    pub unit: String,
    /// Surfaces (`service.surface[context]`) read from this volume.
    pub surfaces: Vec<String>,
    /// Services with data on this volume.
    pub services: Vec<String>,
}

/// The backend a filesystem gets when the inventory does not say.
pub(crate) fn detect(m: &Mount) -> SnapshotBackend {
    match m.fstype.as_str() {
        "btrfs" => SnapshotBackend::Btrfs,
        "zfs" => SnapshotBackend::Zfs,
        // An LV snapshot is one instant; prefer it to reflink copies for XFS on LVM.
        _ if lvm::lv_name(&m.source).is_ok() => SnapshotBackend::Lvm,
        "xfs" => SnapshotBackend::Reflink,
        _ => SnapshotBackend::None,
    }
}

pub(crate) fn check_backend(b: SnapshotBackend, m: &Mount, path: &Path) -> Result<()> {
    let ok = match b {
        SnapshotBackend::Btrfs => m.fstype == "btrfs",
        SnapshotBackend::Zfs => m.fstype == "zfs",
        SnapshotBackend::Reflink => m.fstype == "xfs" || m.fstype == "btrfs",
        SnapshotBackend::Lvm | SnapshotBackend::None => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "{}: the inventory asks for {} snapshots but it is on {} ({})",
            path.display(),
            b.as_str(),
            m.fstype,
            m.mount_point.display()
        )))
    }
}

/// The snapshot unit that holds `path` on `mount` for `backend`: the btrfs subvolume
/// root, the ZFS dataset, the LVM `vg/lv`, or the mount point for copies.
pub(crate) fn unit(backend: SnapshotBackend, path: &Path, mount: &Mount) -> Result<String> {
    Ok(match backend {
        SnapshotBackend::Btrfs => btrfs::subvolume_root(path, &mount.mount_point)?.display().to_string(),
        SnapshotBackend::Zfs => zfs::dataset(mount),
        SnapshotBackend::Lvm => lvm::lv_name(&mount.source)?,
        SnapshotBackend::Reflink | SnapshotBackend::None => mount.mount_point.display().to_string(),
    })
}

/// One snapshot of one volume (or, for ZFS, of every dataset of one pool).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub(crate) enum Taken {
    Btrfs(btrfs::Snapshot),
    Reflink(reflink::Copies),
    Lvm(lvm::Snapshot),
    Zfs(zfs::Snapshot),
}

impl Taken {
    /// Names what will be created for `vol` in run `run` (the `n`th volume), before creating it.
    pub(crate) fn plan(vol: &Volume, live_paths: &[PathBuf], run: &str, n: usize, state_dir: &Path) -> Option<Taken> {
        match vol.backend {
            SnapshotBackend::Btrfs => Some(Taken::Btrfs(btrfs::Snapshot::plan(vol, run, n))),
            SnapshotBackend::Reflink => Some(Taken::Reflink(reflink::Copies::plan(vol, live_paths, run, n))),
            SnapshotBackend::Lvm => Some(Taken::Lvm(lvm::Snapshot::plan(vol, run, n, state_dir))),
            SnapshotBackend::Zfs => Some(Taken::Zfs(zfs::Snapshot::plan(vol, run))),
            SnapshotBackend::None => None,
        }
    }

    /// Creates the snapshot. Runs while services are frozen: must not take long.
    pub(crate) fn take(&self) -> Result<()> {
        match self {
            Taken::Btrfs(s) => s.take(),
            Taken::Reflink(c) => c.take(),
            Taken::Lvm(s) => s.take(),
            Taken::Zfs(s) => s.take(),
        }
    }

    /// Makes the snapshot readable (mounts, activations), after the services are thawed.
    pub(crate) fn open(&self) -> Result<()> {
        match self {
            Taken::Lvm(s) => s.open(),
            _ => Ok(()),
        }
    }

    /// Where the live path `live` can be read in the snapshot.
    pub(crate) fn view(&self, live: &Path) -> Option<PathBuf> {
        match self {
            Taken::Btrfs(s) => s.view(live),
            Taken::Reflink(c) => c.view(live),
            Taken::Lvm(s) => s.view(live),
            Taken::Zfs(s) => s.view(live),
        }
    }

    /// A check after reading: e.g. a classic LVM snapshot must not have overflowed.
    pub(crate) fn still_valid(&self) -> Result<()> {
        match self {
            Taken::Lvm(s) => s.still_valid(),
            _ => Ok(()),
        }
    }

    /// Removes the snapshot; succeeds if it is already gone.
    pub(crate) fn remove(&self) -> Result<()> {
        match self {
            Taken::Btrfs(s) => s.remove(),
            Taken::Reflink(c) => c.remove(),
            Taken::Lvm(s) => s.remove(),
            Taken::Zfs(s) => s.remove(),
        }
    }

    /// Merges ZFS snapshots of the same pool into one command (atomic within a pool).
    pub(crate) fn merge_zfs(list: Vec<Taken>) -> Vec<Taken> {
        let mut out: Vec<Taken> = Vec::new();
        for t in list {
            if let Taken::Zfs(z) = &t {
                if let Some(Taken::Zfs(prev)) = out.iter_mut().find(|o| matches!(o, Taken::Zfs(p) if p.pool() == z.pool())) {
                    prev.datasets.extend(z.datasets.iter().cloned());
                    continue;
                }
            }
            out.push(t);
        }
        out
    }
}
