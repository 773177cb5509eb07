//! reflink: FICLONE copies of the surfaces into a hidden directory on the same
//! filesystem (XFS, or btrfs directories). The copy shares data blocks with the original,
//! so it costs metadata only; `cp -a --reflink=always` does it and keeps every attribute.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Volume;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Copies {
    pub staging: PathBuf,
    /// (live surface path, its copy)
    pub copies: Vec<(PathBuf, PathBuf)>,
}

impl Copies {
    pub(crate) fn plan(vol: &Volume, live_paths: &[PathBuf], run: &str, n: usize) -> Copies {
        let staging = vol.mount.mount_point.join(format!("{}{run}.reflink-{n}", super::RESERVED_PREFIX));
        // A copy sits at its path below the mount point under the staging directory, as
        // `cp --parents`, run in the mount point, puts it.
        let mount = &vol.mount.mount_point;
        // A surface that is the mount point itself is the volume's only surface (surfaces
        // never overlap), so its copy can take a fixed name.
        let copies = live_paths
            .iter()
            .map(|p| match p.strip_prefix(mount) {
                Ok(rel) if rel.as_os_str().is_empty() => (p.clone(), staging.join("mount-root")),
                Ok(rel) => (p.clone(), staging.join(rel)),
                Err(_) => (p.clone(), staging.join(p.strip_prefix("/").unwrap_or(p))),
            })
            .collect();
        Copies { staging, copies }
    }

    /// Runs inside the freeze window: one `cp` for all the volume's surfaces (a process per
    /// surface costs milliseconds each), except a surface that holds the staging directory
    /// itself, which is copied entry by entry.
    pub(crate) fn take(&self) -> Result<()> {
        std::fs::create_dir_all(&self.staging).map_err(Error::io(&self.staging, "creating the reflink staging directory"))?;
        let (holding, plain): (Vec<_>, Vec<_>) = self.copies.iter().partition(|(live, _)| self.staging.starts_with(live));
        if !plain.is_empty() {
            let mut argv: Vec<String> = ["cp", "-a", "--reflink=always", "--parents", "-t"].map(String::from).to_vec();
            argv.push(self.staging.to_string_lossy().into_owned());
            let mount = self.staging.parent().expect("the staging directory is in the mount point");
            argv.extend(plain.iter().map(|(live, _)| live.strip_prefix(mount).unwrap_or(live).to_string_lossy().into_owned()));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            super::tool_in(Some(mount), &argv).map_err(|e| {
                Error::command(format!("reflink copy on {}: {e} (does the filesystem support reflinks? XFS needs reflink=1)", self.staging.display()))
            })?;
        }
        for (live, copy) in holding {
            if let Some(parent) = copy.parent() {
                std::fs::create_dir_all(parent).map_err(Error::io(parent, "creating the reflink staging directory"))?;
            }
            copy_tree(live, copy)?;
        }
        Ok(())
    }

    pub(crate) fn view(&self, live: &Path) -> Option<PathBuf> {
        self.copies.iter().find_map(|(l, c)| live.strip_prefix(l).ok().map(|rel| c.join(rel)))
    }

    pub(crate) fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.staging) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&self.staging, "removing the reflink copies")(e)),
        }
    }
}

/// Copies the entries of `live` into a new directory `copy` with reflinks, skipping
/// hero-snap's own names (the staging directory may sit inside `live` when the surface is
/// the filesystem's root), then gives `copy` the attributes of `live`.
fn copy_tree(live: &Path, copy: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir(copy).map_err(Error::io(copy, "creating the reflink copy"))?;
    let mut entries: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(live).map_err(Error::io(live, "listing"))? {
        let e = e.map_err(Error::io(live, "listing"))?;
        if !e.file_name().to_string_lossy().starts_with(super::RESERVED_PREFIX) {
            entries.push(e.path());
        }
    }
    if !entries.is_empty() {
        let mut argv: Vec<String> = vec!["cp".into(), "-a".into(), "--reflink=always".into(), "-t".into(), copy.to_string_lossy().into_owned()];
        argv.extend(entries.iter().map(|p| p.to_string_lossy().into_owned()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        super::tool(&argv)
            .map_err(|e| Error::command(format!("reflink copy of {}: {e} (does the filesystem support reflinks? XFS needs reflink=1)", live.display())))?;
    }
    let meta = std::fs::symlink_metadata(live).map_err(Error::io(live, "reading"))?;
    std::fs::set_permissions(copy, std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(Error::io(copy, "setting the mode"))?;
    std::os::unix::fs::chown(copy, Some(meta.uid()), Some(meta.gid())).map_err(Error::io(copy, "setting the owner"))?;
    if let Ok(names) = xattr::list(live) {
        for name in names {
            if let Ok(Some(v)) = xattr::get(live, &name) {
                xattr::set(copy, &name, &v).map_err(Error::io(copy, "copying extended attributes"))?;
            }
        }
    }
    let mtime = filetime::FileTime::from_last_modification_time(&meta);
    filetime::set_file_mtime(copy, mtime).map_err(Error::io(copy, "setting the mtime"))?;
    Ok(())
}
