//! Incremental archives (decisions/D-13): what a backup compares against, and what a chain
//! restore looks files up in.
//!
//! - [`IndexTable`]: the entry lines of an index, looked up by member path. Only a hash and
//!   an offset per entry stay in memory (16 bytes); the line is read back from its file.
//! - [`fingerprint`]: the metadata a file is recognised as unchanged by.
//! - [`Cache`]: each backup's index and fingerprints, kept in the state directory so that
//!   the next incremental needs neither the parent archive nor the key that opens it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::format::{IndexEntry, SelectionRecord};
use super::read::parse_index_line;
use crate::error::{Error, Result};

fn path_key(path: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// Index entry lines of one file, found by path.
pub(crate) struct IndexTable {
    file: File,
    /// (hash of the path, offset of its line, entry number), sorted.
    rows: Vec<(u64, u64, u32)>,
    found: Vec<bool>,
    what: String,
}

impl IndexTable {
    /// Every entry line of `file` (lines before `index:` and the line itself are skipped)
    /// that `keep` accepts. `what` names the file in errors.
    pub(crate) fn build(file: File, what: &str, keep: impl Fn(&IndexEntry) -> bool) -> Result<IndexTable> {
        let mut rows = Vec::new();
        let file = scan(file, what, |entry, row| {
            if keep(entry) {
                rows.push(row);
            }
        })?;
        Ok(IndexTable::of(file, rows, what))
    }

    /// One table per ancestor (`in`) of the entry lines `keep` accepts, in one pass.
    pub(crate) fn build_per_ancestor(file: File, what: &str, keep: impl Fn(&IndexEntry) -> bool) -> Result<HashMap<String, IndexTable>> {
        let mut groups: HashMap<String, Vec<(u64, u64, u32)>> = HashMap::new();
        let file = scan(file, what, |entry, row| {
            if let Some(run) = entry.in_archive.as_ref().filter(|_| keep(entry)) {
                groups.entry(run.clone()).or_default().push(row);
            }
        })?;
        let mut tables = HashMap::with_capacity(groups.len());
        for (run, rows) in groups {
            let handle = file.try_clone().map_err(Error::io(what, "reading the index"))?;
            tables.insert(run, IndexTable::of(handle, rows, what));
        }
        Ok(tables)
    }

    fn of(file: File, mut rows: Vec<(u64, u64, u32)>, what: &str) -> IndexTable {
        rows.sort_unstable();
        let found = vec![false; rows.len()];
        IndexTable { file, rows, found, what: what.to_string() }
    }

    /// Entries in the table.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    fn line_at(&self, offset: u64) -> Result<IndexEntry> {
        self.line_and_end(offset).map(|(entry, _)| entry)
    }

    /// The entry line at `offset`, and the offset of the line after it.
    fn line_and_end(&self, offset: u64) -> Result<(IndexEntry, u64)> {
        let mut buf = vec![0u8; 4096];
        let mut text = Vec::new();
        loop {
            let n = self.file.read_at(&mut buf, offset + text.len() as u64).map_err(Error::io(&self.what, "reading the index"))?;
            let chunk = &buf[..n];
            if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                text.extend_from_slice(&chunk[..end]);
                break;
            }
            if n == 0 || text.len() > 1 << 16 {
                return Err(Error::Corrupt(format!("{}: an index line ends unfinished", self.what)));
            }
            text.extend_from_slice(chunk);
        }
        let end = offset + text.len() as u64 + 1;
        self.entry_of(text).map(|entry| (entry, end))
    }

    fn entry_of(&self, text: Vec<u8>) -> Result<IndexEntry> {
        let line = String::from_utf8(text).map_err(|_| Error::Corrupt(format!("{}: an index line is not UTF-8", self.what)))?;
        parse_index_line(&line).ok_or_else(|| Error::Corrupt(format!("{}: not an index line: {line}", self.what)))
    }

    /// The entry for `path`, with its row (for [`IndexTable::mark`]) and entry number.
    pub(crate) fn get(&self, path: &str) -> Result<Option<(usize, u32, IndexEntry)>> {
        Ok(self.find(path)?.map(|(row, number, entry, _)| (row, number, entry)))
    }

    /// [`IndexTable::get`], with the offset of the line after the entry's.
    fn find(&self, path: &str) -> Result<Option<(usize, u32, IndexEntry, u64)>> {
        let key = path_key(path);
        let start = self.rows.partition_point(|r| r.0 < key);
        for (row, &(k, offset, number)) in self.rows.iter().enumerate().skip(start) {
            if k != key {
                break;
            }
            let (entry, end) = self.line_and_end(offset)?;
            if entry.path == path {
                return Ok(Some((row, number, entry, end)));
            }
        }
        Ok(None)
    }

    /// Records that the entry of `row` was found; false if it was already.
    pub(crate) fn mark(&mut self, row: usize) -> bool {
        !std::mem::replace(&mut self.found[row], true)
    }

    /// An entry never marked, if any.
    pub(crate) fn first_missing(&self) -> Result<Option<IndexEntry>> {
        match self.found.iter().position(|f| !f) {
            Some(row) => self.line_at(self.rows[row].1).map(Some),
            None => Ok(None),
        }
    }
}

