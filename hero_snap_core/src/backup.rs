//! Backup: select the surfaces, (freeze), write the archive.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::write::{count_tree, ArchiveWriter};
use crate::archive::Compression;
use crate::crypto::Encryption;
use crate::error::{Error, Result};
use crate::inventory::{Class, Inventory, Scope, Surface};
use crate::manifest::{
    surface_member_root, LeftOut, Manifest, ManifestService, ManifestSurface, SelectionRecord, Warning, ARCHIVE_FORMAT,
};
use crate::outcome::{Outcome, Status};
use crate::progress::{Cancel, Event, Progress};

/// Which part of an instance a run covers. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these services.
    pub services: Vec<String>,
    /// Only these contexts; instance-scoped surfaces are then left out.
    pub contexts: Vec<String>,
    /// Archive derived surfaces too (left out by default: they are rebuildable).
    pub include_derived: bool,
}

impl Selection {
    pub(crate) fn record(&self) -> SelectionRecord {
        SelectionRecord { services: self.services.clone(), contexts: self.contexts.clone(), include_derived: self.include_derived }
    }
}

/// Options of [`backup`].
#[derive(Debug)]
pub struct BackupOptions {
    /// What to archive.
    pub selection: Selection,
    /// How the archive is encrypted.
    pub encryption: Encryption,
    /// zstd settings.
    pub compression: Compression,
    /// Accept reading surfaces in place when they have neither a snapshot-capable
    /// filesystem nor quiesce hooks (the manifest then says `consistency: live`).
    pub allow_live: bool,
    /// Longest the services may stay frozen; past it the watchdog thaws them and the run fails.
    pub freeze_deadline: std::time::Duration,
    /// Journals and locks; defaults to the inventory's `state_dir`, then /var/lib/hero-snap.
    pub state_dir: Option<PathBuf>,
}

impl BackupOptions {
    /// Whole instance, default compression and deadline.
    pub fn new(encryption: Encryption) -> BackupOptions {
        BackupOptions {
            selection: Selection::default(),
            encryption,
            compression: Compression::default(),
            allow_live: false,
            freeze_deadline: std::time::Duration::from_secs(10),
            state_dir: None,
        }
    }
}

/// What a backup archived, per service and surface.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The manifest as written, plus the warnings found while archiving.
    pub manifest: Manifest,
    /// Bytes of the archive written (after compression and encryption).
    pub archive_bytes: u64,
    /// One result per selected surface (and context): archived, skipped and why, or
    /// failed and why. The archive holds every `ok` surface even when another failed.
    pub outcomes: Vec<Outcome>,
}

impl BackupReport {
    /// Whether some selected surface could not be archived (see [`BackupReport::outcomes`]).
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| o.status == Status::Failed)
    }
}

/// One surface copy to archive.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub service: String,
    pub surface: String,
    pub context: Option<String>,
    /// Where the live data is.
    pub path: PathBuf,
}

/// What a selection resolves to.
pub(crate) type Selected = (Vec<Job>, Vec<ManifestService>, Vec<Warning>, Vec<Outcome>);

