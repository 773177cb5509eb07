//! The inventory: what state an instance keeps, where, and how to treat it.
//!
//! An inventory is a YAML file (`format: 1`, documented in docs/INVENTORY.md). Parsing
//! keeps YAML locations so that every validation error names the file, the line, the
//! field and the fix. The validated model ([`Inventory`]) is what the rest of the crate
//! works on; it never holds a half-checked value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The inventory format this build reads and writes.
pub const INVENTORY_FORMAT: u32 = 1;

/// The placeholder a per-context surface path carries where the context name goes.
pub const CONTEXT_PLACEHOLDER: &str = "{context}";

/// Whether a surface has one copy per instance or one per context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One copy for the whole instance.
    Instance,
    /// One copy per context; the path has a `{context}` component.
    Context,
}

/// How a surface's data is treated by backup and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Source of truth: always archived.
    Source,
    /// Rebuildable from sources (indexes, embeddings): archived only when asked for.
    Derived,
    /// Never archived (caches, sockets, scratch).
    Transient,
}

impl Scope {
    /// The name used in the inventory file and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Instance => "instance",
            Scope::Context => "context",
        }
    }
}

impl Class {
    /// The name used in the inventory file and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Source => "source",
            Class::Derived => "derived",
            Class::Transient => "transient",
        }
    }
}

/// The snapshot mechanism of a surface's volume; detected from the mount table unless the
/// inventory sets `snapshot:` on the surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotBackend {
    /// A read-only btrfs snapshot of the subvolume.
    Btrfs,
    /// A ZFS snapshot of the dataset.
    Zfs,
    /// An LVM snapshot of the logical volume.
    Lvm,
    /// A reflink copy (XFS, btrfs without a subvolume) while the services are frozen.
    Reflink,
    /// No snapshot: read in place (needs quiesce hooks, or --allow-live).
    None,
}

impl SnapshotBackend {
    /// The name used in the inventory file and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotBackend::Btrfs => "btrfs",
            SnapshotBackend::Zfs => "zfs",
            SnapshotBackend::Lvm => "lvm",
            SnapshotBackend::Reflink => "reflink",
            SnapshotBackend::None => "none",
        }
    }
}

/// An external command: argv (no shell), with a timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments; `{context}`, `{new_context}` and `{from_schema}` are
    /// replaced where a hook defines them.
    pub argv: Vec<String>,
    /// Seconds before the command is killed and counted as failed.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

pub(crate) fn default_timeout() -> u64 {
    60
}

impl Command {
    /// `timeout_secs` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Which backup runs the inventory's notify command is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// A run that did not succeed (any exit code but 0, exit 9 included).
    Failure,
    /// A run that succeeded (exit 0).
    Success,
}

impl NotifyOn {
    /// The name used in the inventory file, and the `{event}` of the command.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Failure => "failure",
            NotifyOn::Success => "success",
        }
    }

    /// The event of a run that succeeded (`ok`) or not.
    pub fn of(ok: bool) -> NotifyOn {
        if ok {
            NotifyOn::Success
        } else {
            NotifyOn::Failure
        }
    }
}

/// The inventory's `notify:`: a command run after a backup run ends, given the run's
/// record as JSON on stdin (docs/INVENTORY.md, section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// What runs: argv (no shell) and timeout, as for hooks.
    pub command: Command,
    /// The runs it is told about: failures only (the default), or also successes.
    pub on: Vec<NotifyOn>,
}

impl Notify {
    /// Whether a run that succeeded (`ok`) or failed is to be told.
    pub fn wants(&self, ok: bool) -> bool {
        self.on.contains(&NotifyOn::of(ok))
    }
}

/// What a failing pre-freeze hook does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Abort the backup (the default: never archive what was not quiesced).
    #[default]
    Abort,
    /// Go on, and record a warning in the manifest.
    Warn,
}

/// How a service is brought to a consistent state for the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quiesce {
    /// Runs before the freeze (e.g. `hero_proc service pause X`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<Command>,
    /// Runs after the snapshot, whenever `pre` ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<Command>,
    #[serde(default)]
    /// What a failing `pre` hook does to the run.
    pub on_error: OnError,
    /// cgroup (v2 path relative to the cgroup2 mount, or v1 freezer path) whose processes are frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// systemd unit frozen with `systemctl freeze`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Commands run around a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Stops the service before its surfaces are swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Command>,
    /// Starts it again afterwards (also after a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Command>,
    /// Rebuilds derived surfaces after a restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<Command>,
    /// Rewrites a context's name stored inside its data after `--as NEW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rename: Option<Command>,
}

/// A declared schema migration: restoring data of schema `from` runs `run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// The schema this migration upgrades from (to `from + 1`).
    pub from: u32,
    /// The command that migrates the restored data.
    pub run: Command,
}

/// Where the target instance keeps its secrets; only names are ever read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretStore {
    /// A command printing one secret name per line (e.g. `hero_proc secret list`).
    Command(Command),
    /// A file listing one secret name per line (`NAME` or `NAME=value`; values are ignored).
    File(PathBuf),
}

/// One place where a service persists state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Surface {
    /// The name, unique within its service (surfaces) or the inventory (services).
    pub name: String,
    /// Absolute path; for `scope: context` it contains one `{context}` component.
    pub path: PathBuf,
    /// One copy per instance or per context.
    pub scope: Scope,
    /// Source, derived or transient.
    pub class: Class,
    /// Forced snapshot backend (`None`: detected).
    pub snapshot: Option<SnapshotBackend>,
}