/// Calls `each` with every entry line of `file` and its row (path key, offset, number).
fn scan(mut file: File, what: &str, mut each: impl FnMut(&IndexEntry, (u64, u64, u32))) -> Result<File> {
    let err = |e: io::Error| Error::io(what, "reading the index")(e);
    file.rewind().map_err(err)?;
    let mut reader = BufReader::with_capacity(1 << 16, &file);
    let (mut offset, mut number, mut line) = (0u64, 0u32, String::new());
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(err)?;
        if n == 0 {
            break;
        }
        if line.starts_with("- ") {
            let entry =
                parse_index_line(line.trim_end_matches('\n')).ok_or_else(|| Error::Corrupt(format!("{what}: entry {} is not an index line", number + 1)))?;
            each(&entry, (path_key(&entry.path), offset, number));
            number += 1;
        }
        offset += n as u64;
    }
    drop(reader);
    Ok(file)
}

/// A parent's index entry, with its (strong, weak) fingerprints when the index has them.
pub(crate) type ParentEntry = (IndexEntry, Option<(u64, u64)>);

/// A parent's index looked up by a backup. The backup walks the tree in the order the
/// parent's walk did, so the line after the last one found is usually the one asked for:
/// it is read sequentially, and the hashed table is asked only after a change.
pub(crate) struct ParentLookup {
    table: IndexTable,
    lines: BufReader<File>,
    /// Where `lines` stands in the file.
    at: u64,
    /// The next line in file order: its entry number, entry, and the offset after it.
    next: Option<(u32, IndexEntry, u64)>,
    /// The parent's two fingerprints per entry (strong, weak), read whole: 16 bytes a file.
    /// `None` for an index read from the archive itself, which has none (decisions/D-17).
    fingerprints: Option<Vec<u64>>,
}

impl ParentLookup {
    fn new(table: IndexTable, stat: Option<(File, &Path)>) -> Result<ParentLookup> {
        let fingerprints = match stat {
            Some((file, path)) => Some(Self::fingerprints(&table, file, path)?),
            None => None,
        };
        let file = table.file.try_clone().map_err(Error::io(&table.what, "reading the index"))?;
        let first = table.rows.iter().find(|r| r.2 == 0).map(|r| r.1);
        let mut lookup = ParentLookup { table, lines: BufReader::with_capacity(1 << 16, file), at: 0, next: None, fingerprints };
        if let Some(offset) = first {
            lookup.read_next(offset, 0)?;
        }
        Ok(lookup)
    }

