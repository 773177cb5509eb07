//! Disk full on small ext4 loop filesystems: while writing the archive (source on a
//! btrfs with a frozen cgroup) and while staging a restore. A clear error naming the
//! path, no partial output, the target unchanged, the services thawed (or started again).

use crate::HERO_SNAP;
use test_support::cli::instance_args;
use test_support::fixtures;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;
use test_support::sys::TestCgroup;

use std::fs;
use std::process::{Command, Stdio};

#[test]
fn disk_full_while_writing_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let btrfs = LoopFs::new("btrfs", 512);
    let root = btrfs.mount.join("root");
    btrfs.subvolume(&root.join("a"));
    // 64 MiB that does not compress, for a 32 MiB filesystem.
    for i in 0..4 {
        fs::write(root.join(format!("a/part{i}")), pseudo_random(16 << 20, i)).unwrap();
    }
    let cg = TestCgroup::new("diskfull");
    let sleeper = cg.sleeper();
    let small = LoopFs::new("ext4", 32);
    let out_dir = small.mount.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    let inventory = dir.path().join("inventory.yaml");
    fs::write(&inventory, fixtures::inventory("disk-full", &[("cgroup", &cg.name)])).unwrap();
    let state = dir.path().join("state");
    let archive = out_dir.join("a.hsnap");
    let args = instance_args(&["backup", "--no-encrypt", "--to", archive.to_str().unwrap()], &inventory, &root, &state);
    let subvolumes = btrfs.subvolumes();
    let out = HERO_SNAP.run(&args);
    drop(sleeper); // killed
    assert!(!out.status.success(), "a 64 MiB archive fit on 32 MiB");
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(out_dir.to_str().unwrap()), "the error does not name the archive's path: {err}");
    assert!(!cg.frozen(), "the service was left frozen");
    let left: Vec<_> = fs::read_dir(&out_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "partial output left: {left:?}");
    assert_eq!(btrfs.subvolumes(), subvolumes, "snapshot left");
    assert!(leftovers(&btrfs.mount).is_empty(), "{:?}", leftovers(&btrfs.mount));
    let gc = HERO_SNAP.ok(&["gc".into(), "--config".into(), inventory.display().to_string(), "--state-dir".into(), state.display().to_string()]);
    assert!(String::from_utf8_lossy(&gc.stdout).contains("nothing to clean up"), "{}", String::from_utf8_lossy(&gc.stdout));
}

#[test]
fn disk_full_while_staging_a_restore() {
    // Pre-flight checks the free space against the manifest, so the disk fills up behind
    // its back: the restore is stopped (failpoint `restore-extract-file:stop`) after its
    // first staged file, the disk is filled, and the restore goes on. Two large files, so
    // whichever comes first, the other needs blocks the full disk does not have.
    let src = Instance::new(&["default"]);
    fs::write(src.path("var/lib/hero/hero_db/data/big1"), pseudo_random(16 << 20, 100)).unwrap();
    fs::write(src.path("var/lib/hero/hero_db/data/big2"), pseudo_random(16 << 20, 101)).unwrap();
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));

    let small = LoopFs::new("ext4", 128);
    let hooks_log = src.dir.path().join("hooks.log");
    let hook = |w: &str| format!("{{argv: [sh, -c, 'echo {w} >> {}']}}", hooks_log.display());
    let inv = INVENTORY
        .replace("    secrets: [HERO_DB_KEY]\n", &format!("    secrets: [HERO_DB_KEY]\n    hooks: {{stop: {}, start: {}}}\n", hook("stop"), hook("start")));
    let t = Instance::in_dir(&["default"], &inv, &small.mount);
    fs::write(t.path("var/lib/hero/hero_db/data/marker"), "old").unwrap();
    let before = tree(&t.path("var/lib/hero"));
    let child = HERO_SNAP
        .command()
        .env("HERO_SNAP_FAILPOINT", "restore-extract-file:stop")
        .args(t.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !fs::read_to_string(&stat).unwrap_or_default().contains(") T ") {
        assert!(std::time::Instant::now() < until, "the restore never reached its first staged file");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!leftovers(&t.root).is_empty(), "stopped after a staged file, but no staging directory");
    // Fill every block, the root-reserved ones too (hero-snap runs as root).
    let filler = small.mount.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=1M", "status=none"]).arg(format!("of={}", filler.display())).stderr(Stdio::null()).status();
    Command::new("kill").args(["-CONT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    fs::remove_file(&filler).unwrap();
    assert!(!out.status.success(), "the restore fit on a full disk");
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(".hero-snap-") && err.contains(".stage"), "the error does not name the staging path: {err}");
    assert_eq!(tree(&t.path("var/lib/hero")), before, "the target changed");
    assert!(leftovers(&small.mount).is_empty(), "staging left: {:?}", leftovers(&small.mount));
    let log = fs::read_to_string(&hooks_log).unwrap_or_default();
    assert_eq!(log.matches("stop").count(), log.matches("start").count(), "a stopped service was not started: {log}");
    let gc = HERO_SNAP.ok(&t.args(&["gc"]));
    assert!(String::from_utf8_lossy(&gc.stdout).contains("nothing to clean up"));
    // The space is free again: what was staged is gone.
    let df = Command::new("df").args(["--output=avail", "-B1"]).arg(&small.mount).output().unwrap();
    let avail: u64 = String::from_utf8_lossy(&df.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(avail > 60 << 20, "staged data still takes the space: {avail} bytes free");
}

#[test]
fn preflight_counts_blocks_and_inodes_of_small_files() {
    // 40,000 files of 100 bytes: 4 MB of data, but 160 MB of 4 KiB blocks and 40,000
    // inodes, more than a 128 MiB ext4 has. Counting bytes alone, the pre-flight would let
    // the restore start and fail on a full disk; it refuses it up front, naming both.
    let src = Instance::new(&["default"]);
    let dir = src.path("var/lib/hero/hero_db/data/records");
    fs::create_dir_all(&dir).unwrap();
    for i in 0..40_000 {
        fs::write(dir.join(format!("{i:05}.json")), format!("{{\"id\":{i:05},\"pad\":\"{}\"}}\n", "x".repeat(78))).unwrap();
    }
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));

    let small = LoopFs::new("ext4", 128);
    let t = Instance::in_dir(&["default"], INVENTORY, &small.mount);
    let before = tree(&t.path("var/lib/hero"));
    let out = HERO_SNAP.command().args(t.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"])).output().unwrap();
    assert_eq!(out.status.code(), Some(15), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("bytes with margin") && err.contains("inodes for the files"), "{err}");
    assert!(err.contains(&small.mount.display().to_string()), "the refusal does not name the filesystem: {err}");
    assert_eq!(tree(&t.path("var/lib/hero")), before, "the target changed");
    assert!(leftovers(&small.mount).is_empty(), "staging left: {:?}", leftovers(&small.mount));
}
