//! Taking chosen members out of an archive into a directory outside the instance (the
//! `extract` verb): what a [`PathPatterns`] picks, with the directories on its way,
//! written as a restore writes them (the same writer pool; owner, mode, times, extended
//! attributes), laid out as `<service>/<instance|contexts/CTX>/<surface>/<path>`.
//!
//! No swap: everything goes into one staging directory beside the destination
//! (`.hero-snap-<run>.extract`, journaled by the verb for `gc`), which is renamed into
//! place once the whole archive (and every ancestor read) has been checked, and removed
//! on any failure.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tar::EntryType;

use super::extract::{pax_xattrs, read_through, set_dir_times, set_xattrs, unpack_cause, unpack_sparse};
use super::paths::{check_parents, contained};
use super::writers::Writers;
use crate::archive::chain::{Filling, IndexTable};
use crate::archive::format::{split_member, IndexEntry, Manifest, MemberKey};
use crate::archive::pattern::{layout_path, PathPatterns};
use crate::archive::read::{Member, Visitor};
use crate::error::{Error, Result};
use crate::inventory::{Inventory, CONTEXT_PLACEHOLDER};
use crate::progress::{Event, Progress};
use crate::state::{self, failpoint, Recovered};

/// A directory member's metadata, applied when a picked member needs the directory.
struct DirMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The archive reader's visitor for `extract`.
pub(crate) struct Picker<'a> {
    to: PathBuf,
    stage: PathBuf,
    made_stage: bool,
    patterns: &'a PathPatterns,
    progress: &'a dyn Progress,
    /// Every directory member of the newest archive, by where it would go: a picked file
    /// (also one read later from an ancestor) gets its directories from here.
    dirs: HashMap<PathBuf, DirMeta>,
    made: HashSet<PathBuf>,
    /// Directories created, with their mtime, set once every file is in.
    times: Vec<(PathBuf, i64)>,
    writers: Writers,
    /// While an ancestor is read: the picked files the newest index lists in it.
    fill: Option<IndexTable>,
    /// Layout paths of the members written, in the order written.
    pub(crate) picked: Vec<String>,
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

