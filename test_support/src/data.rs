//! Deterministic data (the same seed gives the same bytes, so a failure can be replayed)
//! and test keys.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The byte stream of a seed: BLAKE3's extendable output keyed by the seed's bytes.
fn stream(seed: &[u8]) -> blake3::OutputReader {
    blake3::Hasher::new().update(seed).finalize_xof()
}

/// `len` incompressible bytes from `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    stream(&seed.to_le_bytes()).fill(&mut out);
    out
}

/// Writes `len` incompressible bytes from `seed` to `path`, a MiB at a time (for files
/// larger than memory should hold).
pub fn random_file(path: &Path, len: u64, seed: &str) {
    let mut xof = stream(seed.as_bytes());
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// A fresh age identity written to `dir/key.txt` (mode 600), and its recipient.
pub fn age_key(dir: &Path) -> (PathBuf, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let path = dir.join("key.txt");
    fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    (path, id.to_public().to_string())
}

/// Deterministic positions for damage tests (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    // Not an Iterator: an endless stream, the damage tests call `rng.next()` for a number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
