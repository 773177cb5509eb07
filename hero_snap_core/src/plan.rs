//! Plan: which volume holds each surface, which snapshot backend each volume gets, and
//! the consistency the run will reach. Reads the mount table; changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backup::Job;
use crate::error::{Error, Result};
use crate::inventory::{Inventory, SnapshotBackend};
use crate::manifest::Consistency;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The mount id.
    pub id: u32,
    /// "major:minor"
    pub device: String,
    /// Path inside the filesystem that is mounted here (btrfs: the subvolume).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// The mount source (device, dataset).
    pub source: String,
}

/// Parses /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        if fields.len() < sep + 3 || sep < 6 {
            continue;
        }
        out.push(Mount {
            id: fields[0].parse().unwrap_or(0),
            device: fields[2].to_string(),
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            fstype: fields[sep + 1].to_string(),
            source: unescape(fields[sep + 2]),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path` (the last, i.e. topmost, of the longest matching mount points).
pub fn mount_of<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point) && best.is_none_or(|b| m.mount_point.components().count() >= b.mount_point.components().count()) {
            best = Some(m);
        }
    }
    best
}

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

/// The plan of a backup run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The snapshot units, one per volume.
    pub volumes: Vec<Volume>,
    /// The consistency the run reaches.
    pub consistency: Consistency,
    /// Why the consistency is what it is, and every fallback.
    pub notes: Vec<String>,
    /// Mounts found inside a surface: their data is not part of the surface's snapshot.
    pub nested_mounts: Vec<String>,
}

/// Which volume each job reads from (index into `Plan::volumes`).
pub(crate) struct Placement {
    pub plan: Plan,
    pub job_volume: Vec<usize>,
}

pub(crate) fn read_mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::io("/proc/self/mountinfo", "reading the mount table"))?;
    Ok(parse_mountinfo(&text))
}

/// Places every job on its volume, picks backends and states the consistency.
pub(crate) fn place(inv: &Inventory, jobs: &mut [Job], allow_live: bool) -> Result<Placement> {
    let mounts = read_mounts()?;
    let mut volumes: Vec<Volume> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut job_volume = Vec::new();
    let mut nested = Vec::new();
    let mut notes = Vec::new();
    for job in jobs.iter_mut() {
        let path = std::fs::canonicalize(&job.path).map_err(Error::io(&job.path, "resolving the surface"))?;
        job.path = path.clone();
        let mount = mount_of(&mounts, &path).ok_or_else(|| Error::Refused(format!("{}: no mount holds it", path.display())))?.clone();
        for m in &mounts {
            if m.mount_point != path && m.mount_point.starts_with(&path) {
                nested.push(format!("{} is mounted inside {}.{} ({}): not part of its snapshot", m.mount_point.display(), job.service, job.surface, path.display()));
            }
        }
        let surface = inv.service(&job.service).and_then(|s| s.surface(&job.surface)).expect("jobs come from the inventory");
        let backend = match surface.snapshot {
            Some(b) => b,
            None => detect(&mount),
        };
        check_backend(backend, &mount, &path)?;
        let unit = match backend {
            SnapshotBackend::Btrfs => crate::snapshot::btrfs::subvolume_root(&path, &mount.mount_point)?.display().to_string(),
            SnapshotBackend::Zfs => mount.source.clone(),
            SnapshotBackend::Lvm => crate::snapshot::lvm::lv_name(&mount.source)?,
            SnapshotBackend::Reflink | SnapshotBackend::None => mount.mount_point.display().to_string(),
        };
        let id = format!("{}:{}", backend.as_str(), unit);
        let i = *index.entry(id.clone()).or_insert_with(|| {
            volumes.push(Volume { id: id.clone(), backend, mount: mount.clone(), unit, surfaces: Vec::new(), services: Vec::new() });
            volumes.len() - 1
        });
        let label = match &job.context {
            Some(c) => format!("{}.{}[{c}]", job.service, job.surface),
            None => format!("{}.{}", job.service, job.surface),
        };
        volumes[i].surfaces.push(label);
        if !volumes[i].services.contains(&job.service) {
            volumes[i].services.push(job.service.clone());
        }
        job_volume.push(i);
    }

    // Consistency. A service held still (cgroup, unit or pre hook) does not change during
    // the freeze window, so it agrees with any instant inside it. The run is atomic when the
    // services that are not held still sit on at most one atomic snapshot unit (a btrfs
    // subvolume, an LVM LV, a ZFS pool). Copies (reflink, or none) are not instantaneous:
    // the services they read must be held still, else the copy may be torn.
    let frozen = |svc: &str| inv.service(svc).is_some_and(|s| s.quiesce.pre.is_some() || s.quiesce.cgroup.is_some() || s.quiesce.unit.is_some());
    let hooked = |svc: &str| inv.service(svc).is_some_and(|s| s.quiesce.pre.is_some());
    let mut torn: Vec<String> = Vec::new();
    let mut in_place: Vec<&Volume> = Vec::new();
    let mut loose_units: Vec<String> = Vec::new();
    for v in &volumes {
        match v.backend {
            SnapshotBackend::None => {
                in_place.push(v);
                // Read after the window: only pre/post hooks keep the service still that long.
                torn.extend(v.services.iter().filter(|s| !hooked(s)).cloned());
            }
            SnapshotBackend::Reflink => torn.extend(v.services.iter().filter(|s| !frozen(s)).cloned()),
            backend => {
                if v.services.iter().any(|s| !frozen(s)) {
                    let unit = if backend == SnapshotBackend::Zfs { format!("zfs:{}", v.unit.split('/').next().unwrap_or("")) } else { v.id.clone() };
                    if !loose_units.contains(&unit) {
                        loose_units.push(unit);
                    }
                }
            }
        }
    }
    torn.sort();
    torn.dedup();
    let consistency = if !torn.is_empty() {
        if !allow_live {
            return Err(Error::Refused(format!(
                "{} would be copied while running: no atomic snapshot (btrfs, LVM, ZFS) holds it and nothing quiesces it. \
                 Declare `quiesce` (cgroup, unit or pre/post hooks) for it, move it to btrfs, LVM or ZFS, or pass --allow-live to accept a possibly torn copy",
                torn.join(", ")
            )));
        }
        notes.push(format!("LIVE COPY: {} read while running (--allow-live); the archive may hold a torn state", torn.join(", ")));
        Consistency::Live
    } else if !in_place.is_empty() {
        notes.push(format!(
            "QUIESCED COPY: no snapshot under {}; its services stay paused by their hooks while they are read",
            in_place.iter().map(|v| v.mount.mount_point.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
        Consistency::QuiescedCopy
    } else if loose_units.len() <= 1 {
        notes.push(match loose_units.first() {
            Some(u) => format!("atomic: services not held still are all on one snapshot unit ({u}); the others are frozen during the window"),
            None => "atomic: every service is held still during the freeze window".into(),
        });
        Consistency::Atomic
    } else {
        notes.push(format!(
            "PER-VOLUME: services that declare no quiesce are spread over {} snapshot units ({}); each has its own instant. Declare quiesce cgroups to get one instant",
            loose_units.len(),
            loose_units.join(", ")
        ));
        Consistency::PerVolume
    };
    Ok(Placement { plan: Plan { volumes, consistency, notes, nested_mounts: nested }, job_volume })
}

/// The backend a filesystem gets when the inventory does not say.
fn detect(m: &Mount) -> SnapshotBackend {
    match m.fstype.as_str() {
        "btrfs" => SnapshotBackend::Btrfs,
        "zfs" => SnapshotBackend::Zfs,
        // An LV snapshot is one instant; prefer it to reflink copies for XFS on LVM.
        _ if crate::snapshot::lvm::lv_name(&m.source).is_ok() => SnapshotBackend::Lvm,
        "xfs" => SnapshotBackend::Reflink,
        _ => SnapshotBackend::None,
    }
}

fn check_backend(b: SnapshotBackend, m: &Mount, path: &Path) -> Result<()> {
    let ok = match b {
        SnapshotBackend::Btrfs => m.fstype == "btrfs",
        SnapshotBackend::Zfs => m.fstype == "zfs",
        SnapshotBackend::Reflink => m.fstype == "xfs" || m.fstype == "btrfs",
        SnapshotBackend::Lvm | SnapshotBackend::None => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!("{}: the inventory asks for {} snapshots but it is on {} ({})", path.display(), b.as_str(), m.fstype, m.mount_point.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        80 22 0:45 /@data /var/lib/hero rw,relatime shared:40 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=256,subvol=/@data\n\
        81 80 7:1 / /var/lib/hero/with\\040space rw - xfs /dev/loop1 rw\n";

    #[test]
    fn parses_and_resolves() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].root, PathBuf::from("/@data"));
        assert_eq!(m[2].mount_point, PathBuf::from("/var/lib/hero/with space"));
        assert_eq!(mount_of(&m, Path::new("/var/lib/hero/x")).unwrap().fstype, "btrfs");
        assert_eq!(mount_of(&m, Path::new("/var/lib/hero/with space/y")).unwrap().fstype, "xfs");
        assert_eq!(mount_of(&m, Path::new("/etc")).unwrap().fstype, "ext4");
    }
}
