//! `prune`: retention over a directory or S3 prefix of archives, per series, with a
//! free-space guard.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::archive::catalog::Catalog;
use crate::archive::folder::{read_folder, Folder, Listed};
use crate::archive::s3::Deleted;
use crate::archive::Decryption;
use crate::error::{Error, Result};
use crate::retention::Retention;

mod metrics;
pub use metrics::with_prune_metrics;

/// The free space [`prune`] must leave in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    /// At least this many bytes.
    Bytes(u64),
    /// Room for one more backup of each series: the sum of each series' newest archive,
    /// plus 10 %.
    NextBackup,
}

impl std::str::FromStr for MinFree {
    type Err = Error;

    /// `auto` ([`MinFree::NextBackup`]), or a size: bytes, or with a binary suffix `K`,
    /// `M`, `G`, `T` (`10G` = 10 GiB).
    ///
    /// ```
    /// use hero_snap_core::MinFree;
    /// assert_eq!("10G".parse::<MinFree>().unwrap(), MinFree::Bytes(10 << 30));
    /// assert_eq!("auto".parse::<MinFree>().unwrap(), MinFree::NextBackup);
    /// assert!("10Q".parse::<MinFree>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<MinFree> {
        if s == "auto" {
            return Ok(MinFree::NextBackup);
        }
        crate::size::parse_size(s).map(MinFree::Bytes).map_err(|e| Error::Usage(format!("--min-free: {e}")))
    }
}

/// Options of [`prune`]. Nothing is deleted unless a retention rule is given.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Which archives of each series to keep (restic's rules).
    pub retention: Retention,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// After pruning, check that the directory's filesystem has this much room.
    pub min_free: Option<MinFree>,
    /// The state directory whose catalog summarises the archives this host wrote, so that
    /// they are pruned without the identity that opens them (decisions/D-15).
    pub state_dir: Option<PathBuf>,
}

/// One archive [`prune`] keeps, and the rules that keep it.
#[derive(Debug, Clone, Serialize)]
pub struct Kept {
    /// The archive's path or `s3://` URL.
    pub path: String,
    /// When it was made.
    pub created: String,
    /// `newest`, `last`, `hourly YYYY-MM-DD HHh`, `daily YYYY-MM-DD`, `weekly YYYY-Www`,
    /// `monthly YYYY-MM`, `yearly YYYY`, `within DURATION`, `incremental RUN builds on it`,
    /// or `locked until DATE` (no rule kept it, but the store's object lock refused the delete).
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

/// What [`prune`] did to one series (the archives of one instance and selection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunedSeries {
    /// The instance.
    pub instance: String,
    /// The selection: `whole instance`, or the services and contexts (as `list` shows it).
    pub selection: String,
    /// Archives kept.
    pub kept: u64,
    /// Archives deleted (or that would be).
    pub deleted: u64,
    /// Bytes freed (or that would be).
    pub freed_bytes: u64,
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
    /// Each series' counts, by instance and selection.
    pub series: Vec<PrunedSeries>,
}

impl PruneReport {
    /// The free-space guard's verdict: [`Error::NoSpace`] (exit 17) when `--min-free` was
    /// asked for and is not met after pruning, naming the directory and the shortfall.
    pub fn check_space(&self) -> Result<()> {
        match self.space.as_ref().filter(|s| !s.ok) {
            None => Ok(()),
            Some(sp) => Err(Error::NoSpace(format!(
                "{}: {} bytes free after pruning, {} required; free space or keep fewer archives before the next backup",
                sp.path.display(),
                sp.available,
                sp.required
            ))),
        }
    }
}

