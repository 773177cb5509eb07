//! Reading an archive: age → zstd → tar, the manifest first, the index last, and every
//! regular file's BLAKE3 checked against the index.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use tar::EntryType;

use super::chain::HashingReader;
use super::crypto::{open_compressed_stream, open_tar_stream, Decryption};
use super::format::{split_member, IndexEntry, Manifest, MemberKey, INDEX_PATH, MANIFEST_PATH};
use super::trailer::{Trailer, TRAILER_LEN};
use crate::error::{Error, Result};
use crate::progress::Cancel;

/// Largest manifest accepted (a manifest is a few KiB; anything huge is hostile).
const MANIFEST_LIMIT: u64 = 16 << 20;
/// Largest index accepted (about 10 million files).
pub(crate) const INDEX_LIMIT: u64 = 2 << 30;

/// Whether the manifest lists the member's surface (and its context).
fn declared(m: &Manifest, key: &MemberKey) -> bool {
    use crate::inventory::Scope;
    m.service(&key.service).and_then(|svc| svc.surfaces.iter().find(|s| s.name == key.surface)).is_some_and(|s| match &key.context {
        None => s.scope == Scope::Instance,
        Some(c) => s.scope == Scope::Context && s.contexts.contains(c),
    })
}

/// Most regular files and bytes the members may carry. A snapshot's totals are exact; a
/// copy of live (or hook-quiesced) directories may have grown between the scan that
/// wrote the manifest and the archiving, so it gets slack, still bounded.
fn member_bounds(m: &Manifest) -> (u64, u64) {
    use super::format::Consistency::*;
    match m.consistency {
        Atomic | PerVolume => (m.files, m.bytes),
        QuiescedCopy | Live => (m.files.saturating_mul(2).saturating_add(10_000), m.bytes.saturating_mul(2).saturating_add(1 << 30)),
    }
}

/// Reads only the head of the stream: the manifest.
pub fn read_manifest(input: impl Read, keys: &Decryption) -> Result<Manifest> {
    read_head(input, keys).map(|(manifest, _)| manifest)
}

/// Reads only the head of the stream: the manifest and the BLAKE3 of its member (how a
/// child archive names it).
pub(crate) fn read_head(input: impl Read, keys: &Decryption) -> Result<(Manifest, blake3::Hash)> {
    let stream = open_tar_stream(input, keys)?;
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive.entries().map_err(corrupt)?;
    let mut first =
        entries.next().ok_or_else(|| Error::Corrupt("the archive holds no member; expected hero-snap/manifest.yaml first".into()))?.map_err(corrupt)?;
    manifest_member(&mut first)
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
    /// BLAKE3 of the manifest member: the archive's identity in a chain.
    pub manifest_blake3: blake3::Hash,
    /// The index's totals (its entries were checked as they were read, never kept).
    pub index: IndexHead,
    /// BLAKE3 of the index member, which a child archive names.
    pub index_blake3: blake3::Hash,
    /// An incremental's files whose bytes are in ancestors (format 2; `None` for format 1).
    pub inherited: Option<Inherited>,
    /// Filled by [`super::chain::read_ancestors`]: the run ids of the ancestors read.
    pub ancestors_read: Vec<String>,
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
///
/// Three stages run at once, as `age -d | zstd -d | tar -x` would: the calling thread
/// reads and decrypts (it owns `input`, which need not be `Send`, e.g. a locked stdin), a
/// scoped thread decompresses, another parses the tar stream and runs the visitor
/// (writing files, hashing). They hand over [`CHUNK`]-sized buffers.
pub(crate) fn read_archive(input: impl Read, keys: &Decryption, visitor: &mut (impl Visitor + Send), cancel: &Cancel) -> Result<ReadOutcome> {
    let mut compressed = EndCheck { inner: open_compressed_stream(input, keys)?, len: 0, tail: Vec::with_capacity(2 * TRAILER_LEN as usize) };
    let stream_failed = AtomicBool::new(false);
    let (compressed_tx, compressed_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
    let (compressed_empty_tx, compressed_empty_rx) = mpsc::channel::<Vec<u8>>();
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let failed = &stream_failed;
        let parser = scope.spawn(move || {
            read_tar(ChunkReader::new(full_rx, empty_tx), visitor, cancel, failed)
            // Dropping the reader here stops the stages below if the parser gave up early.
        });
        scope.spawn(move || {
            // zstd reads the decrypted chunks in place (BufRead), without a copy of its own.
            match zstd::stream::read::Decoder::with_buffer(ChunkReader::new(compressed_rx, compressed_empty_tx)) {
                Ok(mut decoder) => decode_into(&mut decoder, &full_tx, &empty_rx, failed),
                Err(e) => {
                    failed.store(true, Ordering::SeqCst);
                    let _ = full_tx.send(Err(e));
                }
            }
        });
        decode_into(&mut compressed, &compressed_tx, &compressed_empty_rx, &stream_failed);
        drop(compressed_tx);
        parser.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The compressed stream, whose end is checked for a damaged index trailer (zstd
/// decoders skip its frame unread; decisions/D-17).
struct EndCheck<'a> {
    inner: Box<dyn Read + 'a>,
    len: u64,
    /// The last bytes read, at least [`TRAILER_LEN`] once that many were read.
    tail: Vec<u8>,
}

impl Read for EndCheck<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let keep = TRAILER_LEN as usize;
        if n == 0 && !buf.is_empty() {
            let at = self.tail.len().saturating_sub(keep);
            Trailer::check_end(&self.tail[at..], self.len).map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
            return Ok(0);
        }
        self.len += n as u64;
        if n >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&buf[n - keep..n]);
        } else {
            self.tail.extend_from_slice(&buf[..n]);
            if self.tail.len() > 2 * keep {
                self.tail.drain(..self.tail.len() - keep);
            }
        }
        Ok(n)
    }
}

