//! An archive's index read from its end alone (decisions/D-17): the trailer's two ranged
//! reads instead of the whole archive, for a backup whose parent's index is not in the
//! state directory's cache.
//!
//! Memory stays bounded whatever the index's size: the index streams from the archive,
//! through age and zstd, to a file; it is then checked line by line.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tar::EntryType;

use super::chain::HashingWriter;
use super::crypto::{open_seekable, Decryption};
use super::format::{Manifest, INDEX_PATH};
use super::read::{parse_index_head, parse_index_line, read_head, INDEX_LIMIT};
use super::s3::Ranged;
use super::trailer::{NotTrailer, Trailer, TRAILER_LEN};
use super::Location;
use crate::error::{Error, Result};

/// First read at a new place: one age chunk (64 KiB and its tag).
const MIN_FETCH: usize = (64 << 10) + 16;
/// Reads that go on where the last one ended double up to this.
const MAX_FETCH: usize = 1 << 20;

enum Source {
    File(File),
    S3(Ranged),
}

/// A file or object read in parts (pread, or one ranged GET per part), with what it cost.
/// A read that continues where the last ended fetches twice as much, up to [`MAX_FETCH`]:
/// the head and the index frame stream in large parts, a jump costs one small one.
pub(crate) struct RangedReader {
    source: Source,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
    window: usize,
    /// Bytes fetched from the file or object.
    pub fetched: u64,
    /// Reads (ranged GETs) made.
    pub requests: u64,
}

impl RangedReader {
    /// The archive at `loc`; standard input cannot be read in parts.
    pub(crate) fn open(loc: &Location) -> Result<RangedReader> {
        let (source, len) = match loc {
            Location::Stdio => return Err(Error::Usage("`-` (standard input) cannot be read in parts; name the parent archive's file or s3:// key".into())),
            Location::File(p) => {
                let f = File::open(p).map_err(Error::io(p, "opening the archive"))?;
                let len = f.metadata().map_err(Error::io(p, "reading the archive"))?.len();
                (Source::File(f), len)
            }
            Location::S3(obj) => {
                let r = Ranged::open(obj)?;
                let len = r.size;
                (Source::S3(r), len)
            }
        };
        Ok(RangedReader { source, len, pos: 0, buf: Vec::new(), buf_at: 0, window: MIN_FETCH, fetched: 0, requests: 0 })
    }

    /// The archive's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn fetch(&mut self) -> io::Result<()> {
        let sequential = self.pos == self.buf_at + self.buf.len() as u64 && !self.buf.is_empty();
        self.window = if sequential { (self.window * 2).min(MAX_FETCH) } else { MIN_FETCH };
        let n = (self.window as u64).min(self.len - self.pos) as usize;
        self.buf = match &self.source {
            Source::File(f) => {
                let mut b = vec![0; n];
                f.read_exact_at(&mut b, self.pos)?;
                b
            }
            Source::S3(r) => r.read(self.pos..self.pos + n as u64)?,
        };
        if self.buf.len() != n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive changed while it was read"));
        }
        self.buf_at = self.pos;
        self.fetched += n as u64;
        self.requests += 1;
        Ok(())
    }
}

impl Read for RangedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let end = self.buf_at + self.buf.len() as u64;
        if self.pos < self.buf_at || self.pos >= end {
            self.fetch()?;
        }
        let from = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = to.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the archive"))?;
        Ok(self.pos)
    }
}

/// An index read from an archive's end, and what it cost.
#[derive(Debug)]
pub(crate) struct FetchedIndex {
    pub manifest: Manifest,
    pub manifest_blake3: blake3::Hash,
    /// BLAKE3 of the index member: what a child archive names.
    pub index_blake3: blake3::Hash,
    /// Index entry lines (files of the whole state).
    pub entries: u64,
    /// Bytes fetched (head, trailer, index frame), and the archive's size.
    pub fetched: u64,
    pub archive_bytes: u64,
    /// Reads (ranged GETs) made.
    pub requests: u64,
}

/// What [`fetch_index`] found.
#[derive(Debug)]
pub(crate) enum IndexFetch {
    Fetched(FetchedIndex),
    /// The archive has no index trailer (format 1 or 2 written before D-17): its index
    /// can only be had by reading it whole.
    NoTrailer,
}

/// Reads the index of the archive at `loc` into `dest` by its trailer: the manifest at
/// the head, the trailer at the end, then the index frame it points to.
pub(crate) fn fetch_index(loc: &Location, keys: &Decryption, dest: &Path) -> Result<IndexFetch> {
    let named = |e: Error| match e {
        Error::Corrupt(m) => Error::Corrupt(format!("{loc}: {m}")),
        Error::Refused(m) => Error::Refused(format!("{loc}: {m}")),
        Error::Crypto(m) => Error::Crypto(format!("{loc}: {m}")),
        Error::Usage(m) => Error::Usage(format!("{loc}: {m}")),
        other => other,
    };
    let mut reader = RangedReader::open(loc)?;
    let (manifest, manifest_blake3) = read_head(&mut reader, keys).map_err(named)?;
    reader.rewind().map_err(|e| Error::Corrupt(format!("{loc}: {e}")))?;
    let found = {
        let mut plain = open_seekable(&mut reader, keys).map_err(named)?;
        match find_trailer(&mut plain).map_err(named)? {
            None => None,
            Some(t) => Some(read_index_frame(&mut plain, t, dest).map_err(named)?),
        }
    };
    let Some(index_blake3) = found else { return Ok(IndexFetch::NoTrailer) };
    let entries = check_fetched(dest, &manifest, &manifest_blake3).map_err(named)?;
    Ok(IndexFetch::Fetched(FetchedIndex {
        manifest,
        manifest_blake3,
        index_blake3,
        entries,
        fetched: reader.fetched,
        archive_bytes: reader.len(),
        requests: reader.requests,
    }))
}

