//! The inventory: what state an instance keeps, where, and how to treat it.
//!
//! An inventory is a YAML file (`format: 1`, documented in docs/INVENTORY.md): the model
//! ([`model`]), reading and validating the file ([`parse`]), and finding contexts on disk
//! ([`discover`]).

mod discover;
mod model;
mod parse;

pub use model::*;
pub(crate) use parse::valid_name;