/// Resolves a selection against the inventory: the jobs, the manifest skeleton (services
/// with what is in, what is left out and why), and the outcomes of what is left out.
pub(crate) fn select(inv: &Inventory, sel: &Selection) -> Result<Selected> {
    for s in &sel.services {
        if inv.service(s).is_none() {
            return Err(Error::Usage(format!(
                "service `{s}` is not in the inventory {}; known services: {}",
                inv.source.display(),
                inv.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let all_contexts = inv.contexts()?;
    for c in &sel.contexts {
        if !all_contexts.contains(c) {
            return Err(Error::Usage(format!(
                "context `{c}` is not found in the instance; contexts found: {}",
                if all_contexts.is_empty() { "none".to_string() } else { all_contexts.join(", ") }
            )));
        }
    }
    let mut jobs = Vec::new();
    let mut services = Vec::new();
    let mut warnings = Vec::new();
    let mut outcomes = Vec::new();
    for svc in &inv.services {
        if !sel.services.is_empty() && !sel.services.contains(&svc.name) {
            continue;
        }
        let mut ms = ManifestService {
            name: svc.name.clone(),
            version: svc.version.clone(),
            schema: svc.schema,
            contexts: Vec::new(),
            surfaces: Vec::new(),
            left_out: Vec::new(),
            secrets: svc.secrets.clone(),
            files: 0,
            bytes: 0,
        };
        let mut svc_contexts = BTreeSet::new();
        for surface in &svc.surfaces {
            let leave = |reason: String| LeftOut { surface: surface.name.clone(), class: surface.class, reason };
            let mut skip = |reason: &str, status: Status| {
                outcomes.push(Outcome::new(&svc.name, Some(&surface.name), None, status, Some(reason.to_string())));
                ms.left_out.push(leave(reason.to_string()));
            };
            match surface.class {
                Class::Transient => {
                    skip("transient: never archived", Status::Skipped);
                    continue;
                }
                Class::Derived if !sel.include_derived => {
                    skip("derived: rebuildable from sources; pass --include-derived to archive it", Status::Skipped);
                    continue;
                }
                _ => {}
            }
            let contexts: Vec<Option<String>> = match surface.scope {
                Scope::Instance if !sel.contexts.is_empty() => {
                    skip("instance-scoped: not part of a per-context backup", Status::Skipped);
                    continue;
                }
                Scope::Instance => {
                    if !surface.path.is_dir() {
                        let w = Warning {
                            code: "surface-missing".into(),
                            message: format!("{}.{}: {} does not exist; nothing archived for it", svc.name, surface.name, surface.path.display()),
                        };
                        warnings.push(w);
                        // Declared state that is not there is a failure, not a footnote:
                        // the run exits non-zero and says which surface is missing.
                        skip(&format!("{} does not exist on the source", surface.path.display()), Status::Failed);
                        continue;
                    }
                    vec![None]
                }
                Scope::Context => {
                    let found = inv.surface_contexts(surface)?;
                    found.into_iter().filter(|c| sel.contexts.is_empty() || sel.contexts.contains(c)).map(Some).collect()
                }
            };
            let mut msurf = manifest_surface(surface, inv.root.as_deref());
            for ctx in contexts {
                if let Some(c) = &ctx {
                    svc_contexts.insert(c.clone());
                    msurf.contexts.push(c.clone());
                }
                jobs.push(Job { service: svc.name.clone(), surface: surface.name.clone(), path: surface.path_for(ctx.as_deref()), context: ctx });
            }
            if surface.scope == Scope::Context && msurf.contexts.is_empty() {
                outcomes.push(Outcome::new(&svc.name, Some(&surface.name), None, Status::Skipped,
                    Some("no context of the selection has this surface on disk".into())));
                ms.left_out.push(leave("no context of the selection has this surface on disk".into()));
                continue;
            }
            ms.surfaces.push(msurf);
        }
        ms.contexts = svc_contexts.into_iter().collect();
        if !sel.contexts.is_empty() && ms.surfaces.is_empty() {
            continue; // a per-context backup carries only the services that have the context
        }
        services.push(ms);
    }
    if jobs.is_empty() {
        return Err(Error::Usage("the selection covers no surface with data on disk; nothing to back up".into()));
    }
    Ok((jobs, services, warnings, outcomes))
}

/// The manifest records the inventory's layout, not where --root placed it on this machine.
fn manifest_surface(s: &Surface, root: Option<&Path>) -> ManifestSurface {
    let path = match root.and_then(|r| s.path.strip_prefix(r).ok()) {
        Some(rel) => Path::new("/").join(rel),
        None => s.path.clone(),
    };
    ManifestSurface { name: s.name.clone(), scope: s.scope, class: s.class, path: path.display().to_string(), contexts: Vec::new(), files: 0, bytes: 0 }
}

/// Writes an archive of the selected surfaces to `out` and returns it with the report.
///
/// On any error, and on cancellation, everything is undone before it returns: services
/// thawed, post hooks run, snapshots removed. What was already written to `out` is not
/// a valid archive; [`backup_to_file`] removes it for files.
///
/// `out` is written from a thread of its own (age encryption runs there, beside the
/// compressing and reading threads), hence `Send + 'static`.
pub fn backup<W: Write + Send + 'static>(inv: &Inventory, opts: &BackupOptions, out: W, progress: &dyn Progress, cancel: &Cancel) -> Result<(BackupReport, W)> {
    run_backup(inv, opts, out, progress, cancel).map_err(|e| cancel.explain(e))
}

fn run_backup<W: Write + Send + 'static>(inv: &Inventory, opts: &BackupOptions, out: W, progress: &dyn Progress, cancel: &Cancel) -> Result<(BackupReport, W)> {
    let (mut jobs, mut services, mut warnings, mut outcomes) = select(inv, &opts.selection)?;
    let placement = crate::plan::place(inv, &mut jobs, opts.allow_live)?;
    cancel.check()?;
    let state = opts.state_dir.clone().or_else(|| inv.state_dir.clone()).unwrap_or_else(|| PathBuf::from(crate::DEFAULT_STATE_DIR));
    let run = run_id();
    let frozen = crate::freeze::freeze(inv, &jobs, &placement, &crate::freeze::FreezeOptions { state: &state, run: &run, deadline: opts.freeze_deadline }, progress)?;
    warnings.extend(frozen.warnings.iter().cloned());
    for w in &frozen.warnings {
        progress.event(&Event::Warning { warning: w.clone() });
    }
    let views: Vec<PathBuf> = jobs.iter().map(|j| frozen.view(&j.path)).collect();
    cancel.check()?;

    progress.event(&Event::Phase { phase: "scan".into() });
    let (mut files, mut bytes) = (0, 0);
    for (job, view) in jobs.iter().zip(&views) {
        let (f, b) = count_tree(view, cancel)?;
        let svc = services.iter_mut().find(|s| s.name == job.service).expect("selected service");
        svc.files += f;
        svc.bytes += b;
        let surf = svc.surfaces.iter_mut().find(|s| s.name == job.surface).expect("selected surface");
        surf.files += f;
        surf.bytes += b;
        files += f;
        bytes += b;
    }
    progress.event(&Event::Totals { files, bytes });
    crate::failpoint("backup-scanned");

    let manifest = Manifest {
        format: ARCHIVE_FORMAT,
        tool: "hero-snap".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created: now_rfc3339(),
        instance: inv.instance.clone(),
        run_id: run.clone(),
        consistency: frozen.consistency,
        freeze_window_ms: frozen.freeze_window_ms,
        selection: opts.selection.record(),
        services,
        warnings: warnings.clone(),
        files,
        bytes,
    };
    let counted = CountingWriter { inner: out, count: 0 };
    let mut writer = ArchiveWriter::new(counted, &opts.encryption, opts.compression)?;
    writer.write_manifest(&manifest)?;
    crate::failpoint("backup-manifest-written");
    progress.event(&Event::Phase { phase: "archive".into() });
    for (job, view) in jobs.iter().zip(&views) {
        progress.event(&Event::Surface { service: job.service.clone(), surface: job.surface.clone(), context: job.context.clone() });
        let member = surface_member_root(&job.service, &job.surface, job.context.as_deref());
        writer.write_tree(view, &member, progress, cancel)?;
        outcomes.push(Outcome::new(&job.service, Some(&job.surface), job.context.as_deref(), Status::Ok, None));
        crate::failpoint("backup-surface-written");
    }
    // A snapshot that went bad while it was read (LVM overflow) fails the run before the
    // archive is finished, so no archive of it is ever published.
    frozen.check()?;
    let mut late_warnings = std::mem::take(&mut writer.warnings);
    let (counted, _totals) = writer.finish()?;
    crate::failpoint("backup-archive-finished");
    late_warnings.extend(frozen.release()?);
    crate::failpoint("backup-snapshots-released");
    let mut manifest = manifest;
    // Warnings found while archiving cannot go back into the manifest (it is already
    // written); they are in the report and the event stream.
    manifest.warnings.extend(late_warnings);
    crate::outcome::sort(&mut outcomes);
    for o in &outcomes {
        progress.event(&Event::Outcome(o.clone()));
    }
    Ok((BackupReport { manifest, archive_bytes: counted.count, outcomes }, counted.inner))
}

/// Writes the archive to `path` under a temporary name, fsyncs it and renames it into
/// place, so that a failed run never leaves a partial archive under the real name.
pub fn backup_to_file(inv: &Inventory, opts: &BackupOptions, path: &Path, progress: &dyn Progress, cancel: &Cancel) -> Result<BackupReport> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Usage(format!("{}: not a file name", path.display())))?;
    remove_dead_partials(&dir, &name.to_string_lossy());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.{}.", name.to_string_lossy(), std::process::id()))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(Error::io(&dir, "creating the archive"))?;
    let file = tmp.as_file().try_clone().map_err(Error::io(tmp.path(), "opening"))?;
    // The writer does not know where its output goes: name the file in its errors.
    let (report, buffered) = backup(inv, opts, BufWriter::with_capacity(1 << 20, WriteBehind::new(file)), progress, cancel).map_err(|e| match e {
        Error::Io { path: p, action, source } if p.as_os_str() == "<archive output>" => Error::Io { path: path.to_path_buf(), action, source },
        other => other,
    })?;
    let file: File = buffered.into_inner().map_err(|e| Error::io(tmp.path(), "writing the archive")(e.into_error()))?.file;
    file.sync_all().map_err(Error::io(tmp.path(), "syncing the archive"))?;
    crate::failpoint("backup-before-rename");
    tmp.persist(path).map_err(|e| Error::io(path, "renaming the archive into place")(e.error))?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(report)
}

/// Writes the archive file and keeps its writeback going while it grows: the disk writes
/// while zstd compresses, so the final fsync waits for the last few MiB rather than the
/// whole archive (which made a backup to a slow disk take compression time plus write
/// time). Written pages are then dropped from the page cache, so that a backup does not
/// push the services' hot data out of memory. Both are hints: the fsync after the last
/// byte is what makes the archive durable, and it reports any write error.
struct WriteBehind {
    file: File,
    written: u64,
    /// Writeback was started for everything before this offset...
    started: u64,
    /// ...and awaited (and the pages dropped) for everything before this one.
    settled: u64,
}

impl WriteBehind {
    /// Writeback is started per this many bytes written...
    const STEP: u64 = 8 << 20;
    /// ...and awaited once it is this far behind, which bounds the dirty pages.
    const LAG: u64 = 64 << 20;

    fn new(file: File) -> WriteBehind {
        WriteBehind { file, written: 0, started: 0, settled: 0 }
    }

    fn range(&self, from: u64, to: u64, flags: libc::c_uint) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a file descriptor this struct owns; no memory is shared.
        unsafe { libc::sync_file_range(self.file.as_raw_fd(), from as libc::off64_t, (to - from) as libc::off64_t, flags) };
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= Self::STEP {
            self.range(self.started, self.written, libc::SYNC_FILE_RANGE_WRITE);
            self.started = self.written;
            if self.started - self.settled >= Self::LAG + Self::STEP {
                let to = self.started - Self::LAG;
                self.range(self.settled, to, libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER);
                let _ = nix::fcntl::posix_fadvise(&self.file, self.settled as i64, (to - self.settled) as i64, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
                self.settled = to;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Removes `.<name>.<pid>.*.partial` files that a killed run (a dead pid) left in `dir`.
fn remove_dead_partials(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".partial")) else { continue };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !crate::journal::process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A run id: UTC time plus the process id, unique on one machine and sortable.
pub(crate) fn run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}-{}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        std::process::id()
    )
}
