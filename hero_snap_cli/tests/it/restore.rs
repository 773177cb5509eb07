//! Restore: per-context export/import, pre-flight refusals, migrations, rollback, crashes.

use crate::HERO_SNAP;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;

use std::fs;
use std::path::{Path, PathBuf};

fn backup(inst: &Instance, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (key, recipient) = age_key(inst.dir.path());
    let archive = inst.dir.path().join("a.hsnap");
    let mut args = vec!["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient];
    args.extend_from_slice(extra);
    HERO_SNAP.ok(&inst.args(&args));
    (archive, key)
}

fn restore_args(target: &Instance, archive: &Path, key: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()];
    v.extend_from_slice(extra);
    target.args(&v)
}

fn ctx_dir(inst: &Instance, ctx: &str) -> PathBuf {
    inst.path(&format!("var/lib/hero/hero_foundry/contexts/{ctx}"))
}

#[test]
fn per_context_export_into_bare_and_existing_instances() {
    per_context_export(None);
}

#[test]
fn per_context_export_on_btrfs_and_xfs() {
    // Source on btrfs, targets on XFS: staging and swaps on real loop filesystems.
    let b = LoopFs::new("btrfs", 512);
    let x = LoopFs::new("xfs", 512);
    per_context_export(Some((&b.mount, &x.mount)));
}

