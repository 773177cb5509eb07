//! A directory of archives: what each one holds ([`list`]) and which to keep ([`prune`]).
//!
//! Both read only the head of each archive (the manifest). A file whose manifest cannot
//! be read — foreign, damaged, or encrypted to keys not given — is reported, never
//! fatal, and never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::crypto::{encrypted_head, Decryption};
use crate::error::{Error, Result};
use crate::manifest::{Consistency, Manifest};

/// One file of the directory, as [`list`] found it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is age-encrypted (`None`: not a hero-snap archive at all).
    pub encrypted: Option<bool>,
    /// What the manifest says, when it could be read.
    pub summary: Option<Summary>,
    /// Why the manifest could not be read, e.g. `encrypted (no identity given)`.
    pub problem: Option<String>,
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

/// Lists the regular files directly in `dir` (not in subdirectories; names starting with
/// `.` are skipped: they are backups still being written). Archives come first, newest
/// first; files that are not readable archives follow, by name.
///
/// Plaintext archives are read without asking; encrypted ones need `keys`.
///
/// ```no_run
/// use hero_snap_core::{catalog, Decryption};
/// # fn main() -> hero_snap_core::Result<()> {
/// let mut keys = Decryption::default();
/// keys.add_identity_file("/root/hero-snap.key".as_ref())?;
/// for f in catalog::list("/backups".as_ref(), &keys)? {
///     match (&f.summary, &f.problem) {
///         (Some(s), _) => println!("{} {} {}", s.created, s.instance, f.path.display()),
///         (None, Some(p)) => println!("{}: {p}", f.path.display()),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub fn list(dir: &Path, keys: &Decryption) -> Result<Vec<Listed>> {
    let rd = std::fs::read_dir(dir).map_err(Error::io(dir, "listing the backup directory"))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(Error::io(dir, "listing the backup directory"))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        out.push(examine(path, meta.len(), keys));
    }
    out.sort_by(|a, b| match (&a.summary, &b.summary) {
        (Some(x), Some(y)) => y.created.cmp(&x.created).then_with(|| a.path.cmp(&b.path)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.path.cmp(&b.path),
    });
    Ok(out)
}

fn examine(path: PathBuf, size: u64, keys: &Decryption) -> Listed {
    let mut listed = Listed { path, size, encrypted: None, summary: None, problem: None };
    let mut head = [0u8; 64];
    let n = match File::open(&listed.path).and_then(|mut f| read_head(&mut f, &mut head)) {
        Ok(n) => n,
        Err(e) => {
            listed.problem = Some(format!("unreadable: {e}"));
            return listed;
        }
    };
    listed.encrypted = encrypted_head(&head[..n]);
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
    let read = File::open(&listed.path)
        .map_err(Error::io(&listed.path, "opening"))
        .and_then(|f| crate::archive::inspect(BufReader::new(f), keys));
    match read {
        Ok(m) => listed.summary = Some(Summary::of(&m)),
        Err(e) => listed.problem = Some(e.to_string()),
    }
    listed
}

fn read_head(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
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
    /// The archive.
    pub path: PathBuf,
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
    pub deleted: Vec<PathBuf>,
    /// Bytes freed (or that would be freed).
    pub freed_bytes: u64,
    /// Files left alone because their manifest could not be read, with why.
    pub ignored: Vec<Listed>,
    /// The free-space check, when asked for.
    pub space: Option<SpaceCheck>,
}

/// Applies retention to the archives in `dir`, per series (same instance and selection),
/// by the manifests' creation times. The newest archive of every series is always kept;
/// only files whose manifest was read are ever deleted.
///
/// ```no_run
/// use hero_snap_core::catalog::{prune, MinFree, PruneOptions};
/// use hero_snap_core::Decryption;
/// # fn main() -> hero_snap_core::Result<()> {
/// let mut keys = Decryption::default();
/// keys.add_identity_file("/root/hero-snap.key".as_ref())?;
/// let opts = PruneOptions { keep_last: 3, keep_daily: 7, dry_run: true, min_free: Some(MinFree::NextBackup) };
/// let report = prune("/backups".as_ref(), &keys, &opts)?;
/// println!("would delete {:?}", report.deleted);
/// # Ok(()) }
/// ```
pub fn prune(dir: &Path, keys: &Decryption, opts: &PruneOptions) -> Result<PruneReport> {
    if opts.keep_last == 0 && opts.keep_daily == 0 {
        return Err(Error::Usage("prune needs a retention rule: --keep-last N and/or --keep-daily N (N >= 1)".into()));
    }
    let (archives, ignored): (Vec<Listed>, Vec<Listed>) = list(dir, keys)?.into_iter().partition(|l| l.summary.is_some());
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
                    std::fs::remove_file(&a.path).map_err(Error::io(&a.path, "deleting the archive"))?;
                }
                report.freed_bytes += a.size;
                report.deleted.push(a.path);
            } else {
                report.kept.push(Kept { path: a.path, created, reasons });
            }
        }
    }
    if let Some(min) = opts.min_free {
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
