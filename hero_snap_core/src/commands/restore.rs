//! `restore`: pre-flight, extract into staging, verify, stop the services, swap in, migrate,
//! start them again; all or nothing.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::chain::read_ancestors;
use crate::archive::read::read_archive;
use crate::archive::{Ancestors, Decryption, Manifest};
use crate::error::{Error, Result};
use crate::hooks;
use crate::inventory::Inventory;
use crate::outcome::{self, Outcome, Status};
use crate::progress::{Cancel, Event, Progress};
use crate::restore::extract::Extractor;
use crate::restore::imports::{label, run_journaled, PendingImport};
use crate::restore::swap::{complete, rollback, swap_in, Phase};
use crate::restore::{RestorePlan, RestoreSelection, SurfaceRef};
use crate::state::{self, failpoint, Lock};

/// Options of [`restore`].
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// What to restore, under which names, and whether existing data may be replaced.
    pub selection: RestoreSelection,
    /// Keep the replaced data beside the target (`.hero-snap-<run>.old/`) instead of deleting it.
    pub keep_old: bool,
    /// Where the journal goes; defaults to the inventory's `state_dir`, then /var/lib/hero-snap.
    pub state_dir: Option<PathBuf>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The archive's manifest.
    pub manifest: Manifest,
    /// What the pre-flight decided: the surfaces, their targets, the migrations.
    pub plan: RestorePlan,
    /// Regular files restored.
    pub files: u64,
    /// Bytes of file data restored.
    pub bytes: u64,
    /// Replaced data kept with --keep-old.
    pub kept_old: Vec<PathBuf>,
    /// Derived surfaces still to be rebuilt (no rebuild hook, or it failed).
    pub rebuild_pending: Vec<SurfaceRef>,
    /// Hooks that failed after the commit (start, rebuild); each is also a failed outcome.
    pub warnings: Vec<String>,
    /// One result per surface of the archive (restored, skipped and why) and per service
    /// whose start or rebuild hook failed after the commit.
    pub outcomes: Vec<Outcome>,
}

impl RestoreReport {
    /// Whether something did not come back as it should (see [`RestoreReport::outcomes`]).
    /// The restored data is committed either way.
    pub fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| o.status == Status::Failed)
    }
}

