//! `hero-snap backup`: the instance, or a selection, into one archive. Its text goes to
//! stderr: stdout may carry the archive.

use hero_snap_core::{BackupReport, Cancel, Result, RunLog};

use crate::cli::BackupArgs;
use crate::output::{list_or_dash, Output, Stream};

pub fn run(args: &BackupArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let inv = args.scope.instance.load()?;
    // Recorded from here on, whatever fails (the keys, the target, the run itself).
    let log = RunLog::start(&inv, &args.scope.selection(), args.scope.instance.state_dir.as_deref(), &args.to).metrics_file(args.metrics_file.clone());
    let progress = out.progress();
    let result = args.options().and_then(|opts| hero_snap_core::backup_to(&inv, &opts, &args.target()?, &progress, cancel));
    let report = log.finish(result)?;
    progress.done();
    out.report(&report, |r| print(r, &args.to));
    out.outcomes(&report.outcomes, Stream::Stderr);
    hero_snap_core::check_outcomes(&report.outcomes)
}

fn print(report: &BackupReport, to: &str) {
    let m = &report.manifest;
    eprintln!(
        "archived {} services, {} files, {} bytes into {} ({} bytes), consistency {:?}",
        m.services.len(),
        m.files,
        m.bytes,
        to,
        report.archive_bytes,
        m.consistency
    );
    for s in &m.services {
        eprintln!("  {:<14} {:>7} files {:>12} bytes  contexts: {}", s.name, s.files, s.bytes, list_or_dash(&s.contexts));
        for l in &s.left_out {
            eprintln!("      left out {}: {}", l.surface, l.reason);
        }
    }
    for w in &m.warnings {
        eprintln!("warning [{}]: {}", w.code, w.message);
    }
}
