//! Reading an archive: age → zstd → tar, the manifest first, the index last, and every
//! regular file's BLAKE3 checked against the index.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tar::EntryType;

use crate::crypto::{open_tar_stream, Decryption};
use crate::error::{Error, Result};
use crate::manifest::{split_member, Index, Manifest, MemberKey, INDEX_PATH, MANIFEST_PATH};
use crate::progress::Cancel;

/// Largest manifest accepted (a manifest is a few KiB; anything huge is hostile).
const MANIFEST_LIMIT: u64 = 16 << 20;
/// Largest index accepted (about 10 million files).
const INDEX_LIMIT: u64 = 2 << 30;

/// Reads only the head of the stream: the manifest.
pub fn read_manifest(input: impl Read, keys: &Decryption) -> Result<Manifest> {
    let stream = open_tar_stream(input, keys)?;
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive.entries().map_err(corrupt)?;
    let mut first = entries
        .next()
        .ok_or_else(|| Error::Corrupt("the archive holds no member; expected hero-snap/manifest.yaml first".into()))?
        .map_err(corrupt)?;
    let (manifest, _) = manifest_member(&mut first)?;
    Ok(manifest)
}

fn corrupt(e: std::io::Error) -> Error {
    Error::Corrupt(e.to_string())
}

fn manifest_member<R: Read>(entry: &mut tar::Entry<R>) -> Result<(Manifest, blake3::Hash)> {
    let path = entry.path_bytes().into_owned();
    if path != MANIFEST_PATH.as_bytes() {
        return Err(Error::Corrupt(format!(
            "the first member is `{}`, not {MANIFEST_PATH}: not a hero-snap archive, or a damaged one",
            String::from_utf8_lossy(&path)
        )));
    }
    let text = read_limited(entry, MANIFEST_LIMIT, MANIFEST_PATH)?;
    let hash = blake3::hash(text.as_bytes());
    Ok((Manifest::from_yaml(&text)?, hash))
}

fn read_limited<R: Read>(entry: &mut tar::Entry<R>, limit: u64, what: &str) -> Result<String> {
    if entry.header().entry_type() != EntryType::Regular || entry.size() > limit {
        return Err(Error::Refused(format!("{what}: not a regular member of at most {limit} bytes")));
    }
    let mut text = String::new();
    entry.take(limit).read_to_string(&mut text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))?;
    Ok(text)
}

/// One data member handed to a [`Visitor`].
pub(crate) struct Member<'a, 'b, R: Read> {
    pub entry: &'a mut tar::Entry<'b, R>,
    /// Full member path, e.g. `services/hero_db/instance/data/dump.rdb`.
    pub path: &'a str,
    pub key: MemberKey,
    /// Path inside the surface ("" for the surface's root).
    pub inner: &'a str,
}

/// What reading the whole archive found.
pub(crate) struct ReadOutcome {
    pub manifest: Manifest,
    pub index: Index,
}

