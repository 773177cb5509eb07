//! `hero-snap diff`: what changed between two archives, or since an archive on the live
//! instance, per surface.

use hero_snap_core::{Cancel, Change, DiffEntry, DiffReport, LsEntry, PathPatterns, Result};

use crate::cli::DiffArgs;
use crate::output::Output;

pub fn run(args: &DiffArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let keys = args.access.keys.decryption()?;
    let patterns = PathPatterns::new(&args.paths)?;
    let progress = out.progress();
    let report = {
        let mut archives = args.open()?.into_iter();
        let old = archives.next().expect("OLD is required");
        match archives.next() {
            Some(new) => hero_snap_core::diff(old, new, &keys, &patterns, &progress, cancel)?,
            None => hero_snap_core::diff_live(old, &keys, &args.instance.load()?, &patterns, &progress, cancel)?,
        }
    };
    progress.done();
    out.report(&report, print);
    Ok(())
}

fn print(r: &DiffReport) {
    println!("{} ({}) -> {} ({})", r.old.run_id, r.old.instance, r.new.run_id, r.new.instance);
    let mut surface = String::new();
    for e in &r.entries {
        let here = match &e.context {
            Some(c) => format!("{}/contexts/{c}/{}", e.service, e.surface),
            None => format!("{}/instance/{}", e.service, e.surface),
        };
        if here != surface {
            println!("{here}");
            surface = here;
        }
        let path = if e.path.is_empty() { "." } else { &e.path };
        let side = e.new.as_ref().or(e.old.as_ref()).expect("a side");
        let (mark, detail) = match e.change {
            Change::Added => ("+", String::new()),
            Change::Removed => ("-", String::new()),
            Change::Modified => ("M", details(e)),
            Change::Metadata => ("U", details(e)),
        };
        println!("  {mark} {:<8} {path}{detail}", side.kind);
    }
    println!("added {}, removed {}, modified {}, metadata changed {}", r.added, r.removed, r.modified, r.metadata);
}

/// `  (mode 0644 -> 0600, mtime ... -> ...)`: what changed, old value to new.
fn details(e: &DiffEntry) -> String {
    let (Some(o), Some(n)) = (&e.old, &e.new) else { return String::new() };
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let what: Vec<String> = e
        .changed
        .iter()
        .map(|&c| match c {
            "content" => format!("content {} -> {} bytes", o.size, n.size),
            "link" => format!("link {} -> {}", shown(&o.link), shown(&n.link)),
            "type" => format!("type {} -> {}", o.kind, n.kind),
            "mode" => format!("mode {} -> {}", shown(&o.mode), shown(&n.mode)),
            "owner" => format!("owner {} -> {}", shown(&o.owner), shown(&n.owner)),
            "mtime" => format!("mtime {} -> {}", shown(&o.mtime), shown(&n.mtime)),
            _ => format!("archived again ({} -> {}): mode, owner or mtime may have changed", held(o), held(n)),
        })
        .collect();
    format!("  ({})", what.join(", "))
}

fn held(e: &LsEntry) -> String {
    e.in_archive.clone().unwrap_or_default()
}
