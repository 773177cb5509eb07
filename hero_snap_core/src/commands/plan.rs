//! `plan`: how a backup would run (volumes, snapshot backends, consistency), changing
//! nothing.

use crate::error::Result;
use crate::inventory::Inventory;
use crate::plan::{self, Plan, Selection};

/// The plan a backup of `selection` would follow: volumes, backends, consistency.
pub fn plan(inv: &Inventory, selection: &Selection, allow_live: bool) -> Result<Plan> {
    let mut jobs = plan::select(inv, selection)?.jobs;
    Ok(plan::place(inv, &mut jobs, allow_live)?.plan)
}
