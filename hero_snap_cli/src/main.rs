//! `hero-snap`: parses arguments, calls hero_snap_core, prints. No logic lives here.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use clap::{Args, CommandFactory, Parser, Subcommand};
use hero_snap_core::{
    Folder, Inventory, Listed, MinFree, PruneOptions, BackupOptions, Cancel, Compression, Decryption, Encryption, Error, Event, Extent, Location, Outcome, Progress, RestoreOptions,
    RestoreSelection, S3Config, Selection, Status,
};
use serde::Serialize;

/// Atomic, cross-service-consistent snapshots of a Hero instance into one encrypted
/// archive, and transactional restore (whole, per service, per context).
#[derive(Parser)]
#[command(name = "hero-snap", version, about, max_term_width = 100)]
struct Cli {
    /// Print JSON lines instead of text: events while it runs, the result last (docs/CLI.md).
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
    /// List the archives in a directory with a summary of each manifest.
    List(ListArgs),
    /// Delete old archives in a directory by retention rules, with a free-space guard.
    Prune(PruneArgs),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write hero-snap.1 and hero-snap-<command>.1 into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ListArgs {
    /// Directory holding the archives (not searched recursively), or s3://BUCKET/PREFIX/.
    #[arg(value_name = "DIR|s3://BUCKET/PREFIX/")]
    dir: String,
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    keys: KeyArgs,
}

#[derive(Args)]
struct PruneArgs {
    /// Directory holding the archives (not searched recursively), or s3://BUCKET/PREFIX/.
    #[arg(value_name = "DIR|s3://BUCKET/PREFIX/")]
    dir: String,
    #[command(flatten)]
    s3: S3Args,
    /// Keep the newest N archives of each series (same instance and selection).
    #[arg(long, default_value_t = 0)]
    keep_last: usize,
    /// Keep the newest archive of each of the N most recent days (UTC) that have one.
    #[arg(long, default_value_t = 0)]
    keep_daily: usize,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// After pruning, exit 17 unless this much space is free there: a size (500M, 10G), or
    /// `auto` for the size of each series' newest archive plus 10 % (directories only).
    #[arg(long, value_name = "SIZE|auto")]
    min_free: Option<String>,
    #[command(flatten)]
    keys: KeyArgs,
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
    fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            profile: self.s3_profile.clone(),
            virtual_host_style: self.s3_virtual_host,
        }
    }
    fn location(&self, text: &str) -> Result<Location, Error> {
        Location::parse(text, &self.config())
    }
    fn folder(&self, text: &str) -> Result<Folder, Error> {
        Folder::parse(text, &self.config())
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
    hero_snap_core::run_watchdog_if_invoked();
    let cli = Cli::parse();
    let out = Output::new(&cli);
    let cancel = Cancel::new();
    if matches!(cli.command, Cmd::Backup(_) | Cmd::Verify(_) | Cmd::Restore(_)) {
        cancel_on_signals(&cancel);
    }
    let result = run(cli, &out, &cancel);
    std::process::exit(out.finish(result));
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

/// The `--json` event stream's schema version (docs/events.schema.json).
const EVENTS_VERSION: u32 = 1;

/// Where results go: text on the terminal, or with `--json` one JSON object per line
/// (events while the run goes, the result last).
struct Output {
    json: bool,
    /// With `backup --to -` stdout carries the archive, so the JSON lines go to stderr.
    to_stderr: bool,
    command: String,
    result: Mutex<Option<serde_json::Value>>,
    tally: Mutex<Tally>,
}

/// Byte progress, coalesced into at most one `progress` line per percent.
#[derive(Default)]
struct Tally {
    total: u64,
    done: u64,
    percent: u64,
}

impl Output {
    fn new(cli: &Cli) -> Output {
        let command = cmd_name(&cli.command).to_string();
        let to_stderr = matches!(&cli.command, Cmd::Backup(b) if b.to == "-");
        Output { json: cli.json, to_stderr, command, result: Mutex::new(None), tally: Mutex::new(Tally::default()) }
    }

    fn line(&self, mut v: serde_json::Value) {
        if let serde_json::Value::Object(map) = &mut v {
            map.insert("v".into(), EVENTS_VERSION.into());
        }
        // One write per line, so that a reader never sees half an event.
        let text = format!("{v}\n");
        if self.to_stderr {
            let _ = io::stderr().lock().write_all(text.as_bytes());
        } else {
            let mut o = io::stdout().lock();
            let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
        }
    }

    /// Keeps the command's result for the last line (`--json`); text was printed already.
    fn result<T: Serialize>(&self, value: &T) {
        if self.json {
            *self.result.lock().expect("no panics while held") = serde_json::to_value(value).ok();
        }
    }

    /// Prints the last line (or the error text) and returns the exit code.
    fn finish(&self, result: Result<(), Error>) -> i32 {
        let kept = self.result.lock().expect("no panics while held").take();
        match result {
            Ok(()) => {
                if self.json {
                    self.line(serde_json::json!({"event": "result", "ok": true, "command": self.command, "result": kept}));
                }
                0
            }
            Err(e) => {
                let code = exit_code(&e);
                if self.json {
                    let refusals = match &e {
                        Error::Preflight(r) => serde_json::to_value(r).ok(),
                        _ => None,
                    };
                    let mut v = serde_json::json!({"event": "result", "ok": false, "command": self.command,
                        "error": {"kind": e.kind(), "message": e.to_string(), "exit_code": code, "refusals": refusals}});
                    if let Some(r) = kept {
                        v["result"] = r;
                    }
                    self.line(v);
                } else {
                    eprintln!("hero-snap: {e}");
                }
                code
            }
        }
    }
}

impl Progress for Output {
    fn event(&self, e: &Event) {
        if !self.json {
            return;
        }
        let mut t = self.tally.lock().expect("no panics while held");
        match e {
            Event::Totals { bytes, .. } => *t = Tally { total: *bytes, ..Tally::default() },
            Event::Bytes { bytes } => {
                t.done += bytes;
                let percent = (t.done.min(t.total) * 100).checked_div(t.total).unwrap_or(100);
                if percent > t.percent {
                    t.percent = percent;
                    self.line(serde_json::json!({"event": "progress", "bytes": t.done, "total_bytes": t.total}));
                }
                return;
            }
            _ => {}
        }
        drop(t);
        if let Ok(v) = serde_json::to_value(e) {
            self.line(v);
        }
    }
}

fn cmd_name(c: &Cmd) -> &'static str {
    match c {
        Cmd::Inventory(_) => "inventory",
        Cmd::Plan(_) => "plan",
        Cmd::Backup(_) => "backup",
        Cmd::Inspect(_) => "inspect",
        Cmd::Verify(_) => "verify",
        Cmd::Preflight(_) => "preflight",
        Cmd::Restore(_) => "restore",
        Cmd::Gc(_) => "gc",
        Cmd::List(_) => "list",
        Cmd::Prune(_) => "prune",
        Cmd::Completions { .. } => "completions",
        Cmd::Man { .. } => "man",
    }
}

