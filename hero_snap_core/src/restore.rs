//! Transactional restore: pre-flight, extract into staging beside each target, verify
//! everything against the index, then swap in with atomic renames; on any failure every
//! swap is rolled back. A journal in the state directory lets `gc` finish or undo the
//! restore of a process that died.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use tar::EntryType;

use crate::archive::read::{read_archive, Member, Visitor};
use crate::archive::CountingReader;
use crate::crypto::Decryption;
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::manifest::{Manifest, MemberKey};
use crate::outcome::{Outcome, Status};
use crate::preflight::{preflight, RestorePlan, RestoreSelection};
use crate::progress::{Cancel, Event, Progress};

mod writers;

/// Options of [`restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// What to restore, under which names, and whether existing data may be replaced.
    pub selection: RestoreSelection,
    /// Keep the replaced data beside the target (`.hero-snap-<run>.old/`) instead of deleting it.
    pub keep_old: bool,
    /// Where the journal goes; defaults to the inventory's `state_dir`, then /var/lib/hero-snap.
    pub state_dir: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The archive's manifest.
    pub manifest: Manifest,
    /// What the pre-flight decided: the surfaces, their targets, the migrations.
    pub plan: RestorePlan,
    /// Regular files restored.
    pub files: u64,
    /// Bytes of file data restored.
    pub bytes: u64,
    /// Replaced data kept with --keep-old.
    pub kept_old: Vec<PathBuf>,
    /// Derived surfaces still to be rebuilt (no rebuild hook, or it failed).
    pub rebuild_pending: Vec<String>,
    /// Hooks that failed after the commit (start, rebuild); each is also a failed outcome.
    pub warnings: Vec<String>,
    /// One result per surface of the archive (restored, skipped and why) and per service
    /// whose start or rebuild hook failed after the commit.
    pub outcomes: Vec<Outcome>,
}

impl RestoreReport {
    /// Whether something did not come back as it should (see [`RestoreReport::outcomes`]).
    /// The restored data is committed either way.
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| o.status == Status::Failed)
    }
}

pub(crate) fn state_dir(target: &Inventory, opts: &RestoreOptions) -> PathBuf {
    opts.state_dir.clone().or_else(|| target.state_dir.clone()).unwrap_or_else(|| PathBuf::from(crate::DEFAULT_STATE_DIR))
}

/// One surface being restored: where it is staged, where it goes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Swap {
    target: PathBuf,
    stage: PathBuf,
    /// Where the replaced data is parked after the swap.
    old: PathBuf,
    had_old: bool,
    /// Inode of the staged root, to tell after a crash whether the swap happened.
    stage_ino: u64,
    /// Modification times (seconds, nanoseconds) of the staged root and of the replaced
    /// target: moving a directory to another parent resets its mtime on XFS, so both are
    /// put back after a swap or a rollback.
    #[serde(default)]
    stage_mtime: Option<(i64, u32)>,
    #[serde(default)]
    target_mtime: Option<(i64, u32)>,
}

fn mtime_of(p: &Path) -> Option<(i64, u32)> {
    fs::symlink_metadata(p).ok().map(|m| (m.mtime(), m.mtime_nsec() as u32))
}

fn set_mtime(p: &Path, t: Option<(i64, u32)>) {
    if let Some((secs, nanos)) = t {
        let t = filetime::FileTime::from_unix_time(secs, nanos);
        let _ = filetime::set_symlink_file_times(p, t, t);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    Extracting,
    Swapping,
    Committed,
}

/// The restore journal (state_dir/restore-<run>.json).
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    run_id: String,
    pid: u32,
    phase: Phase,
    keep_old: bool,
    /// Staging and parking directories this run created.
    work_dirs: Vec<PathBuf>,
    /// Missing parents of targets this run created (topmost first).
    #[serde(default)]
    created_dirs: Vec<PathBuf>,
    /// Modification times (seconds, nanoseconds) of the existing directories this run adds
    /// entries to, put back when the run is undone, so that "as it was" is exact.
    #[serde(default)]
    parent_times: Vec<(PathBuf, i64, u32)>,
    swaps: Vec<Swap>,
    /// Services this run stopped, with their start hooks, for `gc` to start again.
    #[serde(default)]
    stopped: Vec<(String, crate::inventory::Command)>,
}

