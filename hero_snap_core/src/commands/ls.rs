//! `ls`: the entries of an archive, read once and checked whole as `verify` checks it;
//! for an incremental, the whole state, with the archive that holds each file's bytes.

use std::io::{BufRead, Read};

use serde::Serialize;
use tar::EntryType;

use crate::archive::format::{split_member, Manifest, MemberKey};
use crate::archive::read::{parse_index_line, read_archive, Member, Visitor};
use crate::archive::{Decryption, PathPatterns};
use crate::error::{Error, Result};
use crate::progress::{Cancel, Event, Progress};
use crate::restore::extract::read_through;

/// One entry of an archive's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsEntry {
    /// The service.
    pub service: String,
    /// The context, for a per-context surface.
    pub context: Option<String>,
    /// The surface.
    pub surface: String,
    /// The path inside the surface (`""` for the surface's root directory).
    pub path: String,
    /// `dir`, `file`, `symlink` or `hardlink`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Bytes of content (files; 0 for the others).
    pub size: u64,
    /// Modification time, RFC 3339 UTC; `None` for a file an ancestor holds (its header
    /// is in that archive, which `ls` does not read).
    pub mtime: Option<String>,
    /// Permission bits, octal (`0644`); `None` as for `mtime`.
    pub mode: Option<String>,
    /// Owner as `UID:GID`; `None` as for `mtime`.
    pub owner: Option<String>,
    /// A symlink's target, or the path (inside the surface) a hard link shares its file with.
    pub link: Option<String>,
    /// For a regular file: the run id of the archive that holds its bytes.
    #[serde(rename = "in")]
    pub in_archive: Option<String>,
    /// For a regular file: the BLAKE3 of its content (hex), as the index lists it.
    pub blake3: Option<String>,
}

/// What [`ls`] found.
#[derive(Debug, Clone, Serialize)]
pub struct LsReport {
    /// The instance the archive is of.
    pub instance: String,
    /// The archive's run id.
    pub run_id: String,
    /// Its place in a chain (0: a full archive).
    pub level: u32,
    /// The entries the patterns pick, in archive order (an incremental's inherited files
    /// among them, in walk order).
    pub entries: Vec<LsEntry>,
}

/// Lists the archive's entries that `patterns` picks (all when it is empty). The whole
/// archive is read and checked as [`crate::verify()`] checks it, so a damaged one fails;
/// an incremental's ancestors are not read: its index names the files they hold.
pub fn ls(input: impl Read, keys: &Decryption, patterns: &PathPatterns, progress: &dyn Progress, cancel: &Cancel) -> Result<LsReport> {
    ls_with_manifest(input, keys, patterns, progress, cancel).map(|(report, _)| report)
}

/// [`ls`], and the archive's manifest.
pub(crate) fn ls_with_manifest(
    input: impl Read,
    keys: &Decryption,
    patterns: &PathPatterns,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(LsReport, Manifest)> {
    progress.event(&Event::Phase { phase: "verify".into() });
    let mut lister = Lister { patterns, progress, run: String::new(), entries: Vec::new() };
    let mut out = read_archive(input, keys, &mut lister, cancel).map_err(|e| cancel.explain(e))?;
    let mut entries = lister.entries;
    if let Some(file) = out.inherited.take().map(|i| i.into_file()).transpose()?.flatten() {
        let before = entries.len();
        inherited_entries(file, patterns, &mut entries)?;
        if entries.len() > before {
            sort_in_walk_order(&mut entries, &out.manifest);
        }
    }
    let report = LsReport { instance: out.manifest.instance.clone(), run_id: out.manifest.run_id.clone(), level: out.manifest.level, entries };
    Ok((report, out.manifest))
}

struct Lister<'a> {
    patterns: &'a PathPatterns,
    progress: &'a dyn Progress,
    run: String,
    entries: Vec<LsEntry>,
}

