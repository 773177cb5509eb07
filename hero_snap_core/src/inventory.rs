//! The inventory: what state an instance keeps, where, and how to treat it.
//!
//! An inventory is a YAML file (`format: 1`, documented in docs/INVENTORY.md). Parsing
//! keeps YAML locations so that every validation error names the file, the line, the
//! field and the fix. The validated model ([`Inventory`]) is what the rest of the crate
//! works on; it never holds a half-checked value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::error::{Error, Result};

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

fn default_timeout() -> u64 {
    60
}

impl Command {
    /// `timeout_secs` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
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
            (Scope::Context, Some(ctx)) => {
                self.path.components().map(|c| {
                    if c.as_os_str() == CONTEXT_PLACEHOLDER { Path::new(ctx).to_path_buf() } else { PathBuf::from(c.as_os_str()) }
                }).collect()
            }
            _ => self.path.clone(),
        }
    }

    /// The directory that holds one entry per context, and the rest of the layout after it.
    fn context_layout(&self) -> Option<(PathBuf, PathBuf)> {
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
}

/// A validated inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    /// The instance's name.
    pub instance: String,
    /// Contexts listed explicitly; `None` means "found on disk".
    pub contexts: Option<Vec<String>>,
    /// Where the instance's secrets are listed (names only).
    pub secret_store: Option<SecretStore>,
    /// Where hero-snap keeps journals and locks; must not be on a frozen volume.
    pub state_dir: Option<PathBuf>,
    /// Set by [`Inventory::rerooted`]: the directory every path was placed under.
    pub root: Option<PathBuf>,
    /// The services, in inventory order.
    pub services: Vec<Service>,
}

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInventory {
    format: Spanned<u32>,
    instance: Spanned<String>,
    #[serde(default)]
    contexts: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    secret_store: Option<SecretStore>,
    #[serde(default)]
    state_dir: Option<Spanned<String>>,
    services: BTreeMap<String, Spanned<FileService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    version: Spanned<String>,
    schema: u32,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    surfaces: Vec<Spanned<FileSurface>>,
    #[serde(default)]
    migrations: Vec<Spanned<Migration>>,
    #[serde(default)]
    quiesce: Quiesce,
    #[serde(default)]
    hooks: Hooks,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSurface {
    name: Spanned<String>,
    path: Spanned<String>,
    scope: Spanned<String>,
    class: Spanned<String>,
    #[serde(default)]
    snapshot: Option<SnapshotBackend>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; kept so the field is accepted
    description: Option<String>,
}

/// Names of services, surfaces, contexts and secrets: safe as one path component and in YAML.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.starts_with('-')
}

