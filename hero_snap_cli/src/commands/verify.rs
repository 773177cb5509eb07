//! `hero-snap verify`: every file of an archive against its index.

use hero_snap_core::{Cancel, Extent, Result};

use crate::cli::ReadArgs;
use crate::output::{Output, Stream};

pub fn run(args: &ReadArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let keys = args.keys.decryption()?;
    let progress = out.progress();
    let report = {
        let (input, mut ancestors) = args.open(Extent::Whole, &keys)?;
        hero_snap_core::verify_chain(input, &mut ancestors, &keys, &progress, cancel)?
    };
    progress.done();
    out.report(&report, |r| {
        println!("ok: {} files, {} entries, {} bytes match the index", r.files, r.entries, r.bytes);
        if !r.ancestors.is_empty() {
            println!("ok: {} files in the ancestors {} match the index", r.inherited_files, r.ancestors.join(", "));
        }
    });
    out.outcomes(&report.outcomes, Stream::Stdout);
    hero_snap_core::check_outcomes(&report.outcomes)
}
