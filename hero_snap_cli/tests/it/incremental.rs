//! Incremental archives (decisions/D-13): a chain of a full archive and incrementals,
//! restored to the final state, with every kind of change; refusals of broken chains.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// The trees of every surface of the contexts default and geomind.
fn snapshot_of(inst: &Instance) -> Vec<std::collections::BTreeMap<String, Node>> {
    let mut surfaces = vec!["var/lib/hero/hero_db/data".to_string()];
    for c in ["default", "geomind"] {
        surfaces.extend(["files", "git"].map(|s| format!("var/lib/hero/hero_foundry/contexts/{c}/{s}")));
    }
    surfaces.iter().map(|s| tree(&inst.path(s))).collect()
}

/// Backs up into `folder/name` with `extra` flags; the `--json` result.
fn backup(inst: &Instance, recipient: &str, folder: &Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let to = folder.join(name);
    let mut args = vec!["backup", "--allow-live", "--json", "--to", to.to_str().unwrap(), "-r", recipient];
    args.extend_from_slice(extra);
    last_json(&HERO_SNAP.ok(&inst.args(&args)))["result"].clone()
}

/// Every kind of change an incremental must carry: content, metadata only, new, deleted,
/// renamed, type changes both ways, hard links, symlinks and empty directories.
fn change_round_one(a: &Instance) {
    let g = |p: &str| a.path(&format!("var/lib/hero/hero_foundry/contexts/geomind/{p}"));
    let db = a.path("var/lib/hero/hero_db/data");
    fs::write(db.join("dump.rdb"), pseudo_random(200_000, 2)).unwrap(); // same size, new content
    fs::set_permissions(db.join("appendonly.aof"), fs::Permissions::from_mode(0o600)).unwrap(); // metadata only
    fs::write(g("files/new.txt"), "new\n").unwrap();
    fs::remove_file(g("files/docs/readme.md")).unwrap();
    fs::rename(g("files/blob.bin"), g("files/blob-renamed.bin")).unwrap();
    fs::remove_file(g("git/HEAD")).unwrap(); // a file becomes a directory
    fs::create_dir_all(g("git/HEAD/inner")).unwrap();
    fs::write(g("git/HEAD/inner/x"), "x").unwrap();
    fs::create_dir_all(g("files/empty")).unwrap();
    symlink("blob-renamed.bin", g("files/link")).unwrap();
    fs::hard_link(g("files/new.txt"), g("files/new-hardlink.txt")).unwrap();
}

fn change_round_two(a: &Instance) {
    let g = |p: &str| a.path(&format!("var/lib/hero/hero_foundry/contexts/geomind/{p}"));
    fs::remove_dir_all(g("git/HEAD")).unwrap(); // and back to a file
    fs::write(g("git/HEAD"), "ref: refs/heads/dev\n").unwrap();
    fs::remove_file(g("files/link")).unwrap(); // a symlink becomes a file
    fs::write(g("files/link"), "no longer a link").unwrap();
    fs::remove_dir(g("files/empty")).unwrap();
    fs::write(a.path("var/lib/hero/hero_foundry/contexts/default/files/docs/readme.md"), "# default, edited\n").unwrap();
}

