//! A folder of archives — a directory, or a prefix of an S3 bucket: what each archive
//! holds ([`list`]) and which to keep ([`prune`]).
//!
//! Both read only the head of each archive (the manifest; from object storage, one
//! ranged GET). A file whose manifest cannot be read — foreign, damaged, or encrypted to
//! keys not given — is reported, never fatal, and never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::crypto::{encrypted_head, Decryption};
use crate::archive::s3::{self, S3Config, S3Object, S3Prefix};
use crate::error::{Error, Result};
use crate::manifest::{Consistency, Manifest};

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
        } else if let Some(scheme) = crate::archive::location::foreign_scheme(text) {
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
enum Item {
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
    fn delete(&self) -> Result<()> {
        match self {
            Item::File(p) => std::fs::remove_file(p).map_err(Error::io(p, "deleting the archive")),
            Item::Object(o) => s3::delete(o),
        }
    }
}

/// One file of the folder, as [`list`] found it.
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
    #[serde(skip)]
    item: Item,
}

/// The head of an archive's manifest, for a listing.
#[derive(Debug, Clone, Serialize)]
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
}

impl Summary {
    fn of(m: &Manifest) -> Summary {
        let contexts: BTreeSet<&String> = m.services.iter().flat_map(|s| &s.contexts).collect();
        Summary {
            instance: m.instance.clone(),
            created: m.created.clone(),
            run_id: m.run_id.clone(),
            consistency: m.consistency,
            services: m.services.iter().map(|s| s.name.clone()).collect(),
            contexts: contexts.into_iter().cloned().collect(),
            selection: selection_label(m),
            files: m.files,
            bytes: m.bytes,
        }
    }
}

/// Archives of one series share instance and selection; retention counts within a series.
fn selection_label(m: &Manifest) -> String {
    let s = &m.selection;
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

/// Lists the regular files directly in `folder` (not in subdirectories; names starting
/// with `.` are skipped: they are backups still being written). Archives come first,
/// newest first; files that are not readable archives follow, by name.
///
/// Plaintext archives are read without asking; encrypted ones need `keys`.
///
/// ```no_run
/// use hero_snap_core::{catalog, Decryption};
/// # fn main() -> hero_snap_core::Result<()> {
/// let mut keys = Decryption::default();
/// keys.add_identity_file("/root/hero-snap.key".as_ref())?;
/// let folder = catalog::Folder::parse("s3://backups/hero/", &Default::default())?;
/// for f in catalog::list(&folder, &keys)? {
///     match (&f.summary, &f.problem) {
///         (Some(s), _) => println!("{} {} {}", s.created, s.instance, f.path),
///         (None, Some(p)) => println!("{}: {p}", f.path),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub fn list(folder: &Folder, keys: &Decryption) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for (item, size) in items(folder)? {
        out.push(examine(item, size, keys));
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
    let mut listed = Listed { path: item.name(), size, encrypted: None, summary: None, problem: None, item };
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
    match crate::archive::inspect(Cursor::new(head).chain(input), keys) {
        Ok(m) => listed.summary = Some(Summary::of(&m)),
        Err(e) => listed.problem = Some(e.to_string()),
    }
    listed
}

/// The free space [`prune`] must leave in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    /// At least this many bytes.
    Bytes(u64),
    /// Room for one more backup of each series: the sum of each series' newest archive,
    /// plus 10 %.
    NextBackup,
}

/// Options of [`prune`]. Nothing is deleted unless a retention rule is given.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Keep the newest N archives of each series.
    pub keep_last: usize,
    /// Keep the newest archive of each of the N most recent days (UTC) that have one, per series.
    pub keep_daily: usize,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// After pruning, check that the directory's filesystem has this much room.
    pub min_free: Option<MinFree>,
}

/// One archive [`prune`] keeps, and the rules that keep it.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    /// The archive's path or `s3://` URL.
    pub path: String,
    /// When it was made.
    pub created: String,
    /// `newest`, `last`, `daily YYYY-MM-DD`.
    pub reasons: Vec<String>,
}

/// The free-space check of [`prune`].
#[derive(Debug, Clone, Serialize)]
pub struct SpaceCheck {
    /// The directory checked.
    pub path: PathBuf,
    /// Bytes available after pruning (in a dry run: now plus what would be deleted).
    pub available: u64,
    /// Bytes required.
    pub required: u64,
    /// Whether `available >= required`.
    pub ok: bool,
}

/// What [`prune`] kept, deleted (or would delete), and could not judge.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run (then `deleted` lists what would be deleted).
    pub dry_run: bool,
    /// Archives kept.
    pub kept: Vec<Kept>,
    /// Archives deleted.
    pub deleted: Vec<String>,
    /// Bytes freed (or that would be freed).
    pub freed_bytes: u64,
    /// Files left alone because their manifest could not be read, with why.
    pub ignored: Vec<Listed>,
    /// The free-space check, when asked for.
    pub space: Option<SpaceCheck>,
}

