//! The metrics file of `backup --metrics-file`: a backup series' run record in the
//! Prometheus text format, for node_exporter's textfile collector. Replaced atomically
//! after every run, so the collector never reads half a file. [`text`] and [`escape`] also
//! make `prune --metrics-file`'s.

use std::fmt::Write as _;
use std::path::Path;

use super::runs::{selection_label, RecordedRun, RunRecord};
use crate::error::Result;

/// One metric family (every one a gauge): name, help, and its samples as (labels, value),
/// the labels as written between the braces (`instance="a",selection="b"`).
pub(crate) struct Family<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub samples: Vec<(String, f64)>,
}

/// The families in the text format; a family without samples is left out.
pub(crate) fn text(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", f.name, f.help, f.name);
        for (labels, value) in &f.samples {
            let _ = writeln!(out, "{}{{{labels}}} {value}", f.name);
        }
    }
    out
}

/// The record as Prometheus text: every metric a gauge labelled with the instance and the
/// selection. The last success stays across failed runs (the record keeps it); it is 0
/// when no run of the series ever succeeded, so that an age alert fires.
pub(crate) fn render(rec: &RunRecord) -> String {
    let last = &rec.last;
    // Sizes are the newest archive's: the last run's when it wrote one (a run with a failed
    // outcome does), else the last good run's.
    let archived: Option<&RecordedRun> = Some(last).filter(|r| r.archive_bytes.is_some()).or(rec.last_good.as_ref());
    let labels = format!("instance=\"{}\",selection=\"{}\"", escape(&rec.instance), escape(&selection_label(&rec.selection)));
    let one = |v: Option<f64>| v.map(|v| vec![(labels.clone(), v)]).unwrap_or_default();
    let size = |f: fn(&RecordedRun) -> Option<u64>| one(archived.and_then(f).map(|v| v as f64));
    let families = [
        Family {
            name: "hero_snap_backup_last_success_timestamp_seconds",
            help: "When the last successful backup of the series ended, in Unix time (0: none ever succeeded).",
            samples: one(Some(rec.last_good.as_ref().and_then(RecordedRun::finished_unix).unwrap_or(0.0))),
        },
        Family {
            name: "hero_snap_backup_last_run_timestamp_seconds",
            help: "When the last backup run ended, in Unix time.",
            samples: one(last.finished_unix()),
        },
        Family {
            name: "hero_snap_backup_last_run_exit_code",
            help: "The exit code of the last backup run (docs/CLI.md; 0 is success).",
            samples: one(Some(last.exit_code as f64)),
        },
        Family {
            name: "hero_snap_backup_last_run_success",
            help: "1 when the last backup run succeeded, else 0.",
            samples: one(Some(f64::from(u8::from(last.ok)))),
        },
        Family { name: "hero_snap_backup_duration_seconds", help: "How long the last backup run took.", samples: one(Some(last.duration_seconds)) },
        Family {
            name: "hero_snap_backup_archive_bytes",
            help: "Size of the newest archive written (after compression and encryption).",
            samples: size(|r| r.archive_bytes),
        },
        Family { name: "hero_snap_backup_files", help: "Regular files in the newest archive written.", samples: size(|r| r.files) },
        Family { name: "hero_snap_backup_bytes", help: "Bytes of file data in the newest archive written.", samples: size(|r| r.bytes) },
        Family {
            name: "hero_snap_backup_freeze_window_seconds",
            help: "How long the services were frozen for the newest archive written (0: nothing was frozen).",
            samples: one(archived.map(|r| r.freeze_window_ms.unwrap_or(0) as f64 / 1000.0)),
        },
        Family {
            name: "hero_snap_backup_outcomes",
            help: "Surfaces of the last backup run by outcome status (ok, skipped, failed).",
            samples: [("ok", last.outcomes.ok), ("skipped", last.outcomes.skipped), ("failed", last.outcomes.failed)]
                .into_iter()
                .map(|(s, n)| (format!("{labels},status=\"{s}\""), n as f64))
                .collect(),
        },
    ];
    text(&families)
}

