//! Restore pre-flight: from the manifest alone, decide what a restore would write where,
//! and refuse (listing every reason at once) what would not work.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::format::{Manifest, ManifestService, ManifestSurface, MemberKey, NEWEST_FORMAT};
use crate::error::{Error, Result};
use crate::inventory::{Class, Command, Inventory, Scope, SecretStore, Service};

/// Options shared by pre-flight and restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreSelection {
    /// Restore only these services (empty: all in the archive).
    pub services: Vec<String>,
    /// Restore only these contexts (empty: all); instance surfaces are then left alone.
    pub contexts: Vec<String>,
    /// Restore the one selected context under a new name.
    pub rename_to: Option<String>,
    /// Allow replacing data that already exists on the target.
    pub replace: bool,
}

/// One surface of one service. Shown and serialized as `service.surface`; kept as two
/// names because service names may contain dots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SurfaceRef {
    /// The service.
    pub service: String,
    /// The surface.
    pub surface: String,
}

impl std::fmt::Display for SurfaceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.service, self.surface)
    }
}

impl Serialize for SurfaceRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a restore is refused. The kind decides the exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Refusal {
    /// The archive's format is newer than this build reads.
    FormatTooNew {
        /// The archive's format.
        archive: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// A service of the archive does not exist on the target.
    UnknownService {
        /// The service.
        service: String,
    },
    /// A surface of the archive does not exist in the target's service.
    UnknownSurface {
        /// The service.
        service: String,
        /// The surface.
        surface: String,
    },
    /// The archive's schema is newer than the target's (a downgrade).
    SchemaNewer {
        /// The service.
        service: String,
        /// The archive's schema.
        archive: u32,
        /// The target's schema.
        target: u32,
    },
    /// The archive's schema is older and the target declares no migration for a step.
    NoMigration {
        /// The service.
        service: String,
        /// The archive's schema.
        archive: u32,
        /// The target's schema.
        target: u32,
    },
    /// The target already holds data there (and `replace` is off).
    Collision {
        /// The service.
        service: String,
        /// The surface.
        surface: String,
        /// The context on the target, for per-context surfaces.
        context: Option<String>,
        /// The existing target path.
        path: PathBuf,
    },
    /// The target path is a mount point, which a swap by rename cannot replace.
    MountPoint {
        /// The target path.
        path: PathBuf,
    },
    /// The target's secret store lacks secrets the services need: the names the archive's
    /// manifest records for the services restored, and the target inventory's own.
    MissingSecrets {
        /// The missing names.
        names: Vec<String>,
        /// Per missing name, the services that need it.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        needed_by: Vec<String>,
    },
    /// The target's secret store could not be read.
    SecretStore {
        /// Why.
        message: String,
    },
    /// A target filesystem has too little free space.
    NoSpace {
        /// A path on that filesystem.
        path: PathBuf,
        /// Bytes needed, with margin.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A target filesystem has too few free inodes for the files.
    NoInodes {
        /// A path on that filesystem.
        path: PathBuf,
        /// Inodes needed (files, directories, links).
        needed: u64,
        /// Inodes available.
        available: u64,
    },
    /// The selection does not fit the archive.
    Selection {
        /// What is wrong with it.
        message: String,
    },
}

impl Refusal {
    /// Exit code of a pre-flight refused for this kind alone (docs/CLI.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            Refusal::FormatTooNew { .. } => 10,
            Refusal::UnknownService { .. } | Refusal::UnknownSurface { .. } => 11,
            Refusal::SchemaNewer { .. } | Refusal::NoMigration { .. } => 12,
            Refusal::Collision { .. } | Refusal::MountPoint { .. } => 13,
            Refusal::MissingSecrets { .. } | Refusal::SecretStore { .. } => 14,
            Refusal::NoSpace { .. } | Refusal::NoInodes { .. } => 15,
            Refusal::Selection { .. } => 16,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::FormatTooNew { archive, supported } => write!(f, "archive format {archive} is newer than this build reads ({supported}); use a newer hero-snap"),
            Refusal::UnknownService { service } => write!(f, "service `{service}` is in the archive but not in the target inventory; install it on the target, or leave it out with --service"),
            Refusal::UnknownSurface { service, surface } => write!(f, "surface `{service}.{surface}` is in the archive but the target's `{service}` has no such surface; update the target inventory"),
            Refusal::SchemaNewer { service, archive, target } => write!(f, "`{service}`: the archive's schema {archive} is newer than the target's {target}; upgrade `{service}` on the target first (downgrades are refused)"),
            Refusal::NoMigration { service, archive, target } => write!(f, "`{service}`: the archive is at schema {archive}, the target at {target}, and the target declares no migration from schema {archive}"),
            Refusal::Collision { service, surface, context, path } => match context {
                Some(c) => write!(f, "context `{c}` already exists on the target ({service}.{surface} at {}); restore it under another name with --as NEW, or pass --replace", path.display()),
                None => write!(f, "{service}.{surface} already holds data at {}; pass --replace to replace it", path.display()),
            },
            Refusal::MissingSecrets { names, needed_by } => {
                let each: Vec<String> = names.iter().zip(needed_by.iter().map(Some).chain(std::iter::repeat(None))).map(|(n, by)| match by {
                    Some(by) => format!("{n} (for {by})"),
                    None => n.clone(),
                }).collect();
                let set: Vec<String> = names.iter().map(|n| format!("hero_proc secret set {n}")).collect();
                write!(f, "secrets missing on the target: {}; set them before restoring: {}", each.join(", "), set.join("; "))
            }
            Refusal::SecretStore { message } => write!(f, "cannot check the target's secrets: {message}"),
            Refusal::MountPoint { path } => write!(
                f,
                "{}: is a mount point; hero-snap swaps directories by rename and cannot replace a mount point (restore into a directory inside it)",
                path.display()
            ),
            Refusal::NoSpace { path, needed, available } => write!(f, "{}: needs {} bytes with margin, {} available; free space or restore elsewhere", path.display(), needed, available),
            Refusal::NoInodes { path, needed, available } => write!(f, "{}: needs about {} inodes for the files, {} available; free inodes or restore elsewhere", path.display(), needed, available),
            Refusal::Selection { message } => f.write_str(message),
        }
    }
}