/// Streams an archive into the target instance, all or nothing.
///
/// A cancel before the swap is committed rolls everything back (the target is as it
/// was) and returns [`Error::Cancelled`]; after the commit the restore completes. An
/// incremental archive is refused, naming its parent: see [`restore_chain`].
pub fn restore(
    input: impl Read,
    keys: &Decryption,
    target: &Inventory,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreReport> {
    restore_chain(input, &mut Ancestors::none(), keys, target, opts, progress, cancel)
}

/// [`restore`] of an archive that may be an incremental: its ancestors come from
/// `ancestors`, each read once, newest first, after the archive itself. Every file is
/// checked against the newest archive's index, and each ancestor against the hashes its
/// child names; a missing, damaged or substituted one is refused before any swap.
pub fn restore_chain(
    input: impl Read,
    ancestors: &mut Ancestors,
    keys: &Decryption,
    target: &Inventory,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreReport> {
    let state = state::state_dir(opts.state_dir.as_deref(), Some(target));
    // One run at a time per state directory: a backup's snapshots or another restore's swaps.
    let mut lock_warnings = Vec::new();
    let _lock = Lock::acquire(&state, &mut lock_warnings)?;
    failpoint("restore-locked");
    let run = state::run_id();
    let mut ex = Extractor::new(target, &opts.selection, opts.keep_old, &run, &state, progress)?;
    let outcome = read_archive(input, keys, &mut ex, cancel).and_then(|newest| read_ancestors(&mut ex, newest, ancestors, keys, cancel));
    let outcome = match outcome.and_then(|o| ex.finish_extraction().map(|_| o)) {
        Ok(o) => o,
        Err(e) => {
            ex.discard();
            return Err(cancel.explain(e));
        }
    };
    failpoint("restore-extracted");
    let Some(plan) = ex.plan.take() else {
        // read_archive refuses an archive without a manifest first; this is only defence.
        ex.discard();
        return Err(Error::Corrupt("the archive has no manifest".into()));
    };
    let mut warnings = Vec::new();

    // Stop the affected services, swap, migrate; undo everything on a failure.
    progress.event(&Event::Phase { phase: "swap".into() });
    let mut stopped = Vec::new();
    let result = swap_in_place(&mut ex, target, opts, &plan, &state, &mut stopped, progress, cancel);
    if let Err(e) = result {
        let undo = rollback(&ex.journal);
        ex.journal.remove(&state);
        start_services(target, &stopped, &mut warnings);
        return Err(match undo {
            Ok(()) if cancel.is_cancelled() => Error::Cancelled,
            Ok(()) => Error::command_caused(format!("restore failed and was rolled back; the target is as it was: {e}"), e),
            Err(u) => Error::command(format!("restore failed ({e}) and the rollback failed too ({u}); run `hero-snap gc` and check the targets")),
        });
    }
    ex.journal.phase = Phase::Committed;
    ex.journal.imports = PendingImport::from_plan(&plan.imports);
    ex.journal.save(&state)?;
    failpoint("restore-after-commit");
    let kept_old = complete(&ex.journal);
    failpoint("restore-completed");
    let not_started = start_services(target, &stopped, &mut warnings);
    // Started: a kill from here on must not have `gc` run the start hooks again.
    ex.journal.stopped.clear();
    let _ = ex.journal.save(&state);
    // The journal stays until the imports have run: `gc` runs the owed ones after a kill.
    let imported = run_journaled(&mut ex.journal, &state);
    for o in imported.iter().filter(|o| o.status == Status::Failed) {
        warnings.push(format!("{}: {}", label(o), o.reason.as_deref().unwrap_or_default()));
    }
    ex.journal.remove(&state);

    let (mut outcomes, rebuild_pending) = rebuild_derived(target, &plan, &mut warnings);
    outcomes.extend(imported);
    outcomes.extend(archive_outcomes(&outcome.manifest, &plan));
    for (name, why) in not_started {
        outcomes.push(Outcome::new(&name, None, None, Status::Failed, Some(why)));
    }
    outcome::sort(&mut outcomes);
    for o in &outcomes {
        progress.event(&Event::Outcome(o.clone()));
    }
    Ok(RestoreReport { manifest: outcome.manifest, plan, files: ex.files, bytes: ex.bytes, kept_old, rebuild_pending, warnings, outcomes })
}

/// Stops the affected services, swaps every stage in, runs the migrations and rename
/// hooks. The caller rolls back on an error.
#[allow(clippy::too_many_arguments)]
fn swap_in_place(
    ex: &mut Extractor<'_>,
    target: &Inventory,
    opts: &RestoreOptions,
    plan: &RestorePlan,
    state: &Path,
    stopped: &mut Vec<String>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<()> {
    // On the staged data, before anything is stopped or swapped: a failure leaves the
    // target untouched and the services running.
    progress.event(&Event::Phase { phase: "migrate".into() });
    migrate_staged(ex, plan)?;
    for name in &plan.services {
        let Some(svc) = target.service(name) else { continue };
        if let Some(stop) = &svc.hooks.stop {
            // Journaled first: if this process dies, `gc` starts the service again.
            if let Some(start) = &svc.hooks.start {
                ex.journal.stopped.push((name.clone(), start.clone()));
                ex.journal.save(state)?;
            }
            hooks::run(stop, &[("service", name)])?;
            stopped.push(name.clone());
        }
    }
    failpoint("restore-services-stopped");
    cancel.check()?;
    ex.journal.phase = Phase::Swapping;
    ex.journal.save(state)?;
    failpoint("restore-swapping");
    for i in 0..ex.journal.swaps.len() {
        swap_in(&mut ex.journal.swaps[i])?;
        failpoint("restore-between-swaps");
    }
    failpoint("restore-swapped");
    if let (Some(new), Some(old)) = (&opts.selection.rename_to, opts.selection.contexts.first()) {
        for name in &plan.services {
            if let Some(rename) = target.service(name).and_then(|s| s.hooks.rename.as_ref()) {
                hooks::run(rename, &[("service", name), ("context", old), ("new_context", new)])?;
            }
        }
    }
    Ok(())
}

/// Runs the migrations on the staged trees, one per schema step, oldest first: once per
/// context of the service's restored context-scoped surfaces (once, with `{context}`
/// empty, when it has none), with `{context}` (the target's name) and `{path:SURFACE}`,
/// the staged tree of each of the service's surfaces in that run (instance-scoped ones in
/// every run). Then the staged trees are synced again.
fn migrate_staged(ex: &Extractor<'_>, plan: &RestorePlan) -> Result<()> {
    for m in &plan.migrations {
        let surfaces: Vec<_> = plan.surfaces.iter().filter(|s| s.service == m.service).collect();
        let mut contexts: BTreeSet<Option<&str>> = surfaces.iter().map(|s| s.target_context.as_deref()).collect();
        if contexts.len() > 1 {
            contexts.remove(&None);
        }
        for ctx in contexts {
            let (from, to) = (m.from.to_string(), m.to.to_string());
            let mut vars = vec![("service".to_string(), m.service.clone()), ("from_schema".into(), from), ("to_schema".into(), to)];
            vars.push(("context".into(), ctx.unwrap_or_default().to_string()));
            for s in surfaces.iter().filter(|s| s.target_context.is_none() || s.target_context.as_deref() == ctx) {
                if let Some(swap) = ex.journal.swaps.iter().find(|w| w.target == s.path) {
                    vars.push((format!("path:{}", s.surface), swap.stage.display().to_string()));
                }
            }
            let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            hooks::run(&m.command, &refs)?;
            failpoint("restore-migrated");
        }
    }
    if !plan.migrations.is_empty() {
        ex.sync_stages()?;
    }
    Ok(())
}

/// Runs the rebuild hooks of derived surfaces the archive left out: their outcomes, and
/// the surfaces still to rebuild.
fn rebuild_derived(target: &Inventory, plan: &RestorePlan, warnings: &mut Vec<String>) -> (Vec<Outcome>, Vec<SurfaceRef>) {
    let mut outcomes = Vec::new();
    let mut rebuild_pending = Vec::new();
    let pending_services: BTreeSet<&str> = plan.rebuild_pending.iter().map(|s| s.service.as_str()).collect();
    for name in pending_services {
        let surfaces = plan.rebuild_pending.iter().filter(|s| s.service == name).cloned();
        match target.service(name).and_then(|svc| svc.hooks.rebuild.as_ref()) {
            Some(cmd) => {
                if let Err(e) = hooks::run(cmd, &[("service", name)]) {
                    warnings.push(format!("{name}: rebuild hook failed: {e}"));
                    for s in surfaces {
                        outcomes.push(surface_outcome(&s, Status::Failed, format!("rebuild hook failed: {e}")));
                        rebuild_pending.push(s);
                    }
                } else {
                    outcomes.extend(surfaces.map(|s| surface_outcome(&s, Status::Ok, "rebuilt by the service's rebuild hook".into())));
                }
            }
            None => {
                for s in surfaces {
                    outcomes.push(surface_outcome(&s, Status::Skipped, "derived and not in the archive; the service has no rebuild hook: rebuild it".into()));
                    rebuild_pending.push(s);
                }
            }
        }
    }
    (outcomes, rebuild_pending)
}

/// An outcome for a surface of the plan's rebuild list.
fn surface_outcome(s: &SurfaceRef, status: Status, reason: String) -> Outcome {
    Outcome::new(&s.service, Some(&s.surface), None, status, Some(reason))
}

/// What became of every surface the archive holds, or left out: restored, or skipped and why.
fn archive_outcomes(manifest: &Manifest, plan: &RestorePlan) -> Vec<Outcome> {
    let mut out = Vec::new();
    for ms in &manifest.services {
        for surf in &ms.surfaces {
            if surf.export {
                // Planned imports have their outcome from the import step.
                let imported = |c: &String| plan.imports.iter().any(|i| i.service == ms.name && i.export == surf.name && &i.context == c);
                let not_selected = surf.contexts.iter().filter(|c| !imported(c));
                out.extend(
                    not_selected.map(|c| Outcome::new(&ms.name, Some(&surf.name), Some(c), Status::Skipped, Some("not selected for this restore".into()))),
                );
                continue;
            }
            let contexts: Vec<Option<&str>> = if surf.contexts.is_empty() { vec![None] } else { surf.contexts.iter().map(|c| Some(c.as_str())).collect() };
            for ctx in contexts {
                let planned = plan.surfaces.iter().find(|t| t.service == ms.name && t.surface == surf.name && t.context.as_deref() == ctx);
                out.push(match planned {
                    Some(t) if t.target_context.as_deref() != ctx => Outcome::new(
                        &ms.name,
                        Some(&surf.name),
                        ctx,
                        Status::Ok,
                        Some(format!("restored as context `{}`", t.target_context.as_deref().unwrap_or_default())),
                    ),
                    Some(_) => Outcome::new(&ms.name, Some(&surf.name), ctx, Status::Ok, None),
                    None => Outcome::new(&ms.name, Some(&surf.name), ctx, Status::Skipped, Some("not selected for this restore".into())),
                });
            }
        }
        for l in &ms.left_out {
            // Derived surfaces to rebuild have their outcome from the rebuild step.
            if !plan.rebuild_pending.iter().any(|r| r.service == ms.name && r.surface == l.surface) {
                out.push(Outcome::new(&ms.name, Some(&l.surface), None, Status::Skipped, Some(format!("not in the archive: {}", l.reason))));
            }
        }
    }
    out
}

/// Runs the start hooks; returns the services whose hook failed, with the failure.
fn start_services(target: &Inventory, stopped: &[String], warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for name in stopped {
        if let Some(start) = target.service(name).and_then(|s| s.hooks.start.as_ref()) {
            if let Err(e) = hooks::run(start, &[("service", name)]) {
                warnings.push(format!("{name}: start hook failed: {e}"));
                failed.push((name.clone(), format!("start hook failed: {e}")));
            }
        }
    }
    failed
}
