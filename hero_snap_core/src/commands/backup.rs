//! `backup`: select the surfaces, plan, freeze and snapshot, write the archive to a
//! file, standard output or object storage.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::catalog::Catalog;
use crate::archive::chain::{self, Cache, CacheRecord, Since};
use crate::archive::format::{surface_member_root, Manifest, ManifestService, Warning, ARCHIVE_FORMAT, INCREMENTAL_FORMAT};
use crate::archive::ranged::{parent_from_archive, FromArchive, ParentFetch};
use crate::archive::s3::{self, S3Object};
use crate::archive::write::{ArchiveWriter, ParentIndex};
use crate::archive::{Compression, Decryption, DecryptionChoice, Encryption, Location};
use crate::error::{Error, Result};
use crate::exports;
use crate::freeze::{self, FreezeOptions};
use crate::fs_tree::count_tree;
use crate::inventory::Inventory;
use crate::outcome::{self, Outcome, Status};
use crate::plan::{self, Selection};
use crate::progress::{Cancel, Event, Progress};
use crate::state::{self, failpoint};

mod notify;
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
    /// Write an incremental archive on this parent (decisions/D-13). Only [`backup_to`]
    /// finds parents: it keeps each archive's index in the state directory.
    pub since: Option<Since>,
    /// With `since`: compare each file's content with the parent's, not metadata alone.
    pub rehash: bool,
    /// With `since`: start a new full archive when the parent's chain has this many
    /// archives (the full one included).
    pub full_every: Option<u32>,
    /// With `since`: keys that open the parent archive, to read its index from the archive
    /// when the state directory's cache lacks it (decisions/D-17). The backup's own
    /// passphrase, and plaintext with [`Encryption::None`], are tried without being given.
    pub parent_keys: DecryptionChoice,
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
            since: None,
            rehash: false,
            full_every: None,
            parent_keys: DecryptionChoice::default(),
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
    /// An incremental's files listed as held by an ancestor (not in this archive), and their bytes.
    #[serde(skip_serializing_if = "none_inherited")]
    pub inherited: (u64, u64),
    /// The parent's index was read from the parent archive by ranged reads, at this cost
    /// (the state directory's cache did not have it; decisions/D-17).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_fetch: Option<ParentFetch>,
    /// What the index cache keeps of this archive once it is published.
    #[serde(skip)]
    cached: Option<CacheRecord>,
}

fn none_inherited(n: &(u64, u64)) -> bool {
    *n == (0, 0)
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
/// Written this way, the archive's index is not kept in the state directory, so no
/// incremental can build on it; `opts.since` must be `None`.
pub fn backup<W: Write + Send + 'static>(inv: &Inventory, opts: &BackupOptions, out: W, progress: &dyn Progress, cancel: &Cancel) -> Result<(BackupReport, W)> {
    if opts.since.is_some() {
        return Err(Error::Usage("an incremental backup is written with backup_to, which keeps the indexes it builds on".into()));
    }
    backup_cached(inv, opts, out, ("-", None), progress, cancel).map(|(mut report, out)| {
        if let Some(record) = report.cached.take() {
            Cache::new(&state::state_dir(opts.state_dir.as_deref(), Some(inv))).discard(&record.run_id);
        }
        (report, out)
    })
}

/// [`backup`], with the index cache's files left for [`publish`] (or removed on an error).
fn backup_cached<W: Write + Send + 'static>(
    inv: &Inventory,
    opts: &BackupOptions,
    out: W,
    to: (&str, Option<&Location>),
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(BackupReport, W)> {
    let state = state::state_dir(opts.state_dir.as_deref(), Some(inv));
    let run = state::run_id();
    let cache = Cache::new(&state);
    let target = Target { state: &state, run: &run, key: to.0, location: to.1 };
    let result = run_backup(inv, opts, out, &target, progress, cancel).map_err(|e| cancel.explain(e));
    if result.is_err() {
        cache.discard(&run);
    }
    result
}