/// One surface copy the restore writes.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSurface {
    /// The service.
    pub service: String,
    /// The surface.
    pub surface: String,
    /// Context in the archive.
    pub context: Option<String>,
    /// Context on the target (differs with --as).
    pub target_context: Option<String>,
    /// Where it is restored on the target.
    pub path: PathBuf,
    /// The target path exists already (and will be replaced).
    pub exists: bool,
    /// Bytes of file data the archive holds for it.
    pub bytes: u64,
    /// Regular files the archive holds for it.
    pub files: u64,
}

impl TargetSurface {
    pub(crate) fn key(&self) -> MemberKey {
        MemberKey { service: self.service.clone(), surface: self.surface.clone(), context: self.context.clone() }
    }
}

/// A migration the restore runs.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedMigration {
    /// The service.
    pub service: String,
    /// The archive's schema.
    pub from: u32,
    /// The schema after this step.
    pub to: u32,
    /// The migration command.
    pub argv: Vec<String>,
    #[serde(skip)]
    /// The migration command with its timeout.
    pub command: Command,
}

/// An import the restore runs after the swap and the start hooks: one export surface of
/// the archive for one context, loaded by the target's `import` command (D-16).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedImport {
    /// The service.
    pub service: String,
    /// The export (its surface name in the archive).
    pub export: String,
    /// Context in the archive.
    pub context: String,
    /// Context on the target (differs with --as): the import's `{context}`.
    pub target_context: String,
    /// The import command, before substitution.
    pub argv: Vec<String>,
    #[serde(skip)]
    /// The import command with its timeout.
    pub command: Command,
    /// Where the restore stages the archive's copy (the import's `{path}`): known once the
    /// restore runs, under the state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged: Option<PathBuf>,
}

/// A surface of a restored service whose data is not in the archive (a source left out,
/// e.g. an instance-scoped store of a per-context archive): the restore does not bring it.
#[derive(Debug, Clone, Serialize)]
pub struct NotInArchive {
    /// The service.
    pub service: String,
    /// The surface.
    pub surface: String,
    /// Why the archive does not hold it (the manifest's `left_out` reason).
    pub reason: String,
}

