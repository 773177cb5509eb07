//! The operator's side: the `--json` event stream against its schema, typed outcomes and
//! exit codes, SIGINT/SIGTERM as clean cancellation, completions and man page, and
//! `list` / `prune` over a directory of real archives.

use crate::HERO_SNAP;
use test_support::fixtures;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;
use test_support::sys::TestCgroup;

use std::path::{Path, PathBuf};
use std::process::Stdio;

fn validator() -> jsonschema::Validator {
    let repo = fixtures::repo();
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo.join("docs/events.schema.json")).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// Every stdout line parsed, each checked against docs/events.schema.json.
fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    let validator = validator();
    let text = String::from_utf8(stdout.to_vec()).unwrap();
    assert!(text.ends_with('\n'), "output must end with a newline: {text}");
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| format!("{e} at {}", e.instance_path)).collect();
        assert!(errors.is_empty(), "line does not match the schema: {line}\n{}", errors.join("\n"));
        out.push(v);
    }
    assert!(!out.is_empty());
    for (i, v) in out.iter().enumerate() {
        assert_eq!(v["event"] == "result", i == out.len() - 1, "the result line is the last and only the last: {v}");
    }
    out
}

fn kinds(ev: &[serde_json::Value]) -> Vec<String> {
    ev.iter().map(|v| v["event"].as_str().unwrap().to_string()).collect()
}

fn outcome<'a>(list: &'a serde_json::Value, service: &str, surface: &str, context: Option<&str>) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|o| o["service"] == service && o["surface"] == surface && o["context"] == serde_json::json!(context))
        .unwrap_or_else(|| panic!("no outcome for {service}.{surface} {context:?} in {list}"))
}

#[test]
fn the_schema_rejects_what_the_stream_must_not_contain() {
    let v = validator();
    let good = serde_json::json!({"v": 1, "event": "outcome", "service": "s", "surface": null, "context": null, "status": "ok", "reason": null});
    assert!(v.is_valid(&good));
    for bad in [
        serde_json::json!({"v": 1, "event": "outcome", "service": "s", "surface": null, "context": null, "status": "fine", "reason": null}),
        serde_json::json!({"v": 1, "event": "outcome", "service": "s", "surface": null, "context": null, "status": "failed", "reason": null}),
        serde_json::json!({"v": 2, "event": "phase", "phase": "scan"}),
        serde_json::json!({"v": 1, "event": "phase", "phase": "scan", "extra": 1}),
        serde_json::json!({"v": 1, "event": "result", "ok": true, "command": "gc"}),
        serde_json::json!({"v": 1, "event": "result", "ok": false, "command": "gc", "result": []}),
        serde_json::json!({"v": 1, "event": "result", "ok": true, "command": "backup", "result": {"manifest": {}}}),
    ] {
        assert!(!v.is_valid(&bad), "accepted: {bad}");
    }
}

