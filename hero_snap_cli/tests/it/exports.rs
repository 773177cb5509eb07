//! Export surfaces (decisions/D-16) with a real Redis per instance: hero_db's per-context
//! keys travel in a per-context archive by its export and come back by its import, under
//! the target's context name. The export writes `KEY-SUFFIX<TAB>VALUE` lines (string
//! values without tabs or newlines: enough for the test, and readable); the import sets
//! `ctx:{context}:KEY-SUFFIX`, so `--as` renames the prefix.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A redis-server of its own (no persistence, its dir in `dir`), stopped by its PID.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = dir.join("redis");
        fs::create_dir_all(&data).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", data.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let r = Redis { port, child };
        for _ in 0..100 {
            if r.cli(&["ping"]).trim() == "PONG" {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server on port {port} did not answer");
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn set(&self, pairs: &[(&str, &str)]) {
        for (k, v) in pairs {
            assert_eq!(self.cli(&["set", k, v]).trim(), "OK");
        }
    }

    /// Every key and its value.
    fn all(&self) -> BTreeMap<String, String> {
        let keys = self.cli(&["--scan"]);
        keys.lines().filter(|k| !k.is_empty()).map(|k| (k.to_string(), self.cli(&["--raw", "get", k]).trim_end_matches('\n').to_string())).collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn export_cmd(port: u16) -> String {
    let script = format!(
        r#"cd "{{path}}" && redis-cli -p {port} --scan --pattern 'ctx:{{context}}:*' | while IFS= read -r k; do printf '%s\t%s\n' "${{k#ctx:{{context}}:}}" "$(redis-cli -p {port} --raw get "$k")"; done > keys.tsv"#
    );
    format!("{{argv: [sh, -c, {}]}}", serde_json::to_string(&script).unwrap())
}

fn import_cmd(port: u16) -> String {
    let script = format!(
        r#"tab=$(printf '\t'); while IFS="$tab" read -r k v; do redis-cli -p {port} set "ctx:{{context}}:$k" "$v" > /dev/null || exit 1; done < "{{path}}/keys.tsv""#
    );
    format!("{{argv: [sh, -c, {}]}}", serde_json::to_string(&script).unwrap())
}

/// basic.yaml with hero_db's export `memory` (export and import commands as given).
fn inventory(export: &str, import: &str) -> String {
    let decl = format!("    exports:\n      - {{name: memory, export: {export}, import: {import}}}\n");
    let anchor = "      - {name: data, path: /var/lib/hero/hero_db/data, scope: instance, class: source}\n";
    assert!(INVENTORY.contains(anchor));
    INVENTORY.replace(anchor, &format!("{anchor}{decl}"))
}

fn state_entries(inst: &Instance) -> Vec<String> {
    let state = inst.path("var/lib/hero-snap");
    let Ok(entries) = fs::read_dir(&state) else { return Vec::new() };
    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("export-") || n.starts_with("import-")).collect()
}

fn backup(inst: &Instance, archive: &Path, recipient: &str) -> std::process::Output {
    HERO_SNAP.run(&inst.args(&["backup", "--allow-live", "--context", "geomind", "--to", archive.to_str().unwrap(), "-r", recipient, "--json"]))
}

fn restore_args(target: &Instance, archive: &Path, key: &Path, cmd: &str) -> Vec<String> {
    target.args(&[cmd, "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--context", "geomind", "--as", "geomind2"])
}

/// Instance A (Redis with default and geomind keys) backed up per context.
fn source(dir: &Path) -> (Redis, Instance, PathBuf, PathBuf) {
    let ra = Redis::start(dir);
    ra.set(&[("ctx:geomind:mem:1", "the first memory"), ("ctx:geomind:graph:a", "a->b"), ("ctx:default:mem:1", "default's own")]);
    let a = Instance::with_inventory(&["default", "geomind"], &inventory(&export_cmd(ra.port), &import_cmd(ra.port)));
    let (key, recipient) = age_key(a.dir.path());
    let archive = a.dir.path().join("geomind.hsnap");
    let out = backup(&a, &archive, &recipient);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(state_entries(&a).is_empty(), "the export directory is left: {:?}", state_entries(&a));
    (ra, a, archive, key)
}

#[test]
fn a_per_context_archive_carries_the_contexts_keys_and_imports_them_under_the_new_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ra, _a, archive, key) = source(tmp.path());

    // The manifest lists the export as a context-scoped surface marked `export`, says the
    // instance data is left out and that the export is its own instant.
    let m = last_json(&HERO_SNAP.ok(&["inspect", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--json"]));
    let db = m["result"]["services"].as_array().unwrap().iter().find(|s| s["name"] == "hero_db").unwrap().clone();
    assert_eq!(db["surfaces"][0]["name"], "memory");
    assert_eq!((db["surfaces"][0]["export"].clone(), db["surfaces"][0]["contexts"].clone()), (serde_json::json!(true), serde_json::json!(["geomind"])));
    assert!(db["left_out"][0]["reason"].as_str().unwrap().contains("carried by the export(s) memory"), "{db}");
    assert!(m["result"]["warnings"].to_string().contains("export-own-instant"), "{m}");

    // Target B: its own Redis with its own keys.
    let rb = Redis::start(&tmp.path().join("b"));
    rb.set(&[("ctx:default:mem:1", "B's default"), ("ctx:geomind:mem:1", "B's geomind")]);
    let before = rb.all();
    let b = Instance::with_inventory(&["default"], &inventory(&export_cmd(rb.port), &import_cmd(rb.port)));
    let pre = HERO_SNAP.ok(&restore_args(&b, &archive, &key, "preflight"));
    let text = String::from_utf8_lossy(&pre.stdout);
    assert!(text.contains("import hero_db.memory [geomind -> geomind2] after the start hooks: sh -c"), "{text}");
    HERO_SNAP.ok(&restore_args(&b, &archive, &key, "restore"));

    // Exactly geomind's keys, renamed; B's other keys as they were.
    let mut want = before;
    want.insert("ctx:geomind2:mem:1".into(), "the first memory".into());
    want.insert("ctx:geomind2:graph:a".into(), "a->b".into());
    assert_eq!(rb.all(), want);
    assert!(b.path("var/lib/hero/hero_foundry/contexts/geomind2/files").is_dir());
    assert!(state_entries(&b).is_empty(), "the staged copy is left: {:?}", state_entries(&b));
}

#[test]
fn a_failing_import_exits_9_naming_it_and_keeps_the_staged_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (_ra, _a, archive, key) = source(tmp.path());
    let failing = r#"{argv: [sh, -c, "echo no store here >&2; exit 3"]}"#;
    let c = Instance::with_inventory(&["default"], &inventory(failing, failing));
    let out = HERO_SNAP.run(&restore_args(&c, &archive, &key, "restore"));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(9), "{all}");
    assert!(all.contains("hero_db.memory[geomind]") && all.contains("context `geomind2`") && all.contains("no store here"), "{all}");
    assert!(all.contains("echo no store here"), "the command is named: {all}");
    let kept = c.path("var/lib/hero-snap").join(state_entries(&c).first().expect("the staged copy is kept")).join("hero_db/geomind2/memory");
    assert!(all.contains(kept.to_str().unwrap()), "{all}");
    assert!(fs::read_to_string(kept.join("keys.tsv")).unwrap().contains("mem:1\tthe first memory"));
    // The directory surfaces are committed: an import cannot take them back.
    assert!(c.path("var/lib/hero/hero_foundry/contexts/geomind2/files").is_dir());
}

#[test]
fn a_failing_export_fails_the_backup_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let failing = r#"{argv: [sh, -c, "touch {path}/partial; echo redis is down >&2; exit 4"]}"#;
    let a = Instance::with_inventory(&["default", "geomind"], &inventory(failing, failing));
    let (_, recipient) = age_key(tmp.path());
    let archive = tmp.path().join("a.hsnap");
    let out = backup(&a, &archive, &recipient);
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hero_db.memory[geomind]") && err.contains("redis is down") && err.contains("touch "), "{err}");
    assert!(!archive.exists());
    assert!(fs::read_dir(tmp.path()).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("partial")));
    assert!(state_entries(&a).is_empty(), "{:?}", state_entries(&a));
}

