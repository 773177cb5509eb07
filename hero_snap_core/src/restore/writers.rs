//! Restore's file writers: the parser reads each regular file's content out of the tar
//! stream and hashes it, then hands it to a small pool of threads that create the file,
//! write it and apply its owner, mode, times and extended attributes (decisions/D-10).
//!
//! Why: creating files and copying their pages is most of a restore's work, and it is
//! kernel work that one thread does one file at a time. Files are independent once
//! their directory exists, which the parser guarantees (directories, symlinks, sparse
//! files and hard links stay on the parser's thread, hard links after [`Writers::wait`]).
//! The hash is taken by the parser, in archive order, so the index check does not change.
//!
//! Memory is bounded: a file up to [`WHOLE_MAX`] travels as one buffer, a larger one as
//! [`CHUNK`]-sized pieces over its own short channel; at most [`QUEUED`] files wait.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::progress::{Event, Progress};

/// Files up to this size are read whole and handed over as one buffer.
const WHOLE_MAX: u64 = 256 << 10;
/// Piece size of larger files.
const CHUNK: usize = 1 << 20;
/// Files handed over and not yet taken by a writer.
const QUEUED: usize = 64;
/// Pieces of one large file in flight between the parser and its writer.
const CHUNKS_QUEUED: usize = 4;
/// Writer threads at most; on a machine with fewer cores, one per core.
const MAX_WRITERS: usize = 4;

/// What a file gets once its content is in: as the tar crate would apply it.
struct Meta {
    mtime: i64,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The file is created with its mode (the umask takes none of its bits), so no
    /// `fchmod` is needed.
    mode_at_create: bool,
    /// A new file gets this owner anyway (ours, in a directory without set-group-id), so
    /// no `fchown` is needed.
    owner_at_create: bool,
}

enum Content {
    Whole(Vec<u8>),
    Pieces(Receiver<Vec<u8>>),
}

struct Job {
    /// The directory the file is created in, held open: the file is created by its last
    /// name only, without a path walk from `/` for every file.
    dir: Arc<OwnedFd>,
    name: OsString,
    /// For errors.
    dest: PathBuf,
    /// The archive member, for errors.
    member: String,
    size: u64,
    meta: Meta,
    content: Content,
}

/// Shared between the parser and the writers.
///
/// A poisoned lock is taken over rather than unwrapped: every critical section on these
/// is one insert, remove or count, so a panic elsewhere cannot leave them half-updated, and
/// a panic inside a writer's file work is caught and becomes that file's error.
#[derive(Default)]
struct State {
    /// Files handed over and not yet finished (written or failed). An atomic, not a
    /// lock: it changes twice per file, from the parser and a writer.
    pending: AtomicUsize,
    /// Taken only to wait for `pending` to reach 0, and to announce that it did.
    idle: Mutex<()>,
    done: Condvar,
    /// The first writer error; later jobs are skipped once it is set.
    error: Mutex<Option<Error>>,
    failed: AtomicBool,
}

impl State {
    fn fail(&self, e: Error) {
        let mut first = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// The first error, once; later callers learn only that the writers failed.
    fn error(&self) -> Error {
        self.error.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or_else(|| Error::command("the restore's file writers stopped"))
    }

    fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.error());
        }
        Ok(())
    }
}

/// The pool. Dropping it stops the writers (jobs not yet started are skipped) and joins them.
pub(super) struct Writers {
    /// One queue per writer: the files of one directory all go to one writer, so that two
    /// writers do not wait on one directory's lock, and two directories fill at once.
    jobs: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    state: Arc<State>,
    /// The directory of the last file handed over: an archive lists a directory's files
    /// one after another, so it is opened once per directory.
    dir: Option<(PathBuf, Arc<OwnedFd>, bool)>,
    /// The writer of that directory's files.
    turn: usize,
    /// What a new file gets without being asked: the process's umask, and its user and
    /// group ids (ownership applies only where the directory does not set the group).
    umask: u32,
    ids: (u32, u32),
}

