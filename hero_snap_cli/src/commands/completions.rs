//! `hero-snap completions`: a shell completion script.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn run(shell: Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "hero-snap", &mut std::io::stdout());
}