/// Applies retention to the archives in `folder`, per series (same instance and
/// selection), by the manifests' creation times. The newest archive of every series is
/// always kept; only files whose manifest was read are ever deleted. `min_free` applies to
/// a directory only (object storage reports no free space).
///
/// ```no_run
/// use hero_snap_core::catalog::{prune, MinFree, PruneOptions};
/// use hero_snap_core::Decryption;
/// use std::path::Path;
/// # fn main() -> hero_snap_core::Result<()> {
/// let mut keys = Decryption::default();
/// keys.add_identity_file("/root/hero-snap.key".as_ref())?;
/// let opts = PruneOptions { keep_last: 3, keep_daily: 7, dry_run: true, min_free: Some(MinFree::NextBackup) };
/// let report = prune(&Path::new("/backups").into(), &keys, &opts)?;
/// println!("would delete {:?}", report.deleted);
/// # Ok(()) }
/// ```
pub fn prune(folder: &Folder, keys: &Decryption, opts: &PruneOptions) -> Result<PruneReport> {
    if opts.keep_last == 0 && opts.keep_daily == 0 {
        return Err(Error::Usage("prune needs a retention rule: --keep-last N and/or --keep-daily N (N >= 1)".into()));
    }
    if let (Some(_), Folder::S3(p)) = (opts.min_free, folder) {
        return Err(Error::Usage(format!("{}: --min-free checks a local filesystem; object storage has no free space to check", p.url())));
    }
    let (archives, ignored): (Vec<Listed>, Vec<Listed>) = list(folder, keys)?.into_iter().partition(|l| l.summary.is_some());
    let mut series: BTreeMap<(String, String), Vec<Listed>> = BTreeMap::new();
    for a in archives {
        let s = a.summary.as_ref().expect("partitioned");
        series.entry((s.instance.clone(), s.selection.clone())).or_default().push(a);
    }
    let mut report = PruneReport { dry_run: opts.dry_run, kept: Vec::new(), deleted: Vec::new(), freed_bytes: 0, ignored, space: None };
    let mut next_backup = 0u64;
    for (_, mut list) in series {
        list.sort_by_key(|a| std::cmp::Reverse(created_key(a)));
        next_backup += list[0].size;
        let mut days = BTreeSet::new();
        for (i, a) in list.into_iter().enumerate() {
            let created = a.summary.as_ref().expect("partitioned").created.clone();
            let mut reasons = Vec::new();
            if i == 0 {
                reasons.push("newest".to_string());
            }
            if i < opts.keep_last {
                reasons.push("last".to_string());
            }
            let day = created_key(&a).map(|t| t.date().to_string()).unwrap_or_else(|| created.chars().take(10).collect());
            if days.len() < opts.keep_daily && days.insert(day.clone()) {
                reasons.push(format!("daily {day}"));
            }
            if reasons.is_empty() {
                if !opts.dry_run {
                    a.item.delete()?;
                }
                report.freed_bytes += a.size;
                report.deleted.push(a.path);
            } else {
                report.kept.push(Kept { path: a.path, created, reasons });
            }
        }
    }
    if let (Some(min), Folder::Dir(dir)) = (opts.min_free, folder) {
        let required = match min {
            MinFree::Bytes(n) => n,
            MinFree::NextBackup => next_backup + next_backup / 10,
        };
        let st = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::io(dir, "reading free space")(e.into()))?;
        let mut available = st.blocks_available() as u64 * st.fragment_size() as u64;
        if opts.dry_run {
            available += report.freed_bytes;
        }
        report.space = Some(SpaceCheck { path: dir.to_path_buf(), available, required, ok: available >= required });
    }
    Ok(report)
}

fn created_key(l: &Listed) -> Option<time::OffsetDateTime> {
    let s = l.summary.as_ref()?;
    time::OffsetDateTime::parse(&s.created, &time::format_description::well_known::Rfc3339).ok().map(|t| t.to_offset(time::UtcOffset::UTC))
}

/// Parses a size: bytes, or with a binary suffix `K`, `M`, `G`, `T` (`10G` = 10 GiB).
///
/// ```
/// assert_eq!(hero_snap_core::catalog::parse_size("10G"), Ok(10 << 30));
/// assert_eq!(hero_snap_core::catalog::parse_size("512"), Ok(512));
/// ```
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown size suffix (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}`: not a size (e.g. 500M, 10G)"))?;
    n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(|| format!("`{s}`: too large"))
}
