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

use super::chain::{check_series, folder_beside, location_key, not_cached, Cache, CacheRecord, HashingWriter, Since};
use super::crypto::{open_seekable, Decryption};
use super::folder::{read_folder, selection_label, Folder};
use super::format::SelectionRecord;
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
    S3(Box<Ranged>),
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
    /// The first part fetched from the start: the head is read twice (manifest, then age's
    /// header for seeking), fetched once.
    first: Option<Vec<u8>>,
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
                (Source::S3(Box::new(r)), len)
            }
        };
        Ok(RangedReader { source, len, pos: 0, buf: Vec::new(), buf_at: 0, window: MIN_FETCH, first: None, fetched: 0, requests: 0 })
    }

    /// The archive's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn fetch(&mut self) -> io::Result<()> {
        let sequential = self.pos == self.buf_at + self.buf.len() as u64 && !self.buf.is_empty();
        self.window = if sequential { (self.window * 2).min(MAX_FETCH) } else { MIN_FETCH };
        if let Some(first) = self.first.as_ref().filter(|_| self.pos == 0) {
            self.buf.clone_from(first);
            self.buf_at = 0;
            self.window = MIN_FETCH;
            return Ok(());
        }
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
        if self.pos == 0 {
            self.first = Some(self.buf.clone());
        }
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
    Fetched(Box<FetchedIndex>),
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
    Ok(IndexFetch::Fetched(Box::new(FetchedIndex {
        manifest,
        manifest_blake3,
        index_blake3,
        entries,
        fetched: reader.fetched,
        archive_bytes: reader.len(),
        requests: reader.requests,
    })))
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
    // The trailer, and what was before it: a trailer cut short is found there.
    let window = len.min(2 * TRAILER_LEN);
    let mut bytes = vec![0u8; window as usize];
    plain.seek(SeekFrom::Start(len - window)).map_err(io_corrupt("reading the index trailer"))?;
    plain.read_exact(&mut bytes).map_err(io_corrupt("reading the index trailer"))?;
    match Trailer::decode(&bytes[bytes.len() - TRAILER_LEN as usize..], len) {
        Ok(t) => Ok(Some(t)),
        Err(NotTrailer::Absent) if Trailer::cut_short(&bytes) => {
            Err(Error::Corrupt("its index trailer is cut short: the archive is truncated; use another archive as the parent".into()))
        }
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
            return Err(Error::Corrupt(format!(
                "the index trailer points to a frame whose member is not {INDEX_PATH} (a regular member of at most {INDEX_LIMIT} bytes)"
            )));
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
        let entry =
            parse_index_line(line.trim_end_matches('\n')).ok_or_else(|| Error::Corrupt(format!("{INDEX_PATH}: entry {} is not an index line", all + 1)))?;
        all += 1;
        own += u64::from(entry.in_archive.is_none());
    }
    if own != head.files {
        return Err(Error::Corrupt(format!("{INDEX_PATH}: lists {own} files of its own, its head says {}", head.files)));
    }
    Ok(all)
}

/// What a parent read from the archive itself cost, for the backup's report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParentFetch {
    /// The parent archive (path or `s3://` URL).
    pub location: String,
    /// Its run id.
    pub run_id: String,
    /// Bytes read from it: its head, its trailer and its index frame.
    pub fetched_bytes: u64,
    /// Its size.
    pub archive_bytes: u64,
    /// Reads (ranged GETs for object storage) made.
    pub requests: u64,
    /// Entry lines of its index (files of its whole state).
    pub index_entries: u64,
}

/// What looking for a parent in the archives themselves gave.
pub(crate) enum FromArchive {
    /// The parent, its index now in the cache (without fingerprints).
    Parent(Box<(CacheRecord, ParentFetch)>),
    /// `--since latest` found nothing to build on, and why.
    NoParent(String),
}

/// The parent of a backup when the index cache does not have it (decisions/D-17): the
/// archive named, or for `latest` the newest archive of the same instance and selection
/// beside `dest`; its index is read by its trailer into the cache.
pub(crate) fn parent_from_archive(
    cache: &Cache,
    since: &Since,
    series: (&str, &SelectionRecord),
    dest: Option<&Location>,
    keys: &Decryption,
) -> Result<FromArchive> {
    let (instance, selection) = series;
    match since {
        Since::Archive(loc) => {
            let key = location_key(loc);
            let mut series_ok = true;
            let found = adopt(cache, loc, keys, |m| {
                let checked = check_series(&key, &m.instance, &m.selection, instance, selection);
                series_ok = checked.is_ok();
                checked
            });
            // The archive named cannot be used as a parent: say why in the cache's terms.
            let found = found.map_err(|e| if series_ok { not_cached(cache, &key, &format!("its index cannot be read from the archive: {e}")) } else { e })?;
            match found {
                Some(found) => Ok(FromArchive::Parent(Box::new(found))),
                None => Err(not_cached(cache, &key, "the archive has no index trailer to read it from (an older hero-snap wrote it)")),
            }
        }
        Since::Latest => {
            let Some(folder) = dest.and_then(folder_beside) else { return Ok(FromArchive::NoParent("standard output has no folder to look in".into())) };
            latest_from_folder(cache, &folder, (instance, selection), keys)
        }
    }
}

