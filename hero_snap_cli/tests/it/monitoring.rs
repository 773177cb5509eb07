//! Running it every day (issue 16): the run record every backup leaves in the state
//! directory, `status` and its `--max-age` verdict (exit 18), and the `--metrics-file` of
//! `backup` and `prune`, checked by `promtool check metrics` (Debian's `prometheus`
//! package, scripts/install-deps).

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The metrics file checked by promtool (format and naming lint), then its samples by
/// `name{labels}`.
fn metrics(path: &Path) -> BTreeMap<String, f64> {
    let text = fs::read_to_string(path).unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/install-deps installs it)");
    use std::io::Write;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool check metrics: {}{}\n{text}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        samples.insert(key.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {line}")));
    }
    samples
}

fn sample(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    let key = format!("{name}{{instance=\"test\",selection=\"whole instance\"}}");
    *m.get(&key).unwrap_or_else(|| panic!("no {key} in {m:?}"))
}

/// `status --json` (with extra options): the exit code and the result line.
fn status(inst: &Instance, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut a = vec!["status", "--json"];
    a.extend_from_slice(extra);
    let out = HERO_SNAP.run(&inst.args(&a));
    (out.status.code(), last_json(&out))
}

fn backup(inst: &Instance, to: &str, extra: &[&str]) -> Output {
    let mut a = vec!["backup", "--allow-live", "--to", to];
    a.extend_from_slice(extra);
    HERO_SNAP.run(&inst.args(&a))
}

