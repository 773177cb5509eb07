//! Writing an archive: manifest, the surfaces' trees, index; through tar → zstd → age.
//!
//! Memory stays bounded: file data streams through, the index goes to a spill file as
//! it grows, and only hard-linked inodes are remembered.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tar::{EntryType, Header, HeaderMode};

use super::chain::{fingerprint, HashingWriter, ParentLookup};
use super::crypto::{EncryptedWriter, Encryption};
use super::format::{Index, Manifest, Warning, ARCHIVE_FORMAT, INCREMENTAL_FORMAT, INDEX_PATH, MANIFEST_PATH};
use super::trailer::Trailer;
use super::tree_reader::{read_tree, Batch, Content, Item, Tree};
use crate::error::{Error, Result};
use crate::fs_tree::{hash_reader, name_path};
use crate::progress::{Cancel, Event, Progress};

/// Compression settings of the archive.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// zstd level, 1..=19 (3 is zstd's default).
    pub level: i32,
    /// zstd worker threads; 0 compresses on the calling thread.
    pub threads: u32,
}

impl Default for Compression {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        Compression { level: 3, threads: cores }
    }
}

/// The BufWriter gathers tar's small writes (a 512-byte header, a small file's data, its
/// padding): zstd's multithreaded stream takes a lock and some bookkeeping per call, which
/// for a million small files cost more than tar's own work.
type Stack<W> = tar::Builder<BufWriter<Frames<OutputThread<W>>>>;

/// The zstd layer as a sequence of frames: the manifest and data in the first, the index
/// member and tar's end blocks in one of their own, so that a reader can decompress the
/// index alone from the offset the trailer gives (decisions/D-17). zstd's `Encoder` cannot
/// be written to after it ends a frame, so each frame gets an encoder of its own.
pub(crate) struct Frames<W: Write> {
    z: Option<zstd::stream::write::Encoder<'static, W>>,
    comp: Compression,
}

impl<W: Write + Counted> Frames<W> {
    fn new(out: W, comp: Compression) -> Result<Frames<W>> {
        Ok(Frames { z: Some(Self::encoder(out, comp)?), comp })
    }

    fn encoder(out: W, comp: Compression) -> Result<zstd::stream::write::Encoder<'static, W>> {
        let mut z = zstd::stream::write::Encoder::new(out, comp.level).map_err(|e| Error::Usage(format!("zstd level {}: {e}", comp.level)))?;
        // A checksum per frame: a flipped byte is caught even where tar ignores content (padding).
        z.include_checksum(true).map_err(|e| Error::Usage(format!("zstd: {e}")))?;
        if comp.threads > 0 {
            z.multithread(comp.threads).map_err(|e| Error::Usage(format!("zstd threads: {e}")))?;
        }
        Ok(z)
    }

    /// Ends the current frame; what is written next goes into a new one at zstd `level`,
    /// which starts at the returned offset of the compressed stream.
    fn end_frame(&mut self, level: i32) -> Result<u64> {
        let (out, at) = self.finish_frame()?;
        self.z = Some(Self::encoder(out, Compression { level, ..self.comp })?);
        Ok(at)
    }

    /// Ends the last frame: the output, and the offset where the frame ended.
    fn finish(mut self) -> Result<(W, u64)> {
        self.finish_frame()
    }

    fn finish_frame(&mut self) -> Result<(W, u64)> {
        let z = self.z.take().ok_or_else(|| out_err(io::Error::other("the zstd stream ended with an error")))?;
        let out = z.finish().map_err(out_err)?;
        let at = out.written();
        Ok((out, at))
    }
}

/// The zstd level of the index frame. The index is mostly hex digests, on which zstd's
/// level 1 gave a smaller frame than its default 3, in less time (1 M files: 41.0 MB in
/// 0.75 s against 45.4 MB in 0.92 s); a level above 3 asks for size at any cost, and gets it.
fn index_level(level: i32) -> i32 {
    if level <= 3 {
        level.min(1)
    } else {
        level
    }
}

