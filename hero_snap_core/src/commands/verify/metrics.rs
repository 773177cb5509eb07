//! `verify --metrics-file`: each series' last verification, in the Prometheus text format
//! beside the backup's and the prune's (`state/metrics.rs`), for node_exporter's textfile
//! collector. Replaced atomically after every verify.

use std::path::Path;

use super::VerifiedArchive;
use crate::error::Result;
use crate::state::metrics::{escape, previous_labels, settle, text, Family};

/// Writes the metrics of `verified` to `path` and returns them, as
/// [`crate::RunLog::finish`] does for a backup: per series (`instance`, `selection`), the
/// time and success of the last verification, the last success's time (kept from the file
/// it replaces when this one failed; 0 if none is known), and the files, bytes and chain
/// length checked. A verify that failed before it had results marks the series of the
/// file it replaces failed.
pub fn with_verify_metrics(path: &Path, verified: Result<Vec<VerifiedArchive>>) -> Result<Vec<VerifiedArchive>> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let body = match &verified {
        Ok(list) => render(list.iter().map(|v| (labels(v), Some(v))).collect(), &old, now),
        Err(_) => render(previous_labels(&old, "hero_snap_verify_last_run_success").into_iter().map(|l| (l, None)).collect(), &old, now),
    };
    settle(verified, crate::state::write_atomically(path, body.as_bytes(), "writing the metrics file"), "verify", "writing its metrics")
}

fn labels(v: &VerifiedArchive) -> String {
    format!("instance=\"{}\",selection=\"{}\"", escape(&v.instance), escape(&v.selection))
}

/// The last success of a series as the file being replaced has it.
fn previous_success(old: &str, labels: &str) -> f64 {
    let prefix = format!("hero_snap_verify_last_success_timestamp_seconds{{{labels}}} ");
    old.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

fn report<'a>(v: &Option<&'a VerifiedArchive>) -> Option<&'a super::VerifyReport> {
    v.and_then(|v| v.report.as_ref())
}

fn render(series: Vec<(String, Option<&VerifiedArchive>)>, old: &str, now: f64) -> String {
    let ok = |v: &Option<&VerifiedArchive>| v.is_some_and(|v| v.error.is_none());
    let each = |f: &dyn Fn(&String, &Option<&VerifiedArchive>) -> Option<f64>| -> Vec<(String, f64)> {
        series.iter().filter_map(|(l, v)| f(l, v).map(|x| (l.clone(), x))).collect()
    };
    let families = [
        Family {
            name: "hero_snap_verify_last_run_timestamp_seconds",
            help: "When the last verification of the series' newest archive ended, in Unix time.",
            samples: each(&|_, _| Some(now)),
        },
        Family {
            name: "hero_snap_verify_last_run_success",
            help: "1 when the newest archive and its chain verified, else 0.",
            samples: each(&|_, v| Some(f64::from(u8::from(ok(v))))),
        },
        Family {
            name: "hero_snap_verify_last_success_timestamp_seconds",
            help: "When the series' newest archive last verified, in Unix time (0: never, as far as this file knows).",
            samples: each(&|l, v| Some(if ok(v) { now } else { previous_success(old, l) })),
        },
        Family {
            name: "hero_snap_verify_files",
            help: "Regular files checked: the archive's own and those its index lists in ancestors.",
            samples: each(&|_, v| report(v).map(|r| (r.files + r.inherited_files) as f64)),
        },
        Family {
            name: "hero_snap_verify_bytes",
            help: "Bytes of file data checked in the archive itself.",
            samples: each(&|_, v| report(v).map(|r| r.bytes as f64)),
        },
        Family {
            name: "hero_snap_verify_ancestors",
            help: "Ancestors read to check an incremental (0 for a full archive).",
            samples: each(&|_, v| report(v).map(|r| r.ancestors.len() as f64)),
        },
    ];
    text(&families)
}
