//! Review findings of issue 14 that need a whole backup and restore to show.

use std::fs;
use std::path::Path;

use hero_snap_core::{backup, restore, BackupOptions, Cancel, Decryption, Encryption, Inventory, NoProgress, RestoreOptions, Status, SurfaceRef};
use test_support::fixtures;

fn instance(root: &Path) -> Inventory {
    let text = fixtures::inventory("dotted", &[("root", &root.display().to_string())]);
    Inventory::parse(&text, Path::new("dotted.yaml")).unwrap().rerooted(root)
}

/// A service name with a dot used to be split as `service.surface` at its first dot after
/// the commit, and the restore panicked on `expect("planned")` with the data swapped in.
#[test]
fn a_service_name_with_a_dot_restores_and_rebuilds_by_name() {
    let (src, dst, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::create_dir_all(src.path().join("data/db")).unwrap();
    fs::create_dir_all(src.path().join("data/index")).unwrap();
    fs::write(src.path().join("data/db/dump"), "rows\n").unwrap();
    fs::write(src.path().join("data/index/idx"), "derived\n").unwrap();
    let mut opts = BackupOptions::new(Encryption::None);
    opts.allow_live = true;
    opts.state_dir = Some(state.path().to_path_buf());
    let (_, archive) = backup(&instance(src.path()), &opts, Vec::new(), &NoProgress, &Cancel::new()).unwrap();

    let ropts = RestoreOptions { state_dir: Some(state.path().to_path_buf()), ..Default::default() };
    let report = restore(&archive[..], &Decryption::plaintext(), &instance(dst.path()), &ropts, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(report.plan.rebuild_pending, vec![SurfaceRef { service: "hero.db".into(), surface: "index".into() }]);
    let rebuilt = report.outcomes.iter().find(|o| o.service == "hero.db" && o.surface.as_deref() == Some("index")).expect("an outcome for the derived surface");
    assert_eq!(rebuilt.status, Status::Ok, "{rebuilt:?}");
    assert!(dst.path().join("rebuilt-hero.db").exists(), "the rebuild hook ran for the dotted service");
    assert_eq!(fs::read_to_string(dst.path().join("data/db/dump")).unwrap(), "rows\n");
    assert!(report.rebuild_pending.is_empty());
    assert_eq!(serde_json::to_value(&report.plan).unwrap()["rebuild_pending"], serde_json::json!(["hero.db.index"]));
}
