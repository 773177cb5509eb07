//! The library's integration tests, one binary: a module per area, each using only the
//! public API (their `use` lines stand together at the top of each module). The helpers
//! they share are the workspace's `test_support` crate.

mod archive_checks;
mod example;
mod fuzz_corpus;
mod hostile;
mod inventory_rules;
mod review_findings;
