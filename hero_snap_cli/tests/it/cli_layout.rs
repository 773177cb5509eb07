//! What the CLI itself promises beyond the library (issue 14): the library's `tracing`
//! warnings reach stderr, and with `--json` stdout still holds nothing but JSON lines.
//! Self-contained: a plaintext archive, a one-service instance in a temporary directory.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

fn inventory(marker: &Path) -> String {
    format!(
        r#"format: 1
instance: layout
services:
  hero_db:
    version: "1.0.0"
    schema: 1
    hooks: {{stop: {{argv: [sh, -c, "exit 0"]}}, start: {{argv: [sh, -c, "test ! -e {}"]}}}}
    surfaces:
      - {{name: data, path: /var/lib/hero/hero_db/data, scope: instance, class: source}}
"#,
        marker.display()
    )
}

/// hero-snap with `args`, then the instance options of `dir`.
fn hero_snap(dir: &Path, args: &[&str], failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hero-snap"));
    cmd.args(args).arg("-c").arg(dir.join("inventory.yaml")).arg("--root").arg(dir.join("root")).arg("--state-dir").arg(dir.join("state"));
    cmd.env_remove("RUST_LOG").env_remove("HERO_SNAP_FAILPOINT");
    if let Some(p) = failpoint {
        cmd.env("HERO_SNAP_FAILPOINT", p);
    }
    cmd.output().unwrap()
}

#[test]
fn json_stdout_holds_only_json_lines_when_the_library_warns() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("start-fails");
    std::fs::write(dir.path().join("inventory.yaml"), inventory(&marker)).unwrap();
    let data = dir.path().join("root/var/lib/hero/hero_db/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("dump.rdb"), "data").unwrap();
    let archive = dir.path().join("a.hsnap");
    let archive = archive.to_str().unwrap();

    let backup = hero_snap(dir.path(), &["backup", "--allow-live", "--no-encrypt", "--to", archive], None);
    assert!(backup.status.success(), "backup: {}", String::from_utf8_lossy(&backup.stderr));
    // A restore killed after its commit leaves gc to start hero_db again, and that start fails.
    let restore = ["restore", "--from", archive, "--allow-plaintext", "--replace"];
    let killed = hero_snap(dir.path(), &restore, Some("restore-after-commit"));
    assert_eq!(killed.status.signal(), Some(9), "the failpoint did not fire: {}", String::from_utf8_lossy(&killed.stderr));
    std::fs::write(&marker, "").unwrap();

    let gc = hero_snap(dir.path(), &["--json", "gc"], None);
    let (stdout, stderr) = (String::from_utf8_lossy(&gc.stdout), String::from_utf8_lossy(&gc.stderr));
    assert_eq!(gc.status.code(), Some(0), "gc: {stdout}{stderr}");
    assert!(stderr.contains("WARN") && stderr.contains("hero_db: start hook failed after recovering run"), "the warning is not on stderr: {stderr}");
    assert!(!stdout.is_empty());
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(v["v"], 1, "{line}");
    }
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((last["event"].as_str(), last["ok"].as_bool()), (Some("result"), Some(true)), "{last}");
    assert_eq!(last["result"][0]["action"], "completed", "{last}");
}
