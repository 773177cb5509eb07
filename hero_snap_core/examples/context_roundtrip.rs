//! Backs up one context of an instance and restores it under a new name, through the
//! library, the way hero_launcher embeds hero_snap_core: a progress callback, a
//! cancellation token, typed outcomes, exit codes from the error.
//!
//! usage: context_roundtrip [--allow-live] [--cancel-after-bytes N] INVENTORY ROOT CONTEXT NEW_CONTEXT ARCHIVE
//!
//! ROOT places the inventory's paths under a directory (as `hero-snap --root`). The
//! archive is encrypted to a key generated for this run. `--cancel-after-bytes N`
//! cancels the backup from the progress callback once N bytes are archived, to show
//! that a cancelled run leaves no archive behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hero_snap_core::Inventory;
use hero_snap_core::{
    backup_to_file, restore, BackupOptions, Cancel, Decryption, Encryption, Error, Event, RestoreOptions, RestoreSelection, Selection, Status,
};

struct Args {
    allow_live: bool,
    cancel_after: Option<u64>,
    inventory: PathBuf,
    root: PathBuf,
    context: String,
    new_context: String,
    archive: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut allow_live = false;
    let mut cancel_after = None;
    let mut rest = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--allow-live" => allow_live = true,
            "--cancel-after-bytes" => cancel_after = Some(it.next().and_then(|n| n.parse().ok()).ok_or("--cancel-after-bytes N")?),
            _ => rest.push(a),
        }
    }
    let [inventory, root, context, new_context, archive]: [String; 5] =
        rest.try_into().map_err(|_| "usage: context_roundtrip [--allow-live] [--cancel-after-bytes N] INVENTORY ROOT CONTEXT NEW_CONTEXT ARCHIVE")?;
    Ok(Args { allow_live, cancel_after, inventory: inventory.into(), root: root.into(), context, new_context, archive: archive.into() })
}

fn main() {
    // A backup of frozen services re-executes this program as its freeze watchdog.
    hero_snap_core::run_watchdog_if_invoked();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("context_roundtrip: {e}");
        std::process::exit(e.exit_code());
    }
}

fn run(args: &Args) -> hero_snap_core::Result<()> {
    let inv = Inventory::load(&args.inventory)?.rerooted(&args.root);

    // A key for this run; a launcher would use the operator's recipients instead.
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut opts = BackupOptions::new(Encryption::Recipients(Encryption::parse_recipients(&[recipient])?));
    opts.selection = Selection { contexts: vec![args.context.clone()], ..Selection::default() };
    opts.allow_live = args.allow_live;

    // The token the launcher keeps: its "Stop" button (or a signal handler) calls
    // `cancel()` on a clone. Here the progress callback does it after N bytes, on request.
    let cancel = Cancel::new();
    let done = AtomicU64::new(0);
    let progress = |e: &Event| match e {
        Event::Phase { phase } => eprintln!("phase: {phase}"),
        Event::Bytes { bytes } => {
            let total = done.fetch_add(*bytes, Ordering::Relaxed) + bytes;
            if args.cancel_after.is_some_and(|n| total >= n) {
                cancel.cancel();
            }
        }
        Event::Warning { warning } => eprintln!("warning [{}]: {}", warning.code, warning.message),
        _ => {}
    };

    let report = backup_to_file(&inv, &opts, &args.archive, &progress, &cancel)?;
    println!(
        "backed up context {} of {}: {} files, {} bytes -> {} ({} bytes)",
        args.context,
        inv.instance(),
        report.manifest.files,
        report.manifest.bytes,
        args.archive.display(),
        report.archive_bytes
    );

    use age::secrecy::ExposeSecret;
    let mut keys = Decryption::default();
    keys.add_identity_str(identity.to_string().expose_secret())?;
    let ropts = RestoreOptions {
        selection: RestoreSelection { contexts: vec![args.context.clone()], rename_to: Some(args.new_context.clone()), ..RestoreSelection::default() },
        ..RestoreOptions::default()
    };
    let file = std::fs::File::open(&args.archive).map_err(|e| Error::Io { path: args.archive.clone(), action: "opening the archive", source: e })?;
    let report = restore(std::io::BufReader::new(file), &keys, &inv, &ropts, &progress, &cancel)?;
    println!("restored {} files, {} bytes as context {}", report.files, report.bytes, args.new_context);
    for o in &report.outcomes {
        println!("  {:<8} {}{}", o.status.as_str(), o.label(), o.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default());
    }
    if report.outcomes.iter().any(|o| o.status == Status::Failed) {
        return Err(Error::Incomplete("some surfaces did not come back; see above".into()));
    }
    Ok(())
}