/// What a restore would do.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    /// The target instance.
    pub instance: String,
    /// Every surface restored, with its target path.
    pub surfaces: Vec<TargetSurface>,
    /// Schema migrations, in the order they run.
    pub migrations: Vec<PlannedMigration>,
    /// Derived surfaces not in the archive: they need rebuilding after the restore.
    pub rebuild_pending: Vec<SurfaceRef>,
    /// Services whose stop/start hooks run around the swap.
    pub services: Vec<String>,
    /// Imports of export surfaces, run after the start hooks, in this order.
    pub imports: Vec<PlannedImport>,
    /// Sources of the selected services that the archive does not hold.
    pub not_in_archive: Vec<NotInArchive>,
}

/// Checks a manifest against the target inventory. Returns the plan, or every refusal.
pub(crate) fn check(manifest: &Manifest, target: &Inventory, sel: &RestoreSelection) -> Result<RestorePlan> {
    let mut refusals = Vec::new();
    if manifest.format > NEWEST_FORMAT {
        refusals.push(Refusal::FormatTooNew { archive: manifest.format, supported: NEWEST_FORMAT });
        return Err(Error::Preflight(refusals));
    }
    refusals.extend(selection_refusals(manifest, sel));

    let mut plan = RestorePlan {
        instance: manifest.instance.clone(),
        surfaces: Vec::new(),
        migrations: Vec::new(),
        rebuild_pending: Vec::new(),
        services: Vec::new(),
        imports: Vec::new(),
        not_in_archive: Vec::new(),
    };
    // Secret name -> the services that need it, from the archive and from the target.
    let mut secrets_needed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ms in &manifest.services {
        if !sel.services.is_empty() && !sel.services.contains(&ms.name) {
            continue;
        }
        let Some(ts) = target.service(&ms.name) else {
            // Only a refusal if the selection would restore something of it.
            let wanted = ms.surfaces.iter().any(|s| surface_selected(s.scope, &s.contexts, sel));
            if wanted {
                refusals.push(Refusal::UnknownService { service: ms.name.clone() });
            }
            continue;
        };
        let touched = plan_surfaces(ms, ts, sel, &mut plan, &mut refusals);
        let sources_left_out = ms.left_out.iter().filter(|l| l.class == Class::Source);
        plan.not_in_archive.extend(sources_left_out.map(|l| NotInArchive { service: ms.name.clone(), surface: l.surface.clone(), reason: l.reason.clone() }));
        // Derived surfaces the archive left out must be rebuilt on the target.
        for s in &ts.surfaces {
            if s.class == Class::Derived && ms.left_out.iter().any(|l| l.surface == s.name) {
                plan.rebuild_pending.push(SurfaceRef { service: ms.name.clone(), surface: s.name.clone() });
            }
        }
        if !touched {
            continue;
        }
        plan.services.push(ms.name.clone());
        for name in ms.secrets.iter().chain(&ts.secrets) {
            secrets_needed.entry(name.clone()).or_default().insert(ms.name.clone());
        }
        plan_migrations(ms, ts, &mut plan, &mut refusals);
    }
    if plan.surfaces.is_empty() && refusals.is_empty() {
        refusals.push(Refusal::Selection { message: "the selection restores nothing from this archive".into() });
    }

    if !secrets_needed.is_empty() {
        match secret_names(target) {
            Ok(have) => {
                let missing: Vec<(&String, &BTreeSet<String>)> = secrets_needed.iter().filter(|(n, _)| !have.contains(*n)).collect();
                if !missing.is_empty() {
                    let names = missing.iter().map(|(n, _)| (*n).clone()).collect();
                    let needed_by = missing.iter().map(|(_, s)| s.iter().cloned().collect::<Vec<_>>().join(", ")).collect();
                    refusals.push(Refusal::MissingSecrets { names, needed_by });
                }
            }
            Err(message) => refusals.push(Refusal::SecretStore { message }),
        }
    }

    refusals.extend(space_shortfalls(&plan.surfaces));

    if refusals.is_empty() {
        Ok(plan)
    } else {
        Err(Error::Preflight(refusals))
    }
}

