//! `hero-snap gc`: finishes or undoes the work of runs that died.

use hero_snap_core::Result;

use crate::cli::InstanceArgs;
use crate::output::Output;

pub fn run(args: &InstanceArgs, out: &Output) -> Result<()> {
    // The inventory only names the state directory: gc must run even when it is broken.
    let inv = if args.state_dir.is_none() { args.load().ok() } else { None };
    let dir = hero_snap_core::state_dir(args.state_dir.as_deref(), inv.as_ref());
    let done = hero_snap_core::gc(&dir)?;
    out.report(&done, |done| {
        if done.is_empty() {
            println!("nothing to clean up in {}", dir.display());
        }
        for r in done {
            println!("run {}: {}", r.run_id, r.action);
        }
    });
    // An owed import that failed is the restore's failed outcome, found late: exit 9.
    let outcomes: Vec<_> = done.iter().flat_map(|r| r.outcomes.iter().cloned()).collect();
    hero_snap_core::check_outcomes(&outcomes)
}
