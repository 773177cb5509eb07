//! `hero-snap prune`: retention over a directory or bucket folder, and the free-space
//! verdict (the library's).

use hero_snap_core::{MinFree, PruneOptions, PruneReport, Result, Retention, Within};

use crate::cli::PruneArgs;
use crate::output::Output;

pub fn run(args: &PruneArgs, out: &Output) -> Result<()> {
    let result = prune(args);
    let report = match &args.metrics_file {
        Some(path) => hero_snap_core::with_prune_metrics(path, result)?,
        None => result?,
    };
    out.report(&report, print);
    report.check_space()
}

fn prune(args: &PruneArgs) -> Result<PruneReport> {
    let keys = args.keys.decryption()?;
    let min_free = args.min_free.as_deref().map(str::parse::<MinFree>).transpose()?;
    let retention = Retention {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args.keep_within.as_deref().map(str::parse::<Within>).transpose()?,
    };
    let opts = PruneOptions { retention, dry_run: args.dry_run, min_free, state_dir: Some(args.instance.state()) };
    hero_snap_core::prune(&args.s3.folder(&args.dir)?, &keys, &opts)
}

fn print(report: &PruneReport) {
    let verb = if report.dry_run { "would delete" } else { "deleted" };
    for k in &report.kept {
        println!("keep    {}  {}  ({})", k.created, k.path, k.reasons.join(", "));
    }
    for d in &report.deleted {
        println!("{verb:<7} {d}");
    }
    for i in &report.ignored {
        println!("ignored {}: {}", i.path, i.problem.as_deref().unwrap_or("not an archive"));
    }
    println!("{verb} {} archives, {} bytes", report.deleted.len(), report.freed_bytes);
}
