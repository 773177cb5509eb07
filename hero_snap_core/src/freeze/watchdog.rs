//! The freeze watchdog: a second copy of the running program, in a session of its own, that
//! thaws the services and runs their post hooks if the backup does not say "done" in time.
//!
//! A thread would die with the process on SIGKILL (D-01), so the watchdog is a process:
//! the program re-executed (`/proc/self/exe`, so a binary replaced on disk during the run
//! still starts) with the hidden first argument [`ARG`]. Protocol on its stdin/stdout:
//!
//! 1. the backup writes the job as one JSON line on the watchdog's stdin;
//! 2. the watchdog answers `ready` on its stdout, which proves the program calls
//!    [`run_watchdog_if_invoked`]; without that answer the backup refuses before anything
//!    is frozen;
//! 3. the backup writes `done` when the window is closed. EOF instead (hero-snap died,
//!    even by SIGKILL), any other line, or the freeze deadline passing makes the watchdog
//!    thaw every cgroup and unit and run the post hooks whose pre-hook markers exist,
//!    with the code the backup and `gc` use, logging to `watchdog.log` in the state
//!    directory.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use super::Cgroup;
use crate::error::{Error, Result};
use crate::inventory::Command;

/// The hidden first argument that makes the program the watchdog.
pub(crate) const ARG: &str = "__hero-snap-watchdog";

/// How long the backup waits for `ready`: an exec and a JSON parse take milliseconds; a
/// program that never answers is not calling [`run_watchdog_if_invoked`].
const HANDSHAKE: Duration = Duration::from_secs(5);

/// What the watchdog undoes, handed over on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub state: PathBuf,
    pub run_id: String,
    pub cgroups: Vec<Cgroup>,
    pub units: Vec<String>,
    /// (service, post hook): run when the service's pre-hook marker exists.
    pub posts: Vec<(String, Command)>,
    /// None: no freeze window to bound (quiesced copy), wait for "done" or EOF only.
    pub deadline_ms: Option<u64>,
}

impl Job {
    /// Nothing to thaw and no post hook: a dead run leaves only what `gc` removes.
    pub(crate) fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.units.is_empty() && self.posts.is_empty()
    }
}

/// The running watchdog, seen from the backup.
pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog and waits for its `ready`; refuses (having killed it) otherwise.
    pub(crate) fn spawn(job: &Job) -> Result<Watchdog> {
        spawn_program(Path::new("/proc/self/exe"), &[ARG], job, HANDSHAKE)
    }

    /// Tells the watchdog the window closed cleanly and waits for it to exit.
    pub(crate) fn finish(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let _ = self.child.wait();
    }
}

fn spawn_program(exe: &Path, args: &[&str], job: &Job, handshake: Duration) -> Result<Watchdog> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    // A failpoint is for the backup; the watchdog must survive to do its work.
    cmd.env_remove("HERO_SNAP_FAILPOINT");
    // Own session: a Ctrl-C or hangup for hero-snap's process group must not reach it.
    // SAFETY: setsid is async-signal-safe and touches no memory.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().map_err(|e| Error::command(format!("cannot start the freeze watchdog ({}): {e}; nothing was frozen", exe.display())))?;
    let refuse = |child: &mut Child, why: String| {
        // The watchdog leads its own session and group: take whatever it started with it.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        Error::command(format!(
            "the freeze watchdog did not start: {why}. The watchdog is this program run again with the first argument `{ARG}`: \
             the program embedding hero_snap_core must call hero_snap_core::run_watchdog_if_invoked() at the start of main. \
             Nothing was frozen"
        ))
    };
    let mut stdin = child.stdin.take();
    let mut line = serde_json::to_vec(job).map_err(|e| Error::command(format!("cannot describe the watchdog's job: {e}")))?;
    line.push(b'\n');
    if let Err(e) = stdin.as_mut().map_or(Ok(()), |s| s.write_all(&line)) {
        return Err(refuse(&mut child, format!("it did not read its job ({e})")));
    }
    let answer = match child.stdout.take() {
        Some(out) => read_line(out.as_fd(), Some(Instant::now() + handshake)),
        None => Line::Eof,
    };
    match answer {
        Line::Text(t) if t == "ready" => Ok(Watchdog { child, stdin }),
        Line::Text(t) => Err(refuse(&mut child, format!("it answered {:?} instead of \"ready\"", t.chars().take(80).collect::<String>()))),
        Line::Eof => Err(refuse(&mut child, "it exited without answering".into())),
        Line::Timeout => Err(refuse(&mut child, format!("it did not answer within {} s", handshake.as_secs()))),
    }
}

