//! `verify`: every file of an archive checked against its index, the index against the
//! manifest.

use std::io::Read;

use serde::Serialize;

use crate::archive::chain::{read_ancestors, Filling, IndexTable};
use crate::archive::folder::{read_folder, Folder};
use crate::archive::format::Manifest;
use crate::archive::{read, Ancestors, Decryption};
use crate::error::{Error, Result};
use crate::fs_tree::CountingReader;
use crate::outcome::{Outcome, Status};
use crate::progress::{Cancel, Event, Progress};

/// What `verify` checked.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The archive's manifest.
    pub manifest: Manifest,
    /// Regular files checked against the index.
    pub files: u64,
    /// Data members (files, directories, links).
    pub entries: u64,
    /// Bytes of file data checked.
    pub bytes: u64,
    /// An incremental's files checked in its ancestors.
    #[serde(skip_serializing_if = "is_zero")]
    pub inherited_files: u64,
    /// An incremental's ancestors read, newest first (their run ids).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    /// One result per surface the manifest lists: verified, or left out of the archive and why.
    pub outcomes: Vec<Outcome>,
}

/// Reads the whole archive and checks every file's hash, the index and the manifest's hash.
/// The error names the first bad member, or the stream error. An incremental archive is
/// refused, naming its parent: see [`verify_chain`].
pub fn verify(input: impl Read, keys: &Decryption, progress: &dyn Progress, cancel: &Cancel) -> Result<VerifyReport> {
    verify_chain(input, &mut Ancestors::none(), keys, progress, cancel)
}

/// Checks every file of the archive and, for an incremental, of its ancestors: each file
/// its index lists in an ancestor is read there and checked against the index's size and
/// BLAKE3, and each ancestor against the hashes its child names.
pub fn verify_chain(input: impl Read, ancestors: &mut Ancestors, keys: &Decryption, progress: &dyn Progress, cancel: &Cancel) -> Result<VerifyReport> {
    progress.event(&Event::Phase { phase: "verify".into() });
    let mut hasher = Hasher { progress, fill: None, inherited: 0 };
    let out = read::read_archive(input, keys, &mut hasher, cancel)
        .and_then(|newest| read_ancestors(&mut hasher, newest, ancestors, keys, cancel))
        .map_err(|e| cancel.explain(e))?;
    let mut outcomes = Vec::new();
    for ms in &out.manifest.services {
        for surf in &ms.surfaces {
            if surf.contexts.is_empty() {
                outcomes.push(Outcome::new(&ms.name, Some(&surf.name), None, Status::Ok, None));
            }
            for c in &surf.contexts {
                outcomes.push(Outcome::new(&ms.name, Some(&surf.name), Some(c), Status::Ok, None));
            }
        }
        for l in &ms.left_out {
            outcomes.push(Outcome::new(&ms.name, Some(&l.surface), None, Status::Skipped, Some(format!("not in the archive: {}", l.reason))));
        }
    }
    crate::outcome::sort(&mut outcomes);
    for o in &outcomes {
        progress.event(&Event::Outcome(o.clone()));
    }
    Ok(VerifyReport {
        files: out.index.files,
        entries: out.index.entries,
        bytes: out.index.bytes,
        inherited_files: hasher.inherited,
        ancestors: out.ancestors_read,
        manifest: out.manifest,
        outcomes,
    })
}

struct Hasher<'p> {
    progress: &'p dyn Progress,
    /// While an ancestor is read: the files wanted from it.
    fill: Option<IndexTable>,
    /// Files checked in ancestors.
    inherited: u64,
}

