//! Replays every committed fuzz corpus file (fuzz/corpus/<target>/) through the same entry
//! points the cargo-fuzz targets call, on the stable toolchain: CI needs no nightly, and
//! an input that once crashed stays a regression test.

use std::path::Path;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        // A panic here names the input: rerun it with `cargo +nightly fuzz run <target> <file>`.
        let r = std::panic::catch_unwind(|| entry(&data));
        assert!(r.is_ok(), "{target}: {} panics", path.display());
        n += 1;
    }
    assert!(n >= 100, "{target}: only {n} corpus files: the corpus is missing");
}

#[test]
fn manifest_corpus_replays() {
    replay("manifest", hero_snap_core::fuzzing::manifest);
}

#[test]
fn index_corpus_replays() {
    replay("index", hero_snap_core::fuzzing::index);
}

#[test]
fn archive_corpus_replays() {
    replay("archive", hero_snap_core::fuzzing::archive);
}
