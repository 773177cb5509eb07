//! The command line: clap's types, and the conversions of their values into the
//! library's options. Nothing here decides; `hero_snap_core` does.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hero_snap_core::{
    Ancestors, BackupOptions, BytesPerSec, Compression, Decryption, DecryptionChoice, EncryptionChoice, Error, Extent, Folder, Inventory, Location,
    RestoreOptions, RestoreSelection, Result, S3Config, Selection, Since,
};

/// Atomic, cross-service-consistent snapshots of a Hero instance into one encrypted
/// archive, and transactional restore (whole, per service, per context).
#[derive(Parser)]
#[command(name = "hero-snap", version, about, max_term_width = 100)]
pub struct Cli {
    /// Print JSON lines instead of text: events while it runs, the result last (docs/CLI.md).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Show the state-surface table: services, surfaces, paths, scope, class, contexts, sizes.
    Inventory(InstanceArgs),
    /// Show how a backup would run: volumes, snapshot backends, consistency. Changes nothing.
    Plan(PlanArgs),
    /// Archive the instance (or a selection) into one encrypted file.
    Backup(BackupArgs),
    /// Print an archive's manifest (reads only the head of the archive).
    Inspect(ReadArgs),
    /// Check every file of an archive (and of its chain) against its index.
    Verify(VerifyArgs),
    /// List an archive's entries (service, context, path, type, size, mtime), all or those
    /// PATTERN picks; the archive is read and checked whole.
    Ls(LsArgs),
    /// Show what changed between two archives (added, removed, modified, metadata), per
    /// service, context and surface, from their headers and indexes; both are read and checked whole.
    Diff(DiffArgs),
    /// Write the files PATTERN picks into a new directory outside the instance, each
    /// checked against the index (one file back, without a restore).
    Extract(ExtractArgs),
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
    /// Show the last backup of each series (instance and selection); with --max-age, exit 18
    /// when the last good one is older or missing.
    Status(StatusArgs),
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
pub struct ListArgs {
    /// Directory holding the archives (not searched recursively), or s3://BUCKET/PREFIX/.
    #[arg(value_name = "DIR|s3://BUCKET/PREFIX/")]
    pub dir: String,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// The instance whose state directory's catalog summarises the archives this host
    /// wrote, when no identity opens them.
    #[command(flatten)]
    pub instance: InstanceArgs,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Directory holding the archives (not searched recursively), or s3://BUCKET/PREFIX/.
    #[arg(value_name = "DIR|s3://BUCKET/PREFIX/")]
    pub dir: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// The instance whose state directory's catalog lets this host prune the archives it
    /// wrote without the identity.
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Keep the newest N archives of each series (same instance and selection).
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest archive of each of the N most recent hours (UTC) that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: usize,
    /// Keep the newest archive of each of the N most recent days (UTC) that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: usize,
    /// Keep the newest archive of each of the N most recent ISO weeks that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: usize,
    /// Keep the newest archive of each of the N most recent months that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: usize,
    /// Keep the newest archive of each of the N most recent years that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: usize,
    /// Keep every archive made within this span of the series' newest one: years, months,
    /// days, hours, e.g. 30d, 1y6m, 2d12h (restic's --keep-within).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After pruning, exit 17 unless this much space is free there: a size (500M, 10G), or
    /// `auto` for the size of each series' newest archive plus 10 % (directories only).
    #[arg(long, value_name = "SIZE|auto")]
    pub min_free: Option<String>,
    /// After the prune, whatever its result, replace PATH with each series' prune metrics
    /// for node_exporter's textfile collector (kept, deleted, freed bytes, time, success).
    #[arg(long, value_name = "PATH", conflicts_with = "dry_run")]
    pub metrics_file: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// Only the series of exactly this selection (with --context and --include-derived);
    /// without any, every series.
    #[command(flatten)]
    pub select: SelectArgs,
    /// Only the series whose backups include derived surfaces.
    #[arg(long)]
    pub include_derived: bool,
    /// Exit 18 when a shown series' last good backup ended longer ago than this (d, h, m, s:
    /// 26h, 1d12h), or none succeeded, or none was recorded.
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,
}

impl StatusArgs {
    /// The series asked for: `None` (all) unless a selection option was given.
    pub fn selection(&self) -> Option<Selection> {
        let any = !self.select.services.is_empty() || !self.select.contexts.is_empty() || self.include_derived;
        any.then(|| Selection { services: self.select.services.clone(), contexts: self.select.contexts.clone(), include_derived: self.include_derived })
    }
}

#[derive(Args)]
pub struct InstanceArgs {
    /// Inventory file of the instance.
    #[arg(long, short = 'c', env = "HERO_SNAP_CONFIG", default_value = "/etc/hero-snap/inventory.yaml")]
    pub config: PathBuf,
    /// Place every inventory path under this directory (a mounted disk, a test tree).
    #[arg(long, env = "HERO_SNAP_ROOT")]
    pub root: Option<PathBuf>,
    /// Directory for journals and locks (default: the inventory's state_dir, else /var/lib/hero-snap).
    #[arg(long, env = "HERO_SNAP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl InstanceArgs {
    /// The inventory, placed under `--root` when given.
    pub fn load(&self) -> Result<Inventory> {
        Inventory::load_under(&self.config, self.root.as_deref())
    }