impl<W: Write> Write for Frames<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.z.as_mut() {
            Some(z) => z.write(buf),
            None => Err(io::Error::other("the zstd stream ended with an error")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.z.as_mut() {
            Some(z) => z.flush(),
            None => Ok(()),
        }
    }
}

fn out_err(e: io::Error) -> Error {
    Error::Io { path: PathBuf::from("<archive output>"), action: "writing the archive", source: e }
}

/// A writer that knows how many bytes went through it: where a zstd frame starts.
pub(crate) trait Counted {
    fn written(&self) -> u64;
}

pub(crate) struct ArchiveWriter<W: Write + Send + 'static> {
    tar: Stack<W>,
    spill: BufWriter<File>,
    manifest_hash: Option<blake3::Hash>,
    files: u64,
    entries: u64,
    bytes: u64,
    pub(crate) warnings: Vec<Warning>,
    /// File data moves through this buffer, read and compressed in large steps.
    buf: Vec<u8>,
    /// Two fingerprints (stable, then metadata only) per index line, for the index cache.
    stat: BufWriter<File>,
    /// An incremental's parent: files it holds unchanged are listed, not archived.
    parent: Option<ParentIndex>,
    /// Whether the tree being written keeps inode numbers and ctimes (see [`fingerprint`]).
    stable: bool,
    /// Files listed as held by an ancestor, and their bytes.
    pub(crate) inherited: (u64, u64),
}

/// The parent's index, from the cache (decisions/D-13).
pub(crate) struct ParentIndex {
    pub lookup: ParentLookup,
    /// The parent's run id: what its own files are listed `in`.
    pub run_id: String,
    /// Compare content too (`--rehash`), not metadata alone.
    pub rehash: bool,
    /// When the parent's run started (seconds since the epoch; `i64::MIN` when unknown),
    /// which an index without fingerprints (read from the archive) compares with: a file
    /// whose ctime is not before it may have changed owner, mode, times or xattrs since,
    /// which only the fingerprints would show; it is archived again.
    pub changed_before: i64,
}

/// Writes smaller than this reach zstd gathered; file data (1 MiB steps) passes straight.
const TAR_BUFFER: usize = 256 << 10;

/// Size of the file-data buffer: large reads, few zstd calls, BLAKE3 hashing many chunks
/// at once (its SIMD path), and still small next to zstd's own window.
const COPY_BUF: usize = 1 << 20;