/// The label sets (as written between the braces) of `metric`'s samples in a metrics
/// file's text: the series a failed run marks failed when it has no results of its own.
pub(crate) fn previous_labels(old: &str, metric: &str) -> Vec<String> {
    let prefix = format!("{metric}{{");
    old.lines().filter_map(|l| l.strip_prefix(&prefix)).filter_map(|rest| rest.rsplit_once('}').map(|(labels, _)| labels.to_string())).collect()
}

/// A run's result once its record is written (`recorded`): a run that succeeded fails
/// with the recording's error, since the collector would otherwise show the previous
/// run; a failed run stays failed, and the recording's problem is logged. `verb` names
/// the run in messages (`backup`, `prune`, `verify`), `recording` what failed.
pub(crate) fn settle<T>(result: Result<T>, recorded: Result<()>, verb: &str, recording: &str) -> Result<T> {
    match (result, recorded) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(e)) => {
            Err(crate::error::Error::command_caused(format!("the {verb} succeeded, but {recording} failed: {e}; fix that and run the {verb} again"), e))
        }
        (Err(e), recorded) => {
            if let Err(problem) = recorded {
                tracing::warn!("recording the failed {verb}: {problem}");
            }
            Err(e)
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants them.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Replaces the metrics file at `path` with the record's metrics.
pub(crate) fn write(path: &Path, rec: &RunRecord) -> Result<()> {
    super::write_atomically(path, render(rec).as_bytes(), "writing the metrics file")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::format::SelectionRecord;
    use crate::state::runs::{OutcomeCounts, RunError};

    #[test]
    fn a_failed_run_keeps_the_last_success_and_the_newest_archive_sizes() {
        let good = RecordedRun {
            run_id: Some("r1".into()),
            started: "2026-01-01T00:00:00Z".into(),
            finished: "2026-01-01T00:00:10Z".into(),
            duration_seconds: 10.0,
            ok: true,
            exit_code: 0,
            error: None,
            to: "a.hsnap".into(),
            consistency: None,
            freeze_window_ms: Some(250),
            archive_bytes: Some(1000),
            files: Some(3),
            bytes: Some(2000),
            outcomes: OutcomeCounts { ok: 2, skipped: 1, failed: 0 },
        };
        let failed = RecordedRun {
            run_id: None,
            finished: "2026-01-02T00:00:01Z".into(),
            ok: false,
            exit_code: 7,
            error: Some(RunError { kind: "refused".into(), message: "no".into() }),
            freeze_window_ms: None,
            archive_bytes: None,
            files: None,
            bytes: None,
            outcomes: OutcomeCounts::default(),
            ..good.clone()
        };
        let selection = SelectionRecord { contexts: vec!["a\"b".into()], ..SelectionRecord::default() };
        let rec = RunRecord { format: 1, instance: "i".into(), selection, last: failed, last_good: Some(good) };
        let text = render(&rec);
        let l = r#"{instance="i",selection="contexts a\"b"}"#;
        for want in [
            format!("hero_snap_backup_last_success_timestamp_seconds{l} 1767225610"),
            format!("hero_snap_backup_last_run_timestamp_seconds{l} 1767312001"),
            format!("hero_snap_backup_last_run_exit_code{l} 7"),
            format!("hero_snap_backup_last_run_success{l} 0"),
            format!("hero_snap_backup_archive_bytes{l} 1000"),
            format!("hero_snap_backup_freeze_window_seconds{l} 0.25"),
            r#"hero_snap_backup_outcomes{instance="i",selection="contexts a\"b",status="failed"} 0"#.into(),
        ] {
            assert!(text.lines().any(|line| line == want), "no `{want}` in:\n{text}");
        }
    }
}
