//! `hero-snap backup`: the instance, or a selection, into one archive. Its text goes to
//! stderr: stdout may carry the archive.

use hero_snap_core::{BackupReport, Cancel, Location, Result};

use crate::cli::BackupArgs;
use crate::output::{list_or_dash, Output, Stream};

pub fn run(args: &BackupArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let inv = args.scope.instance.load()?;
    let opts = args.options()?;
    let to = args.s3.location(&args.to)?;
    let progress = out.progress();
    let report = hero_snap_core::backup_to(&inv, &opts, &to, &progress, cancel)?;
    progress.done();
    out.report(&report, |r| print(r, &to));
    out.outcomes(&report.outcomes, Stream::Stderr);
    hero_snap_core::check_outcomes(&report.outcomes)
}

fn print(report: &BackupReport, to: &Location) {
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
