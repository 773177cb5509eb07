//! LVM: a snapshot LV of the volume's LV (classic copy-on-write with a size policy, or
//! thin), mounted read-only with the options its filesystem needs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Volume;
use crate::error::{Error, Result};

/// Copy-on-write space of a classic snapshot, in percent of the origin LV.
pub(crate) const COW_PERCENT: u64 = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// vg/lv of the origin.
    pub origin: String,
    /// Name of the snapshot LV (in the same VG).
    pub name: String,
    pub thin: bool,
    pub fstype: String,
    /// Where the origin is mounted, and the path of the filesystem mounted there.
    pub origin_mount: PathBuf,
    pub origin_root: PathBuf,
    /// Where the snapshot is mounted read-only.
    pub mount: PathBuf,
}

/// `vg/lv` of a device path if LVM knows it as a logical volume.
pub(crate) fn lv_name(device: &str) -> Result<String> {
    if !(device.starts_with("/dev/mapper/") || device.starts_with("/dev/dm-") || device.matches('/').count() == 3) {
        return Err(Error::Refused(format!("{device}: not an LVM device")));
    }
    let out = super::tool(&["lvs", "--noheadings", "-o", "vg_name,lv_name", device])?;
    let mut it = out.split_whitespace();
    match (it.next(), it.next()) {
        (Some(vg), Some(lv)) => Ok(format!("{vg}/{lv}")),
        _ => Err(Error::Refused(format!("{device}: not an LVM logical volume"))),
    }
}

impl Snapshot {
    pub(crate) fn plan(vol: &Volume, run: &str, n: usize, state_dir: &Path) -> Snapshot {
        let short: String = run.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        Snapshot {
            origin: vol.unit.clone(),
            name: format!("hero_snap_{short}_{n}"),
            thin: false,
            fstype: vol.mount.fstype.clone(),
            origin_mount: vol.mount.mount_point.clone(),
            origin_root: vol.mount.root.clone(),
            mount: state_dir.join("mnt").join(format!("{run}-{n}")),
        }
    }

    fn vg(&self) -> &str {
        self.origin.split('/').next().unwrap_or("")
    }

    fn is_thin_origin(&self) -> Result<bool> {
        let out = super::tool(&["lvs", "--noheadings", "-o", "pool_lv", &self.origin])?;
        Ok(!out.trim().is_empty())
    }

    pub(crate) fn take(&self) -> Result<()> {
        // Don't fsfreeze first: lvcreate suspends (and freezes) the origin itself.
        if self.is_thin_origin()? {
            super::tool(&["lvcreate", "-qq", "-s", "-n", &self.name, &self.origin])?;
        } else {
            let size = format!("{COW_PERCENT}%ORIGIN");
            super::tool(&["lvcreate", "-qq", "-s", "-n", &self.name, "-l", &size, &self.origin])?;
        }
        Ok(())
    }

    pub(crate) fn open(&self) -> Result<()> {
        let lv = format!("{}/{}", self.vg(), self.name);
        // Thin snapshots are created with activation skip; classic ones are active already.
        if self.is_thin_origin()? {
            super::tool(&["lvchange", "-ay", "-K", &lv])?;
        }
        std::fs::create_dir_all(&self.mount).map_err(Error::io(&self.mount, "creating the snapshot mount point"))?;
        // The snapshot is a copy of a mounted filesystem: XFS refuses a second mount of the
        // same UUID, and neither XFS nor ext4 may replay its log on a read-only view.
        let options = match self.fstype.as_str() {
            "xfs" => Some("nouuid,norecovery"),
            "ext4" | "ext3" => Some("noload"),
            _ => None,
        };
        let dev = format!("/dev/{lv}");
        nix::mount::mount(Some(dev.as_str()), &self.mount, Some(self.fstype.as_str()), nix::mount::MsFlags::MS_RDONLY, options).map_err(|e| {
            Error::command(format!(
                "mounting the LVM snapshot {dev} ({}, read-only{}) on {}: {e}",
                self.fstype,
                options.map(|o| format!(", {o}")).unwrap_or_default(),
                self.mount.display()
            ))
        })
    }

    pub(crate) fn view(&self, live: &Path) -> Option<PathBuf> {
        let rel = live.strip_prefix(&self.origin_mount).ok()?;
        let inner = self.origin_root.strip_prefix("/").unwrap_or(&self.origin_root);
        Some(self.mount.join(inner).join(rel))
    }

    pub(crate) fn still_valid(&self) -> Result<()> {
        let lv = format!("{}/{}", self.vg(), self.name);
        let out = super::tool(&["lvs", "--noheadings", "-o", "lv_attr,snap_percent", &lv])?;
        let mut it = out.split_whitespace();
        let attr = it.next().unwrap_or("");
        let percent: f64 = it.next().and_then(|p| p.parse().ok()).unwrap_or(0.0);
        if attr.chars().nth(4) == Some('I') || percent >= 100.0 {
            return Err(Error::Refused(format!(
                "LVM snapshot {lv} overflowed its copy-on-write space ({percent}% used) while it was read: the archive cannot be trusted; \
                 retry when the volume is quieter or give the volume group more free space"
            )));
        }
        Ok(())
    }

    pub(crate) fn remove(&self) -> Result<()> {
        if is_mounted(&self.mount) {
            nix::mount::umount2(&self.mount, nix::mount::MntFlags::empty()).map_err(|e| {
                Error::command(format!("unmounting the LVM snapshot at {}: {e}; stop what reads it, then run `hero-snap gc`", self.mount.display()))
            })?;
        }
        let _ = std::fs::remove_dir(&self.mount);
        let lv = format!("{}/{}", self.vg(), self.name);
        if super::tool(&["lvs", &lv]).is_ok() {
            super::tool(&["lvremove", "-qq", "-y", &lv])?;
        }
        Ok(())
    }
}

fn is_mounted(path: &Path) -> bool {
    crate::mounts::read_mounts().is_ok_and(|m| m.iter().any(|m| m.mount_point == path))
}