impl<'a> Picker<'a> {
    /// Extracts into `stage`, to be renamed to `to` by [`Picker::publish`].
    pub(crate) fn new(to: &Path, stage: PathBuf, patterns: &'a PathPatterns, progress: &'a dyn Progress) -> Result<Picker<'a>> {
        Ok(Picker {
            to: to.to_path_buf(),
            stage,
            made_stage: false,
            patterns,
            progress,
            dirs: HashMap::new(),
            made: HashSet::new(),
            times: Vec::new(),
            writers: Writers::new()?,
            fill: None,
            picked: Vec::new(),
            files: 0,
            bytes: 0,
        })
    }

    /// Waits for the writers, sets the directories' times, syncs the staging directory.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.writers.finish()?;
        set_dir_times(&mut self.times)?;
        if self.made_stage {
            let f = fs::File::open(&self.stage).map_err(Error::io(&self.stage, "opening"))?;
            nix::unistd::syncfs(&f).map_err(|e| Error::io(&self.stage, "syncing")(e.into()))?;
        }
        Ok(())
    }

    /// Renames the staging directory to the destination (a new name, or an empty
    /// directory, whose mode and owner it takes).
    pub(crate) fn publish(&mut self) -> Result<()> {
        if let Ok(md) = fs::symlink_metadata(&self.to) {
            std::os::unix::fs::chown(&self.stage, Some(md.uid()), Some(md.gid())).map_err(Error::io(&self.stage, "setting the owner"))?;
            fs::set_permissions(&self.stage, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(Error::io(&self.stage, "setting the mode"))?;
        }
        fs::rename(&self.stage, &self.to).map_err(Error::io(&self.to, "moving the extracted files into place"))?;
        self.made_stage = false;
        Ok(())
    }

    /// Removes everything written (the staging directory).
    pub(crate) fn discard(&mut self) {
        self.writers.stop();
        if self.made_stage {
            let _ = fs::remove_dir_all(&self.stage);
            self.made_stage = false;
        }
    }

    /// Where a member goes in the staging directory.
    fn dest(&self, key: &MemberKey, inner: &str, member: &str) -> Result<PathBuf> {
        contained(&self.stage.join(layout_path(key, "")), inner).ok_or_else(|| Error::Refused(format!("member `{member}`: unsafe path")))
    }

    /// Creates `dir` and the directories above it, each with its member's metadata (the
    /// levels above a surface, which are not members, as plain 0755 directories).
    fn ensure_dir(&mut self, dir: &Path, member: &str) -> Result<()> {
        if dir == self.stage || self.made.contains(dir) {
            return Ok(());
        }
        let parent = dir.parent().filter(|p| p.starts_with(&self.stage)).ok_or_else(|| Error::Refused(format!("member `{member}`: unsafe path")))?;
        self.ensure_dir(parent, member)?;
        let create = |mode: u32| fs::DirBuilder::new().mode(mode).create(dir).map_err(Error::io(dir, "creating"));
        match self.dirs.get(dir) {
            Some(meta) => {
                create(0o700)?;
                std::os::unix::fs::chown(dir, Some(meta.uid), Some(meta.gid)).map_err(Error::io(dir, "setting the owner"))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode)).map_err(Error::io(dir, "setting the mode"))?;
                set_xattrs(dir, &meta.xattrs)?;
                self.times.push((dir.to_path_buf(), meta.mtime));
            }
            None if above_surfaces(dir.strip_prefix(&self.stage).unwrap_or(dir)) => create(0o755)?,
            None => return Err(Error::Refused(format!("member `{member}`: {} is not a directory of the archive", dir.display()))),
        }
        self.made.insert(dir.to_path_buf());
        Ok(())
    }

    /// Makes the directories up to `dest` and checks that none is a link or a file.
    fn prepare(&mut self, key: &MemberKey, inner: &str, member: &str) -> Result<PathBuf> {
        let dest = self.dest(key, inner, member)?;
        if let Some(parent) = dest.parent() {
            self.ensure_dir(parent, member)?;
        }
        check_parents(&self.stage, &dest, member)?;
        self.picked.push(layout_path(key, inner));
        Ok(dest)
    }

    /// Writes a regular file (sparse ones on this thread, the others through the pool).
    fn write<R: Read>(&mut self, m: Member<'_, '_, R>, dest: PathBuf) -> Result<(u64, blake3::Hash)> {
        let (size, hash) = if m.entry.header().entry_type() == EntryType::GNUSparse {
            unpack_sparse(m.entry, &dest, self.progress)?
        } else {
            self.writers.write(m.entry, dest, m.path, self.progress)?
        };
        self.files += 1;
        self.bytes += size;
        failpoint("extract-file");
        Ok((size, hash))
    }

    /// A hard link: only beside its target, which must have been picked too.
    fn link<R: Read>(&mut self, m: Member<'_, '_, R>, dest: &Path) -> Result<()> {
        let link = m.entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let (lkey, linner) = split_member(&link)
            .filter(|(k, _)| *k == m.key)
            .ok_or_else(|| Error::Refused(format!("member `{}` is a hard link to `{link}`, outside its surface", m.path)))?;
        let src = self.dest(&lkey, linner, m.path)?;
        self.writers.wait()?;
        if !fs::symlink_metadata(&src).is_ok_and(|md| md.is_file()) {
            return Err(Error::Usage(format!(
                "member `{}` is a hard link to `{link}`, which the patterns do not pick; add --path {} to extract both",
                m.path,
                layout_path(&lkey, linner)
            )));
        }
        fs::hard_link(&src, dest).map_err(Error::io(dest, "creating a hard link"))
    }

    /// A member of an ancestor: a picked file the newest index lists in it is written and
    /// checked against that line; everything else is read through.
    fn ancestor_member<R: Read>(&mut self, m: Member<'_, '_, R>, is_file: bool) -> Result<Option<(u64, blake3::Hash)>> {
        if !is_file {
            return Ok(None);
        }
        let fill = self.fill.as_mut().expect("reading an ancestor");
        let Some((row, _, want)) = fill.get(m.path)? else { return read_through(m) };
        fill.mark(row);
        let path = m.path.to_string();
        let dest = self.prepare(&m.key, m.inner, m.path)?;
        let (size, hash) = self.write(m, dest)?;
        if size != want.size || hash.to_hex().as_str() != want.blake3 {
            return Err(Error::Corrupt(format!("{path}: its content is not what the newest archive's index lists for it")));
        }
        Ok(Some((size, hash)))
    }
}

