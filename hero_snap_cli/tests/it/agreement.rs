//! verify, pre-flight and restore agree (issue 17): what restore refuses before it stages,
//! pre-flight refuses with the same words and exit code; a second run at the same time is
//! refused by name; an archive read from standard input restores.

use crate::HERO_SNAP;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

fn archive_of(src: &Instance) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    (archive, key)
}

#[test]
fn a_mount_point_target_is_refused_by_preflight_as_by_restore() {
    let src = Instance::new(&["default"]);
    let (archive, key) = archive_of(&src);
    let t = Instance::new(&["default"]);
    let data = t.path("var/lib/hero/hero_db/data");
    let fs_on_target = LoopFs::new_at("ext4", 256, Some(&data));
    fs::write(data.join("marker"), "on the mounted filesystem").unwrap();
    let before = tree_hash(&t.path("var/lib/hero"));
    let mut said = Vec::new();
    for verb in ["preflight", "restore"] {
        let out = HERO_SNAP.run(&t.args(&[verb, "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"]));
        assert_eq!(out.status.code(), Some(13), "{verb}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("{}: is a mount point", data.display())), "{verb}: {err}");
        said.push(err.lines().filter(|l| l.contains("mount point")).map(str::to_string).collect::<Vec<_>>());
    }
    assert_eq!(said[0], said[1], "pre-flight and restore say it differently");
    assert_eq!(tree_hash(&t.path("var/lib/hero")), before, "the target changed");
    assert!(leftovers(&t.root).is_empty(), "{:?}", leftovers(&t.root));
    drop(fs_on_target);
}

#[test]
fn a_second_run_at_the_same_time_is_refused_by_name() {
    let src = Instance::new(&["default"]);
    let (archive, key) = archive_of(&src);
    let t = Instance::new(&["default"]);
    // The first restore stops right after it took the lock.
    let first = HERO_SNAP
        .command()
        .env("HERO_SNAP_FAILPOINT", "restore-locked:stop")
        .args(t.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stat = format!("/proc/{}/stat", first.id());
    assert!(test_support::sys::eventually(std::time::Duration::from_secs(30), || fs::read_to_string(&stat).unwrap_or_default().contains(") T ")));
    for args in [
        t.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"]),
        t.args(&["backup", "--allow-live", "--to", t.dir.path().join("b.hsnap").to_str().unwrap(), "--no-encrypt"]),
    ] {
        let out = HERO_SNAP.run(&args);
        assert_eq!(out.status.code(), Some(7), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("another hero-snap run holds") && err.contains(&format!("pid {}", first.id())), "{err}");
    }
    Command::new("kill").args(["-CONT", &first.id().to_string()]).status().unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&src.path("var/lib/hero/hero_db/data"), &t.path("var/lib/hero/hero_db/data"));
}

#[test]
fn restore_from_standard_input() {
    let src = Instance::new(&["default", "geomind"]);
    let (archive, key) = archive_of(&src);
    let t = Instance::new(&[]);
    let mut child = HERO_SNAP
        .command()
        .args(t.args(&["restore", "--from", "-", "-i", key.to_str().unwrap()]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&fs::read(&archive).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for dir in ["var/lib/hero/hero_db/data", "var/lib/hero/hero_foundry/contexts/geomind/files", "var/lib/hero/hero_foundry/contexts/default/git"] {
        assert_same_tree(&src.path(dir), &t.path(dir));
    }
}
