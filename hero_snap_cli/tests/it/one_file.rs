//! One file back (issue 17 item 7): `ls` lists an archive's entries, `extract` writes the
//! files a pattern picks into a new directory outside the instance, from a full archive
//! or a chain, each checked against the index; refused or failed, it leaves nothing.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const GEOMIND_FILES: &str = "var/lib/hero/hero_foundry/contexts/geomind/files";

/// An instance with the contexts default and geomind, a key, and a full archive of it:
/// (instance, identity file, archive, its run id, recipient).
fn archived() -> (Instance, PathBuf, PathBuf, String, String) {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    let archive = folder.join("0-full.hsnap");
    let out = HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--json", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    let run = last_json(&out)["result"]["manifest"]["run_id"].as_str().unwrap().to_string();
    (a, key, archive, run, recipient)
}

fn ls_json(archive: &Path, key: &Path, patterns: &[&str]) -> serde_json::Value {
    let mut args = vec!["ls", "--json", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()];
    args.extend_from_slice(patterns);
    last_json(&HERO_SNAP.ok(&args))["result"].clone()
}

/// `extract` with the instance's options; the output.
fn extract(a: &Instance, from: &Path, key: &Path, paths: &[&str], to: &Path) -> std::process::Output {
    let mut args = vec!["extract", "--from", from.to_str().unwrap(), "-i", key.to_str().unwrap(), "--to", to.to_str().unwrap()];
    for p in paths {
        args.extend(["--path", p]);
    }
    HERO_SNAP.run(&a.args(&args))
}

#[test]
fn ls_lists_every_entry_or_those_a_pattern_picks() {
    let (_a, key, archive, run, _) = archived();
    let all = ls_json(&archive, &key, &[]);
    assert_eq!(all["run_id"], run.as_str());
    let entries = all["entries"].as_array().unwrap();
    let readme = entries
        .iter()
        .find(|e| e["service"] == "hero_foundry" && e["context"] == "geomind" && e["surface"] == "files" && e["path"] == "docs/readme.md")
        .unwrap_or_else(|| panic!("docs/readme.md of geomind not listed: {all}"));
    assert_eq!(readme["type"], "file");
    assert_eq!(readme["size"], 10);
    assert_eq!(readme["in"], run.as_str());
    assert!(readme["mtime"].as_str().unwrap().ends_with('Z'), "{readme}");
    assert!(entries.iter().any(|e| e["service"] == "hero_db" && e["context"].is_null() && e["path"] == "" && e["type"] == "dir"), "{all}");

    // A path inside any surface: both contexts' copies.
    let picked = ls_json(&archive, &key, &["docs/readme.md"]);
    let contexts: Vec<&str> = picked["entries"].as_array().unwrap().iter().map(|e| e["context"].as_str().unwrap()).collect();
    assert_eq!(contexts, ["default", "geomind"], "{picked}");
    // The layout spelling with a glob: one context's surface, root and all.
    let geomind = ls_json(&archive, &key, &["hero_foundry/contexts/geomind/**"]);
    let geomind = geomind["entries"].as_array().unwrap();
    assert!(geomind.len() >= 5 && geomind.iter().all(|e| e["context"] == "geomind"), "{geomind:?}");

    // Text: one line per entry, with the path.
    let out = HERO_SNAP.ok(&["ls", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "**/*.md"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.starts_with("file") && l.contains("hero_foundry") && l.ends_with("docs/readme.md")), "{text}");
}