impl read::Visitor for Hasher<'_> {
    fn manifest(&mut self, m: &Manifest) -> Result<()> {
        if self.fill.is_none() {
            self.progress.event(&Event::Totals { files: m.files, bytes: m.bytes });
        }
        Ok(())
    }
    fn member<R: Read>(&mut self, m: read::Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>> {
        use tar::EntryType::*;
        if !matches!(m.entry.header().entry_type(), Regular | Continuous | GNUSparse) {
            return Ok(None);
        }
        let mut counter = CountingReader { inner: &mut *m.entry, count: 0 };
        let hash = crate::fs_tree::hash_reader(&mut counter).map_err(|e| Error::Corrupt(format!("{}: {e}", m.path)))?;
        self.progress.event(&Event::Bytes { bytes: counter.count });
        if let Some(table) = &mut self.fill {
            if let Some((row, _, want)) = table.get(m.path)? {
                table.mark(row);
                if want.size != counter.count || want.blake3 != hash.to_hex().as_str() {
                    return Err(Error::Corrupt(format!("{}: its content is not what the newest archive's index lists for it", m.path)));
                }
                self.inherited += 1;
            }
        }
        Ok(Some((counter.count, hash)))
    }
}

impl Filling for Hasher<'_> {
    fn fill(&mut self, table: Option<IndexTable>) -> Option<IndexTable> {
        std::mem::replace(&mut self.fill, table)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

mod metrics;
pub use metrics::with_verify_metrics;

/// One archive [`verify_newest`] checked: the newest of its series.
#[derive(Debug, Serialize)]
pub struct VerifiedArchive {
    /// The archive's path or `s3://` URL.
    pub path: String,
    /// Its instance.
    pub instance: String,
    /// Its selection, as `list` names series (`whole instance`, `contexts geomind`, …).
    pub selection: String,
    /// What verify checked, when the archive and its chain are sound.
    pub report: Option<VerifyReport>,
    /// Why it is not, when it is not.
    pub error: Option<String>,
}

impl VerifiedArchive {
    /// A verified archive at `path`, by its report.
    pub fn of(path: impl Into<String>, report: VerifyReport) -> VerifiedArchive {
        VerifiedArchive {
            path: path.into(),
            instance: report.manifest.instance.clone(),
            selection: crate::state::runs::selection_label(&report.manifest.selection),
            report: Some(report),
            error: None,
        }
    }
}

/// Verifies the newest archive of each series (instance and selection) in `folder`, each
/// with its chain (ancestors found beside it): the weekly check of what a restore would
/// need. An archive the keys cannot open is reported, not skipped. See [`check_verified`].
pub fn verify_newest(folder: &Folder, keys: &Decryption, progress: &dyn Progress, cancel: &Cancel) -> Result<Vec<VerifiedArchive>> {
    let mut newest: std::collections::BTreeMap<(String, String), (time::OffsetDateTime, crate::archive::folder::Listed)> = Default::default();
    for listed in read_folder(folder, keys, None)? {
        let Some(s) = &listed.summary else { continue };
        let Ok(created) = time::OffsetDateTime::parse(&s.created, &time::format_description::well_known::Rfc3339) else { continue };
        let key = (s.instance.clone(), s.selection.clone());
        if newest.get(&key).is_none_or(|(t, _)| created > *t) {
            newest.insert(key, (created, listed));
        }
    }
    let mut out = Vec::new();
    for ((instance, selection), (_, listed)) in newest {
        cancel.check()?;
        let location = listed.location();
        let result = location.open(crate::archive::Extent::Whole).and_then(|input| {
            let mut ancestors = Ancestors::new(&location, Vec::new());
            verify_chain(input, &mut ancestors, keys, progress, cancel)
        });
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let (report, error) = match result {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(VerifiedArchive { path: listed.path, instance, selection, report, error });
    }
    Ok(out)
}

/// Fails (exit 9, as a run with failed outcomes) when an archive did not verify, naming
/// each; or (exit 2) when the folder held no archive the keys open.
pub fn check_verified(verified: &[VerifiedArchive]) -> Result<()> {
    if verified.is_empty() {
        return Err(Error::Usage("no archive in the folder could be read with the keys given; check the folder and the identity".into()));
    }
    let failed: Vec<String> = verified.iter().filter_map(|v| v.error.as_ref().map(|e| format!("{}: {e}", v.path))).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete(format!("{} of {} archives did not verify:\n  {}", failed.len(), verified.len(), failed.join("\n  "))))
    }
}
