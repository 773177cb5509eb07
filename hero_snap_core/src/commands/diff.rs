//! `diff`: what changed between two archives, entry by entry, from what [`ls`] reads of
//! each (the tar headers and the index's BLAKE3 of every file): nothing is extracted and
//! no content is compared byte by byte. An incremental is compared as the whole state
//! its index describes, as `ls` lists it.

use std::collections::HashMap;
use std::io::Read;

use serde::Serialize;

use super::ls::{ls, ls_with_manifest, LsEntry, LsReport};
use crate::archive::{Decryption, PathPatterns};
use crate::error::Result;
use crate::inventory::Inventory;
use crate::progress::{Cancel, Event, Progress};

mod live;

/// One of the two archives compared.
#[derive(Debug, Clone, Serialize)]
pub struct DiffSide {
    /// The instance it is of.
    pub instance: String,
    /// Its run id; `live` for the live instance (`diff --live`).
    pub run_id: String,
    /// Its place in a chain (0: a full archive).
    pub level: u32,
}

/// How an entry differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Only in the new archive.
    Added,
    /// Only in the old archive.
    Removed,
    /// A file's content (size or BLAKE3) or a link's target differs.
    Modified,
    /// The same content; its type, mode, owner or mtime differs (or, for a file an
    /// incremental inherits, another archive holds it: see [`DiffEntry::changed`]).
    Metadata,
}

/// One path that differs between the two archives.
#[derive(Debug, Clone, Serialize)]
pub struct DiffEntry {
    /// The service.
    pub service: String,
    /// The context, for a per-context surface.
    pub context: Option<String>,
    /// The surface.
    pub surface: String,
    /// The path inside the surface (`""` for the surface's root directory).
    pub path: String,
    /// How it differs.
    pub change: Change,
    /// What differs, for `modified` and `metadata`: `content`, `link`, `type`, `mode`,
    /// `owner`, `mtime`; `rearchived` when the bytes are equal but another archive holds
    /// them and one side's header is in an ancestor `diff` does not read (so its mode,
    /// owner or mtime may have changed).
    pub changed: Vec<&'static str>,
    /// The entry in the old archive, as `ls` lists it.
    pub old: Option<LsEntry>,
    /// The entry in the new archive, as `ls` lists it.
    pub new: Option<LsEntry>,
}

/// What [`diff`] found.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// The older archive (the first given).
    pub old: DiffSide,
    /// The newer archive (the second given).
    pub new: DiffSide,
    /// Every path that differs, by service, context, surface and path.
    pub entries: Vec<DiffEntry>,
    /// Counts of the entries by change.
    pub added: u64,
    /// See `added`.
    pub removed: u64,
    /// See `added`.
    pub modified: u64,
    /// See `added`.
    pub metadata: u64,
}

/// Compares archive `old` with archive `new`, the entries `patterns` picks (all when it is
/// empty). Each archive is read once and checked whole as [`crate::verify()`] checks it
/// (a damaged one fails); an incremental's ancestors are not read: its index names the
/// files they hold and their BLAKE3.
pub fn diff(old: impl Read, new: impl Read, keys: &Decryption, patterns: &PathPatterns, progress: &dyn Progress, cancel: &Cancel) -> Result<DiffReport> {
    let old = ls(old, keys, patterns, progress, cancel)?;
    let new = ls(new, keys, patterns, progress, cancel)?;
    Ok(compare(old, new))
}

/// Compares archive `old` with the live instance `live` (its inventory, placed where its
/// data is): the surfaces and contexts the archive holds, walked on disk as a backup walks
/// them. `old` is read and checked whole, as by [`diff`]. A live file is read (hashed)
/// only where the archive has a file of the same size at its place. Metadata of a file an
/// incremental inherits is unknown (its header is in the ancestor), so for those only the
/// content is compared. An export copy (decisions/D-16) has no place on disk: not compared.
pub fn diff_live(old: impl Read, keys: &Decryption, live: &Inventory, patterns: &PathPatterns, progress: &dyn Progress, cancel: &Cancel) -> Result<DiffReport> {
    let (old, manifest) = ls_with_manifest(old, keys, patterns, progress, cancel)?;
    progress.event(&Event::Phase { phase: "scan".into() });
    let entries = live::live_entries(&manifest, live, patterns, &old.entries, cancel)?;
    let new = LsReport { instance: live.instance().to_string(), run_id: "live".into(), level: 0, entries };
    Ok(compare(old, new))
}

type Place = (String, Option<String>, String, String);

fn place(e: &LsEntry) -> Place {
    (e.service.clone(), e.context.clone(), e.surface.clone(), e.path.clone())
}

