//! The CLI's integration tests, one binary: a module per area. The helpers they share are
//! the workspace's `test_support` crate.
//!
//! The tests of one binary run on parallel threads (the files used to be binaries of their
//! own, run one after the other). Tests that share a machine-wide resource are kept apart
//! by `test_support::sys::exclusive()`; its comment lists them and says why.

mod agreement;
mod archive;
mod cli_layout;
mod consistency;
mod crash;
mod demo;
mod deployment;
mod diff;
mod diskfull;
mod exports;
mod golden;
mod incremental;
mod monitoring;
mod names;
mod notify;
mod nushell;
mod one_file;
mod operator;
mod outputs;
mod restore;
mod s3;
mod s3_lock;
mod secrets;
mod snapshots;

use test_support::cli::Cli;

/// The binary under test: only this package's tests know where cargo built it.
pub const HERO_SNAP: Cli = Cli::new(env!("CARGO_BIN_EXE_hero-snap"));
