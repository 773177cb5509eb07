//! Where an archive member may be written: only inside its stage, only through real
//! directories.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `root/inner` if `inner` has only plain components. `inner` is a member path as the
/// reader carries it (`fs_tree::name_text`): the path made is of the original bytes.
pub(crate) fn contained(root: &Path, inner: &str) -> Option<PathBuf> {
    if inner.is_empty() {
        return Some(root.to_path_buf());
    }
    let rel = crate::fs_tree::name_path(inner);
    let rel: &Path = &rel;
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(root.join(rel))
    } else {
        None
    }
}

/// Every directory between the stage root and `dest` must be a real directory (not a
/// symlink an earlier member planted to redirect writes).
pub(crate) fn check_parents(root: &Path, dest: &Path, member: &str) -> Result<()> {
    let mut p = dest.parent();
    while let Some(dir) = p {
        if !dir.starts_with(root) || dir == root.parent().unwrap_or(root) {
            break;
        }
        match fs::symlink_metadata(dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Err(Error::Refused(format!("member `{member}` would be written through a symlink or file at {}", dir.display()))),
            Err(_) => return Err(Error::Refused(format!("member `{member}` comes before its directory {}", dir.display()))),
        }
        p = dir.parent();
    }
    Ok(())
}
