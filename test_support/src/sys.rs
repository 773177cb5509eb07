//! The machine around a test: tools, leftovers, mounts, cgroups, ports, child processes,
//! and the guard that keeps the tests sharing a machine-wide resource apart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Runs `argv`, fails the test with its stderr if it fails; returns its stdout.
pub fn tool(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
    assert!(out.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tools a test drives must be installed: fail, never skip.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        assert!(found, "`{tool}` is not installed: run scripts/install-deps (as root) first");
    }
}

/// Paths named `.hero-snap-*` (staging, parking, snapshots, reflink copies) under `dir`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    leftovers_within(dir, usize::MAX)
}

/// [`leftovers`] at most `depth` levels below `dir`.
pub fn leftovers_within(dir: &Path, depth: usize) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .max_depth(depth)
        .into_iter()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".hero-snap-"))
        .map(|e| e.path().display().to_string())
        .collect()
}

/// How many mounts have their mount point at or below `dir`.
pub fn mounts_under(dir: &Path) -> usize {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&d))).count()
}

fn mount_of(fstype_and_source: &str, option: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find(|l| l.contains(fstype_and_source) && l.split(' ').next_back().is_some_and(|o| o.split(',').any(|x| x == option) || option.is_empty()))
        .map(|l| PathBuf::from(l.split(' ').nth(4).unwrap()))
}

/// Where the cgroup2 filesystem is mounted.
pub fn cgroup2_mount() -> PathBuf {
    mount_of(" - cgroup2 ", "").expect("no cgroup2 mount")
}

/// A free TCP port on 127.0.0.1 (in the ephemeral range).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (bounded) until `cond` holds; false if it never did.
pub fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    while !cond() {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tests of one binary run on parallel threads. Those that hold a machine-wide
/// resource for a long time take this guard, so that no two of them overlap (as when each
/// test file was its own binary, and cargo ran the binaries one after the other):
/// - the Ceph gateway ([`crate::rgw::Gateway`] holds it while it lives: the runbook test
///   and the object-storage test): its block of ports is derived from the process id,
///   the same for every test of the binary, so two gateways would take the same ports;
/// - `scripts/demo` (the demo test): a whole instance, with 14 services, loop filesystems
///   and a start-up deadline, that until now never shared the machine with a gateway.
///
/// Other tests run beside these, as they did beside each other within a file. The guard
/// does not nest: a test holding it must not start a gateway.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that failed while holding it poisons it; the next one may still go.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cgroup for test processes (v2, or the v1 freezer hierarchy); its processes are
/// killed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Path relative to the cgroup mount, as an inventory names it.
    pub name: String,
    v2: bool,
}

/// `hero-snap-test-<pid>-<n>-<label>`: unique among the cgroups of all tests of this
/// process, which share one process id.
fn cgroup_name(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("hero-snap-test-{}-{}-{label}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl TestCgroup {
    pub fn new(label: &str) -> TestCgroup {
        let name = cgroup_name(label);
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup { dir, name, v2: true }
    }

    /// A cgroup in the v1 freezer hierarchy (hybrid hosts mount it beside cgroup2).
    pub fn new_v1(label: &str) -> TestCgroup {
        let mount = mount_of(" - cgroup ", "freezer").expect("no v1 freezer hierarchy mounted on this host");
        let name = cgroup_name(label);
        let dir = mount.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup { dir, name, v2: false }
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// A `sleep 600` in this cgroup, so that freezing it is real; killed on drop.
    pub fn sleeper(&self) -> KillOnDrop {
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        self.add(child.id());
        KillOnDrop(child)
    }

    /// Starts `argv` inside this cgroup from its first instruction (no window where it
    /// runs outside); its stderr is piped.
    pub fn spawn(&self, argv: &[&str]) -> Child {
        Command::new("sh")
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\"", self.dir.join("cgroup.procs").to_str().unwrap()])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn frozen(&self) -> bool {
        if self.v2 {
            std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap().lines().any(|l| l == "frozen 1")
        } else {
            std::fs::read_to_string(self.dir.join("freezer.state")).unwrap().trim() != "THAWED"
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if self.v2 {
            let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
            let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        } else {
            let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
            for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
