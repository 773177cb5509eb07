//! The one way hero-snap runs another program (hooks, migrations, secret listings, snapshot
//! tools, the notify command): argv without a shell, in a process group of its own, both
//! output pipes read, and its input written, on the calling thread.
//!
//! The group is what a timeout kills: a hook is often a shell that started children, and
//! killing only the shell would leave them running with our pipes open. Reading the pipes
//! with poll on the calling thread means no reader thread can outlive the call, whatever
//! the program's descendants do with the pipes. The input goes the same way: its pipe is
//! non-blocking and written when poll says it has room, so a program that never reads its
//! stdin blocks nothing but itself, until its timeout.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};

/// How long the pipes are still read after the program itself exited: a daemon it started
/// may hold them for ever, and its output is not the program's.
const AFTER_EXIT: Duration = Duration::from_secs(1);

/// While a pipe stays open, how often to look whether the program has exited.
const STEP: Duration = Duration::from_millis(50);

/// A program to run: argv (no shell), extra environment, working directory, input, timeout.
pub(crate) struct Program {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    input: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

/// What a program that ran to its end left.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Program {
    pub(crate) fn new<S: AsRef<str>>(argv: &[S]) -> Program {
        Program { argv: argv.iter().map(|a| a.as_ref().to_owned()).collect(), env: Vec::new(), cwd: None, input: None, timeout: None }
    }

    /// Writes `input` to the program's stdin, then closes it (without, stdin is
    /// `/dev/null`). A program that exits or closes its stdin before reading all of it is
    /// not an error: what it did not read is dropped.
    pub(crate) fn stdin(mut self, input: impl Into<Vec<u8>>) -> Program {
        self.input = Some(input.into());
        self
    }

    pub(crate) fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Program {
        self.env.push((key.into(), value.into()));
        self
    }

    pub(crate) fn cwd(mut self, dir: Option<&Path>) -> Program {
        self.cwd = dir.map(Path::to_path_buf);
        self
    }

    /// Past it the whole process group is killed and the run fails.
    pub(crate) fn timeout(mut self, timeout: Duration) -> Program {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the program; its stdout when it exits 0, else an error naming the command line
    /// and carrying its stderr.
    pub(crate) fn run(&self) -> Result<String> {
        let done = self.run_to_end()?;
        if !done.status.success() {
            let err = String::from_utf8_lossy(&done.stderr);
            let err = err.trim();
            return Err(Error::command(format!(
                "`{}` failed ({}){}",
                self.line(),
                done.status,
                if err.is_empty() { String::new() } else { format!(": {err}") }
            )));
        }
        Ok(String::from_utf8_lossy(&done.stdout).into_owned())
    }

    /// Runs the program to its end whatever its exit status; fails only when it cannot be
    /// started or does not finish within the timeout.
    pub(crate) fn run_to_end(&self) -> Result<Finished> {
        let Some(name) = self.argv.first() else {
            return Err(Error::command("an empty command line: nothing to run"));
        };
        let mut cmd = std::process::Command::new(name);
        let stdin = if self.input.is_some() { Stdio::piped() } else { Stdio::null() };
        cmd.args(&self.argv[1..]).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::command_caused(format!("`{name}`: cannot run it (is it installed?): {e}"), e)
            } else {
                Error::command_caused(format!("`{name}`: cannot run it: {e}"), e)
            }
        })?;
        self.collect(child)
    }

    fn line(&self) -> String {
        self.argv.join(" ")
    }

    fn collect(&self, mut child: Child) -> Result<Finished> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let feed = match (child.stdin.take(), &self.input) {
            (Some(pipe), Some(data)) => Feed::start(pipe, data).map_err(|e| {
                kill_group(&mut child);
                Error::command_caused(format!("`{}`: preparing its stdin: {e}", self.line()), e)
            })?,
            _ => None,
        };
        let mut pipes = Pipes { out: [child.stdout.take().map(Pipe::Out), child.stderr.take().map(Pipe::Err)], feed };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut exited: Option<(ExitStatus, Instant)> = None;
        // After the pipes close the program is exiting: look for its status often at first.
        let mut nap = Duration::from_micros(50);
        loop {
            if exited.is_none() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        // Nobody reads the input any more.
                        pipes.feed = None;
                        exited = Some((status, Instant::now()));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        kill_group(&mut child);
                        return Err(Error::command_caused(format!("`{}`: waiting for it: {e}", self.line()), e));
                    }
                }
            }
            let open = pipes.out.iter().any(Option::is_some) || pipes.feed.is_some();
            match exited {
                Some((status, _)) if !open => return Ok(Finished { status, stdout, stderr }),
                Some((status, at)) if at.elapsed() >= AFTER_EXIT => return Ok(Finished { status, stdout, stderr }),
                None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    kill_group(&mut child);
                    let err = String::from_utf8_lossy(&stderr);
                    let err = err.trim();
                    return Err(Error::command(format!(
                        "`{}` did not finish within {} and was killed, with every process it started{}",
                        self.line(),
                        seconds(self.timeout.unwrap_or_default()),
                        if err.is_empty() { String::new() } else { format!("; its stderr: {err}") }
                    )));
                }
                _ => {}
            }
            let mut wait = deadline.map_or(STEP, |d| d.saturating_duration_since(Instant::now()).min(STEP));
            if let Some((_, at)) = exited {
                wait = wait.min(AFTER_EXIT.saturating_sub(at.elapsed()));
            }
            if !open {
                std::thread::sleep(nap.min(wait));
                nap = (nap * 2).min(Duration::from_millis(10));
                continue;
            }
            pipes.exchange(wait, &mut stdout, &mut stderr);
        }
    }
}

