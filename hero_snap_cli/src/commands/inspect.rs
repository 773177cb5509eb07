//! `hero-snap inspect`: an archive's manifest, read from its head only.

use hero_snap_core::{Extent, Result};

use crate::cli::ReadArgs;
use crate::output::Output;

pub fn run(args: &ReadArgs, out: &Output) -> Result<()> {
    let keys = args.access.keys.decryption()?;
    let manifest = hero_snap_core::inspect(args.open(Extent::Head, &keys)?.0, &keys)?;
    let yaml = if out.json() { String::new() } else { manifest.to_yaml()? };
    out.report(&manifest, |_| print!("{yaml}"));
    Ok(())
}
