//! One module per command: each turns its arguments into a library call and prints the
//! report.

pub mod backup;
pub mod completions;
pub mod diff;
pub mod extract;
pub mod gc;
pub mod inspect;
pub mod inventory;
pub mod list;
pub mod ls;
pub mod man;
pub mod plan;
pub mod preflight;
pub mod prune;
pub mod restore;
pub mod status;
pub mod verify;