#[test]
fn gc_removes_the_export_directory_of_a_killed_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let slow = r#"{argv: [sh, -c, "echo x > {path}/keys.tsv"]}"#;
    let a = Instance::with_inventory(&["default", "geomind"], &inventory(slow, slow));
    let (_, recipient) = age_key(tmp.path());
    let archive = tmp.path().join("a.hsnap");
    let args = a.args(&["backup", "--allow-live", "--context", "geomind", "--to", archive.to_str().unwrap(), "-r", &recipient]);
    let out = HERO_SNAP.command().env("HERO_SNAP_FAILPOINT", "backup-exported").args(&args).output().unwrap();
    assert_eq!(out.status.code(), None, "killed at the failpoint: {}", stderr(&out));
    assert_eq!(state_entries(&a).len(), 2, "the directory and its journal: {:?}", state_entries(&a));
    let gc = HERO_SNAP.ok(&a.args(&["gc"]));
    assert!(String::from_utf8_lossy(&gc.stdout).contains("export-removed"), "{}", String::from_utf8_lossy(&gc.stdout));
    assert!(state_entries(&a).is_empty(), "{:?}", state_entries(&a));
}

#[test]
fn a_service_without_export_says_its_instance_data_is_not_in_the_archive() {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let archive = a.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--context", "geomind", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    let inspect = HERO_SNAP.ok(&["inspect", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("hero_db") && text.contains("`hero_db` declares no export, so none of its data"), "{text}");
    let b = Instance::new(&[]);
    let pre = HERO_SNAP.ok(&b.args(&["preflight", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]));
    let text = String::from_utf8_lossy(&pre.stdout);
    assert!(text.contains("NOT IN THE ARCHIVE: hero_db.data: instance-scoped"), "{text}");
}