/// Receives the manifest once, then every data member. A regular file's visitor returns
/// the BLAKE3 of the content it saw (or wrote), which is checked against the index.
pub(crate) trait Visitor {
    fn manifest(&mut self, manifest: &Manifest) -> Result<()>;
    /// Returns, for a regular file, the length and BLAKE3 of its content.
    fn member<R: Read>(&mut self, member: Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>>;
}

/// Reads the whole archive, calling `visitor`, and checks it end to end: manifest first,
/// index last, every file's size and hash, the manifest's hash, the counts.
pub(crate) fn read_archive(input: impl Read, keys: &Decryption, visitor: &mut impl Visitor, cancel: &Cancel) -> Result<ReadOutcome> {
    let stream = open_tar_stream(input, keys)?;
    let stream_failed = Arc::new(AtomicBool::new(false));
    let stream = FailureFlag { inner: stream, failed: stream_failed.clone() };
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(false);
    let mut entries = archive.entries().map_err(corrupt)?;
    let mut first = entries
        .next()
        .ok_or_else(|| Error::Corrupt("the archive holds no member; expected hero-snap/manifest.yaml first".into()))?
        .map_err(corrupt)?;
    let (manifest, manifest_hash) = manifest_member(&mut first)?;
    drop(first);
    visitor.manifest(&manifest)?;

    // (path, size, hash) of every regular file seen, in archive order.
    let mut seen: Vec<(String, u64, blake3::Hash)> = Vec::new();
    let mut data_members = 0u64;
    let mut index = None;
    for entry in entries.by_ref() {
        cancel.check()?;
        let mut entry = entry.map_err(corrupt)?;
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| Error::Refused("a member name is not UTF-8".into()))?;
        if path == INDEX_PATH {
            let text = read_limited(&mut entry, INDEX_LIMIT, INDEX_PATH)?;
            index = Some(Index::from_yaml(&text)?);
            break;
        }
        let (key, inner) = split_member(&path).ok_or_else(|| {
            Error::Refused(format!("member `{path}` is outside the archive layout (services/<service>/instance|contexts/...)"))
        })?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse | EntryType::Directory | EntryType::Symlink | EntryType::Link => {}
            other => return Err(Error::Refused(format!("member `{path}` has type {other:?}; only files, directories and links are restored"))),
        }
        let mode = entry.header().mode().unwrap_or(0);
        if kind != EntryType::Directory && mode & 0o6000 != 0 {
            return Err(Error::Refused(format!("member `{path}` is setuid or setgid (mode {mode:o}); hero-snap does not restore such files")));
        }
        data_members += 1;
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        let hash = visitor.member(Member { entry: &mut entry, path: &path, key, inner }).map_err(|e| match e {
            // An I/O error while the archive stream failed is the archive's fault, not the target's.
            Error::Io { .. } if stream_failed.load(Ordering::SeqCst) => Error::Corrupt(format!("{path}: {e}")),
            other => other,
        })?;
        if is_file {
            let (size, hash) = hash.expect("visitors hash every regular file");
            seen.push((path, size, hash));
        }
    }
    let index = index.ok_or_else(|| Error::Corrupt("the archive ends before hero-snap/index.yaml: it is truncated".into()))?;
    if let Some(extra) = entries.next() {
        let name = extra.ok().map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned()).unwrap_or_default();
        return Err(Error::Refused(format!("member `{name}` follows the index; the index must be the last member")));
    }
    drop(entries);
    // Read to the end so that zstd checks its frame checksum and age its last chunk.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(|e| Error::Corrupt(format!("after the index: {e}")))?;
    check_index(&index, &manifest_hash, &seen, data_members)?;
    Ok(ReadOutcome { manifest, index })
}

fn check_index(index: &Index, manifest_hash: &blake3::Hash, seen: &[(String, u64, blake3::Hash)], data_members: u64) -> Result<()> {
    if index.format > crate::manifest::ARCHIVE_FORMAT {
        return Err(Error::Refused(format!("{INDEX_PATH}: index format {} is newer than this build reads", index.format)));
    }
    if index.manifest_blake3 != manifest_hash.to_hex().as_str() {
        return Err(Error::Corrupt(format!("{MANIFEST_PATH}: its BLAKE3 does not match the index")));
    }
    for (i, (path, size, hash)) in seen.iter().enumerate() {
        let Some(want) = index.index.get(i) else {
            return Err(Error::Corrupt(format!("{path}: not listed in the index")));
        };
        if &want.path != path {
            return Err(Error::Corrupt(format!("{path}: the index lists `{}` at this place", want.path)));
        }
        if want.size != *size {
            return Err(Error::Corrupt(format!("{path}: size {size} does not match the index ({})", want.size)));
        }
        if want.blake3 != hash.to_hex().as_str() {
            return Err(Error::Corrupt(format!("{path}: content does not match its BLAKE3 in the index")));
        }
    }
    if let Some(missing) = index.index.get(seen.len()) {
        return Err(Error::Corrupt(format!("{}: listed in the index but missing from the archive", missing.path)));
    }
    if index.files != seen.len() as u64 || index.entries != data_members || index.bytes != seen.iter().map(|s| s.1).sum::<u64>() {
        return Err(Error::Corrupt("the index's counts do not match the archive's members".into()));
    }
    Ok(())
}

/// Remembers whether reading the archive stream ever failed.
struct FailureFlag<R> {
    inner: R,
    failed: Arc<AtomicBool>,
}

impl<R: Read> Read for FailureFlag<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed.store(true, Ordering::SeqCst))
    }
}
