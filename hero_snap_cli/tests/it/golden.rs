//! The golden format-1 archives of fixtures/archives/ (made once, never regenerated): this
//! build inspects, verifies and restores each of them, and gets back the recorded
//! manifest and tree. See fixtures/archives/README.md.

use crate::HERO_SNAP;
use test_support::fixtures::repo;
use test_support::prelude::*;
use test_support::tree::describe;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The surfaces of the golden instance, relative to its root.
const SURFACES: [&str; 3] = ["var/lib/hero/hero_db/data", "var/lib/hero/hero_foundry/contexts/alpha/files", "var/lib/hero/hero_foundry/contexts/beta/files"];

fn golden(name: &str) -> PathBuf {
    repo().join("fixtures/archives").join(name)
}

/// A copy of a fixture key file that only its owner can read (git keeps no mode 600).
fn private_copy(name: &str, dir: &Path) -> String {
    let path = dir.join(name);
    fs::copy(golden(name), &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// The manifest fields a later run can compare: all but the time, run id and tool version.
fn stable(mut result: serde_json::Value) -> serde_json::Value {
    let m = result.as_object_mut().expect("the result is an object");
    for volatile in ["created", "run_id", "tool_version"] {
        assert!(m.remove(volatile).is_some(), "the manifest has no `{volatile}`");
    }
    result
}

/// Inspects, verifies and restores `archive` with the key options `keys`.
fn check(archive: &str, keys: &[&str]) {
    let from = golden(archive).display().to_string();
    let with_keys = |verb: &str| -> Vec<String> {
        let mut a = vec![verb.to_string(), "--from".into(), from.clone()];
        a.extend(keys.iter().map(|k| k.to_string()));
        a
    };

    let mut inspect = with_keys("inspect");
    inspect.push("--json".into());
    let got = last_json(&HERO_SNAP.ok(&inspect));
    let recorded: serde_json::Value = serde_json::from_str(&fs::read_to_string(golden("manifest.json")).unwrap()).unwrap();
    assert_eq!(stable(got["result"].clone()), stable(recorded["result"].clone()), "{archive}: the manifest differs from the recorded one");

    let mut verify = with_keys("verify");
    verify.push("--json".into());
    let v = last_json(&HERO_SNAP.ok(&verify));
    assert_eq!(v["result"]["files"], recorded["result"]["files"], "{archive}: {v}");

    let target = Instance::with_inventory(&[], &fs::read_to_string(golden("inventory.yaml")).unwrap());
    let restore = with_keys("restore");
    let mut restore = target.args(&restore.iter().map(String::as_str).collect::<Vec<_>>());
    restore.extend(["--state-dir".into(), target.dir.path().join("state").display().to_string()]);
    HERO_SNAP.ok(&restore);
    let restored: String = SURFACES.iter().map(|s| format!("[{s}]\n{}", describe(&target.path(s)))).collect();
    let expected = fs::read_to_string(golden("tree.txt")).unwrap();
    for (i, (got, want)) in restored.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "{archive}: line {} of tree.txt differs", i + 1);
    }
    assert_eq!(restored, expected, "{archive}: the restored tree differs from tree.txt");
}

#[test]
fn golden_plaintext_archive_reads_and_restores() {
    check("plaintext.hsnap", &["--allow-plaintext"]);
}

#[test]
fn golden_age_x25519_archive_reads_and_restores() {
    let keys = tempfile::tempdir().unwrap();
    let identity = private_copy("identity.txt", keys.path());
    check("age-x25519.hsnap", &["-i", &identity]);
}

#[test]
fn golden_passphrase_archive_reads_and_restores() {
    let keys = tempfile::tempdir().unwrap();
    let passphrase = private_copy("passphrase.txt", keys.path());
    check("passphrase.hsnap", &["--passphrase-file", &passphrase]);
}

/// The check above can fail: the recorded tree is not empty, and a changed byte, mode or
/// xattr changes it.
#[test]
fn golden_tree_description_sees_what_it_records() {
    let expected = fs::read_to_string(golden("tree.txt")).unwrap();
    for needle in ["extents=", "hardlink=", "xattr.user.hero=", "link=redis.conf", "mode=1777", "uid=1000"] {
        assert!(expected.contains(needle), "tree.txt records no `{needle}`");
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), "x").unwrap();
    let before = describe(dir.path());
    fs::set_permissions(dir.path().join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_ne!(describe(dir.path()), before);
    let before = describe(dir.path());
    xattr::set(dir.path().join("f"), "user.x", b"1").unwrap();
    assert_ne!(describe(dir.path()), before);
}

/// The golden archives have no index trailer (decisions/D-17). As the parent of an
/// incremental whose index the state directory lacks: `latest` writes a full archive and
/// says why, an explicit parent is refused with what to do.
#[test]
fn a_golden_archive_as_parent_gives_the_clear_fallback() {
    let inst = Instance::with_inventory(&[], &fs::read_to_string(golden("inventory.yaml")).unwrap());
    let state = inst.dir.path().join("state").display().to_string();
    let mut restore = inst.args(&["restore", "--from", golden("plaintext.hsnap").to_str().unwrap(), "--allow-plaintext"]);
    restore.extend(["--state-dir".into(), state.clone()]);
    HERO_SNAP.ok(&restore);
    let folder = inst.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    let parent = folder.join("golden.hsnap");
    fs::copy(golden("plaintext.hsnap"), &parent).unwrap();
    let backup = |name: &str, since: &str| {
        let to = folder.join(name).display().to_string();
        let mut args = inst.args(&["backup", "--allow-live", "--no-encrypt", "--json", "--to", &to, "--since", since]);
        args.extend(["--state-dir".into(), state.clone()]);
        HERO_SNAP.run(&args)
    };

    let out = backup("next.hsnap", "latest");
    assert!(out.status.success(), "{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    let result = &last_json(&out)["result"];
    assert_eq!(result["manifest"]["format"], 1, "{result}");
    let warnings = result["manifest"]["warnings"].to_string();
    assert!(warnings.contains("full-no-parent") && warnings.contains("golden.hsnap") && warnings.contains("no index trailer"), "{warnings}");

    fs::remove_dir_all(&state).unwrap();
    let out = backup("named.hsnap", parent.to_str().unwrap());
    let err = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("golden.hsnap") && err.contains("holds no index of this archive") && err.contains("no index trailer"), "{err}");
    assert!(err.contains("without --since for a full archive"), "{err}");
    assert!(!folder.join("named.hsnap").exists());
}
