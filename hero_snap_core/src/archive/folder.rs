//! A folder of archives — a directory, or a prefix of an S3 bucket — and what the head of
//! each archive in it says. `list` and `prune` work on it.
//!
//! Both read only the head of each archive (the manifest; from object storage, one
//! ranged GET). A file whose manifest cannot be read — foreign, damaged, or encrypted to
//! keys not given — is reported, never fatal, and never deleted.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::catalog::Catalog;
use super::crypto::{encrypted_head, Decryption};
use super::format::{Consistency, Manifest};
use super::s3::{self, S3Config, S3Object, S3Prefix};
use crate::error::{Error, Result};

/// Where archives are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folder {
    /// A local directory (not searched recursively).
    Dir(PathBuf),
    /// `s3://BUCKET/PREFIX/`: the objects directly under the prefix.
    S3(S3Prefix),
}

impl Folder {
    /// `s3://BUCKET/PREFIX/` (reached with `s3`), or a directory.
    pub fn parse(text: &str, s3: &S3Config) -> Result<Folder> {
        if text.starts_with("s3://") {
            Ok(Folder::S3(S3Prefix::parse(text, s3.clone())?))
        } else if let Some(scheme) = super::location::foreign_scheme(text) {
            Err(Error::Usage(format!("`{text}`: {scheme}:// is not supported; archives are kept in a directory or under s3://BUCKET/PREFIX/")))
        } else {
            Ok(Folder::Dir(PathBuf::from(text)))
        }
    }
}

impl From<&Path> for Folder {
    fn from(dir: &Path) -> Folder {
        Folder::Dir(dir.to_path_buf())
    }
}

impl std::fmt::Display for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Folder::Dir(d) => write!(f, "{}", d.display()),
            Folder::S3(p) => f.write_str(&p.url()),
        }
    }
}

/// One archive of a folder: a file or an object.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    File(PathBuf),
    Object(S3Object),
}

impl Item {
    fn name(&self) -> String {
        match self {
            Item::File(p) => p.display().to_string(),
            Item::Object(o) => o.url(),
        }
    }
    fn open(&self) -> Result<Box<dyn Read>> {
        match self {
            Item::File(p) => Ok(Box::new(BufReader::new(File::open(p).map_err(Error::io(p, "opening"))?))),
            Item::Object(o) => s3::open(o, false),
        }
    }
    /// Deletes the archive; an object the store's lock still holds is kept, and said so.
    pub(crate) fn delete(&self) -> Result<s3::Deleted> {
        match self {
            Item::File(p) => std::fs::remove_file(p).map(|()| s3::Deleted::Gone).map_err(Error::io(p, "deleting the archive")),
            Item::Object(o) => s3::delete(o),
        }
    }
}

/// One file of the folder, as [`crate::list`] found it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The file's path, or the object's `s3://BUCKET/KEY`.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is age-encrypted (`None`: not a hero-snap archive at all).
    pub encrypted: Option<bool>,
    /// What the manifest says, when it could be read.
    pub summary: Option<Summary>,
    /// Why the manifest could not be read, e.g. `encrypted (no identity given)`.
    pub problem: Option<String>,
    /// The summary comes from this host's catalog (the archive was not opened).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_catalog: bool,
    #[serde(skip)]
    pub(crate) item: Item,
}

impl Listed {
    /// Where the archive is, for reading it whole.
    pub(crate) fn location(&self) -> super::Location {
        match &self.item {
            Item::File(p) => super::Location::File(p.clone()),
            Item::Object(o) => super::Location::S3(o.clone()),
        }
    }

    /// The location as the catalog and the index cache name it.
    pub(crate) fn location_key(&self) -> String {
        super::chain::location_key(&self.location())
    }
}

/// The head of an archive's manifest, for a listing.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The instance the archive was taken from.
    pub instance: String,
    /// When the backup ran (RFC 3339, UTC).
    pub created: String,
    /// The run that wrote it.
    pub run_id: String,
    /// The consistency the backup reached.
    pub consistency: Consistency,
    /// The archived services.
    pub services: Vec<String>,
    /// The archived contexts (of every service).
    pub contexts: Vec<String>,
    /// `whole instance`, or the services and contexts the backup was limited to.
    pub selection: String,
    /// Regular files in the archive.
    pub files: u64,
    /// Bytes of file data in the archive (before compression).
    pub bytes: u64,
    /// An incremental's place in its chain (absent for a full archive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// An incremental's parent: its run id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Summary {
    pub(crate) fn of(m: &Manifest) -> Summary {
        let contexts: BTreeSet<&String> = m.services.iter().flat_map(|s| &s.contexts).collect();
        Summary {
            instance: m.instance.clone(),
            created: m.created.clone(),
            run_id: m.run_id.clone(),
            consistency: m.consistency,
            services: m.services.iter().map(|s| s.name.clone()).collect(),
            contexts: contexts.into_iter().cloned().collect(),
            selection: selection_label(&m.selection),
            files: m.files,
            bytes: m.bytes,
            level: (m.level > 0).then_some(m.level),
            parent: m.parent.as_ref().map(|p| p.run_id.clone()),
        }
    }
}

