//! Walking, counting and hashing a directory tree: what backup archives, what the
//! inventory table sizes, what restore and verify hash.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::progress::Cancel;

/// Prefix of every name hero-snap creates on a filesystem (snapshots, staging, parked
/// data); the walk never enters them.
pub(crate) const RESERVED_PREFIX: &str = ".hero-snap-";

/// A file walk in a stable order that never follows symlinks.
/// Names starting with `.hero-snap-` are hero-snap's own (snapshots, staging) and skipped.
pub(crate) fn walk(root: &Path) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with(RESERVED_PREFIX))
}

pub(crate) fn walk_error(root: &Path, e: walkdir::Error) -> Error {
    let path = e.path().unwrap_or(root).to_path_buf();
    match e.into_io_error() {
        Some(io) => Error::Io { path, action: "walking", source: io },
        None => Error::Refused(format!("{}: filesystem loop", path.display())),
    }
}

/// Counts the regular files and their bytes under `root`, as the manifest announces them.
pub(crate) fn count_tree(root: &Path, cancel: &Cancel) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut links = std::collections::HashSet::new();
    for entry in walk(root) {
        cancel.check()?;
        let entry = entry.map_err(|e| walk_error(root, e))?;
        if entry.file_type().is_file() {
            let meta = entry.metadata().map_err(|e| walk_error(root, e))?;
            if meta.nlink() > 1 && !links.insert((meta.dev(), meta.ino())) {
                continue; // archived once, as a hard link after that
            }
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

pub(crate) fn hash_reader(r: &mut impl Read) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Counts the bytes read through it.
pub(crate) struct CountingReader<R> {
    pub inner: R,
    pub count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