#[test]
fn status_and_metrics_follow_good_and_failed_runs() {
    let inst = Instance::new(&["default", "geomind"]);
    let work = inst.dir.path();
    let prom = work.join("textfile/hero-snap.prom");
    fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let prom_arg = prom.to_str().unwrap();

    // Nothing recorded yet: --max-age says so, Nagios-style.
    let (code, v) = status(&inst, &["--max-age", "26h"]);
    assert_eq!(code, Some(18), "{v}");
    assert_eq!(v["error"]["kind"], "stale");
    assert!(v["error"]["message"].as_str().unwrap().contains("no backup recorded"), "{v}");

    let archive = work.join("good.hsnap");
    let out = backup(&inst, archive.to_str().unwrap(), &["--no-encrypt", "--metrics-file", prom_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, v) = status(&inst, &["--max-age", "26h"]);
    assert_eq!(code, Some(0), "{v}");
    let series = &v["result"]["series"];
    assert_eq!(series.as_array().unwrap().len(), 1, "{v}");
    let good = series[0]["last"].clone();
    assert_eq!((good["ok"].as_bool(), good["exit_code"].as_i64()), (Some(true), Some(0)), "{good}");
    assert_eq!(good["archive_bytes"].as_u64(), Some(fs::metadata(&archive).unwrap().len()));
    assert!(good["files"].as_u64().unwrap() > 0 && good["bytes"].as_u64().unwrap() > 0, "{good}");
    assert_eq!(good["consistency"], "live");
    assert_eq!(series[0]["last_good"], good);
    assert_eq!(series[0]["stale"], false);
    let m = metrics(&prom);
    assert_eq!(sample(&m, "hero_snap_backup_last_run_success"), 1.0);
    assert_eq!(sample(&m, "hero_snap_backup_archive_bytes"), fs::metadata(&archive).unwrap().len() as f64);
    let success = sample(&m, "hero_snap_backup_last_success_timestamp_seconds");
    assert_eq!(success, sample(&m, "hero_snap_backup_last_run_timestamp_seconds"));

    // A real failure: the archive's directory does not exist.
    let missing = work.join("no-such-dir/a.hsnap");
    let out = backup(&inst, missing.to_str().unwrap(), &["--no-encrypt", "--metrics-file", prom_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (code, v) = status(&inst, &["--max-age", "26h"]);
    assert_eq!(code, Some(0), "the last good backup is still recent: {v}");
    let s = &v["result"]["series"][0];
    assert_eq!((s["last"]["ok"].as_bool(), s["last"]["exit_code"].as_i64()), (Some(false), Some(1)), "{s}");
    assert!(s["last"]["error"]["message"].as_str().unwrap().contains("no-such-dir"), "{s}");
    assert_eq!(s["last_good"], good, "the failed run replaced the last good one");
    let m = metrics(&prom);
    assert_eq!(sample(&m, "hero_snap_backup_last_run_success"), 0.0);
    assert_eq!(sample(&m, "hero_snap_backup_last_run_exit_code"), 1.0);
    assert_eq!(sample(&m, "hero_snap_backup_last_success_timestamp_seconds"), success, "a failed run lost the last success");

    // Refused before it starts (no encryption chosen, exit 2): recorded as well.
    let out = backup(&inst, archive.to_str().unwrap(), &["--metrics-file", prom_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let (_, v) = status(&inst, &[]);
    assert_eq!(v["result"]["series"][0]["last"]["error"]["kind"], "usage", "{v}");
    assert_eq!(sample(&metrics(&prom), "hero_snap_backup_last_run_exit_code"), 2.0);

    // A declared surface missing on disk: the archive is written, the run is not good (exit 9).
    fs::rename(inst.path("var/lib/hero/hero_db/data"), inst.path("var/lib/hero/hero_db/data.away")).unwrap();
    let out = backup(&inst, work.join("partial.hsnap").to_str().unwrap(), &["--no-encrypt", "--metrics-file", prom_arg]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let (_, v) = status(&inst, &[]);
    let last = &v["result"]["series"][0]["last"];
    assert_eq!((last["ok"].as_bool(), last["outcomes"]["failed"].as_u64()), (Some(false), Some(1)), "{last}");
    assert!(last["archive_bytes"].as_u64().is_some(), "{last}");
    let m = metrics(&prom);
    let failed = "hero_snap_backup_outcomes{instance=\"test\",selection=\"whole instance\",status=\"failed\"}";
    assert_eq!(m.get(failed), Some(&1.0), "{m:?}");
    fs::rename(inst.path("var/lib/hero/hero_db/data.away"), inst.path("var/lib/hero/hero_db/data")).unwrap();

    // A per-context backup is a series of its own, shown alone with its selection.
    let out = backup(&inst, work.join("geomind.hsnap").to_str().unwrap(), &["--no-encrypt", "--context", "geomind"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, v) = status(&inst, &[]);
    assert_eq!(v["result"]["series"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = status(&inst, &["--context", "geomind"]);
    assert_eq!(v["result"]["series"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["result"]["series"][0]["selection"], "contexts geomind");
}

#[test]
fn max_age_fails_when_the_last_good_backup_is_too_old() {
    let inst = Instance::new(&["default"]);
    let archive = inst.dir.path().join("a.hsnap");
    let out = backup(&inst, archive.to_str().unwrap(), &["--no-encrypt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = HERO_SNAP.run(&inst.args(&["status", "--max-age", "26h"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("test (whole instance)") && text.contains("last good  the last run"), "{text}");

    // The record says the last good run ended two days ago.
    let runs = inst.path("var/lib/hero-snap/runs");
    let record = fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "json")).unwrap();
    let mut rec: serde_json::Value = serde_json::from_str(&fs::read_to_string(&record).unwrap()).unwrap();
    let date = Command::new("date").args(["-u", "-d", "2 days ago", "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
    let when = String::from_utf8(date.stdout).unwrap().trim().to_string();
    rec["last"]["finished"] = when.clone().into();
    rec["last_good"]["finished"] = when.into();
    fs::write(&record, rec.to_string()).unwrap();

    let out = HERO_SNAP.run(&inst.args(&["status", "--max-age", "26h"]));
    assert_eq!(out.status.code(), Some(18), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("STALE"));
    let err = stderr(&out);
    assert!(err.contains("test (whole instance): last good backup 2d 0h ago, more than 1d 2h"), "{err}");
    let (code, v) = status(&inst, &["--max-age", "3d"]);
    assert_eq!(code, Some(0), "{v}");
    let out = HERO_SNAP.run(&inst.args(&["status", "--max-age", "26"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn prune_metrics_count_each_series_and_mark_failures() {
    let inst = Instance::new(&["geomind"]);
    let work = inst.dir.path();
    let backups = work.join("backups");
    fs::create_dir_all(&backups).unwrap();
    let dir = backups.to_str().unwrap();
    let mut whole_sizes = Vec::new();
    for name in ["a", "b", "c"] {
        let to = backups.join(format!("{name}.hsnap"));
        let out = backup(&inst, to.to_str().unwrap(), &["--no-encrypt"]);
        assert!(out.status.success(), "{}", stderr(&out));
        whole_sizes.push(fs::metadata(&to).unwrap().len());
    }
    let out = backup(&inst, backups.join("geomind.hsnap").to_str().unwrap(), &["--no-encrypt", "--context", "geomind"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let prom = work.join("textfile/hero-snap-prune.prom");
    fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let prune = |extra: &[&str]| {
        let mut a = vec!["prune", dir, "--keep-last", "1", "--metrics-file", prom.to_str().unwrap()];
        a.extend_from_slice(extra);
        HERO_SNAP.run(&a)
    };
    let whole = |name: &str| format!("{name}{{instance=\"test\",selection=\"whole instance\"}}");
    let geomind = |name: &str| format!("{name}{{instance=\"test\",selection=\"contexts geomind\"}}");

    let out = prune(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = metrics(&prom);
    assert_eq!(m[&whole("hero_snap_prune_kept_archives")], 1.0, "{m:?}");
    assert_eq!(m[&whole("hero_snap_prune_deleted_archives")], 2.0);
    // Created in order a, b, c: the two older ones go.
    assert_eq!(m[&whole("hero_snap_prune_freed_bytes")], (whole_sizes[0] + whole_sizes[1]) as f64);
    assert_eq!((m[&geomind("hero_snap_prune_kept_archives")], m[&geomind("hero_snap_prune_deleted_archives")]), (1.0, 0.0));
    assert_eq!((m[&whole("hero_snap_prune_last_run_success")], m[&geomind("hero_snap_prune_last_run_success")]), (1.0, 1.0));
    let when = m[&whole("hero_snap_prune_last_run_timestamp_seconds")];
    assert!(when > 1.7e9, "{when}");

    // The free-space guard refuses (exit 17): the counts stand, the prune is not a success.
    let out = prune(&["--min-free", "1000000T"]);
    assert_eq!(out.status.code(), Some(17), "{}", stderr(&out));
    let m = metrics(&prom);
    assert_eq!((m[&whole("hero_snap_prune_last_run_success")], m[&whole("hero_snap_prune_kept_archives")]), (0.0, 1.0), "{m:?}");

    // A prune that cannot read its folder: the series it knew are marked failed.
    fs::rename(&backups, work.join("backups.away")).unwrap();
    let out = prune(&[]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let m = metrics(&prom);
    assert_eq!((m[&whole("hero_snap_prune_last_run_success")], m[&geomind("hero_snap_prune_last_run_success")]), (0.0, 0.0), "{m:?}");
    assert!(!m.contains_key(&whole("hero_snap_prune_kept_archives")), "{m:?}");
    fs::rename(work.join("backups.away"), &backups).unwrap();

    // A dry run deletes nothing: its metrics would say otherwise, and are refused.
    let out = prune(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--dry-run"), "{}", stderr(&out));
}

/// The weekly check (issue 16 item 7): `verify --newest-in` verifies the newest archive of
/// each series with its chain, and its metrics file keeps the last success of a series
/// whose newest archive went bad; exit 9 names the bad one.
#[test]
fn verify_newest_checks_each_series_and_keeps_its_last_success() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let folder = a.dir.path().join("archives");
    fs::create_dir_all(&folder).unwrap();
    let to = |n: &str| folder.join(n).display().to_string();
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--to", &to("0-full.hsnap"), "-r", &recipient]));
    fs::write(a.path("var/lib/hero/hero_db/data/dump.rdb"), pseudo_random(1000, 5)).unwrap();
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--to", &to("1-inc.hsnap"), "-r", &recipient, "--since", "latest"]));
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--to", &to("ctx.hsnap"), "-r", &recipient, "--context", "geomind"]));
    let prom = a.dir.path().join("verify.prom");
    let verify = |json: bool| {
        let mut v = vec!["verify", "--newest-in", folder.to_str().unwrap(), "-i", key.to_str().unwrap(), "--metrics-file", prom.to_str().unwrap()];
        if json {
            v.push("--json");
        }
        HERO_SNAP.run(&v)
    };
    let out = verify(true);
    assert!(out.status.success(), "{}", stderr(&out));
    let result = last_json(&out)["result"].clone();
    let paths: Vec<&str> = result.as_array().unwrap().iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 2, "one archive per series: {result}");
    assert!(paths.iter().any(|p| p.ends_with("1-inc.hsnap")) && paths.iter().any(|p| p.ends_with("ctx.hsnap")), "{result}");
    let inc = result.as_array().unwrap().iter().find(|v| v["path"].as_str().unwrap().ends_with("1-inc.hsnap")).unwrap();
    assert_eq!(inc["report"]["ancestors"].as_array().unwrap().len(), 1, "{inc}");
    let m = metrics(&prom);
    assert_eq!(sample(&m, "hero_snap_verify_last_run_success"), 1.0);
    assert_eq!(sample(&m, "hero_snap_verify_ancestors"), 1.0);
    let first_success = sample(&m, "hero_snap_verify_last_success_timestamp_seconds");
    assert!(first_success > 0.0);

    // The full archive the incremental builds on goes bad: the series fails, by name.
    let full = folder.join("0-full.hsnap");
    let mut bytes = fs::read(&full).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&full, bytes).unwrap();
    let out = verify(false);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("1-inc.hsnap") && String::from_utf8_lossy(&out.stdout).contains("FAILED"), "{}", stderr(&out));
    let m = metrics(&prom);
    assert_eq!(sample(&m, "hero_snap_verify_last_run_success"), 0.0);
    assert_eq!(sample(&m, "hero_snap_verify_last_success_timestamp_seconds"), first_success, "the last success was forgotten");
    let ctx = "hero_snap_verify_last_run_success{instance=\"test\",selection=\"contexts geomind\"}";
    assert_eq!(m.get(ctx), Some(&1.0), "{m:?}");
}