    /// The state directory: `--state-dir`, else the inventory's when it can be read (a
    /// host that only lists archives may have none), else the default.
    pub fn state(&self) -> PathBuf {
        let inv = if self.state_dir.is_none() { self.load().ok() } else { None };
        hero_snap_core::state_dir(self.state_dir.as_deref(), inv.as_ref())
    }
}

#[derive(Args)]
pub struct SelectArgs {
    /// Only this service (repeatable).
    #[arg(long = "service", short = 's')]
    pub services: Vec<String>,
    /// Only this context (repeatable); instance-scoped surfaces are then left out.
    #[arg(long = "context")]
    pub contexts: Vec<String>,
}

/// What a backup covers: shared by `plan` and `backup`.
#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Also archive derived surfaces (indexes, embeddings).
    #[arg(long)]
    pub include_derived: bool,
    /// Accept reading surfaces that have neither snapshots nor quiesce hooks in place
    /// (a torn copy is possible; the manifest says `consistency: live`).
    #[arg(long)]
    pub allow_live: bool,
}

impl PlanArgs {
    pub fn selection(&self) -> Selection {
        Selection { services: self.select.services.clone(), contexts: self.select.contexts.clone(), include_derived: self.include_derived }
    }
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub scope: PlanArgs,
    /// Longest the services may stay frozen, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub freeze_deadline_ms: u64,
    /// Archive file to write, `-` for standard output, or s3://BUCKET/KEY.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// s3:// only: lock the archive's object for DAYS (COMPLIANCE mode: nobody can delete or
    /// overwrite it before then). The bucket must have object lock enabled.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub s3_object_lock: Option<u32>,
    /// s3:// only: send at most this many bytes per second, over all parts in flight (10M = 10 MiB/s).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub limit_upload: Option<BytesPerSec>,
    /// Encrypt to this recipient: `age1...`, `ssh-ed25519 ...` or `ssh-rsa ...` (repeatable).
    #[arg(long = "recipient", short = 'r')]
    pub recipients: Vec<String>,
    /// Encrypt to the recipients listed in this file (repeatable).
    #[arg(long = "recipients-file", short = 'R', env = "HERO_SNAP_RECIPIENTS_FILE")]
    pub recipients_files: Vec<PathBuf>,
    /// Encrypt with the passphrase in this file (mode 600).
    #[arg(long, conflicts_with_all = ["recipients", "recipients_files"])]
    pub passphrase_file: Option<PathBuf>,
    /// Write a plaintext archive (not encrypted).
    #[arg(long, conflicts_with_all = ["recipients", "recipients_files", "passphrase_file"])]
    pub no_encrypt: bool,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,
    /// zstd worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Write an incremental archive on PARENT: `latest` (the newest archive of this
    /// instance and selection beside --to; a full one if there is none), or an archive (its
    /// file or s3:// key). Without the state directory's index of it, its index is read from
    /// the archive's end.
    #[arg(long, value_name = "PARENT")]
    pub since: Option<String>,
    /// With --since: compare each file's content with the parent's, not metadata alone.
    #[arg(long, requires = "since")]
    pub rehash: bool,
    /// With --since: start a new full archive once the chain has N archives.
    #[arg(long, value_name = "N", requires = "since", value_parser = clap::value_parser!(u32).range(1..))]
    pub full_every: Option<u32>,
    /// With --since: an identity that opens the parent archive (repeatable; mode 600), to read
    /// its index from the archive when the state directory does not hold it. A passphrase
    /// backup uses its own passphrase, a --no-encrypt one reads plaintext parents.
    #[arg(long, value_name = "FILE", requires = "since")]
    pub parent_identity: Vec<PathBuf>,
    /// After the run, success or failure, write its series' metrics to this file (Prometheus
    /// text format, for node_exporter's textfile collector; name it *.prom).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

impl BackupArgs {
    /// Where the archive goes, with the object lock and upload limit of an s3:// target.
    pub fn target(&self) -> Result<Location> {
        let mut config = self.s3.config();
        config.object_lock_days = self.s3_object_lock;
        config.limit_upload = self.limit_upload.map(|l| l.0);
        let to = Location::parse(&self.to, &config)?;
        if !matches!(to, Location::S3(_)) && (self.s3_object_lock.is_some() || self.limit_upload.is_some()) {
            return Err(Error::Usage(format!("`{}`: --s3-object-lock and --limit-upload apply to s3:// targets only", self.to)));
        }
        Ok(to)
    }