/// Wraps a writer with tar, zstd and age.
impl<W: Write + Send + 'static> ArchiveWriter<W> {
    pub(crate) fn new(out: W, enc: &Encryption, comp: Compression) -> Result<ArchiveWriter<W>> {
        let enc = OutputThread::start(EncryptedWriter::new(out, enc)?);
        let z = Frames::new(enc, comp)?;
        let mut tar = tar::Builder::new(BufWriter::with_capacity(TAR_BUFFER, z));
        tar.mode(HeaderMode::Complete);
        tar.follow_symlinks(false);
        let spill = tempfile::tempfile().map_err(Error::io(std::env::temp_dir(), "creating the index spill file"))?;
        let stat = tempfile::tempfile().map_err(Error::io(std::env::temp_dir(), "creating the index spill file"))?;
        Ok(ArchiveWriter {
            tar,
            spill: BufWriter::new(spill),
            manifest_hash: None,
            files: 0,
            entries: 0,
            bytes: 0,
            warnings: Vec::new(),
            buf: vec![0; COPY_BUF],
            stat: BufWriter::new(stat),
            parent: None,
            stable: true,
            inherited: (0, 0),
        })
    }

    /// Makes this an incremental of `parent`: call before the first tree.
    pub(crate) fn incremental(&mut self, parent: ParentIndex) {
        self.parent = Some(parent);
    }

    /// The first member. Must be called once, before any tree.
    pub(crate) fn write_manifest(&mut self, manifest: &Manifest) -> Result<()> {
        let yaml = manifest.to_yaml()?;
        self.manifest_hash = Some(blake3::hash(yaml.as_bytes()));
        append_bytes(&mut self.tar, MANIFEST_PATH, yaml.as_bytes()).map_err(out_err)
    }

    /// Appends the tree at `root` (a directory) under the member path `member_root`.
    /// `stable`: the tree keeps the source's inode numbers and ctimes (not a reflink copy).
    pub(crate) fn write_tree(&mut self, root: &Path, member_root: &str, stable: bool, progress: &dyn Progress, cancel: &Cancel) -> Result<()> {
        self.stable = stable;
        let mut parent = self.parent.take();
        let tree = Tree { root, member_root, stable };
        let written = read_tree(&tree, parent.as_mut(), cancel, |batch| self.write_batch(batch, progress, cancel));
        self.parent = parent;
        written
    }

    fn write_batch(&mut self, batch: &mut Batch, progress: &dyn Progress, cancel: &Cancel) -> Result<()> {
        let mut read = 0;
        for item in batch.items.drain(..) {
            read += self.write_item(item, &batch.data, progress, cancel)?;
        }
        if read > 0 {
            progress.event(&Event::Bytes { bytes: read });
        }
        Ok(())
    }

    /// Encodes one entry; returns the bytes of file data it took from `data`.
    fn write_item(&mut self, item: Item, data: &[u8], progress: &dyn Progress, cancel: &Cancel) -> Result<u64> {
        match item {
            Item::Dir { member, meta, xattrs } => {
                self.pax(&xattrs)?;
                self.append_header(&mut header_of(&meta, EntryType::Directory), &name_path(&format!("{member}/")))?;
            }
            Item::Symlink { member, meta, target } => {
                let mut header = header_of(&meta, EntryType::Symlink);
                header.set_size(0);
                self.tar.append_link(&mut header, name_path(&member), &target).map_err(out_err)?;
            }
            Item::HardLink { member, meta, first } => {
                let mut header = header_of(&meta, EntryType::Link);
                header.set_size(0);
                self.tar.append_link(&mut header, name_path(&member), name_path(&first)).map_err(out_err)?;
            }
            Item::Inherited { member, meta, size, blake3, origin } => {
                Index::write_inherited(&mut self.spill, &member, size, &blake3, &origin).map_err(Error::io("<index spill>", "writing"))?;
                self.fingerprints(&meta)?;
                self.inherited.0 += 1;
                self.inherited.1 += size;
                return Ok(0);
            }
            Item::Special { path, kind } => {
                let w = Warning { code: "skipped-special-file".into(), message: format!("{}: {kind} not archived", path.display()) };
                progress.event(&Event::Warning { warning: w.clone() });
                self.warnings.push(w);
                return Ok(0);
            }
            Item::File { path, member, meta, xattrs, content } => {
                self.pax(&xattrs)?;
                return self.write_file((&path, &member, &meta), content, data, progress, cancel);
            }
        }
        self.entries += 1;
        Ok(0)
    }

    /// `entry`: the file's path, member path and metadata (its descriptor's `fstat`).
    fn write_file(&mut self, entry: (&Path, &str, &std::fs::Metadata), content: Content, data: &[u8], progress: &dyn Progress, cancel: &Cancel) -> Result<u64> {
        let (path, member, meta) = entry;
        let size = meta.len();
        let (hash, changed, read) = match content {
            Content::Read { range, hash, changed } => {
                self.append_header(&mut header_of(meta, EntryType::Regular), &name_path(member))?;
                let out = self.tar.get_mut();
                out.write_all(&data[range]).and_then(|()| out.write_all(padding(size))).map_err(out_err)?;
                (hash, changed, size)
            }
            Content::Sparse { mut file } => {
                // The tar crate writes a GNU sparse member; hash the logical content.
                let hash = hash_reader(&mut file).map_err(Error::io(path, "reading"))?;
                file.rewind().map_err(Error::io(path, "reading"))?;
                self.tar.append_file(name_path(member), &mut file).map_err(out_err)?;
                (hash, file.metadata().map_err(Error::io(path, "reading metadata"))?.len() != size, 0)
            }
            Content::Open { mut file } => {
                // The header goes through tar (long names, checksum), the data does not: tar
                // copies 8 KiB at a time, a read syscall and a zstd call per 8 KiB.
                self.append_header(&mut header_of(meta, EntryType::Regular), &name_path(member))?;
                let (hash, short) = self.copy_data(&mut file, path, size, progress, cancel)?;
                let grew = file.read(&mut [0u8; 1]).map_err(Error::io(path, "reading"))? > 0;
                (hash, short || grew, 0)
            }
        };
        if changed {
            self.changed(path, progress);
        }
        Index::write_entry(&mut self.spill, member, size, &hash).map_err(Error::io("<index spill>", "writing"))?;
        self.fingerprints(meta)?;
        self.files += 1;
        self.entries += 1;
        self.bytes += size;
        Ok(read)
    }

    /// Appends a member's header, with no data: a directory's, or a regular file's whose
    /// data the caller writes next. A path that fits tar's name field is put there as it is
    /// (a member path is made of plain components already): tar's own `set_path` takes it
    /// apart into components, a tenth of the writer's time on small files.
    fn append_header(&mut self, header: &mut Header, member: &Path) -> Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = member.as_os_str().as_bytes();
        let name = &mut header.as_old_mut().name;
        if bytes.len() > name.len() {
            return self.tar.append_data(header, member, io::empty()).map_err(out_err);
        }
        name[..bytes.len()].copy_from_slice(bytes);
        header.set_cksum();
        self.tar.append(header, io::empty()).map_err(out_err)
    }

    /// Writes exactly `size` bytes of `file` as a member's data, with its padding: zeros
    /// in place of what is missing if the file shrank (`short`). Returns the data's hash.
    fn copy_data(&mut self, file: &mut File, path: &Path, size: u64, progress: &dyn Progress, cancel: &Cancel) -> Result<(blake3::Hash, bool)> {
        let mut hasher = blake3::Hasher::new();
        let (mut remaining, mut short, mut pending) = (size, false, 0u64);
        let out = self.tar.get_mut();
        while remaining > 0 {
            // Checked per buffer, so that a cancel does not wait for the end of a large file.
            cancel.check()?;
            let want = self.buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let buf = &mut self.buf[..want];
            let mut n = 0;
            while !short && n < want {
                match file.read(&mut buf[n..]) {
                    Ok(0) => short = true,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io(path, "reading")(e)),
                }
            }
            buf[n..].fill(0);
            hasher.update(buf);
            out.write_all(buf).map_err(out_err)?;
            remaining -= want as u64;
            pending += want as u64;
            if pending >= 1 << 22 || remaining == 0 {
                progress.event(&Event::Bytes { bytes: pending });
                pending = 0;
            }
        }
        out.write_all(padding(size)).map_err(out_err)?;
        Ok((hasher.finalize(), short))
    }

    fn changed(&mut self, path: &Path, progress: &dyn Progress) {
        let w = Warning {
            code: "changed-while-read".into(),
            message: format!("{}: changed while it was archived; the archived copy may be torn (back up from a snapshot)", path.display()),
        };
        progress.event(&Event::Warning { warning: w.clone() });
        self.warnings.push(w);
    }

    /// A PAX header with extended attributes' records, if there are any, before a member.
    fn pax(&mut self, records: &[u8]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_size(records.len() as u64);
        header.set_mode(0o644);
        header.set_path("././@PaxHeader").map_err(out_err)?;
        header.set_cksum();
        self.tar.append(&header, records).map_err(out_err)
    }

    fn fingerprints(&mut self, meta: &std::fs::Metadata) -> Result<()> {
        let (strong, weak) = (fingerprint(meta, self.stable), fingerprint(meta, false));
        self.stat.write_all(&strong.to_le_bytes()).and_then(|_| self.stat.write_all(&weak.to_le_bytes())).map_err(Error::io("<index spill>", "writing"))
    }

    /// Writes the index and finishes every layer, in the only order that yields a readable file.
    /// `cache`: where a copy of the index and its fingerprints go (the index cache).
    pub(crate) fn finish(mut self, cache: Option<(&Path, &Path)>) -> Result<(W, ArchiveTotals)> {
        let manifest_hash = self.manifest_hash.expect("the manifest is written first").to_hex().to_string();
        let format = if self.parent.is_some() { INCREMENTAL_FORMAT } else { ARCHIVE_FORMAT };
        let mut head = Vec::new();
        Index::write_head(&mut head, format, &manifest_hash, self.files, self.entries, self.bytes).expect("Vec write");
        let mut spill = self.spill.into_inner().map_err(|e| Error::io("<index spill>", "writing")(e.into_error()))?;
        let spill_len = spill.stream_position().map_err(Error::io("<index spill>", "reading"))?;
        spill.rewind().map_err(Error::io("<index spill>", "reading"))?;
        // The index's hash (a child archive names it), and its copy for the cache.
        let index_blake3 = {
            let copy: Box<dyn Write> = match cache {
                Some((index, _)) => Box::new(BufWriter::new(File::create(index).map_err(Error::io(index, "writing the cached index"))?)),
                None => Box::new(io::sink()),
            };
            let mut out = HashingWriter { inner: copy, hasher: blake3::Hasher::new() };
            out.write_all(&head)
                .and_then(|_| io::copy(&mut (&mut spill).take(spill_len), &mut out))
                .and_then(|_| out.flush())
                .map_err(Error::io("<index cache>", "writing"))?;
            spill.rewind().map_err(Error::io("<index spill>", "reading"))?;
            out.hasher.finalize()
        };
        if let Some((_, stat_path)) = cache {
            let mut stat = self.stat.into_inner().map_err(|e| Error::io("<index spill>", "writing")(e.into_error()))?;
            stat.rewind().map_err(Error::io("<index spill>", "reading"))?;
            let mut out = File::create(stat_path).map_err(Error::io(stat_path, "writing the cached fingerprints"))?;
            io::copy(&mut stat, &mut out).map_err(Error::io(stat_path, "writing the cached fingerprints"))?;
        }
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_size(head.len() as u64 + spill_len);
        header.set_mode(0o644);
        header.set_mtime(now_secs());
        self.tar.get_mut().flush().map_err(out_err)?;
        let level = index_level(self.tar.get_mut().get_mut().comp.level);
        let offset = self.tar.get_mut().get_mut().end_frame(level)?;
        self.tar.append_data(&mut header, INDEX_PATH, (&head[..]).chain(spill)).map_err(out_err)?;
        // tar's end blocks go into the index frame: the data frame then ends mid-archive,
        // which only matters to a reader that stops at a frame's end, and none does.
        let z = self.tar.into_inner().map_err(out_err)?.into_inner().map_err(|e| out_err(e.into_error()))?;
        let (mut enc, end) = z.finish()?;
        enc.write_all(&Trailer { offset, length: end - offset }.encode()).map_err(out_err)?;
        let out = enc.finish().map_err(out_err)?;
        Ok((out, ArchiveTotals { files: self.files, entries: self.entries, bytes: self.bytes, manifest_blake3: manifest_hash, index_blake3 }))
    }
}

