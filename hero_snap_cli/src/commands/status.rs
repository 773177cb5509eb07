//! `hero-snap status`: the last backup of each series, from the run records; the age
//! verdict is the library's.

use hero_snap_core::{MaxAge, RecordedRun, Result, StatusOptions, StatusReport};

use crate::cli::StatusArgs;
use crate::output::Output;

pub fn run(args: &StatusArgs, out: &Output) -> Result<()> {
    let max_age = args.max_age.as_deref().map(str::parse::<MaxAge>).transpose()?;
    // With --state-dir the records can be read even when the inventory cannot; it then only
    // narrows them to its instance.
    let inv = match &args.instance.state_dir {
        Some(_) => args.instance.load().ok(),
        None => Some(args.instance.load()?),
    };
    let dir = hero_snap_core::state_dir(args.instance.state_dir.as_deref(), inv.as_ref());
    let opts = StatusOptions { instance: inv.as_ref().map(|i| i.instance().to_string()), selection: args.selection(), max_age: max_age.map(|m| m.0) };
    let report = hero_snap_core::status(&dir, &opts)?;
    out.report(&report, print);
    report.check_age()
}

fn print(report: &StatusReport) {
    if report.series.is_empty() {
        println!("no backup recorded in {}", report.state_dir.display());
    }
    for s in &report.series {
        let stale = if s.stale == Some(true) { "  STALE" } else { "" };
        println!("{} ({}){stale}", s.instance, s.selection);
        print_run("last run ", &s.last);
        let age = s.last_good_age_text().unwrap_or_default();
        match &s.last_good {
            Some(g) if g == &s.last => println!("  last good  the last run, {age} ago"),
            Some(g) => {
                print_run("last good", g);
                println!("             {age} ago");
            }
            None => println!("  last good  none"),
        }
    }
}

fn print_run(label: &str, r: &RecordedRun) {
    let verdict = match &r.error {
        None => "ok".to_string(),
        Some(e) => format!("FAILED (exit {}): {}", r.exit_code, e.message),
    };
    // Seconds are enough to read; --json has the full time.
    let when = r.finished.get(..19).map(|t| t.replace('T', " ") + "Z").unwrap_or_else(|| r.finished.clone());
    println!("  {label}  {when}  {:.1} s  {verdict}", r.duration_seconds);
    if let (Some(archive), Some(files), Some(bytes)) = (r.archive_bytes, r.files, r.bytes) {
        let consistency = r.consistency.and_then(|c| serde_json::to_value(c).ok()).and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        println!("             {archive} bytes archive, {files} files, {bytes} bytes, consistency {consistency}, to {}", r.to);
    }
    let o = &r.outcomes;
    if o.ok + o.skipped + o.failed > 0 {
        println!("             {} ok, {} skipped, {} failed", o.ok, o.skipped, o.failed);
    }
}