/// A restore into B killed at `point` (after its commit), with B's Redis and the state
/// directory as the kill left them.
fn restore_killed_at(point: &str) -> (tempfile::TempDir, Redis, Instance, BTreeMap<String, String>) {
    let tmp = tempfile::tempdir().unwrap();
    let (_ra, _a, archive, key) = source(tmp.path());
    let rb = Redis::start(&tmp.path().join("b"));
    rb.set(&[("ctx:default:mem:1", "B's default")]);
    let before = rb.all();
    let b = Instance::with_inventory(&["default"], &inventory(&export_cmd(rb.port), &import_cmd(rb.port)));
    let out = HERO_SNAP.command().env("HERO_SNAP_FAILPOINT", point).args(restore_args(&b, &archive, &key, "restore")).output().unwrap();
    assert_eq!(out.status.code(), None, "killed at {point}: {}", stderr(&out));
    assert_eq!(rb.all(), before, "no import ran before the kill");
    assert!(b.path("var/lib/hero/hero_foundry/contexts/geomind2/files").is_dir(), "the commit happened");
    assert!(state_entries(&b).iter().any(|n| n.starts_with("import-")), "the staged copy is there: {:?}", state_entries(&b));
    (tmp, rb, b, before)
}

#[test]
fn gc_runs_the_imports_a_restore_killed_after_its_commit_owed() {
    let (_tmp, rb, b, before) = restore_killed_at("restore-after-commit");
    let gc = HERO_SNAP.ok(&b.args(&["gc", "--json"]));
    let done = last_json(&gc)["result"].clone();
    let action = done[0]["action"].as_str().unwrap_or_default();
    assert!(action.starts_with("completed; import hero_db.memory[geomind] run: imported into context `geomind2`"), "{done}");
    assert_eq!(done[0]["outcomes"][0]["status"], "ok", "{done}");
    let mut want = before;
    want.insert("ctx:geomind2:mem:1".into(), "the first memory".into());
    want.insert("ctx:geomind2:graph:a".into(), "a->b".into());
    assert_eq!(rb.all(), want);
    assert!(state_entries(&b).is_empty(), "the journal or the staged copy is left: {:?}", state_entries(&b));
    assert!(!fs::read_dir(b.path("var/lib/hero-snap")).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("restore-")));
    // Done once: a second gc finds nothing.
    assert!(String::from_utf8_lossy(&HERO_SNAP.ok(&b.args(&["gc"])).stdout).contains("nothing to clean up"));
}

#[test]
fn gc_reports_an_import_a_kill_interrupted_exits_9_and_keeps_its_copy() {
    let (_tmp, rb, b, before) = restore_killed_at("restore-import-started");
    let gc = HERO_SNAP.run(&b.args(&["gc"]));
    let all = format!("{}{}", String::from_utf8_lossy(&gc.stdout), stderr(&gc));
    assert_eq!(gc.status.code(), Some(9), "{all}");
    assert!(all.contains("import hero_db.memory[geomind] FAILED") && all.contains("may have partly run and is not run again blind"), "{all}");
    // Not run a second time: the store is as the kill left it, and the copy is kept, named.
    assert_eq!(rb.all(), before);
    let dir = state_entries(&b).into_iter().find(|n| n.starts_with("import-")).expect("the staged copy is kept");
    let kept = b.path("var/lib/hero-snap").join(dir).join("hero_db/geomind2/memory");
    assert!(all.contains(kept.to_str().unwrap()), "{all}");
    assert!(fs::read_to_string(kept.join("keys.tsv")).unwrap().contains("mem:1\tthe first memory"));
    assert!(String::from_utf8_lossy(&HERO_SNAP.ok(&b.args(&["gc"])).stdout).contains("nothing to clean up"), "the journal is gone");
}
