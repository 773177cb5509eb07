//! Selection: which surfaces (and contexts) of the inventory a backup covers, resolved
//! into jobs and the manifest's skeleton.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::archive::format::{LeftOut, ManifestService, ManifestSurface, SelectionRecord, Warning};
use crate::error::{Error, Result};
use crate::inventory::{Class, Command, Inventory, Scope, Service, Surface};
use crate::outcome::{Outcome, Status};

/// Which part of an instance a run covers. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these services.
    pub services: Vec<String>,
    /// Only these contexts; instance-scoped surfaces are then left out.
    pub contexts: Vec<String>,
    /// Archive derived surfaces too (left out by default: they are rebuildable).
    pub include_derived: bool,
}

impl Selection {
    pub(crate) fn record(&self) -> SelectionRecord {
        SelectionRecord { services: self.services.clone(), contexts: self.contexts.clone(), include_derived: self.include_derived }
    }
}

/// One surface copy to archive.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub service: String,
    pub surface: String,
    pub context: Option<String>,
    /// Where the live data is.
    pub path: PathBuf,
}

/// One export command to run: a service's export surface for one context (D-16).
#[derive(Debug, Clone)]
pub(crate) struct ExportJob {
    pub service: String,
    /// The export's name: its surface name in the archive.
    pub export: String,
    pub context: String,
    pub command: Command,
}

/// What a selection resolves to: the directory jobs, the manifest's services, the
/// warnings and outcomes known so far, and the export commands to run.
pub(crate) struct Selected {
    pub jobs: Vec<Job>,
    pub services: Vec<ManifestService>,
    pub warnings: Vec<Warning>,
    pub outcomes: Vec<Outcome>,
    pub exports: Vec<ExportJob>,
}

/// Resolves a selection against the inventory: the jobs, the manifest skeleton (services
/// with what is in, what is left out and why), and the outcomes of what is left out.
pub(crate) fn select(inv: &Inventory, sel: &Selection) -> Result<Selected> {
    check_selection(inv, sel)?;
    let mut jobs = Vec::new();
    let mut services = Vec::new();
    let mut warnings = Vec::new();
    let mut outcomes = Vec::new();
    let mut exports = Vec::new();
    for svc in &inv.services {
        if !sel.services.is_empty() && !sel.services.contains(&svc.name) {
            continue;
        }
        let mut ms = manifest_service(svc);
        let mut svc_contexts = BTreeSet::new();
        for surface in &svc.surfaces {
            let leave = |reason: String| LeftOut { surface: surface.name.clone(), class: surface.class, reason };
            let mut skip = |reason: &str, status: Status| {
                outcomes.push(Outcome::new(&svc.name, Some(&surface.name), None, status, Some(reason.to_string())));
                ms.left_out.push(leave(reason.to_string()));
            };
            match surface.class {
                Class::Transient => {
                    skip("transient: never archived", Status::Skipped);
                    continue;
                }
                Class::Derived if !sel.include_derived => {
                    skip("derived: rebuildable from sources; pass --include-derived to archive it", Status::Skipped);
                    continue;
                }
                _ => {}
            }
            let contexts: Vec<Option<String>> = match surface.scope {
                Scope::Instance if !sel.contexts.is_empty() => {
                    skip(&instance_left_out(svc), Status::Skipped);
                    continue;
                }
                Scope::Instance => {
                    if !surface.path.is_dir() {
                        warnings.push(surface_missing(&svc.name, surface));
                        // Declared state that is not there is a failure, not a footnote:
                        // the run exits non-zero and says which surface is missing.
                        skip(&format!("{} does not exist on the source", surface.path.display()), Status::Failed);
                        continue;
                    }
                    vec![None]
                }
                Scope::Context => {
                    let found = inv.surface_contexts(surface)?;
                    found.into_iter().filter(|c| sel.contexts.is_empty() || sel.contexts.contains(c)).map(Some).collect()
                }
            };
            let mut msurf = manifest_surface(surface, inv.root.as_deref());
            for ctx in contexts {
                if let Some(c) = &ctx {
                    svc_contexts.insert(c.clone());
                    msurf.contexts.push(c.clone());
                }
                jobs.push(Job { service: svc.name.clone(), surface: surface.name.clone(), path: surface.path_for(ctx.as_deref()), context: ctx });
            }
            if surface.scope == Scope::Context && msurf.contexts.is_empty() {
                skip("no context of the selection has this surface on disk", Status::Skipped);
                continue;
            }
            ms.surfaces.push(msurf);
        }
        add_exports(svc, sel, &mut ms, &mut svc_contexts, &mut exports);
        ms.contexts = svc_contexts.into_iter().collect();
        // A per-context backup carries the services that have the context, and names
        // those whose instance-scoped sources it leaves behind (never silently dropped).
        let leaves_sources = ms.left_out.iter().any(|l| l.class == Class::Source && l.reason.starts_with(INSTANCE_LEFT_OUT));
        if !sel.contexts.is_empty() && ms.surfaces.is_empty() && !leaves_sources {
            continue;
        }
        services.push(ms);
    }
    if jobs.is_empty() && exports.is_empty() {
        return Err(Error::Usage("the selection covers no surface with data on disk; nothing to back up".into()));
    }
    Ok(Selected { jobs, services, warnings, outcomes, exports })
}

