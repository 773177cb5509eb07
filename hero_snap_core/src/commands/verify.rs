//! `verify`: every file of an archive checked against its index, the index against the
//! manifest.

use std::io::Read;

use serde::Serialize;

use crate::archive::format::Manifest;
use crate::archive::{read, Decryption};
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
    /// One result per surface the manifest lists: verified, or left out of the archive and why.
    pub outcomes: Vec<Outcome>,
}

/// Reads the whole archive and checks every file's hash, the index and the manifest's hash.
/// The error names the first bad member, or the stream error.
pub fn verify(input: impl Read, keys: &Decryption, progress: &dyn Progress, cancel: &Cancel) -> Result<VerifyReport> {
    struct Hasher<'p>(&'p dyn Progress);
    impl read::Visitor for Hasher<'_> {
        fn manifest(&mut self, m: &Manifest) -> Result<()> {
            self.0.event(&Event::Totals { files: m.files, bytes: m.bytes });
            Ok(())
        }
        fn member<R: Read>(&mut self, m: read::Member<'_, '_, R>) -> Result<Option<(u64, blake3::Hash)>> {
            use tar::EntryType::*;
            if !matches!(m.entry.header().entry_type(), Regular | Continuous | GNUSparse) {
                return Ok(None);
            }
            let mut counter = CountingReader { inner: &mut *m.entry, count: 0 };
            let hash = crate::fs_tree::hash_reader(&mut counter).map_err(|e| Error::Corrupt(format!("{}: {e}", m.path)))?;
            self.0.event(&Event::Bytes { bytes: counter.count });
            Ok(Some((counter.count, hash)))
        }
    }
    progress.event(&Event::Phase { phase: "verify".into() });
    let out = read::read_archive(input, keys, &mut Hasher(progress), cancel).map_err(|e| cancel.explain(e))?;
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
    Ok(VerifyReport { files: out.index.files, entries: out.index.entries, bytes: out.index.bytes, manifest: out.manifest, outcomes })
}