#[test]
fn a_chain_restores_the_final_state_with_every_kind_of_change() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();

    // --since latest without an earlier archive: a full one, and it says so.
    let full = backup(&a, &recipient, &folder, "0-full.hsnap", &["--since", "latest"]);
    assert_eq!(full["manifest"]["format"], 1);
    assert!(full["manifest"]["warnings"].to_string().contains("full-no-parent"), "{full}");

    change_round_one(&a);
    let inc1 = backup(&a, &recipient, &folder, "1-inc.hsnap", &["--since", "latest"]);
    assert_eq!(inc1["manifest"]["format"], 2);
    assert_eq!(inc1["manifest"]["level"], 1);
    assert_eq!(inc1["manifest"]["parent"]["run_id"], full["manifest"]["run_id"]);
    // Unchanged: default's blob.bin, readme.md and HEAD. A renamed file is a new path, a
    // hard-linked one is archived whole, a chmod is a change.
    assert_eq!(inc1["inherited"][0].as_u64().unwrap(), 3, "unchanged files were archived again, or changed ones not: {inc1}");

    change_round_two(&a);
    let inc2 = backup(&a, &recipient, &folder, "2-inc.hsnap", &["--since", "latest"]);
    assert_eq!(inc2["manifest"]["level"], 2);
    assert_eq!(inc2["manifest"]["parent"]["run_id"], inc1["manifest"]["run_id"]);
    let want = snapshot_of(&a);

    // Restored from the newest alone: the ancestors are found beside it.
    let b = Instance::new(&[]);
    let newest = folder.join("2-inc.hsnap");
    HERO_SNAP.ok(&b.args(&["restore", "--from", newest.to_str().unwrap(), "-i", key.to_str().unwrap()]));
    assert_eq!(snapshot_of(&b), want, "the chain's restore differs from the source");

    // Given with --from in any order, from a folder of their own.
    let elsewhere = a.dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let mut froms = Vec::new();
    for n in ["1-inc.hsnap", "0-full.hsnap", "2-inc.hsnap"] {
        fs::copy(folder.join(n), elsewhere.join(n)).unwrap();
        froms.push(elsewhere.join(n).display().to_string());
    }
    let c = Instance::new(&[]);
    let mut args: Vec<&str> = vec!["restore", "-i", key.to_str().unwrap()];
    for f in &froms {
        args.extend(["--from", f]);
    }
    HERO_SNAP.ok(&c.args(&args));
    assert_eq!(snapshot_of(&c), want);

    // One context of the chain, under a new name.
    let d = Instance::new(&[]);
    HERO_SNAP.ok(&d.args(&["restore", "--from", newest.to_str().unwrap(), "-i", key.to_str().unwrap(), "--context", "geomind", "--as", "moved"]));
    for s in ["files", "git"] {
        assert_eq!(
            tree(&d.path(&format!("var/lib/hero/hero_foundry/contexts/moved/{s}"))),
            tree(&a.path(&format!("var/lib/hero/hero_foundry/contexts/geomind/{s}"))),
            "a context restored from the chain differs"
        );
    }
}

