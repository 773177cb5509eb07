//! `hero-snap plan`: how a backup would run. Changes nothing.

use hero_snap_core::{Plan, Result};

use crate::cli::PlanArgs;
use crate::output::Output;

pub fn run(args: &PlanArgs, out: &Output) -> Result<()> {
    let inv = args.instance.load()?;
    let plan = hero_snap_core::plan(&inv, &args.selection(), args.allow_live)?;
    out.report(&plan, print);
    Ok(())
}

fn print(plan: &Plan) {
    println!("consistency: {:?}", plan.consistency);
    for n in &plan.notes {
        println!("  {n}");
    }
    for v in &plan.volumes {
        println!("volume {} ({} on {}, {})", v.id, v.mount.fstype, v.mount.mount_point.display(), v.mount.source);
        for s in &v.surfaces {
            println!("  {s}");
        }
    }
    for n in &plan.nested_mounts {
        println!("warning: {n}");
    }
}