    /// The backup's options, its encryption decided by the library from the flags.
    pub fn options(&self) -> Result<BackupOptions> {
        let choice = EncryptionChoice {
            recipients: self.recipients.clone(),
            recipients_files: self.recipients_files.clone(),
            passphrase_file: self.passphrase_file.clone(),
            no_encrypt: self.no_encrypt,
        };
        Ok(BackupOptions {
            selection: self.scope.selection(),
            encryption: choice.resolve()?,
            compression: Compression { level: self.zstd_level, threads: self.threads.unwrap_or_else(|| Compression::default().threads) },
            allow_live: self.scope.allow_live,
            freeze_deadline: Duration::from_millis(self.freeze_deadline_ms),
            state_dir: self.scope.instance.state_dir.clone(),
            since: match self.since.as_deref() {
                None => None,
                Some("latest") => Some(Since::Latest),
                Some(parent) => Some(Since::Archive(self.s3.location(parent)?)),
            },
            rehash: self.rehash,
            full_every: self.full_every,
            parent_keys: DecryptionChoice { identities: self.parent_identity.clone(), ..DecryptionChoice::default() },
        })
    }
}

#[derive(Args)]
pub struct KeyArgs {
    /// age identity file or unencrypted SSH private key (repeatable; mode 600).
    #[arg(long = "identity", short = 'i', env = "HERO_SNAP_IDENTITY")]
    pub identities: Vec<PathBuf>,
    /// File holding the archive's passphrase (mode 600).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Accept an archive that is not encrypted.
    #[arg(long)]
    pub allow_plaintext: bool,
}

impl KeyArgs {
    /// The keys given, read.
    pub fn decryption(&self) -> Result<Decryption> {
        let choice =
            DecryptionChoice { identities: self.identities.clone(), passphrase_file: self.passphrase_file.clone(), allow_plaintext: self.allow_plaintext };
        choice.resolve()
    }
}

/// Object storage for s3:// archives. Unset values come from the AWS environment
/// (AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
/// and ~/.aws/{config,credentials}; credentials are never taken from flags.
#[derive(Args)]
pub struct S3Args {
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
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            profile: self.s3_profile.clone(),
            virtual_host_style: self.s3_virtual_host,
            ..S3Config::default()
        }
    }
    pub fn location(&self, text: &str) -> Result<Location> {
        Location::parse(text, &self.config())
    }
    pub fn folder(&self, text: &str) -> Result<Folder> {
        Folder::parse(text, &self.config())
    }
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub archive: ReadArgs,
    /// Instead of --from: verify the newest archive of each series (instance and
    /// selection) in this directory or s3://BUCKET/PREFIX/, each with its chain.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX/", conflicts_with = "from")]
    pub newest_in: Option<String>,
    /// After the run, replace this file with each series' last verification (Prometheus
    /// text format, for node_exporter's textfile collector; name it *.prom).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

/// How archives are reached and opened: object storage, the download limit, the keys.
#[derive(Args)]
pub struct AccessArgs {
    #[command(flatten)]
    pub s3: S3Args,
    /// s3:// only: receive at most this many bytes per second, over all ranges in flight (10M = 10 MiB/s).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub limit_download: Option<BytesPerSec>,
    #[command(flatten)]
    pub keys: KeyArgs,
}

impl AccessArgs {
    /// Where each archive given is, read with the download limit (refused when none is s3://).
    pub fn locations(&self, given: &[String]) -> Result<Vec<Location>> {
        let mut config = self.s3.config();
        config.limit_download = self.limit_download.map(|l| l.0);
        let given = given.iter().map(|f| Location::parse(f, &config)).collect::<Result<Vec<_>>>()?;
        if self.limit_download.is_some() && !given.iter().any(|g| matches!(g, Location::S3(_))) {
            return Err(Error::Usage("--limit-download applies to s3:// archives only".into()));
        }
        Ok(given)
    }
}

#[derive(Args)]
pub struct ReadArgs {
    /// Archive file, `-` for standard input, or s3://BUCKET/KEY. An incremental's
    /// ancestors are found beside it, or given with more --from (any order).
    #[arg(long)]
    pub from: Vec<String>,
    #[command(flatten)]
    pub access: AccessArgs,
}

