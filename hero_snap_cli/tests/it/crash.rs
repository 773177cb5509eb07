//! SIGKILL at every failpoint of backup, restore and gc (HERO_SNAP_FAILPOINT), on real
//! loop btrfs + XFS with frozen cgroups: services thawed, hooks paired, nothing left behind
//! after `gc` / the next run, restored data exactly old or exactly new. docs/RELIABILITY.md
//! lists the points.

use crate::HERO_SNAP;
use test_support::cli::instance_args;
use test_support::fixtures;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;
use test_support::sys::{eventually, mounts_under, TestCgroup};

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every point where a backup is killed, in the order a run passes them.
const BACKUP_POINTS: &[&str] = &[
    "backup-locked",
    "backup-journaled",
    "backup-watchdog-started",
    "backup-pre-hooks-done",
    "backup-frozen",
    "backup-synced",
    "backup-snapshot-0-taken",
    "backup-snapshot-1-taken",
    "backup-snapshotted",
    "backup-thawed",
    "backup-post-hooks-done",
    "backup-scanned",
    "backup-manifest-written",
    "backup-surface-written",
    "backup-archive-finished",
    "backup-snapshots-released",
    "backup-before-rename",
];

/// Every point where a restore is killed, and whether `gc` then completes it (new data)
/// or rolls it back (old data).
const RESTORE_POINTS: &[(&str, bool)] = &[
    ("restore-locked", false),
    ("restore-journaled", false),
    ("restore-extract-file", false),
    ("restore-extracted", false),
    ("restore-services-stopped", false),
    ("restore-swapping", false),
    ("restore-between-swaps", false),
    ("restore-swapped", false),
    ("restore-migrated", false),
    ("restore-after-commit", true),
    ("restore-completed", true),
];

fn killed(out: &std::process::Output, point: &str) {
    assert_eq!(out.status.signal(), Some(9), "{point}: the failpoint did not fire: {}{}", String::from_utf8_lossy(&out.stdout), stderr(out));
}