/// An incremental's parent: its cache record and its index.
type Parent = (CacheRecord, ParentIndex);

/// The cache record and index of the parent, or `None` for a full archive (with the
/// warning that says why, when `--since latest` found none or the chain is long enough);
/// and what reading the parent's index from its archive cost, if it was read so.
fn resolve_parent(inv: &Inventory, opts: &BackupOptions, target: &Target<'_>, warnings: &mut Vec<Warning>) -> Result<(Option<Parent>, Option<ParentFetch>)> {
    let Some(since) = &opts.since else { return Ok((None, None)) };
    let cache = Cache::new(target.state);
    let to = target.key;
    let selection = opts.selection.record();
    let mut fetch = None;
    let record = match chain::find_parent(&cache, since, &inv.instance, &selection, to)? {
        Some(record) => record,
        None => match parent_from_archive(&cache, since, (&inv.instance, &selection), target.location, &parent_keys(opts)?)? {
            FromArchive::Parent(found) => {
                let (record, fetched) = *found;
                warnings.push(fetched_warning(&fetched));
                fetch = Some(fetched);
                record
            }
            FromArchive::NoParent(why) => {
                warnings.push(Warning {
                    code: "full-no-parent".into(),
                    message: format!(
                        "no earlier archive of this instance and selection beside {to} is in the index cache, and {why}; this archive is a full one"
                    ),
                });
                return Ok((None, None));
            }
        },
    };
    if opts.full_every.is_some_and(|n| record.level + 1 >= n) {
        warnings.push(Warning {
            code: "full-every".into(),
            message: format!("the chain of {} has {} archives (--full-every); this archive starts a new one", record.run_id, record.level + 1),
        });
        return Ok((None, None));
    }
    let changed_before = state::run_started(&record.run_id).unwrap_or(i64::MIN);
    let parent = ParentIndex { lookup: cache.open(&record)?, run_id: record.run_id.clone(), rehash: opts.rehash, changed_before };
    Ok((Some((record, parent)), fetch))
}

/// The keys that may open a parent archive: those given, the backup's own passphrase,
/// and plaintext when the backup itself is plaintext.
fn parent_keys(opts: &BackupOptions) -> Result<Decryption> {
    let mut keys = opts.parent_keys.resolve()?;
    match &opts.encryption {
        Encryption::Passphrase { passphrase, .. } => keys.set_passphrase(passphrase.clone()),
        Encryption::None => keys.allow_plaintext = true,
        Encryption::Recipients(_) => {}
    }
    Ok(keys)
}

/// Says that the parent's index came from the archive, and that without fingerprints
/// files are compared by content.
fn fetched_warning(f: &ParentFetch) -> Warning {
    Warning {
        code: "parent-index-from-archive".into(),
        message: format!(
            "the index cache does not hold the parent {}; its index was read from {} by ranged reads ({} of {} bytes, {} reads); it has no metadata fingerprints, so a file is taken as unchanged only when its size and content (as --rehash) are the parent's and its ctime is older than the parent's run",
            f.run_id, f.location, f.fetched_bytes, f.archive_bytes, f.requests
        ),
    }
}