impl Visitor for Lister<'_> {
    fn manifest(&mut self, m: &Manifest) -> Result<()> {
        self.run = m.run_id.clone();
        self.progress.event(&Event::Totals { files: m.files, bytes: m.bytes });
        Ok(())
    }

    fn member<R: Read>(&mut self, m: Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>> {
        let kind = m.entry.header().entry_type();
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        if self.patterns.picks(&m.key, m.inner) {
            let h = m.entry.header();
            let link = m.entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned());
            let link = match kind {
                EntryType::Link => link.map(|l| split_member(&l).map_or(l.clone(), |(_, inner)| inner.to_string())),
                _ => link,
            };
            self.entries.push(LsEntry {
                kind: match kind {
                    EntryType::Directory => "dir",
                    EntryType::Symlink => "symlink",
                    EntryType::Link => "hardlink",
                    _ => "file",
                },
                size: if is_file { m.entry.size() } else { 0 },
                mtime: h.mtime().ok().map(|t| rfc3339(t as i64)),
                mode: h.mode().ok().map(|mode| format!("{:04o}", mode & 0o7777)),
                owner: h.uid().ok().zip(h.gid().ok()).map(|(u, g)| format!("{u}:{g}")),
                link,
                in_archive: is_file.then(|| self.run.clone()),
                ..entry_of(&m.key, m.inner)
            });
        }
        if !is_file {
            return Ok(None);
        }
        let picked = self.patterns.picks(&m.key, m.inner);
        let got = read_through(m)?;
        if let Some((size, hash)) = got {
            self.progress.event(&Event::Bytes { bytes: size });
            // The reader checks this hash against the index line of the file.
            if let Some(e) = self.entries.last_mut().filter(|_| picked) {
                e.blake3 = Some(hash.to_hex().to_string());
            }
        }
        Ok(got)
    }
}

/// An entry with its place filled in and the rest empty.
pub(crate) fn entry_of(key: &MemberKey, inner: &str) -> LsEntry {
    LsEntry {
        service: key.service.clone(),
        context: key.context.clone(),
        surface: key.surface.clone(),
        path: inner.to_string(),
        kind: "file",
        size: 0,
        mtime: None,
        mode: None,
        owner: None,
        link: None,
        in_archive: None,
        blake3: None,
    }
}

/// The files of the (checked) index that ancestors hold, which `patterns` picks.
fn inherited_entries(file: std::fs::File, patterns: &PathPatterns, entries: &mut Vec<LsEntry>) -> Result<()> {
    use std::io::Seek;
    let err = Error::io(std::env::temp_dir(), "reading the list of inherited files");
    let mut file = file;
    file.rewind().map_err(err)?;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(Error::io(std::env::temp_dir(), "reading the list of inherited files"))?;
        let entry = parse_index_line(&line).ok_or_else(|| Error::Corrupt(format!("the archive's index: not an index line: {line}")))?;
        let Some((key, inner)) = split_member(&entry.path) else {
            return Err(Error::Corrupt(format!("the archive's index lists `{}`, outside the archive layout", entry.path)));
        };
        if patterns.picks(&key, inner) {
            entries.push(LsEntry { size: entry.size, in_archive: entry.in_archive.clone(), blake3: Some(entry.blake3.clone()), ..entry_of(&key, inner) });
        }
    }
    Ok(())
}

/// The archive's order: services and surfaces as the manifest lists them, contexts
/// sorted, then a depth-first walk sorted by name (each directory before its contents).
fn sort_in_walk_order(entries: &mut [LsEntry], manifest: &Manifest) {
    let place = |e: &LsEntry| {
        let svc = manifest.services.iter().position(|s| s.name == e.service);
        let surface = svc.and_then(|i| manifest.services[i].surfaces.iter().position(|s| s.name == e.surface));
        (svc, surface, e.context.clone())
    };
    entries.sort_by(|a, b| place(a).cmp(&place(b)).then_with(|| a.path.split('/').cmp(b.path.split('/'))));
}

pub(crate) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}