fn gc(args: Vec<String>, point: &str) -> String {
    let out = HERO_SNAP.run(&args);
    assert!(out.status.success(), "{point}: gc failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(log: &Path, word: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| *l == word).count()
}

#[test]
fn sigkill_at_every_backup_point_then_gc_cleans() {
    // a on a btrfs subvolume, b on an XFS mounted inside: one btrfs snapshot and one
    // reflink copy per run, both services frozen through their cgroups.
    let dir = tempfile::tempdir().unwrap();
    let btrfs = LoopFs::new("btrfs", 512);
    let root = btrfs.mount.join("root");
    btrfs.subvolume(&root.join("a"));
    std::fs::create_dir_all(root.join("b")).unwrap();
    let xfs = LoopFs::new_at("xfs", 512, Some(&root.join("b")));
    std::fs::write(root.join("a/data"), pseudo_random(300_000, 1)).unwrap();
    std::fs::write(root.join("b/data"), pseudo_random(300_000, 2)).unwrap();
    let (cg_a, cg_b) = (TestCgroup::new("crash-a"), TestCgroup::new("crash-b"));
    let _sleepers = [cg_a.sleeper(), cg_b.sleeper()];
    let hooks_log = dir.path().join("hooks.log");
    let inventory = dir.path().join("inventory.yaml");
    std::fs::write(&inventory, fixtures::inventory("crash", &[("cgroup_a", &cg_a.name), ("cgroup_b", &cg_b.name), ("hooks_log", hooks_log.to_str().unwrap())]))
        .unwrap();
    let state = dir.path().join("state");
    let out_dir = dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let archive = out_dir.join("a.hsnap");
    let args = |v: &[&str]| instance_args(v, &inventory, &root, &state);
    let backup = args(&["backup", "--no-encrypt", "--to", archive.to_str().unwrap(), "--freeze-deadline-ms", "5000"]);
    let mounts_before = mounts_under(&btrfs.mount);
    let subvolumes_before = btrfs.subvolumes();

    let check_clean = |point: &str| {
        // Within the watchdog's reach (it notices the death at once; the deadline is 5 s).
        assert!(eventually(Duration::from_secs(3), || !cg_a.frozen() && !cg_b.frozen()), "{point}: services still frozen");
        let out = gc(args(&["gc"]), point);
        assert!(!cg_a.frozen() && !cg_b.frozen(), "{point}: services frozen after gc");
        assert!(
            eventually(Duration::from_secs(5), || count(&hooks_log, "pre") == count(&hooks_log, "post")),
            "{point}: {} pre hooks but {} post hooks (gc said: {out})",
            count(&hooks_log, "pre"),
            count(&hooks_log, "post")
        );
        assert_eq!(btrfs.subvolumes(), subvolumes_before, "{point}: snapshots left");
        assert!(leftovers(&btrfs.mount).is_empty(), "{point}: left {:?}", leftovers(&btrfs.mount));
        assert!(leftovers(&xfs.mount).is_empty(), "{point}: left {:?}", leftovers(&xfs.mount));
        assert!(leftovers(&state).is_empty(), "{point}: left {:?}", leftovers(&state));
        assert_eq!(mounts_under(&btrfs.mount), mounts_before, "{point}: a mount was left");
        assert!(!archive.exists(), "{point}: an archive was published");
        let journals: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") || n.contains(".pre-"))
            .collect();
        assert!(journals.is_empty(), "{point}: gc left {journals:?}");
    };

    let mut points = 0;
    for point in BACKUP_POINTS {
        let mut cmd = HERO_SNAP.cmd();
        let out = cmd.env("HERO_SNAP_FAILPOINT", point).args(&backup).output().unwrap();
        killed(&out, point);
        check_clean(point);
        points += 1;
    }
    // gc itself killed half way (after thawing, before the post hooks and the snapshot
    // removal): the next gc finishes the job.
    let mut cmd = HERO_SNAP.cmd();
    killed(&cmd.env("HERO_SNAP_FAILPOINT", "backup-snapshot-1-taken").args(&backup).output().unwrap(), "gc-backup-thawed");
    let mut cmd = HERO_SNAP.cmd();
    killed(&cmd.env("HERO_SNAP_FAILPOINT", "gc-backup-thawed").args(args(&["gc"])).output().unwrap(), "gc-backup-thawed");
    check_clean("gc-backup-thawed");
    points += 1;
    assert_eq!(points, BACKUP_POINTS.len() + 1);

    // Killed runs leave their temporary `.a.hsnap.<pid>.*.partial` files (never under the
    // real name); the next backup to that path removes them.
    let partials = |d: &Path| std::fs::read_dir(d).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".partial")).count();
    assert!(partials(&out_dir) > 0, "the kills after the archive was opened should have left partial files");
    HERO_SNAP.ok(&backup);
    assert!(archive.exists());
    assert_eq!(partials(&out_dir), 0, "the next run did not remove dead runs' partial archives");
    assert!(leftovers(&btrfs.mount).is_empty() && btrfs.subvolumes() == subvolumes_before);
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "--allow-plaintext"]);
}

