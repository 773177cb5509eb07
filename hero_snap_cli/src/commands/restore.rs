//! `hero-snap restore`: an archive into the target instance, all or nothing.

use hero_snap_core::{Cancel, Extent, RestoreReport, Result};

use super::preflight::print_plan;
use crate::cli::RestoreArgs;
use crate::output::{Output, Stream};

pub fn run(args: &RestoreArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let keys = args.archive.access.keys.decryption()?;
    let inv = args.instance.load()?;
    let progress = out.progress();
    let (input, mut ancestors) = args.archive.open(Extent::Whole, &keys)?;
    let report = hero_snap_core::restore_chain(input, &mut ancestors, &keys, &inv, &args.options(), &progress, cancel)?;
    progress.done();
    out.report(&report, print);
    out.outcomes(&report.outcomes, Stream::Stdout);
    hero_snap_core::check_outcomes(&report.outcomes)
}

fn print(report: &RestoreReport) {
    print_plan(&report.plan);
    println!("restored {} files, {} bytes", report.files, report.bytes);
    for p in &report.kept_old {
        println!("kept old data: {}", p.display());
    }
    for s in &report.rebuild_pending {
        println!("rebuild pending: {s}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
}