fn latest_from_folder(cache: &Cache, folder: &Folder, series: (&str, &SelectionRecord), keys: &Decryption) -> Result<FromArchive> {
    let (instance, selection) = series;
    let listed = read_folder(folder, keys, None)?;
    let label = selection_label(selection);
    let candidate = listed.iter().find(|l| l.summary.as_ref().is_some_and(|s| s.instance == instance && s.selection == label));
    let Some(candidate) = candidate else {
        let unopened = listed.iter().filter(|l| l.encrypted == Some(true) && l.summary.is_none()).count();
        let mut why = format!("no archive of this instance and selection is in {folder}");
        if unopened > 0 {
            why.push_str(&format!(" that this run could open ({unopened} encrypted ones could not be: pass --parent-identity to read them)"));
        }
        return Ok(FromArchive::NoParent(why));
    };
    let loc = candidate.location();
    let mut other_selection = false;
    let found = adopt(cache, &loc, keys, |m| {
        other_selection = m.selection != *selection;
        Ok(())
    });
    match found? {
        // The label leaves out --include-derived: the newest archive is of another series.
        Some(_) if other_selection => Ok(FromArchive::NoParent(format!("the newest archive in {folder}, {loc}, was made with another selection"))),
        Some(found) => Ok(FromArchive::Parent(Box::new(found))),
        None => Ok(FromArchive::NoParent(format!(
            "the newest archive of this instance and selection, {loc}, is not in the state directory's index cache and has no index trailer to read its index from (written by an older hero-snap)"
        ))),
    }
}

/// Fetches the index of the archive at `loc` into the cache, once `check` accepts its
/// manifest; `None` when it has no trailer.
fn adopt(cache: &Cache, loc: &Location, keys: &Decryption, check: impl FnOnce(&Manifest) -> Result<()>) -> Result<Option<(CacheRecord, ParentFetch)>> {
    let tmp = cache.fetch_path()?;
    let fetched = fetch_index(loc, keys, &tmp);
    let fetched = match fetched {
        Ok(IndexFetch::Fetched(f)) => f,
        Ok(IndexFetch::NoTrailer) => {
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = check(&fetched.manifest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let m = &fetched.manifest;
    let mut record = CacheRecord::of(m, fetched.manifest_blake3.to_hex().as_str(), &fetched.index_blake3);
    record.location = location_key(loc);
    record.from_archive = true;
    cache.adopt(&record, &tmp)?;
    let fetch = ParentFetch {
        location: loc.to_string(),
        run_id: m.run_id.clone(),
        fetched_bytes: fetched.fetched,
        archive_bytes: fetched.archive_bytes,
        requests: fetched.requests,
        index_entries: fetched.entries,
    };
    Ok(Some((record, fetch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranged_reader_reads_what_is_asked_and_little_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut r = RangedReader::open(&Location::File(path)).unwrap();
        assert_eq!(r.len(), data.len() as u64);
        // A jump to the end costs one small part.
        r.seek(SeekFrom::End(-40)).unwrap();
        let mut tail = [0u8; 40];
        r.read_exact(&mut tail).unwrap();
        assert_eq!(&tail[..], &data[data.len() - 40..]);
        assert_eq!((r.requests, r.fetched), (1, 40));
        // Reading on from a place: parts double up to 1 MiB, the bytes are the file's.
        r.seek(SeekFrom::Start(1000)).unwrap();
        let mut mid = vec![0u8; 3 << 20];
        r.read_exact(&mut mid).unwrap();
        assert_eq!(&mid[..], &data[1000..1000 + (3 << 20)]);
        assert!(r.requests <= 1 + 8, "{} reads", r.requests);
        assert!(r.fetched < (3 << 20) + (1 << 20) + 40, "{} bytes", r.fetched);
        // The first part is fetched once, however often the head is read.
        r.rewind().unwrap();
        let mut head = [0u8; 100];
        r.read_exact(&mut head).unwrap();
        let (requests, fetched) = (r.requests, r.fetched);
        r.rewind().unwrap();
        r.read_exact(&mut head).unwrap();
        assert_eq!((r.requests, r.fetched), (requests, fetched));
        assert_eq!(&head[..], &data[..100]);
        assert!(r.seek(SeekFrom::Current(-1000)).is_err());
    }
}
