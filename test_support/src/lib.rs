//! Helpers shared by the integration tests of `hero_snap_core` and `hero_snap_cli`:
//!
//! - [`tree`]: the description of a directory tree that a restore must reproduce, and its diffing;
//! - [`data`]: deterministic data and test keys;
//! - [`fixtures`]: the inventories under `fixtures/inventories/`, with placeholders filled in;
//! - [`cli`]: running the `hero-snap` binary, its JSON result, test instances;
//! - [`sys`]: the machine: tools, leftovers, mounts, cgroups, ports, children, the exclusive guard;
//! - [`loopfs`]: loop-device btrfs, XFS and ext4 filesystems;
//! - [`rgw`]: a real single-node Ceph RADOS Gateway.
//!
//! `prelude` brings in what most tests use.

pub mod cli;
pub mod data;
pub mod fixtures;
pub mod loopfs;
pub mod rgw;
pub mod sys;
pub mod tree;

pub mod prelude {
    pub use crate::cli::{last_json, stderr, Cli, Instance, INVENTORY};
    pub use crate::data::{age_key, pseudo_random};
    pub use crate::sys::leftovers;
    pub use crate::tree::{assert_same_tree, tree, tree_hash, Node};
}