#[test]
fn json_event_stream_of_backup_verify_restore_matches_the_schema() {
    let src = Instance::new(&["default", "geomind"]);
    let archive = src.dir.path().join("a.hsnap");
    let out = HERO_SNAP.ok(&src.args(&["backup", "--json", "--no-encrypt", "--allow-live", "--to", archive.to_str().unwrap()]));
    let ev = events(&out.stdout);
    let k = kinds(&ev);
    for want in ["phase", "totals", "surface", "progress", "outcome", "result"] {
        assert!(k.iter().any(|x| x == want), "no `{want}` event in backup: {k:?}");
    }
    // Progress ends at the total.
    let last = ev.iter().rev().find(|v| v["event"] == "progress").unwrap();
    assert_eq!(last["bytes"], last["total_bytes"]);
    let result = ev.last().unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(result["command"], "backup");
    let oc = &result["result"]["outcomes"];
    assert_eq!(outcome(oc, "hero_foundry", "files", Some("geomind"))["status"], "ok");
    assert_eq!(outcome(oc, "hero_db", "data", None)["status"], "ok");
    let derived = outcome(oc, "hero_indexer", "index", None);
    assert_eq!(derived["status"], "skipped");
    assert!(derived["reason"].as_str().unwrap().contains("--include-derived"), "{derived}");
    assert_eq!(outcome(oc, "hero_indexer", "cache", None)["status"], "skipped");
    // The outcome events are the result's outcomes.
    let streamed: Vec<_> = ev.iter().filter(|v| v["event"] == "outcome").cloned().collect();
    assert_eq!(streamed.len(), oc.as_array().unwrap().len());
    assert_eq!(result["result"]["manifest"]["instance"], "test");

    let out = HERO_SNAP.ok(&["verify", "--json", "--allow-plaintext", "--from", archive.to_str().unwrap()]);
    let ev = events(&out.stdout);
    assert!(kinds(&ev).contains(&"progress".to_string()));
    let r = &ev.last().unwrap()["result"];
    assert_eq!(r["files"], ev.last().unwrap()["result"]["manifest"]["files"]);
    assert_eq!(outcome(&r["outcomes"], "hero_foundry", "git", Some("default"))["status"], "ok");

    let dst = Instance::new(&[]);
    let restore = dst.args(&["restore", "--json", "--allow-plaintext", "--from", archive.to_str().unwrap()]);
    let out = HERO_SNAP.ok(&restore);
    let ev = events(&out.stdout);
    let k = kinds(&ev);
    for want in ["phase", "totals", "progress", "outcome", "result"] {
        assert!(k.iter().any(|x| x == want), "no `{want}` event in restore: {k:?}");
    }
    let r = &ev.last().unwrap()["result"];
    assert_eq!(outcome(&r["outcomes"], "hero_foundry", "files", Some("geomind"))["status"], "ok");
    assert_eq!(outcome(&r["outcomes"], "hero_indexer", "index", None)["status"], "skipped");
    for surface in ["files", "git"] {
        let rel = format!("var/lib/hero/hero_foundry/contexts/geomind/{surface}");
        assert_same_tree(&src.path(&rel), &dst.path(&rel));
    }

    // A refused run prints one line: the result, with the error.
    let out = HERO_SNAP.run(&restore);
    assert_eq!(out.status.code(), Some(13));
    let ev = events(&out.stdout);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["ok"], false);
    assert_eq!(ev[0]["command"], "restore");
    assert_eq!(ev[0]["error"]["exit_code"], 13);

    // With the archive on stdout, the events go to stderr.
    let out = HERO_SNAP.ok(&src.args(&["backup", "--json", "--no-encrypt", "--allow-live", "--context", "geomind", "--to", "-"]));
    let ev = events(&out.stderr);
    assert_eq!(ev.last().unwrap()["ok"], true);
    let mut verify = HERO_SNAP.cmd();
    verify.args(["verify", "--allow-plaintext", "--from", "-"]).write_stdin(out.stdout);
    assert!(verify.output().unwrap().status.success(), "stdout carries only the archive");

    // Single-result commands print one schema-valid line too.
    for args in [vec!["inspect", "--json", "--allow-plaintext", "--from", archive.to_str().unwrap()], vec!["list", "--json", src.dir.path().to_str().unwrap()]]
    {
        let ev = events(&HERO_SNAP.ok(&args).stdout);
        assert_eq!(ev.len(), 1, "{args:?}");
    }
}

