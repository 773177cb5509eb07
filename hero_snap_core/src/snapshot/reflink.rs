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
            super::tool(&["cp", "-a", "--reflink=always", "--no-target-directory", &live.to_string_lossy(), &copy.to_string_lossy()])
                .map_err(|e| Error::Command(format!("reflink copy of {}: {e} (does the filesystem support reflinks? XFS needs reflink=1)", live.display())))?;
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
