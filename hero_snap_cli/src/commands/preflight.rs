//! `hero-snap preflight`: whether an archive can be restored into the target; the plan,
//! or every refusal (the error's exit code is the library's).

use hero_snap_core::{Extent, RestorePlan, Result};

use crate::cli::RestoreArgs;
use crate::output::Output;

pub fn run(args: &RestoreArgs, out: &Output) -> Result<()> {
    let keys = args.archive.access.keys.decryption()?;
    let inv = args.instance.load()?;
    let (input, mut ancestors) = args.archive.open(Extent::Head, &keys)?;
    let manifest = hero_snap_core::inspect(input, &keys)?;
    // An incremental's ancestors must all be there: found by their heads, not read.
    ancestors.locate(&manifest, &keys)?;
    let plan = hero_snap_core::preflight(&manifest, &inv, &args.options().selection)?;
    out.report(&plan, print_plan);
    Ok(())
}

/// The restore plan, as `preflight` and `restore` print it.
pub fn print_plan(plan: &RestorePlan) {
    println!("restore plan for instance {}:", plan.instance);
    for s in &plan.surfaces {
        let ctx = match (&s.context, &s.target_context) {
            (Some(a), Some(b)) if a != b => format!(" [{a} -> {b}]"),
            (Some(a), _) => format!(" [{a}]"),
            _ => String::new(),
        };
        let replaces = if s.exists { " (replaces existing data)" } else { "" };
        println!("  {}.{}{} -> {}{}", s.service, s.surface, ctx, s.path.display(), replaces);
    }
    for m in &plan.migrations {
        println!("  migrate {} schema {} -> {}: {}", m.service, m.from, m.to, m.argv.join(" "));
    }
    for i in &plan.imports {
        let ctx = if i.context == i.target_context { i.context.clone() } else { format!("{} -> {}", i.context, i.target_context) };
        println!("  import {}.{} [{ctx}] after the start hooks: {}", i.service, i.export, i.argv.join(" "));
    }
    for r in &plan.rebuild_pending {
        println!("  rebuild pending after restore: {r}");
    }
    for n in &plan.not_in_archive {
        println!("  NOT IN THE ARCHIVE: {}.{}: {}", n.service, n.surface, n.reason);
    }
}
