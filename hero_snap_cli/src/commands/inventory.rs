//! `hero-snap inventory`: the state-surface table.

use hero_snap_core::{Result, SurfaceRow};
use serde_json::json;

use crate::cli::InstanceArgs;
use crate::output::{list_or_dash, Output};

pub fn run(args: &InstanceArgs, out: &Output) -> Result<()> {
    let inv = args.load()?;
    let rows = hero_snap_core::surface_table(&inv)?;
    out.report(&json!({"instance": inv.instance(), "surfaces": rows}), |_| {
        println!("instance {}  ({})", inv.instance(), args.config.display());
        print_rows(&rows);
    });
    Ok(())
}

fn print_rows(rows: &[SurfaceRow]) {
    println!("{:<14} {:<12} {:<9} {:<9} {:>8} {:>12}  {:<24} path", "service", "surface", "scope", "class", "files", "bytes", "contexts");
    for r in rows {
        let (files, bytes) = if r.present { (r.files.to_string(), r.bytes.to_string()) } else { ("absent".into(), "-".into()) };
        let ctx = list_or_dash(&r.contexts);
        println!("{:<14} {:<12} {:<9} {:<9} {:>8} {:>12}  {:<24} {}", r.service, r.surface, r.scope.as_str(), r.class.as_str(), files, bytes, ctx, r.path);
    }
}
