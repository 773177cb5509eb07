//! The archive reader's promises, through the library: `inspect` reads only the head;
//! every flipped bit that changes what the archive holds, and every truncation, is caught
//! by `verify`, and by `restore` before anything of the target changes.

use std::fs;
use std::io::Read;
use std::path::Path;

use hero_snap_core::Inventory;
use hero_snap_core::RestoreOptions;
use hero_snap_core::{backup, inspect, restore, verify, BackupOptions, Cancel, Compression, Decryption, Encryption, Error, NoProgress, RestoreSelection};
use test_support::data::{random_file, Rng};
use test_support::fixtures;
use test_support::tree::tree;

fn instance(root: &Path) -> Inventory {
    let text = fixtures::inventory("checks", &[]);
    Inventory::parse(&text, Path::new("checks.yaml")).unwrap().rerooted(root)
}

fn make_archive(root: &Path, enc: Encryption) -> Vec<u8> {
    fs::create_dir_all(root.join("data/sub")).unwrap();
    random_file(&root.join("data/dump.rdb"), 120_000, "a");
    fs::write(root.join("data/sub/small.txt"), "small file\n".repeat(50)).unwrap();
    fs::write(root.join("data/empty"), "").unwrap();
    for c in ["geomind", "default"] {
        fs::create_dir_all(root.join(format!("ctx/{c}/files"))).unwrap();
        random_file(&root.join(format!("ctx/{c}/files/blob")), 30_000, c);
        fs::write(root.join(format!("ctx/{c}/files/notes.md")), format!("# {c}\n").repeat(200)).unwrap();
    }
    let mut opts = BackupOptions::new(enc);
    opts.compression = Compression { level: 3, threads: 0 };
    opts.allow_live = true;
    let (_, out) = backup(&instance(root), &opts, Vec::new(), &NoProgress, &Cancel::new()).unwrap();
    out
}

/// Per archive (encrypted, plaintext): 2 x (1,000 + 200) damaged copies through `verify`.
const FLIPS: usize = 1_000;
const TRUNCATIONS: usize = 200;

fn check_all_damage_caught(archive: &[u8], keys: &Decryption, flips: usize, truncations: usize) {
    verify(archive, keys, &NoProgress, &Cancel::new()).expect("the intact archive verifies");
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let (mut caught, mut harmless) = (0, 0);
    for i in 0..flips {
        let mut bad = archive.to_vec();
        let pos = (rng.next_u64() % bad.len() as u64) as usize;
        let bit = 1u8 << (rng.next_u64() % 8);
        bad[pos] ^= bit;
        match verify(&bad[..], keys, &NoProgress, &Cancel::new()) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert!(matches!(e, Error::Corrupt(_) | Error::Refused(_) | Error::Crypto(_)), "flip {i} at {pos}: unexpected error kind {e:?}");
                caught += 1;
            }
            // zstd's bitstream has slack (padding bits, equivalent table descriptions): a
            // flip there decodes to the same bytes, so nothing is damaged and zstd's own
            // checksum agrees (`zstd -t` passes too). Only such a flip may pass; age's
            // authentication leaves none in an encrypted archive.
            Ok(_) if archive.starts_with(&ZSTD_MAGIC) && decoded(&bad) == decoded(archive) => harmless += 1,
            Ok(_) => panic!("flip {i}: bit {bit:#x} at byte {pos} of {} went unnoticed", archive.len()),
        }
    }
    // Slack is a small part of the stream: most flips must be caught.
    assert!(harmless * 20 <= flips, "{harmless} of {flips} flips changed nothing");
    for i in 0..truncations {
        let len = (rng.next_u64() % archive.len() as u64) as usize;
        match verify(&archive[..len], keys, &NoProgress, &Cancel::new()) {
            Err(_) => caught += 1,
            Ok(_) => panic!("truncation {i} to {len} of {} bytes went unnoticed", archive.len()),
        }
    }
    assert_eq!(caught + harmless, flips + truncations);
}

/// A plaintext archive starts with a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The tar stream a plaintext archive decodes to, or `None` when zstd refuses it.
fn decoded(archive: &[u8]) -> Option<Vec<u8>> {
    zstd::stream::decode_all(archive).ok()
}

#[test]
fn every_flip_and_truncation_is_caught_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let archive = make_archive(dir.path(), Encryption::Recipients(vec![Box::new(id.to_public())]));
    let mut keys = Decryption::default();
    use age::secrecy::ExposeSecret;
    keys.add_identity_str(id.to_string().expose_secret()).unwrap();
    check_all_damage_caught(&archive, &keys, FLIPS, TRUNCATIONS);
}

#[test]
fn every_flip_and_truncation_is_caught_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let archive = make_archive(dir.path(), Encryption::None);
    check_all_damage_caught(&archive, &Decryption::plaintext(), FLIPS, TRUNCATIONS);
}