#[test]
fn an_unchanged_instance_gives_an_incremental_of_no_files() {
    let a = Instance::new(&["default"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    backup(&a, &recipient, &folder, "0.hsnap", &[]);
    let inc = backup(&a, &recipient, &folder, "1.hsnap", &["--since", "latest"]);
    assert_eq!(inc["manifest"]["level"], 1);
    let files = inc["manifest"]["files"].as_u64().unwrap();
    assert_eq!(inc["inherited"][0].as_u64().unwrap(), files, "an unchanged file was archived again: {inc}");
    // The archive holds no file data: its index lists every file as held by the full one.
    let out = HERO_SNAP.ok(&["verify", "--json", "--from", folder.join("1.hsnap").to_str().unwrap(), "-i", key.to_str().unwrap()]);
    assert_eq!(last_json(&out)["result"]["files"], 0);
    // verify reads the full archive beside it for them, and checks each.
    assert_eq!(last_json(&out)["result"]["inherited_files"].as_u64().unwrap(), files);
    assert_eq!(last_json(&out)["result"]["ancestors"].as_array().unwrap().len(), 1);
    // --rehash reads every file and still finds nothing changed.
    let again = backup(&a, &recipient, &folder, "2.hsnap", &["--since", "latest", "--rehash"]);
    assert_eq!(again["inherited"][0].as_u64().unwrap(), files);
    // --full-every 3: the chain has three archives, so the next one is full.
    let full = backup(&a, &recipient, &folder, "3.hsnap", &["--since", "latest", "--full-every", "3"]);
    assert_eq!(full["manifest"]["format"], 1);
    assert!(full["manifest"]["warnings"].to_string().contains("full-every"), "{full}");
}

fn chain_of_two(a: &Instance, recipient: &str) -> PathBuf {
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    backup(a, recipient, &folder, "0-full.hsnap", &[]);
    change_round_one(a);
    backup(a, recipient, &folder, "1-inc.hsnap", &["--since", "latest"]);
    folder
}

#[test]
fn a_missing_or_damaged_ancestor_is_refused_before_any_swap() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = chain_of_two(&a, &recipient);
    let newest = folder.join("1-inc.hsnap");
    let t = Instance::new(&["default", "geomind"]);
    let before = snapshot_of(&t);
    let restore = || HERO_SNAP.run(&t.args(&["restore", "--from", newest.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"]));

    // Missing: the refusal names the run of the archive it needs.
    let full = folder.join("0-full.hsnap");
    let aside = a.dir.path().join("aside.hsnap");
    fs::rename(&full, &aside).unwrap();
    let out = restore();
    assert!(!out.status.success());
    let full_run = last_json(&HERO_SNAP.ok(&["inspect", "--json", "--from", aside.to_str().unwrap(), "-i", key.to_str().unwrap()]))["result"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(stderr(&out).contains(&full_run), "the refusal does not name the missing archive: {}", stderr(&out));
    assert_eq!(snapshot_of(&t), before, "the target changed");
    // Pre-flight and verify say the same, pre-flight from the archives' heads alone.
    for verb in ["preflight", "verify"] {
        let mut args = vec![verb, "--from", newest.to_str().unwrap(), "-i", key.to_str().unwrap()];
        if verb == "preflight" {
            args.push("--replace");
        }
        let args = if verb == "preflight" { t.args(&args) } else { args.iter().map(|s| s.to_string()).collect() };
        let out = HERO_SNAP.run(&args);
        assert!(!out.status.success() && stderr(&out).contains(&full_run), "{verb}: {}", stderr(&out));
    }
    assert!(leftovers(&t.root).is_empty(), "{:?}", leftovers(&t.root));

    // Damaged: one byte flipped in the middle of the full archive.
    let mut bytes = fs::read(&aside).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&full, &bytes).unwrap();
    let out = restore();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&full_run) || stderr(&out).contains("0-full.hsnap"), "the refusal does not name the damaged archive: {}", stderr(&out));
    assert_eq!(snapshot_of(&t), before, "the target changed");
    let out = HERO_SNAP.run(&["verify", "--from", newest.to_str().unwrap(), "-i", key.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("0-full.hsnap"), "verify: {}", stderr(&out));
    assert!(leftovers(&t.root).is_empty(), "{:?}", leftovers(&t.root));

    // Restored whole again, the chain works.
    fs::rename(&aside, &full).unwrap();
    let out = restore();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshot_of(&t), snapshot_of(&a));
}

#[test]
fn a_parent_of_another_instance_or_unknown_to_this_host_is_refused() {
    let a = Instance::new(&["default"]);
    let (_, recipient) = age_key(a.dir.path());
    let other = a.dir.path().join("not-from-here.hsnap");
    fs::write(&other, b"anything").unwrap();
    let out = HERO_SNAP.run(&a.args(&[
        "backup",
        "--allow-live",
        "--to",
        a.dir.path().join("x.hsnap").to_str().unwrap(),
        "-r",
        &recipient,
        "--since",
        other.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("holds no index of this archive"), "{}", stderr(&out));
    assert!(!a.dir.path().join("x.hsnap").exists());

    // Another selection: a per-context parent for a whole-instance backup.
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    backup(&a, &recipient, &folder, "ctx.hsnap", &["--context", "default"]);
    let out = HERO_SNAP.run(&a.args(&[
        "backup",
        "--allow-live",
        "--to",
        folder.join("whole.hsnap").to_str().unwrap(),
        "-r",
        &recipient,
        "--since",
        folder.join("ctx.hsnap").to_str().unwrap(),
    ]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another selection"), "{}", stderr(&out));
}

#[test]
fn prune_keeps_what_a_kept_incremental_builds_on_and_list_shows_the_chain() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = chain_of_two(&a, &recipient);
    let dir = folder.to_str().unwrap();
    // --keep-last 1 keeps the incremental; its full parent stays, with the reason.
    let out = HERO_SNAP.ok(&["prune", dir, "--keep-last", "1", "-i", key.to_str().unwrap(), "--json"]);
    let r = last_json(&out)["result"].clone();
    assert_eq!(r["deleted"], serde_json::json!([]), "{r}");
    assert!(r["kept"].to_string().contains("builds on it"), "{r}");
    assert!(folder.join("0-full.hsnap").exists() && folder.join("1-inc.hsnap").exists());
    let list = last_json(&HERO_SNAP.ok(&["list", dir, "-i", key.to_str().unwrap(), "--json"]))["result"].clone();
    let inc = list.as_array().unwrap().iter().find(|l| l["path"].as_str().unwrap().ends_with("1-inc.hsnap")).unwrap().clone();
    assert_eq!(inc["summary"]["level"], 1, "{list}");
    assert!(inc["summary"]["parent"].is_string(), "{list}");
}

/// docs/FORMAT.md section 7.1, run as written: stock age, zstd, tar, sed and cp rebuild
/// the final state of a chain of three.
#[test]
fn stock_tools_rebuild_a_chains_final_state() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = chain_of_two(&a, &recipient);
    change_round_two(&a);
    let newest = backup(&a, &recipient, &folder, "2-inc.hsnap", &["--since", "latest"]);
    let doc = fs::read_to_string(test_support::fixtures::repo().join("docs/FORMAT.md")).unwrap();
    let script = doc.split("### 7.1").nth(1).unwrap().split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let script = script.replace("key.txt", key.to_str().unwrap()).replace("RUN-ID-OF-2-inc", newest["manifest"]["run_id"].as_str().unwrap());
    let work = a.dir.path().join("stock");
    fs::create_dir_all(&work).unwrap();
    for n in ["0-full.hsnap", "1-inc.hsnap", "2-inc.hsnap"] {
        fs::copy(folder.join(n), work.join(n)).unwrap();
    }
    let out = std::process::Command::new("bash").arg("-c").arg(&script).current_dir(&work).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    // Content, kind, mode and link targets; the copy leaves directory times as it likes.
    let shape = |root: &Path| -> Vec<(String, &'static str, u32, String, Option<PathBuf>)> {
        tree(root).into_iter().map(|(p, n)| (p, n.kind, if n.kind == "dir" { 0 } else { n.mode }, n.blake3, n.link)).collect()
    };
    for (surface, member) in [
        ("var/lib/hero/hero_db/data", "services/hero_db/instance/data"),
        ("var/lib/hero/hero_foundry/contexts/geomind/files", "services/hero_foundry/contexts/geomind/files"),
        ("var/lib/hero/hero_foundry/contexts/geomind/git", "services/hero_foundry/contexts/geomind/git"),
        ("var/lib/hero/hero_foundry/contexts/default/files", "services/hero_foundry/contexts/default/files"),
    ] {
        assert_eq!(shape(&work.join("out").join(member)), shape(&a.path(surface)), "{member} differs");
    }
}

/// A chain read from real snapshots: a btrfs snapshot keeps inode numbers and ctimes (the
/// full fingerprint), an XFS reflink copy has new ones (size, mtime, mode and owner only).
/// Either way the unchanged files are listed, not archived, and the chain restores.
#[test]
fn chains_from_btrfs_snapshots_and_xfs_reflink_copies() {
    for fs_kind in ["btrfs", "xfs"] {
        let lfs = test_support::loopfs::LoopFs::new(fs_kind, 512);
        // A reflink copy is not instantaneous: the services are held still by a cgroup.
        let cg = test_support::sys::TestCgroup::new("incremental");
        let held = format!("    schema: 2\n    quiesce: {{cgroup: \"{}\"}}\n", cg.name);
        let inventory = INVENTORY.replacen("    schema: 2\n", &held, 1).replacen("    schema: 1\n", &held.replace("schema: 2", "schema: 1"), 1);
        let a = Instance::in_dir(&["default", "geomind"], &inventory, &lfs.mount);
        let (key, recipient) = age_key(a.dir.path());
        let folder = a.dir.path().join("archives");
        fs::create_dir_all(&folder).unwrap();
        let full = backup(&a, &recipient, &folder, "0-full.hsnap", &[]);
        assert_ne!(full["manifest"]["consistency"], "live", "{fs_kind}: not read from a snapshot: {full}");
        change_round_one(&a);
        let inc = backup(&a, &recipient, &folder, "1-inc.hsnap", &["--since", "latest"]);
        assert_ne!(inc["manifest"]["consistency"], "live");
        assert_eq!(inc["inherited"][0].as_u64().unwrap(), 3, "{fs_kind}: {inc}");
        let b = Instance::new(&[]);
        HERO_SNAP.ok(&b.args(&["restore", "--from", folder.join("1-inc.hsnap").to_str().unwrap(), "-i", key.to_str().unwrap()]));
        assert_eq!(snapshot_of(&b), snapshot_of(&a), "{fs_kind}: the chain's restore differs");
        assert!(leftovers(&lfs.mount).is_empty(), "{fs_kind}: {:?}", leftovers(&lfs.mount));
    }
}

/// Killed while writing an incremental, or while reading an ancestor in a chain restore:
/// `gc` leaves nothing behind, the index cache still names the last published archive, and
/// the target is exactly as it was.
#[test]
fn killed_incremental_backup_and_chain_restore_then_gc() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = chain_of_two(&a, &recipient);
    let inc1_run = last_json(&HERO_SNAP.ok(&["inspect", "--json", "--from", folder.join("1-inc.hsnap").to_str().unwrap(), "-i", key.to_str().unwrap()]))
        ["result"]["run_id"]
        .clone();
    change_round_two(&a);
    let to = folder.join("2-inc.hsnap");
    for point in ["backup-manifest-written", "backup-archive-finished", "backup-before-rename"] {
        let args = a.args(&["backup", "--allow-live", "--to", to.to_str().unwrap(), "-r", &recipient, "--since", "latest"]);
        let out = HERO_SNAP.command().env("HERO_SNAP_FAILPOINT", point).args(&args).output().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "{point}: {}", stderr(&out));
        HERO_SNAP.ok(&a.args(&["gc"]));
        assert!(leftovers(a.dir.path()).is_empty(), "{point}: {:?}", leftovers(a.dir.path()));
        assert!(!to.exists(), "{point}: an archive was published");
    }
    // The next incremental still builds on the last published one.
    let inc2 = backup(&a, &recipient, &folder, "2-inc.hsnap", &["--since", "latest"]);
    assert_eq!(inc2["manifest"]["parent"]["run_id"], inc1_run);

    let t = Instance::new(&["default", "geomind"]);
    let before = tree_hash(&t.path("var/lib/hero"));
    let args = t.args(&["restore", "--from", to.to_str().unwrap(), "-i", key.to_str().unwrap(), "--replace"]);
    let out = HERO_SNAP.command().env("HERO_SNAP_FAILPOINT", "chain-ancestor-read").args(&args).output().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "{}", stderr(&out));
    let gc = HERO_SNAP.ok(&t.args(&["gc"]));
    assert!(String::from_utf8_lossy(&gc.stdout).contains("rolled-back"), "{}", String::from_utf8_lossy(&gc.stdout));
    assert_eq!(tree_hash(&t.path("var/lib/hero")), before, "the target is not as it was");
    assert!(leftovers(&t.root).is_empty(), "{:?}", leftovers(&t.root));
    HERO_SNAP.ok(&args);
    assert_eq!(snapshot_of(&t), snapshot_of(&a));
}

/// The corruption cases of the archive suite (a flipped byte at the head, inside and at
/// the tail; a truncation; a substitute with the right name), applied to the middle link
/// of a chain of three: each is refused before any swap, naming the link.
#[test]
fn a_damaged_middle_link_is_refused_before_any_swap() {
    for encrypted in [true, false] {
        let a = Instance::new(&["default", "geomind"]);
        let (key, recipient) = age_key(a.dir.path());
        let folder = a.dir.path().join("archives");
        fs::create_dir_all(&folder).unwrap();
        let keys: Vec<&str> = if encrypted { vec!["-r", &recipient] } else { vec!["--no-encrypt"] };
        let write = |name: &str, extra: &[&str]| {
            let to = folder.join(name);
            let mut args = vec!["backup", "--allow-live", "--to", to.to_str().unwrap()];
            args.extend(&keys);
            args.extend(extra);
            HERO_SNAP.ok(&a.args(&args));
        };
        write("0-full.hsnap", &[]);
        change_round_one(&a);
        write("1-inc.hsnap", &["--since", "latest"]);
        change_round_two(&a);
        write("2-inc.hsnap", &["--since", "latest"]);
        let middle = folder.join("1-inc.hsnap");
        let good = fs::read(&middle).unwrap();
        let t = Instance::new(&["default", "geomind"]);
        let before = tree_hash(&t.path("var/lib/hero"));
        let mut read_args = vec!["--from".to_string(), folder.join("2-inc.hsnap").display().to_string()];
        read_args.extend(if encrypted { vec!["-i".to_string(), key.display().to_string()] } else { vec!["--allow-plaintext".to_string()] });
        let n = good.len();
        let mut cases: Vec<(String, Vec<u8>)> = [40, n / 3, n / 2, n - 40]
            .iter()
            .map(|&at| {
                let mut bad = good.clone();
                bad[at] ^= 0x20;
                (format!("byte {at} of {n} flipped"), bad)
            })
            .collect();
        cases.push(("truncated".into(), good[..n * 3 / 4].to_vec()));
        // A substitute: another archive of the same instance under the middle link's name.
        write("other.hsnap", &[]);
        cases.push(("substituted".into(), fs::read(folder.join("other.hsnap")).unwrap()));
        fs::remove_file(folder.join("other.hsnap")).unwrap();
        for (what, bytes) in cases {
            fs::write(&middle, &bytes).unwrap();
            let mut args = vec!["restore".to_string()];
            args.extend(read_args.iter().cloned());
            args.push("--replace".into());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = HERO_SNAP.run(&t.args(&args));
            assert!(!out.status.success(), "encrypted {encrypted}, {what}: the restore went through");
            let err = stderr(&out);
            assert!(err.contains("1-inc.hsnap") || err.contains("needs archive"), "encrypted {encrypted}, {what}: the refusal does not name the link: {err}");
            assert_eq!(tree_hash(&t.path("var/lib/hero")), before, "encrypted {encrypted}, {what}: the target changed");
            assert!(leftovers(&t.root).is_empty(), "encrypted {encrypted}, {what}: {:?}", leftovers(&t.root));
        }
        fs::write(&middle, &good).unwrap();
    }
}

/// decisions/D-15: on the host that wrote them, `list` and `prune` work without the
/// identity, from the catalog in its state directory; an archive this host did not write,
/// or one replaced since, is never summarised from it, and never deleted.
#[test]
fn list_and_prune_without_the_identity_from_the_hosts_catalog() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let state = a.root.join("var/lib/hero-snap");
    let folder = chain_of_two(&a, &recipient);
    backup(&a, &recipient, &folder, "2-full.hsnap", &[]);
    // A stranger: an archive of another host (here: another state directory).
    let other = Instance::new(&["default"]);
    HERO_SNAP.ok(&other.args(&["backup", "--allow-live", "--to", folder.join("stranger.hsnap").to_str().unwrap(), "-r", &recipient]));
    let dir = folder.to_str().unwrap();
    let st = state.to_str().unwrap();

    let list = last_json(&HERO_SNAP.ok(&["list", dir, "--state-dir", st, "--json"]))["result"].clone();
    let by_name = |n: &str| list.as_array().unwrap().iter().find(|l| l["path"].as_str().unwrap().ends_with(n)).unwrap().clone();
    for n in ["0-full.hsnap", "1-inc.hsnap", "2-full.hsnap"] {
        assert_eq!(by_name(n)["from_catalog"], true, "{n}: {list}");
        assert_eq!(by_name(n)["summary"]["instance"], "test");
    }
    assert_eq!(by_name("1-inc.hsnap")["summary"]["level"], 1);
    assert!(by_name("stranger.hsnap")["summary"].is_null(), "{list}");

    // --keep-last 1 keeps the newest full one; the chain goes, the stranger stays.
    let out = HERO_SNAP.ok(&["prune", dir, "--keep-last", "1", "--state-dir", st, "--json"]);
    let r = last_json(&out)["result"].clone();
    assert_eq!(r["deleted"].as_array().unwrap().len(), 2, "{r}");
    for (n, there) in [("0-full.hsnap", false), ("1-inc.hsnap", false), ("2-full.hsnap", true), ("stranger.hsnap", true)] {
        assert_eq!(folder.join(n).exists(), there, "{n}: {r}");
    }
    let entries = fs::read_dir(state.join("catalog")).unwrap().count();
    assert_eq!(entries, 1, "the catalog still lists deleted archives");

    // Replaced under the same name: its size no longer matches, so it is not trusted.
    fs::copy(folder.join("stranger.hsnap"), folder.join("2-full.hsnap")).unwrap();
    let list = last_json(&HERO_SNAP.ok(&["list", dir, "--state-dir", st, "--json"]))["result"].clone();
    let replaced = list.as_array().unwrap().iter().find(|l| l["path"].as_str().unwrap().ends_with("2-full.hsnap")).unwrap().clone();
    assert!(replaced["summary"].is_null(), "a replaced archive was summarised from the catalog: {list}");
    // With the identity, everything is read from the manifests as before.
    let list = last_json(&HERO_SNAP.ok(&["list", dir, "-i", key.to_str().unwrap(), "--json"]))["result"].clone();
    assert!(list.as_array().unwrap().iter().all(|l| l["from_catalog"].is_null() && l["summary"].is_object()), "{list}");
}