/// What the selection asks for that the archive does not hold, or cannot do.
fn selection_refusals(manifest: &Manifest, sel: &RestoreSelection) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    for s in &sel.services {
        if manifest.service(s).is_none() {
            refusals.push(Refusal::Selection {
                message: format!(
                    "service `{s}` is not in the archive (it holds: {})",
                    manifest.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let archived_contexts: BTreeSet<&str> = manifest.services.iter().flat_map(|s| s.contexts.iter().map(String::as_str)).collect();
    for c in &sel.contexts {
        if !archived_contexts.contains(c.as_str()) {
            refusals.push(Refusal::Selection {
                message: format!("context `{c}` is not in the archive (it holds: {})", archived_contexts.iter().copied().collect::<Vec<_>>().join(", ")),
            });
        }
    }
    if let Some(new) = &sel.rename_to {
        if sel.contexts.len() != 1 {
            refusals.push(Refusal::Selection { message: "--as renames one context: select exactly one with --context".into() });
        }
        if !crate::inventory::valid_name(new) {
            refusals.push(Refusal::Selection { message: format!("`{new}` is not a valid context name") });
        }
    }
    refusals
}

/// The target of every selected copy of `ms`'s surfaces; whether any was selected.
fn plan_surfaces(ms: &ManifestService, ts: &Service, sel: &RestoreSelection, plan: &mut RestorePlan, refusals: &mut Vec<Refusal>) -> bool {
    let mut touched = false;
    for s in &ms.surfaces {
        if !surface_selected(s.scope, &s.contexts, sel) {
            continue;
        }
        if s.export {
            touched |= plan_imports(ms, ts, s, sel, plan, refusals);
            continue;
        }
        let Some(tsurf) = ts.surface(&s.name) else {
            refusals.push(Refusal::UnknownSurface { service: ms.name.clone(), surface: s.name.clone() });
            continue;
        };
        if tsurf.scope != s.scope {
            refusals.push(Refusal::UnknownSurface { service: ms.name.clone(), surface: format!("{} (scope differs)", s.name) });
            continue;
        }
        let copies: Vec<Option<String>> = match s.scope {
            Scope::Instance => vec![None],
            Scope::Context => s.contexts.iter().filter(|c| sel.contexts.is_empty() || sel.contexts.contains(c)).cloned().map(Some).collect(),
        };
        for ctx in copies {
            let target_ctx = match (&ctx, &sel.rename_to) {
                (Some(_), Some(new)) => Some(new.clone()),
                (c, _) => c.clone(),
            };
            let path = tsurf.path_for(target_ctx.as_deref());
            let exists = std::fs::symlink_metadata(&path).is_ok();
            if exists && !sel.replace && !is_empty_dir(&path) {
                refusals.push(Refusal::Collision { service: ms.name.clone(), surface: s.name.clone(), context: target_ctx.clone(), path: path.clone() });
            }
            if exists && is_mount_point(&path) {
                refusals.push(Refusal::MountPoint { path: path.clone() });
            }
            touched = true;
            plan.surfaces.push(TargetSurface {
                service: ms.name.clone(),
                surface: s.name.clone(),
                context: ctx,
                target_context: target_ctx,
                path,
                exists,
                bytes: s.bytes / (s.contexts.len().max(1) as u64),
                files: s.files / (s.contexts.len().max(1) as u64),
            });
        }
    }
    touched
}

/// The imports of an export surface `s` of the archive: one per selected context; the
/// target must declare the same export (else the refusal for an unknown surface).
fn plan_imports(ms: &ManifestService, ts: &Service, s: &ManifestSurface, sel: &RestoreSelection, plan: &mut RestorePlan, refusals: &mut Vec<Refusal>) -> bool {
    let Some(export) = ts.export(&s.name) else {
        refusals.push(Refusal::UnknownSurface { service: ms.name.clone(), surface: format!("{} (an export: declare it under exports)", s.name) });
        return false;
    };
    let mut touched = false;
    for ctx in s.contexts.iter().filter(|c| sel.contexts.is_empty() || sel.contexts.contains(c)) {
        let target_context = sel.rename_to.clone().unwrap_or_else(|| ctx.clone());
        plan.imports.push(PlannedImport {
            service: ms.name.clone(),
            export: s.name.clone(),
            context: ctx.clone(),
            target_context,
            argv: export.import.argv.clone(),
            command: export.import.clone(),
            staged: None,
        });
        touched = true;
    }
    touched
}

/// One migration per schema step from the archive's schema up to the target's.
fn plan_migrations(ms: &ManifestService, ts: &Service, plan: &mut RestorePlan, refusals: &mut Vec<Refusal>) {
    if ms.schema > ts.schema {
        refusals.push(Refusal::SchemaNewer { service: ms.name.clone(), archive: ms.schema, target: ts.schema });
    } else if ms.schema < ts.schema {
        // One step per schema: from the archive's up to the target's.
        for from in ms.schema..ts.schema {
            match ts.migrations.iter().find(|m| m.from == from) {
                Some(m) => {
                    plan.migrations.push(PlannedMigration { service: ms.name.clone(), from, to: from + 1, argv: m.run.argv.clone(), command: m.run.clone() })
                }
                None => {
                    refusals.push(Refusal::NoMigration { service: ms.name.clone(), archive: ms.schema, target: ts.schema });
                    break;
                }
            }
        }
    }
}

fn surface_selected(scope: Scope, contexts: &[String], sel: &RestoreSelection) -> bool {
    match scope {
        Scope::Instance => sel.contexts.is_empty(),
        Scope::Context => sel.contexts.is_empty() || contexts.iter().any(|c| sel.contexts.contains(c)),
    }
}

/// Whether `path` is the root of a filesystem mounted on its parent's: a restore swaps
/// directories by rename, which cannot replace a mount point.
pub(crate) fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    match (dev(path), path.parent().map(dev)) {
        (Ok(own), Some(Ok(parent))) => own != parent,
        _ => false,
    }
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Secret names present in the target's secret store.
fn secret_names(target: &Inventory) -> std::result::Result<BTreeSet<String>, String> {
    let text = match &target.secret_store {
        None => {
            return Err(format!(
                "the target inventory {} declares no `secret_store`; declare one (a command or a file listing secret names)",
                target.source.display()
            ))
        }
        Some(SecretStore::File(path)) => std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?,
        Some(SecretStore::Command(cmd)) => crate::hooks::run(cmd, &[]).map_err(|e| e.to_string())?,
    };
    Ok(text.lines().map(|l| l.split('=').next().unwrap_or("").trim().to_string()).filter(|n| !n.is_empty() && !n.starts_with('#')).collect())
}

/// Filesystems that would not hold what the restore writes, in bytes or in inodes.
fn space_shortfalls(surfaces: &[TargetSurface]) -> Vec<Refusal> {
    // Group by the filesystem of the nearest existing ancestor: (a path on it, bytes, files).
    let mut per_fs: BTreeMap<u64, (PathBuf, u64, u64)> = BTreeMap::new();
    for s in surfaces {
        let mut probe = s.path.as_path();
        while std::fs::metadata(probe).is_err() {
            match probe.parent() {
                Some(p) => probe = p,
                None => break,
            }
        }
        let Ok(meta) = std::fs::metadata(probe) else { continue };
        let e = per_fs.entry(meta.dev()).or_insert((probe.to_path_buf(), 0, 0));
        e.1 += s.bytes;
        e.2 += s.files;
    }
    let mut out = Vec::new();
    for (_, (path, bytes, files)) in per_fs {
        let Ok(st) = nix::sys::statvfs::statvfs(&path) else { continue };
        // Every file takes whole blocks: with many small files the rounding outweighs the
        // bytes (a million 400-byte files take 4 GB of 4 KiB blocks). Then 10 % for
        // metadata and 64 MiB of head room.
        let block = st.fragment_size().max(512);
        let needed = bytes + files.saturating_mul(block) + bytes / 10 + (64 << 20);
        let available = st.blocks_available() * st.fragment_size();
        if available < needed {
            out.push(Refusal::NoSpace { path: path.clone(), needed, available });
        }
        // Filesystems without an inode limit (btrfs, ZFS) report none in use and none free.
        let inodes_needed = files + files / 10 + 1000;
        if st.files() > 0 && st.files_available() < inodes_needed {
            out.push(Refusal::NoInodes { path, needed: inodes_needed, available: st.files_available() });
        }
    }
    out
}
