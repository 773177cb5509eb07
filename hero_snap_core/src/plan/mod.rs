//! Plan: which volume holds each surface, which snapshot backend each volume gets, and
//! the consistency the run will reach. Reads the mount table; changes nothing.

mod select;

use std::collections::BTreeMap;

use serde::Serialize;

pub use select::Selection;
pub(crate) use select::{select, ExportJob, Job, Selected};

use crate::archive::format::Consistency;
use crate::error::{Error, Result};
use crate::inventory::{Inventory, SnapshotBackend};
use crate::mounts::{mount_of, read_mounts};
use crate::snapshot::{self, Volume};

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
                nested.push(format!(
                    "{} is mounted inside {}.{} ({}): not part of its snapshot",
                    m.mount_point.display(),
                    job.service,
                    job.surface,
                    path.display()
                ));
            }
        }
        let surface = inv.service(&job.service).and_then(|s| s.surface(&job.surface)).expect("jobs come from the inventory");
        let backend = match surface.snapshot {
            Some(b) => b,
            None => snapshot::detect(&mount),
        };
        snapshot::check_backend(backend, &mount, &path)?;
        let unit = snapshot::unit(backend, &path, &mount)?;
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

    let consistency = consistency(inv, &volumes, allow_live, &mut notes)?;
    Ok(Placement { plan: Plan { volumes, consistency, notes, nested_mounts: nested }, job_volume })
}

/// The consistency the volumes give (decisions/D-01), with a note saying why.
fn consistency(inv: &Inventory, volumes: &[Volume], allow_live: bool, notes: &mut Vec<String>) -> Result<Consistency> {
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
    for v in volumes {
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
    Ok(if !torn.is_empty() {
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
    })
}
