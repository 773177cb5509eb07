//! The README's first command, `scripts/demo`, run with this build: a live instance on
//! loop btrfs + XFS with its services in cgroups, backed up under load, restored on a bare
//! instance and checked through redis-cli, sqlite3 and git; context geomind moved into it
//! as geomind2, hero_db's keys of geomind included (its export surface), B's other keys
//! untouched (the demo checks them through redis-cli). Afterwards nothing of it is
//! left: no mount, no loop device, no cgroup, no file.

use crate::HERO_SNAP;
use test_support::fixtures::repo;
use test_support::sys::{cgroup2_mount, exclusive, require_tools};

use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_runs_and_leaves_nothing_behind() {
    // Not beside a Ceph gateway: see test_support::sys::exclusive.
    let _exclusive = exclusive();
    let repo = repo();
    require_tools(&["redis-server", "redis-cli", "sqlite3", "git", "python3", "mkfs.btrfs", "mkfs.xfs", "age-keygen"]);
    let out = Command::new(repo.join("scripts/demo")).env("HERO_SNAP_DEMO_BIN", HERO_SNAP.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "scripts/demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for promise in
        ["consistency: atomic", "consistent: ", "refused, as it should be", "hero_db geomind2: 5000 keys, exactly geomind's", "geomind2: ", "demo done"]
    {
        assert!(text.contains(promise), "the demo's output lacks `{promise}`:\n{text}");
    }
    let work = text.lines().find_map(|l| l.strip_prefix("work directory: ")).expect("the demo names its work directory").trim();
    assert!(!Path::new(work).exists(), "{work} is left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(work), "mounts left under {work}");
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    assert!(!String::from_utf8_lossy(&loops.stdout).contains(work), "loop devices left on {work}");
    let cg2 = cgroup2_mount();
    // Under the demo's lock: another demo (another test run) may be starting right now.
    let st = Command::new("flock")
        .args(["-w", "600", "/run/lock/hero-snap-demo.lock", "sh", "-c", r#"! test -e "$0/hero-demo" && ! test -e "$0/hero-demo-b""#, cg2.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "cgroup hero-demo or hero-demo-b is left under {}", cg2.display());
}
