//! `hero-snap extract`: chosen files of an archive into a new directory outside the instance.

use hero_snap_core::{Cancel, Extent, ExtractOptions, ExtractReport, PathPatterns, Result};

use crate::cli::ExtractArgs;
use crate::output::Output;

pub fn run(args: &ExtractArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let keys = args.archive.access.keys.decryption()?;
    let opts = ExtractOptions { patterns: PathPatterns::new(&args.paths)?, to: args.to.clone(), state_dir: Some(args.instance.state()) };
    // The host's instance, to keep --to out of its surfaces. A host without an inventory
    // (a laptop fetching one file) has none: the archive's own surface paths still count.
    let live = if args.instance.config.exists() {
        Some(args.instance.load()?)
    } else {
        eprintln!("hero-snap: note: no inventory at {}; --to is kept out of the surfaces the archive records only", args.instance.config.display());
        None
    };
    let progress = out.progress();
    let report = {
        let (input, mut ancestors) = args.archive.open(Extent::Whole, &keys)?;
        hero_snap_core::extract(input, &mut ancestors, &keys, live.as_ref(), &opts, &progress, cancel)?
    };
    progress.done();
    out.report(&report, print);
    Ok(())
}

fn print(r: &ExtractReport) {
    for e in &r.entries {
        println!("{}", r.to.join(e).display());
    }
    let from = if r.ancestors.is_empty() { String::new() } else { format!(" (with files from {})", r.ancestors.join(", ")) };
    println!("extracted {} files, {} bytes, {} entries into {}{from}; each file matches the index", r.files, r.bytes, r.entries.len(), r.to.display());
}