impl Journal {
    fn save(&self, dir: &Path) -> Result<()> {
        crate::journal::save(dir, "restore", &self.run_id, self)
    }
    fn remove(&self, dir: &Path) {
        crate::journal::remove(dir, "restore", &self.run_id);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Streams an archive into the target instance, all or nothing.
///
/// A cancel before the swap is committed rolls everything back (the target is as it
/// was) and returns [`Error::Cancelled`]; after the commit the restore completes.
pub fn restore(input: impl Read, keys: &Decryption, target: &Inventory, opts: &RestoreOptions, progress: &dyn Progress, cancel: &Cancel) -> Result<RestoreReport> {
    let state = state_dir(target, opts);
    // One run at a time per state directory: a backup's snapshots or another restore's swaps.
    let mut lock_warnings = Vec::new();
    let _lock = crate::freeze::Lock::acquire(&state, &mut lock_warnings)?;
    crate::failpoint("restore-locked");
    let run = crate::backup::run_id();
    let mut ex = Extractor {
        target,
        opts,
        run: run.clone(),
        state: state.clone(),
        progress,
        plan: None,
        stages: BTreeMap::new(),
        journal: Journal {
            run_id: run.clone(),
            pid: std::process::id(),
            phase: Phase::Extracting,
            keep_old: opts.keep_old,
            work_dirs: Vec::new(),
            created_dirs: Vec::new(),
            parent_times: Vec::new(),
            swaps: Vec::new(),
            stopped: Vec::new(),
        },
        dirs: Vec::new(),
        checked_parent: None,
        writers: writers::Writers::new()?,
        files: 0,
        bytes: 0,
    };
    let outcome = read_archive(input, keys, &mut ex, cancel);
    let outcome = match outcome.and_then(|o| ex.finish_extraction().map(|_| o)) {
        Ok(o) => o,
        Err(e) => {
            ex.discard();
            return Err(cancel.explain(e));
        }
    };
    crate::failpoint("restore-extracted");
    let plan = ex.plan.take().expect("the manifest came first");
    let mut warnings = Vec::new();

    // Stop the affected services, swap, migrate; undo everything on a failure.
    progress.event(&Event::Phase { phase: "swap".into() });
    let mut stopped = Vec::new();
    let result = (|| -> Result<()> {
        for name in &plan.services {
            let svc = target.service(name).expect("planned services exist");
            if let Some(stop) = &svc.hooks.stop {
                // Journaled first: if this process dies, `gc` starts the service again.
                if let Some(start) = &svc.hooks.start {
                    ex.journal.stopped.push((name.clone(), start.clone()));
                    ex.journal.save(&state)?;
                }
                crate::hooks::run(stop, &[("service", name)])?;
                stopped.push(name.clone());
            }
        }
        crate::failpoint("restore-services-stopped");
        cancel.check()?;
        ex.journal.phase = Phase::Swapping;
        ex.journal.save(&state)?;
        crate::failpoint("restore-swapping");
        for i in 0..ex.journal.swaps.len() {
            swap_in(&mut ex.journal.swaps[i])?;
            crate::failpoint("restore-between-swaps");
        }
        crate::failpoint("restore-swapped");
        progress.event(&Event::Phase { phase: "migrate".into() });
        for m in &plan.migrations {
            let from = m.from.to_string();
            let to = m.to.to_string();
            crate::hooks::run(&m.command, &[("service", &m.service), ("from_schema", &from), ("to_schema", &to)])?;
            crate::failpoint("restore-migrated");
        }
        if let (Some(new), Some(old)) = (&opts.selection.rename_to, opts.selection.contexts.first()) {
            for name in &plan.services {
                if let Some(rename) = &target.service(name).expect("planned").hooks.rename {
                    crate::hooks::run(rename, &[("service", name), ("context", old), ("new_context", new)])?;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let undo = rollback(&ex.journal);
        ex.journal.remove(&state);
        start_services(target, &stopped, &mut warnings);
        return Err(match undo {
            Ok(()) if cancel.is_cancelled() => Error::Cancelled,
            Ok(()) => Error::Command(format!("restore failed and was rolled back; the target is as it was: {e}")),
            Err(u) => Error::Command(format!("restore failed ({e}) and the rollback failed too ({u}); run `hero-snap gc` and check the targets")),
        });
    }
    ex.journal.phase = Phase::Committed;
    ex.journal.save(&state)?;
    crate::failpoint("restore-after-commit");
    let kept_old = complete(&ex.journal);
    crate::failpoint("restore-completed");
    ex.journal.remove(&state);
    let not_started = start_services(target, &stopped, &mut warnings);

    let mut outcomes = Vec::new();
    let mut rebuild_pending = Vec::new();
    let pending_services: BTreeSet<&str> = plan.rebuild_pending.iter().filter_map(|s| s.split('.').next()).collect();
    for name in pending_services {
        let svc = target.service(name).expect("planned");
        let surfaces = plan.rebuild_pending.iter().filter(|s| s.starts_with(&format!("{name}."))).cloned();
        match &svc.hooks.rebuild {
            Some(cmd) => {
                if let Err(e) = crate::hooks::run(cmd, &[("service", name)]) {
                    warnings.push(format!("{name}: rebuild hook failed: {e}"));
                    for s in surfaces {
                        outcomes.push(surface_outcome(&s, Status::Failed, format!("rebuild hook failed: {e}")));
                        rebuild_pending.push(s);
                    }
                } else {
                    outcomes.extend(surfaces.map(|s| surface_outcome(&s, Status::Ok, "rebuilt by the service's rebuild hook".into())));
                }
            }
            None => {
                for s in surfaces {
                    outcomes.push(surface_outcome(&s, Status::Skipped, "derived and not in the archive; the service has no rebuild hook: rebuild it".into()));
                    rebuild_pending.push(s);
                }
            }
        }
    }
    outcomes.extend(archive_outcomes(&outcome.manifest, &plan));
    for (name, why) in not_started {
        outcomes.push(Outcome::new(&name, None, None, Status::Failed, Some(why)));
    }
    crate::outcome::sort(&mut outcomes);
    for o in &outcomes {
        progress.event(&Event::Outcome(o.clone()));
    }
    Ok(RestoreReport { manifest: outcome.manifest, plan, files: ex.files, bytes: ex.bytes, kept_old, rebuild_pending, warnings, outcomes })
}

/// An outcome for a `service.surface` name of the plan's rebuild list.
fn surface_outcome(name: &str, status: Status, reason: String) -> Outcome {
    let (service, surface) = name.split_once('.').unwrap_or((name, ""));
    Outcome::new(service, Some(surface), None, status, Some(reason))
}

/// What became of every surface the archive holds, or left out: restored, or skipped and why.
fn archive_outcomes(manifest: &Manifest, plan: &RestorePlan) -> Vec<Outcome> {
    let mut out = Vec::new();
    for ms in &manifest.services {
        for surf in &ms.surfaces {
            let contexts: Vec<Option<&str>> =
                if surf.contexts.is_empty() { vec![None] } else { surf.contexts.iter().map(|c| Some(c.as_str())).collect() };
            for ctx in contexts {
                let planned = plan.surfaces.iter().find(|t| t.service == ms.name && t.surface == surf.name && t.context.as_deref() == ctx);
                out.push(match planned {
                    Some(t) if t.target_context.as_deref() != ctx => Outcome::new(&ms.name, Some(&surf.name), ctx, Status::Ok,
                        Some(format!("restored as context `{}`", t.target_context.as_deref().unwrap_or_default()))),
                    Some(_) => Outcome::new(&ms.name, Some(&surf.name), ctx, Status::Ok, None),
                    None => Outcome::new(&ms.name, Some(&surf.name), ctx, Status::Skipped, Some("not selected for this restore".into())),
                });
            }
        }
        for l in &ms.left_out {
            // Derived surfaces to rebuild have their outcome from the rebuild step.
            if !plan.rebuild_pending.iter().any(|r| r == &format!("{}.{}", ms.name, l.surface)) {
                out.push(Outcome::new(&ms.name, Some(&l.surface), None, Status::Skipped, Some(format!("not in the archive: {}", l.reason))));
            }
        }
    }
    out
}

/// Runs the start hooks; returns the services whose hook failed, with the failure.
fn start_services(target: &Inventory, stopped: &[String], warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for name in stopped {
        if let Some(start) = target.service(name).and_then(|s| s.hooks.start.as_ref()) {
            if let Err(e) = crate::hooks::run(start, &[("service", name)]) {
                warnings.push(format!("{name}: start hook failed: {e}"));
                failed.push((name.clone(), format!("start hook failed: {e}")));
            }
        }
    }
    failed
}

struct Stage {
    root: PathBuf,
}

struct Extractor<'a> {
    target: &'a Inventory,
    opts: &'a RestoreOptions,
    run: String,
    state: PathBuf,
    progress: &'a dyn Progress,
    plan: Option<RestorePlan>,
    stages: BTreeMap<MemberKey, Stage>,
    journal: Journal,
    /// Directories extracted, with their mtime, applied once their contents are in.
    dirs: Vec<(PathBuf, i64)>,
    /// The last directory whose parents `check_parents` accepted.
    checked_parent: Option<PathBuf>,
    /// Regular files are written by these threads.
    writers: writers::Writers,
    files: u64,
    bytes: u64,
}

impl Extractor<'_> {
    fn work_dir(&mut self, parent: &Path, kind: &str) -> Result<PathBuf> {
        let dir = parent.join(format!(".hero-snap-{}.{kind}", self.run));
        if !self.journal.work_dirs.contains(&dir) {
            self.journal.work_dirs.push(dir.clone());
            self.journal.save(&self.state)?;
            fs::create_dir_all(&dir).map_err(Error::io(&dir, "creating the staging directory"))?;
        }
        Ok(dir)
    }

    fn finish_extraction(&mut self) -> Result<()> {
        // Every file is in before directory times are set (creating a file changes its
        // directory's mtime) and before anything is synced.
        self.writers.finish()?;
        // Deepest first, so that setting a parent's mtime comes after its children.
        self.dirs.sort_by(|a, b| b.0.components().count().cmp(&a.0.components().count()));
        for (dir, mtime) in &self.dirs {
            filetime::set_symlink_file_times(dir, filetime::FileTime::from_unix_time(*mtime, 0), filetime::FileTime::from_unix_time(*mtime, 0))
                .map_err(Error::io(dir, "setting the mtime"))?;
        }
        for swap in &mut self.journal.swaps {
            let meta = fs::symlink_metadata(&swap.stage).map_err(|_| {
                Error::Corrupt(format!("the archive holds no data for {} (expected its root directory)", swap.target.display()))
            })?;
            swap.stage_ino = meta.ino();
            swap.stage_mtime = Some((meta.mtime(), meta.mtime_nsec() as u32));
            let f = fs::File::open(&swap.stage).map_err(Error::io(&swap.stage, "opening"))?;
            nix::unistd::syncfs(&f).map_err(|e| Error::io(&swap.stage, "syncing")(e.into()))?;
        }
        Ok(())
    }

    /// Removes everything this restore created (before any swap).
    fn discard(&mut self) {
        self.writers.stop();
        undo_dirs(&self.journal);
        self.journal.remove(&self.state);
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

impl Visitor for Extractor<'_> {
    fn manifest(&mut self, manifest: &Manifest) -> Result<()> {
        let plan = preflight(manifest, self.target, &self.opts.selection)?;
        self.progress.event(&Event::Totals { files: manifest.files, bytes: manifest.bytes });
        self.progress.event(&Event::Phase { phase: "extract".into() });
        for ts in &plan.surfaces {
            let parent = ts.path.parent().ok_or_else(|| Error::Usage(format!("{}: cannot restore to /", ts.path.display())))?;
            self.prepare_parent(parent)?;
            if ts.exists && fs::metadata(&ts.path).is_ok_and(|m| fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())) {
                return Err(Error::Refused(format!(
                    "{}: is a mount point; hero-snap swaps directories by rename and cannot replace a mount point (restore into a directory inside it)",
                    ts.path.display())));
            }
            let leaf = ts.path.file_name().expect("surface paths have a last component").to_owned();
            let stage = self.work_dir(parent, "stage")?.join(&leaf);
            let old = parent.join(format!(".hero-snap-{}.old", self.run)).join(&leaf);
            let target_mtime = if ts.exists { mtime_of(&ts.path) } else { None };
            self.journal.swaps.push(Swap { target: ts.path.clone(), stage: stage.clone(), old, had_old: ts.exists, stage_ino: 0, stage_mtime: None, target_mtime });
            self.stages.insert(ts.key(), Stage { root: stage });
        }
        self.journal.save(&self.state)?;
        crate::failpoint("restore-journaled");
        self.plan = Some(plan);
        Ok(())
    }

    fn member<R: Read>(&mut self, m: Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>> {
        let kind = m.entry.header().entry_type();
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        let Some(stage) = self.stages.get(&m.key) else {
            // Not selected: read through it, so the archive is still checked whole.
            if !is_file {
                return Ok(None);
            }
            let mut counter = CountingReader { inner: &mut *m.entry, count: 0 };
            let h = crate::archive::write::hash_reader(&mut counter).map_err(|e| Error::Corrupt(format!("{}: {e}", m.path)))?;
            return Ok(Some((counter.count, h)));
        };
        let dest = contained(&stage.root, m.inner).ok_or_else(|| Error::Refused(format!("member `{}`: unsafe path", m.path)))?;
        // Files of one directory come one after another: check the chain of parents once
        // per directory. A checked directory stays one: no later member may replace it.
        if self.checked_parent.as_deref() != dest.parent() {
            check_parents(&stage.root, &dest, m.path)?;
            self.checked_parent = dest.parent().map(Path::to_path_buf);
        }
        // Asked in this order, a file still with a writer or already written is never missed.
        if kind != EntryType::Directory && (self.writers.writing(&dest) || fs::symlink_metadata(&dest).is_ok()) {
            return Err(Error::Refused(format!("member `{}` appears twice", m.path)));
        }
        match kind {
            EntryType::Link => {
                let link = m.entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let (_, linner) = crate::manifest::split_member(&link)
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
                for (name, value) in xattrs {
                    use std::os::unix::ffi::OsStrExt;
                    xattr::set(&dest, std::ffi::OsStr::from_bytes(&name), &value).map_err(Error::io(&dest, "setting extended attributes"))?;
                }
                self.dirs.push((dest, mtime));
                Ok(None)
            }
            EntryType::Symlink => {
                m.entry.unpack(&dest).map_err(|e| Error::io(&dest, "extracting")(unpack_cause(e)))?;
                Ok(None)
            }
            EntryType::GNUSparse => {
                // The tar crate places the sparse map's holes; hash the logical content back from disk.
                m.entry.unpack(&dest).map_err(|e| Error::io(&dest, "extracting")(unpack_cause(e)))?;
                crate::failpoint("restore-extract-file");
                let mut f = fs::File::open(&dest).map_err(Error::io(&dest, "reading back"))?;
                let mut counter = CountingReader { inner: &mut f, count: 0 };
                let h = crate::archive::write::hash_reader(&mut counter).map_err(Error::io(&dest, "reading back"))?;
                self.extracted(counter.count);
                self.progress.event(&Event::Bytes { bytes: counter.count });
                Ok(Some((counter.count, h)))
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
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else { return Vec::new() };
    exts.flatten()
        .filter_map(|ext| ext.key_bytes().strip_prefix(b"SCHILY.xattr.").map(|name| (name.to_vec(), ext.value_bytes().to_vec())))
        .collect()
}

/// The tar crate wraps the OS error of an unpack ("failed to unpack X into Y") and its
/// message drops the cause; keep the cause (e.g. "No space left on device"), the path is
/// named by the caller.
fn unpack_cause(e: std::io::Error) -> std::io::Error {
    match e.get_ref().and_then(|inner| inner.source()) {
        Some(cause) => std::io::Error::new(e.kind(), cause.to_string()),
        None => e,
    }
}

/// `root/inner` if `inner` has only plain components.
fn contained(root: &Path, inner: &str) -> Option<PathBuf> {
    if inner.is_empty() {
        return Some(root.to_path_buf());
    }
    let rel = Path::new(inner);
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(root.join(rel))
    } else {
        None
    }
}

/// Every directory between the stage root and `dest` must be a real directory (not a
/// symlink an earlier member planted to redirect writes).
fn check_parents(root: &Path, dest: &Path, member: &str) -> Result<()> {
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

/// Puts the staged tree at the target; the replaced data goes to `old`.
fn swap_in(s: &mut Swap) -> Result<()> {
    if s.had_old {
        let parked = s.old.parent().expect("old has a parent");
        fs::create_dir_all(parked).map_err(Error::io(parked, "creating the parking directory"))?;
        exchange(&s.stage, &s.target).map_err(Error::io(&s.target, "swapping in the restored data"))?;
        fs::rename(&s.stage, &s.old).map_err(Error::io(&s.old, "parking the replaced data"))?;
    } else {
        fs::rename(&s.stage, &s.target).map_err(Error::io(&s.target, "moving the restored data into place"))?;
    }
    set_mtime(&s.target, s.stage_mtime);
    if let Some(p) = s.target.parent() {
        sync_dir(p);
    }
    Ok(())
}

/// Undoes the swaps of a journal (in-process or after a crash). Works from what is on disk.
fn rollback(j: &Journal) -> Result<()> {
    let mut first_err = None;
    for s in j.swaps.iter().rev() {
        let swapped = fs::symlink_metadata(&s.target).is_ok_and(|m| m.ino() == s.stage_ino && s.stage_ino != 0);
        let res = (|| -> Result<()> {
            if !swapped {
                return Ok(());
            }
            if s.had_old {
                if fs::symlink_metadata(&s.old).is_ok() {
                    exchange(&s.old, &s.target).map_err(Error::io(&s.target, "putting the old data back"))?;
                } else {
                    // Crashed between the exchange and the parking rename: the old data is at `stage`.
                    exchange(&s.stage, &s.target).map_err(Error::io(&s.target, "putting the old data back"))?;
                }
                set_mtime(&s.target, s.target_mtime);
            } else {
                fs::remove_dir_all(&s.target).map_err(Error::io(&s.target, "removing restored data"))?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    undo_dirs(j);
    first_err.map_or(Ok(()), Err)
}

/// Removes the run's work directories and the parents it created, and puts back the
/// modification times of the directories it touched.
fn undo_dirs(j: &Journal) {
    for d in &j.work_dirs {
        let _ = fs::remove_dir_all(d);
        let _ = fs::remove_dir_all(d.with_extension("old"));
    }
    for top in j.created_dirs.iter().rev() {
        // Only empty directories: anything else in there is not ours to delete.
        for e in walkdir::WalkDir::new(top).contents_first(true).into_iter().flatten() {
            if e.file_type().is_dir() {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    for (dir, secs, nanos) in j.parent_times.iter().rev() {
        let t = filetime::FileTime::from_unix_time(*secs, *nanos);
        let _ = filetime::set_file_mtime(dir, t);
    }
}

/// After commit: delete (or keep) the replaced data, remove the work directories.
fn complete(j: &Journal) -> Vec<PathBuf> {
    let mut kept = Vec::new();
    for s in &j.swaps {
        if s.had_old && fs::symlink_metadata(&s.old).is_ok() {
            if j.keep_old {
                kept.push(s.old.clone());
            } else {
                let _ = fs::remove_dir_all(&s.old);
            }
        }
    }
    for d in &j.work_dirs {
        let _ = fs::remove_dir_all(d);
        if !j.keep_old {
            let _ = fs::remove_dir(d.with_extension("old"));
        }
    }
    kept
}

use crate::Recovered;

/// Finishes or undoes the restores of dead processes found in `state_dir`.
pub(crate) fn recover(state_dir: &Path) -> Result<Vec<Recovered>> {
    let mut out = Vec::new();
    for (_, j) in crate::journal::dead::<Journal>(state_dir, "restore", |j| j.pid)? {
        let action = match j.phase {
            Phase::Extracting | Phase::Swapping => {
                rollback(&j)?;
                "rolled-back"
            }
            Phase::Committed => {
                complete(&j);
                "completed"
            }
        };
        crate::failpoint("gc-restore-finished");
        for (name, start) in &j.stopped {
            // The service may be needed whatever happened; a failure is only reported.
            if let Err(e) = crate::hooks::run(start, &[("service", name)]) {
                tracing::warn!("{name}: start hook failed after recovering run {}: {e}", j.run_id);
            }
        }
        j.remove(state_dir);
        out.push(Recovered { run_id: j.run_id, action: action.into() });
    }
    Ok(out)
}

/// Atomically exchanges two paths (renameat2 RENAME_EXCHANGE): neither is ever missing.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths; the call has no other memory effects.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}
