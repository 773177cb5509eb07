//! Extracting an archive into staging directories beside each target: every member
//! checked for its place, regular files handed to the writer pool, hashes returned to the
//! reader for the index check.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::paths::{check_parents, contained};
use super::preflight::{self, RestorePlan, RestoreSelection};
use super::swap::{mtime_of, undo_dirs, Journal, Phase, Swap};
use super::writers::Writers;
use crate::archive::chain::IndexTable;
use crate::archive::format::{split_member, Manifest, MemberKey};
use crate::archive::read::{Member, Visitor};
use crate::error::{Error, Result};
use crate::fs_tree::{hash_reader, CountingReader};
use crate::inventory::Inventory;
use crate::progress::{Event, Progress};
use crate::state::failpoint;

/// Where one surface is being extracted.
struct Stage {
    root: PathBuf,
}

/// The archive reader's visitor for a restore: it owns the run's journal until the swap.
pub(crate) struct Extractor<'a> {
    target: &'a Inventory,
    selection: &'a RestoreSelection,
    run: String,
    state: PathBuf,
    progress: &'a dyn Progress,
    pub(crate) plan: Option<RestorePlan>,
    stages: BTreeMap<MemberKey, Stage>,
    pub(crate) journal: Journal,
    /// Directories extracted, with their mtime, applied once their contents are in.
    dirs: Vec<(PathBuf, i64)>,
    /// The last directory whose parents `check_parents` accepted.
    checked_parent: Option<PathBuf>,
    /// Regular files are written by these threads.
    writers: Writers,
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// Set while an ancestor of an incremental is read: the files the newest archive's
    /// index lists as held by it. Only those are extracted; everything else is read through.
    pub(crate) fill: Option<IndexTable>,
}