/// Runs an external tool and returns its stdout; the error names the program and its stderr.
pub(crate) fn tool(argv: &[&str]) -> Result<String> {
    tool_in(None, argv)
}

/// [`tool`], run in the directory `cwd`.
pub(crate) fn tool_in(cwd: Option<&std::path::Path>, argv: &[&str]) -> Result<String> {
    // Tools' messages are parsed and shown: keep them in English; LVM warns about every
    // descriptor it inherits otherwise.
    Program::new(argv).env("LC_ALL", "C").env("LVM_SUPPRESS_FD_WARNINGS", "1").cwd(cwd).run()
}

enum Pipe {
    Out(std::process::ChildStdout),
    Err(std::process::ChildStderr),
}

/// The program's stdin and what is still to be written to it; dropping it closes the pipe.
struct Feed<'a> {
    pipe: std::process::ChildStdin,
    rest: &'a [u8],
}

impl<'a> Feed<'a> {
    /// The pipe made non-blocking, so that a write never waits; `None` (the pipe closed at
    /// once) when there is nothing to write.
    fn start(pipe: std::process::ChildStdin, data: &'a [u8]) -> std::io::Result<Option<Feed<'a>>> {
        if data.is_empty() {
            return Ok(None);
        }
        let flags = OFlag::from_bits_truncate(fcntl(&pipe, FcntlArg::F_GETFL)?);
        fcntl(&pipe, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(Some(Feed { pipe, rest: data }))
    }

    /// Writes what the pipe takes now; false when the feed is done (all written, or the
    /// program closed its end).
    fn write(&mut self) -> bool {
        match self.pipe.write(self.rest) {
            Ok(n) => {
                self.rest = &self.rest[n..];
                !self.rest.is_empty()
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => true,
            // EPIPE: the program does not want the rest.
            Err(_) => false,
        }
    }
}

/// The pipes to the program still open: its stdout and stderr, and its stdin while there
/// is input left.
struct Pipes<'a> {
    out: [Option<Pipe>; 2],
    feed: Option<Feed<'a>>,
}

impl Pipes<'_> {
    /// Waits up to `wait` for output on the open pipes, or room in the input's, and reads
    /// what is there and writes what fits; a pipe at its end (or failing) is closed.
    fn exchange(&mut self, wait: Duration, stdout: &mut Vec<u8>, stderr: &mut Vec<u8>) {
        let (ready, input_ready): (Vec<bool>, bool) = {
            let mut fds: Vec<PollFd> = self
                .out
                .iter()
                .flatten()
                .map(|p| {
                    let fd = match p {
                        Pipe::Out(o) => o.as_fd(),
                        Pipe::Err(e) => e.as_fd(),
                    };
                    PollFd::new(fd, PollFlags::POLLIN)
                })
                .collect();
            fds.extend(self.feed.as_ref().map(|f| PollFd::new(f.pipe.as_fd(), PollFlags::POLLOUT)));
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            let mut ready: Vec<bool> = match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect(),
                // EINTR: look again on the next round.
                Err(_) => vec![false; fds.len()],
            };
            let input_ready = self.feed.is_some() && ready.pop().unwrap_or(false);
            (ready, input_ready)
        };
        if input_ready && !self.feed.as_mut().is_some_and(Feed::write) {
            self.feed = None;
        }
        let mut ready = ready.into_iter();
        let mut buf = [0u8; 64 * 1024];
        for slot in self.out.iter_mut() {
            let Some(pipe) = slot else { continue };
            if !ready.next().unwrap_or(false) {
                continue;
            }
            let (n, sink) = match pipe {
                Pipe::Out(o) => (o.read(&mut buf), &mut *stdout),
                Pipe::Err(e) => (e.read(&mut buf), &mut *stderr),
            };
            match n {
                Ok(0) => *slot = None,
                Ok(n) => sink.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => *slot = None,
            }
        }
    }
}