impl Inventory {
    /// Reads and validates an inventory file.
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path, "reading the inventory"))?;
        Inventory::parse(&text, path)
    }

    /// Parses and validates inventory text; `source` is only used in messages.
    pub fn parse(text: &str, source: &Path) -> Result<Inventory> {
        let err = |line: u64, field: &str, message: String| Error::Inventory {
            file: source.to_path_buf(),
            line,
            field: field.to_string(),
            message,
        };
        let file: FileInventory = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("").to_string();
            let hint = if first.contains("unknown field") {
                "; remove it or check its spelling against docs/INVENTORY.md"
            } else if first.contains("missing field") {
                "; add it (docs/INVENTORY.md lists the required fields)"
            } else {
                ""
            };
            err(line, "(document)", format!("{first}{hint}"))
        })?;

        if file.format.value != INVENTORY_FORMAT {
            return Err(err(
                file.format.referenced.line(),
                "format",
                format!(
                    "inventory format {} is not supported; this build reads format {INVENTORY_FORMAT} (upgrade hero-snap, or rewrite the file)",
                    file.format.value
                ),
            ));
        }
        if !valid_name(&file.instance.value) {
            return Err(err(file.instance.referenced.line(), "instance", format!(
                "`{}` is not a valid instance name; use letters, digits, `_`, `-`, `.`", file.instance.value)));
        }
        let contexts = match file.contexts {
            None => None,
            Some(list) => {
                let mut seen = BTreeSet::new();
                for c in &list {
                    if !valid_name(&c.value) {
                        return Err(err(c.referenced.line(), "contexts", format!(
                            "`{}` is not a valid context name; use letters, digits, `_`, `-`, `.`", c.value)));
                    }
                    if !seen.insert(c.value.clone()) {
                        return Err(err(c.referenced.line(), "contexts", format!("context `{}` is listed twice; remove one", c.value)));
                    }
                }
                Some(list.into_iter().map(|c| c.value).collect())
            }
        };
        let state_dir = match file.state_dir {
            None => None,
            Some(s) => {
                let p = PathBuf::from(&s.value);
                if !p.is_absolute() {
                    return Err(err(s.referenced.line(), "state_dir", format!("`{}` is relative; write an absolute path", s.value)));
                }
                Some(p)
            }
        };

        let mut services = Vec::new();
        // (path, service, surface, line) of every surface, for the overlap rule.
        let mut claimed: Vec<(PathBuf, String, String, u64)> = Vec::new();
        if file.services.is_empty() {
            return Err(err(0, "services", "no services are declared; declare at least one".into()));
        }
        for (svc_name, svc) in file.services {
            let line = svc.referenced.line();
            let svc = svc.value;
            let field = |f: &str| format!("services.{svc_name}.{f}");
            if !valid_name(&svc_name) {
                return Err(err(line, &format!("services.{svc_name}"), "not a valid service name; use letters, digits, `_`, `-`, `.`".into()));
            }
            if svc.version.value.trim().is_empty() {
                return Err(err(svc.version.referenced.line(), &field("version"), "is empty; write the service's version".into()));
            }
            let mut secrets = Vec::new();
            for s in svc.secrets {
                if !valid_name(&s.value) {
                    return Err(err(s.referenced.line(), &field("secrets"), format!("`{}` is not a valid secret name", s.value)));
                }
                secrets.push(s.value);
            }
            if svc.surfaces.is_empty() {
                return Err(err(line, &field("surfaces"), "no surfaces declared; declare where the service keeps its state".into()));
            }
            let mut surfaces: Vec<Surface> = Vec::new();
            for (i, s) in svc.surfaces.into_iter().enumerate() {
                let s = s.value;
                let f = |name: &str| field(&format!("surfaces[{i}].{name}"));
                if !valid_name(&s.name.value) {
                    return Err(err(s.name.referenced.line(), &f("name"), format!(
                        "`{}` is not a valid surface name; use letters, digits, `_`, `-`, `.`", s.name.value)));
                }
                if surfaces.iter().any(|o| o.name == s.name.value) {
                    return Err(err(s.name.referenced.line(), &f("name"), format!(
                        "duplicate surface `{}` in service `{svc_name}`; give each surface its own name", s.name.value)));
                }
                let scope = match s.scope.value.as_str() {
                    "instance" => Scope::Instance,
                    "context" => Scope::Context,
                    other => {
                        return Err(err(s.scope.referenced.line(), &f("scope"), format!(
                            "unknown scope `{other}`; use `instance` (one copy per instance) or `context` (one copy per context)")))
                    }
                };
                let class = match s.class.value.as_str() {
                    "source" => Class::Source,
                    "derived" => Class::Derived,
                    "transient" => Class::Transient,
                    other => {
                        return Err(err(s.class.referenced.line(), &f("class"), format!(
                            "unknown class `{other}`; use `source`, `derived` or `transient`")))
                    }
                };
                let pline = s.path.referenced.line();
                let path = PathBuf::from(&s.path.value);
                if !path.is_absolute() {
                    return Err(err(pline, &f("path"), format!("`{}` is relative; write an absolute path", s.path.value)));
                }
                if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) || s.path.value.contains("//") {
                    return Err(err(pline, &f("path"), format!("`{}` contains `.`, `..` or `//`; write the path in its plain form", s.path.value)));
                }
                if path == Path::new("/") {
                    return Err(err(pline, &f("path"), "`/` cannot be a surface; name the service's own directory".into()));
                }
                let placeholders = path.components().filter(|c| c.as_os_str() == CONTEXT_PLACEHOLDER).count();
                let stray = s.path.value.matches(CONTEXT_PLACEHOLDER).count() != placeholders;
                match scope {
                    Scope::Context if placeholders != 1 || stray => {
                        return Err(err(pline, &f("path"), format!(
                            "a per-context surface needs exactly one `{CONTEXT_PLACEHOLDER}` as a whole path component, e.g. `/var/lib/hero/{svc_name}/{CONTEXT_PLACEHOLDER}/{}`", s.name.value)));
                    }
                    Scope::Instance if placeholders > 0 || stray => {
                        return Err(err(pline, &f("path"), format!(
                            "an instance surface cannot contain `{CONTEXT_PLACEHOLDER}`; set `scope: context` or remove the placeholder")));
                    }
                    _ => {}
                }
                if path.components().nth(1).is_some_and(|c| c.as_os_str() == CONTEXT_PLACEHOLDER) {
                    return Err(err(pline, &f("path"), "`{context}` cannot be the first component; put the contexts in a directory of their own".into()));
                }
                for (other, osvc, osurf, oline) in &claimed {
                    if paths_overlap(other, &path) {
                        return Err(err(pline, &f("path"), format!(
                            "`{}` overlaps `{}` of surface `{osvc}.{osurf}` (line {oline}); a path can belong to one surface only: move one, or narrow it",
                            path.display(), other.display())));
                    }
                }
                claimed.push((path.clone(), svc_name.clone(), s.name.value.clone(), pline));
                surfaces.push(Surface { name: s.name.value, path, scope, class, snapshot: s.snapshot });
            }
            let mut migrations: Vec<Migration> = Vec::new();
            for m in svc.migrations {
                let mline = m.referenced.line();
                let m = m.value;
                if m.from >= svc.schema {
                    return Err(err(mline, &field("migrations"), format!(
                        "a migration from schema {} cannot apply to a service at schema {}; migrations go from older schemas only", m.from, svc.schema)));
                }
                if migrations.iter().any(|o| o.from == m.from) {
                    return Err(err(mline, &field("migrations"), format!("two migrations from schema {}; keep one", m.from)));
                }
                if m.run.argv.is_empty() {
                    return Err(err(mline, &field("migrations"), "the migration's `argv` is empty".into()));
                }
                migrations.push(m);
            }
            for (hook, cmd) in [("quiesce.pre", &svc.quiesce.pre), ("quiesce.post", &svc.quiesce.post),
                ("hooks.stop", &svc.hooks.stop), ("hooks.start", &svc.hooks.start),
                ("hooks.rebuild", &svc.hooks.rebuild), ("hooks.rename", &svc.hooks.rename)] {
                if cmd.as_ref().is_some_and(|c| c.argv.is_empty()) {
                    return Err(err(line, &field(hook), "`argv` is empty; give the program to run".into()));
                }
            }
            services.push(Service {
                name: svc_name,
                version: svc.version.value,
                schema: svc.schema,
                secrets,
                surfaces,
                migrations,
                quiesce: svc.quiesce,
                hooks: svc.hooks,
            });
        }

        Ok(Inventory {
            source: source.to_path_buf(),
            instance: file.instance.value,
            contexts,
            secret_store: file.secret_store,
            state_dir,
            root: None,
            services,
        })
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

    /// The contexts of the instance: the explicit list, or every name found on disk in a
    /// per-context layout (a directory entry whose layout path exists).
    pub fn contexts(&self) -> Result<Vec<String>> {
        if let Some(list) = &self.contexts {
            return Ok(list.clone());
        }
        let mut found = BTreeSet::new();
        for svc in &self.services {
            for s in &svc.surfaces {
                found.extend(discover_contexts(s)?);
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Contexts present on disk for one surface.
    pub fn surface_contexts(&self, surface: &Surface) -> Result<Vec<String>> {
        let found = discover_contexts(surface)?;
        Ok(match &self.contexts {
            Some(list) => found.into_iter().filter(|c| list.contains(c)).collect(),
            None => found,
        })
    }
}

fn discover_contexts(surface: &Surface) -> Result<Vec<String>> {
    let Some((parent, rest)) = surface.context_layout() else { return Ok(Vec::new()) };
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&parent, "listing contexts")(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io(&parent, "listing contexts"))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !valid_name(&name) {
            continue;
        }
        let candidate = parent.join(&name).join(&rest);
        if std::fs::symlink_metadata(&candidate).is_ok_and(|m| m.is_dir()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// True when one path is a prefix of the other, `{context}` matching any one component.
fn paths_overlap(a: &Path, b: &Path) -> bool {
    a.components().zip(b.components()).all(|(x, y)| {
        x == y || x.as_os_str() == CONTEXT_PLACEHOLDER || y.as_os_str() == CONTEXT_PLACEHOLDER
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rules() {
        assert!(paths_overlap(Path::new("/a/b"), Path::new("/a/b/c")));
        assert!(paths_overlap(Path::new("/a/{context}/x"), Path::new("/a/shared/x/y")));
        assert!(!paths_overlap(Path::new("/a/{context}/x"), Path::new("/a/shared/y")));
        assert!(!paths_overlap(Path::new("/a/b"), Path::new("/a/c")));
    }

    #[test]
    fn path_for_context() {
        let s = Surface { name: "f".into(), path: "/v/{context}/files".into(), scope: Scope::Context, class: Class::Source, snapshot: None };
        assert_eq!(s.path_for(Some("geomind")), PathBuf::from("/v/geomind/files"));
        assert_eq!(s.context_layout(), Some((PathBuf::from("/v"), PathBuf::from("files"))));
    }
}

/// One row of the state-surface table (`hero-snap inventory`).
#[derive(Debug, Clone, Serialize)]
pub struct SurfaceRow {
    /// The service.
    pub service: String,
    /// The surface.
    pub surface: String,
    /// The surface's path (with `{context}` for per-context surfaces).
    pub path: String,
    /// One copy per instance or per context.
    pub scope: Scope,
    /// Source, derived or transient.
    pub class: Class,
    /// Contexts that have this surface on disk (per-context surfaces).
    pub contexts: Vec<String>,
    /// Whether anything of it exists on disk.
    pub present: bool,
    /// Regular files on disk.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

impl Inventory {
    /// The state-surface table with live sizes.
    pub fn table(&self) -> Result<Vec<SurfaceRow>> {
        let never = crate::progress::Cancel::new();
        let mut rows = Vec::new();
        for svc in &self.services {
            for s in &svc.surfaces {
                let contexts = self.surface_contexts(s)?;
                let paths: Vec<PathBuf> = match s.scope {
                    Scope::Instance => vec![s.path.clone()],
                    Scope::Context => contexts.iter().map(|c| s.path_for(Some(c))).collect(),
                };
                let (mut files, mut bytes, mut present) = (0, 0, false);
                for p in paths.iter().filter(|p| p.is_dir()) {
                    present = true;
                    let (f, b) = crate::archive::write::count_tree(p, &never)?;
                    files += f;
                    bytes += b;
                }
                rows.push(SurfaceRow {
                    service: svc.name.clone(),
                    surface: s.name.clone(),
                    path: s.path.display().to_string(),
                    scope: s.scope,
                    class: s.class,
                    contexts,
                    present,
                    files,
                    bytes,
                });
            }
        }
        Ok(rows)
    }
}
