//! `hero-snap`: parses arguments, calls hero_snap_core, prints. No logic lives here.

use std::io::{self, IsTerminal};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hero_snap_core::inventory::Inventory;
use hero_snap_core::{
    BackupOptions, Cancel, Compression, Decryption, Encryption, Error, Event, Extent, Location, Progress, RestoreOptions, RestoreSelection,
    S3Config, Selection,
};
use serde::Serialize;

/// Atomic, cross-service-consistent snapshots of a Hero instance into one encrypted
/// archive, and transactional restore (whole, per service, per context).
#[derive(Parser)]
#[command(name = "hero-snap", version, about, max_term_width = 100)]
struct Cli {
    /// Print one JSON object with the result instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the state-surface table: services, surfaces, paths, scope, class, contexts, sizes.
    Inventory(InstanceArgs),
    /// Show how a backup would run: volumes, snapshot backends, consistency. Changes nothing.
    Plan(PlanArgs),
    /// Archive the instance (or a selection) into one encrypted file.
    Backup(BackupArgs),
    /// Print an archive's manifest (reads only the head of the archive).
    Inspect(ReadArgs),
    /// Check every file of an archive against its index.
    Verify(ReadArgs),
    /// Check whether an archive can be restored into the target, and print the plan.
    Preflight(RestoreArgs),
    /// Restore an archive into the target instance, all or nothing.
    Restore(RestoreArgs),
    /// Finish or undo the work of runs that died (restore journals, staging directories).
    Gc(InstanceArgs),
}

#[derive(Args)]
struct InstanceArgs {
    /// Inventory file of the instance.
    #[arg(long, short = 'c', env = "HERO_SNAP_CONFIG", default_value = "/etc/hero-snap/inventory.yaml")]
    config: PathBuf,
    /// Place every inventory path under this directory (a mounted disk, a test tree).
    #[arg(long, env = "HERO_SNAP_ROOT")]
    root: Option<PathBuf>,
    /// Directory for journals and locks (default: the inventory's state_dir, else /var/lib/hero-snap).
    #[arg(long, env = "HERO_SNAP_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl InstanceArgs {
    fn load(&self) -> Result<Inventory, Error> {
        let inv = Inventory::load(&self.config)?;
        Ok(match &self.root {
            Some(r) => {
                std::fs::create_dir_all(r).map_err(|e| Error::Io { path: r.clone(), action: "creating the root", source: e })?;
                let r = std::fs::canonicalize(r).map_err(|e| Error::Io { path: r.clone(), action: "resolving the root", source: e })?;
                inv.rerooted(&r)
            }
            None => inv,
        })
    }
}

#[derive(Args)]
struct SelectArgs {
    /// Only this service (repeatable).
    #[arg(long = "service", short = 's')]
    services: Vec<String>,
    /// Only this context (repeatable); instance-scoped surfaces are then left out.
    #[arg(long = "context")]
    contexts: Vec<String>,
}

/// What a backup covers: shared by `plan` and `backup`.
#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    instance: InstanceArgs,
    #[command(flatten)]
    select: SelectArgs,
    /// Also archive derived surfaces (indexes, embeddings).
    #[arg(long)]
    include_derived: bool,
    /// Accept reading surfaces that have neither snapshots nor quiesce hooks in place
    /// (a torn copy is possible; the manifest says `consistency: live`).
    #[arg(long)]
    allow_live: bool,
}

impl PlanArgs {
    fn selection(&self) -> Selection {
        Selection { services: self.select.services.clone(), contexts: self.select.contexts.clone(), include_derived: self.include_derived }
    }
}

#[derive(Args)]
struct BackupArgs {
    #[command(flatten)]
    scope: PlanArgs,
    /// Longest the services may stay frozen, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    freeze_deadline_ms: u64,
    /// Archive file to write, `-` for standard output, or s3://BUCKET/KEY.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    s3: S3Args,
    /// Encrypt to this recipient: `age1...`, `ssh-ed25519 ...` or `ssh-rsa ...` (repeatable).
    #[arg(long = "recipient", short = 'r')]
    recipients: Vec<String>,
    /// Encrypt to the recipients listed in this file (repeatable).
    #[arg(long = "recipients-file", short = 'R', env = "HERO_SNAP_RECIPIENTS_FILE")]
    recipients_files: Vec<PathBuf>,
    /// Encrypt with the passphrase in this file (mode 600).
    #[arg(long, conflicts_with_all = ["recipients", "recipients_files"])]
    passphrase_file: Option<PathBuf>,
    /// Write a plaintext archive (not encrypted).
    #[arg(long, conflicts_with_all = ["recipients", "recipients_files", "passphrase_file"])]
    no_encrypt: bool,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// zstd worker threads (default: one per core).
    #[arg(long)]
    threads: Option<u32>,
}