#[test]
fn a_missing_instance_surface_fails_the_backup_by_name() {
    let src = Instance::new(&["geomind"]);
    std::fs::remove_dir_all(src.path("var/lib/hero/hero_db/data")).unwrap();
    let archive = src.dir.path().join("a.hsnap");
    let out = HERO_SNAP.run(&src.args(&["backup", "--json", "--no-encrypt", "--allow-live", "--to", archive.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let ev = events(&out.stdout);
    let last = ev.last().unwrap();
    assert_eq!(last["ok"], false);
    assert_eq!(last["error"]["kind"], "incomplete");
    assert!(last["error"]["message"].as_str().unwrap().contains("hero_db.data"), "{last}");
    let failed = outcome(&last["result"]["outcomes"], "hero_db", "data", None);
    assert_eq!(failed["status"], "failed");
    assert!(failed["reason"].as_str().unwrap().contains("does not exist"), "{failed}");
    // What could be archived is archived, and says so.
    assert_eq!(outcome(&last["result"]["outcomes"], "hero_foundry", "files", Some("geomind"))["status"], "ok");
    assert!(archive.exists());

    // The text output names the failure, and the exit code is the same.
    std::fs::remove_file(&archive).unwrap();
    let out = HERO_SNAP.run(&src.args(&["backup", "--no-encrypt", "--allow-live", "--to", archive.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(9));
    let err = stderr(&out);
    assert!(err.contains("FAILED   hero_db.data"), "{err}");
    assert!(err.contains("1 failed"), "{err}");
}

#[test]
fn completions_and_man_page_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = HERO_SNAP.ok(&["completions", shell]);
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["backup", "restore", "verify", "prune", "list", "preflight"] {
            assert!(text.contains(sub), "{shell} completions lack `{sub}`");
        }
    }
    let out = HERO_SNAP.ok(&["man"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(".ie") || text.contains(".TH"), "not roff: {}", &text[..text.len().min(200)]);
    for sub in ["backup", "restore", "prune", "list", "completions"] {
        assert!(text.contains(sub), "man page lacks `{sub}`");
    }
    let dir = tempfile::tempdir().unwrap();
    HERO_SNAP.ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    for page in ["hero-snap.1", "hero-snap-backup.1", "hero-snap-prune.1"] {
        assert!(dir.path().join(page).exists(), "{page} not written");
    }
}

#[test]
fn list_and_prune_a_backup_directory() {
    let src = Instance::new(&["geomind"]);
    let (key, recipient) = age_key(src.dir.path());
    let backups = src.dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let b = |name: &str, extra: &[&str]| {
        let to = backups.join(name);
        let mut a = vec!["backup", "--allow-live", "--to", to.to_str().unwrap()];
        a.extend_from_slice(extra);
        HERO_SNAP.ok(&src.args(&a));
        to
    };
    let old = b("old.hsnap", &["--no-encrypt"]);
    let mid = b("mid.hsnap", &["-r", &recipient]);
    let newest = b("new.hsnap", &["-r", &recipient]);
    let ctx = b("geomind.hsnap", &["--no-encrypt", "--context", "geomind"]);
    std::fs::write(backups.join("notes.txt"), "not an archive").unwrap();
    let fake = backups.join("fake.hsnap");
    std::fs::write(&fake, [0x28, 0xb5, 0x2f, 0xfd, 0, 1, 2, 3]).unwrap();

    // Without an identity: plaintext archives are summarised, encrypted ones say so.
    let out = HERO_SNAP.ok(&["list", "--json", backups.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["result"].as_array().unwrap();
    assert_eq!(files.len(), 6);
    let by = |p: &Path| files.iter().find(|f| f["path"] == p.to_str().unwrap()).unwrap().clone();
    assert_eq!(by(&newest)["problem"], "encrypted (no identity given)");
    assert_eq!(by(&newest)["encrypted"], true);
    assert_eq!(by(&old)["summary"]["instance"], "test");
    assert_eq!(by(&ctx)["summary"]["contexts"], serde_json::json!(["geomind"]));
    assert!(by(&backups.join("notes.txt"))["problem"].as_str().unwrap().contains("not a hero-snap archive"));
    assert!(by(&fake)["problem"].is_string());
    // With the identity, every archive has a summary, newest first.
    let out = HERO_SNAP.ok(&["list", "--json", backups.to_str().unwrap(), "-i", key.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let order: Vec<&str> = v["result"].as_array().unwrap().iter().filter(|f| f["summary"].is_object()).map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(order, [&ctx, &newest, &mid, &old].map(|p| p.to_str().unwrap()));
    let text = String::from_utf8(HERO_SNAP.ok(&["list", backups.to_str().unwrap(), "-i", key.to_str().unwrap()]).stdout).unwrap();
    assert!(text.contains("hero_db,hero_foundry") && text.contains("new.hsnap"), "{text}");

    // Retention works per series (instance + selection): the per-context archive is the
    // newest of its own series and stays. A dry run deletes nothing.
    let prune = |extra: &[&str]| {
        let mut a = vec!["prune", "--json", backups.to_str().unwrap(), "--keep-last", "1", "-i", key.to_str().unwrap()];
        a.extend_from_slice(extra);
        HERO_SNAP.run(&a)
    };
    let out = prune(&["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut would: Vec<&str> = v["result"]["deleted"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    would.sort();
    assert_eq!(would, [mid.to_str().unwrap(), old.to_str().unwrap()]);
    assert!(old.exists() && mid.exists());

    // The free-space guard: reported with the result, exit 17, after pruning.
    let out = prune(&["--min-free", "1000000T"]);
    assert_eq!(out.status.code(), Some(17), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "no-space");
    assert_eq!(v["result"]["space"]["ok"], false);
    assert!(!old.exists() && !mid.exists(), "pruning happens before the guard");
    assert!(newest.exists() && ctx.exists());
    // Files that are not archives are never deleted.
    assert!(backups.join("notes.txt").exists() && fake.exists());

    // Without the identity the encrypted archive cannot be judged and is left alone; the
    // newest readable one of a series is never deleted.
    let out = HERO_SNAP.ok(&["prune", "--json", backups.to_str().unwrap(), "--keep-last", "1", "--min-free", "1K"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["deleted"], serde_json::json!([]));
    assert!(newest.exists() && ctx.exists());
    assert_eq!(v["result"]["space"]["ok"], true);
    // No rule, no deletion.
    let out = HERO_SNAP.run(&["prune", backups.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

/// Waits for a file another process creates (bounded, so a broken run fails the test).
fn wait_for(path: &Path, child: &mut std::process::Child) {
    for _ in 0..2400 {
        if path.exists() {
            return;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("hero-snap ended ({st}) before {} appeared", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn sigint_and_sigterm_cancel_a_backup_cleanly() {
    let fs = LoopFs::new("btrfs", 512);
    let root = fs.mount.join("root");
    fs.subvolume(&root.join("a"));
    fs.subvolume(&root.join("b"));
    std::fs::write(root.join("a/data.bin"), pseudo_random(3 << 20, 1)).unwrap();
    std::fs::write(root.join("b/data.bin"), pseudo_random(1 << 20, 2)).unwrap();
    let subvolumes_before = fs.subvolumes();
    let (cg_a, cg_b) = (TestCgroup::new("sig-a"), TestCgroup::new("sig-b"));
    // A process in each cgroup, so that freezing is real.
    let _sleepers = [cg_a.sleeper(), cg_b.sleeper()];
    let work = tempfile::tempdir().unwrap();
    let inv = work.path().join("inventory.yaml");
    std::fs::write(&inv, fixtures::inventory("signals", &[("cgroup_a", &cg_a.name), ("cgroup_b", &cg_b.name), ("dir", work.path().to_str().unwrap())]))
        .unwrap();
    let state = work.path().join("state");
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let archive = out_dir.join("a.hsnap");

    for (sig, json) in [(nix::sys::signal::Signal::SIGINT, false), (nix::sys::signal::Signal::SIGTERM, true)] {
        let _ = std::fs::remove_file(work.path().join("ready"));
        let _ = std::fs::remove_file(work.path().join("go"));
        let _ = std::fs::remove_file(work.path().join("post.log"));
        let mut cmd = HERO_SNAP.command();
        cmd.args([
            "backup",
            "--no-encrypt",
            "--to",
            archive.to_str().unwrap(),
            "--config",
            inv.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // The pre hook runs: the backup is under way. Signal it, then let the hook finish.
        wait_for(&work.path().join("ready"), &mut child);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        std::fs::write(work.path().join("go"), "").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{sig}: {}", stderr(&out));
        if json {
            let ev = events(&out.stdout);
            assert_eq!(ev.last().unwrap()["error"]["kind"], "cancelled");
        } else {
            assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
        }
        // Unwound: thawed, post hook run, no snapshot, no archive, no partial file, no journal.
        assert!(!cg_a.frozen() && !cg_b.frozen(), "{sig}: a cgroup is still frozen");
        assert!(std::fs::read_to_string(work.path().join("post.log")).unwrap_or_default().contains("post"), "{sig}: post hook did not run");
        assert_eq!(fs.subvolumes(), subvolumes_before, "{sig}: a snapshot was left behind");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "{sig}: the archive or its partial file was left");
        let journals: Vec<PathBuf> = std::fs::read_dir(&state)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("backup-")).collect())
            .unwrap_or_default();
        assert!(journals.is_empty(), "{sig}: journals left: {journals:?}");
    }
}

#[test]
fn sigterm_during_restore_rolls_back() {
    let src = Instance::new(&["geomind"]);
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--no-encrypt", "--allow-live", "--context", "geomind", "--to", archive.to_str().unwrap()]));
    // The target holds other data for the same context; its stop hook holds the restore
    // between extraction and swap until the test has sent the signal.
    let flags = tempfile::tempdir().unwrap();
    let f = flags.path().display();
    let inv = INVENTORY.replace(
        "  hero_foundry:\n    version: \"1.0.0\"\n    schema: 1\n",
        &format!("  hero_foundry:\n    version: \"1.0.0\"\n    schema: 1\n    hooks:\n      stop: {{argv: [sh, -c, 'touch {f}/ready; while [ ! -e {f}/go ]; do sleep 0.05; done']}}\n      start: {{argv: [sh, -c, 'echo start >> {f}/start.log']}}\n"),
    );
    let dst = Instance::with_inventory(&["geomind"], &inv);
    std::fs::write(dst.path("var/lib/hero/hero_foundry/contexts/geomind/files/local.txt"), "target's own").unwrap();
    let parent = dst.path("var/lib/hero/hero_foundry/contexts/geomind");
    let before = tree_hash(&dst.path("var/lib/hero"));
    let mut child = HERO_SNAP
        .command()
        .args(dst.args(&["restore", "--allow-plaintext", "--replace", "--from", archive.to_str().unwrap()]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&flags.path().join("ready"), &mut child);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    std::fs::write(flags.path().join("go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(tree_hash(&dst.path("var/lib/hero")), before, "the target changed");
    assert!(std::fs::read_dir(&parent).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".hero-snap-")));
    assert!(std::fs::read_to_string(flags.path().join("start.log")).unwrap_or_default().contains("start"), "the stopped service was not started again");
}
