//! Any byte-string file name (issue 17 item 4): not UTF-8, with a newline, 255 bytes long,
//! deep paths, and a name holding the characters hero-snap uses to carry other bytes:
//! backup, verify, restore and GNU tar give back the same bytes.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every path under `root` as raw bytes, with its type and content hash.
fn raw_tree(root: &Path) -> Vec<(Vec<u8>, String)> {
    let mut out: Vec<(Vec<u8>, String)> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            let ft = e.file_type();
            let what = if ft.is_symlink() {
                format!("link {:?}", fs::read_link(e.path()).unwrap().as_os_str().as_bytes())
            } else if ft.is_dir() {
                "dir".into()
            } else {
                format!("file {}", blake3::hash(&fs::read(e.path()).unwrap()).to_hex())
            };
            (rel, what)
        })
        .collect();
    out.sort();
    out
}

fn odd_names(dir: &Path) {
    let p = |b: &[u8]| dir.join(OsStr::from_bytes(b));
    fs::write(p(b"caf\xe9.txt"), "latin-1 name").unwrap();
    fs::write(p(b"\xff\xfe raw"), "not UTF-8 at all").unwrap();
    fs::write(p(b"line\nbreak"), "newline in the name").unwrap();
    fs::write(p("pua-\u{F780}-\u{F7E9}".as_bytes()), "the carrying characters themselves").unwrap();
    fs::write(p(&vec![b'n'; 255]), "a 255-byte name").unwrap();
    fs::create_dir(p(b"dir-\xe9")).unwrap();
    fs::write(p(b"dir-\xe9/inner-\xe8"), "inside a non-UTF-8 directory").unwrap();
    fs::hard_link(p(b"caf\xe9.txt"), p(b"hard-\xe9")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"caf\xe9.txt"), p(b"sym-\xe9")).unwrap();
    let mut deep = dir.join("deep");
    for i in 0..24 {
        deep = deep.join(format!("{i:02}-{}", "d".repeat(80)));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join(OsStr::from_bytes(b"end-\xe9")), "a path over 2000 bytes").unwrap();
}

#[test]
fn any_byte_string_name_round_trips() {
    let a = Instance::new(&["default"]);
    let files = a.path("var/lib/hero/hero_foundry/contexts/default/files");
    odd_names(&files);
    let (key, recipient) = age_key(a.dir.path());
    let archive = a.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]);
    let want = raw_tree(&files);
    assert!(want.len() > 30, "{want:?}");

    let b = Instance::new(&[]);
    HERO_SNAP.ok(&b.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]));
    let restored = b.path("var/lib/hero/hero_foundry/contexts/default/files");
    assert_eq!(raw_tree(&restored), want, "hero-snap's restore changed a name");
    let ino = |p: &[u8]| std::os::unix::fs::MetadataExt::ino(&fs::metadata(restored.join(OsStr::from_bytes(p))).unwrap());
    assert_eq!(ino(b"caf\xe9.txt"), ino(b"hard-\xe9"), "the hard link between non-UTF-8 names was lost");

    // Stock tools: age, zstd and GNU tar give the same bytes.
    let out: PathBuf = a.dir.path().join("stock");
    fs::create_dir_all(&out).unwrap();
    let script = format!("set -o pipefail; age -d -i '{}' '{}' | zstd -dq | tar -x -C '{}'", key.display(), archive.display(), out.display());
    let st = Command::new("bash").arg("-c").arg(&script).status().unwrap();
    assert!(st.success());
    assert_eq!(raw_tree(&out.join("services/hero_foundry/contexts/default/files")), want, "GNU tar reads other names");
}
