//! `hero-snap man`: the man page on stdout, or one page per command into a directory.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use hero_snap_core::{Error, Result};

use crate::cli::Cli;

pub fn run(dir: Option<&Path>) -> Result<()> {
    let res = match dir {
        Some(d) => clap_mangen::generate_to(Cli::command(), d).map(|_| ()),
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
    };
    let path = dir.map_or_else(|| PathBuf::from("-"), Path::to_path_buf);
    res.map_err(|e| Error::Io { path, action: "writing the man page", source: e })
}