#[derive(Args)]
struct KeyArgs {
    /// age identity file or unencrypted SSH private key (repeatable; mode 600).
    #[arg(long = "identity", short = 'i', env = "HERO_SNAP_IDENTITY")]
    identities: Vec<PathBuf>,
    /// File holding the archive's passphrase (mode 600).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Accept an archive that is not encrypted.
    #[arg(long)]
    allow_plaintext: bool,
}

impl KeyArgs {
    fn decryption(&self) -> Result<Decryption, Error> {
        let mut d = Decryption::default();
        d.allow_plaintext = self.allow_plaintext;
        for i in &self.identities {
            d.add_identity_file(i)?;
        }
        if let Some(p) = &self.passphrase_file {
            d.set_passphrase_file(p)?;
        }
        Ok(d)
    }
}

/// Object storage for s3:// archives. Unset values come from the AWS environment
/// (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
/// and ~/.aws/{config,credentials}; credentials are never taken from flags.
#[derive(Args)]
struct S3Args {
    /// S3-compatible endpoint, e.g. https://rgw.example.net (default: AWS).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Signing region (default: AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// Profile of the AWS config files to take credentials from.
    #[arg(long, value_name = "NAME")]
    s3_profile: Option<String>,
    /// Address buckets as BUCKET.host instead of host/BUCKET.
    #[arg(long)]
    s3_virtual_host: bool,
}

impl S3Args {
    fn location(&self, text: &str) -> Result<Location, Error> {
        let config = S3Config {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            profile: self.s3_profile.clone(),
            virtual_host_style: self.s3_virtual_host,
        };
        Location::parse(text, &config)
    }
}

#[derive(Args)]
struct ReadArgs {
    /// Archive file, `-` for standard input, or s3://BUCKET/KEY.
    #[arg(long)]
    from: String,
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    keys: KeyArgs,
}

impl ReadArgs {
    fn open(&self, extent: Extent) -> Result<Box<dyn io::Read>, Error> {
        self.s3.location(&self.from)?.open(extent)
    }
}

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    archive: ReadArgs,
    #[command(flatten)]
    instance: InstanceArgs,
    #[command(flatten)]
    select: SelectArgs,
    /// Restore the selected context under this name.
    #[arg(long = "as", value_name = "NEW")]
    rename_to: Option<String>,
    /// Replace data that already exists on the target.
    #[arg(long)]
    replace: bool,
    /// Keep the replaced data beside the target instead of deleting it.
    #[arg(long)]
    keep_old: bool,
}

impl RestoreArgs {
    fn selection(&self) -> RestoreSelection {
        RestoreSelection {
            services: self.select.services.clone(),
            contexts: self.select.contexts.clone(),
            rename_to: self.rename_to.clone(),
            replace: self.replace,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let code = exit_code(&e);
            if json {
                let refusals = match &e {
                    Error::Preflight(r) => serde_json::to_value(r).ok(),
                    _ => None,
                };
                let out = serde_json::json!({"ok": false, "error": {"kind": e.kind(), "message": e.to_string(), "exit_code": code, "refusals": refusals}});
                println!("{out}");
            } else {
                eprintln!("hero-snap: {e}");
            }
            code
        }
    };
    std::process::exit(code);
}

/// Pre-flight refusals of one kind get that kind's code; mixed kinds get the generic one.
fn exit_code(e: &Error) -> i32 {
    if let Error::Preflight(list) = e {
        let first = list.first().map(|r| r.exit_code());
        if first.is_some() && list.iter().all(|r| Some(r.exit_code()) == first) {
            return first.unwrap_or(4);
        }
    }
    e.exit_code()
}