/// The last stages, age encryption and the output, on a thread of their own, so that the
/// thread that reads files and feeds zstd never waits for them (the stock pipeline gets
/// the same overlap from its separate `age` process). Buffers of [`OUTPUT_CHUNK`] are
/// handed over, [`OUTPUT_CHUNKS_IN_FLIGHT`] at most, and come back for reuse.
///
/// The output is finished (age's last chunk) only by [`OutputThread::finish`]; dropped
/// before that, the thread drops the output unfinished, e.g. an S3 upload aborts, and the
/// drop waits for it. An output error ends the thread; the next write returns that error.
pub(crate) struct OutputThread<W: Write + Send + 'static> {
    tx: Option<mpsc::SyncSender<Option<Vec<u8>>>>,
    recycled: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    thread: Option<std::thread::JoinHandle<io::Result<Option<W>>>>,
    /// Bytes taken so far.
    written: u64,
}

impl<W: Write + Send + 'static> Counted for OutputThread<W> {
    fn written(&self) -> u64 {
        self.written
    }
}

const OUTPUT_CHUNK: usize = 1 << 20;
const OUTPUT_CHUNKS_IN_FLIGHT: usize = 4;

impl<W: Write + Send + 'static> OutputThread<W> {
    fn start(mut out: EncryptedWriter<W>) -> OutputThread<W> {
        let (tx, rx) = mpsc::sync_channel::<Option<Vec<u8>>>(OUTPUT_CHUNKS_IN_FLIGHT);
        let (back, recycled) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hero-snap-output".into())
            .spawn(move || -> io::Result<Option<W>> {
                for msg in rx {
                    match msg {
                        Some(buf) => {
                            out.write_all(&buf)?;
                            let _ = back.send(buf);
                        }
                        None => return out.finish().map(Some),
                    }
                }
                Ok(None)
            })
            .expect("spawning the archive output thread");
        OutputThread { tx: Some(tx), recycled, buf: Vec::with_capacity(OUTPUT_CHUNK), thread: Some(thread), written: 0 }
    }

    fn send(&mut self, msg: Option<Vec<u8>>) -> io::Result<()> {
        match self.tx.as_ref().map(|tx| tx.send(msg)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Closes the channel and waits for the thread: the finished output, `None` if it was
    /// dropped unfinished, or the error that ended it.
    fn join(&mut self) -> io::Result<Option<W>> {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(None),
        }
    }

    /// The error that ended the thread.
    fn stopped(&mut self) -> io::Error {
        self.join().err().unwrap_or_else(|| io::Error::other("the archive output stopped"))
    }

    fn send_buf(&mut self) -> io::Result<()> {
        let next = self.recycled.try_recv().map(|mut b| {
            b.clear();
            b
        });
        let full = std::mem::replace(&mut self.buf, next.unwrap_or_else(|_| Vec::with_capacity(OUTPUT_CHUNK)));
        self.send(Some(full))
    }

    /// Sends what is left, finishes the output and returns it.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            self.send_buf()?;
        }
        self.send(None)?;
        self.join()?.ok_or_else(|| io::Error::other("the archive output stopped"))
    }
}

