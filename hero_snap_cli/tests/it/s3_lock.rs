//! History a compromised host cannot erase, and bandwidth limits (issue 16, items 5 and 6),
//! against the real Ceph gateway of scripts/ceph-rgw: a second user under the bucket policy
//! of docs/DEPLOYMENT.md, a bucket with object lock, and rates measured here from bytes and
//! wall time.

use crate::s3::big_instance;
use crate::HERO_SNAP;
use test_support::prelude::*;
use test_support::rgw::Gateway;

use std::fs;
use std::time::Instant;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One gateway for every scenario: starting Ceph costs ~20 s.
#[test]
fn append_only_storage_and_bandwidth_limits() {
    let gw = Gateway::start(HERO_SNAP);
    backup_keys_cannot_delete(&gw);
    locked_archives_outlive_prune(&gw);
    limits_hold_the_rate(&gw);
}

/// The policy of docs/DEPLOYMENT.md, verbatim: it names the bucket `hero-backups` and the
/// user `hero-backup`.
fn runbook_policy() -> String {
    let doc = fs::read_to_string(test_support::fixtures::repo().join("docs/DEPLOYMENT.md")).unwrap();
    let blocks = crate::deployment::blocks(&doc);
    let mut json = blocks.into_iter().filter(|(info, _)| info == "json").map(|(_, body)| body);
    let policy = json.next().expect("DEPLOYMENT.md has the bucket policy as a json block");
    assert!(policy.contains("user/hero-backup") && policy.contains(":::hero-backups"), "{policy}");
    policy
}

fn backup_keys_cannot_delete(gw: &Gateway) {
    gw.make_bucket("hero-backups");
    let machine = gw.add_user("hero-backup");
    let policy = gw.dir.path().join("policy.json");
    fs::write(&policy, runbook_policy()).unwrap();
    let (status, body) = gw.api("PUT", "/hero-backups?policy=", Some(policy.as_path()));
    assert!(status == 200 || status == 204, "PUT ?policy: {status} {body}");

    // The machine's keys back up and list.
    let a = Instance::new(&["default"]);
    let url = |name: &str| format!("s3://hero-backups/host/{name}");
    for name in ["old.hsnap", "new.hsnap"] {
        let out = gw.hero_snap_as(&machine, &a.args(&["backup", "--allow-live", "--no-encrypt", "--to", &url(name)]), &[]);
        assert!(out.status.success(), "backup with the machine's keys: {}", stderr(&out));
    }
    let out = gw.hero_snap_as(&machine, &strings(&["list", "--json", "s3://hero-backups/host/"]), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last_json(&out)["result"].as_array().unwrap().len(), 2);
    // A backup that fails after parts went out aborts its own upload: allowed.
    let big = big_instance(16);
    let late = big.path("var/lib/hero/hero_foundry/contexts/default/git/objects/suid");
    fs::write(&late, b"x").unwrap();
    fs::set_permissions(&late, <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o4755)).unwrap();
    let out = gw.hero_snap_as(&machine, &big.args(&["backup", "--allow-live", "--no-encrypt", "--to", &url("failed.hsnap")]), &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(gw.uploads("hero-backups").is_empty(), "the machine could not abort its own upload");

    // The machine's keys cannot prune: exit 8, the archive named, deletes said to be denied.
    let prune = strings(&["prune", "s3://hero-backups/host/", "--keep-last", "1", "--allow-plaintext"]);
    let out = gw.hero_snap_as(&machine, &prune, &[]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&url("old.hsnap")) && err.contains("denies deletes"), "{err}");
    assert!(gw.exists("hero-backups", "host/old.hsnap"));
    // The owner's keys can.
    gw.ok(&prune);
    assert!(!gw.exists("hero-backups", "host/old.hsnap") && gw.exists("hero-backups", "host/new.hsnap"));
}