fn per_context_export(on: Option<(&Path, &Path)>) {
    let make = |ctx: &[&str], source: bool| match on {
        None => Instance::new(ctx),
        Some((src, dst)) => Instance::in_dir(ctx, INVENTORY, if source { src } else { dst }),
    };
    let a = make(&["default", "geomind", "threefold"], true);
    let (archive, key) = backup(&a, &["--context", "geomind"]);

    // The per-context archive holds geomind only, and no instance-scoped data.
    let out = HERO_SNAP.ok(&["inspect", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = m["result"]["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    // hero_db is listed with nothing archived: its instance data is left out, by name.
    assert_eq!(services, ["hero_db", "hero_foundry"]);
    assert_eq!(m["result"]["services"][0]["surfaces"], serde_json::json!([]));
    assert!(m["result"]["services"][0]["left_out"][0]["reason"].as_str().unwrap().contains("declares no export"), "{m}");
    assert_eq!(m["result"]["services"][1]["contexts"], serde_json::json!(["geomind"]));

    // Bare instance B: everything is created, with the archived ownership and modes.
    let b = make(&[], false);
    HERO_SNAP.ok(&restore_args(&b, &archive, &key, &[]));
    for s in ["files", "git"] {
        assert_same_tree(&ctx_dir(&a, "geomind").join(s), &ctx_dir(&b, "geomind").join(s));
    }
    assert!(!ctx_dir(&b, "default").exists() && !b.path("var/lib/hero/hero_db").exists());
    assert!(leftovers(&b.root).is_empty());

    // Instance C already has geomind (with other data): refused, C unchanged.
    let c = make(&["default", "geomind", "incubaid"], false);
    fs::write(ctx_dir(&c, "geomind").join("files/only-in-c.txt"), "C's own geomind").unwrap();
    let before = tree_hash(&c.path("var/lib/hero"));
    let out = HERO_SNAP.run(&restore_args(&c, &archive, &key, &[]));
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    assert!(stderr(&out).contains("context `geomind` already exists") && stderr(&out).contains("--as"), "{}", stderr(&out));
    assert_eq!(tree_hash(&c.path("var/lib/hero")), before, "a refused restore changed the target");

    // With --as geomind2 it works, and nothing else of C changes.
    let others: Vec<(PathBuf, String)> = ["default", "geomind", "incubaid"]
        .iter()
        .map(|x| ctx_dir(&c, x))
        .chain([c.path("var/lib/hero/hero_db"), c.path("var/lib/hero/hero_indexer")])
        .map(|p| {
            let h = tree_hash(&p);
            (p, h)
        })
        .collect();
    HERO_SNAP.ok(&restore_args(&c, &archive, &key, &["--context", "geomind", "--as", "geomind2"]));
    for s in ["files", "git"] {
        assert_same_tree(&ctx_dir(&a, "geomind").join(s), &ctx_dir(&c, "geomind2").join(s));
    }
    for (p, h) in others {
        assert_eq!(tree_hash(&p), h, "{} changed", p.display());
    }
    assert!(leftovers(&c.root).is_empty());
}

#[test]
fn whole_instance_restore_replaces_only_with_replace() {
    let a = Instance::new(&["default", "geomind"]);
    let (archive, key) = backup(&a, &[]);
    let t = Instance::new(&["default", "geomind"]);
    fs::write(t.path("var/lib/hero/hero_db/data/extra"), "target's own").unwrap();
    let before = tree_hash(&t.path("var/lib/hero"));
    let out = HERO_SNAP.run(&restore_args(&t, &archive, &key, &[]));
    assert_eq!(out.status.code(), Some(13));
    assert_eq!(tree_hash(&t.path("var/lib/hero")), before);
    let out = HERO_SNAP.ok(&restore_args(&t, &archive, &key, &["--replace", "--keep-old", "--json"]));
    let r = last_json(&out);
    assert_eq!(r["result"]["rebuild_pending"], serde_json::json!(["hero_indexer.index"]));
    assert_same_tree(&a.path("var/lib/hero/hero_db/data"), &t.path("var/lib/hero/hero_db/data"));
    let kept = r["result"]["kept_old"].as_array().unwrap();
    assert!(kept.iter().any(|p| Path::new(p.as_str().unwrap()).join("extra").exists()), "--keep-old keeps the replaced data");
}

/// Rewrites the target's inventory text.
fn target_with(inventory: &str) -> Instance {
    Instance::with_inventory(&[], inventory)
}

#[test]
fn preflight_refusals_leave_the_target_unchanged() {
    let a = Instance::new(&["default"]);
    let (archive, key) = backup(&a, &[]);
    let cases: Vec<(&str, String, i32, &str)> = vec![
        ("unknown service", INVENTORY.replace("  hero_foundry:\n", "  hero_other:\n"), 11, "not in the target inventory"),
        ("schema newer", INVENTORY.replace("schema: 2", "schema: 1"), 12, "newer than the target"),
        ("no migration", INVENTORY.replace("schema: 2", "schema: 3"), 12, "declares no migration from schema 2"),
        ("missing secret", INVENTORY.replace("secrets: [HERO_DB_KEY]", "secrets: [HERO_DB_KEY, HERO_DB_SEAL]"), 14, "HERO_DB_SEAL"),
        ("mixed", INVENTORY.replace("schema: 2", "schema: 1").replace("secrets: [HERO_DB_KEY]", "secrets: [NOPE]"), 4, "NOPE"),
    ];
    for (name, inv, code, needle) in cases {
        let t = target_with(&inv);
        let before = tree_hash(&t.path("var/lib/hero"));
        for verb in ["preflight", "restore"] {
            let out = HERO_SNAP.run(&t.args(&[verb, "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]));
            assert_eq!(out.status.code(), Some(code), "{name}/{verb}: {}", stderr(&out));
            assert!(stderr(&out).contains(needle), "{name}/{verb}: {}", stderr(&out));
            crate::outputs::assert_text(&format!("refusal_{}_{verb}", name.replace(' ', "_")), &stderr(&out));
        }
        assert_eq!(tree_hash(&t.path("var/lib/hero")), before, "{name}: the target changed");
        // --json lists the refusals with their kinds
        let out = HERO_SNAP.run(&t.args(&["preflight", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert!(!v["error"]["refusals"].as_array().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn migrations_run_once_each_in_order() {
    let a = Instance::new(&["default"]);
    let (archive, key) = backup(&a, &[]);
    let log = a.dir.path().join("migrations.log");
    let inv = INVENTORY.replace("schema: 2\n", &format!(
        "schema: 4\n    migrations:\n      - {{from: 2, run: {{argv: [sh, -c, 'echo \"$HERO_SNAP_SERVICE $HERO_SNAP_FROM_SCHEMA\" >> {0}']}}}}\n      - {{from: 3, run: {{argv: [sh, -c, 'echo \"{{service}} {{from_schema}}\" >> {0}']}}}}\n",
        log.display()));
    let t = target_with(&inv);
    let out = HERO_SNAP.ok(&t.args(&["preflight", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrate hero_db schema 2 -> 3"));
    assert!(!log.exists(), "pre-flight must not run migrations");
    HERO_SNAP.ok(&restore_args(&t, &archive, &key, &[]));
    assert_eq!(fs::read_to_string(&log).unwrap(), "hero_db 2\nhero_db 3\n");
}

#[test]
fn a_failing_migration_rolls_everything_back() {
    let a = Instance::new(&["default", "geomind"]);
    let (archive, key) = backup(&a, &[]);
    let inv = INVENTORY.replace("schema: 2\n", "schema: 3\n    migrations:\n      - {from: 2, run: {argv: [sh, -c, 'echo broken >&2; exit 3']}}\n");
    let t = Instance::with_inventory(&["default", "incubaid"], &inv);
    fs::write(t.path("var/lib/hero/hero_db/data/marker"), "old").unwrap();
    let before = tree_hash(&t.path("var/lib/hero"));
    let out = HERO_SNAP.run(&restore_args(&t, &archive, &key, &["--replace"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("rolled back") && stderr(&out).contains("broken"), "{}", stderr(&out));
    assert_eq!(tree_hash(&t.path("var/lib/hero")), before, "the rollback did not restore the target exactly");
}

#[test]
fn a_corrupted_archive_is_refused_before_any_swap() {
    let a = Instance::new(&["default"]);
    let (archive, key) = backup(&a, &[]);
    let mut data = fs::read(&archive).unwrap();
    let n = data.len();
    data[n - 100] ^= 0x40; // inside the last chunk: index or the last file
    let bad = a.dir.path().join("bad.hsnap");
    fs::write(&bad, data).unwrap();
    let t = Instance::new(&["default"]);
    fs::write(t.path("var/lib/hero/hero_db/data/marker"), "old").unwrap();
    let before = tree_hash(&t.path("var/lib/hero"));
    let out = HERO_SNAP.run(&restore_args(&t, &bad, &key, &["--replace"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(tree_hash(&t.path("var/lib/hero")), before);
    assert!(leftovers(&t.root).is_empty(), "{:?}", leftovers(&t.root));
}

#[test]
fn sigkill_during_restore_then_gc_leaves_old_or_new() {
    let a = Instance::new(&["default", "geomind"]);
    let (archive, key) = backup(&a, &[]);
    for (point, expect_new) in [("restore-extract-file", false), ("restore-between-swaps", false), ("restore-after-commit", true)] {
        let t = Instance::new(&["default", "geomind"]);
        fs::write(t.path("var/lib/hero/hero_db/data/marker"), "old").unwrap();
        fs::write(ctx_dir(&t, "geomind").join("files/marker"), "old").unwrap();
        let surfaces = [t.path("var/lib/hero/hero_db/data"), ctx_dir(&t, "geomind").join("files"), ctx_dir(&t, "default").join("git")];
        let old: Vec<String> = surfaces.iter().map(|p| tree_hash(p)).collect();
        let mut cmd = HERO_SNAP.cmd();
        cmd.env("HERO_SNAP_FAILPOINT", point).args(restore_args(&t, &archive, &key, &["--replace"]));
        let out = cmd.output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(9), "{point}: the failpoint did not fire: {}", stderr(&out));
        let gc = HERO_SNAP.ok(&t.args(&["gc"]));
        assert!(
            String::from_utf8_lossy(&gc.stdout).contains(if expect_new { "completed" } else { "rolled-back" }),
            "{point}: {}",
            String::from_utf8_lossy(&gc.stdout)
        );
        let new_src = [a.path("var/lib/hero/hero_db/data"), ctx_dir(&a, "geomind").join("files"), ctx_dir(&a, "default").join("git")];
        for (i, p) in surfaces.iter().enumerate() {
            if expect_new {
                assert_same_tree(&new_src[i], p);
            } else {
                assert_eq!(tree_hash(p), old[i], "{point}: {} is neither exactly old", p.display());
            }
        }
        assert!(leftovers(&t.root).is_empty(), "{point}: left {:?}", leftovers(&t.root));
        let again = HERO_SNAP.ok(&t.args(&["gc"]));
        assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to clean up"));
    }
}

/// A real migration (issue 17 item 2): hero_foundry's per-context SQLite database at schema
/// 1 in the archive, schema 2 on the target, whose migration adds a column through
/// sqlite3. It runs once per context, on the staged copy (`{path:files}`), before anything
/// is stopped or swapped, with the target's context name; the restored data has the new
/// column and every row; a failing one leaves the target as it was.
#[test]
fn a_sqlite_migration_runs_per_context_on_the_staged_data() {
    test_support::sys::require_tools(&["sqlite3"]);
    let a = Instance::new(&["default", "geomind"]);
    for c in ["default", "geomind"] {
        let db = ctx_dir(&a, c).join("files/collab.db");
        let st = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(format!("create table docs(id integer primary key, title text); insert into docs(title) values ('welcome to {c}'), ('plan');"))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let (archive, key) = backup(&a, &[]);
    let log = a.dir.path().join("migrations.log");
    let migration = format!(
        "{{from: 1, run: {{argv: [sh, -c, 'echo \"{{context}} $(pwd) $0\" >> {log} && sqlite3 \"$0/collab.db\" \"alter table docs add column tags text\"', '{{path:files}}']}}}}",
        log = log.display()
    );
    let inv = INVENTORY.replacen("    schema: 1\n", &format!("    schema: 2\n    migrations:\n      - {migration}\n"), 1);
    let t = Instance::with_inventory(&[], &inv);
    HERO_SNAP.ok(&restore_args(&t, &archive, &key, &["--context", "geomind", "--as", "moved"]));
    let runs = fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().count(), 1, "one run for the one context restored: {runs}");
    assert!(
        runs.starts_with("moved ") && runs.contains(".hero-snap-") && runs.contains(".stage"),
        "not run on the staged copy with the target's context: {runs}"
    );
    let db = ctx_dir(&t, "moved").join("files/collab.db");
    let rows = std::process::Command::new("sqlite3").arg(&db).arg("select title || '|' || ifnull(tags, '-') from docs order by id").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout), "welcome to geomind|-\nplan|-\n", "the migrated database: {}", stderr(&rows));

    // Both contexts: one run each.
    fs::remove_file(&log).unwrap();
    let u = Instance::with_inventory(&[], &inv);
    HERO_SNAP.ok(&restore_args(&u, &archive, &key, &[]));
    let runs = fs::read_to_string(&log).unwrap();
    let mut contexts: Vec<&str> = runs.lines().map(|l| l.split(' ').next().unwrap()).collect();
    contexts.sort();
    assert_eq!(contexts, ["default", "geomind"], "{runs}");
}

/// The rename and rebuild hooks against real data (issue 17 item 5): `--as` runs the
/// service's rename hook, which rewrites the context's name inside its files; the derived
/// index the archive left out is rebuilt from the restored sources by the rebuild hook,
/// and the outcome says so.
#[test]
fn rename_and_rebuild_hooks_work_on_the_restored_data() {
    let a = Instance::new(&["default", "geomind"]);
    let (archive, key) = backup(&a, &[]);
    let t = Instance::new(&[]);
    let root = t.root.display().to_string();
    let foundry = format!("{root}/var/lib/hero/hero_foundry/contexts");
    let rename = format!("{{argv: [sed, -i, 's/# {{context}}/# {{new_context}}/', '{foundry}/{{new_context}}/files/docs/readme.md']}}");
    let rebuild = format!(
        "{{argv: [sh, -c, 'for c in {foundry}/*; do n=$(basename $c); mkdir -p {root}/var/lib/hero/hero_indexer/$n; (cd $c/files && find . -type f | sort) > {root}/var/lib/hero/hero_indexer/$n/index.txt; done']}}"
    );
    let inv = INVENTORY
        .replacen("    surfaces:\n      - {name: files,", &format!("    hooks: {{rename: {rename}}}\n    surfaces:\n      - {{name: files,"), 1)
        .replacen("    surfaces:\n      - {name: index,", &format!("    hooks: {{rebuild: {rebuild}}}\n    surfaces:\n      - {{name: index,"), 1);
    fs::write(&t.inventory, &inv).unwrap();
    let out = HERO_SNAP.ok(&restore_args(&t, &archive, &key, &["--context", "geomind", "--as", "moved", "--json"]));
    let readme = fs::read_to_string(ctx_dir(&t, "moved").join("files/docs/readme.md")).unwrap();
    assert_eq!(readme, "# moved\n", "the rename hook did not rewrite the context's name");
    let index = fs::read_to_string(t.path("var/lib/hero/hero_indexer/moved/index.txt")).unwrap();
    assert_eq!(index, "./blob.bin\n./docs/readme.md\n", "the rebuilt index does not list the restored files");
    let outcomes = last_json(&out)["result"]["outcomes"].to_string();
    assert!(outcomes.contains("rebuilt by the service's rebuild hook"), "{outcomes}");
}
