//! Where an archive lives: a file, standard input/output, or an object in S3-compatible
//! storage. The archive writer and reader take plain streams; this opens them.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;

use super::s3::{self, S3Config, S3Object};
use crate::backup::{backup, backup_to_file, BackupOptions, BackupReport};
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::progress::{Cancel, Progress};

/// Where an archive is written to or read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `-`: standard output (backup) or standard input (the readers).
    Stdio,
    /// A local file, written under a temporary name and renamed into place.
    File(PathBuf),
    /// `s3://BUCKET/KEY`.
    S3(S3Object),
}

/// How much of the archive a reader needs: the manifest at its head, or all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// inspect, preflight: only the first bytes are fetched.
    Head,
    /// verify, restore: the whole archive, fetched ahead in parallel.
    Whole,
}

impl Location {
    /// `-`, `s3://BUCKET/KEY` (reached with `s3`), or a file path.
    pub fn parse(text: &str, s3: &S3Config) -> Result<Location> {
        Ok(if text == "-" {
            Location::Stdio
        } else if text.starts_with("s3://") {
            Location::S3(S3Object::parse(text, s3.clone())?)
        } else if let Some(scheme) = foreign_scheme(text) {
            return Err(Error::Usage(format!("`{text}`: {scheme}:// is not supported; archives go to a file, `-` or s3://BUCKET/KEY")));
        } else {
            Location::File(PathBuf::from(text))
        })
    }

    /// Opens the archive for reading.
    pub fn open(&self, extent: Extent) -> Result<Box<dyn Read>> {
        match self {
            Location::Stdio => Ok(Box::new(io::stdin().lock())),
            Location::File(path) => {
                let f = File::open(path).map_err(Error::io(path, "opening the archive"))?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
            }
            Location::S3(obj) => s3::open(obj, extent == Extent::Whole),
        }
    }
}

/// The scheme of a `SCHEME://...` text that is not `s3://`, which would otherwise be
/// taken for a relative file path.
pub(crate) fn foreign_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    (scheme != "s3" && scheme.chars().all(|c| c.is_ascii_alphanumeric())).then_some(scheme)
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Stdio => f.write_str("-"),
            Location::File(p) => write!(f, "{}", p.display()),
            Location::S3(o) => f.write_str(&o.url()),
        }
    }
}

/// Backs up to `to`. Whatever the location, a failed run publishes nothing: a file is
/// renamed into place only when complete, an object appears only when its multipart
/// upload completes after the archive's last byte (a failed run aborts it; `gc` aborts
/// what a killed run left).
pub fn backup_to(inv: &Inventory, opts: &BackupOptions, to: &Location, progress: &dyn Progress, cancel: &Cancel) -> Result<BackupReport> {
    match to {
        Location::File(path) => backup_to_file(inv, opts, path, progress, cancel),
        Location::Stdio => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(Error::Usage("refusing to write an archive to a terminal; redirect standard output".into()));
            }
            // Not locked: the archive is written from its own thread (`backup`).
            let out = io::BufWriter::with_capacity(1 << 20, stdout);
            let (report, mut out) = backup(inv, opts, out, progress, cancel)?;
            out.flush().map_err(Error::io("-", "writing the archive"))?;
            Ok(report)
        }
        Location::S3(obj) => backup_to_s3(inv, opts, obj, progress, cancel),
    }
}

fn backup_to_s3(inv: &Inventory, opts: &BackupOptions, obj: &S3Object, progress: &dyn Progress, cancel: &Cancel) -> Result<BackupReport> {
    let state = opts.state_dir.clone().or_else(|| inv.state_dir.clone()).unwrap_or_else(|| PathBuf::from(crate::DEFAULT_STATE_DIR));
    let run = crate::backup::run_id();
    let (upload, outcome) = s3::Upload::start(obj)?;
    // Journaled before the first part leaves, so that a killed run's upload can be found.
    crate::journal::save(&state, "upload", &run, &s3::UploadJournal::new(&run, obj))?;
    let result = backup(inv, opts, upload, progress, cancel).and_then(|(report, upload)| {
        let stored = upload.finish()?;
        if stored != report.archive_bytes {
            return Err(Error::Storage(format!(
                "{}: the storage holds {stored} bytes, {} were sent; delete the object and back up again",
                obj.url(), report.archive_bytes)));
        }
        Ok(report)
    });
    let mut outcome = outcome.lock().unwrap_or_else(|p| p.into_inner());
    if result.is_ok() || outcome.aborted {
        crate::journal::remove(&state, "upload", &run);
    }
    result.map_err(|e| match (e, outcome.error.take()) {
        // The archive writer saw an io::Error; the storage's own error says more.
        (Error::Io { .. }, Some(storage)) => storage,
        (e, _) => e,
    })
}