    fn fingerprints(table: &IndexTable, mut stat: File, stat_path: &Path) -> Result<Vec<u64>> {
        let mut bytes = Vec::with_capacity(table.len() * 16);
        stat.read_to_end(&mut bytes).map_err(Error::io(stat_path, "reading the cached fingerprints"))?;
        if bytes.len() != table.len() * 16 {
            return Err(Error::Corrupt(format!(
                "{}: holds {} bytes for {} index entries; delete it and run a full backup",
                stat_path.display(),
                bytes.len(),
                table.len()
            )));
        }
        Ok(bytes.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
    }

    /// The parent's entry for `path`, with its (strong, weak) fingerprints when the index
    /// has them.
    pub(crate) fn get(&mut self, path: &str) -> Result<Option<ParentEntry>> {
        let found = match self.next.take() {
            Some((number, entry, end)) if entry.path == path => Some((number, entry, end)),
            next => {
                self.next = next;
                self.table.find(path)?.map(|(_, number, entry, end)| (number, entry, end))
            }
        };
        let Some((number, entry, end)) = found else { return Ok(None) };
        self.read_next(end, number + 1)?;
        let i = number as usize * 2;
        Ok(Some((entry, self.fingerprints.as_ref().map(|f| (f[i], f[i + 1])))))
    }

    fn read_next(&mut self, offset: u64, number: u32) -> Result<()> {
        let err = Error::io(&self.table.what, "reading the index");
        if offset != self.at {
            self.lines.seek(io::SeekFrom::Start(offset)).map_err(err)?;
            self.at = offset;
        }
        let mut text = Vec::new();
        let n = self.lines.read_until(b'\n', &mut text).map_err(Error::io(&self.table.what, "reading the index"))?;
        self.at += n as u64;
        self.next = None;
        if text.pop() == Some(b'\n') && text.starts_with(b"- ") && (number as usize) < self.table.len() {
            self.next = Some((number, self.table.entry_of(text)?, self.at));
        }
        Ok(())
    }
}

/// What a file is recognised as unchanged by. `stable` when the walk reads the files
/// themselves or a block-level or filesystem snapshot of them (inode numbers and ctimes
/// carry over); a reflink copy has new ones, so only size, mtime, mode and owner count.
/// ctime moves on every write, chmod, chown, rename of the inode and extended-attribute
/// change, so with `stable` it covers those too.
pub(crate) fn fingerprint(meta: &fs::Metadata, stable: bool) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (meta.size(), meta.mtime(), meta.mtime_nsec(), meta.mode(), meta.uid(), meta.gid()).hash(&mut h);
    if stable {
        (meta.ino(), meta.ctime(), meta.ctime_nsec()).hash(&mut h);
    }
    h.finish()
}

/// One archive this host wrote, as the state directory remembers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CacheRecord {
    pub run_id: String,
    pub instance: String,
    pub selection: SelectionRecord,
    pub created: String,
    pub manifest_blake3: String,
    pub index_blake3: String,
    pub level: u32,
    /// Where the archive was written (a path or `s3://` URL; `-` for standard output).
    pub location: String,
    /// The index was read from the archive (decisions/D-17), not kept by the backup that
    /// wrote it: there are no fingerprints, files are compared by content.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_archive: bool,
}

impl CacheRecord {
    /// The record of a just-written archive; its location is set when it is published.
    pub(crate) fn of(manifest: &super::Manifest, manifest_blake3: &str, index_blake3: &blake3::Hash) -> CacheRecord {
        CacheRecord {
            run_id: manifest.run_id.clone(),
            instance: manifest.instance.clone(),
            selection: manifest.selection.clone(),
            created: manifest.created.clone(),
            manifest_blake3: manifest_blake3.to_string(),
            index_blake3: index_blake3.to_hex().to_string(),
            level: manifest.level,
            location: String::new(),
            from_archive: false,
        }
    }

    /// How a child archive names this one.
    pub(crate) fn as_parent(&self) -> super::ParentRecord {
        super::ParentRecord { run_id: self.run_id.clone(), manifest_blake3: self.manifest_blake3.clone(), index_blake3: self.index_blake3.clone() }
    }
}

/// The index cache in `<state dir>/chains/`: per archive `<run>.yaml` (the record),
/// `<run>.index` (the index member's exact bytes) and `<run>.stat` (one fingerprint per
/// index entry, 8 bytes little-endian, in index order).
pub(crate) struct Cache {
    dir: PathBuf,
}

/// Prefix of a run's files before they are published (hero-snap's own names, which the
/// walk skips and `gc` removes once their run is dead).
const PARTIAL: &str = ".hero-snap-";

/// Removes the unpublished cache files of runs that died; what `gc` reports.
pub(crate) fn recover(state: &Path) -> Vec<crate::state::Recovered> {
    let dir = Cache::new(state).dir;
    let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(run) = name.strip_prefix(PARTIAL).and_then(|r| r.split('.').next()) else { continue };
        let Some(pid) = run.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id()
            && !crate::state::process_alive(pid)
            && fs::remove_file(e.path()).is_ok()
            && !out.iter().any(|r: &crate::state::Recovered| r.run_id == run)
        {
            out.push(crate::state::Recovered { run_id: run.to_string(), action: "index-cache-partial-removed".into(), outcomes: Vec::new() });
        }
    }
    out
}

/// Archives kept in the cache per instance and selection: the parent of the next
/// incremental is the newest, the others are kept for a `--since` naming an older one.
const CACHE_KEEP: usize = 4;

impl Cache {
    pub(crate) fn new(state: &Path) -> Cache {
        Cache { dir: state.join("chains") }
    }

