//! Runs every command of docs/DEPLOYMENT.md, in order, on a demo instance. The other
//! blocks are checked without running them:
//! - `sh systemd` blocks run only where systemd is the init; elsewhere the units they
//!   install are checked with `systemd-analyze verify`;
//! - `yaml inventory` blocks (a part of an inventory, e.g. `notify:`) are added to the
//!   demo's inventory, which `hero-snap inventory` must then load;
//! - `sh internet` blocks need a service on the internet (ntfy.sh, hc-ping.com), which the
//!   test machines cannot reach: they are not run, only checked with `bash -n`;
//! - `json` blocks (the bucket policy) must parse as JSON here, and `s3_lock.rs` applies
//!   the policy to a gateway.
//!
//! Any other block type fails the test: every block is run or checked.

use crate::HERO_SNAP;
use test_support::fixtures;
use test_support::prelude::*;
use test_support::rgw::Gateway;

use std::fs;
use std::path::Path;
use std::process::Command;

/// The doc's code blocks: (info string, body).
pub(crate) fn blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in doc.lines() {
        match (&mut cur, line.strip_prefix("```")) {
            (None, Some(info)) => cur = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => out.push(cur.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(cur.is_none(), "unclosed code block");
    out
}

#[test]
fn every_runbook_command_runs() {
    let repo = fixtures::repo();
    let doc = std::fs::read_to_string(repo.join("docs/DEPLOYMENT.md")).unwrap();
    let all = blocks(&doc);
    let systemd_is_init = Path::new("/run/systemd/system").exists();
    let mut script = String::from("set -euo pipefail\n");
    let mut inventory_parts = Vec::new();
    let mut ran = 0;
    for (info, body) in &all {
        match info.as_str() {
            "sh" => {
                script.push_str(body);
                ran += body.lines().filter(|l| !l.trim().is_empty()).count();
            }
            "sh systemd" if systemd_is_init => script.push_str(body),
            "sh systemd" => {
                let units: Vec<&str> = body.split_whitespace().filter(|w| w.starts_with("contrib/systemd/")).collect();
                assert!(!units.is_empty());
                let st = Command::new("systemd-analyze").arg("verify").args(&units).current_dir(&repo).status().unwrap();
                assert!(st.success(), "systemd-analyze verify {units:?}");
            }
            "yaml inventory" => inventory_parts.push(body.clone()),
            "sh internet" => {
                let st = Command::new("bash").args(["-n", "-c", body]).status().unwrap();
                assert!(st.success(), "bash -n: a syntax error in:\n{body}");
            }
            "json" => {
                serde_json::from_str::<serde_json::Value>(body).unwrap_or_else(|e| panic!("a json block of DEPLOYMENT.md does not parse: {e}\n{body}"));
            }
            other => panic!("code block `{other}` in DEPLOYMENT.md is neither run nor checked"),
        }
    }
    assert!(ran >= 20, "only {ran} commands found");

    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let st = Command::new(repo.join("fixtures/demo/make-instance")).arg(&root).args(["default", "geomind"]).status().unwrap();
    assert!(st.success());
    // The off-site section backs up to object storage: a real Ceph gateway, whose endpoint
    // and keys go where the runbook keeps them ($KEYS/s3.env).
    // The bucket has object lock, as the runbook's append-only section asks; the owner's keys
    // serve as both the machine's and the pruning host's.
    let gateway = Gateway::start(HERO_SNAP);
    gateway.make_locked_bucket("runbook");
    fs::create_dir_all(work.path().join("keys")).unwrap();
    let s3_env: String = gateway.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    fs::write(work.path().join("keys/s3.env"), &s3_env).unwrap();
    fs::write(work.path().join("keys/s3-owner.env"), s3_env).unwrap();
    let bin_dir = HERO_SNAP.path().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&repo)
        .env("PATH", path)
        .env("HERO_SNAP_CONFIG", repo.join("fixtures/demo/inventory.yaml"))
        .env("HERO_SNAP_ROOT", &root)
        .env("BACKUPS", work.path().join("backups"))
        .env("OFFSITE", work.path().join("offsite"))
        .env("KEYS", work.path().join("keys"))
        .env("TEXTFILE", work.path().join("textfile"))
        .env("S3_BUCKET", "runbook")
        .output()
        .unwrap();
    assert!(out.status.success(), "the runbook failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    // What the runbook promises happened.
    assert!(root.join("var/lib/hero/hero_collab/contexts/geomind-moved/collab.db").exists());
    // The context move printed its downtime: the final incremental, pre-flight and restore.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let downtime = stdout.lines().find_map(|l| l.strip_prefix("downtime: ")).expect("the runbook prints the move's downtime");
    eprintln!("context move downtime (final incremental + pre-flight + restore, demo data): {downtime}");
    assert!(work.path().join("offsite/hero-first.hsnap").exists());
    assert!(work.path().join("backups/one-file-back/hero_collab/contexts/geomind/db/collab.db").exists(), "one file back was not extracted");
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    assert!(gateway.uploads("runbook").is_empty());
    let key = format!("{}/hero-", host.trim());
    let (status, listing) = gateway.api("GET", "/runbook", None);
    assert!(status == 200 && listing.contains(&key), "no archive in the bucket: {listing}");
    let verified = std::fs::read_to_string(work.path().join("textfile/hero-snap-verify.prom")).unwrap();
    assert!(verified.contains("hero_snap_verify_last_run_success{instance=\"hero-demo\",selection=\"whole instance\"} 1"), "{verified}");
    let metrics = std::fs::read_to_string(work.path().join("textfile/hero-snap.prom")).unwrap();
    assert!(metrics.contains("hero_snap_backup_last_run_success{instance=\"hero-demo\",selection=\"whole instance\"} 1"), "{metrics}");
    let pruned = std::fs::read_to_string(work.path().join("textfile/hero-snap-prune.prom")).unwrap();
    assert!(pruned.contains("hero_snap_prune_last_run_success{instance=\"hero-demo\",selection=\"whole instance\"} 1"), "{pruned}");
    let pf = std::fs::read_to_string(work.path().join("backups/preflight.json")).unwrap();
    assert!(pf.contains("\"kind\":\"collision\""), "{pf}");
    inventory_parts_load(&repo, &root, work.path(), &inventory_parts);
}

/// Each `yaml inventory` block, added to the demo's inventory, loads.
fn inventory_parts_load(repo: &Path, root: &Path, work: &Path, parts: &[String]) {
    assert!(!parts.is_empty(), "no `yaml inventory` block found");
    let demo = fs::read_to_string(repo.join("fixtures/demo/inventory.yaml")).unwrap();
    for (i, part) in parts.iter().enumerate() {
        let file = work.join(format!("inventory-part-{i}.yaml"));
        fs::write(&file, format!("{demo}{part}")).unwrap();
        let out = HERO_SNAP.run(&["inventory", "-c", file.to_str().unwrap(), "--root", root.to_str().unwrap()]);
        assert!(out.status.success(), "DEPLOYMENT.md's inventory block {part} does not load: {}", stderr(&out));
    }
}