#[test]
fn sigkill_at_every_restore_point_then_gc_leaves_old_or_new() {
    let xfs = LoopFs::new("xfs", 512);
    let src = Instance::in_dir(&["default", "geomind"], INVENTORY, &xfs.mount);
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));

    // The target stops hero_db before the swaps and starts it after; hero_db is at schema 3
    // and migrates the archive's schema 2.
    let hooks_log = src.dir.path().join("hooks.log");
    let hook = |w: &str| format!("{{argv: [sh, -c, 'echo {w} >> {}']}}", hooks_log.display());
    let inventory = INVENTORY.replace(
        "schema: 2\n",
        &format!(
            "schema: 3\n    hooks: {{stop: {}, start: {}}}\n    migrations:\n      - {{from: 2, run: {}}}\n",
            hook("stop"),
            hook("start"),
            hook("migrate")
        ),
    );
    let surfaces = |i: &Instance| -> Vec<PathBuf> {
        vec![
            i.path("var/lib/hero/hero_db/data"),
            i.path("var/lib/hero/hero_foundry/contexts/geomind/files"),
            i.path("var/lib/hero/hero_foundry/contexts/default/git"),
        ]
    };

    let run_point = |point: &str, expect_new: bool, gc_point: Option<&str>| {
        let t = Instance::in_dir(&["default", "geomind"], &inventory, &xfs.mount);
        let state = t.dir.path().join("state");
        let with_state = |mut v: Vec<String>| {
            v.extend(["--state-dir".into(), state.display().to_string()]);
            v
        };
        std::fs::write(t.path("var/lib/hero/hero_db/data/marker"), "old").unwrap();
        std::fs::write(t.path("var/lib/hero/hero_foundry/contexts/geomind/files/marker"), "old").unwrap();
        let old: Vec<_> = surfaces(&t).iter().map(|p| tree(p)).collect();
        let all_before = tree_hash(&t.path("var/lib/hero"));
        let _ = std::fs::remove_file(&hooks_log);
        let restore = with_state(t.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"]));
        let mut cmd = HERO_SNAP.cmd();
        killed(&cmd.env("HERO_SNAP_FAILPOINT", point).args(&restore).output().unwrap(), point);
        if let Some(gp) = gc_point {
            let mut cmd = HERO_SNAP.cmd();
            killed(&cmd.env("HERO_SNAP_FAILPOINT", gp).args(with_state(t.args(&["gc"]))).output().unwrap(), gp);
        }
        let said = gc(with_state(t.args(&["gc"])), point);
        let expected = if point == "restore-locked" {
            "nothing to clean up"
        } else if expect_new {
            "completed"
        } else {
            "rolled-back"
        };
        assert!(said.contains(expected), "{point}: gc said {said}");
        for (i, p) in surfaces(&t).iter().enumerate() {
            if expect_new {
                assert_same_tree(&surfaces(&src)[i], p);
            } else {
                assert_eq!(tree(p), old[i], "{point}: {} is not exactly the old data", p.display());
            }
        }
        if !expect_new {
            assert_eq!(tree_hash(&t.path("var/lib/hero")), all_before, "{point}: the target is not exactly as it was");
        }
        assert!(leftovers(&t.root).is_empty(), "{point}: left {:?}", leftovers(&t.root));
        assert_eq!(count(&hooks_log, "stop"), count(&hooks_log, "start"), "{point}: a stopped service was not started again");
        let again = gc(with_state(t.args(&["gc"])), point);
        assert!(again.contains("nothing to clean up"), "{point}: second gc: {again}");
        // And the restore goes through now.
        HERO_SNAP.ok(&restore);
        for (i, p) in surfaces(&t).iter().enumerate() {
            assert_same_tree(&surfaces(&src)[i], p);
        }
    };
    for (point, expect_new) in RESTORE_POINTS {
        run_point(point, *expect_new, None);
    }
    // gc killed after undoing a run, before it restarts services and drops the journal.
    run_point("restore-between-swaps", false, Some("gc-restore-finished"));
    run_point("restore-after-commit", true, Some("gc-restore-finished"));
    assert!(leftovers(&xfs.mount).is_empty(), "left {:?}", leftovers(&xfs.mount));
}

#[test]
fn the_failpoint_lists_cover_at_least_20_distinct_points() {
    let mut all: Vec<&str> = BACKUP_POINTS.to_vec();
    all.extend(RESTORE_POINTS.iter().map(|p| p.0));
    all.extend(["gc-backup-thawed", "gc-restore-finished"]);
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a point is listed twice");
    assert!(n >= 20, "{n} points");
    // Each listed point exists in the core's source (a renamed point fails here, not silently).
    let src: String = walkdir::WalkDir::new(fixtures::repo().join("hero_snap_core/src"))
        .into_iter()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    for p in &all {
        let literal = format!("failpoint(\"{p}\")");
        let templated = p.starts_with("backup-snapshot-") && src.contains("failpoint(&format!(\"backup-snapshot-{i}-taken\"))");
        assert!(src.contains(&literal) || templated, "{p} is not a failpoint in hero_snap_core");
    }
}