impl ReadArgs {
    /// The newest archive of those given, opened for reading (`Extent::Head` reads only
    /// the manifest), and where its ancestors are.
    pub fn open(&self, extent: Extent, keys: &Decryption) -> Result<(Box<dyn Read>, Ancestors)> {
        if self.from.is_empty() {
            return Err(Error::Usage("which archive? give it with --from FILE|-|s3://BUCKET/KEY".into()));
        }
        let (newest, ancestors) = Ancestors::chain_of(self.access.locations(&self.from)?, keys)?;
        Ok((newest.open(extent)?, ancestors))
    }
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub archive: ReadArgs,
    /// Only entries whose path matches (glob: `*` within a directory, `**` across; a
    /// directory picks all it holds). The path inside its surface (docs/readme.md), or
    /// SERVICE/instance/SURFACE/PATH, SERVICE/contexts/CTX/SURFACE/PATH.
    #[arg(value_name = "PATTERN")]
    pub patterns: Vec<String>,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The older archive: a file, `-` for standard input, or s3://BUCKET/KEY. An
    /// incremental is compared as the whole state its index describes.
    #[arg(value_name = "OLD")]
    pub old: String,
    /// The newer archive, as OLD (at most one of them `-`).
    #[arg(value_name = "NEW", required_unless_present = "live", conflicts_with = "live")]
    pub new: Option<String>,
    /// Instead of NEW: the live instance (the inventory of --config, under --root), its
    /// surfaces and contexts that OLD holds.
    #[arg(long)]
    pub live: bool,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    /// Only paths that match: a glob as for `ls` (repeatable; a directory picks all it holds).
    #[arg(long = "path", value_name = "PATTERN")]
    pub paths: Vec<String>,
}

impl DiffArgs {
    /// The archives given (OLD, and NEW unless --live), opened for reading whole.
    pub fn open(&self) -> Result<Vec<Box<dyn Read>>> {
        let given: Vec<String> = std::iter::once(self.old.clone()).chain(self.new.clone()).collect();
        if given.iter().filter(|g| *g == "-").count() > 1 {
            return Err(Error::Usage("diff reads at most one archive from standard input; give the other as a file or s3://BUCKET/KEY".into()));
        }
        self.access.locations(&given)?.iter().map(|l| l.open(Extent::Whole)).collect()
    }
}

#[derive(Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub archive: ReadArgs,
    /// The instance of this host, whose surfaces --to must stay out of (its inventory is
    /// optional: without one, only the surfaces the archive records are kept out of).
    #[command(flatten)]
    pub instance: InstanceArgs,
    /// What to extract: a glob as for `ls` (repeatable; a directory brings all it holds).
    #[arg(long = "path", value_name = "PATTERN", required = true)]
    pub paths: Vec<String>,
    /// A new directory (or an empty one) outside the instance's surfaces; it receives
    /// SERVICE/instance|contexts/CTX/SURFACE/PATH.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub archive: ReadArgs,
    #[command(flatten)]
    pub instance: InstanceArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Restore the selected context under this name.
    #[arg(long = "as", value_name = "NEW")]
    pub rename_to: Option<String>,
    /// Replace data that already exists on the target.
    #[arg(long)]
    pub replace: bool,
    /// Keep the replaced data beside the target instead of deleting it.
    #[arg(long)]
    pub keep_old: bool,
}

impl RestoreArgs {
    /// What to restore, and how.
    pub fn options(&self) -> RestoreOptions {
        let selection = RestoreSelection {
            services: self.select.services.clone(),
            contexts: self.select.contexts.clone(),
            rename_to: self.rename_to.clone(),
            replace: self.replace,
        };
        RestoreOptions { selection, keep_old: self.keep_old, state_dir: self.instance.state_dir.clone() }
    }
}

impl Cmd {
    /// The command's name, as `--json` reports it.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Inventory(_) => "inventory",
            Cmd::Plan(_) => "plan",
            Cmd::Backup(_) => "backup",
            Cmd::Inspect(_) => "inspect",
            Cmd::Verify(_) => "verify",
            Cmd::Ls(_) => "ls",
            Cmd::Diff(_) => "diff",
            Cmd::Extract(_) => "extract",
            Cmd::Preflight(_) => "preflight",
            Cmd::Restore(_) => "restore",
            Cmd::Gc(_) => "gc",
            Cmd::List(_) => "list",
            Cmd::Prune(_) => "prune",
            Cmd::Status(_) => "status",
            Cmd::Completions { .. } => "completions",
            Cmd::Man { .. } => "man",
        }
    }

    /// Whether standard output carries the archive (`backup --to -`): output then goes to stderr.
    pub fn archive_on_stdout(&self) -> bool {
        matches!(self, Cmd::Backup(b) if b.to == "-")
    }

    /// Whether a signal should cancel the run (the commands that take long and clean up).
    pub fn cancellable(&self) -> bool {
        matches!(self, Cmd::Backup(_) | Cmd::Verify(_) | Cmd::Restore(_) | Cmd::Ls(_) | Cmd::Diff(_) | Cmd::Extract(_))
    }
}
