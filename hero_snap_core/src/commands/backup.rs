//! `backup`: select the surfaces, plan, freeze and snapshot, write the archive to a
//! file, standard output or object storage.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::format::{surface_member_root, Manifest, ARCHIVE_FORMAT};
use crate::archive::s3::{self, S3Object};
use crate::archive::write::ArchiveWriter;
use crate::archive::{Compression, Encryption, Location};
use crate::error::{Error, Result};
use crate::freeze::{self, FreezeOptions};
use crate::fs_tree::count_tree;
use crate::inventory::Inventory;
use crate::outcome::{self, Outcome, Status};
use crate::plan::{self, Selection};
use crate::progress::{Cancel, Event, Progress};
use crate::state::{self, failpoint};

mod record;
pub use record::RunLog;

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
    let (mut jobs, mut services, mut warnings, mut outcomes) = plan::select(inv, &opts.selection)?;
    let placement = plan::place(inv, &mut jobs, opts.allow_live)?;
    cancel.check()?;
    let state = state::state_dir(opts.state_dir.as_deref(), Some(inv));
    let run = state::run_id();
    let frozen = freeze::freeze(inv, &jobs, &placement, &FreezeOptions { state: &state, run: &run, deadline: opts.freeze_deadline }, progress)?;
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
    failpoint("backup-scanned");

    let manifest = Manifest {
        format: ARCHIVE_FORMAT,
        tool: "hero-snap".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created: state::now_rfc3339(),
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
    failpoint("backup-manifest-written");
    progress.event(&Event::Phase { phase: "archive".into() });
    for (job, view) in jobs.iter().zip(&views) {
        progress.event(&Event::Surface { service: job.service.clone(), surface: job.surface.clone(), context: job.context.clone() });
        let member = surface_member_root(&job.service, &job.surface, job.context.as_deref());
        writer.write_tree(view, &member, progress, cancel)?;
        outcomes.push(Outcome::new(&job.service, Some(&job.surface), job.context.as_deref(), Status::Ok, None));
        failpoint("backup-surface-written");
    }
    // A snapshot that went bad while it was read (LVM overflow) fails the run before the
    // archive is finished, so no archive of it is ever published.
    frozen.check()?;
    let mut late_warnings = std::mem::take(&mut writer.warnings);
    let (counted, _totals) = writer.finish()?;
    failpoint("backup-archive-finished");
    late_warnings.extend(frozen.release()?);
    failpoint("backup-snapshots-released");
    let mut manifest = manifest;
    // Warnings found while archiving cannot go back into the manifest (it is already
    // written); they are in the report and the event stream.
    manifest.warnings.extend(late_warnings);
    outcome::sort(&mut outcomes);
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
    failpoint("backup-before-rename");
    tmp.persist(path).map_err(|e| Error::io(path, "renaming the archive into place")(e.error))?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(report)
}

/// Backs up to `to`. Whatever the location, a failed run publishes nothing: a file is
/// renamed into place only when complete, an object appears only when its multipart
/// upload completes after the archive's last byte (a failed run aborts it; `gc` aborts
/// what a killed run left).
pub fn backup_to(inv: &Inventory, opts: &BackupOptions, to: &Location, progress: &dyn Progress, cancel: &Cancel) -> Result<BackupReport> {
    match to {
        Location::File(path) => backup_to_file(inv, opts, path, progress, cancel),
        Location::Stdio => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(Error::Usage("refusing to write an archive to a terminal; redirect standard output".into()));
            }
            // Not locked: the archive is written from its own thread (`backup`).
            let out = io::BufWriter::with_capacity(1 << 20, stdout);
            let (report, mut out) = backup(inv, opts, out, progress, cancel)?;
            out.flush().map_err(Error::io("-", "writing the archive"))?;
            Ok(report)
        }
        Location::S3(obj) => backup_to_s3(inv, opts, obj, progress, cancel),
    }
}

fn backup_to_s3(inv: &Inventory, opts: &BackupOptions, obj: &S3Object, progress: &dyn Progress, cancel: &Cancel) -> Result<BackupReport> {
    let state = state::state_dir(opts.state_dir.as_deref(), Some(inv));
    let run = state::run_id();
    let (upload, outcome) = s3::Upload::start(obj)?;
    // Journaled before the first part leaves, so that a killed run's upload can be found.
    state::journal::save(&state, "upload", &run, &s3::UploadJournal::new(&run, obj))?;
    let result = backup(inv, opts, upload, progress, cancel).and_then(|(report, upload)| {
        let stored = upload.finish()?;
        if stored != report.archive_bytes {
            return Err(Error::storage(format!(
                "{}: the storage holds {stored} bytes, {} were sent; delete the object and back up again",
                obj.url(),
                report.archive_bytes
            )));
        }
        Ok(report)
    });
    let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
    if result.is_ok() || outcome.aborted {
        state::journal::remove(&state, "upload", &run);
    }
    result.map_err(|e| match (e, outcome.error.take()) {
        // The archive writer saw an io::Error; the storage's own error says more.
        (Error::Io { .. }, Some(storage)) => storage,
        (e, _) => e,
    })
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

    // nix has no sync_file_range; std neither.
    #[allow(unsafe_code)]
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
                let _ =
                    nix::fcntl::posix_fadvise(&self.file, self.settled as i64, (to - self.settled) as i64, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
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
        if pid != std::process::id() && !state::process_alive(pid) {
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