impl<'a> Extractor<'a> {
    /// A restore run `run` into `target`, journaled in `state`.
    pub(crate) fn new(
        target: &'a Inventory,
        selection: &'a RestoreSelection,
        keep_old: bool,
        run: &str,
        state: &Path,
        progress: &'a dyn Progress,
    ) -> Result<Extractor<'a>> {
        Ok(Extractor {
            target,
            selection,
            run: run.to_string(),
            state: state.to_path_buf(),
            progress,
            plan: None,
            stages: BTreeMap::new(),
            journal: Journal {
                run_id: run.to_string(),
                pid: std::process::id(),
                phase: Phase::Extracting,
                keep_old,
                work_dirs: Vec::new(),
                created_dirs: Vec::new(),
                parent_times: Vec::new(),
                swaps: Vec::new(),
                stopped: Vec::new(),
                imports_dir: None,
                imports: Vec::new(),
            },
            dirs: Vec::new(),
            checked_parent: None,
            writers: Writers::new()?,
            files: 0,
            bytes: 0,
            fill: None,
        })
    }

    fn work_dir(&mut self, parent: &Path, kind: &str) -> Result<PathBuf> {
        let dir = parent.join(format!(".hero-snap-{}.{kind}", self.run));
        if !self.journal.work_dirs.contains(&dir) {
            self.journal.work_dirs.push(dir.clone());
            self.journal.save(&self.state)?;
            fs::create_dir_all(&dir).map_err(Error::io(&dir, "creating the staging directory"))?;
        }
        Ok(dir)
    }

    /// Waits for the writers, sets directory times, records each stage's identity, syncs.
    pub(crate) fn finish_extraction(&mut self) -> Result<()> {
        // Every file is in before directory times are set (creating a file changes its
        // directory's mtime) and before anything is synced.
        self.writers.finish()?;
        set_dir_times(&mut self.dirs)?;
        for swap in &mut self.journal.swaps {
            let meta = fs::symlink_metadata(&swap.stage)
                .map_err(|_| Error::Corrupt(format!("the archive holds no data for {} (expected its root directory)", swap.target.display())))?;
            swap.stage_ino = meta.ino();
            swap.stage_mtime = Some((meta.mtime(), meta.mtime_nsec() as u32));
        }
        for i in self.plan.iter().flat_map(|p| &p.imports) {
            let staged = i.staged.as_deref().unwrap_or(Path::new(""));
            if !staged.is_dir() {
                return Err(Error::Corrupt(format!(
                    "the archive holds no data for the export {}.{}[{}] (expected its root directory)",
                    i.service, i.export, i.context
                )));
            }
            let f = fs::File::open(staged).map_err(Error::io(staged, "opening"))?;
            nix::unistd::syncfs(&f).map_err(|e| Error::io(staged, "syncing")(e.into()))?;
        }
        self.sync_stages()
    }

    /// Makes every staged tree durable (after extraction, and again after migrations).
    pub(crate) fn sync_stages(&self) -> Result<()> {
        for swap in &self.journal.swaps {
            let f = fs::File::open(&swap.stage).map_err(Error::io(&swap.stage, "opening"))?;
            nix::unistd::syncfs(&f).map_err(|e| Error::io(&swap.stage, "syncing")(e.into()))?;
        }
        Ok(())
    }

    /// Removes everything this restore created (before any swap).
    pub(crate) fn discard(&mut self) {
        self.writers.stop();
        undo_dirs(&self.journal);
        self.journal.remove(&self.state);
    }

    /// Stages each export copy of the plan under `<state>/import-<run>/<service>/<target
    /// context>/<export>`, never beside a live path: it is read by an import, not swapped.
    fn stage_imports(&mut self, plan: &mut RestorePlan) -> Result<()> {
        if plan.imports.is_empty() {
            return Ok(());
        }
        let dir = self.state.join(format!("import-{}", self.run));
        self.journal.imports_dir = Some(dir.clone());
        self.journal.save(&self.state)?;
        for i in &mut plan.imports {
            let parent = dir.join(&i.service).join(&i.target_context);
            fs::create_dir_all(&parent).map_err(Error::io(&parent, "creating the import staging directory"))?;
            let root = parent.join(&i.export);
            let key = MemberKey { service: i.service.clone(), surface: i.export.clone(), context: Some(i.context.clone()) };
            self.stages.insert(key, Stage { root: root.clone() });
            i.staged = Some(root);
        }
        Ok(())
    }

    /// Makes sure `parent` exists, recording what is created and which existing directory changes.
    fn prepare_parent(&mut self, parent: &Path) -> Result<()> {
        let mut existing = parent;
        while fs::symlink_metadata(existing).is_err() {
            existing = existing.parent().expect("/ exists");
        }
        for dir in [existing, parent] {
            if let Ok(md) = fs::symlink_metadata(dir) {
                if !self.journal.parent_times.iter().any(|(p, _, _)| p == dir) {
                    self.journal.parent_times.push((dir.to_path_buf(), md.mtime(), md.mtime_nsec() as u32));
                }
            }
        }
        if existing != parent {
            let rest = parent.strip_prefix(existing).expect("ancestor");
            let top = existing.join(rest.components().next().expect("non-empty"));
            self.journal.created_dirs.push(top);
            self.journal.save(&self.state)?;
            fs::create_dir_all(parent).map_err(Error::io(parent, "creating the target's parent directory"))?;
        }
        Ok(())
    }
}

impl crate::archive::chain::Filling for Extractor<'_> {
    fn fill(&mut self, table: Option<IndexTable>) -> Option<IndexTable> {
        std::mem::replace(&mut self.fill, table)
    }
}