/// Counts the files and bytes of every view into the manifest's services and surfaces;
/// the totals.
fn count_views(jobs: &[plan::Job], views: &[PathBuf], services: &mut [ManifestService], progress: &dyn Progress, cancel: &Cancel) -> Result<(u64, u64)> {
    progress.event(&Event::Phase { phase: "scan".into() });
    let (mut files, mut bytes) = (0, 0);
    for (job, counted) in jobs.iter().zip(count_all(views, cancel)) {
        let (f, b) = counted?;
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
    Ok((files, bytes))
}

/// Counts every view, one per core at a time: the count is a walk with a `stat` per
/// file, all of it before the first byte is archived (the manifest comes first and
/// carries the totals), and views are independent (hard links are kept within one).
/// Results in the views' order, so the first view that fails is the one reported.
fn count_all(views: &[PathBuf], cancel: &Cancel) -> Vec<Result<(u64, u64)>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, PoisonError};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, views.len().max(1));
    let next = AtomicUsize::new(0);
    type Count = Mutex<Option<Result<(u64, u64)>>>;
    let counts: Vec<Count> = views.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(view) = views.get(i) else { break };
                // A failed view does not stop the others: each gets its own result.
                *counts[i].lock().unwrap_or_else(PoisonError::into_inner) = Some(count_tree(view, cancel));
            });
        }
    });
    counts.into_iter().map(|c| c.into_inner().unwrap_or_else(PoisonError::into_inner).expect("every view is counted")).collect()
}

/// After the archive is safely in place: its index joins the cache.
fn publish(inv: &Inventory, opts: &BackupOptions, report: &mut BackupReport, location: &str) -> Result<()> {
    let Some(mut record) = report.cached.take() else { return Ok(()) };
    record.location = location.to_string();
    let state = state::state_dir(opts.state_dir.as_deref(), Some(inv));
    if location != "-" {
        Catalog::record(&state, location, report.archive_bytes, &report.manifest)?;
    }
    Cache::new(&state).publish(&record)
}

/// A run's state directory and id, and where its archive goes: as the cache records it
/// (`key`), and the location itself (`None` for standard output).
struct Target<'a> {
    state: &'a Path,
    run: &'a str,
    key: &'a str,
    location: Option<&'a Location>,
}

fn run_backup<W: Write + Send + 'static>(
    inv: &Inventory,
    opts: &BackupOptions,
    out: W,
    target: &Target<'_>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(BackupReport, W)> {
    let (state, run) = (target.state.to_path_buf(), target.run.to_string());
    let plan::Selected { mut jobs, mut services, mut warnings, mut outcomes, exports: export_jobs } = plan::select(inv, &opts.selection)?;
    let placement = plan::place(inv, &mut jobs, opts.allow_live)?;
    let (parent, parent_fetch) = resolve_parent(inv, opts, target, &mut warnings)?;
    for w in warnings.iter().filter(|w| w.code == "parent-index-from-archive") {
        progress.event(&Event::Warning { warning: w.clone() });
    }
    cancel.check()?;
    // Before the freeze: a frozen service cannot answer its own client (D-16). Removed
    // when this function returns, whatever it returns.
    exports::recover(&state)?;
    let exported = exports::run_exports(&export_jobs, &inv.source, &state, &run, cancel)?;
    warnings.extend(exports::warnings(&export_jobs));
    let frozen = freeze::freeze(inv, &jobs, &placement, &FreezeOptions { state: &state, run: &run, deadline: opts.freeze_deadline }, progress)?;
    warnings.extend(frozen.warnings.iter().cloned());
    for w in &frozen.warnings {
        progress.event(&Event::Warning { warning: w.clone() });
    }
    let mut views: Vec<PathBuf> = jobs.iter().map(|j| frozen.view(&j.path)).collect();
    // The export directories are archived like context-scoped surfaces, after the others.
    jobs.extend(export_jobs.iter().map(|e| plan::Job {
        service: e.service.clone(),
        surface: e.export.clone(),
        context: Some(e.context.clone()),
        path: PathBuf::new(),
    }));
    views.extend(exported.dirs.iter().cloned());
    cancel.check()?;

    let (files, bytes) = count_views(&jobs, &views, &mut services, progress, cancel)?;
    failpoint("backup-scanned");

    let manifest = Manifest {
        format: if parent.is_some() { INCREMENTAL_FORMAT } else { ARCHIVE_FORMAT },
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
        parent: parent.as_ref().map(|(r, _)| r.as_parent()),
        level: parent.as_ref().map_or(0, |(r, _)| r.level + 1),
    };
    let counted = CountingWriter { inner: out, count: 0 };
    let mut writer = ArchiveWriter::new(counted, &opts.encryption, opts.compression)?;
    if let Some((_, index)) = parent {
        writer.incremental(index);
    }
    writer.write_manifest(&manifest)?;
    failpoint("backup-manifest-written");
    progress.event(&Event::Phase { phase: "archive".into() });
    for (job, view) in jobs.iter().zip(&views) {
        progress.event(&Event::Surface { service: job.service.clone(), surface: job.surface.clone(), context: job.context.clone() });
        let member = surface_member_root(&job.service, &job.surface, job.context.as_deref());
        // An export directory is the run's own: nothing changes it while it is read.
        let stable = job.path.as_os_str().is_empty() || frozen.stable(&job.path);
        writer.write_tree(view, &member, stable, progress, cancel)?;
        outcomes.push(Outcome::new(&job.service, Some(&job.surface), job.context.as_deref(), Status::Ok, None));
        failpoint("backup-surface-written");
    }
    let (report, out) = finish_archive(writer, frozen, &state, &run, manifest, outcomes, progress)?;
    Ok((BackupReport { parent_fetch, ..report }, out))
}

