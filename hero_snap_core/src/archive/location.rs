//! Where an archive lives: a file, standard input/output, or an object in S3-compatible
//! storage. The archive writer and reader take plain streams; this opens them.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use super::s3::{self, S3Config, S3Object};
use crate::error::{Error, Result};

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