impl<W: Write + Send + 'static> Write for OutputThread<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(OUTPUT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == OUTPUT_CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    /// Buffers go out when full or at the end; a flush mid-stream has nothing to promise.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for OutputThread<W> {
    fn drop(&mut self) {
        // A panic of the thread is not re-raised from a drop.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens a file to archive without updating its access time (a backup should not dirty
/// every inode it reads; on a live filesystem that is a journal write per file). Only the
/// owner or root may ask for that; anyone else gets a plain open.
pub(crate) fn open_source(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        other => other,
    }
}

/// What went into an archive.
#[derive(Debug, Clone)]
#[allow(dead_code)] // backup takes its counts from the manifest; kept for other writers
pub(crate) struct ArchiveTotals {
    /// Regular files.
    pub files: u64,
    /// Data members.
    pub entries: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// BLAKE3 of the manifest member, hex.
    pub manifest_blake3: String,
    /// BLAKE3 of the index member.
    pub index_blake3: blake3::Hash,
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(now_secs());
    tar.append_data(&mut header, path, data)
}

/// A member's header with `meta`'s owner, mode and times.
fn header_of(meta: &std::fs::Metadata, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(meta, HeaderMode::Complete);
    header.set_mode(meta.permissions().mode() & 0o7777);
    header.set_entry_type(kind);
    header
}

/// The zeros that pad a member's data of `size` bytes to tar's 512-byte blocks.
fn padding(size: u64) -> &'static [u8] {
    &[0u8; 512][..((512 - size % 512) % 512) as usize]
}
