//! The snapshot engine on real filesystems: loop-device btrfs and XFS (reflink), cgroup
//! freezing, consistency under load, crash safety of the freeze window.

use crate::HERO_SNAP;
use test_support::cli::instance_args;
use test_support::fixtures;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;
use test_support::sys::leftovers_within;
use test_support::sys::TestCgroup;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Both services quiesced through their cgroups; `extra_a` adds to svc_a's `quiesce` (hooks).
fn inventory(cg_a: &str, cg_b: &str, extra_a: &str) -> String {
    let text = fixtures::inventory("two-services-quiesced", &[("cgroup_a", cg_a), ("cgroup_b", cg_b)]);
    let quiesce_a = format!("quiesce: {{cgroup: \"{cg_a}\"}}");
    assert!(text.contains(&quiesce_a));
    text.replacen(&quiesce_a, &format!("quiesce: {{cgroup: \"{cg_a}\"{extra_a}}}"), 1)
}

const NO_QUIESCE: &str = include_str!("../../../fixtures/inventories/two-services.yaml");

struct Setup {
    dir: tempfile::TempDir,
    inventory: PathBuf,
    root: PathBuf,
    state: PathBuf,
    _fs: Vec<LoopFs>,
}

impl Setup {
    fn args(&self, v: &[&str]) -> Vec<String> {
        instance_args(v, &self.inventory, &self.root, &self.state)
    }
    fn write_inventory(&self, text: &str) {
        std::fs::write(&self.inventory, text).unwrap();
    }
}

/// `btrfs`: a and b on two subvolumes; `xfs`: both on one XFS (reflink); `mixed`: a on a
/// btrfs subvolume, b on XFS mounted inside the btrfs tree.
fn setup(kind: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.yaml");
    let state = dir.path().join("state");
    let (root, fs) = match kind {
        "btrfs" => {
            let b = LoopFs::new("btrfs", 512);
            let root = b.mount.join("root");
            b.subvolume(&root.join("a"));
            b.subvolume(&root.join("b"));
            (root, vec![b])
        }
        "xfs" => {
            let x = LoopFs::new("xfs", 512);
            let root = x.mount.join("root");
            std::fs::create_dir_all(root.join("a")).unwrap();
            std::fs::create_dir_all(root.join("b")).unwrap();
            (root, vec![x])
        }
        "mixed" => {
            let b = LoopFs::new("btrfs", 512);
            let root = b.mount.join("root");
            b.subvolume(&root.join("a"));
            std::fs::create_dir_all(root.join("b")).unwrap();
            let x = LoopFs::new_at("xfs", 512, Some(&root.join("b")));
            // the XFS must go first on drop: it is mounted inside the btrfs
            (root, vec![x, b])
        }
        other => panic!("{other}"),
    };
    Setup { dir, inventory, root, state, _fs: fs }
}

/// Two processes in two cgroups appending sequence numbers in lockstep: A writes n to
/// a/log, then B writes n to b/log, then A writes n+1...
struct Writers {
    a: Child,
    b: Child,
    relay: Option<std::thread::JoinHandle<()>>,
}

/// The lockstep writer, shared with the guest tests (scripts/guest-tests.sh).
const WRITER: &str = include_str!("../../../scripts/lockstep-writer.py");