#[test]
fn verify_names_the_damaged_file() {
    // Rewrite one file's content inside a plaintext archive (recompressing it), keeping
    // the index: verify must name that file.
    let dir = tempfile::tempdir().unwrap();
    let archive = make_archive(dir.path(), Encryption::None);
    let mut tar = Vec::new();
    zstd::stream::read::Decoder::new(&archive[..]).unwrap().read_to_end(&mut tar).unwrap();
    let needle = b"small file\n";
    let pos = tar.windows(needle.len()).position(|w| w == needle).unwrap();
    tar[pos] = b'S';
    let bad = zstd::encode_all(&tar[..], 3).unwrap();
    let err = verify(&bad[..], &Decryption::plaintext(), &NoProgress, &Cancel::new()).unwrap_err();
    assert!(err.to_string().contains("services/hero_db/instance/data/sub/small.txt"), "{err}");
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}
impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[test]
fn inspect_reads_only_the_head_of_a_1_gib_archive() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("data")).unwrap();
    fs::create_dir_all(root.join("ctx/default/files")).unwrap();
    random_file(&root.join("data/big.bin"), 1 << 30, "big");
    let path = dir.path().join("big.hsnap");
    let mut opts = BackupOptions::new(Encryption::None);
    opts.compression = Compression { level: 1, threads: 2 };
    opts.allow_live = true;
    let out = std::io::BufWriter::new(fs::File::create(&path).unwrap());
    let (report, out) = backup(&instance(&root), &opts, out, &NoProgress, &Cancel::new()).unwrap();
    drop(out);
    fs::remove_file(root.join("data/big.bin")).unwrap();
    assert!(report.archive_bytes >= 1 << 30, "the archive should be over 1 GiB, is {}", report.archive_bytes);
    let mut counter = CountingReader { inner: fs::File::open(&path).unwrap(), count: 0 };
    let manifest = inspect(&mut counter, &Decryption::plaintext()).unwrap();
    assert_eq!(manifest.instance, "checks");
    assert!(counter.count <= 4 << 20, "inspect read {} bytes of a {} byte archive", counter.count, report.archive_bytes);
}

/// Damaged copies through `restore --replace` onto a target that holds other data: every
/// one fails before any swap, and the target (and its parent) is exactly as it was.
fn restore_refuses_damage(archive: &[u8], keys: &Decryption, seed: u64, flips: usize, truncations: usize) -> usize {
    let world = tempfile::tempdir().unwrap();
    let target = world.path().join("root");
    fs::create_dir_all(target.join("data")).unwrap();
    fs::write(target.join("data/dump.rdb"), "the target's own data").unwrap();
    for c in ["geomind", "default"] {
        fs::create_dir_all(target.join(format!("ctx/{c}/files"))).unwrap();
        fs::write(target.join(format!("ctx/{c}/files/notes.md")), c).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let inv = instance(&target);
    let opts = RestoreOptions {
        selection: RestoreSelection { replace: true, ..RestoreSelection::default() },
        state_dir: Some(state.path().to_path_buf()),
        ..RestoreOptions::default()
    };
    let before = tree(world.path());
    // The intact archive restores (so the refusals below are the damage's doing).
    let check = tempfile::tempdir().unwrap();
    restore(
        archive,
        keys,
        &instance(check.path()),
        &RestoreOptions { state_dir: Some(state.path().to_path_buf()), ..RestoreOptions::default() },
        &NoProgress,
        &Cancel::new(),
    )
    .expect("the intact archive restores");
    let mut rng = Rng(seed);
    let mut refused = 0;
    for i in 0..flips + truncations {
        let bad: Vec<u8> = if i < flips {
            let mut b = archive.to_vec();
            let pos = (rng.next_u64() % b.len() as u64) as usize;
            b[pos] ^= 1u8 << (rng.next_u64() % 8);
            b
        } else {
            archive[..(rng.next_u64() % archive.len() as u64) as usize].to_vec()
        };
        if archive.starts_with(&ZSTD_MAGIC) && decoded(&bad) == decoded(archive) {
            // A flip in zstd's slack: the same archive, nothing to refuse (see above).
            refused += 1;
            continue;
        }
        match restore(&bad[..], keys, &inv, &opts, &NoProgress, &Cancel::new()) {
            Ok(_) => panic!("damaged copy {i} was restored"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        assert_eq!(tree(world.path()), before, "damaged copy {i}: the target changed");
        let journals = fs::read_dir(state.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count();
        assert_eq!(journals, 0, "damaged copy {i}: a journal was left");
        refused += 1;
    }
    refused
}

#[test]
fn restore_refuses_damaged_archives_before_any_swap() {
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let encrypted = make_archive(&dir.path().join("e"), Encryption::Recipients(vec![Box::new(id.to_public())]));
    let mut keys = Decryption::default();
    use age::secrecy::ExposeSecret;
    keys.add_identity_str(id.to_string().expose_secret()).unwrap();
    let plain = make_archive(&dir.path().join("p"), Encryption::None);
    let n = restore_refuses_damage(&encrypted, &keys, 0x2545f4914f6cdd1d, 80, 20)
        + restore_refuses_damage(&plain, &Decryption::plaintext(), 0x853c49e6748fea9b, 80, 20);
    assert_eq!(n, 200);
}
