//! Journals in the state directory: written atomically before risky work, read back by
//! `gc` (and the start of every run) when the process that wrote them is dead.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::process_alive;
use crate::error::{Error, Result};

/// `state/<kind>-<run>.json`
pub(crate) fn path(state: &Path, kind: &str, run: &str) -> PathBuf {
    state.join(format!("{kind}-{run}.json"))
}

/// Writes `value` as JSON through a temporary file, fsync and rename.
pub(crate) fn save<T: Serialize>(state: &Path, kind: &str, run: &str, value: &T) -> Result<()> {
    fs::create_dir_all(state).map_err(Error::io(state, "creating the state directory"))?;
    let path = path(state, kind, run);
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(value).expect("journals serialise");
    let f = fs::File::create(&tmp).map_err(Error::io(&tmp, "writing the journal"))?;
    (&f).write_all(&data).map_err(Error::io(&tmp, "writing the journal"))?;
    f.sync_all().map_err(Error::io(&tmp, "syncing the journal"))?;
    fs::rename(&tmp, &path).map_err(Error::io(&path, "writing the journal"))?;
    if let Ok(d) = fs::File::open(state) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(crate) fn remove(state: &Path, kind: &str, run: &str) {
    let _ = fs::remove_file(path(state, kind, run));
    if let Ok(d) = fs::File::open(state) {
        let _ = d.sync_all();
    }
}

/// The journals of `kind` whose writer is no longer running, with their paths.
pub(crate) fn dead<T: DeserializeOwned>(state: &Path, kind: &str, pid_of: impl Fn(&T) -> u32) -> Result<Vec<(PathBuf, T)>> {
    let entries = match fs::read_dir(state) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(state, "listing the state directory")(e)),
    };
    let prefix = format!("{kind}-");
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&prefix) && name.ends_with(".json")) {
            continue;
        }
        let path = entry.path();
        let text = fs::read_to_string(&path).map_err(Error::io(&path, "reading the journal"))?;
        let j: T = serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
        let pid = pid_of(&j);
        // A journal written by a process that still runs belongs to that process.
        if pid != std::process::id() && process_alive(pid) {
            continue;
        }
        out.push((path, j));
    }
    Ok(out)
}