/// Size of the buffers the stages hand on.
const CHUNK: usize = 1 << 20;
/// Chunks queued between the stages (bounds the memory of the pipeline).
const CHUNKS_IN_FLIGHT: usize = 4;

/// Reads a stage's output into chunks until its end, an error (sent on, and flagged), or
/// the next stage hanging up.
fn decode_into(stream: &mut dyn Read, full: &mpsc::SyncSender<io::Result<Vec<u8>>>, empty: &mpsc::Receiver<Vec<u8>>, failed: &AtomicBool) {
    loop {
        let mut chunk = empty.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        let mut len = 0;
        let mut error = None;
        while len < CHUNK {
            match stream.read(&mut chunk[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        chunk.truncate(len);
        let end = len < CHUNK;
        if len > 0 && full.send(Ok(chunk)).is_err() {
            return;
        }
        if let Some(e) = error {
            failed.store(true, Ordering::SeqCst);
            let _ = full.send(Err(e));
            return;
        }
        if end {
            return;
        }
    }
}

/// The receiving side of a stage: the chunks as one stream, the used ones sent back.
struct ChunkReader {
    full: mpsc::Receiver<io::Result<Vec<u8>>>,
    empty: mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ChunkReader {
    fn new(full: mpsc::Receiver<io::Result<Vec<u8>>>, empty: mpsc::Sender<Vec<u8>>) -> ChunkReader {
        ChunkReader { full, empty, chunk: Vec::new(), pos: 0, done: false }
    }
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.chunk.len() && !self.done {
            match self.full.recv() {
                Ok(Ok(next)) => {
                    let used = std::mem::replace(&mut self.chunk, next);
                    let _ = self.empty.send(used);
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    self.chunk.clear();
                    self.pos = 0;
                    // Later reads see the end; the error itself is reported once, here.
                    return Err(e);
                }
                Err(_) => self.done = true,
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

fn read_tar(stream: impl Read, visitor: &mut impl Visitor, cancel: &Cancel, stream_failed: &AtomicBool) -> Result<ReadOutcome> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(false);
    let mut entries = archive.entries().map_err(corrupt)?;
    let mut first =
        entries.next().ok_or_else(|| Error::Corrupt("the archive holds no member; expected hero-snap/manifest.yaml first".into()))?.map_err(corrupt)?;
    let (manifest, manifest_hash) = manifest_member(&mut first)?;
    drop(first);
    visitor.manifest(&manifest)?;

    // (path, size, hash) of every regular file seen, in archive order, spilled to a file:
    // memory stays flat however many files the archive holds.
    let mut seen = SeenFiles::new()?;
    let (mut declared_files, mut declared_bytes) = (0u64, 0u64);
    let (max_files, max_bytes) = member_bounds(&manifest);
    let mut shape = Shape::default();
    let mut index = None;
    // Members before the index: the index's own count must match it.
    for (data_members, entry) in (0u64..).zip(entries.by_ref()) {
        cancel.check()?;
        let mut entry = entry.map_err(corrupt)?;
        let path = crate::fs_tree::name_text(&entry.path_bytes());
        if path == INDEX_PATH {
            index = Some(check_index(&mut entry, (&manifest_hash, manifest.format), std::mem::replace(&mut seen, SeenFiles::empty()), data_members)?);
            break;
        }
        let (key, inner) = split_member(&path)
            .ok_or_else(|| Error::Refused(format!("member `{path}` is outside the archive layout (services/<service>/instance|contexts/...)")))?;
        if !declared(&manifest, &key) {
            return Err(Error::Refused(format!("member `{path}` belongs to no surface the manifest declares")));
        }
        let (is_file, size) = check_header(&entry, &path)?;
        shape.check(&entry, &path, &key, inner)?;
        if is_file {
            declared_files += 1;
            declared_bytes = declared_bytes.saturating_add(size);
            if declared_files > max_files || declared_bytes > max_bytes {
                return Err(Error::Refused(format!(
                    "member `{path}`: the archive holds more than its manifest declares ({} files, {} bytes); refusing it (a damaged or hostile archive)",
                    manifest.files, manifest.bytes
                )));
            }
        }
        let hash = visitor.member(Member { entry: &mut entry, path: &path, key, inner }).map_err(|e| match e {
            // An I/O error while the archive stream failed is the archive's fault, not the target's.
            Error::Io { .. } if stream_failed.load(Ordering::SeqCst) => Error::Corrupt(format!("{path}: {e}")),
            other => other,
        })?;
        if is_file {
            let (size, hash) = hash.ok_or_else(|| Error::Corrupt(format!("{path}: the reader was given no hash of this file")))?;
            seen.push(&path, size, &hash)?;
        }
    }
    let index = index.ok_or_else(|| Error::Corrupt("the archive ends before hero-snap/index.yaml: it is truncated".into()))?;
    if let Some(extra) = entries.next() {
        let name = extra.ok().map(|e| String::from_utf8_lossy(&e.path_bytes()).into_owned()).unwrap_or_default();
        return Err(Error::Refused(format!("member `{name}` follows the index; the index must be the last member")));
    }
    // Read to the end so that zstd checks its frame checksum and age its last chunk.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(|e| Error::Corrupt(format!("after the index: {e}")))?;
    Ok(ReadOutcome {
        manifest,
        manifest_blake3: manifest_hash,
        index: index.head,
        index_blake3: index.index_blake3,
        inherited: index.inherited,
        ancestors_read: Vec::new(),
    })
}

/// A member's header: readable, a type hero-snap restores, no setuid/setgid, content only
/// on files. Returns whether it is a regular file, and its content size.
fn check_header<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<(bool, u64)> {
    let h = entry.header();
    if let Some(e) = [h.mode().err(), h.uid().err(), h.gid().err(), h.mtime().err()].into_iter().flatten().next() {
        return Err(Error::Corrupt(format!("member `{path}`: damaged tar header ({e})")));
    }
    let kind = entry.header().entry_type();
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse | EntryType::Directory | EntryType::Symlink | EntryType::Link => {}
        other => return Err(Error::Refused(format!("member `{path}` has type {other:?}; only files, directories and links are restored"))),
    }
    let mode = entry.header().mode().unwrap_or(0);
    if kind != EntryType::Directory && mode & 0o6000 != 0 {
        return Err(Error::Refused(format!("member `{path}` is setuid or setgid (mode {mode:o}); hero-snap does not restore such files")));
    }
    let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
    // The manifest bounds what follows: a member stream larger than it declares is
    // refused at the header, before its content is decompressed or written.
    let size = entry.size();
    if !is_file && size != 0 {
        return Err(Error::Refused(format!("member `{path}` has type {kind:?} but carries {size} bytes of content")));
    }
    Ok((is_file, size))
}

/// What each member path of the archive is, so that every reader refuses, with the same
/// message, what a restore could not place safely: `..` or absolute components, a member
/// under a symlink or a file, a member before its directory, a second member of one name,
/// a hard link that leaves its surface or names no file before it. `verify` therefore
/// never passes an archive `restore` refuses. One hash and a kind per member path: 16
/// bytes a member (decisions/D-05).
#[derive(Default)]
struct Shape {
    kinds: std::collections::HashMap<u64, MemberKind>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MemberKind {
    Dir,
    File,
    Other,
}

fn path_hash(key: &MemberKey, inner: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (key, inner).hash(&mut h);
    h.finish()
}

fn plain(inner: &str) -> bool {
    inner.is_empty() || std::path::Path::new(inner).components().all(|c| matches!(c, std::path::Component::Normal(_)))
}

impl Shape {
    fn check<R: Read>(&mut self, entry: &tar::Entry<'_, R>, path: &str, key: &MemberKey, inner: &str) -> Result<()> {
        if !plain(inner) {
            return Err(Error::Refused(format!("member `{path}`: unsafe path")));
        }
        let kind = entry.header().entry_type();
        if !inner.is_empty() {
            let parent = inner.rsplit_once('/').map_or("", |(p, _)| p);
            match self.kinds.get(&path_hash(key, parent)) {
                Some(MemberKind::Dir) => {}
                Some(_) => return Err(Error::Refused(format!("member `{path}` would be written through a symlink or file at `{parent}`"))),
                None => return Err(Error::Refused(format!("member `{path}` comes before its directory `{parent}`"))),
            }
        }
        let this = match kind {
            EntryType::Directory => MemberKind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => MemberKind::File,
            _ => MemberKind::Other,
        };
        if kind == EntryType::Link {
            self.check_link(entry, path, key)?;
        }
        match self.kinds.insert(path_hash(key, inner), this) {
            None => Ok(()),
            // A directory may be sent again (its metadata applies once); nothing else may.
            Some(MemberKind::Dir) if this == MemberKind::Dir => Ok(()),
            Some(MemberKind::Dir) if inner.is_empty() => Err(Error::Refused(format!("member `{path}` would be written through a symlink or file at `{path}`"))),
            Some(_) => Err(Error::Refused(format!("member `{path}` appears twice"))),
        }
    }

    fn check_link<R: Read>(&self, entry: &tar::Entry<'_, R>, path: &str, key: &MemberKey) -> Result<()> {
        let link = entry.link_name_bytes().map(|b| crate::fs_tree::name_text(&b)).unwrap_or_default();
        let (lkey, linner) = split_member(&link)
            .filter(|(k, _)| k == key)
            .ok_or_else(|| Error::Refused(format!("member `{path}` is a hard link to `{link}`, outside its surface")))?;
        if !plain(linner) {
            return Err(Error::Refused(format!("member `{path}`: unsafe link target")));
        }
        if self.kinds.get(&path_hash(&lkey, linner)) != Some(&MemberKind::File) {
            return Err(Error::Refused(format!("member `{path}` links to `{link}`, which is not a file extracted before it")));
        }
        Ok(())
    }
}

/// The index's fields before its entries.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IndexHead {
    #[allow(dead_code)]
    pub format: u32,
    manifest_blake3: String,
    pub files: u64,
    pub entries: u64,
    pub bytes: u64,
    /// `[]` when there are no files; empty (null) when entry lines follow.
    index: Option<Vec<IndexEntry>>,
}

/// Longest index line accepted: a member path of 4 KiB, fully escaped, and the rest.
const INDEX_LINE_LIMIT: u64 = 64 << 10;

/// Reads the index member line by line (its exact text form, docs/FORMAT.md section 4)
/// and checks it against the files read, in step, holding one entry at a time.
fn check_index<R: Read>(entry: &mut tar::Entry<R>, manifest: (&blake3::Hash, u32), seen: SeenFiles, data_members: u64) -> Result<IndexCheck> {
    let (manifest_hash, manifest_format) = manifest;
    if entry.header().entry_type() != EntryType::Regular || entry.size() > INDEX_LIMIT {
        return Err(Error::Refused(format!("{INDEX_PATH}: not a regular member of at most {INDEX_LIMIT} bytes")));
    }
    let mut hashed = HashingReader { inner: entry.take(INDEX_LIMIT), hasher: blake3::Hasher::new() };
    let mut text = io::BufReader::with_capacity(1 << 16, &mut hashed);
    let mut line = String::new();
    let mut next_line = |line: &mut String| -> Result<bool> {
        line.clear();
        let n = (&mut text).take(INDEX_LINE_LIMIT).read_line(line).map_err(|e| Error::Corrupt(format!("{INDEX_PATH}: {e}")))?;
        if n as u64 == INDEX_LINE_LIMIT && !line.ends_with('\n') {
            return Err(Error::Corrupt(format!("{INDEX_PATH}: a line is longer than {INDEX_LINE_LIMIT} bytes")));
        }
        Ok(n > 0)
    };
    let mut head = String::new();
    loop {
        if !next_line(&mut line)? {
            return Err(Error::Corrupt(format!("{INDEX_PATH}: ends before its `index:` line")));
        }
        head.push_str(&line);
        if line.starts_with("index:") {
            break;
        }
    }
    let head = parse_index_head(&head, manifest_hash, manifest_format)?;
    let mut seen = seen.into_reader()?;
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut inherited = Inherited::new(manifest_format);
    while next_line(&mut line)? {
        if head.index.is_some() {
            return Err(Error::Corrupt(format!("{INDEX_PATH}: entries follow `index: []`")));
        }
        let want = parse_index_line(line.trim_end_matches('\n')).ok_or_else(|| {
            Error::Corrupt(format!(
                "{INDEX_PATH}: entry {} is not an index line (`- {{path: \"...\", size: N, blake3: \"...\"}}`)",
                files + inherited.count + 1
            ))
        })?;
        if want.in_archive.is_some() {
            // Bytes in an ancestor: checked when the chain is read (archive/chain.rs).
            inherited.push(&want.path, &line)?;
            continue;
        }
        let Some((path, size, hash)) = seen.next()? else {
            return Err(Error::Corrupt(format!("{}: listed in the index but missing from the archive", want.path)));
        };
        if want.path != path {
            return Err(Error::Corrupt(format!("{path}: the index lists `{}` at this place", want.path)));
        }
        if want.size != size {
            return Err(Error::Corrupt(format!("{path}: size {size} does not match the index ({})", want.size)));
        }
        if want.blake3 != blake3::Hash::from_bytes(hash).to_hex().as_str() {
            return Err(Error::Corrupt(format!("{path}: content does not match its BLAKE3 in the index")));
        }
        files += 1;
        bytes += size;
    }
    if let Some((path, _, _)) = seen.next()? {
        return Err(Error::Corrupt(format!("{path}: not listed in the index")));
    }
    if head.files != files || head.entries != data_members || head.bytes != bytes {
        return Err(Error::Corrupt("the index's counts do not match the archive's members".into()));
    }
    drop(text);
    Ok(IndexCheck { head, index_blake3: hashed.hasher.finalize(), inherited: inherited.finish() })
}

/// The index's lines up to `index:`, checked against the manifest's hash and format.
pub(crate) fn parse_index_head(head: &str, manifest_hash: &blake3::Hash, manifest_format: u32) -> Result<IndexHead> {
    #[derive(serde::Deserialize)]
    struct Format {
        format: u32,
    }
    let yaml_err = |e: serde_saphyr::Error| Error::Corrupt(format!("{INDEX_PATH}: {}", e.to_string().lines().next().unwrap_or("")));
    let format: Format = serde_saphyr::from_str(head).map_err(yaml_err)?;
    if format.format > super::format::NEWEST_FORMAT {
        return Err(Error::FormatTooNew { archive: format.format, supported: super::format::NEWEST_FORMAT });
    }
    if format.format != manifest_format {
        return Err(Error::Corrupt(format!("{INDEX_PATH}: index format {} in an archive of format {manifest_format}", format.format)));
    }
    let head: IndexHead = serde_saphyr::from_str(head).map_err(yaml_err)?;
    if head.manifest_blake3 != manifest_hash.to_hex().as_str() {
        return Err(Error::Corrupt(format!("{MANIFEST_PATH}: its BLAKE3 does not match the index")));
    }
    Ok(head)
}

/// What reading an index found beyond its totals.
struct IndexCheck {
    head: IndexHead,
    index_blake3: blake3::Hash,
    inherited: Option<Inherited>,
}

/// An incremental's index lines whose bytes are in an ancestor, spilled to a file.
pub(crate) struct Inherited {
    out: Option<io::BufWriter<std::fs::File>>,
    /// How many.
    pub count: u64,
    format: u32,
}

impl Inherited {
    fn new(format: u32) -> Inherited {
        Inherited { out: None, count: 0, format }
    }

    fn push(&mut self, path: &str, line: &str) -> Result<()> {
        use std::io::Write;
        if self.format < super::format::INCREMENTAL_FORMAT {
            return Err(Error::Corrupt(format!("{INDEX_PATH}: `{path}` is listed as held by another archive (`in`), in an archive of format {}", self.format)));
        }
        if self.out.is_none() {
            let f = tempfile::tempfile().map_err(Error::io(std::env::temp_dir(), "creating the list of inherited files"))?;
            self.out = Some(io::BufWriter::with_capacity(1 << 16, f));
        }
        let out = self.out.as_mut().expect("created above");
        out.write_all(line.as_bytes()).map_err(|e| seen_error("writing the list of inherited files", e))?;
        self.count += 1;
        Ok(())
    }

    /// `None` for a format-1 archive, which has no ancestors.
    fn finish(self) -> Option<Inherited> {
        (self.format >= super::format::INCREMENTAL_FORMAT).then_some(self)
    }

    /// The spilled lines, as one index-line file.
    pub(crate) fn into_file(self) -> Result<Option<std::fs::File>> {
        match self.out {
            None => Ok(None),
            Some(out) => out.into_inner().map(Some).map_err(|e| Error::io(std::env::temp_dir(), "writing the list of inherited files")(e.into_error())),
        }
    }
}

/// Fuzzing entry point: `data` as the index member of an archive that holds no files and
/// whose manifest hashes to BLAKE3(""), through the streaming check; and every line of it
/// through the entry-line parser (which the check reaches only after a matching head).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_index(data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    let mut tar = tar::Builder::new(Vec::new());
    if tar.append_data(&mut header, INDEX_PATH, data).is_err() {
        return;
    }
    let Ok(bytes) = tar.into_inner() else { return };
    let mut archive = tar::Archive::new(&bytes[..]);
    if let Some(Ok(mut entry)) = archive.entries().ok().and_then(|mut e| e.next()) {
        if let Ok(seen) = SeenFiles::new() {
            let _ = check_index(&mut entry, (&blake3::hash(b""), super::format::NEWEST_FORMAT), seen, 0);
        }
    }
    for line in String::from_utf8_lossy(data).lines() {
        let _ = parse_index_line(line);
    }
}

/// One entry line. The line hero-snap writes is split directly; a path with escapes
/// goes through the YAML parser.
pub(crate) fn parse_index_line(line: &str) -> Option<IndexEntry> {
    split_index_line(line).or_else(|| line.strip_prefix("- ").and_then(|l| serde_saphyr::from_str(l).ok()))
}

/// The line as [`Index::write_entry`](super::format::Index::write_entry) and
/// `write_inherited` write it for a path without escapes; `None` for any other shape.
/// Every index line of a restore passes here, so it must not fall back to YAML for them.
fn split_index_line(line: &str) -> Option<IndexEntry> {
    let plain = |s: &str| s.chars().all(|c| !c.is_control() && c != '\u{feff}' && c != '\\');
    let (path, rest) = line.strip_prefix("- {path: \"")?.split_once('"')?;
    let (size, rest) = rest.strip_prefix(", size: ")?.split_once(',')?;
    let (hash, rest) = rest.strip_prefix(" blake3: \"")?.split_at_checked(64)?;
    let in_archive = match rest {
        "\"}" => None,
        _ => {
            let id = rest.strip_prefix("\", in: \"")?.strip_suffix("\"}")?;
            if id.is_empty() || id.contains('"') || !plain(id) {
                return None;
            }
            Some(id.to_string())
        }
    };
    let hex = hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let digits = !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit());
    if !(plain(path) && hex && digits) {
        return None;
    }
    Some(IndexEntry { path: path.to_string(), size: size.parse().ok()?, blake3: hash.to_string(), in_archive })
}

/// The (path, size, BLAKE3) of every file read, in order, in an unlinked temporary file.
struct SeenFiles {
    out: Option<io::BufWriter<std::fs::File>>,
}

type SeenFile = (String, u64, [u8; 32]);

impl SeenFiles {
    fn new() -> Result<SeenFiles> {
        let f = tempfile::tempfile().map_err(Error::io(std::env::temp_dir(), "creating the list of files read"))?;
        Ok(SeenFiles { out: Some(io::BufWriter::with_capacity(1 << 16, f)) })
    }

    fn empty() -> SeenFiles {
        SeenFiles { out: None }
    }

    fn push(&mut self, path: &str, size: u64, hash: &blake3::Hash) -> Result<()> {
        use std::io::Write;
        let out = self.out.as_mut().expect("pushed before the index");
        (|| {
            out.write_all(&(path.len() as u32).to_le_bytes())?;
            out.write_all(path.as_bytes())?;
            out.write_all(&size.to_le_bytes())?;
            out.write_all(hash.as_bytes())
        })()
        .map_err(|e| seen_error("writing the list of files read", e))
    }

    fn into_reader(self) -> Result<SeenReader> {
        use std::io::Seek;
        let mut f = self.out.expect("read once").into_inner().map_err(|e| seen_error("writing the list of files read", e.into_error()))?;
        f.rewind().map_err(|e| seen_error("reading the list of files read", e))?;
        Ok(SeenReader(io::BufReader::with_capacity(1 << 16, f)))
    }
}

/// Built only on an error: the list is written once per file.
fn seen_error(action: &'static str, e: io::Error) -> Error {
    Error::io(std::env::temp_dir(), action)(e)
}

struct SeenReader(io::BufReader<std::fs::File>);

impl SeenReader {
    fn next(&mut self) -> Result<Option<SeenFile>> {
        use std::io::BufRead;
        let err = |e| seen_error("reading the list of files read", e);
        if self.0.fill_buf().map_err(err)?.is_empty() {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).map_err(err)?;
        let mut path = vec![0u8; u32::from_le_bytes(len) as usize];
        self.0.read_exact(&mut path).map_err(err)?;
        let mut size = [0u8; 8];
        self.0.read_exact(&mut size).map_err(err)?;
        let mut hash = [0u8; 32];
        self.0.read_exact(&mut hash).map_err(err)?;
        let path = String::from_utf8(path).expect("written from a String");
        Ok(Some((path, u64::from_le_bytes(size), hash)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::format::Index;

    #[test]
    fn written_lines_are_split_without_the_yaml_parser() {
        let hash = blake3::hash(b"x");
        let (mut plain, mut inherited, mut escaped) = (Vec::new(), Vec::new(), Vec::new());
        Index::write_entry(&mut plain, "services/a/b c/d.json", 12, &hash).unwrap();
        Index::write_inherited(&mut inherited, "services/a/e", 7, hash.to_hex().as_str(), "20261201T162105-7764").unwrap();
        Index::write_entry(&mut escaped, "services/a/q\"uote", 1, &hash).unwrap();
        let line = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap().trim_end().to_string();
        let e = split_index_line(&line(&plain)).expect("a plain line is split directly");
        assert_eq!((e.path.as_str(), e.size, e.blake3.as_str(), e.in_archive), ("services/a/b c/d.json", 12, hash.to_hex().as_str(), None));
        let e = split_index_line(&line(&inherited)).expect("an inherited line is split directly");
        assert_eq!((e.path.as_str(), e.size, e.in_archive.as_deref()), ("services/a/e", 7, Some("20261201T162105-7764")));
        assert!(split_index_line(&line(&escaped)).is_none(), "escapes go through YAML");
        assert_eq!(parse_index_line(&line(&escaped)).unwrap().path, "services/a/q\"uote");
    }
}