/// For programs that embed hero_snap_core and back up services that are frozen or have
/// post hooks: call this first thing in `main`. When the process was started as the
/// freeze watchdog (a backup re-executes its own program for that), it does the
/// watchdog's work and exits the process; otherwise it returns at once.
///
/// A backup that needs the watchdog fails, before freezing anything, when the program does
/// not call this.
///
/// ```no_run
/// fn main() {
///     hero_snap_core::run_watchdog_if_invoked();
///     the_program();
/// }
/// # fn the_program() {}
/// ```
pub fn run_watchdog_if_invoked() {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(ARG)) {
        return;
    }
    std::process::exit(watchdog_main());
}

fn watchdog_main() -> i32 {
    let stdin = std::io::stdin();
    // The backup writes the job right after starting us; EOF or silence means it is gone.
    let job: Job = match read_line(stdin.as_fd(), Some(Instant::now() + HANDSHAKE)) {
        Line::Text(t) => match serde_json::from_str(&t) {
            Ok(job) => job,
            Err(e) => {
                eprintln!("hero-snap watchdog: unreadable job: {e}");
                return 2;
            }
        },
        _ => return 2,
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(b"ready\n").and_then(|()| out.flush()).is_err() {
        // Nobody heard us, so the backup refuses and freezes nothing: nothing to guard.
        return 2;
    }
    drop(out);
    serve(&job, stdin.as_fd());
    0
}

/// Waits for "done" on `input`; on anything else, EOF or the deadline, undoes the freeze.
/// Returns whether it had to.
pub(crate) fn serve(job: &Job, input: BorrowedFd) -> bool {
    let until = job.deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    if matches!(read_line(input, until), Line::Text(t) if t == "done") {
        return false;
    }
    let mut log = Vec::new();
    log.push(format!("watchdog: thawing run {}", job.run_id));
    for e in super::thaw(&job.cgroups, &job.units) {
        log.push(format!("watchdog: {e}"));
    }
    write_log(&job.state, &log);
    log.clear();
    let mut warnings = Vec::new();
    super::run_posts(&job.state, &job.run_id, &job.posts, &mut warnings);
    log.extend(warnings.iter().map(|w| format!("watchdog: {}", w.message)));
    write_log(&job.state, &log);
    true
}

/// Appends timestamped lines to `watchdog.log`; nobody is left to tell if that fails.
fn write_log(state: &Path, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"))
        .unwrap_or_default();
    let text: String = lines.iter().map(|l| format!("{stamp} {l}\n")).collect();
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(state.join("watchdog.log")) {
        let _ = f.write_all(text.as_bytes());
    }
}

enum Line {
    Text(String),
    Eof,
    Timeout,
}

/// Reads one line from `fd` a byte at a time (what follows it stays in the pipe for the
/// next read), waiting no later than `until`.
fn read_line(fd: BorrowedFd, until: Option<Instant>) -> Line {
    let mut line = Vec::new();
    loop {
        let timeout = match until {
            None => PollTimeout::NONE,
            Some(u) => {
                let left = u.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Line::Timeout;
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(&mut [PollFd::new(fd, PollFlags::POLLIN)], timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return Line::Eof,
        }
        let mut byte = [0u8; 1];
        match nix::unistd::read(fd, &mut byte) {
            Ok(0) => return Line::Eof,
            Ok(_) if byte[0] == b'\n' => return Line::Text(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Line::Eof,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// A v2 cgroup below the test process's own, holding a sleeping process, frozen.
    struct FrozenGroup {
        cgroup: Cgroup,
        sleeper: Child,
    }

    impl FrozenGroup {
        fn new(label: &str) -> FrozenGroup {
            let mounts = crate::mounts::read_mounts().unwrap();
            let root = mounts.iter().find(|m| m.fstype == "cgroup2").expect("a cgroup2 mount").mount_point.clone();
            let own = fs::read_to_string("/proc/self/cgroup").unwrap();
            let own = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 entry");
            let dir = root.join(own.trim_start_matches('/')).join(format!("hero-snap-wd-{}-{label}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            let sleeper = std::process::Command::new("sleep").arg("300").spawn().unwrap();
            fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
            let cgroup = Cgroup { dir, v2: true };
            cgroup.freeze(Duration::from_secs(5)).unwrap();
            FrozenGroup { cgroup, sleeper }
        }
    }

    impl Drop for FrozenGroup {
        fn drop(&mut self) {
            let _ = self.sleeper.kill();
            let _ = self.cgroup.set(false);
            let _ = self.sleeper.wait();
            let _ = fs::remove_dir(&self.cgroup.dir);
        }
    }

    fn job(state: &Path, group: &FrozenGroup, deadline_ms: Option<u64>) -> Job {
        let post = Command { argv: vec!["sh".into(), "-c".into(), format!("echo post $HERO_SNAP_SERVICE >> {}/post.log", state.display())], timeout_secs: 10 };
        // The pre hook ran: its marker says the post hook is owed.
        fs::write(super::super::marker(state, "r1", "svc"), b"").unwrap();
        Job {
            state: state.to_path_buf(),
            run_id: "r1".into(),
            cgroups: vec![group.cgroup.clone()],
            units: vec![],
            posts: vec![("svc".into(), post)],
            deadline_ms,
        }
    }

    fn undone(state: &Path, group: &FrozenGroup) {
        assert!(!group.cgroup.is_frozen(), "still frozen");
        assert_eq!(fs::read_to_string(state.join("post.log")).unwrap(), "post svc\n");
        assert!(!super::super::marker(state, "r1", "svc").exists(), "the marker outlived its post hook");
        let log = fs::read_to_string(state.join("watchdog.log")).unwrap();
        assert!(log.contains(" watchdog: thawing run r1\n"), "{log}");
    }

    fn pipe() -> (OwnedFd, fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (r, fs::File::from(w))
    }

    #[test]
    fn eof_thaws_and_runs_the_post_hook() {
        let state = tempfile::tempdir().unwrap();
        let group = FrozenGroup::new("eof");
        let job = job(state.path(), &group, Some(60_000));
        let (r, w) = pipe();
        // The backup dies: its end of the pipe closes.
        let started = Instant::now();
        let serving = std::thread::spawn(move || serve(&job, r.as_fd()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(group.cgroup.is_frozen());
        drop(w);
        assert!(serving.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(10));
        undone(state.path(), &group);
    }

    #[test]
    fn the_deadline_thaws_and_runs_the_post_hook() {
        let state = tempfile::tempdir().unwrap();
        let group = FrozenGroup::new("deadline");
        let job = job(state.path(), &group, Some(300));
        // The backup is alive but stuck: the pipe stays open, nothing is written.
        let (r, _w) = pipe();
        let started = Instant::now();
        assert!(serve(&job, r.as_fd()));
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
        undone(state.path(), &group);
    }

    #[test]
    fn done_leaves_everything_to_the_backup() {
        let state = tempfile::tempdir().unwrap();
        let group = FrozenGroup::new("done");
        let job = job(state.path(), &group, Some(60_000));
        let (r, mut w) = pipe();
        w.write_all(b"done\n").unwrap();
        assert!(!serve(&job, r.as_fd()));
        assert!(group.cgroup.is_frozen(), "the watchdog thawed a run that finished");
        assert!(!state.path().join("post.log").exists() && !state.path().join("watchdog.log").exists());
    }

    #[test]
    fn a_hook_already_run_is_not_run_again_and_failures_are_logged() {
        let state = tempfile::tempdir().unwrap();
        let group = FrozenGroup::new("failures");
        let mut job = job(state.path(), &group, Some(60_000));
        // svc's post hook already ran (marker gone); svc2's pre hook ran and its post fails.
        fs::remove_file(super::super::marker(state.path(), "r1", "svc")).unwrap();
        fs::write(super::super::marker(state.path(), "r1", "svc2"), b"").unwrap();
        job.posts.push(("svc2".into(), Command { argv: vec!["sh".into(), "-c".into(), "echo cannot resume >&2; exit 1".into()], timeout_secs: 10 }));
        job.cgroups.push(Cgroup { dir: state.path().join("no-such-cgroup"), v2: true });
        let (r, w) = pipe();
        drop(w);
        assert!(serve(&job, r.as_fd()));
        assert!(!group.cgroup.is_frozen(), "a failing thaw stopped the others");
        assert!(!state.path().join("post.log").exists(), "a post hook ran twice");
        let log = fs::read_to_string(state.path().join("watchdog.log")).unwrap();
        assert!(log.contains("no-such-cgroup") && log.contains("thawing"), "{log}");
        assert!(log.contains("svc2: `sh -c echo cannot resume >&2; exit 1` failed") && log.contains("cannot resume"), "{log}");
    }

    fn empty_job(state: &Path) -> Job {
        Job { state: state.to_path_buf(), run_id: "r2".into(), cgroups: vec![], units: vec![], posts: vec![], deadline_ms: Some(1000) }
    }

    #[test]
    fn a_program_that_does_not_call_run_watchdog_if_invoked_is_refused() {
        let state = tempfile::tempdir().unwrap();
        // This test binary is such a program: libtest takes the argument for a test filter.
        let e = match Watchdog::spawn(&empty_job(state.path())) {
            Err(e) => e.to_string(),
            Ok(w) => {
                w.finish();
                panic!("the test harness answered the handshake")
            }
        };
        assert!(e.contains("must call hero_snap_core::run_watchdog_if_invoked() at the start of main") && e.contains("Nothing was frozen"), "{e}");
    }

    #[test]
    fn a_silent_program_is_refused_at_the_handshake_and_killed() {
        let state = tempfile::tempdir().unwrap();
        let pid_file = state.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
        let started = Instant::now();
        let e = match spawn_program(Path::new("/bin/sh"), &["-c", &script, ARG], &empty_job(state.path()), Duration::from_millis(500)) {
            Err(e) => e.to_string(),
            Ok(w) => {
                w.finish();
                panic!("sh answered the handshake")
            }
        };
        assert!(e.contains("did not answer within") && e.contains("run_watchdog_if_invoked"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Reaped by the refusal: no such process any more.
        assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(), "the silent program {pid} still runs");
    }

    #[test]
    fn the_handshake_reads_one_line_and_leaves_the_rest() {
        let (r, mut w) = pipe();
        w.write_all(b"{\"a\":1}\ndone\n").unwrap();
        assert!(matches!(read_line(r.as_fd(), None), Line::Text(t) if t == "{\"a\":1}"));
        assert!(matches!(read_line(r.as_fd(), None), Line::Text(t) if t == "done"));
        assert!(matches!(read_line(r.as_fd(), Some(Instant::now() + Duration::from_millis(50))), Line::Timeout));
        drop(w);
        assert!(matches!(read_line(r.as_fd(), None), Line::Eof));
    }
}