/// A host that lost its state directory: `--since latest` reads the parent's index from
/// the parent archive's end (decisions/D-17), and the incremental restores the live tree.
#[test]
fn without_the_index_cache_the_parents_index_is_read_from_the_archive() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    // A file is taken as unchanged only if its ctime is before the parent's run (whole seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let full = backup(&a, &recipient, &folder, "0-full.hsnap", &[]);
    let state = a.path("var/lib/hero-snap");
    fs::remove_dir_all(&state).unwrap();
    change_round_one(&a);

    // Without a key that opens it, the encrypted parent cannot be read: a full archive that says what to pass.
    let no_key = backup(&a, &recipient, &folder, "1-full.hsnap", &["--since", "latest"]);
    assert_eq!(no_key["manifest"]["format"], 1);
    assert!(no_key["manifest"]["warnings"].to_string().contains("--parent-identity"), "{no_key}");
    fs::remove_file(folder.join("1-full.hsnap")).unwrap();
    fs::remove_dir_all(&state).unwrap();

    let inc = backup(&a, &recipient, &folder, "1-inc.hsnap", &["--since", "latest", "--parent-identity", key.to_str().unwrap()]);
    assert_eq!(inc["manifest"]["level"], 1, "{inc}");
    assert_eq!(inc["manifest"]["parent"]["run_id"], full["manifest"]["run_id"]);
    assert!(inc["manifest"]["warnings"].to_string().contains("parent-index-from-archive"), "{inc}");
    // The same three unchanged files as with the cache (the chmod'ed one is archived: its ctime moved).
    assert_eq!(inc["inherited"][0].as_u64().unwrap(), 3, "unchanged files were archived again, or changed ones not: {inc}");
    let fetch = &inc["parent_fetch"];
    let (fetched, size) = (fetch["fetched_bytes"].as_u64().unwrap(), fetch["archive_bytes"].as_u64().unwrap());
    assert_eq!(size, fs::metadata(folder.join("0-full.hsnap")).unwrap().len());
    assert!(fetched < size, "{fetch}");

    let b = Instance::new(&[]);
    HERO_SNAP.ok(&b.args(&["restore", "--from", folder.join("1-inc.hsnap").to_str().unwrap(), "-i", key.to_str().unwrap()]));
    assert_eq!(snapshot_of(&b), snapshot_of(&a), "the incremental's restore differs from the live tree");

    // The next incremental builds on this one from the cache again, by metadata.
    let inc2 = backup(&a, &recipient, &folder, "2-inc.hsnap", &["--since", "latest"]);
    assert_eq!(inc2["manifest"]["level"], 2);
    assert!(inc2.get("parent_fetch").is_none(), "{inc2}");
}

