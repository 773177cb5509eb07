//! reflink: FICLONE copies of the surfaces into a hidden directory on the same
//! filesystem (XFS, or btrfs directories). The copy shares data blocks with the original,
//! so it costs metadata only; `cp -a --reflink=always` does it and keeps every attribute.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::Volume;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Copies {
    pub staging: PathBuf,
    /// (live surface path, its copy)
    pub copies: Vec<(PathBuf, PathBuf)>,
}

impl Copies {
    pub(crate) fn plan(vol: &Volume, live_paths: &[PathBuf], run: &str, n: usize) -> Copies {
        let staging = vol.mount.mount_point.join(format!("{}{run}.reflink-{n}", super::RESERVED_PREFIX));
        let copies = live_paths.iter().enumerate().map(|(i, p)| (p.clone(), staging.join(i.to_string()))).collect();
        Copies { staging, copies }
    }

    pub(crate) fn take(&self) -> Result<()> {
        std::fs::create_dir_all(&self.staging).map_err(Error::io(&self.staging, "creating the reflink staging directory"))?;
        for (live, copy) in &self.copies {
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
        super::tool(&argv).map_err(|e| Error::Command(format!("reflink copy of {}: {e} (does the filesystem support reflinks? XFS needs reflink=1)", live.display())))?;
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