/// The progress of a run: the bar on a terminal and the JSON events, whichever is on.
struct Reporter<'a> {
    bar: Bar,
    out: &'a Output,
}

impl Progress for Reporter<'_> {
    fn event(&self, e: &Event) {
        self.bar.event(e);
        self.out.event(e);
    }
}

/// Prints one line per outcome that is not plain `ok`, and a count; returns the failure
/// (exit 9) when some outcome failed.
fn report_outcomes(outcomes: &[Outcome], json: bool, to_stderr: bool) -> Result<(), Error> {
    let failed: Vec<&Outcome> = hero_snap_core::failures(outcomes);
    if !json {
        let mut lines = Vec::new();
        for o in outcomes {
            let status = match o.status {
                Status::Ok => "ok",
                Status::Skipped => "skipped",
                Status::Failed => "FAILED",
            };
            lines.push(format!("  {status:<8} {}{}", o.label(), o.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()));
        }
        let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
        lines.push(format!("{} ok, {} skipped, {} failed", count(Status::Ok), count(Status::Skipped), failed.len()));
        for l in lines {
            if to_stderr {
                eprintln!("{l}");
            } else {
                println!("{l}");
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete(format!(
            "{} of {} surfaces failed: {}",
            failed.len(),
            outcomes.len(),
            failed.iter().map(|o| format!("{} ({})", o.label(), o.reason.as_deref().unwrap_or("failed"))).collect::<Vec<_>>().join("; ")
        )))
    }
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

fn run(cli: Cli, out: &Output, cancel: &Cancel) -> Result<(), Error> {
    let json = cli.json;
    match cli.command {
        Cmd::Inventory(args) => {
            let inv = args.load()?;
            let rows = hero_snap_core::surface_table(&inv)?;
            if json {
                out.result(&serde_json::json!({"instance": inv.instance(), "surfaces": rows}));
            } else {
                println!("instance {}  ({})", inv.instance(), args.config.display());
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
                out.result(&plan);
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
            let bar = Reporter { bar: Bar::new(json), out };
            let report = hero_snap_core::backup_to(&inv, &opts, &to, &bar, cancel)?;
            bar.bar.done();
            if json {
                out.result(&report);
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
            report_outcomes(&report.outcomes, json, true)?;
        }
        Cmd::Inspect(args) => {
            let keys = args.keys.decryption()?;
            let manifest = hero_snap_core::inspect(args.open(Extent::Head)?, &keys)?;
            if json {
                out.result(&manifest);
            } else {
                print!("{}", manifest.to_yaml()?);
            }
        }
        Cmd::Verify(args) => {
            let keys = args.keys.decryption()?;
            let bar = Reporter { bar: Bar::new(json), out };
            let report = hero_snap_core::verify(args.open(Extent::Whole)?, &keys, &bar, cancel)?;
            bar.bar.done();
            if json {
                out.result(&report);
            } else {
                println!("ok: {} files, {} entries, {} bytes match the index", report.files, report.entries, report.bytes);
            }
            report_outcomes(&report.outcomes, json, false)?;
        }
        Cmd::Preflight(args) => {
            let keys = args.archive.keys.decryption()?;
            let inv = args.instance.load()?;
            let manifest = hero_snap_core::inspect(args.archive.open(Extent::Head)?, &keys)?;
            let plan = hero_snap_core::preflight(&manifest, &inv, &args.selection())?;
            if json {
                out.result(&plan);
            } else {
                print_plan(&plan);
            }
        }
        Cmd::Restore(args) => {
            let keys = args.archive.keys.decryption()?;
            let inv = args.instance.load()?;
            let opts = RestoreOptions { selection: args.selection(), keep_old: args.keep_old, state_dir: args.instance.state_dir.clone() };
            let bar = Reporter { bar: Bar::new(json), out };
            let report = hero_snap_core::restore(args.archive.open(Extent::Whole)?, &keys, &inv, &opts, &bar, cancel)?;
            bar.bar.done();
            if json {
                out.result(&report);
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
            report_outcomes(&report.outcomes, json, false)?;
        }
        Cmd::Gc(args) => {
            let dir = match &args.state_dir {
                Some(d) => d.clone(),
                None => hero_snap_core::state_dir(None, args.load().ok().as_ref()),
            };
            let done = hero_snap_core::gc(&dir)?;
            if json {
                out.result(&done);
            } else if done.is_empty() {
                println!("nothing to clean up in {}", dir.display());
            } else {
                for r in done {
                    println!("run {}: {}", r.run_id, r.action);
                }
            }
        }
        Cmd::List(args) => {
            let keys = args.keys.decryption()?;
            let listed = hero_snap_core::list(&args.s3.folder(&args.dir)?, &keys)?;
            out.result(&listed);
            if !json {
                print_listing(&listed);
            }
        }
        Cmd::Prune(args) => {
            let keys = args.keys.decryption()?;
            let min_free = match args.min_free.as_deref() {
                None => None,
                Some("auto") => Some(MinFree::NextBackup),
                Some(s) => Some(s.parse::<MinFree>()?),
            };
            let opts = PruneOptions { keep_last: args.keep_last, keep_daily: args.keep_daily, dry_run: args.dry_run, min_free };
            let report = hero_snap_core::prune(&args.s3.folder(&args.dir)?, &keys, &opts)?;
            out.result(&report);
            if !json {
                let verb = if report.dry_run { "would delete" } else { "deleted" };
                for k in &report.kept {
                    println!("keep    {}  {}  ({})", k.created, k.path, k.reasons.join(", "));
                }
                for d in &report.deleted {
                    println!("{verb:<7} {d}");
                }
                for i in &report.ignored {
                    println!("ignored {}: {}", i.path, i.problem.as_deref().unwrap_or("not an archive"));
                }
                println!("{verb} {} archives, {} bytes", report.deleted.len(), report.freed_bytes);
            }
            if let Some(sp) = report.space.as_ref().filter(|s| !s.ok) {
                return Err(Error::NoSpace(format!(
                    "{}: {} bytes free after pruning, {} required; free space or keep fewer archives before the next backup",
                    sp.path.display(), sp.available, sp.required
                )));
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hero-snap", &mut io::stdout());
        }
        Cmd::Man { dir } => {
            let res = match &dir {
                Some(d) => clap_mangen::generate_to(Cli::command(), d).map(|_| ()),
                None => clap_mangen::Man::new(Cli::command()).render(&mut io::stdout()),
            };
            let path = dir.unwrap_or_else(|| "-".into());
            res.map_err(|e| Error::Io { path, action: "writing the man page", source: e })?;
        }
    }
    Ok(())
}

fn print_listing(listed: &[Listed]) {
    println!("{:<20} {:<14} {:>10} {:<9} {:<32} {:<24} file", "created", "instance", "size", "encrypted", "services", "contexts");
    for l in listed {
        let enc = match l.encrypted {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        match &l.summary {
            Some(s) => println!(
                "{:<20} {:<14} {:>10} {:<9} {:<32} {:<24} {}",
                s.created.get(..19).unwrap_or(&s.created), s.instance, l.size, enc, s.services.join(","),
                if s.contexts.is_empty() { "-".to_string() } else { s.contexts.join(",") }, l.path
            ),
            None => println!("{:<20} {:<14} {:>10} {:<9} {}: {}", "-", "-", l.size, enc, l.path, l.problem.as_deref().unwrap_or("unreadable")),
        }
    }
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
            Event::Outcome(_) => {}
        }
    }
}