/// Whether a directory, relative to the staging root, lies above every surface root
/// (`svc`, `svc/instance`, `svc/contexts`, `svc/contexts/ctx`).
fn above_surfaces(rel: &Path) -> bool {
    let parts: Vec<_> = rel.components().collect();
    parts.len() <= 2 || (parts.len() == 3 && parts[1].as_os_str() == "contexts")
}

impl DirMeta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>, member: &str) -> Result<DirMeta> {
        let h = entry.header();
        let owner = |id: u64| u32::try_from(id).map_err(|_| Error::Corrupt(format!("{member}: owner id {id} is out of range")));
        Ok(DirMeta {
            mode: h.mode().unwrap_or(0o700) & 0o7777,
            uid: owner(h.uid().unwrap_or(0))?,
            gid: owner(h.gid().unwrap_or(0))?,
            mtime: h.mtime().unwrap_or(0) as i64,
            xattrs: pax_xattrs(entry),
        })
    }
}

impl Visitor for Picker<'_> {
    fn manifest(&mut self, manifest: &Manifest) -> Result<()> {
        if self.fill.is_some() {
            return Ok(());
        }
        refuse_overlap(&self.to, &manifest_surfaces(manifest), "recorded in the archive's manifest")?;
        self.progress.event(&Event::Totals { files: manifest.files, bytes: manifest.bytes });
        self.progress.event(&Event::Phase { phase: "extract".into() });
        fs::DirBuilder::new().mode(0o700).create(&self.stage).map_err(Error::io(&self.stage, "creating the staging directory"))?;
        self.made_stage = true;
        Ok(())
    }

    fn member<R: Read>(&mut self, m: Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>> {
        let kind = m.entry.header().entry_type();
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        if self.fill.is_some() {
            return self.ancestor_member(m, is_file);
        }
        let picked = self.patterns.picks(&m.key, m.inner);
        if kind == EntryType::Directory {
            let dest = self.dest(&m.key, m.inner, m.path)?;
            self.dirs.insert(dest.clone(), DirMeta::of(m.entry, m.path)?);
            if picked {
                self.ensure_dir(&dest, m.path)?;
                self.picked.push(layout_path(&m.key, m.inner));
            }
            return Ok(None);
        }
        if !picked {
            return if is_file { read_through(m) } else { Ok(None) };
        }
        let dest = self.prepare(&m.key, m.inner, m.path)?;
        match kind {
            EntryType::Symlink => {
                m.entry.unpack(&dest).map_err(|e| Error::io(&dest, "extracting")(unpack_cause(e)))?;
                Ok(None)
            }
            EntryType::Link => self.link(m, &dest).map(|_| None),
            _ => self.write(m, dest).map(Some),
        }
    }
}

impl Filling for Picker<'_> {
    fn fill(&mut self, table: Option<IndexTable>) -> Option<IndexTable> {
        std::mem::replace(&mut self.fill, table)
    }

    fn selective(&self) -> bool {
        !self.patterns.is_empty()
    }

    fn wants(&self, entry: &IndexEntry) -> bool {
        split_member(&entry.path).is_some_and(|(key, inner)| self.patterns.picks(&key, inner))
    }
}

/// The surfaces of an inventory: (`service.surface`, path with `{context}`).
pub(crate) fn inventory_surfaces(inv: &Inventory) -> Vec<(String, PathBuf)> {
    inv.services().iter().flat_map(|svc| svc.surfaces.iter().map(move |s| (format!("{}.{}", svc.name, s.name), s.path.clone()))).collect()
}

/// The surfaces an archive's manifest records, as laid out on its source.
fn manifest_surfaces(m: &Manifest) -> Vec<(String, PathBuf)> {
    m.services.iter().flat_map(|svc| svc.surfaces.iter().map(move |s| (format!("{}.{}", svc.name, s.name), PathBuf::from(&s.path)))).collect()
}