fn print_json<T: Serialize>(command: &str, value: &T) {
    println!("{}", serde_json::json!({"ok": true, "command": command, "result": value}));
}

fn run(cli: Cli) -> Result<(), Error> {
    let json = cli.json;
    let cancel = Cancel::new();
    match cli.command {
        Cmd::Inventory(args) => {
            let inv = args.load()?;
            let rows = inv.table()?;
            if json {
                print_json("inventory", &serde_json::json!({"instance": inv.instance, "surfaces": rows}));
            } else {
                println!("instance {}  ({})", inv.instance, args.config.display());
                println!("{:<14} {:<12} {:<9} {:<9} {:>8} {:>12}  {:<24} path", "service", "surface", "scope", "class", "files", "bytes", "contexts");
                for r in rows {
                    let ctx = if r.contexts.is_empty() { "-".to_string() } else { r.contexts.join(",") };
                    let (files, bytes) = if r.present { (r.files.to_string(), r.bytes.to_string()) } else { ("absent".into(), "-".into()) };
                    println!("{:<14} {:<12} {:<9} {:<9} {:>8} {:>12}  {:<24} {}", r.service, r.surface, r.scope.as_str(), r.class.as_str(), files, bytes, ctx, r.path);
                }
            }
        }
        Cmd::Plan(args) => {
            let inv = args.instance.load()?;
            let plan = hero_snap_core::plan(&inv, &args.selection(), args.allow_live)?;
            if json {
                print_json("plan", &plan);
            } else {
                println!("consistency: {:?}", plan.consistency);
                for n in &plan.notes {
                    println!("  {n}");
                }
                for v in &plan.volumes {
                    println!("volume {} ({} on {}, {})", v.id, v.mount.fstype, v.mount.mount_point.display(), v.mount.source);
                    for s in &v.surfaces {
                        println!("  {s}");
                    }
                }
                for n in &plan.nested_mounts {
                    println!("warning: {n}");
                }
            }
        }
        Cmd::Backup(args) => {
            let inv = args.scope.instance.load()?;
            let encryption = if args.no_encrypt {
                Encryption::None
            } else if let Some(p) = &args.passphrase_file {
                let mut enc = Encryption::passphrase_file(p)?;
                if let (Encryption::Passphrase { work_factor, .. }, Ok(n)) = (&mut enc, std::env::var("HERO_SNAP_SCRYPT_WORK_FACTOR")) {
                    *work_factor = n.parse().ok();
                }
                enc
            } else {
                let mut list = Encryption::parse_recipients(&args.recipients)?;
                for f in &args.recipients_files {
                    list.extend(Encryption::read_recipients_file(f)?);
                }
                if list.is_empty() {
                    return Err(Error::Usage(
                        "backups are encrypted: pass --recipient, --recipients-file or --passphrase-file (or --no-encrypt for a plaintext archive)".into(),
                    ));
                }
                Encryption::Recipients(list)
            };
            let mut compression = Compression { level: args.zstd_level, ..Compression::default() };
            if let Some(t) = args.threads {
                compression.threads = t;
            }
            let opts = BackupOptions {
                selection: args.scope.selection(),
                encryption,
                compression,
                allow_live: args.scope.allow_live,
                freeze_deadline: std::time::Duration::from_millis(args.freeze_deadline_ms),
                state_dir: args.scope.instance.state_dir.clone(),
            };
            let to = args.s3.location(&args.to)?;
            let bar = Bar::new(json);
            let report = hero_snap_core::backup_to(&inv, &opts, &to, &bar, &cancel)?;
            bar.done();
            if json {
                print_json("backup", &report);
            } else {
                let m = &report.manifest;
                eprintln!(
                    "archived {} services, {} files, {} bytes into {} ({} bytes), consistency {:?}",
                    m.services.len(), m.files, m.bytes, to, report.archive_bytes, m.consistency
                );
                for s in &m.services {
                    eprintln!("  {:<14} {:>7} files {:>12} bytes  contexts: {}", s.name, s.files, s.bytes, if s.contexts.is_empty() { "-".into() } else { s.contexts.join(",") });
                    for l in &s.left_out {
                        eprintln!("      left out {}: {}", l.surface, l.reason);
                    }
                }
                for w in &m.warnings {
                    eprintln!("warning [{}]: {}", w.code, w.message);
                }
            }
        }
        Cmd::Inspect(args) => {
            let keys = args.keys.decryption()?;
            let manifest = hero_snap_core::inspect(args.open(Extent::Head)?, &keys)?;
            if json {
                print_json("inspect", &manifest);
            } else {
                print!("{}", manifest.to_yaml()?);
            }
        }
        Cmd::Verify(args) => {
            let keys = args.keys.decryption()?;
            let bar = Bar::new(json);
            let report = hero_snap_core::verify(args.open(Extent::Whole)?, &keys, &bar, &cancel)?;
            bar.done();
            if json {
                print_json("verify", &report);
            } else {
                println!("ok: {} files, {} entries, {} bytes match the index", report.files, report.entries, report.bytes);
            }
        }
        Cmd::Preflight(args) => {
            let keys = args.archive.keys.decryption()?;
            let inv = args.instance.load()?;
            let manifest = hero_snap_core::inspect(args.archive.open(Extent::Head)?, &keys)?;
            let plan = hero_snap_core::preflight(&manifest, &inv, &args.selection())?;
            if json {
                print_json("preflight", &plan);
            } else {
                print_plan(&plan);
            }
        }
        Cmd::Restore(args) => {
            let keys = args.archive.keys.decryption()?;
            let inv = args.instance.load()?;
            let opts = RestoreOptions { selection: args.selection(), keep_old: args.keep_old, state_dir: args.instance.state_dir.clone() };
            let bar = Bar::new(json);
            let report = hero_snap_core::restore(args.archive.open(Extent::Whole)?, &keys, &inv, &opts, &bar, &cancel)?;
            bar.done();
            if json {
                print_json("restore", &report);
            } else {
                print_plan(&report.plan);
                println!("restored {} files, {} bytes", report.files, report.bytes);
                for p in &report.kept_old {
                    println!("kept old data: {}", p.display());
                }
                for s in &report.rebuild_pending {
                    println!("rebuild pending: {s}");
                }
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
            }
        }
        Cmd::Gc(args) => {
            let dir = match &args.state_dir {
                Some(d) => d.clone(),
                None => args.load().ok().and_then(|i| i.state_dir).unwrap_or_else(|| PathBuf::from("/var/lib/hero-snap")),
            };
            let done = hero_snap_core::gc(&dir)?;
            if json {
                print_json("gc", &done);
            } else if done.is_empty() {
                println!("nothing to clean up in {}", dir.display());
            } else {
                for r in done {
                    println!("run {}: {}", r.run_id, r.action);
                }
            }
        }
    }
    Ok(())
}

