//! The Nushell dispatcher verbs (scripts/hero_snap.nu) with a real `nu` (from npm, installed
//! by scripts/install-deps into target/nu).

use crate::HERO_SNAP;
use test_support::fixtures::repo;
use test_support::prelude::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn nu() -> PathBuf {
    let p = std::env::var_os("HERO_SNAP_NU").map(PathBuf::from).unwrap_or_else(|| repo().join("target/nu/node_modules/.bin/nu"));
    assert!(p.exists(), "{} missing: run scripts/install-deps", p.display());
    p
}

fn service(inst: &Instance, line: &str) -> std::process::Output {
    let module = repo().join("scripts/hero_snap.nu");
    Command::new(nu())
        .args(["--no-config-file", "-c", &format!("use {} *; {line}", module.display())])
        .env("HERO_SNAP_BIN", HERO_SNAP.path())
        .env("HERO_SNAP_CONFIG", &inst.inventory)
        .env("HERO_SNAP_ROOT", &inst.root)
        .current_dir(inst.dir.path())
        .output()
        .unwrap()
}

fn services_in(archive: &Path, key: &Path) -> Vec<String> {
    let out = HERO_SNAP.ok(&["inspect", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["result"]["services"].as_array().unwrap().iter().map(|s| format!("{}:{}", s["name"].as_str().unwrap(), s["contexts"])).collect()
}

#[test]
fn service_verbs_back_up_and_restore() {
    let inst = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(inst.dir.path());

    let out = service(&inst, &format!("service backup all --to all.hsnap --allow-live -r {recipient}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let all = services_in(&inst.dir.path().join("all.hsnap"), &key);
    assert!(all.iter().any(|s| s.starts_with("hero_db:")) && all.iter().any(|s| s.starts_with("hero_foundry:")), "{all:?}");

    let out = service(&inst, &format!("service hero_foundry backup --to geo.hsnap --context geomind --allow-live -r {recipient}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(services_in(&inst.dir.path().join("geo.hsnap"), &key), ["hero_foundry:[\"geomind\"]"]);

    let out = service(&inst, &format!("service hero_foundry restore --from geo.hsnap --context geomind --as geomind2 -i {}", key.display()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&inst.path("var/lib/hero/hero_foundry/contexts/geomind/files"), &inst.path("var/lib/hero/hero_foundry/contexts/geomind2/files"));

    let out = service(&inst, "service hero_db frobnicate --to x");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown verb"), "{}", stderr(&out));
}
