//! The verbs, one file each. Only these modules compose the layers below them
//! (inventory, plan, freeze, archive, restore, state); no layer imports a verb.

pub(crate) mod backup;
pub(crate) mod diff;
pub(crate) mod extract;
pub(crate) mod gc;
pub(crate) mod inspect;
pub(crate) mod inventory;
pub(crate) mod list;
pub(crate) mod ls;
pub(crate) mod plan;
pub(crate) mod preflight;
pub(crate) mod prune;
pub(crate) mod restore;
pub(crate) mod status;
pub(crate) mod verify;
