//! The live side of `diff --live`: the instance's surfaces that an archive holds, walked as
//! a backup walks them and listed as `ls` lists an archive, so that the two compare.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::super::ls::{entry_of, rfc3339, LsEntry};
use crate::archive::format::{Manifest, MemberKey};
use crate::archive::PathPatterns;
use crate::error::{Error, Result};
use crate::fs_tree::{hash_reader, name_text, walk_at, Entry};
use crate::inventory::Inventory;
use crate::progress::Cancel;

/// The live entries, in walk order, of every surface and context `manifest` holds (export
/// copies aside: they have no place on disk), at the places `live` gives them, which
/// `patterns` picks. A surface missing on disk has no entries. A file is hashed only when
/// `old` has a file of the same size at its place: a size that differs already says
/// `modified`.
pub(crate) fn live_entries(manifest: &Manifest, live: &Inventory, patterns: &PathPatterns, old: &[LsEntry], cancel: &Cancel) -> Result<Vec<LsEntry>> {
    let sizes: HashMap<(&str, Option<&str>, &str, &str), u64> =
        old.iter().filter(|e| e.kind == "file").map(|e| ((e.service.as_str(), e.context.as_deref(), e.surface.as_str(), e.path.as_str()), e.size)).collect();
    let mut out = Vec::new();
    for ms in &manifest.services {
        for surf in ms.surfaces.iter().filter(|s| !s.export) {
            let contexts: Vec<Option<&str>> = if surf.contexts.is_empty() { vec![None] } else { surf.contexts.iter().map(|c| Some(c.as_str())).collect() };
            let Some(target) = live.service(&ms.name).and_then(|s| s.surface(&surf.name)) else { continue };
            for ctx in contexts {
                let key = MemberKey { service: ms.name.clone(), surface: surf.name.clone(), context: ctx.map(str::to_string) };
                let root = target.path_for(ctx);
                let first = out.len();
                walk_surface(&root, &key, patterns, &mut out, cancel)?;
                for e in &mut out[first..] {
                    let same_size = sizes.get(&(e.service.as_str(), e.context.as_deref(), e.surface.as_str(), e.path.as_str())) == Some(&e.size);
                    if e.kind == "file" && same_size {
                        e.blake3 = Some(hash_file(&root.join(&e.path))?);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Appends the picked entries of the tree at `root` (none when it does not exist).
fn walk_surface(root: &Path, key: &MemberKey, patterns: &PathPatterns, out: &mut Vec<LsEntry>, cancel: &Cancel) -> Result<()> {
    if fs::symlink_metadata(root).is_err() {
        return Ok(());
    }
    // The first name of an inode with several is the file; the others are hard links to
    // it, as the backup archives them.
    let mut first_names: HashMap<(u64, u64), String> = HashMap::new();
    walk_at(root, true, cancel, &mut |entry| {
        let (rel, md) = match entry {
            Entry::Dir { rel, dir } => (rel, dir.metadata().map_err(Error::io(root.join(rel), "reading metadata"))?),
            Entry::Other { rel, .. } => (rel, fs::symlink_metadata(root.join(rel)).map_err(Error::io(root.join(rel), "reading metadata"))?),
        };
        let inner = name_text(rel.as_os_str().as_bytes());
        let ft = md.file_type();
        let (kind, link, size) = if ft.is_dir() {
            ("dir", None, 0)
        } else if ft.is_symlink() {
            let target = fs::read_link(root.join(rel)).map_err(Error::io(root.join(rel), "reading the symlink"))?;
            ("symlink", Some(target.to_string_lossy().into_owned()), 0)
        } else if !ft.is_file() {
            return Ok(()); // a socket or device: backup never archives one
        } else if md.nlink() > 1 {
            match first_names.get(&(md.dev(), md.ino())) {
                Some(first) => ("hardlink", Some(first.clone()), 0),
                None => {
                    first_names.insert((md.dev(), md.ino()), inner.clone());
                    ("file", None, md.size())
                }
            }
        } else {
            ("file", None, md.size())
        };
        // Picked after the hard links are noted: a picked second name of an unpicked file
        // is a hard link in the archive too.
        if patterns.picks(key, &inner) {
            out.push(LsEntry {
                kind,
                size,
                mtime: Some(rfc3339(md.mtime())),
                mode: Some(format!("{:04o}", md.mode() & 0o7777)),
                owner: Some(format!("{}:{}", md.uid(), md.gid())),
                link,
                ..entry_of(key, &inner)
            });
        }
        Ok(())
    })
}

fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(Error::io(path, "reading, to compare with the archive"))?;
    Ok(hash_reader(&mut f).map_err(Error::io(path, "reading, to compare with the archive"))?.to_hex().to_string())
}