fn surface_missing(service: &str, surface: &Surface) -> Warning {
    Warning {
        code: "surface-missing".into(),
        message: format!("{service}.{}: {} does not exist; nothing archived for it", surface.name, surface.path.display()),
    }
}

/// The start of the reason an instance-scoped surface is left out of a per-context backup.
const INSTANCE_LEFT_OUT: &str = "instance-scoped: not part of a per-context backup";

/// Why `svc`'s instance-scoped surfaces are not in a per-context archive, and whether its
/// per-context data travels anyway (by an export) or not at all.
fn instance_left_out(svc: &Service) -> String {
    if svc.exports.is_empty() {
        format!("{INSTANCE_LEFT_OUT}; `{}` declares no export, so none of its data for the selected contexts is in the archive", svc.name)
    } else {
        let names: Vec<&str> = svc.exports.iter().map(|e| e.name.as_str()).collect();
        format!("{INSTANCE_LEFT_OUT}; its per-context data is carried by the export(s) {}", names.join(", "))
    }
}

/// In a per-context backup, one export job per export of `svc` and selected context, and
/// its surface in the manifest (marked `export`, no path). A whole-instance backup runs
/// none: the instance surfaces already hold every context's data (D-16).
fn add_exports(svc: &Service, sel: &Selection, ms: &mut ManifestService, svc_contexts: &mut BTreeSet<String>, exports: &mut Vec<ExportJob>) {
    if sel.contexts.is_empty() {
        return;
    }
    for e in &svc.exports {
        let mut contexts = sel.contexts.clone();
        contexts.sort();
        contexts.dedup();
        for c in &contexts {
            svc_contexts.insert(c.clone());
            exports.push(ExportJob { service: svc.name.clone(), export: e.name.clone(), context: c.clone(), command: e.export.clone() });
        }
        let path = String::new();
        ms.surfaces.push(ManifestSurface {
            name: e.name.clone(),
            scope: Scope::Context,
            class: Class::Source,
            path,
            contexts,
            files: 0,
            bytes: 0,
            export: true,
        });
    }
}

/// Every service and context the selection names must exist.
fn check_selection(inv: &Inventory, sel: &Selection) -> Result<()> {
    for s in &sel.services {
        if inv.service(s).is_none() {
            return Err(Error::Usage(format!(
                "service `{s}` is not in the inventory {}; known services: {}",
                inv.source.display(),
                inv.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let all_contexts = inv.contexts()?;
    for c in &sel.contexts {
        if !all_contexts.contains(c) {
            return Err(Error::Usage(format!(
                "context `{c}` is not found in the instance; contexts found: {}",
                if all_contexts.is_empty() { "none".to_string() } else { all_contexts.join(", ") }
            )));
        }
    }
    Ok(())
}

/// The manifest's entry for `svc`, before its surfaces are counted.
fn manifest_service(svc: &Service) -> ManifestService {
    ManifestService {
        name: svc.name.clone(),
        version: svc.version.clone(),
        schema: svc.schema,
        contexts: Vec::new(),
        surfaces: Vec::new(),
        left_out: Vec::new(),
        secrets: svc.secrets.clone(),
        files: 0,
        bytes: 0,
    }
}

/// The manifest records the inventory's layout, not where --root placed it on this machine.
fn manifest_surface(s: &Surface, root: Option<&Path>) -> ManifestSurface {
    let path = match root.and_then(|r| s.path.strip_prefix(r).ok()) {
        Some(rel) => Path::new("/").join(rel),
        None => s.path.clone(),
    };
    ManifestSurface {
        name: s.name.clone(),
        scope: s.scope,
        class: s.class,
        path: path.display().to_string(),
        contexts: Vec::new(),
        files: 0,
        bytes: 0,
        export: false,
    }
}
