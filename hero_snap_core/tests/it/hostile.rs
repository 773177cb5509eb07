//! Hostile archives, built by hand (tar headers written raw) inside valid zstd, and inside
//! zstd + age: every one is refused by `restore` with a clear error and nothing is written
//! anywhere (the whole directory around the target is compared before and after); `verify`
//! refuses them too. docs/RELIABILITY.md lists the cases.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use age::secrecy::ExposeSecret;
use hero_snap_core::Inventory;
use hero_snap_core::RestoreOptions;
use hero_snap_core::{backup, restore, verify, BackupOptions, Cancel, Compression, Decryption, Encryption, Error, NoProgress};
use hero_snap_core::{Consistency, Manifest};
use test_support::tree::tree;

const INVENTORY: &str = include_str!("../../../fixtures/inventories/hostile.yaml");

fn inventory(root: &Path) -> Inventory {
    Inventory::parse(INVENTORY, Path::new("hostile.yaml")).unwrap().rerooted(root)
}

/// The manifest of a real two-surface archive (files of 300,000 and 11 bytes).
fn real_manifest() -> Manifest {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("data")).unwrap();
    fs::create_dir_all(src.path().join("files")).unwrap();
    fs::write(src.path().join("data/dump.rdb"), vec![7u8; 300_000]).unwrap();
    fs::write(src.path().join("files/note.txt"), "hello world").unwrap();
    let mut opts = BackupOptions::new(Encryption::None);
    opts.allow_live = true;
    opts.state_dir = Some(src.path().join("state"));
    opts.compression = Compression { level: 1, threads: 0 };
    let (_, out) = backup(&inventory(src.path()), &opts, Vec::new(), &NoProgress, &Cancel::new()).unwrap();
    let mut tar = Vec::new();
    zstd::stream::read::Decoder::new(&out[..]).unwrap().read_to_end(&mut tar).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let mut first = archive.entries().unwrap().next().unwrap().unwrap();
    let mut text = String::new();
    first.read_to_string(&mut text).unwrap();
    Manifest::from_yaml(&text).unwrap()
}

/// One raw tar member: the name is written into the header as is (the tar crate's own
/// path setters refuse `..` and absolute names, which is the point here).
struct M {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    link: Option<String>,
    data: Vec<u8>,
    /// Size written in the header when it differs from `data` (bombs).
    size: Option<u64>,
}

fn file(name: &str, data: &[u8]) -> M {
    M { name: name.into(), kind: tar::EntryType::Regular, mode: 0o644, link: None, data: data.to_vec(), size: None }
}
fn dir(name: &str) -> M {
    M { name: name.into(), kind: tar::EntryType::Directory, mode: 0o755, link: None, data: Vec::new(), size: None }
}
fn link(name: &str, kind: tar::EntryType, target: &str) -> M {
    M { name: name.into(), kind, mode: 0o777, link: Some(target.into()), data: Vec::new(), size: None }
}
fn special(name: &str, kind: tar::EntryType) -> M {
    M { name: name.into(), kind, mode: 0o644, link: None, data: Vec::new(), size: None }
}

fn header(m: &M) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        assert!(m.name.len() < gnu.name.len(), "test names stay short");
        gnu.name[..m.name.len()].copy_from_slice(m.name.as_bytes());
        if let Some(l) = &m.link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(m.kind);
    h.set_mode(m.mode);
    h.set_uid(0);
    h.set_gid(0);
    if m.mode == u32::MAX {
        // A damaged header: the owner field holds letters, not octal digits.
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().uid.copy_from_slice(b"garbage\0");
    }
    h.set_size(m.size.unwrap_or(m.data.len() as u64));
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

const DB: &str = "services/hero_db/instance/data";

