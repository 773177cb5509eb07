//! `extract`: chosen files of an archive (or of a chain) into a new directory outside the
//! instance, each checked against the index; the instance itself is never touched.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::chain::read_ancestors;
use crate::archive::read::read_archive;
use crate::archive::{Ancestors, Decryption, Manifest, PathPatterns};
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::progress::{Cancel, Progress};
use crate::restore::pick::{inventory_surfaces, refuse_overlap, Picker, StagingJournaled};
use crate::state;

/// Options of [`extract`].
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Which members to extract (at least one pattern).
    pub patterns: PathPatterns,
    /// The destination: a directory that does not exist yet, or an empty one.
    pub to: PathBuf,
    /// Where the journal naming the staging directory goes (so that `gc` removes it
    /// after a kill); defaults to the live inventory's `state_dir`, then /var/lib/hero-snap.
    pub state_dir: Option<PathBuf>,
}

/// What [`extract`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractReport {
    /// The (newest) archive's manifest.
    pub manifest: Manifest,
    /// The destination.
    pub to: PathBuf,
    /// Regular files written.
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Every member written (directories, files, links), as laid out under `to`:
    /// `<service>/instance/<surface>/<path>` or `<service>/contexts/<ctx>/<surface>/<path>`.
    pub entries: Vec<String>,
    /// An incremental's ancestors read whole for picked files, newest first (run ids).
    pub ancestors: Vec<String>,
}

/// Extracts the members `opts.patterns` picks into `opts.to`, laid out as
/// `<service>/<instance|contexts/CTX>/<surface>/<path>`, with the directories on their
/// way, owners, modes, times and extended attributes as [`crate::restore()`] writes them.
///
/// Refused before anything is written: a `to` that exists and is not an empty directory,
/// whose parent does not exist, or that is, holds or lies inside a surface of `live` (the
/// instance on this host, when its inventory is known) or of the archive's manifest.
/// The whole archive is read and checked, and for an incremental each ancestor that holds
/// a picked file (the others by their manifest only). Everything is written into a
/// staging directory beside `to`, renamed to `to` only when every check passed; on any
/// failure it is removed, so nothing is left. A process killed meanwhile leaves it with
/// its journal (`extract-<run>.json` in the state directory): [`crate::gc()`] removes it.
pub fn extract(
    input: impl Read,
    ancestors: &mut Ancestors,
    keys: &Decryption,
    live: Option<&Inventory>,
    opts: &ExtractOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<ExtractReport> {
    if opts.patterns.is_empty() {
        return Err(Error::Usage("extract needs at least one --path PATTERN; to bring back a whole instance, use `hero-snap restore`".into()));
    }
    if let Some(inv) = live {
        refuse_overlap(&opts.to, &inventory_surfaces(inv), "in this host's inventory")?;
    }
    let run = state::run_id();
    let stage = check_destination(&opts.to, &run)?;
    let state = state::state_dir(opts.state_dir.as_deref(), live);
    let _journal = StagingJournaled::save(&state, &run, &stage)?;
    let mut picker = Picker::new(&opts.to, stage, &opts.patterns, progress)?;
    let read = read_archive(input, keys, &mut picker, cancel).and_then(|newest| read_ancestors(&mut picker, newest, ancestors, keys, cancel));
    let done = read.and_then(|out| {
        picker.finish()?;
        if picker.picked.is_empty() {
            return Err(Error::Usage(format!(
                "no member of the archive matches {}; `hero-snap ls --from ARCHIVE` lists them (patterns match the path inside a surface, or SERVICE/instance|contexts/CTX/SURFACE/PATH)",
                opts.patterns.texts().join(", ")
            )));
        }
        picker.publish()?;
        Ok(out)
    });
    let out = match done {
        Ok(out) => out,
        Err(e) => {
            picker.discard();
            return Err(cancel.explain(e));
        }
    };
    Ok(ExtractReport {
        manifest: out.manifest,
        to: opts.to.clone(),
        files: picker.files,
        bytes: picker.bytes,
        entries: std::mem::take(&mut picker.picked),
        ancestors: out.ancestors_read,
    })
}

/// Checks the destination before anything is read; returns the staging directory beside it.
fn check_destination(to: &Path, run: &str) -> Result<PathBuf> {
    let shown = to.display();
    if to.file_name().is_none() {
        return Err(Error::Usage(format!("--to {shown}: name a directory to create (not `/` or `..`)")));
    }
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_md = std::fs::metadata(parent)
        .ok()
        .filter(|m| m.is_dir())
        .ok_or_else(|| Error::Usage(format!("--to {shown}: its parent directory {} does not exist; create it first", parent.display())))?;
    match std::fs::symlink_metadata(to) {
        Ok(md) if md.is_dir() => {
            let mut entries = std::fs::read_dir(to).map_err(Error::io(to, "listing"))?;
            if entries.next().is_some() {
                return Err(Error::Refused(format!(
                    "--to {shown}: exists and is not empty; extract writes only into a new or empty directory, never over files"
                )));
            }
            if md.dev() != parent_md.dev() {
                return Err(Error::Refused(format!("--to {shown}: is a mount point; name a new directory inside it")));
            }
        }
        Ok(_) => return Err(Error::Refused(format!("--to {shown}: exists and is not a directory; name a new or empty directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(to, "looking at")(e)),
    }
    Ok(parent.join(format!(".hero-snap-{run}.extract")))
}
