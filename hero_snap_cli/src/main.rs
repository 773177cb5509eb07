//! `hero-snap`: parses arguments, calls hero_snap_core, prints. No decision lives here:
//! [`cli`] holds the arguments, [`output`] the text, JSON lines and progress, and
//! [`commands`] one module per command.

mod cli;
mod commands;
mod output;

use std::io::IsTerminal;

use clap::Parser;
use hero_snap_core::{Cancel, Result};

use cli::{Cli, Cmd};
use output::Output;

fn main() {
    // First: this process may be a backup's freeze watchdog (the binary runs itself).
    hero_snap_core::run_watchdog_if_invoked();
    init_logging();
    let cli = Cli::parse();
    let out = Output::new(cli.json, cli.command.name(), cli.command.archive_on_stdout());
    let cancel = Cancel::new();
    if cli.command.cancellable() {
        cancel_on_signals(&cancel);
    }
    let result = dispatch(cli.command, &out, &cancel);
    std::process::exit(out.finish(result));
}

/// The library's `tracing` lines go to stderr (stdout stays the result's, and with
/// `--json` holds JSON lines only): `warn` and worse, or what `RUST_LOG` says.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
}

/// SIGINT and SIGTERM cancel the run through its token: the library stops at the next
/// file, undoes what it did, and the process exits 130. A second signal ends the process
/// at once (as SIGKILL would; `hero-snap gc` then cleans up).
fn cancel_on_signals(cancel: &Cancel) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // Registration order matters: the shutdown check sees the flag before this signal sets it.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, cancel.flag());
        let _ = signal_hook::flag::register(sig, cancel.flag());
    }
}

fn dispatch(command: Cmd, out: &Output, cancel: &Cancel) -> Result<()> {
    use commands::*;
    match command {
        Cmd::Inventory(args) => inventory::run(&args, out),
        Cmd::Plan(args) => plan::run(&args, out),
        Cmd::Backup(args) => backup::run(&args, out, cancel),
        Cmd::Inspect(args) => inspect::run(&args, out),
        Cmd::Verify(args) => verify::run(&args, out, cancel),
        Cmd::Ls(args) => ls::run(&args, out, cancel),
        Cmd::Diff(args) => diff::run(&args, out, cancel),
        Cmd::Extract(args) => extract::run(&args, out, cancel),
        Cmd::Preflight(args) => preflight::run(&args, out),
        Cmd::Restore(args) => restore::run(&args, out, cancel),
        Cmd::Gc(args) => gc::run(&args, out),
        Cmd::List(args) => list::run(&args, out),
        Cmd::Prune(args) => prune::run(&args, out),
        Cmd::Status(args) => status::run(&args, out),
        Cmd::Completions { shell } => {
            completions::run(shell);
            Ok(())
        }
        Cmd::Man { dir } => man::run(dir.as_deref()),
    }
}