impl Visitor for Extractor<'_> {
    fn manifest(&mut self, manifest: &Manifest) -> Result<()> {
        if self.fill.is_some() {
            // An ancestor: the chain's checks are the caller's (commands/restore.rs).
            return Ok(());
        }
        let mut plan = preflight::check(manifest, self.target, self.selection)?;
        self.progress.event(&Event::Totals { files: manifest.files, bytes: manifest.bytes });
        self.progress.event(&Event::Phase { phase: "extract".into() });
        for ts in &plan.surfaces {
            let parent = ts.path.parent().ok_or_else(|| Error::Usage(format!("{}: cannot restore to /", ts.path.display())))?;
            self.prepare_parent(parent)?;
            let leaf = ts.path.file_name().expect("surface paths have a last component").to_owned();
            let stage = self.work_dir(parent, "stage")?.join(&leaf);
            let old = parent.join(format!(".hero-snap-{}.old", self.run)).join(&leaf);
            let target_mtime = if ts.exists { mtime_of(&ts.path) } else { None };
            self.journal.swaps.push(Swap {
                target: ts.path.clone(),
                stage: stage.clone(),
                old,
                had_old: ts.exists,
                stage_ino: 0,
                stage_mtime: None,
                target_mtime,
            });
            self.stages.insert(ts.key(), Stage { root: stage });
        }
        self.stage_imports(&mut plan)?;
        self.journal.save(&self.state)?;
        failpoint("restore-journaled");
        self.plan = Some(plan);
        Ok(())
    }

    fn member<R: Read>(&mut self, m: Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>> {
        let kind = m.entry.header().entry_type();
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        let Some(fill) = &mut self.fill else { return self.extract(m, kind, is_file) };
        if !is_file {
            return Ok(None);
        }
        let Some((row, _, want)) = fill.get(m.path)? else { return read_through(m) };
        fill.mark(row);
        let (path, unselected) = (m.path.to_string(), !self.stages.contains_key(&m.key));
        let got = if unselected { read_through(m)? } else { self.extract(m, kind, is_file)? };
        match got {
            Some((size, hash)) if size == want.size && hash.to_hex().as_str() == want.blake3 => Ok(got),
            _ => Err(Error::Corrupt(format!("{path}: its content is not what the newest archive's index lists for it"))),
        }
    }
}

/// Reads a regular file's content through, hashing it, so the archive is still checked whole.
pub(crate) fn read_through<R: Read>(m: Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>> {
    let mut counter = CountingReader { inner: &mut *m.entry, count: 0 };
    let h = hash_reader(&mut counter).map_err(|e| Error::Corrupt(format!("{}: {e}", m.path)))?;
    Ok(Some((counter.count, h)))
}

impl Extractor<'_> {
    fn extract<R: Read>(&mut self, m: Member<'_, '_, R>, kind: EntryType, is_file: bool) -> Result<Option<(u64, blake3::Hash)>> {
        let Some(stage) = self.stages.get(&m.key) else {
            // Not selected: read through it, so the archive is still checked whole.
            if !is_file {
                return Ok(None);
            }
            return read_through(m);
        };
        let dest = contained(&stage.root, m.inner).ok_or_else(|| Error::Refused(format!("member `{}`: unsafe path", m.path)))?;
        // Files of one directory come one after another: check the chain of parents once
        // per directory. A checked directory stays one: no later member may replace it.
        if self.checked_parent.as_deref() != dest.parent() {
            check_parents(&stage.root, &dest, m.path)?;
            self.checked_parent = dest.parent().map(Path::to_path_buf);
        }
        // A second copy of a name is refused: the reader's shape check refuses a path seen
        // before, a writer creates a regular file exclusively (no look here: one path walk
        // a file less), and links and symlinks are looked for here.
        if matches!(kind, EntryType::Symlink | EntryType::Link) && fs::symlink_metadata(&dest).is_ok() {
            return Err(Error::Refused(format!("member `{}` appears twice", m.path)));
        }
        match kind {
            EntryType::Link => {
                let link = m.entry.link_name_bytes().map(|b| crate::fs_tree::name_text(&b)).unwrap_or_default();
                let (_, linner) = split_member(&link)
                    .filter(|(k, _)| *k == m.key)
                    .ok_or_else(|| Error::Refused(format!("member `{}` is a hard link to `{link}`, outside its surface", m.path)))?;
                let src = contained(&stage.root, linner).ok_or_else(|| Error::Refused(format!("member `{}`: unsafe link target", m.path)))?;
                // The target may still be with a writer.
                self.writers.wait()?;
                if !fs::symlink_metadata(&src).is_ok_and(|md| md.is_file()) {
                    return Err(Error::Refused(format!("member `{}` links to `{link}`, which is not a file extracted before it", m.path)));
                }
                fs::hard_link(&src, &dest).map_err(Error::io(&dest, "creating a hard link"))?;
                Ok(None)
            }
            EntryType::Directory => {
                let mtime = m.entry.header().mtime().unwrap_or(0) as i64;
                // The tar crate applies PAX xattrs to files only; directories get theirs here.
                let xattrs = pax_xattrs(m.entry);
                m.entry.unpack(&dest).map_err(|e| Error::io(&dest, "extracting")(unpack_cause(e)))?;
                set_xattrs(&dest, &xattrs)?;
                self.dirs.push((dest, mtime));
                Ok(None)
            }
            EntryType::Symlink => {
                m.entry.unpack(&dest).map_err(|e| Error::io(&dest, "extracting")(unpack_cause(e)))?;
                Ok(None)
            }
            EntryType::GNUSparse => {
                let (size, h) = unpack_sparse(m.entry, &dest, self.progress)?;
                self.extracted(size);
                Ok(Some((size, h)))
            }
            _ => {
                let (size, h) = self.writers.write(m.entry, dest, m.path, self.progress)?;
                self.extracted(size);
                Ok(Some((size, h)))
            }
        }
    }
}