/// The differences between two listings.
fn compare(old: LsReport, new: LsReport) -> DiffReport {
    let side = |r: &LsReport| DiffSide { instance: r.instance.clone(), run_id: r.run_id.clone(), level: r.level };
    let (old_side, new_side) = (side(&old), side(&new));
    let mut before: HashMap<Place, LsEntry> = old.entries.into_iter().map(|e| (place(&e), e)).collect();
    let mut entries = Vec::new();
    for n in new.entries {
        let change = match before.remove(&place(&n)) {
            None => Some((Change::Added, Vec::new(), None)),
            Some(o) => changes(&o, &n).map(|(c, what)| (c, what, Some(o))),
        };
        if let Some((change, changed, o)) = change {
            entries.push(entry(change, changed, o, Some(n)));
        }
    }
    entries.extend(before.into_values().map(|o| entry(Change::Removed, Vec::new(), Some(o), None)));
    entries
        .sort_by(|a, b| (&a.service, &a.context, &a.surface).cmp(&(&b.service, &b.context, &b.surface)).then_with(|| a.path.split('/').cmp(b.path.split('/'))));
    let count = |c: Change| entries.iter().filter(|e| e.change == c).count() as u64;
    DiffReport {
        old: old_side,
        new: new_side,
        added: count(Change::Added),
        removed: count(Change::Removed),
        modified: count(Change::Modified),
        metadata: count(Change::Metadata),
        entries,
    }
}

fn entry(change: Change, changed: Vec<&'static str>, old: Option<LsEntry>, new: Option<LsEntry>) -> DiffEntry {
    let e = new.as_ref().or(old.as_ref()).expect("a side");
    DiffEntry { service: e.service.clone(), context: e.context.clone(), surface: e.surface.clone(), path: e.path.clone(), change, changed, old, new }
}

/// How the same path differs between the archives, if it does.
fn changes(o: &LsEntry, n: &LsEntry) -> Option<(Change, Vec<&'static str>)> {
    if o.kind != n.kind {
        return Some((Change::Metadata, vec!["type"]));
    }
    let mut what = Vec::new();
    if o.size != n.size || o.blake3 != n.blake3 {
        what.push("content");
    }
    if o.link != n.link {
        what.push("link");
    }
    let content_changed = !what.is_empty();
    // One archive holds a file's bytes and its header for both: an incremental archives a
    // file again whenever its size, mtime, mode or owner moved (decisions/D-13).
    let same_holder = o.in_archive.is_some() && o.in_archive == n.in_archive;
    if !same_holder {
        let known = |a: &Option<String>, b: &Option<String>| a.is_some() && b.is_some();
        for (name, a, b) in [("mode", &o.mode, &n.mode), ("owner", &o.owner, &n.owner), ("mtime", &o.mtime, &n.mtime)] {
            if known(a, b) && a != b {
                what.push(name);
            }
        }
        let header_unknown = o.mtime.is_none() || n.mtime.is_none();
        if header_unknown && o.in_archive.is_some() && n.in_archive.is_some() && what.is_empty() {
            what.push("rearchived");
        }
    }
    match (what.is_empty(), content_changed) {
        (true, _) => None,
        (false, true) => Some((Change::Modified, what)),
        (false, false) => Some((Change::Metadata, what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, blake3: &str, mode: Option<&str>, held_by: &str) -> LsEntry {
        LsEntry {
            service: "s".into(),
            context: None,
            surface: "d".into(),
            path: path.into(),
            kind: "file",
            size: 1,
            mtime: mode.map(|_| "2026-01-01T00:00:00Z".to_string()),
            mode: mode.map(str::to_string),
            owner: mode.map(|_| "0:0".to_string()),
            link: None,
            in_archive: Some(held_by.into()),
            blake3: Some(blake3.into()),
        }
    }

    #[test]
    fn content_wins_over_metadata_and_a_shared_holder_is_unchanged() {
        let a = file("x", "aa", Some("0644"), "r1");
        assert_eq!(
            changes(&a, &LsEntry { blake3: Some("bb".into()), mode: Some("0600".into()), in_archive: Some("r2".into()), ..a.clone() }),
            Some((Change::Modified, vec!["content", "mode"]))
        );
        assert_eq!(changes(&a, &LsEntry { mode: Some("0600".into()), in_archive: Some("r2".into()), ..a.clone() }), Some((Change::Metadata, vec!["mode"])));
        // Inherited from the archive that holds it on the other side: the same header.
        assert_eq!(changes(&a, &file("x", "aa", None, "r1")), None);
        // Archived again since, its header unknown on one side: said, not guessed.
        assert_eq!(changes(&file("x", "aa", None, "r0"), &file("x", "aa", Some("0644"), "r2")), Some((Change::Metadata, vec!["rearchived"])));
        assert_eq!(changes(&a, &LsEntry { kind: "dir", ..a.clone() }), Some((Change::Metadata, vec!["type"])));
    }
}