    pub(crate) fn index_path(&self, run: &str) -> PathBuf {
        self.dir.join(format!("{run}.index"))
    }

    pub(crate) fn stat_path(&self, run: &str) -> PathBuf {
        self.dir.join(format!("{run}.stat"))
    }

    /// Temporary files for a run's index and fingerprints, published by [`Cache::publish`].
    pub(crate) fn partial(&self, run: &str) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(&self.dir).map_err(Error::io(&self.dir, "creating the index cache"))?;
        Ok((self.dir.join(format!("{PARTIAL}{run}.index.partial")), self.dir.join(format!("{PARTIAL}{run}.stat.partial"))))
    }

    /// Removes a run's temporary files (a failed backup).
    pub(crate) fn discard(&self, run: &str) {
        if let Ok((index, stat)) = self.partial(run) {
            let _ = fs::remove_file(index);
            let _ = fs::remove_file(stat);
        }
    }

    /// Publishes a run's index and fingerprints under its record, then trims the series.
    pub(crate) fn publish(&self, record: &CacheRecord) -> Result<()> {
        let (index, stat) = self.partial(&record.run_id)?;
        fs::rename(&index, self.index_path(&record.run_id)).map_err(Error::io(&index, "publishing the cached index"))?;
        fs::rename(&stat, self.stat_path(&record.run_id)).map_err(Error::io(&stat, "publishing the cached index"))?;
        self.write_record(record)
    }

    /// Takes in the index of an archive read from the archive itself (`index`, a file in
    /// the cache directory), under its record, then trims the series.
    pub(crate) fn adopt(&self, record: &CacheRecord, index: &Path) -> Result<()> {
        fs::rename(index, self.index_path(&record.run_id)).map_err(Error::io(index, "keeping the fetched index"))?;
        let _ = fs::remove_file(self.stat_path(&record.run_id));
        self.write_record(record)
    }

    /// A temporary file in the cache directory for an index fetched from an archive
    /// (named so that `gc` removes it once this process is gone).
    pub(crate) fn fetch_path(&self) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir).map_err(Error::io(&self.dir, "creating the index cache"))?;
        Ok(self.dir.join(format!("{PARTIAL}fetch-{}.index.partial", std::process::id())))
    }

    fn write_record(&self, record: &CacheRecord) -> Result<()> {
        let yaml = serde_saphyr::to_string(record).map_err(|e| Error::command(format!("cannot write the index cache record: {e}")))?;
        let path = self.dir.join(format!("{}.yaml", record.run_id));
        let tmp = self.dir.join(format!("{PARTIAL}{}.yaml.partial", record.run_id));
        fs::write(&tmp, yaml).map_err(Error::io(&tmp, "writing"))?;
        fs::rename(&tmp, &path).map_err(Error::io(&path, "writing"))?;
        let mut series: Vec<CacheRecord> = self.records()?.into_iter().filter(|r| r.instance == record.instance && r.selection == record.selection).collect();
        series.sort_by(|a, b| b.created.cmp(&a.created));
        for old in series.iter().skip(CACHE_KEEP) {
            for p in [self.dir.join(format!("{}.yaml", old.run_id)), self.index_path(&old.run_id), self.stat_path(&old.run_id)] {
                let _ = fs::remove_file(p);
            }
        }
        Ok(())
    }

    /// Every record in the cache.
    pub(crate) fn records(&self) -> Result<Vec<CacheRecord>> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".yaml") {
                continue;
            }
            let text = fs::read_to_string(e.path()).map_err(Error::io(e.path(), "reading"))?;
            let record: CacheRecord = serde_saphyr::from_str(&text)
                .map_err(|err| Error::Corrupt(format!("{}: {}; delete it", e.path().display(), err.to_string().lines().next().unwrap_or(""))))?;
            out.push(record);
        }
        Ok(out)
    }

    /// The cached index of `record`, checked against the hash its children name.
    pub(crate) fn open(&self, record: &CacheRecord) -> Result<ParentLookup> {
        let path = self.index_path(&record.run_id);
        let mut file = File::open(&path).map_err(Error::io(&path, "opening the cached index"))?;
        let mut hasher = blake3::Hasher::new();
        io::copy(&mut file, &mut hasher).map_err(Error::io(&path, "reading the cached index"))?;
        if hasher.finalize().to_hex().as_str() != record.index_blake3 {
            return Err(Error::Corrupt(format!(
                "{}: the cached index does not match the index of archive {}; delete it and run a full backup",
                path.display(),
                record.run_id
            )));
        }
        let table = IndexTable::build(file, &path.display().to_string(), |_| true)?;
        if record.from_archive {
            return ParentLookup::new(table, None);
        }
        let stat_path = self.stat_path(&record.run_id);
        let stat = File::open(&stat_path).map_err(Error::io(&stat_path, "opening the cached fingerprints"))?;
        ParentLookup::new(table, Some((stat, &stat_path)))
    }
}

