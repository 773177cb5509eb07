//! `hero-snap verify`: every file of an archive against its index; or the newest archive
//! of each series in a folder (`--newest-in`), each with its chain.

use hero_snap_core::{Cancel, Extent, Result, VerifiedArchive, VerifyReport};

use crate::cli::VerifyArgs;
use crate::output::{Output, Stream};

pub fn run(args: &VerifyArgs, out: &Output, cancel: &Cancel) -> Result<()> {
    let keys = args.archive.access.keys.decryption()?;
    let progress = out.progress();
    if let Some(dir) = &args.newest_in {
        let result = hero_snap_core::verify_newest(&args.archive.access.s3.folder(dir)?, &keys, &progress, cancel);
        let verified = match &args.metrics_file {
            Some(path) => hero_snap_core::with_verify_metrics(path, result)?,
            None => result?,
        };
        progress.done();
        out.report(&verified, |list| list.iter().for_each(print_newest));
        return hero_snap_core::check_verified(&verified);
    }
    let result = args
        .archive
        .open(Extent::Whole, &keys)
        .and_then(|(input, mut ancestors)| hero_snap_core::verify_chain(input, &mut ancestors, &keys, &progress, cancel));
    let report = match &args.metrics_file {
        Some(path) => {
            let from = args.archive.from.join(" ");
            let one = hero_snap_core::with_verify_metrics(path, result.map(|r| vec![VerifiedArchive::of(from, r)]))?;
            one.into_iter().next().and_then(|v| v.report).expect("one verified archive")
        }
        None => result?,
    };
    progress.done();
    out.report(&report, print);
    out.outcomes(&report.outcomes, Stream::Stdout);
    hero_snap_core::check_outcomes(&report.outcomes)
}

fn print(r: &VerifyReport) {
    println!("ok: {} files, {} entries, {} bytes match the index", r.files, r.entries, r.bytes);
    if !r.ancestors.is_empty() {
        println!("ok: {} files in the ancestors {} match the index", r.inherited_files, r.ancestors.join(", "));
    }
}

fn print_newest(v: &VerifiedArchive) {
    match (&v.report, &v.error) {
        (Some(r), _) => println!(
            "ok      {} ({}, {}): {} files, {} bytes, {} ancestors",
            v.path,
            v.instance,
            v.selection,
            r.files + r.inherited_files,
            r.bytes,
            r.ancestors.len()
        ),
        (None, Some(e)) => println!("FAILED  {} ({}, {}): {e}", v.path, v.instance, v.selection),
        (None, None) => {}
    }
}
