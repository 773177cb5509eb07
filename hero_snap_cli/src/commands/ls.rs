//! `hero-snap ls`: an archive's entries, all or those the patterns pick.

use hero_snap_core::{Cancel, Extent, LsReport, PathPatterns, Result};

use crate::cli::LsArgs;
use crate::output::Output;

pub fn run(args: &LsArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let keys = args.archive.access.keys.decryption()?;
    let patterns = PathPatterns::new(&args.patterns)?;
    let progress = out.progress();
    let report = {
        // Only the newest archive given is read: its index names what ancestors hold.
        let (input, _) = args.archive.open(Extent::Whole, &keys)?;
        hero_snap_core::ls(input, &keys, &patterns, &progress, cancel)?
    };
    progress.done();
    out.report(&report, print);
    if report.entries.is_empty() && !patterns.is_empty() {
        eprintln!("hero-snap: no entry matches {}", patterns.texts().join(", "));
    }
    Ok(())
}

fn print(r: &LsReport) {
    let chain = r.level > 0;
    for e in &r.entries {
        let path = if e.path.is_empty() { "." } else { &e.path };
        let link = e.link.as_ref().map(|l| format!(" -> {l}")).unwrap_or_default();
        let held = match (&e.in_archive, chain) {
            (Some(run), true) if *run != r.run_id => format!("  (in {run})"),
            _ => String::new(),
        };
        println!(
            "{:<8} {:>5} {:>12} {:<20} {:<14} {:<12} {:<10} {path}{link}{held}",
            e.kind,
            e.mode.as_deref().unwrap_or("-"),
            e.size,
            e.mtime.as_deref().unwrap_or("-"),
            e.service,
            e.context.as_deref().unwrap_or("-"),
            e.surface,
        );
    }
}