/// A writer that hashes what passes through it.
pub(crate) struct HashingWriter<W: Write> {
    pub inner: W,
    pub hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R: Read> {
    pub inner: R,
    pub hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Which archive an incremental backup builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// The newest archive of the same instance and selection in the same folder or prefix:
    /// from the index cache (what this host wrote there, or to standard output for `-`),
    /// else the newest one there whose index can be read from its end (decisions/D-17).
    /// Without one, the backup is full.
    Latest,
    /// This archive: a file or an `s3://` key, its index from the cache or its end.
    Archive(super::Location),
}

/// The folder of a location, to tell whether two archives are in the same place.
fn folder_of(location: &str) -> String {
    match location.rsplit_once('/') {
        Some((dir, _)) => dir.to_string(),
        None => ".".into(),
    }
}

/// How a location is recorded: files by their absolute path.
pub(crate) fn location_key(location: &super::Location) -> String {
    match location {
        super::Location::File(p) => {
            let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
            match (abs.parent().and_then(|d| d.canonicalize().ok()), abs.file_name()) {
                (Some(dir), Some(name)) => dir.join(name).display().to_string(),
                _ => abs.display().to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// The parent for `since`, from the cache: `Ok(None)` when `Latest` finds none.
pub(crate) fn find_parent(cache: &Cache, since: &Since, instance: &str, selection: &SelectionRecord, to: &str) -> Result<Option<CacheRecord>> {
    let records = cache.records()?;
    match since {
        Since::Latest => {
            let mut series: Vec<CacheRecord> = records
                .into_iter()
                .filter(|r| r.instance == instance && &r.selection == selection && folder_of(&r.location) == folder_of(to))
                .filter(|r| !r.location.starts_with('/') || Path::new(&r.location).exists())
                .collect();
            series.sort_by(|a, b| b.created.cmp(&a.created));
            Ok(series.into_iter().next())
        }
        Since::Archive(location) => {
            let key = location_key(location);
            let Some(record) = records.into_iter().find(|r| r.location == key) else { return Ok(None) };
            check_series(&key, &record.instance, &record.selection, instance, selection)?;
            Ok(Some(record))
        }
    }
}

/// An explicit parent must be of the same instance and selection as the backup.
pub(crate) fn check_series(key: &str, its_instance: &str, its_selection: &SelectionRecord, instance: &str, selection: &SelectionRecord) -> Result<()> {
    if its_instance != instance {
        return Err(Error::Refused(format!("{key}: is an archive of instance `{its_instance}`, not `{instance}`; an incremental builds on its own instance")));
    }
    if its_selection != selection {
        return Err(Error::Refused(format!(
            "{key}: was made with another selection of services and contexts; an incremental must select what its parent selected"
        )));
    }
    Ok(())
}

/// The refusal of an explicit parent whose index neither the cache nor the archive gives.
pub(crate) fn not_cached(cache: &Cache, key: &str, why: &str) -> Error {
    Error::Usage(format!(
        "{key}: the state directory ({}) holds no index of this archive (it keeps the last {CACHE_KEEP} of each series this host wrote), and {why}; back up with --since latest, or without --since for a full archive",
        cache.dir.display()
    ))
}

/// The directory or S3 prefix an archive is in (`None` for standard input or output).
pub(crate) fn folder_beside(loc: &super::Location) -> Option<super::Folder> {
    match loc {
        super::Location::File(p) => Some(super::Folder::Dir(match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })),
        super::Location::S3(o) => {
            let prefix = o.key.rsplit_once('/').map(|(p, _)| format!("{p}/")).unwrap_or_default();
            Some(super::Folder::S3(super::S3Prefix { bucket: o.bucket.clone(), prefix, config: o.config.clone() }))
        }
        super::Location::Stdio => None,
    }
}

/// Where a chain restore finds an incremental's ancestors: among the archives given
/// (`--from`, repeated), else beside the newest one (its directory or S3 prefix).
pub struct Ancestors {
    given: Vec<super::Location>,
    beside: Option<super::Folder>,
    /// (run id, parent's run id, location) of the archives looked at so far.
    known: Option<Vec<(String, Option<String>, super::Location)>>,
}

impl Ancestors {
    /// Ancestors among `given`, then in the folder of `newest`.
    pub fn new(newest: &super::Location, given: Vec<super::Location>) -> Ancestors {
        Ancestors { given, beside: folder_beside(newest), known: None }
    }

    /// No ancestors: restoring an incremental is refused, naming its parent.
    pub fn none() -> Ancestors {
        Ancestors { given: Vec::new(), beside: None, known: None }
    }

    fn look(&mut self, keys: &super::Decryption) -> Result<&[(String, Option<String>, super::Location)]> {
        if self.known.is_none() {
            let mut known = Vec::new();
            for loc in &self.given {
                let manifest = super::read::read_manifest(loc.open(super::Extent::Head)?, keys).map_err(|e| Error::Usage(format!("{loc}: {e}")))?;
                known.push((manifest.run_id, manifest.parent.map(|p| p.run_id), loc.clone()));
            }
            if let Some(folder) = &self.beside {
                for listed in super::folder::read_folder(folder, keys, None)? {
                    if let Some(summary) = &listed.summary {
                        known.push((summary.run_id.clone(), summary.parent.clone(), listed.location()));
                    }
                }
            }
            self.known = Some(known);
        }
        Ok(self.known.as_deref().unwrap_or_default())
    }

    /// Opens the archive of run `parent.run_id` (whole, or only its head); the caller
    /// checks its hashes.
    pub(crate) fn open(&mut self, parent: &super::ParentRecord, keys: &super::Decryption, extent: super::Extent) -> Result<(super::Location, Box<dyn Read>)> {
        let loc = self.find(&parent.run_id, keys)?.1;
        let input = loc.open(extent)?;
        Ok((loc, input))
    }

    /// The archive of run `run`: its parent's run id and its location.
    fn find(&mut self, run: &str, keys: &super::Decryption) -> Result<(Option<String>, super::Location)> {
        let beside = self.beside.as_ref().map(|f| f.to_string()).unwrap_or_else(|| "(none: the archive came from standard input)".into());
        let found = self.look(keys)?.iter().find(|(r, _, _)| r == run).map(|(_, p, loc)| (p.clone(), loc.clone()));
        found.ok_or_else(|| {
            Error::Refused(format!(
                "the chain needs archive {run} (its parent or an older ancestor), which is neither given with --from nor in {beside}; put it beside the incremental or name it with another --from"
            ))
        })
    }

    /// Pre-flight of a chain: every ancestor of `manifest` is found (by the heads of the
    /// archives, not read whole). Returns them newest first, with their locations.
    pub fn locate(&mut self, manifest: &super::Manifest, keys: &super::Decryption) -> Result<Vec<(String, super::Location)>> {
        let mut out = Vec::new();
        let mut next = manifest.parent.as_ref().map(|p| p.run_id.clone());
        while let Some(run) = next {
            let (parent, loc) = self.find(&run, keys)?;
            if out.iter().any(|(r, _)| *r == run) {
                return Err(Error::Corrupt(format!("{loc}: the chain of {} loops back to {run}", manifest.run_id)));
            }
            out.push((run, loc));
            next = parent;
        }
        Ok(out)
    }
}

impl Ancestors {
    /// The archive to read among `given` (the one of the highest chain level; the only
    /// one when one is given), and the others as its ancestors.
    pub fn chain_of(mut given: Vec<super::Location>, keys: &super::Decryption) -> Result<(super::Location, Ancestors)> {
        if given.len() <= 1 {
            let newest = given.pop().ok_or_else(|| Error::Usage("no archive given".into()))?;
            let ancestors = Ancestors::new(&newest, Vec::new());
            return Ok((newest, ancestors));
        }
        if given.contains(&super::Location::Stdio) {
            return Err(Error::Usage("`-` (standard input) can only be the one archive given; name a chain's archives as files or s3:// keys".into()));
        }
        let mut levels = Vec::new();
        for loc in &given {
            let manifest = super::read::read_manifest(loc.open(super::Extent::Head)?, keys).map_err(|e| Error::Usage(format!("{loc}: {e}")))?;
            levels.push(manifest.level);
        }
        let top = (0..given.len()).max_by_key(|&i| (levels[i], std::cmp::Reverse(i))).expect("two or more");
        let newest = given.remove(top);
        let ancestors = Ancestors::new(&newest, given);
        Ok((newest, ancestors))
    }
}

/// A reader's visitor that can read an ancestor of an incremental: it is handed the
/// table of the files the newest archive's index lists as held by that ancestor, uses
/// only those, checks each against its line, and marks it found.
pub(crate) trait Filling: super::read::Visitor + Send {
    /// Sets (or, with `None`, takes back) the table of the ancestor being read.
    fn fill(&mut self, table: Option<IndexTable>) -> Option<IndexTable>;

    /// Whether the visitor needs only some of the inherited files (`extract --path`).
    /// Then an ancestor that holds none of them is passed by its manifest alone, checked
    /// against the hash its child names; otherwise (verify, restore) every ancestor on the
    /// way is read whole.
    fn selective(&self) -> bool {
        false
    }

    /// Whether the visitor needs this inherited file (asked only when [`Filling::selective`]).
    fn wants(&self, _entry: &IndexEntry) -> bool {
        true
    }
}

/// Reads the ancestors of an incremental, newest first, through `visitor`, until every
/// file its index lists in an ancestor (every one the visitor wants) has been found;
/// checks each link of the chain. Returns `newest`, with the run ids of the ancestors read.
pub(crate) fn read_ancestors(
    visitor: &mut impl Filling,
    mut newest: super::read::ReadOutcome,
    ancestors: &mut Ancestors,
    keys: &super::Decryption,
    cancel: &crate::progress::Cancel,
) -> Result<super::read::ReadOutcome> {
    let Some(inherited) = newest.inherited.take() else { return Ok(newest) };
    let mut remaining = inherited.count;
    let Some(list) = inherited.into_file()? else { return Ok(newest) };
    let lines = || list.try_clone().map_err(Error::io(std::env::temp_dir(), "reading the list of inherited files"));
    let selective = visitor.selective();
    let mut tables = IndexTable::build_per_ancestor(lines()?, "the archive's index", |e| !selective || visitor.wants(e))?;
    if selective {
        remaining = tables.values().map(|t| t.len() as u64).sum();
    }
    let mut link = Link { parent: newest.manifest.parent.clone(), child: newest.manifest.run_id.clone(), instance: newest.manifest.instance.clone() };
    while remaining > 0 {
        let Some(parent) = link.parent.clone() else {
            return Err(Error::Corrupt(format!("{remaining} files of the archive are listed as held by archives that are not its ancestors")));
        };
        let table = match tables.remove(&parent.run_id) {
            Some(table) => table,
            None => IndexTable::of(lines()?, Vec::new(), "the archive's index"),
        };
        let next = if selective && table.len() == 0 {
            pass_by_head(&link, &parent, ancestors, keys)?
        } else {
            remaining -= table.len() as u64;
            let next = read_whole(visitor, table, &link, &parent, ancestors, keys, cancel)?;
            newest.ancestors_read.push(parent.run_id.clone());
            next
        };
        link = Link { parent: next, child: parent.run_id.clone(), instance: link.instance };
    }
    Ok(newest)
}

/// One step down a chain: the archive `parent` names (`None` at a full archive), the
/// archive that names it, and the chain's instance.
struct Link {
    parent: Option<super::ParentRecord>,
    child: String,
    instance: String,
}

/// Reads the ancestor `parent` whole with `table` (its files wanted); returns its parent.
fn read_whole(
    visitor: &mut impl Filling,
    table: IndexTable,
    link: &Link,
    parent: &super::ParentRecord,
    ancestors: &mut Ancestors,
    keys: &super::Decryption,
    cancel: &crate::progress::Cancel,
) -> Result<Option<super::ParentRecord>> {
    visitor.fill(Some(table));
    let read = ancestors.open(parent, keys, super::Extent::Whole).map(|(loc, input)| (super::read::read_archive(input, keys, visitor, cancel), loc));
    let table = visitor.fill(None).expect("set above");
    let (read, loc) = read?;
    let named = |e: Error| match e {
        Error::Corrupt(m) => Error::Corrupt(format!("ancestor {} ({loc}): {m}", parent.run_id)),
        Error::Refused(m) => Error::Refused(format!("ancestor {} ({loc}): {m}", parent.run_id)),
        other => other,
    };
    let out = read.map_err(named)?;
    if out.manifest.run_id != parent.run_id
        || out.manifest_blake3.to_hex().as_str() != parent.manifest_blake3
        || out.index_blake3.to_hex().as_str() != parent.index_blake3
        || out.manifest.instance != link.instance
    {
        return Err(substituted(&loc, parent, &link.child));
    }
    if let Some(missing) = table.first_missing()? {
        return Err(Error::Corrupt(format!("{}: listed as held by {} ({loc}), which does not hold it", missing.path, parent.run_id)));
    }
    crate::state::failpoint("chain-ancestor-read");
    Ok(out.manifest.parent)
}

/// Follows the chain past the ancestor `parent`, which holds no file wanted: only its
/// manifest is read, and checked against the hash its child names.
fn pass_by_head(link: &Link, parent: &super::ParentRecord, ancestors: &mut Ancestors, keys: &super::Decryption) -> Result<Option<super::ParentRecord>> {
    let (loc, input) = ancestors.open(parent, keys, super::Extent::Head)?;
    let (manifest, hash) = super::read::read_head(input, keys).map_err(|e| match e {
        Error::Corrupt(m) => Error::Corrupt(format!("ancestor {} ({loc}): {m}", parent.run_id)),
        other => other,
    })?;
    if manifest.run_id != parent.run_id || hash.to_hex().as_str() != parent.manifest_blake3 || manifest.instance != link.instance {
        return Err(substituted(&loc, parent, &link.child));
    }
    Ok(manifest.parent)
}

fn substituted(loc: &super::Location, parent: &super::ParentRecord, child: &str) -> Error {
    Error::Corrupt(format!(
        "{loc}: is not the archive {} that {child} was made on (its manifest or index differs): a damaged or substituted ancestor; find the original",
        parent.run_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::format::Index;

    /// A cached index of `paths` (sizes 1, 2, ...) and its fingerprints (strong = 100 + n,
    /// weak = 200 + n for entry n).
    fn cached(dir: &Path, paths: &[&str]) -> (File, File) {
        let mut index = Vec::new();
        Index::write_head(&mut index, 2, &"0".repeat(64), paths.len() as u64, paths.len() as u64, 0).unwrap();
        let mut stat = Vec::new();
        for (n, p) in paths.iter().enumerate() {
            Index::write_entry(&mut index, p, n as u64 + 1, &blake3::hash(p.as_bytes())).unwrap();
            stat.extend_from_slice(&(100 + n as u64).to_le_bytes());
            stat.extend_from_slice(&(200 + n as u64).to_le_bytes());
        }
        fs::write(dir.join("i"), index).unwrap();
        fs::write(dir.join("s"), stat).unwrap();
        (File::open(dir.join("i")).unwrap(), File::open(dir.join("s")).unwrap())
    }

    #[test]
    fn the_parent_lookup_finds_every_entry_in_any_order_of_asking() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ["a/1", "a/2", "a/3", "b/1", "b/2", "c"];
        let (index, stat) = cached(dir.path(), &paths);
        let table = IndexTable::build(index, "i", |_| true).unwrap();
        let mut lookup = ParentLookup::new(table, Some((stat, &dir.path().join("s")))).unwrap();
        // In order, with a new file between, a deleted one (a/3) skipped, then out of order.
        for (path, want) in [
            ("a/1", Some(0)),
            ("a/1b", None),
            ("a/2", Some(1)),
            ("b/1", Some(3)),
            ("b/2", Some(4)),
            ("a/3", Some(2)),
            ("c", Some(5)),
            ("c", Some(5)),
            ("z", None),
        ] {
            let got = lookup.get(path).unwrap();
            match want {
                None => assert!(got.is_none(), "{path}"),
                Some(n) => {
                    let (entry, prints) = got.unwrap_or_else(|| panic!("{path} not found"));
                    let (strong, weak) = prints.expect("fingerprints");
                    assert_eq!((entry.path.as_str(), entry.size, strong, weak), (path, n + 1, 100 + n, 200 + n), "{path}");
                }
            }
        }
    }

    #[test]
    fn fingerprints_that_do_not_match_the_index_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = cached(dir.path(), &["a", "b"]);
        fs::write(dir.path().join("s"), [0u8; 24]).unwrap();
        let table = IndexTable::build(index, "i", |_| true).unwrap();
        let err = ParentLookup::new(table, Some((File::open(dir.path().join("s")).unwrap(), &dir.path().join("s")))).err().expect("refused");
        assert!(err.to_string().contains("delete it and run a full backup"), "{err}");
    }
}