fn print_plan(plan: &hero_snap_core::RestorePlan) {
    println!("restore plan for instance {}:", plan.instance);
    for s in &plan.surfaces {
        let ctx = match (&s.context, &s.target_context) {
            (Some(a), Some(b)) if a != b => format!(" [{a} -> {b}]"),
            (Some(a), _) => format!(" [{a}]"),
            _ => String::new(),
        };
        println!("  {}.{}{} -> {}{}", s.service, s.surface, ctx, s.path.display(), if s.exists { " (replaces existing data)" } else { "" });
    }
    for m in &plan.migrations {
        println!("  migrate {} schema {} -> {}: {}", m.service, m.from, m.to, m.argv.join(" "));
    }
    for r in &plan.rebuild_pending {
        println!("  rebuild pending after restore: {r}");
    }
}

/// A progress bar on a terminal; silent otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(json: bool) -> Bar {
        if json || !io::stderr().is_terminal() {
            return Bar(None);
        }
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Bar(Some(pb))
    }
    fn done(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn event(&self, e: &Event) {
        let Some(pb) = &self.0 else { return };
        match e {
            Event::Totals { bytes, .. } => pb.set_length(*bytes),
            Event::Bytes { bytes } => pb.inc(*bytes),
            Event::Phase { phase } => pb.set_message(phase.clone()),
            Event::Surface { service, surface, .. } => pb.set_message(format!("{service}.{surface}")),
            Event::Warning { warning } => pb.println(format!("warning [{}]: {}", warning.code, warning.message)),
        }
    }
}
