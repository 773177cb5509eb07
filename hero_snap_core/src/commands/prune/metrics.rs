//! `prune --metrics-file`: what a prune did to each series, in the Prometheus text format
//! beside the backup's metrics (`state/metrics.rs`), for node_exporter's textfile
//! collector. Replaced atomically after every prune.

use std::path::Path;

use super::{PruneReport, PrunedSeries};
use crate::error::{Error, Result};
use crate::state::metrics::{escape, previous_labels, settle, text, Family};

/// Writes the metrics of a prune's `result` to `path` and returns the result, as
/// [`crate::RunLog::finish`] does for a backup: a prune that succeeded fails with the
/// metrics file's error (the collector would otherwise show the previous prune), a
/// failed prune stays failed (the file's problem is logged).
///
/// Per series (`instance`, `selection` labels): the last prune's time and success (0 when
/// `--min-free` refused, [`PruneReport::check_space`]), and the archives kept, deleted and
/// bytes freed. A prune that failed before it had a report (the folder unreadable, a
/// deletion refused) marks the series of the file it replaces failed, with its time, and
/// leaves their counts out. A dry run's report is refused (exit 2): it deleted nothing.
pub fn with_prune_metrics(path: &Path, result: Result<PruneReport>) -> Result<PruneReport> {
    if result.as_ref().is_ok_and(|r| r.dry_run) {
        return Err(Error::Usage(format!("{}: a dry run deletes nothing, so its metrics would be wrong; drop --dry-run or --metrics-file", path.display())));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let body = match &result {
        Ok(report) => {
            let series: Vec<(String, Option<&PrunedSeries>)> = report.series.iter().map(|s| (labels(s), Some(s))).collect();
            render(&series, now, report.check_space().is_ok())
        }
        Err(_) => {
            let old = std::fs::read_to_string(path).unwrap_or_default();
            render(&previous_labels(&old, "hero_snap_prune_last_run_success").into_iter().map(|l| (l, None)).collect::<Vec<_>>(), now, false)
        }
    };
    settle(result, crate::state::write_atomically(path, body.as_bytes(), "writing the metrics file"), "prune", "writing its metrics")
}

fn labels(s: &PrunedSeries) -> String {
    format!("instance=\"{}\",selection=\"{}\"", escape(&s.instance), escape(&s.selection))
}

/// Every series gets the time and the verdict; those with counts (`Some`) their counts.
fn render(series: &[(String, Option<&PrunedSeries>)], now: f64, ok: bool) -> String {
    let all = |v: f64| series.iter().map(|(l, _)| (l.clone(), v)).collect();
    let count = |f: fn(&PrunedSeries) -> u64| series.iter().filter_map(|(l, s)| s.map(|s| (l.clone(), f(s) as f64))).collect();
    text(&[
        Family {
            name: "hero_snap_prune_last_run_timestamp_seconds",
            help: "When the last prune of the series' folder ended, in Unix time.",
            samples: all(now),
        },
        Family {
            name: "hero_snap_prune_last_run_success",
            help: "1 when the last prune succeeded, else 0 (it failed, or --min-free found too little space).",
            samples: all(f64::from(u8::from(ok))),
        },
        Family { name: "hero_snap_prune_kept_archives", help: "Archives of the series the last prune kept.", samples: count(|s| s.kept) },
        Family { name: "hero_snap_prune_deleted_archives", help: "Archives of the series the last prune deleted.", samples: count(|s| s.deleted) },
        Family {
            name: "hero_snap_prune_freed_bytes",
            help: "Bytes the last prune freed by deleting archives of the series.",
            samples: count(|s| s.freed_bytes),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ok: bool) -> PruneReport {
        let series =
            |selection: &str, kept, deleted, freed_bytes| PrunedSeries { instance: "i".into(), selection: selection.into(), kept, deleted, freed_bytes };
        let space = crate::SpaceCheck { path: "/b".into(), available: 10, required: if ok { 5 } else { 50 }, ok };
        PruneReport {
            dry_run: false,
            kept: Vec::new(),
            deleted: Vec::new(),
            freed_bytes: 0,
            ignored: Vec::new(),
            space: Some(space),
            series: vec![series("whole instance", 3, 2, 2000), series("contexts \"g\"", 1, 0, 0)],
        }
    }

    #[test]
    fn each_series_has_its_counts_and_a_failure_keeps_the_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prune.prom");
        with_prune_metrics(&path, Ok(report(true))).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for want in [
            r#"hero_snap_prune_kept_archives{instance="i",selection="whole instance"} 3"#,
            r#"hero_snap_prune_deleted_archives{instance="i",selection="whole instance"} 2"#,
            r#"hero_snap_prune_freed_bytes{instance="i",selection="whole instance"} 2000"#,
            r#"hero_snap_prune_last_run_success{instance="i",selection="contexts \"g\""} 1"#,
        ] {
            assert!(text.lines().any(|l| l == want), "no `{want}` in:\n{text}");
        }
        // --min-free refused: the counts stand, the verdict is 0.
        let refused = with_prune_metrics(&path, Ok(report(false))).unwrap();
        assert!(refused.check_space().is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#"hero_snap_prune_last_run_success{instance="i",selection="whole instance"} 0"#), "{text}");
        assert!(text.contains("hero_snap_prune_kept_archives"), "{text}");
        // No report: the same series, failed, without counts; the error is the prune's.
        let e = with_prune_metrics(&path, Err(Error::Usage("no rule".into()))).unwrap_err();
        assert_eq!(e.to_string(), "no rule");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#"hero_snap_prune_last_run_success{instance="i",selection="contexts \"g\""} 0"#), "{text}");
        assert!(!text.contains("hero_snap_prune_kept_archives"), "{text}");
        let dry = PruneReport { dry_run: true, ..report(true) };
        assert!(matches!(with_prune_metrics(&path, Ok(dry)), Err(Error::Usage(_))));
    }

    #[test]
    fn an_unwritable_file_fails_a_good_prune_and_names_the_file() {
        let path = Path::new("/nonexistent-hero-snap-dir/prune.prom");
        let e = with_prune_metrics(path, Ok(report(true))).unwrap_err().to_string();
        assert!(e.contains("the prune succeeded, but writing its metrics failed") && e.contains("/nonexistent-hero-snap-dir"), "{e}");
    }
}