impl Surface {
    /// The path of this surface for a context (ignored for instance-scoped surfaces).
    pub fn path_for(&self, context: Option<&str>) -> PathBuf {
        match (self.scope, context) {
            (Scope::Context, Some(ctx)) => self
                .path
                .components()
                .map(|c| if c.as_os_str() == CONTEXT_PLACEHOLDER { Path::new(ctx).to_path_buf() } else { PathBuf::from(c.as_os_str()) })
                .collect(),
            _ => self.path.clone(),
        }
    }

    /// The directory that holds one entry per context, and the rest of the layout after it.
    pub(crate) fn context_layout(&self) -> Option<(PathBuf, PathBuf)> {
        if self.scope != Scope::Context {
            return None;
        }
        let mut parent = PathBuf::new();
        let mut rest = PathBuf::new();
        let mut seen = false;
        for c in self.path.components() {
            if c.as_os_str() == CONTEXT_PLACEHOLDER {
                seen = true;
            } else if seen {
                rest.push(c);
            } else {
                parent.push(c);
            }
        }
        Some((parent, rest))
    }
}

/// A per-context export surface (decisions/D-16): data an instance-scoped store holds for
/// one context, written out by the service's own client at backup time (`export`, into an
/// empty directory) and read back into the target's store after a restore (`import`).
/// It has no path on the target: the archive's copy is staged in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Names the surface in the archive (`services/<svc>/contexts/<ctx>/<name>/`); unique
    /// among the service's surfaces and exports.
    pub name: String,
    /// Fills `{path}` (an empty directory) with the data of `{context}`; runs before the freeze.
    pub export: Command,
    /// Loads `{path}` (the staged copy) into the store as `{context}` (the target's name);
    /// runs after the swap and the start hooks.
    pub import: Command,
}

/// One service of the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The name, unique within its service (surfaces) or the inventory (services).
    pub name: String,
    /// The service's version, as the inventory states it.
    pub version: String,
    /// The service's state schema version.
    pub schema: u32,
    /// Names of secrets the service needs; values are never read or archived.
    pub secrets: Vec<String>,
    /// Where the service keeps state.
    pub surfaces: Vec<Surface>,
    /// Per-context data of an instance-scoped store, carried by its commands (D-16).
    pub exports: Vec<Export>,
    /// Schema migrations the service declares for restores of older data.
    pub migrations: Vec<Migration>,
    /// How the service is made consistent for a backup.
    pub quiesce: Quiesce,
    /// Commands run around a restore.
    pub hooks: Hooks,
}

impl Service {
    /// The surface of this name.
    pub fn surface(&self, name: &str) -> Option<&Surface> {
        self.surfaces.iter().find(|s| s.name == name)
    }

    /// The export of this name.
    pub fn export(&self, name: &str) -> Option<&Export> {
        self.exports.iter().find(|e| e.name == name)
    }
}

/// A validated inventory. Only [`Inventory::load`] and [`Inventory::parse`] make one, so
/// every value has passed every rule; the fields are read through the methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The file it was read from (for messages).
    pub(crate) source: PathBuf,
    /// The instance's name.
    pub(crate) instance: String,
    /// Contexts listed explicitly; `None` means "found on disk".
    pub(crate) contexts: Option<Vec<String>>,
    /// Where the instance's secrets are listed (names only).
    pub(crate) secret_store: Option<SecretStore>,
    /// Where hero-snap keeps journals and locks; must not be on a frozen volume.
    pub(crate) state_dir: Option<PathBuf>,
    /// The command told about backup runs.
    pub(crate) notify: Option<Notify>,
    /// Set by [`Inventory::rerooted`]: the directory every path was placed under.
    pub(crate) root: Option<PathBuf>,
    /// The services, in inventory order.
    pub(crate) services: Vec<Service>,
}

impl Inventory {
    /// The file it was read from (for messages).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Contexts listed explicitly in the file; `None` means "found on disk" ([`Inventory::contexts`]).
    pub fn listed_contexts(&self) -> Option<&[String]> {
        self.contexts.as_deref()
    }

    /// Where the instance's secret names are listed.
    pub fn secret_store(&self) -> Option<&SecretStore> {
        self.secret_store.as_ref()
    }

    /// Where hero-snap keeps journals and locks, if the inventory says.
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
    }

    /// The command told about backup runs (`notify:`), if any.
    pub fn notify(&self) -> Option<&Notify> {
        self.notify.as_ref()
    }

    /// The directory every path was placed under by [`Inventory::rerooted`].
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The services, in inventory order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The service of this name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The same inventory with every path placed under `root` (for restoring onto a
    /// mounted disk, and for tests that lay an instance out in a directory).
    pub fn rerooted(&self, root: &Path) -> Inventory {
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut inv = self.clone();
        inv.root = Some(root.to_path_buf());
        for svc in &mut inv.services {
            for s in &mut svc.surfaces {
                s.path = under(&s.path);
            }
        }
        if let Some(d) = &inv.state_dir {
            inv.state_dir = Some(under(d));
        }
        if let Some(SecretStore::File(f)) = &inv.secret_store {
            inv.secret_store = Some(SecretStore::File(under(f)));
        }
        inv
    }
}
