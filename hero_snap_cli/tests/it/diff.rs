//! `diff` (issue 17 item 7): what changed between two archives, per surface, from their
//! headers and indexes; full archives, and incrementals compared as whole states without
//! their ancestors. s3.rs diffs two archives in a bucket.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const FILES: &str = "var/lib/hero/hero_foundry/contexts/geomind/files";

fn diff_json(old: &Path, new: &Path, key: &Path, paths: &[&str]) -> serde_json::Value {
    let mut args = vec!["diff", "--json", old.to_str().unwrap(), new.to_str().unwrap(), "-i", key.to_str().unwrap()];
    for p in paths {
        args.extend(["--path", p]);
    }
    last_json(&HERO_SNAP.ok(&args))["result"].clone()
}

/// (path, change, changed) of every entry of a diff's result in `surface` of geomind.
fn changes(d: &serde_json::Value, surface: &str) -> Vec<(String, String, Vec<String>)> {
    d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["service"] == "hero_foundry" && e["context"] == "geomind" && e["surface"] == surface)
        .map(|e| {
            let what = e["changed"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
            (e["path"].as_str().unwrap().to_string(), e["change"].as_str().unwrap().to_string(), what)
        })
        .collect()
}

fn has(c: &[(String, String, Vec<String>)], path: &str, change: &str, what: &[&str]) -> bool {
    c.iter().any(|(p, ch, w)| p == path && ch == change && w.iter().map(String::as_str).eq(what.iter().copied()))
}

fn backup(a: &Instance, to: &Path, recipient: &str, since: bool) {
    let mut args = vec!["backup", "--allow-live", "--to", to.to_str().unwrap(), "-r", recipient];
    if since {
        args.extend(["--since", "latest"]);
    }
    HERO_SNAP.ok(&a.args(&args));
}