/// Archives of one series share instance and selection; retention counts within a series.
pub(crate) fn selection_label(s: &super::SelectionRecord) -> String {
    if s.services.is_empty() && s.contexts.is_empty() {
        return "whole instance".into();
    }
    let mut parts = Vec::new();
    if !s.services.is_empty() {
        parts.push(format!("services {}", s.services.join(",")));
    }
    if !s.contexts.is_empty() {
        parts.push(format!("contexts {}", s.contexts.join(",")));
    }
    parts.join("; ")
}

/// Every file of `folder` with what its manifest says; archives first, newest first.
/// Encrypted archives the keys do not open are summarised from `catalog` when this host
/// wrote them (decisions/D-15).
pub(crate) fn read_folder(folder: &Folder, keys: &Decryption, catalog: Option<&Catalog>) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for (item, size) in items(folder)? {
        let mut listed = examine(item, size, keys);
        let unopened = listed.summary.is_none() && listed.encrypted == Some(true);
        if let Some(summary) = catalog.filter(|_| unopened).and_then(|c| c.summary(&listed.location_key(), size)) {
            (listed.summary, listed.problem, listed.from_catalog) = (Some(summary), None, true);
        }
        out.push(listed);
    }
    out.sort_by(|a, b| match (&a.summary, &b.summary) {
        (Some(x), Some(y)) => y.created.cmp(&x.created).then_with(|| a.path.cmp(&b.path)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.path.cmp(&b.path),
    });
    Ok(out)
}

fn items(folder: &Folder) -> Result<Vec<(Item, u64)>> {
    let mut out = Vec::new();
    match folder {
        Folder::Dir(dir) => {
            let rd = std::fs::read_dir(dir).map_err(Error::io(dir, "listing the backup directory"))?;
            for entry in rd {
                let entry = entry.map_err(Error::io(dir, "listing the backup directory"))?;
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                if let Some(m) = std::fs::metadata(&path).ok().filter(|m| m.is_file()) {
                    out.push((Item::File(path), m.len()));
                }
            }
        }
        Folder::S3(prefix) => {
            for (obj, size) in s3::list(prefix)? {
                if !obj.key.rsplit('/').next().unwrap_or_default().starts_with('.') {
                    out.push((Item::Object(obj), size));
                }
            }
        }
    }
    Ok(out)
}

fn examine(item: Item, size: u64, keys: &Decryption) -> Listed {
    let mut listed = Listed { path: item.name(), size, encrypted: None, summary: None, problem: None, from_catalog: false, item };
    // One open per archive: the first bytes tell whether it is encrypted, then the
    // manifest is read from the same stream.
    let mut input = match listed.item.open() {
        Ok(r) => r,
        Err(e) => {
            listed.problem = Some(format!("unreadable: {e}"));
            return listed;
        }
    };
    let mut head = Vec::with_capacity(64);
    match input.by_ref().take(64).read_to_end(&mut head) {
        Ok(_) => {}
        Err(e) => {
            listed.problem = Some(format!("unreadable: {e}"));
            return listed;
        }
    };
    listed.encrypted = encrypted_head(&head);
    let plaintext;
    let keys = match listed.encrypted {
        None => {
            listed.problem = Some("not a hero-snap archive (neither age-encrypted nor zstd-compressed)".into());
            return listed;
        }
        Some(true) if !keys.has_keys() => {
            listed.problem = Some("encrypted (no identity given)".into());
            return listed;
        }
        Some(true) => keys,
        Some(false) => {
            plaintext = Decryption::plaintext();
            &plaintext
        }
    };
    match super::read::read_manifest(Cursor::new(head).chain(input), keys) {
        Ok(m) => listed.summary = Some(Summary::of(&m)),
        Err(e) => listed.problem = Some(e.to_string()),
    }
    listed
}