#[test]
fn extract_brings_back_one_file_and_a_directory_byte_identical() {
    let (a, key, archive, _, _) = archived();
    let out_dir = a.dir.path().join("one");
    let out = extract(&a, &archive, &key, &["hero_foundry/contexts/geomind/files/docs/readme.md"], &out_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = tree(&out_dir);
    let paths: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        ["", "hero_foundry", "hero_foundry/contexts", "hero_foundry/contexts/geomind", "hero_foundry/contexts/geomind/files"]
            .into_iter()
            .chain(["hero_foundry/contexts/geomind/files/docs", "hero_foundry/contexts/geomind/files/docs/readme.md"])
            .collect::<Vec<_>>(),
        "only the file and the directories on its way"
    );
    let source = tree(&a.path(GEOMIND_FILES));
    assert_eq!(got["hero_foundry/contexts/geomind/files/docs/readme.md"], source["docs/readme.md"], "content, mode, owner or mtime differ");
    assert_eq!(got["hero_foundry/contexts/geomind/files/docs"], source["docs"], "the directory on the way lost its metadata");
    assert!(leftovers(a.dir.path()).is_empty(), "{:?}", leftovers(a.dir.path()));

    // A directory by its path inside the surface, and a whole surface by the layout.
    let dirs = a.dir.path().join("dirs");
    let out = extract(&a, &archive, &key, &["hero_foundry/contexts/geomind/files/docs", "hero_db"], &dirs);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&dirs.join("hero_foundry/contexts/geomind/files/docs"), &a.path(&format!("{GEOMIND_FILES}/docs")));
    assert_same_tree(&dirs.join("hero_db/instance/data"), &a.path("var/lib/hero/hero_db/data"));
    assert!(!dirs.join("hero_foundry/contexts/default").exists() && !dirs.join("hero_foundry/contexts/geomind/files/blob.bin").exists());

    // Into an empty directory that exists; --json names every entry written.
    let empty = a.dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let mut args = a.args(&["extract", "--json", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--path", "blob.bin"]);
    args.extend(["--to".into(), empty.display().to_string()]);
    let r = last_json(&HERO_SNAP.ok(&args))["result"].clone();
    assert_eq!(r["files"], 2, "{r}");
    assert_eq!(
        fs::read(empty.join("hero_foundry/contexts/default/files/blob.bin")).unwrap(),
        fs::read(a.path("var/lib/hero/hero_foundry/contexts/default/files/blob.bin")).unwrap()
    );

    // A pattern that picks nothing: exit 2, nothing written.
    let none = a.dir.path().join("none");
    let out = extract(&a, &archive, &key, &["no/such/file"], &none);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no member of the archive matches"), "{}", stderr(&out));
    assert!(!none.exists() && leftovers(a.dir.path()).is_empty());
}

#[test]
fn extract_and_ls_over_a_chain_read_only_the_ancestors_they_need() {
    let (a, key, full, full_run, recipient) = archived();
    let db = a.path("var/lib/hero/hero_db/data");
    fs::write(db.join("dump.rdb"), pseudo_random(200_000, 5)).unwrap();
    fs::write(a.path(&format!("{GEOMIND_FILES}/new.txt")), "new\n").unwrap();
    let inc = full.with_file_name("1-inc.hsnap");
    let out = HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--json", "--to", inc.to_str().unwrap(), "-r", &recipient, "--since", "latest"]));
    let inc_run = last_json(&out)["result"]["manifest"]["run_id"].as_str().unwrap().to_string();

    // ls shows the whole state, each file with the archive that holds it.
    let listed = ls_json(&inc, &key, &["hero_foundry/contexts/geomind/files/**", "hero_db/instance/data/dump.rdb"]);
    let held = |path: &str| listed["entries"].as_array().unwrap().iter().find(|e| e["path"] == path).map(|e| e["in"].clone());
    assert_eq!(held("docs/readme.md"), Some(full_run.as_str().into()), "{listed}");
    assert_eq!(held("new.txt"), Some(inc_run.as_str().into()), "{listed}");
    assert_eq!(held("dump.rdb"), Some(inc_run.as_str().into()), "{listed}");
    let order: Vec<&str> = listed["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(order, ["dump.rdb", "blob.bin", "docs", "docs/readme.md", "new.txt"], "not in walk order: {listed}");

    // An unchanged file comes from the full archive, read for it.
    let out_dir = a.dir.path().join("from-chain");
    let mut args = a.args(&["extract", "--json", "--from", inc.to_str().unwrap(), "-i", key.to_str().unwrap(), "--path", "docs", "--path", "new.txt"]);
    args.extend(["--to".into(), out_dir.display().to_string()]);
    let r = last_json(&HERO_SNAP.ok(&args))["result"].clone();
    assert_eq!(r["ancestors"], serde_json::json!([full_run]), "{r}");
    for (name, ctx) in [("docs/readme.md", "geomind"), ("docs/readme.md", "default"), ("new.txt", "geomind")] {
        let rel = format!("hero_foundry/contexts/{ctx}/files/{name}");
        assert_eq!(tree(&out_dir.join(&rel))[""], tree(&a.path(&format!("var/lib/hero/{rel}")))[""], "{rel}");
    }
    assert_same_tree(&out_dir.join("hero_foundry/contexts/geomind/files/docs"), &a.path(&format!("{GEOMIND_FILES}/docs")));

    // A file only the newest holds: the full archive is passed by its manifest alone.
    let newest_only = a.dir.path().join("newest-only");
    let mut args = a.args(&["extract", "--json", "--from", inc.to_str().unwrap(), "-i", key.to_str().unwrap(), "--path", "hero_db/instance/data/dump.rdb"]);
    args.extend(["--to".into(), newest_only.display().to_string()]);
    let r = last_json(&HERO_SNAP.ok(&args))["result"].clone();
    assert_eq!(r["ancestors"], serde_json::json!([]), "{r}");
    assert_eq!(fs::read(newest_only.join("hero_db/instance/data/dump.rdb")).unwrap(), fs::read(db.join("dump.rdb")).unwrap());
    assert!(leftovers(a.dir.path()).is_empty(), "{:?}", leftovers(a.dir.path()));
}

#[test]
fn extract_refuses_a_destination_in_a_live_surface_or_with_files() {
    let (a, key, archive, _, _) = archived();
    let before = tree_hash(&a.path("var/lib/hero"));
    for to in [a.path(&format!("{GEOMIND_FILES}/restored")), a.path("var/lib/hero/hero_db/data"), a.path("var/lib/hero/hero_foundry/contexts/newctx/files")] {
        let out = extract(&a, &archive, &key, &["docs/readme.md"], &to);
        assert_eq!(out.status.code(), Some(7), "{}: {}", to.display(), stderr(&out));
        assert!(stderr(&out).contains("overlaps the live surface"), "{}", stderr(&out));
    }
    assert_eq!(tree_hash(&a.path("var/lib/hero")), before, "a refused extract wrote into the instance");
    assert!(leftovers(&a.root).is_empty(), "{:?}", leftovers(&a.root));

    // A directory that holds something, and a file: refused, untouched.
    let full = a.dir.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("mine.txt"), "mine").unwrap();
    let out = extract(&a, &archive, &key, &["docs/readme.md"], &full);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(&full).unwrap().count(), 1);
    let out = extract(&a, &archive, &key, &["docs/readme.md"], &full.join("mine.txt"));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    // A missing parent: say so.
    let out = extract(&a, &archive, &key, &["docs/readme.md"], &a.dir.path().join("no/such/dir"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(leftovers(a.dir.path()).is_empty(), "{:?}", leftovers(a.dir.path()));
}

/// A plaintext archive whose copy of one file was altered inside the tar (the zstd and
/// tar layers stay valid): verify, ls and extract fail naming that file, and extract
/// leaves nothing behind, not even the files it had written.
#[test]
fn a_damaged_file_fails_extract_naming_it_and_leaves_nothing() {
    let a = Instance::new(&["default", "geomind"]);
    let dir = a.dir.path();
    let good = dir.join("plain.hsnap");
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", good.to_str().unwrap()]));
    let tar = dir.join("plain.tar");
    let st = Command::new("zstd").args(["-q", "-d", "-f", "-o"]).arg(&tar).arg(&good).status().unwrap();
    assert!(st.success());
    let mut bytes = fs::read(&tar).unwrap();
    let at = bytes.windows(10).position(|w| w == b"# geomind\n").expect("the readme's content in the tar");
    bytes[at + 2] = b'G';
    fs::write(&tar, &bytes).unwrap();
    let bad = dir.join("bad.hsnap");
    let st = Command::new("zstd").args(["-q", "-f", "-o"]).arg(&bad).arg(&tar).status().unwrap();
    assert!(st.success());
    let member = "services/hero_foundry/contexts/geomind/files/docs/readme.md";

    let out = HERO_SNAP.run(&["ls", "--allow-plaintext", "--from", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(member), "{}", stderr(&out));
    let to = dir.join("out");
    let out = HERO_SNAP.run(&a.args(&["extract", "--allow-plaintext", "--from", bad.to_str().unwrap(), "--path", "docs", "--to", to.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(member) && stderr(&out).contains("does not match"), "{}", stderr(&out));
    assert!(!to.exists(), "a failed extract left its destination");
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
    // The good archive gives the same file.
    HERO_SNAP.ok(&a.args(&["extract", "--allow-plaintext", "--from", good.to_str().unwrap(), "--path", "docs", "--to", to.to_str().unwrap()]));
    assert_eq!(fs::read_to_string(to.join("hero_foundry/contexts/geomind/files/docs/readme.md")).unwrap(), "# geomind\n");
}

/// An `extract` killed while it writes leaves its staging directory beside `--to` and its
/// journal in the state directory; `gc` removes both, and `--to` was never created.
#[test]
fn gc_removes_what_a_killed_extract_left() {
    let (a, key, archive, _, _) = archived();
    let dir = a.dir.path().join("restored");
    fs::create_dir_all(&dir).unwrap();
    let to = dir.join("out");
    let args = vec!["extract", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--path", "docs", "--to", to.to_str().unwrap()];
    let out = HERO_SNAP.command().env("HERO_SNAP_FAILPOINT", "extract-file").args(a.args(&args)).output().unwrap();
    assert_eq!(out.status.code(), None, "killed at the failpoint: {}", stderr(&out));
    let staged = leftovers(&dir);
    assert_eq!(staged.len(), 1, "the staging directory is left: {staged:?}");
    let state = a.path("var/lib/hero-snap");
    let journals = || fs::read_dir(&state).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("extract-")).count();
    assert_eq!(journals(), 1);

    let gc = last_json(&HERO_SNAP.ok(&a.args(&["gc", "--json"])));
    let action = gc["result"][0]["action"].as_str().unwrap_or_default().to_string();
    assert!(action.starts_with("extract-staging-removed") && action.contains(".hero-snap-"), "{gc}");
    assert!(leftovers(&dir).is_empty() && !to.exists(), "{:?}", leftovers(&dir));
    assert_eq!(journals(), 0);
    // The next extract to the same place works.
    HERO_SNAP.ok(&a.args(&args));
    assert_eq!(fs::read_to_string(to.join("hero_foundry/contexts/geomind/files/docs/readme.md")).unwrap(), "# geomind\n");
}