impl Extractor<'_> {
    fn extracted(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
}

/// The extended attributes a member's PAX header carries (`SCHILY.xattr.NAME`): (name, value).
pub(crate) fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else { return Vec::new() };
    exts.flatten().filter_map(|ext| ext.key_bytes().strip_prefix(b"SCHILY.xattr.").map(|name| (name.to_vec(), ext.value_bytes().to_vec()))).collect()
}

/// Sets extended attributes (from [`pax_xattrs`]) on `dest`.
pub(super) fn set_xattrs(dest: &Path, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    for (name, value) in xattrs {
        xattr::set(dest, std::ffi::OsStr::from_bytes(name), value).map_err(Error::io(dest, "setting extended attributes"))?;
    }
    Ok(())
}

/// Sets the mtimes of the directories extracted, deepest first, so that setting a
/// parent's comes after its children (call it once every file is in).
pub(super) fn set_dir_times(dirs: &mut [(PathBuf, i64)]) -> Result<()> {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (dir, mtime) in dirs.iter() {
        let t = filetime::FileTime::from_unix_time(*mtime, 0);
        filetime::set_symlink_file_times(dir, t, t).map_err(Error::io(dir, "setting the mtime"))?;
    }
    Ok(())
}

/// Unpacks a sparse file (the tar crate places the map's holes) and hashes its logical
/// content back from disk.
pub(super) fn unpack_sparse<R: Read>(entry: &mut tar::Entry<'_, R>, dest: &Path, progress: &dyn Progress) -> Result<(u64, blake3::Hash)> {
    entry.unpack(dest).map_err(|e| Error::io(dest, "extracting")(unpack_cause(e)))?;
    failpoint("restore-extract-file");
    let mut f = fs::File::open(dest).map_err(Error::io(dest, "reading back"))?;
    let mut counter = CountingReader { inner: &mut f, count: 0 };
    let h = hash_reader(&mut counter).map_err(Error::io(dest, "reading back"))?;
    progress.event(&Event::Bytes { bytes: counter.count });
    Ok((counter.count, h))
}

/// The tar crate wraps the OS error of an unpack ("failed to unpack X into Y") and its
/// message drops the cause; keep the cause (e.g. "No space left on device"), the path is
/// named by the caller.
pub(super) fn unpack_cause(e: std::io::Error) -> std::io::Error {
    match e.get_ref().and_then(|inner| inner.source()) {
        Some(cause) => std::io::Error::new(e.kind(), cause.to_string()),
        None => e,
    }
}