/// manifest + members + the index those members deserve (so that only the member itself
/// is wrong: `verify` must refuse it for what it is, not for a bad index), zstd-compressed.
fn build(manifest: &Manifest, members: &[M]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    {
        let mut b = tar::Builder::new(&mut enc);
        let text = manifest.to_yaml().unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hero-snap/manifest.yaml", text.as_bytes()).unwrap();
        for m in members {
            let h = header(m);
            match m.size {
                // A bomb: gigabytes of zeros, streamed (the compressed archive stays small).
                Some(size) if m.data.is_empty() => b.append(&h, std::io::repeat(0).take(size)).unwrap(),
                _ => b.append(&h, &m.data[..]).unwrap(),
            }
        }
        let files: Vec<&M> = members.iter().filter(|m| m.kind == tar::EntryType::Regular).collect();
        let bytes: u64 = files.iter().map(|m| m.data.len() as u64).sum();
        let mut index = format!(
            "format: 1\nmanifest_blake3: \"{}\"\nfiles: {}\nentries: {}\nbytes: {bytes}\n",
            blake3::hash(text.as_bytes()).to_hex(),
            files.len(),
            members.len()
        );
        index.push_str(if files.is_empty() { "index: []\n" } else { "index:\n" });
        for m in files {
            index.push_str(&format!("- {{path: \"{}\", size: {}, blake3: \"{}\"}}\n", m.name, m.data.len(), blake3::hash(&m.data).to_hex()));
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(index.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hero-snap/index.yaml", index.as_bytes()).unwrap();
        b.finish().unwrap();
    }
    enc.finish().unwrap()
}

fn encrypt(plain: &[u8], to: &age::x25519::Identity) -> Vec<u8> {
    let enc = age::Encryptor::with_recipients(std::iter::once(&to.to_public() as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap();
    out
}

struct Case {
    name: &'static str,
    archive: Vec<u8>,
    /// Part of the error message that says what was refused.
    needle: &'static str,
}

fn cases(manifest: &Manifest, outside: &Path) -> Vec<Case> {
    use tar::EntryType::*;
    let out = outside.display().to_string();
    let root = |extra: Vec<M>| -> Vec<M> {
        let mut v = vec![dir(&format!("{DB}/"))];
        v.extend(extra);
        v
    };
    let mut atomic = manifest.clone();
    atomic.consistency = Consistency::Atomic;
    let mut lying = atomic.clone();
    lying.bytes = 10;
    let mut few_files = atomic.clone();
    few_files.files = 2;
    vec![
        Case {
            name: "`..` components",
            needle: "unsafe path",
            archive: build(manifest, &root(vec![file(&format!("{DB}/../../../outside/dotdot.txt"), b"escaped")])),
        },
        Case {
            name: "`..` in the layout part",
            needle: "outside the archive layout",
            archive: build(manifest, &[file("services/hero_db/instance/../../../outside/dotdot.txt", b"escaped")]),
        },
        Case {
            name: "absolute path",
            needle: "outside the archive layout",
            archive: build(manifest, &root(vec![file(&format!("{out}/abs.txt"), b"escaped")])),
        },
        Case {
            name: "absolute path inside the layout",
            needle: "outside the archive layout",
            archive: build(manifest, &[file(&format!("/{DB}/abs.txt"), b"escaped")]),
        },
        Case {
            name: "symlink, then a file written through it",
            needle: "through a symlink",
            archive: build(manifest, &root(vec![link(&format!("{DB}/link"), Symlink, &out), file(&format!("{DB}/link/pwned.txt"), b"escaped")])),
        },
        Case {
            name: "surface root is a symlink",
            needle: "through a symlink",
            archive: build(manifest, &[link(DB, Symlink, &out), file(&format!("{DB}/pwned.txt"), b"escaped")]),
        },
        Case {
            name: "symlink, then a file of the same name",
            needle: "appears twice",
            archive: build(manifest, &root(vec![link(&format!("{DB}/link"), Symlink, &format!("{out}/target.txt")), file(&format!("{DB}/link"), b"escaped")])),
        },
        // Files are written by a pool of threads: the second copy may meet the first still
        // being written (a large one, in pieces) or already there.
        Case {
            name: "the same file twice",
            needle: "appears twice",
            archive: build(manifest, &root(vec![file(&format!("{DB}/twice"), &vec![1u8; 300_000]), file(&format!("{DB}/twice"), b"second")])),
        },
        Case {
            name: "the same small file twice",
            needle: "appears twice",
            archive: build(manifest, &root(vec![file(&format!("{DB}/twice"), b"first"), file(&format!("{DB}/twice"), b"second")])),
        },
        Case {
            name: "hard link to an absolute path",
            needle: "outside its surface",
            archive: build(manifest, &root(vec![link(&format!("{DB}/hl"), Link, &format!("{out}/target.txt"))])),
        },
        Case {
            name: "hard link with `..`",
            needle: "unsafe link target",
            archive: build(manifest, &root(vec![link(&format!("{DB}/hl"), Link, &format!("{DB}/../../outside/target.txt"))])),
        },
        Case {
            name: "hard link into another surface",
            needle: "outside its surface",
            archive: build(manifest, &root(vec![link(&format!("{DB}/hl"), Link, "services/hero_foundry/instance/files/note.txt")])),
        },
        Case {
            name: "hard link to a symlink pointing outside",
            needle: "not a file extracted before it",
            archive: build(
                manifest,
                &root(vec![link(&format!("{DB}/link"), Symlink, &format!("{out}/target.txt")), link(&format!("{DB}/hl"), Link, &format!("{DB}/link"))]),
            ),
        },
        Case {
            name: "character device",
            needle: "only files, directories and links",
            archive: build(manifest, &root(vec![special(&format!("{DB}/null"), Char)])),
        },
        Case { name: "block device", needle: "only files, directories and links", archive: build(manifest, &root(vec![special(&format!("{DB}/sda"), Block)])) },
        Case { name: "FIFO", needle: "only files, directories and links", archive: build(manifest, &root(vec![special(&format!("{DB}/fifo"), Fifo)])) },
        Case { name: "setuid file", needle: "setuid", archive: build(manifest, &root(vec![M { mode: 0o4755, ..file(&format!("{DB}/su"), b"#!/bin/sh\n") }])) },
        Case {
            name: "setgid file",
            needle: "setuid or setgid",
            archive: build(manifest, &root(vec![M { mode: 0o2755, ..file(&format!("{DB}/sg"), b"#!/bin/sh\n") }])),
        },
        Case {
            name: "member outside the layout",
            needle: "outside the archive layout",
            archive: build(manifest, &root(vec![file("etc/cron.d/evil", b"* * * * * root sh\n")])),
        },
        Case {
            name: "member of an unknown layout kind",
            needle: "outside the archive layout",
            archive: build(manifest, &root(vec![file("services/hero_db/other/data/x", b"x")])),
        },
        Case {
            name: "member of a surface the manifest does not list",
            needle: "no surface the manifest declares",
            archive: build(manifest, &root(vec![file("services/hero_db/instance/secret/x", b"x")])),
        },
        Case {
            name: "manifest lies about sizes (says 10 bytes)",
            needle: "more than its manifest declares",
            archive: build(&lying, &root(vec![file(&format!("{DB}/dump.rdb"), &vec![7u8; 300_000])])),
        },
        Case {
            name: "more files than the manifest declares",
            needle: "more than its manifest declares",
            archive: build(&few_files, &root(vec![file(&format!("{DB}/a"), b"a"), file(&format!("{DB}/b"), b"b"), file(&format!("{DB}/c"), b"c")])),
        },
        Case {
            name: "decompression bomb: 4 GiB of zeros (snapshot manifest)",
            needle: "more than its manifest declares",
            archive: build(&atomic, &root(vec![M { size: Some(4 << 30), ..file(&format!("{DB}/bomb"), b"") }])),
        },
        Case {
            name: "decompression bomb: 4 GiB of zeros (live manifest, with slack)",
            needle: "more than its manifest declares",
            archive: build(manifest, &root(vec![M { size: Some(4 << 30), ..file(&format!("{DB}/bomb"), b"") }])),
        },
        Case {
            name: "a header with a non-numeric owner",
            needle: "damaged tar header",
            archive: build(
                manifest,
                &root(vec![M { mode: 0, ..file(&format!("{DB}/x"), b"x") }])
                    .into_iter()
                    .map(|mut m| {
                        if m.mode == 0 {
                            m.mode = u32::MAX;
                        }
                        m
                    })
                    .collect::<Vec<_>>(),
            ),
        },
        Case {
            name: "a directory carrying content",
            needle: "carries",
            archive: build(manifest, &root(vec![M { size: Some(1 << 30), ..dir(&format!("{DB}/d/")) }])),
        },
    ]
}

fn check_refused(name: &str, archive: &[u8], keys: &Decryption, needle: &str, world_dir: &Path, target: &Path, state: &Path) {
    let before = tree(world_dir);
    let opts = RestoreOptions { state_dir: Some(state.to_path_buf()), ..RestoreOptions::default() };
    let err = match restore(archive, keys, &inventory(target), &opts, &NoProgress, &Cancel::new()) {
        Ok(_) => panic!("{name}: restored"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Refused(_) | Error::Corrupt(_) | Error::Preflight(_)), "{name}: unexpected error kind {err:?}");
    assert!(err.to_string().contains(needle), "{name}: error does not say `{needle}`: {err}");
    assert_eq!(tree(world_dir), before, "{name}: restore changed the filesystem");
    // verify refuses it too, for the same reason, in the same words (issue 17).
    match verify(archive, keys, &NoProgress, &Cancel::new()) {
        Ok(_) => panic!("{name}: verify accepted it"),
        Err(v) => assert!(v.to_string().contains(needle), "{name}: verify refuses it for another reason: {v} (restore: {err})"),
    }
    let journals: Vec<_> =
        fs::read_dir(state).map(|d| d.flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().ends_with(".json")).collect()).unwrap_or_default();
    assert!(journals.is_empty(), "{name}: left journals {journals:?}");
}

#[test]
fn hostile_archives_are_refused_and_write_nothing() {
    let manifest = real_manifest();
    // world/ holds the target root (with existing data elsewhere) and an outside directory
    // the members aim at; all of it is compared before and after each attempt.
    let world_dir = tempfile::tempdir().unwrap();
    let target = world_dir.path().join("root");
    let outside = world_dir.path().join("outside");
    fs::create_dir_all(target.join("unrelated")).unwrap();
    fs::write(target.join("unrelated/keep.txt"), "target's own").unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("target.txt"), "outside").unwrap();
    let state = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let mut age_keys = Decryption::default();
    age_keys.add_identity_str(id.to_string().expose_secret()).unwrap();

    let cases = cases(&manifest, &outside);
    let mut refused = 0;
    for c in &cases {
        check_refused(&format!("{} (zstd)", c.name), &c.archive, &Decryption::plaintext(), c.needle, world_dir.path(), &target, state.path());
        check_refused(&format!("{} (age)", c.name), &encrypt(&c.archive, &id), &age_keys, c.needle, world_dir.path(), &target, state.path());
        refused += 2;
    }
    assert_eq!(refused, cases.len() * 2);
    assert!(cases.iter().find(|c| c.name.starts_with("decompression bomb")).unwrap().archive.len() < 4 << 20, "the bomb should be small compressed");
    // The bomb archive's members really hold 4 GiB: not refused for lack of data.
    let bomb = &cases.iter().find(|c| c.name.contains("live manifest")).unwrap().archive;
    let mut tar = tar::Archive::new(zstd::stream::read::Decoder::new(&bomb[..]).unwrap());
    let sizes: Vec<u64> = tar.entries().unwrap().map(|e| e.unwrap().size()).collect();
    assert!(sizes.contains(&(4 << 30)), "{sizes:?}");
}

/// An age header of 50,000 recipient stanzas: refused after a bounded read, by name.
#[test]
fn an_age_header_of_50000_stanzas_is_refused() {
    let id = age::x25519::Identity::generate();
    let mut keys = Decryption::default();
    keys.add_identity_str(id.to_string().expose_secret()).unwrap();
    let mut header = String::from("age-encryption.org/v1\n");
    for i in 0..50_000u32 {
        // Syntactically valid X25519 stanzas (32-byte share, 32-byte body, base64 no padding).
        let share = blake3::hash(&i.to_le_bytes());
        let b64 = |b: &[u8]| {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut s = String::new();
            for chunk in b.chunks(3) {
                let n = chunk.iter().enumerate().fold(0u32, |acc, (j, &x)| acc | (x as u32) << (16 - 8 * j));
                for k in 0..=chunk.len() {
                    s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
                }
            }
            s
        };
        header.push_str(&format!("-> X25519 {}\n{}\n", b64(share.as_bytes()), b64(&share.as_bytes()[..32])));
    }
    header.push_str("--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
    let mut archive = header.into_bytes();
    archive.extend_from_slice(&[0u8; 1024]);
    assert!(archive.len() > 4 << 20);
    let world_dir = tempfile::tempdir().unwrap();
    let target = world_dir.path().join("root");
    fs::create_dir_all(&target).unwrap();
    let state = tempfile::tempdir().unwrap();
    check_refused("50,000-stanza age header", &archive, &keys, "more than 256 recipient stanzas", world_dir.path(), &target, state.path());
    let err = hero_snap_core::inspect(&archive[..], &keys).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err:?}");
    // A header just under the bound is read (and fails later for this key, as it should).
    let id2 = age::x25519::Identity::generate();
    let many: Vec<age::x25519::Recipient> = (0..255).map(|_| age::x25519::Identity::generate().to_public()).chain([id2.to_public()]).collect();
    let enc = age::Encryptor::with_recipients(many.iter().map(|r| r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(b"not zstd").unwrap();
    w.finish().unwrap();
    let mut k2 = Decryption::default();
    k2.add_identity_str(id2.to_string().expose_secret()).unwrap();
    let err = hero_snap_core::inspect(&out[..], &k2).unwrap_err();
    assert!(!err.to_string().contains("recipient stanzas"), "256 recipients must be accepted: {err}");
}