/// Refuses a destination that is, holds or lies inside one of `surfaces` (`{context}`
/// stands for any context), compared as given and with symlinks resolved.
pub(crate) fn refuse_overlap(to: &Path, surfaces: &[(String, PathBuf)], whose: &str) -> Result<()> {
    let tos = [std::path::absolute(to).unwrap_or_else(|_| to.to_path_buf()), resolved(to)];
    for (label, layout) in surfaces {
        for surface in [layout.clone(), resolved(layout)] {
            if tos.iter().any(|t| overlaps(t, &surface)) {
                return Err(Error::Refused(format!(
                    "--to {}: overlaps the live surface {label} at {} ({whose}); extract never writes into an instance: name a directory outside its surfaces, or use `hero-snap restore`",
                    to.display(),
                    layout.display()
                )));
            }
        }
    }
    Ok(())
}

/// Whether one path lies inside the other (or they are the same).
fn overlaps(a: &Path, layout: &Path) -> bool {
    a.components().zip(layout.components()).all(|(x, y)| x == y || y.as_os_str() == CONTEXT_PLACEHOLDER)
}

/// `path` made absolute, with its longest existing beginning resolved (symlinks, `..`).
fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = base.canonicalize() {
            return rest.iter().rev().fold(real, |acc: PathBuf, name| acc.join(name));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                base = parent;
            }
            _ => return abs,
        }
    }
}

/// The journal of a run's staging directory (`extract-<run>.json`), written before the
/// directory exists: the staging directory lies beside `--to`, anywhere on the host, so
/// only the journal lets `gc` find what a killed run left.
#[derive(Debug, Serialize, Deserialize)]
struct StagingJournal {
    run_id: String,
    pid: u32,
    stage: PathBuf,
}

/// A saved [`StagingJournal`]; dropping it removes the journal (by then the staging
/// directory is gone: published or discarded).
pub(crate) struct StagingJournaled {
    state: PathBuf,
    run: String,
}

impl StagingJournaled {
    pub(crate) fn save(state: &Path, run: &str, stage: &Path) -> Result<StagingJournaled> {
        let j = StagingJournal { run_id: run.to_string(), pid: std::process::id(), stage: stage.to_path_buf() };
        state::journal::save(state, "extract", run, &j).map_err(|e| match e {
            Error::Io { path, source, .. } => {
                Error::Io { path, action: "writing the journal of extract's staging directory (give a writable --state-dir)", source }
            }
            other => other,
        })?;
        Ok(StagingJournaled { state: state.to_path_buf(), run: run.to_string() })
    }
}

impl Drop for StagingJournaled {
    fn drop(&mut self) {
        state::journal::remove(&self.state, "extract", &self.run);
    }
}

/// Removes the staging directories of dead `extract` runs (for `gc`). Only a directory
/// named as extract names its staging directories is removed: the journal is a file an
/// operator could edit, and `gc` runs as root.
pub(crate) fn recover(state_dir: &Path) -> Result<Vec<Recovered>> {
    let mut out = Vec::new();
    for (path, j) in state::journal::dead::<StagingJournal>(state_dir, "extract", |j| j.pid)? {
        let ours = j.stage.file_name().is_some_and(|n| *n == *format!(".hero-snap-{}.extract", j.run_id));
        let action = match std::fs::symlink_metadata(&j.stage) {
            Ok(md) if ours && md.is_dir() => {
                std::fs::remove_dir_all(&j.stage).map_err(Error::io(&j.stage, "removing the staging directory of a killed extract"))?;
                format!("extract-staging-removed {}", j.stage.display())
            }
            Ok(_) => format!("extract staging {} left alone: not a staging directory of this run; look at it and delete it by hand", j.stage.display()),
            Err(_) => "extract-journal-removed (its staging directory was already gone)".to_string(),
        };
        let _ = std::fs::remove_file(&path);
        out.push(Recovered { run_id: j.run_id, action, outcomes: Vec::new() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_overlapping_a_surface_is_found() {
        let surfaces = vec![("f.files".to_string(), PathBuf::from("/var/lib/hero/f/contexts/{context}/files"))];
        let refused = |to: &str| refuse_overlap(Path::new(to), &surfaces, "test").is_err();
        assert!(refused("/var/lib/hero/f/contexts/geomind/files"));
        assert!(refused("/var/lib/hero/f/contexts/geomind/files/restored"));
        assert!(refused("/var/lib/hero/f"));
        assert!(!refused("/var/lib/hero/f/contexts/geomind/other"));
        assert!(!refused("/var/lib/hero/g"));
        assert!(above_surfaces(Path::new("svc/contexts/ctx")) && !above_surfaces(Path::new("svc/instance/data")));
    }
}
