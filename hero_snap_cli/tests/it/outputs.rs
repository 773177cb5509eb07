//! Snapshot tests (insta) of the texts an operator reads: `plan`, `preflight`, each
//! pre-flight refusal (from `restore::preflight_refusals_leave_the_target_unchanged`) and
//! `prune --dry-run`'s retention choices. The snapshots are committed under `insta/`; a
//! mismatch fails the test (insta writes a `.snap.new` beside it to review, never on CI).
//! Temporary paths, times, run ids and sizes that vary from run to run are redacted.

use crate::HERO_SNAP;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;

use std::path::Path;

/// Asserts `text` matches the snapshot `name`, with what varies between runs redacted.
pub fn assert_text(name: &str, text: &str) {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("insta");
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(r"(?:/var)?/tmp/\.tmp[A-Za-z0-9]+", "[TMP]");
    s.add_filter(r"/var/tmp/hero-snap-fs\.[A-Za-z0-9]+", "[LOOPFS]");
    s.add_filter(r"/\.tmp[A-Za-z0-9]+", "/[TMPDIR]");
    s.add_filter(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z", "[TIME]");
    s.add_filter(r"\b\d{8}T\d{6}-\d+\b", "[RUN]");
    s.add_filter(r"\b\d{4}-\d{2}-\d{2}\b", "[DATE]");
    s.add_filter(r"\b\d{4}-W\d{2}\b", "[WEEK]");
    s.add_filter(r"monthly \d{4}-\d{2}\b", "monthly [MONTH]");
    s.add_filter(r"yearly \d{4}\b", "yearly [YEAR]");
    s.add_filter(r"/dev/loop\d+", "/dev/loop[N]");
    s.bind(|| insta::assert_snapshot!(name, text));
}

/// stdout then stderr, each under a header, as an operator sees them.
fn both(o: &std::process::Output) -> String {
    format!("exit: {:?}\n--- stdout\n{}--- stderr\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), stderr(o))
}

fn backup(inst: &Instance, to: &Path, extra: &[&str]) {
    let mut a = vec!["backup", "--allow-live", "--to", to.to_str().unwrap()];
    a.extend_from_slice(extra);
    HERO_SNAP.ok(&inst.args(&a));
}

#[test]
fn plan_text() {
    // On a loop btrfs (not this machine's own filesystems): hero_db on a subvolume of its
    // own, the rest on the top volume.
    let b = LoopFs::new("btrfs", 512);
    let src = Instance::in_dir(&[], INVENTORY, &b.mount);
    b.subvolume(&src.path("var/lib/hero/hero_db"));
    src.fill(&["default", "geomind"]);
    let out = HERO_SNAP.ok(&src.args(&["plan", "--allow-live"]));
    assert_text("plan", &both(&out));
}

#[test]
fn preflight_text() {
    // A target at hero_db schema 3 with a migration from 2: the pre-flight names the
    // restore's steps and the migration it would run.
    let a = Instance::new(&["default", "geomind"]);
    let archive = a.dir.path().join("a.hsnap");
    backup(&a, &archive, &["--no-encrypt"]);
    let inv = INVENTORY.replace("schema: 2\n", "schema: 3\n    migrations:\n      - {from: 2, run: {argv: [\"true\"]}}\n");
    let t = Instance::with_inventory(&["default"], &inv);
    let out = HERO_SNAP.ok(&t.args(&["preflight", "--allow-plaintext", "--replace", "--from", archive.to_str().unwrap()]));
    assert_text("preflight", &both(&out));
}

#[test]
fn prune_dry_run_text() {
    let src = Instance::new(&["geomind"]);
    let backups = src.dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    for (name, extra) in [("old.hsnap", &[][..]), ("mid.hsnap", &[]), ("new.hsnap", &[]), ("geomind.hsnap", &["--context", "geomind"])] {
        let mut a = vec!["--no-encrypt"];
        a.extend_from_slice(extra);
        backup(&src, &backups.join(name), &a);
    }
    std::fs::write(backups.join("notes.txt"), "not an archive").unwrap();
    let rule_sets: [&[&str]; 6] = [
        &["--keep-last", "1"],
        &["--keep-last", "2"],
        &["--keep-daily", "1"],
        &["--keep-weekly", "1"],
        &["--keep-monthly", "1", "--keep-yearly", "1"],
        &["--keep-within", "1d"],
    ];
    for rules in rule_sets {
        let mut a = vec!["prune", backups.to_str().unwrap(), "--allow-plaintext", "--dry-run"];
        a.extend_from_slice(rules);
        let out = HERO_SNAP.ok(&a);
        let text = both(&out);
        // What was freed depends on the archives' sizes, which vary with their run ids.
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("would delete ") && l.ends_with(" bytes") {
                    l.rsplit_once(", ").unwrap().0.to_string() + ", [N] bytes\n"
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert_text(&format!("prune_dry_run{}", rules.join("_").replace("--", "_")), &text);
    }
    for name in ["old.hsnap", "mid.hsnap", "new.hsnap", "geomind.hsnap"] {
        assert!(backups.join(name).exists(), "a dry run deleted {name}");
    }
    // A span in units restic does not have is refused by name, before anything is read.
    let out = HERO_SNAP.run(&["prune", backups.to_str().unwrap(), "--allow-plaintext", "--keep-within", "2w"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert!(stderr(&out).contains("--keep-within `2w`"), "{}", both(&out));
}