impl Writers {
    pub fn new() -> Result<Writers> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_WRITERS);
        let ids = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let mut pool = Writers { jobs: Vec::new(), threads: Vec::new(), state: Arc::new(State::default()), dir: None, turn: 0, umask: umask(), ids };
        for i in 0..n {
            let (tx, rx) = mpsc::sync_channel::<Job>(QUEUED);
            let state = Arc::clone(&pool.state);
            pool.jobs.push(tx);
            let thread = std::thread::Builder::new().name(format!("hero-snap-writer-{i}")).spawn(move || writer(&rx, &state));
            // On an error, dropping the pool stops and joins the threads already started.
            pool.threads.push(thread.map_err(|e| Error::command(format!("cannot start the restore's writer threads: {e}")))?);
        }
        Ok(pool)
    }

    /// The open directory `dest` is created in. The caller has checked that no directory
    /// on the way is a symlink; `O_NOFOLLOW` holds the last one to that.
    /// Also returns whether the directory sets its files' group (set-group-id).
    fn dir_of(&mut self, dest: &Path) -> Result<(Arc<OwnedFd>, OsString, bool)> {
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(Error::command(format!("{}: not a file's path", dest.display())));
        };
        if let Some((path, fd, setgid)) = &self.dir {
            if path == parent {
                return Ok((Arc::clone(fd), name.to_owned(), *setgid));
            }
        }
        use nix::fcntl::{open, OFlag};
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let opened = open(parent, flags, nix::sys::stat::Mode::empty()).and_then(|fd| nix::sys::stat::fstat(&fd).map(|st| (fd, st.st_mode)));
        let (fd, mode) = opened.map_err(|e| Error::io(dest, "creating (opening its directory)")(e.into()))?;
        let (fd, setgid) = (Arc::new(fd), mode & libc::S_ISGID != 0);
        self.dir = Some((parent.to_path_buf(), Arc::clone(&fd), setgid));
        self.turn = (self.turn + 1) % self.jobs.len().max(1);
        Ok((fd, name.to_owned(), setgid))
    }

    /// Reads a regular file's content from `entry`, hashing it, and hands it to a writer
    /// that creates `dest` (a new file). Returns the length and BLAKE3 of the content; a
    /// writer's failure comes back from a later call or from [`Writers::wait`].
    pub fn write<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, dest: PathBuf, member: &str, progress: &dyn Progress) -> Result<(u64, blake3::Hash)> {
        self.state.check()?;
        let header = entry.header();
        let owner = |id: u64| u32::try_from(id).map_err(|_| Error::Corrupt(format!("{member}: owner id {id} is out of range")));
        let (dir, name, setgid_dir) = self.dir_of(&dest)?;
        let (uid, gid, mode) = (owner(header.uid().unwrap_or(0))?, owner(header.gid().unwrap_or(0))?, header.mode().unwrap_or(0o600) & 0o7777);
        let meta = Meta {
            mtime: header.mtime().unwrap_or(0) as i64,
            uid,
            gid,
            mode,
            xattrs: super::extract::pax_xattrs(entry),
            mode_at_create: mode & 0o7000 == 0 && mode & self.umask == 0,
            owner_at_create: (uid, gid) == self.ids && !setgid_dir,
        };
        let size = entry.size();
        let mut hasher = blake3::Hasher::new();
        let (content, pieces) = if size <= WHOLE_MAX {
            let mut data = Vec::with_capacity(size as usize);
            let got = entry.read_to_end(&mut data).map_err(|e| Error::Corrupt(format!("{}: {e}", dest.display())))? as u64;
            if got != size {
                return Err(ends_inside(&dest.display(), got, size));
            }
            hasher.update(&data);
            progress.event(&Event::Bytes { bytes: size });
            (Content::Whole(data), None)
        } else {
            let (pieces, rx) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_QUEUED);
            (Content::Pieces(rx), Some(pieces))
        };
        // Made for a large file only: a path's display is a lossy UTF-8 pass and an allocation.
        let dest_shown = pieces.as_ref().map(|_| dest.display().to_string()).unwrap_or_default();
        self.state.pending.fetch_add(1, Ordering::SeqCst);
        let job = Job { dir, name, dest, member: member.to_string(), size, meta, content };
        let queue = self.jobs.get(self.turn).expect("the pool is running");
        if queue.send(job).is_err() {
            // No writer is left to take it (they stop only after a failure).
            finished(&self.state);
            return Err(self.state.error());
        }
        let Some(pieces) = pieces else {
            return Ok((size, hasher.finalize()));
        };
        // From here the job is counted by its writer: it finishes it, whole or short.
        let mut written = 0u64;
        loop {
            let mut piece = Vec::with_capacity(CHUNK);
            let n = (&mut *entry).take(CHUNK as u64).read_to_end(&mut piece).map_err(|e| Error::Corrupt(format!("{dest_shown}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&piece);
            written += n as u64;
            progress.event(&Event::Bytes { bytes: n as u64 });
            if pieces.send(piece).is_err() {
                // The writer gave up on this file: its error says why.
                return Err(self.state.error());
            }
        }
        if written != size {
            return Err(ends_inside(&dest_shown, written, size));
        }
        Ok((written, hasher.finalize()))
    }

    /// Waits until every file handed over is written; the first writer error, if any.
    pub fn wait(&self) -> Result<()> {
        let mut idle = self.state.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while self.state.pending.load(Ordering::SeqCst) > 0 {
            idle = self.state.done.wait(idle).unwrap_or_else(PoisonError::into_inner);
        }
        drop(idle);
        self.state.check()
    }

    /// Waits for every file and stops the threads.
    pub fn finish(&mut self) -> Result<()> {
        let waited = self.wait();
        self.stop();
        waited
    }

    /// Stops the writers: jobs not yet started are skipped (as after a failure). Nothing
    /// writes after this returns.
    pub fn stop(&mut self) {
        self.state.failed.store(true, Ordering::SeqCst);
        self.jobs.clear();
        self.dir = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn finished(state: &State) {
    if state.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
        // Under the lock, so that a waiter between its check and its wait is not missed.
        let _idle = state.idle.lock().unwrap_or_else(PoisonError::into_inner);
        state.done.notify_all();
    }
}

fn writer(jobs: &Receiver<Job>, state: &State) {
    loop {
        let job = jobs.recv();
        let Ok(job) = job else { return };
        if !state.failed.load(Ordering::SeqCst) {
            // A panic would leave the file counted as pending for ever: it becomes an error.
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write_file(&job)))
                .unwrap_or_else(|_| Err(Error::command(format!("writing {}: a restore writer thread panicked", job.dest.display()))));
            if let Err(e) = written {
                // Recorded while the job, and so its pieces channel, is still held: a parser
                // that sees the channel close finds the cause already there (CI once saw a
                // full disk reported only as "the writers stopped").
                state.fail(e);
            }
        }
        // A failed or skipped job's pieces channel drops here, which stops the parser feeding it.
        drop(job);
        finished(state);
    }
}