impl Writers {
    fn start(root: &Path, cg_a: &TestCgroup, cg_b: &TestCgroup) -> Writers {
        let mut a = Command::new("/usr/bin/python3")
            .args(["-c", WRITER, root.join("a/log").to_str().unwrap(), "a"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut b = Command::new("/usr/bin/python3")
            .args(["-c", WRITER, root.join("b/log").to_str().unwrap(), "b"])
            .stdin(Stdio::from(a.stdout.take().unwrap()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        cg_a.add(a.id());
        cg_b.add(b.id());
        let mut to_a = a.stdin.take().unwrap();
        let from_b = BufReader::new(b.stdout.take().unwrap());
        let relay = std::thread::spawn(move || {
            for line in from_b.lines() {
                let Ok(line) = line else { break };
                if writeln!(to_a, "{line}").is_err() {
                    break;
                }
            }
        });
        let w = Writers { a, b, relay: Some(relay) };
        // wait until they are going
        let until = Instant::now() + Duration::from_secs(20);
        while last_record(&root.join("b/log")).unwrap_or(0) < 50 {
            assert!(Instant::now() < until, "the writers did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        let _ = self.a.kill();
        let _ = self.b.kill();
        let _ = self.a.wait();
        let _ = self.b.wait();
        if let Some(r) = self.relay.take() {
            let _ = r.join();
        }
    }
}

fn last_record(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rfind(|l| !l.is_empty())?.parse().ok()
}

fn inspect_json(archive: &Path, key: &Path) -> serde_json::Value {
    let out = HERO_SNAP.ok(&["inspect", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["result"].clone()
}

fn atomic_under_load(kind: &str) {
    atomic_under_load_in(kind, TestCgroup::new(&format!("{kind}-a")), TestCgroup::new(&format!("{kind}-b")));
}

fn atomic_under_load_in(kind: &str, cg_a: TestCgroup, cg_b: TestCgroup) {
    let s = setup(kind);
    s.write_inventory(&inventory(&cg_a.name, &cg_b.name, ""));
    let plan = HERO_SNAP.ok(&s.args(&["plan", "--json"]));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["result"]["consistency"], "atomic", "{plan}");
    let writers = Writers::start(&s.root, &cg_a, &cg_b);
    let (key, recipient) = age_key(s.dir.path());
    let archive = s.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&s.args(&["backup", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    drop(writers);
    assert!(!cg_a.frozen() && !cg_b.frozen(), "services left frozen");
    let m = inspect_json(&archive, &key);
    assert_eq!(m["consistency"], "atomic");
    assert!(m["freeze_window_ms"].as_u64().is_some(), "the freeze window is measured: {m}");

    // Restore elsewhere and compare the two logs.
    let target = tempfile::tempdir().unwrap();
    let out = HERO_SNAP.run(
        &[
            "restore",
            "--from",
            archive.to_str().unwrap(),
            "-i",
            key.to_str().unwrap(),
            "--config",
            s.inventory.to_str().unwrap(),
            "--root",
            target.path().to_str().unwrap(),
            "--state-dir",
            s.state.to_str().unwrap(),
        ]
        .map(String::from),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let a = last_record(&target.path().join("a/log")).unwrap();
    let b = last_record(&target.path().join("b/log")).unwrap();
    assert!(a >= 50 && (a == b || a == b + 1), "{kind}: A at {a}, B at {b}: not one instant");
    for fs in &s._fs {
        assert!(leftovers_within(&fs.mount, 3).is_empty(), "{kind}: left {:?}", leftovers_within(&fs.mount, 3));
    }
    if kind != "xfs" {
        let subvols = s._fs.last().unwrap().subvolumes();
        assert_eq!(subvols.len(), if kind == "btrfs" { 2 } else { 1 }, "snapshots left: {subvols:?}");
    }
}

/// The v1 freezer path (hybrid hosts): the same lockstep check, and a run stopped while
/// the v1 cgroups are frozen is thawed by the watchdog when the freeze deadline passes.
#[test]
fn v1_freezer_atomic_under_load_and_thawed_at_the_deadline() {
    atomic_under_load_in("btrfs", TestCgroup::new_v1("v1-a"), TestCgroup::new_v1("v1-b"));
    let s = setup("btrfs");
    let (cg_a, cg_b) = (TestCgroup::new_v1("v1-kill-a"), TestCgroup::new_v1("v1-kill-b"));
    s.write_inventory(&inventory(&cg_a.name, &cg_b.name, ""));
    let _writers = Writers::start(&s.root, &cg_a, &cg_b);
    let archive = s.dir.path().join("k.hsnap");
    // Stopped (not killed) inside the freeze window: the v1 cgroups are frozen, and the
    // watchdog thaws them when the freeze deadline passes.
    let mut cmd = HERO_SNAP.command();
    cmd.env("HERO_SNAP_FAILPOINT", "backup-frozen:stop")
        .args(s.args(&["backup", "--no-encrypt", "--to", archive.to_str().unwrap(), "--freeze-deadline-ms", "1500"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    let until = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&stat).unwrap_or_default().contains(") T ") {
        assert!(Instant::now() < until, "hero-snap never reached the freeze window");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(cg_a.frozen() && cg_b.frozen(), "the v1 freezer cgroups are not frozen inside the freeze window");
    let until = Instant::now() + Duration::from_secs(10);
    while cg_a.frozen() || cg_b.frozen() {
        assert!(Instant::now() < until, "v1 cgroups still frozen long after the freeze deadline");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!archive.exists());
    HERO_SNAP.ok(&s.args(&["gc"]));
    assert_eq!(s._fs[0].subvolumes().len(), 2, "snapshots left: {:?}", s._fs[0].subvolumes());
}

#[test]
fn atomic_under_load_btrfs() {
    atomic_under_load("btrfs");
}

#[test]
fn atomic_under_load_reflink() {
    atomic_under_load("xfs");
}

#[test]
fn atomic_under_load_btrfs_and_reflink() {
    atomic_under_load("mixed");
}

#[test]
fn plan_states_consistency_and_refuses_torn_copies() {
    // XFS without quiesce: a reflink copy is not instantaneous: refused without --allow-live.
    let s = setup("xfs");
    s.write_inventory(NO_QUIESCE);
    std::fs::write(s.root.join("a/f"), "x").unwrap();
    let key = s.dir.path().join("k");
    let out = HERO_SNAP.run(&s.args(&["backup", "--no-encrypt", "--to", key.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("--allow-live") && stderr(&out).contains("svc_a"), "{}", stderr(&out));
    let out = HERO_SNAP.ok(&s.args(&["plan", "--allow-live", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["consistency"], "live");
    assert_eq!(v["result"]["volumes"][0]["backend"], "reflink");

    // btrfs, two subvolumes, nothing quiesced: each snapshot its own instant, said in the manifest.
    let s = setup("btrfs");
    s.write_inventory(NO_QUIESCE);
    let (key, recipient) = age_key(s.dir.path());
    let archive = s.dir.path().join("p.hsnap");
    HERO_SNAP.ok(&s.args(&["backup", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    let m = inspect_json(&archive, &key);
    assert_eq!(m["consistency"], "per-volume");
    assert!(m["warnings"].as_array().unwrap().iter().any(|w| w["code"] == "consistency-per-volume"), "{m}");

    // One service on one subvolume: a single snapshot is one instant.
    let one = NO_QUIESCE.split("  svc_b:").next().unwrap().to_string();
    s.write_inventory(&one);
    let out = HERO_SNAP.ok(&s.args(&["plan", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["consistency"], "atomic");
    assert_eq!(v["result"]["volumes"][0]["backend"], "btrfs");
}

#[test]
fn sigkill_while_frozen_thaws_runs_post_hooks_and_gc_cleans() {
    let s = setup("btrfs");
    let (cg_a, cg_b) = (TestCgroup::new("kill-a"), TestCgroup::new("kill-b"));
    let post_log = s.dir.path().join("post.log");
    let hooks = format!(", pre: {{argv: [sh, -c, 'echo pre >> {0}']}}, post: {{argv: [sh, -c, 'echo post >> {0}']}}", post_log.display());
    s.write_inventory(&inventory(&cg_a.name, &cg_b.name, &hooks));
    let _writers = Writers::start(&s.root, &cg_a, &cg_b);
    let archive = s.dir.path().join("k.hsnap");
    for point in ["backup-frozen", "backup-snapshotted"] {
        let mut cmd = HERO_SNAP.cmd();
        cmd.env("HERO_SNAP_FAILPOINT", point).args(s.args(&["backup", "--no-encrypt", "--to", archive.to_str().unwrap(), "--freeze-deadline-ms", "5000"]));
        let out = cmd.output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{point}: {}", stderr(&out));
        // The watchdog notices the death at once; give it well under the deadline.
        let until = Instant::now() + Duration::from_secs(3);
        while cg_a.frozen() || cg_b.frozen() {
            assert!(Instant::now() < until, "{point}: services still frozen after the watchdog's deadline");
            std::thread::sleep(Duration::from_millis(10));
        }
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&post_log).unwrap_or_default().matches("post").count() < 1 {
            assert!(Instant::now() < until, "{point}: the post hook did not run");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_file(&post_log).unwrap();
        assert!(!archive.exists());
        let gc = HERO_SNAP.ok(&s.args(&["gc"]));
        assert!(String::from_utf8_lossy(&gc.stdout).contains("backup-cleaned"), "{point}: {}", String::from_utf8_lossy(&gc.stdout));
        assert_eq!(s._fs[0].subvolumes().len(), 2, "{point}: snapshots left: {:?}", s._fs[0].subvolumes());
        assert!(leftovers_within(&s._fs[0].mount, 3).is_empty(), "{point}: {:?}", leftovers_within(&s._fs[0].mount, 3));
    }
    // And a normal run still works afterwards, taking over the dead run's lock.
    HERO_SNAP.ok(&s.args(&["backup", "--no-encrypt", "--to", archive.to_str().unwrap()]));
}

#[test]
fn a_hanging_hook_is_killed_at_its_timeout() {
    let s = setup("btrfs");
    let (cg_a, cg_b) = (TestCgroup::new("hang-a"), TestCgroup::new("hang-b"));
    let hook = ", pre: {argv: [sleep, '30'], timeout_secs: 1}";
    s.write_inventory(&inventory(&cg_a.name, &cg_b.name, hook));
    std::fs::write(s.root.join("a/f"), "x").unwrap();
    let archive = s.dir.path().join("h.hsnap");
    let t = Instant::now();
    let out = HERO_SNAP.run(&s.args(&["backup", "--no-encrypt", "--to", archive.to_str().unwrap()]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("did not finish within 1 s") && stderr(&out).contains("on_error: abort"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(25), "the hook was not killed");
    assert!(!archive.exists());
    // on_error: warn goes on, and says so in the manifest
    s.write_inventory(&inventory(&cg_a.name, &cg_b.name, &format!("{hook}, on_error: warn")));
    HERO_SNAP.ok(&s.args(&["backup", "--no-encrypt", "--to", archive.to_str().unwrap()]));
    let out = HERO_SNAP.ok(&["inspect", "--from", archive.to_str().unwrap(), "--allow-plaintext", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["result"]["warnings"].as_array().unwrap().iter().any(|w| w["code"] == "pre-hook-failed"), "{v}");
}
