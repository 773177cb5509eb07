//! `status`: the last backup of each series (instance and selection) from the run records
//! in the state directory, and whether the last good one is recent enough (`--max-age`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::archive::format::SelectionRecord;
use crate::error::{Error, Result};
use crate::plan::Selection;
use crate::state::runs::{self, selection_label, RecordedRun};

/// The longest a series may go without a good backup: days, hours, minutes, seconds, e.g.
/// `26h`, `1d12h`, `90m`.
///
/// ```
/// use hero_snap_core::MaxAge;
/// use std::time::Duration;
/// assert_eq!("26h".parse::<MaxAge>().unwrap().0, Duration::from_secs(26 * 3600));
/// assert_eq!("1d30m".parse::<MaxAge>().unwrap().0, Duration::from_secs(86400 + 1800));
/// assert!("26".parse::<MaxAge>().is_err());
/// assert!("2w".parse::<MaxAge>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge(pub Duration);

impl std::str::FromStr for MaxAge {
    type Err = Error;

    fn from_str(s: &str) -> Result<MaxAge> {
        let bad = || Error::Usage(format!("--max-age `{s}`: not a duration; use numbers with d, h, m, s (26h, 1d12h, 90m)"));
        let (mut total, mut num) = (0u64, String::new());
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let unit = match c {
                'd' => 86400,
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(bad()),
            };
            let n: u64 = num.parse().map_err(|_| bad())?;
            total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
            num.clear();
        }
        if !num.is_empty() || total == 0 {
            return Err(bad());
        }
        Ok(MaxAge(Duration::from_secs(total)))
    }
}

/// Options of [`status`].
#[derive(Debug, Clone, Default)]
pub struct StatusOptions {
    /// Only this instance's series (the inventory's instance).
    pub instance: Option<String>,
    /// Only the series of exactly this selection; `None` for every series.
    pub selection: Option<Selection>,
    /// Judge each series: its last good backup must have ended within this span.
    pub max_age: Option<Duration>,
}

/// One backup series as [`status`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesStatus {
    /// The instance.
    pub instance: String,
    /// `whole instance`, or the services and contexts of the selection.
    pub selection: String,
    /// The selection, as the manifest records it.
    pub selection_record: SelectionRecord,
    /// The last run, whatever its result.
    pub last: RecordedRun,
    /// The last run that succeeded, if any.
    pub last_good: Option<RecordedRun>,
    /// Seconds since the last good run ended.
    pub last_good_age_seconds: Option<u64>,
    /// With a maximum age: whether the last good run is older than it, or missing.
    pub stale: Option<bool>,
}

/// What [`status`] found.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The state directory read.
    pub state_dir: PathBuf,
    /// The maximum age asked for, in seconds.
    pub max_age_seconds: Option<u64>,
    /// One entry per series, by instance and selection.
    pub series: Vec<SeriesStatus>,
}

impl StatusReport {
    /// The age verdict: [`Error::Stale`] (exit 18) when a maximum age was given and some
    /// series' last good backup is older than it or missing, or no series was recorded at
    /// all; `Ok` otherwise, and always without a maximum age.
    pub fn check_age(&self) -> Result<()> {
        let Some(max) = self.max_age_seconds else { return Ok(()) };
        if self.series.is_empty() {
            return Err(Error::Stale(format!(
                "no backup recorded in {}; run hero-snap backup (or pass the --state-dir the backups use)",
                runs::dir(&self.state_dir).display()
            )));
        }
        let stale: Vec<String> = self.series.iter().filter(|s| s.stale == Some(true)).map(|s| stale_reason(s, max)).collect();
        if stale.is_empty() {
            return Ok(());
        }
        Err(Error::Stale(format!("{}; see hero-snap status, fix the cause and back up again", stale.join("; "))))
    }
}

impl SeriesStatus {
    /// The last good run's age for people: `1d 2h`, `3h 5m`, `42s`.
    pub fn last_good_age_text(&self) -> Option<String> {
        self.last_good_age_seconds.map(human_age)
    }
}

fn stale_reason(s: &SeriesStatus, max: u64) -> String {
    let failed = match &s.last.error {
        Some(e) if !s.last.ok => format!(", last run failed (exit {}): {}", s.last.exit_code, e.message),
        _ => String::new(),
    };
    match s.last_good_age_seconds {
        Some(age) => format!("{} ({}): last good backup {} ago, more than {}{failed}", s.instance, s.selection, human_age(age), human_age(max)),
        None => format!("{} ({}): no backup ever succeeded{failed}", s.instance, s.selection),
    }
}

/// `1d 2h`, `3h 5m`, `4m 10s`, `42s`.
pub(crate) fn human_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The last run and the last good run of each backup series recorded in `state_dir`
/// (every `backup` writes its series' record, failed or not), with the age of the last
/// good one, judged against `opts.max_age`. Call [`StatusReport::check_age`] for the verdict.
pub fn status(state_dir: &Path, opts: &StatusOptions) -> Result<StatusReport> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9;
    let wanted = opts.selection.as_ref().map(Selection::record).map(|mut s| {
        s.services.sort();
        s.contexts.sort();
        s
    });
    let mut series = Vec::new();
    for rec in runs::all(state_dir)? {
        if opts.instance.as_ref().is_some_and(|i| *i != rec.instance) {
            continue;
        }
        let mut sorted = rec.selection.clone();
        sorted.services.sort();
        sorted.contexts.sort();
        if wanted.as_ref().is_some_and(|w| *w != sorted) {
            continue;
        }
        let age = rec.last_good.as_ref().and_then(RecordedRun::finished_unix).map(|t| (now - t).max(0.0) as u64);
        let stale = opts.max_age.map(|max| age.is_none_or(|a| a > max.as_secs()));
        series.push(SeriesStatus {
            instance: rec.instance,
            selection: selection_label(&rec.selection),
            selection_record: rec.selection,
            last: rec.last,
            last_good: rec.last_good,
            last_good_age_seconds: age,
            stale,
        });
    }
    Ok(StatusReport { state_dir: state_dir.to_path_buf(), max_age_seconds: opts.max_age.map(|d| d.as_secs()), series })
}
