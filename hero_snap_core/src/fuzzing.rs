//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the stable corpus replay
//! test (`tests/it/fuzz_corpus.rs`), so both drive exactly the same code. Not part of the API.

use crate::archive::format::Manifest;
use crate::{verify, Cancel, Decryption, NoProgress};

/// Largest fuzz input turned into an archive (keeps one run short).
const ARCHIVE_INPUT_LIMIT: usize = 1 << 20;

/// The manifest parser on arbitrary text. Must return, never panic.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::from_yaml(text);
    }
}

/// The reader's streaming index check (the one every verify and restore runs) on
/// arbitrary index text. Must return, never panic.
pub fn index(data: &[u8]) {
    crate::archive::read::fuzz_index(data);
}

/// The archive reader (plaintext path): `data` is taken as the tar stream, compressed
/// with zstd and verified, so the fuzzer works on the tar layer and hero-snap's checks
/// rather than on zstd's frame format.
pub fn archive(data: &[u8]) {
    if data.len() > ARCHIVE_INPUT_LIMIT {
        return;
    }
    let compressed = zstd::bulk::compress(data, 1).expect("compressing into memory");
    let _ = verify(&compressed[..], &Decryption::plaintext(), &NoProgress, &Cancel::new());
}