/// Applies retention to the archives in `folder`, per series (same instance and
/// selection), by the manifests' creation times. The newest archive of every series is
/// always kept; only files whose manifest was read are ever deleted. `min_free` applies to
/// a directory only (object storage reports no free space).
///
/// ```no_run
/// use hero_snap_core::{prune, MinFree, PruneOptions, Retention};
/// use hero_snap_core::Decryption;
/// use std::path::Path;
/// # fn main() -> hero_snap_core::Result<()> {
/// let mut keys = Decryption::default();
/// keys.add_identity_file("/root/hero-snap.key".as_ref())?;
/// let retention = Retention { last: 3, daily: 7, weekly: 5, monthly: 12, ..Retention::default() };
/// let opts = PruneOptions { retention, dry_run: true, min_free: Some(MinFree::NextBackup), state_dir: None };
/// let report = prune(&Path::new("/backups").into(), &keys, &opts)?;
/// println!("would delete {:?}", report.deleted);
/// # Ok(()) }
/// ```
pub fn prune(folder: &Folder, keys: &Decryption, opts: &PruneOptions) -> Result<PruneReport> {
    if !opts.retention.is_set() {
        return Err(Error::Usage(
            "prune needs a retention rule: --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly N (N >= 1) or --keep-within DURATION".into(),
        ));
    }
    if let (Some(_), Folder::S3(p)) = (opts.min_free, folder) {
        return Err(Error::Usage(format!("{}: --min-free checks a local filesystem; object storage has no free space to check", p.url())));
    }
    let catalog = opts.state_dir.as_deref().map(Catalog::open);
    let (archives, ignored): (Vec<Listed>, Vec<Listed>) = read_folder(folder, keys, catalog.as_ref())?.into_iter().partition(|l| l.summary.is_some());
    let mut series: BTreeMap<(String, String), Vec<Listed>> = BTreeMap::new();
    for a in archives {
        let s = a.summary.as_ref().expect("partitioned");
        series.entry((s.instance.clone(), s.selection.clone())).or_default().push(a);
    }
    let mut report = PruneReport { dry_run: opts.dry_run, kept: Vec::new(), deleted: Vec::new(), freed_bytes: 0, ignored, space: None, series: Vec::new() };
    let mut next_backup = 0u64;
    for ((instance, selection), list) in series {
        let mut counts = PrunedSeries { instance, selection, kept: 0, deleted: 0, freed_bytes: 0 };
        let mut list: Vec<(Option<time::OffsetDateTime>, Listed)> = list.into_iter().map(|a| (created_key(&a), a)).collect();
        list.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        next_backup += list[0].1.size;
        // An archive whose creation time cannot be read is never deleted: it cannot be dated.
        let (dated, undated): (Vec<_>, Vec<_>) = list.into_iter().partition(|(t, _)| t.is_some());
        let times: Vec<time::OffsetDateTime> = dated.iter().filter_map(|(t, _)| *t).collect();
        let chosen = opts.retention.choose(&times);
        let undated = undated.into_iter().map(|(_, a)| (a, vec!["creation time unreadable".to_string()]));
        let mut decided: Vec<(Listed, Vec<String>)> = dated.into_iter().map(|(_, a)| a).zip(chosen).chain(undated).collect();
        keep_ancestors(&mut decided);
        for (a, reasons) in decided {
            let created = a.summary.as_ref().map(|s| s.created.clone()).unwrap_or_default();
            let mut reasons = reasons;
            if reasons.is_empty() {
                match if opts.dry_run { Deleted::Gone } else { a.item.delete()? } {
                    // The store's object lock keeps it; the rest of the run goes on.
                    Deleted::Locked(until) => reasons.push(format!("locked until {until}")),
                    Deleted::Gone => {
                        if let (false, Some(c)) = (opts.dry_run, &catalog) {
                            c.forget(&a.location_key());
                        }
                        report.freed_bytes += a.size;
                        report.deleted.push(a.path);
                        (counts.deleted, counts.freed_bytes) = (counts.deleted + 1, counts.freed_bytes + a.size);
                        continue;
                    }
                }
            }
            report.kept.push(Kept { path: a.path, created, reasons });
            counts.kept += 1;
        }
        report.series.push(counts);
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

/// An archive a kept incremental builds on is kept too, however old: without it the
/// incremental cannot be restored (decisions/D-13).
fn keep_ancestors(decided: &mut [(Listed, Vec<String>)]) {
    let run_of = |l: &Listed| l.summary.as_ref().map(|s| s.run_id.clone()).unwrap_or_default();
    let parent_of = |l: &Listed| l.summary.as_ref().and_then(|s| s.parent.clone());
    for i in 0..decided.len() {
        if decided[i].1.is_empty() {
            continue;
        }
        let (mut child, mut parent) = (run_of(&decided[i].0), parent_of(&decided[i].0));
        while let Some(p) = parent {
            let Some(j) = decided.iter().position(|(l, _)| run_of(l) == p) else { break };
            let reason = format!("incremental {child} builds on it");
            if !decided[j].1.contains(&reason) {
                decided[j].1.push(reason);
            }
            (child, parent) = (p, parent_of(&decided[j].0));
        }
    }
}

fn created_key(l: &Listed) -> Option<time::OffsetDateTime> {
    let s = l.summary.as_ref()?;
    time::OffsetDateTime::parse(&s.created, &time::format_description::well_known::Rfc3339).ok().map(|t| t.to_offset(time::UtcOffset::UTC))
}