/// Checks the snapshots, writes the index, releases the snapshots: the report.
fn finish_archive<W: Write + Send + 'static>(
    mut writer: ArchiveWriter<CountingWriter<W>>,
    frozen: freeze::Frozen,
    state: &Path,
    run: &str,
    mut manifest: Manifest,
    mut outcomes: Vec<Outcome>,
    progress: &dyn Progress,
) -> Result<(BackupReport, W)> {
    // A snapshot that went bad while it was read (LVM overflow) fails the run before the
    // archive is finished, so no archive of it is ever published.
    frozen.check()?;
    let mut late_warnings = std::mem::take(&mut writer.warnings);
    let inherited = writer.inherited;
    let cache_files = Cache::new(state).partial(run)?;
    let (counted, totals) = writer.finish(Some((&cache_files.0, &cache_files.1)))?;
    failpoint("backup-archive-finished");
    late_warnings.extend(frozen.release()?);
    failpoint("backup-snapshots-released");
    let cached = CacheRecord::of(&manifest, &totals.manifest_blake3, &totals.index_blake3);
    // Warnings found while archiving cannot go back into the manifest (it is already
    // written); they are in the report and the event stream.
    manifest.warnings.extend(late_warnings);
    outcome::sort(&mut outcomes);
    for o in &outcomes {
        progress.event(&Event::Outcome(o.clone()));
    }
    Ok((BackupReport { manifest, archive_bytes: counted.count, outcomes, inherited, parent_fetch: None, cached: Some(cached) }, counted.inner))
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
    let key = chain::location_key(&Location::File(path.to_path_buf()));
    let (mut report, buffered) = backup_cached(
        inv,
        opts,
        BufWriter::with_capacity(1 << 20, WriteBehind::new(file)),
        (&key, Some(&Location::File(path.to_path_buf()))),
        progress,
        cancel,
    )
    .map_err(|e| match e {
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
    publish(inv, opts, &mut report, &key)?;
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
            let (mut report, mut out) = backup_cached(inv, opts, out, ("-", None), progress, cancel)?;
            out.flush().map_err(Error::io("-", "writing the archive"))?;
            publish(inv, opts, &mut report, "-")?;
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
    let result = backup_cached(inv, opts, upload, (&obj.url(), Some(&Location::S3(obj.clone()))), progress, cancel).and_then(|(mut report, upload)| {
        let stored = upload.finish()?;
        if stored != report.archive_bytes {
            return Err(Error::storage(format!(
                "{}: the storage holds {stored} bytes, {} were sent; delete the object and back up again",
                obj.url(),
                report.archive_bytes
            )));
        }
        publish(inv, opts, &mut report, &obj.url())?;
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