#[test]
fn diff_names_what_was_added_removed_modified_and_whose_metadata_changed() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let (old, new) = (a.dir.path().join("old.hsnap"), a.dir.path().join("new.hsnap"));
    backup(&a, &old, &recipient, false);
    // Past the second of the archive's mtimes (tar keeps whole seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let files = a.path(FILES);
    fs::write(files.join("added.txt"), "new\n").unwrap();
    fs::remove_file(files.join("blob.bin")).unwrap();
    fs::write(files.join("docs/readme.md"), "# geomind, edited\n").unwrap();
    fs::create_dir(files.join("empty")).unwrap();
    let readme_mtime = fs::metadata(files.join("docs/readme.md")).unwrap().modified().unwrap();
    backup(&a, &new, &recipient, false);

    let d = diff_json(&old, &new, &key, &[]);
    let c = changes(&d, "files");
    assert!(has(&c, "added.txt", "added", &[]) && has(&c, "empty", "added", &[]), "{c:?}");
    assert!(has(&c, "blob.bin", "removed", &[]), "{c:?}");
    assert!(has(&c, "docs/readme.md", "modified", &["content", "mtime"]), "{c:?}");
    // The directory that gained and lost entries has a new mtime.
    assert!(has(&c, "", "metadata", &["mtime"]), "{c:?}");
    // Nothing else of geomind's files, and nothing of default's (untouched).
    assert_eq!(c.len(), 5, "{c:?}");
    assert!(d["entries"].as_array().unwrap().iter().all(|e| e["context"] != "default"), "{d}");
    assert_eq!((d["added"].as_u64(), d["removed"].as_u64()), (Some(2), Some(1)), "{d}");

    // Mode, owner and mtime alone: metadata, with the old and new values.
    let readme = files.join("docs/readme.md");
    fs::set_permissions(&readme, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&readme, Some(1234), Some(1234)).unwrap();
    filetime::set_file_mtime(&readme, filetime::FileTime::from_system_time(readme_mtime - std::time::Duration::from_secs(86400))).unwrap();
    let newer = a.dir.path().join("newer.hsnap");
    backup(&a, &newer, &recipient, false);
    let d = diff_json(&new, &newer, &key, &["docs/readme.md"]);
    assert_eq!(changes(&d, "files"), vec![("docs/readme.md".into(), "metadata".into(), vec!["mode".into(), "owner".into(), "mtime".into()])]);
    let e = &d["entries"][0];
    assert_eq!((e["old"]["mode"].as_str(), e["new"]["mode"].as_str(), e["new"]["owner"].as_str()), (Some("0644"), Some("0600"), Some("1234:1234")), "{e}");
    assert_eq!(d["entries"].as_array().unwrap().len(), 1, "readme.md of both contexts is picked, default's is unchanged: {d}");

    // Text: one block per surface, restic's marks, and the counts.
    let out =
        HERO_SNAP.ok(&["diff", old.to_str().unwrap(), new.to_str().unwrap(), "-i", key.to_str().unwrap(), "--path", "hero_foundry/contexts/geomind/files"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hero_foundry/contexts/geomind/files\n"), "{text}");
    assert!(text.contains("  + file     added.txt\n") && text.contains("  - file     blob.bin\n"), "{text}");
    assert!(text.contains("  M file     docs/readme.md  (content 10 -> 18 bytes"), "{text}");
    assert!(text.ends_with("added 2, removed 1, modified 1, metadata changed 1\n"), "{text}");

    // The same archive twice: nothing.
    let same = diff_json(&new, &new, &key, &[]);
    assert_eq!(same["entries"], serde_json::json!([]), "{same}");
}

#[test]
fn diff_compares_incrementals_as_whole_states_without_reading_their_ancestors() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let chain = a.dir.path().join("chain");
    fs::create_dir(&chain).unwrap();
    let (full, inc1, inc2) = (chain.join("0-full.hsnap"), chain.join("1-inc.hsnap"), chain.join("2-inc.hsnap"));
    backup(&a, &full, &recipient, false);
    let files = a.path(FILES);
    fs::set_permissions(files.join("blob.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(files.join("docs/readme.md"), "# geomind, edited\n").unwrap();
    backup(&a, &inc1, &recipient, true);
    fs::remove_file(files.join("docs/readme.md")).unwrap();
    backup(&a, &inc2, &recipient, true);
    // Ancestors are not needed: move the full archive away.
    let elsewhere = a.dir.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let full = {
        let to = elsewhere.join("0-full.hsnap");
        fs::rename(&full, &to).unwrap();
        to
    };

    // Consecutive incrementals: inherited files held by the same archive are unchanged.
    let d = diff_json(&inc1, &inc2, &key, &["hero_foundry/contexts/geomind/files"]);
    let c = changes(&d, "files");
    assert!(has(&c, "docs/readme.md", "removed", &[]), "{c:?}");
    assert!(!c.iter().any(|(p, _, _)| p == "blob.bin"), "blob.bin did not change between them: {c:?}");

    // The full against the second incremental: the edited file is gone, and blob.bin (held
    // by inc1, whose header diff does not read from inc2) is said to be archived again.
    let d = diff_json(&full, &inc2, &key, &["hero_foundry/contexts/geomind/files"]);
    let c = changes(&d, "files");
    assert!(has(&c, "docs/readme.md", "removed", &[]), "{c:?}");
    assert!(has(&c, "blob.bin", "metadata", &["rearchived"]), "{c:?}");
    // The full against the first incremental, which holds blob.bin's header: its mode.
    let d = diff_json(&full, &inc1, &key, &["blob.bin"]);
    assert!(has(&changes(&d, "files"), "blob.bin", "metadata", &["mode"]), "{d}");
    let c = changes(&diff_json(&full, &inc1, &key, &["docs/readme.md"]), "files");
    assert!(c.iter().any(|(p, ch, w)| p == "docs/readme.md" && ch == "modified" && w[0] == "content"), "{c:?}");
    assert_eq!(d["new"]["level"], 1, "{d}");
}

#[test]
fn diff_refuses_two_standard_inputs_and_a_damaged_archive() {
    let out = HERO_SNAP.run(&["diff", "-", "-", "--allow-plaintext"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("at most one archive from standard input"), "{}", stderr(&out));
    let a = Instance::new(&["geomind"]);
    let good = a.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", good.to_str().unwrap()]));
    let mut bytes = fs::read(&good).unwrap();
    bytes.truncate(bytes.len() / 2);
    let bad = a.dir.path().join("bad.hsnap");
    fs::write(&bad, bytes).unwrap();
    let out = HERO_SNAP.run(&["diff", "--allow-plaintext", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn diff_live_compares_an_archive_with_the_instance_on_disk() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let files = a.path(FILES);
    std::os::unix::fs::symlink("docs/readme.md", files.join("link")).unwrap();
    fs::hard_link(files.join("blob.bin"), files.join("z-blob.bin")).unwrap();
    let old = a.dir.path().join("old.hsnap");
    backup(&a, &old, &recipient, false);
    let live = |paths: &[&str]| {
        let mut args = vec!["diff", "--json", old.to_str().unwrap(), "--live", "-i", key.to_str().unwrap()];
        for p in paths {
            args.extend(["--path", p]);
        }
        last_json(&HERO_SNAP.ok(&a.args(&args)))["result"].clone()
    };
    // Right after the backup: nothing differs (symlinks, hard links, every surface).
    let d = live(&[]);
    assert_eq!(d["entries"], serde_json::json!([]), "{d}");
    assert_eq!(d["new"]["run_id"], "live");

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let readme = files.join("docs/readme.md");
    let mtime = fs::metadata(&readme).unwrap().modified().unwrap();
    // The same size, other bytes, the same mtime: only the hash tells.
    fs::write(&readme, "# GEOMIND\n").unwrap();
    filetime::set_file_mtime(&readme, filetime::FileTime::from_system_time(mtime)).unwrap();
    fs::set_permissions(files.join("blob.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(files.join("added.txt"), "new\n").unwrap();
    fs::remove_dir_all(a.path("var/lib/hero/hero_db/data")).unwrap();
    let d = live(&[]);
    let c = changes(&d, "files");
    assert!(has(&c, "docs/readme.md", "modified", &["content"]), "{c:?}");
    assert!(has(&c, "blob.bin", "metadata", &["mode"]) && has(&c, "added.txt", "added", &[]), "{c:?}");
    let db: Vec<&serde_json::Value> = d["entries"].as_array().unwrap().iter().filter(|e| e["service"] == "hero_db").collect();
    assert!(!db.is_empty() && db.iter().all(|e| e["change"] == "removed"), "hero_db's surface is gone from disk: {d}");
    assert!(d["entries"].as_array().unwrap().iter().all(|e| e["context"] != "default"), "{d}");
    // --path picks on both sides; the second name of blob.bin stays a hard link when
    // only it is picked.
    let d = live(&["blob.bin"]);
    assert_eq!(d["entries"].as_array().unwrap().len(), 1, "{d}");
    let d = live(&["z-blob.bin"]);
    assert_eq!(changes(&d, "files"), vec![("z-blob.bin".into(), "metadata".into(), vec!["mode".into()])], "{d}");
    assert_eq!((d["entries"][0]["new"]["type"].as_str(), d["entries"][0]["new"]["link"].as_str()), (Some("hardlink"), Some("blob.bin")), "{d}");
    // NEW and --live together: a usage error.
    let out = HERO_SNAP.run(&a.args(&["diff", old.to_str().unwrap(), old.to_str().unwrap(), "--live", "-i", key.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