fn locked_archives_outlive_prune(gw: &Gateway) {
    // A bucket without object lock cannot hold a locked archive: exit 8, said so.
    let out = gw.hero_snap(
        &Instance::new(&["default"]).args(&["backup", "--allow-live", "--no-encrypt", "--to", "s3://hero-backups/l.hsnap", "--s3-object-lock", "1"]),
        &[],
    );
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("object lock"), "{}", stderr(&out));
    gw.make_locked_bucket("vault");
    // The lock goes on the request that creates the object: CreateMultipartUpload for an
    // archive of several parts, the PUT of a small one.
    let (big, small) = (big_instance(12), Instance::new(&["default"]));
    let backup = |a: &Instance, name: &str, lock: bool| {
        let url = format!("s3://vault/h/{name}");
        let mut args = vec!["backup", "--allow-live", "--no-encrypt", "--to", url.as_str()];
        if lock {
            args.extend(["--s3-object-lock", "1"]);
        }
        gw.ok(&a.args(&args));
    };
    backup(&big, "locked.hsnap", true);
    backup(&small, "locked-small.hsnap", true);
    backup(&small, "plain.hsnap", false);
    backup(&small, "newest.hsnap", false);
    for key in ["locked.hsnap", "locked-small.hsnap"] {
        let (status, body) = gw.api("GET", &format!("/vault/h/{key}?retention="), None);
        assert_eq!(status, 200, "{key}: {body}");
        assert!(body.contains("<Mode>COMPLIANCE</Mode>") && body.contains("<RetainUntilDate>"), "{key}: {body}");
    }

    // The store refuses to delete the locked version, even to the owner.
    let v = gw.versions("vault", "h/locked.hsnap");
    assert_eq!(v.len(), 1, "{v:?}");
    let (status, body) = gw.api("DELETE", &format!("/vault/h/locked.hsnap?versionId={}", v[0]), None);
    assert_eq!(status, 403, "deleting a locked version: {body}");
    // A plain delete only hides it behind a delete marker: the version is still readable,
    // and deleting the marker brings the archive back.
    let (status, _) = gw.api("DELETE", "/vault/h/locked.hsnap", None);
    assert_eq!(status, 204);
    assert!(!gw.exists("vault", "h/locked.hsnap"));
    let (status, _) = gw.api("HEAD", &format!("/vault/h/locked.hsnap?versionId={}", v[0]), None);
    assert_eq!(status, 200, "the locked version is gone");
    let (_, listing) = gw.api("GET", "/vault?prefix=h%2Flocked.hsnap&versions=", None);
    let marker = listing.split("<DeleteMarker>").nth(1).and_then(|m| m.split("<VersionId>").nth(1)).and_then(|m| m.split("</VersionId>").next()).unwrap();
    let (status, body) = gw.api("DELETE", &format!("/vault/h/locked.hsnap?versionId={marker}"), None);
    assert_eq!(status, 204, "{body}");
    assert!(gw.exists("vault", "h/locked.hsnap"), "removing the delete marker did not bring the archive back");

    // prune: the locked archive is kept with its reason, the other one deleted by version
    // (no version left behind), and the run succeeds.
    let out = gw.ok(&strings(&["prune", "--json", "s3://vault/h/", "--keep-last", "1", "--allow-plaintext"]));
    let r = &last_json(&out)["result"];
    assert_eq!(r["deleted"], serde_json::json!(["s3://vault/h/plain.hsnap"]), "{r}");
    for key in ["locked.hsnap", "locked-small.hsnap"] {
        let path = format!("s3://vault/h/{key}");
        let locked = r["kept"].as_array().unwrap().iter().find(|k| k["path"] == path.as_str()).expect("locked archive not kept");
        assert!(locked["reasons"][0].as_str().unwrap().starts_with("locked until 20"), "{locked}");
    }
    assert!(gw.versions("vault", "h/plain.hsnap").is_empty(), "prune left a version of the archive it deleted");
    assert!(gw.exists("vault", "h/locked.hsnap") && gw.exists("vault", "h/newest.hsnap"));
    let text = String::from_utf8(gw.ok(&strings(&["prune", "s3://vault/h/", "--keep-last", "1", "--allow-plaintext"])).stdout).unwrap();
    assert!(text.contains("h/locked.hsnap  (locked until"), "{text}");
}

/// Bytes per second of a run that moved `bytes`, from its wall time.
fn timed(gw: &Gateway, args: &[String]) -> f64 {
    let start = Instant::now();
    gw.ok(args);
    start.elapsed().as_secs_f64()
}

fn limits_hold_the_rate(gw: &Gateway) {
    gw.make_bucket("rate");
    let a = big_instance(24);
    let limit = 4.0 * 1024.0 * 1024.0;
    let free = timed(gw, &a.args(&["backup", "--allow-live", "--no-encrypt", "--to", "s3://rate/free.hsnap"]));
    let up = timed(gw, &a.args(&["backup", "--allow-live", "--no-encrypt", "--to", "s3://rate/a.hsnap", "--limit-upload", "4M"]));
    let (status, head) = gw.api("GET", "/rate?prefix=a.hsnap", None);
    assert_eq!(status, 200);
    let bytes: f64 = head.split("<Size>").nth(1).unwrap().split('<').next().unwrap().parse().unwrap();
    let down = timed(gw, &strings(&["verify", "--allow-plaintext", "--from", "s3://rate/a.hsnap", "--limit-download", "4M"]));
    let mib = |secs: f64| bytes / secs / 1024.0 / 1024.0;
    eprintln!(
        "{:.1} MiB at a 4 MiB/s limit: upload {up:.2} s = {:.2} MiB/s, download {down:.2} s = {:.2} MiB/s; unlimited upload {free:.2} s = {:.1} MiB/s",
        bytes / 1048576.0,
        mib(up),
        mib(down),
        mib(free)
    );
    for (what, secs) in [("upload", up), ("download", down)] {
        let rate = bytes / secs;
        assert!((0.9 * limit..=1.1 * limit).contains(&rate), "{what}: {:.2} MiB/s, not within 10 % of 4 MiB/s", mib(secs));
    }
    // Limits are for s3:// only.
    let out = gw.hero_snap(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", "/dev/null", "--limit-upload", "4M"]), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