/// The process's umask, read without changing it (`umask(2)` can only set it, and another
/// thread may be creating files meanwhile). Unknown: every bit, so every mode is applied.
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Umask:")).and_then(|v| u32::from_str_radix(v.trim(), 8).ok()).unwrap_or(0o7777)
}

fn ends_inside(dest: &dyn std::fmt::Display, got: u64, size: u64) -> Error {
    Error::Corrupt(format!("{dest}: the archive ends inside this file ({got} of {size} bytes)"))
}

/// Creates and writes one file, then applies its metadata through the open descriptor.
///
/// The file is created exclusively: a name that exists already, whatever it is and
/// whichever member made it, is refused as a second copy, never overwritten.
fn write_file(job: &Job) -> Result<()> {
    use nix::fcntl::{openat, OFlag};
    let dest = &job.dest;
    let m = &job.meta;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = if m.mode_at_create { m.mode } else { 0o600 };
    let created = openat(&*job.dir, job.name.as_os_str(), flags, nix::sys::stat::Mode::from_bits_truncate(mode));
    let mut file = fs::File::from(created.map_err(|e| {
        if e == nix::errno::Errno::EEXIST {
            Error::Refused(format!("member `{}` appears twice", job.member))
        } else {
            Error::io(dest, "creating")(e.into())
        }
    })?);
    let written = match &job.content {
        Content::Whole(data) => {
            file.write_all(data).map_err(Error::io(dest, "writing"))?;
            data.len() as u64
        }
        Content::Pieces(pieces) => {
            let mut written = 0;
            for piece in pieces.iter() {
                file.write_all(&piece).map_err(Error::io(dest, "writing"))?;
                written += piece.len() as u64;
            }
            written
        }
    };
    if written != job.size {
        // The parser stopped feeding this file; it reports why.
        return Err(ends_inside(&dest.display(), written, job.size));
    }
    let mtime = filetime::FileTime::from_unix_time(m.mtime, 0);
    filetime::set_file_handle_times(&file, Some(mtime), Some(mtime)).map_err(Error::io(dest, "setting the mtime"))?;
    if !m.owner_at_create {
        std::os::unix::fs::fchown(&file, Some(m.uid), Some(m.gid)).map_err(Error::io(dest, "setting the owner"))?;
    }
    // After the owner: chown clears set-id bits (which the reader refuses anyway). A mode
    // given at creation has none, so it survives the chown.
    if !m.mode_at_create {
        file.set_permissions(fs::Permissions::from_mode(m.mode)).map_err(Error::io(dest, "setting the mode"))?;
    }
    for (name, value) in &m.xattrs {
        use std::os::unix::ffi::OsStrExt;
        use xattr::FileExt;
        file.set_xattr(std::ffi::OsStr::from_bytes(name), value).map_err(Error::io(dest, "setting extended attributes"))?;
    }
    crate::state::failpoint("restore-extract-file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock poisoned by a panicking thread is still usable: the pool's bookkeeping must
    /// not turn one panic into a second one in the parser (review finding, issue 14).
    #[test]
    fn a_poisoned_lock_is_taken_over() {
        let state = Arc::new(State::default());
        let s2 = Arc::clone(&state);
        let _ = std::thread::spawn(move || {
            let _idle = s2.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let _error = s2.error.lock().unwrap_or_else(PoisonError::into_inner);
            s2.pending.store(1, Ordering::SeqCst);
            panic!("poison the locks");
        })
        .join();
        assert!(state.idle.is_poisoned() && state.error.is_poisoned());
        // The pool's own bookkeeping, on the poisoned locks: counting a file done, recording
        // and reporting the first error.
        finished(&state);
        assert_eq!(state.pending.load(Ordering::SeqCst), 0);
        state.fail(Error::Cancelled);
        assert!(matches!(state.check(), Err(Error::Cancelled)));
    }

    /// A large file whose writer fails (here: the name exists already) is reported by its
    /// own error, naming the member, never as writers that merely stopped.
    #[test]
    fn a_failed_large_file_reports_its_own_error() {
        let mut tar = tar::Builder::new(Vec::new());
        let data = vec![7u8; 8 * CHUNK];
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "big", &data[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("big");
        fs::write(&dest, b"first copy").unwrap();
        for _ in 0..50 {
            let mut pool = Writers::new().unwrap();
            let mut archive = tar::Archive::new(&bytes[..]);
            let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
            let err = match pool.write(&mut entry, dest.clone(), "big", &crate::progress::NoProgress) {
                Err(e) => e,
                Ok(_) => pool.finish().unwrap_err(),
            };
            assert!(err.to_string().contains("member `big` appears twice"), "{err}");
        }
        assert_eq!(fs::read(&dest).unwrap(), b"first copy", "the first copy is never overwritten");
    }
}