/// A parent whose index trailer is damaged, or which is cut short, is refused naming it
/// (never a panic), by the ranged reader as by `verify`.
#[test]
fn a_damaged_or_truncated_trailer_is_refused_naming_the_archive() {
    let a = Instance::new(&["default"]);
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    let state = a.path("var/lib/hero-snap");
    let run = |name: &str, since: &str| {
        let to = folder.join(name).display().to_string();
        HERO_SNAP.run(&a.args(&["backup", "--allow-live", "--no-encrypt", "--json", "--to", &to, "--since", since]))
    };
    assert!(run("0.hsnap", "latest").status.success());
    let good = fs::read(folder.join("0.hsnap")).unwrap();
    let n = good.len();
    // The trailer's offset (bytes 24..32 of its 40) and tag (8..16); then the file cut short.
    let mut offset = good.clone();
    offset[n - 16] ^= 0x01;
    let mut tag = good.clone();
    tag[n - 30] ^= 0x20;
    for (what, bytes) in [("offset", offset), ("tag", tag), ("truncated", good[..n - 7].to_vec())] {
        fs::write(folder.join("0.hsnap"), &bytes).unwrap();
        let _ = fs::remove_dir_all(&state);
        let out = run("1.hsnap", "latest");
        let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(3), "{what}: {text}");
        assert!(text.contains("0.hsnap"), "{what}: {text}");
        assert!(!folder.join("1.hsnap").exists());
        let _ = fs::remove_dir_all(&state);
        let out = run("1.hsnap", folder.join("0.hsnap").to_str().unwrap());
        let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert_eq!(out.status.code(), Some(2), "{what}: {text}");
        assert!(text.contains("0.hsnap") && text.contains("holds no index"), "{what}: {text}");
        let out = HERO_SNAP.run(&["verify", "--allow-plaintext", "--from", folder.join("0.hsnap").to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "{what}: verify: {}", stderr(&out));
    }
    // Intact again: a plaintext backup reads its plaintext parent's index by the trailer.
    fs::write(folder.join("0.hsnap"), &good).unwrap();
    let _ = fs::remove_dir_all(&state);
    let out = run("1.hsnap", "latest");
    assert!(out.status.success(), "{}", stderr(&out));
    let result = &last_json(&out)["result"];
    assert_eq!(result["manifest"]["level"], 1, "{result}");
    assert_eq!(result["parent_fetch"]["archive_bytes"].as_u64().unwrap(), good.len() as u64, "{result}");
}