/// SIGKILL to the program's whole process group (it leads it: `process_group(0)`), then
/// reaps the program. The rest of the group is reparented and reaped by init.
fn kill_group(child: &mut Child) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
    }

    fn alive(pid: i32) -> bool {
        // A killed process reparented to a PID 1 that does not reap stays a zombie: dead.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    }

    #[test]
    fn stdout_env_and_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let out = Program::new(&["sh", "-c", "echo \"$HS_X $(pwd)\""]).env("HS_X", "hello").cwd(Some(dir.path())).run().unwrap();
        assert_eq!(out.trim(), format!("hello {}", dir.path().display()));
    }

    #[test]
    fn a_failure_names_the_command_and_carries_its_stderr() {
        let e = Program::new(&["sh", "-c", "echo out; echo 'the disk is on fire' >&2; exit 3"]).run().unwrap_err().to_string();
        assert!(e.contains("`sh -c echo out;") && e.contains("exit status: 3") && e.ends_with(": the disk is on fire"), "{e}");
        let done = Program::new(&["sh", "-c", "echo out; exit 3"]).run_to_end().unwrap();
        assert_eq!((done.status.code(), &done.stdout[..]), (Some(3), &b"out\n"[..]));
    }

    #[test]
    fn a_missing_program_says_so() {
        let e = Program::new(&["hero-snap-no-such-tool", "x"]).run().unwrap_err().to_string();
        assert!(e.contains("`hero-snap-no-such-tool`: cannot run it (is it installed?)"), "{e}");
        assert!(Program::new::<&str>(&[]).run().is_err());
    }

    #[test]
    fn large_output_on_both_pipes_does_not_block() {
        // More than a pipe holds (64 KiB) on each, interleaved: needs both read as they fill.
        let out = Program::new(&["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo 0123456789012345678901234567890123456789; echo e0123456789012345678901234567890123456789 >&2; i=$((i+1)); done"])
            .timeout(Duration::from_secs(60))
            .run_to_end()
            .unwrap();
        assert_eq!((out.stdout.len(), out.stderr.len()), (3000 * 41, 3000 * 42));
    }

    #[test]
    fn input_goes_to_stdin_while_the_output_is_read() {
        // More than a pipe holds each way: `cat` blocks on its stdout unless it is read
        // while the input is written.
        let input: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let done = Program::new(&["cat"]).stdin(input.clone()).timeout(Duration::from_secs(60)).run_to_end().unwrap();
        assert!(done.status.success());
        assert!(done.stdout == input, "{} bytes came back of {}", done.stdout.len(), input.len());
        let out = Program::new(&["sh", "-c", "wc -c"]).stdin(Vec::new()).run().unwrap();
        assert_eq!(out.trim(), "0");
    }

    #[test]
    fn a_program_that_does_not_read_its_input_is_no_error_and_no_hang() {
        let input = vec![b'x'; 1 << 20];
        let out = Program::new(&["sh", "-c", "echo done"]).stdin(input.clone()).timeout(Duration::from_secs(60)).run().unwrap();
        assert_eq!(out.trim(), "done");
        // Alive and not reading: the timeout ends it, the writing does not block the call.
        let e = Program::new(&["sleep", "300"]).stdin(input).timeout(Duration::from_millis(300)).run().unwrap_err().to_string();
        assert!(e.contains("did not finish within 300 ms"), "{e}");
    }

    /// Run alone in a process of its own by `a_timeout_kills_the_group_and_leaves_no_thread`,
    /// so that the thread count is not disturbed by the tests running beside it.
    #[test]
    fn timeout_kills_group_inner() {
        let Ok(pid_file) = std::env::var("HERO_SNAP_TEST_PID_FILE") else { return };
        let before = threads();
        let started = Instant::now();
        // The shell forks a grandchild that holds both pipes and outlives it.
        let script = format!("sleep 300 & echo $! > {pid_file}; echo 'about to hang' >&2; wait");
        let e = Program::new(&["sh", "-c", &script]).timeout(Duration::from_millis(700)).run().unwrap_err().to_string();
        let took = started.elapsed();
        assert!(e.contains("did not finish within 700 ms and was killed") && e.contains("about to hang"), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(threads(), before, "a thread was left behind");
        let grandchild: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(Instant::now() < until, "the grandchild {grandchild} survived the timeout");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_timeout_kills_the_group_and_leaves_no_thread() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild");
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args(["--exact", "process::tests::timeout_kills_group_inner", "--test-threads=1"])
            .env("HERO_SNAP_TEST_PID_FILE", &pid_file)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }
}