fn io_corrupt(what: &'static str) -> impl Fn(io::Error) -> Error {
    move |e| Error::Corrupt(format!("{what}: {e}"))
}

/// The trailer at the end of the decrypted stream, `None` when there is none.
fn find_trailer(plain: &mut dyn super::crypto::ReadSeek) -> Result<Option<Trailer>> {
    // age proves the stream's length here, by opening its last chunk as the last one: a
    // truncated archive fails now.
    let len = plain.seek(SeekFrom::End(0)).map_err(io_corrupt("the archive is truncated or damaged at its end"))?;
    if len < TRAILER_LEN {
        return Ok(None);
    }
    let mut bytes = [0u8; TRAILER_LEN as usize];
    plain.seek(SeekFrom::Start(len - TRAILER_LEN)).map_err(io_corrupt("reading the index trailer"))?;
    plain.read_exact(&mut bytes).map_err(io_corrupt("reading the index trailer"))?;
    match Trailer::decode(&bytes, len) {
        Ok(t) => Ok(Some(t)),
        Err(NotTrailer::Absent) => Ok(None),
        Err(NotTrailer::Bad(m)) => Err(Error::Corrupt(m)),
    }
}

/// Decompresses the index frame into `dest`: the index member and tar's end blocks,
/// nothing else. Returns the member's BLAKE3.
fn read_index_frame(plain: &mut dyn super::crypto::ReadSeek, t: Trailer, dest: &Path) -> Result<blake3::Hash> {
    plain.seek(SeekFrom::Start(t.offset)).map_err(io_corrupt("reading the index frame"))?;
    let frame = plain.take(t.length);
    let z = zstd::stream::read::Decoder::new(frame).map_err(io_corrupt("the index frame"))?.single_frame();
    let mut archive = tar::Archive::new(z);
    let hash = {
        let mut entries = archive.entries().map_err(io_corrupt("the index frame"))?;
        let mut entry = entries
            .next()
            .ok_or_else(|| Error::Corrupt("the index trailer points to a frame that holds no member".into()))?
            .map_err(io_corrupt("the index frame"))?;
        if entry.path_bytes().as_ref() != INDEX_PATH.as_bytes() || entry.header().entry_type() != EntryType::Regular || entry.size() > INDEX_LIMIT {
            return Err(Error::Corrupt(format!("the index trailer points to a frame whose member is not {INDEX_PATH} (a regular member of at most {INDEX_LIMIT} bytes)")));
        }
        let out = File::create(dest).map_err(Error::io(dest, "writing the fetched index"))?;
        let mut out = HashingWriter { inner: io::BufWriter::new(out), hasher: blake3::Hasher::new() };
        io::copy(&mut entry, &mut out).map_err(io_corrupt("the index frame"))?;
        out.flush().map_err(Error::io(dest, "writing the fetched index"))?;
        if entries.next().is_some() {
            return Err(Error::Corrupt(format!("the index frame holds a member after {INDEX_PATH}")));
        }
        out.hasher.finalize()
    };
    // To the frame's end, so that zstd checks its checksum; and the frame must end where
    // the trailer says.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(io_corrupt("the index frame"))?;
    let left = rest.finish();
    if left.get_ref().limit() != 0 || !left.buffer().is_empty() {
        return Err(Error::Corrupt("the index frame ends before the trailer says it does".into()));
    }
    Ok(hash)
}

/// The fetched index belongs to the archive's manifest, and every entry line parses.
/// Returns the number of entry lines.
fn check_fetched(path: &Path, manifest: &Manifest, manifest_blake3: &blake3::Hash) -> Result<u64> {
    let file = File::open(path).map_err(Error::io(path, "reading the fetched index"))?;
    let mut lines = BufReader::with_capacity(1 << 16, file);
    let (mut head, mut line) = (String::new(), String::new());
    loop {
        line.clear();
        if lines.read_line(&mut line).map_err(Error::io(path, "reading the fetched index"))? == 0 {
            return Err(Error::Corrupt(format!("{INDEX_PATH}: ends before its `index:` line")));
        }
        head.push_str(&line);
        if line.starts_with("index:") {
            break;
        }
    }
    let head = parse_index_head(&head, manifest_blake3, manifest.format)?;
    let (mut own, mut all) = (0u64, 0u64);
    loop {
        line.clear();
        if lines.read_line(&mut line).map_err(Error::io(path, "reading the fetched index"))? == 0 {
            break;
        }
        let entry = parse_index_line(line.trim_end_matches('\n')).ok_or_else(|| Error::Corrupt(format!("{INDEX_PATH}: entry {} is not an index line", all + 1)))?;
        all += 1;
        own += u64::from(entry.in_archive.is_none());
    }
    if own != head.files {
        return Err(Error::Corrupt(format!("{INDEX_PATH}: lists {own} files of its own, its head says {}", head.files)));
    }
    Ok(all)
}
