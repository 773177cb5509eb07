//! Runs examples/context_roundtrip (built by `cargo test`) on a real demo instance: the
//! library API used as hero_launcher uses it, end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

fn example() -> PathBuf {
    // target/<profile>/deps/example-<hash> -> target/<profile>/examples/context_roundtrip
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("examples/context_roundtrip");
    assert!(bin.exists(), "{} is not built (cargo test builds examples)", bin.display());
    bin
}

fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().strip_prefix(root).unwrap().display().to_string(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn the_example_backs_up_and_restores_a_context_and_cancels_cleanly() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let st = Command::new(repo.join("fixtures/demo/make-instance")).arg(&root).args(["default", "geomind"]).status().unwrap();
    assert!(st.success());
    let inventory = repo.join("fixtures/demo/inventory.yaml");
    let archive = work.path().join("geomind.hsnap");
    let run = |extra: &[&str]| {
        Command::new(example())
            .args(extra)
            .args(["--allow-live", inventory.to_str().unwrap(), root.to_str().unwrap(), "geomind", "geomind2", archive.to_str().unwrap()])
            .output()
            .unwrap()
    };

    // Cancelled from the progress callback after the first bytes: exit 130, no archive,
    // no partial file, the instance untouched.
    let before = files(&root.join("var/lib/hero"));
    let out = run(&["--cancel-after-bytes", "1"]);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_dir(work.path()).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("geomind.hsnap")));
    assert_eq!(files(&root.join("var/lib/hero")), before);

    let out = run(&[]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("as context geomind2"), "{text}");
    for svc in ["hero_collab/contexts/", "hero_foundry/contexts/"] {
        let h = root.join("var/lib/hero").join(svc);
        assert_eq!(files(&h.join("geomind2")), files(&h.join("geomind")), "{svc}");
        assert!(!files(&h.join("geomind2")).is_empty());
    }
    // Typed outcomes, per surface and context.
    assert!(text.contains("hero_collab.db[geomind]: restored as context `geomind2`"), "{text}");
}
