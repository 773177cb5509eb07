//! Freeze: quiesce the services, snapshot every volume within one window, thaw.
//!
//! Order: journal → watchdog → pre hooks (parallel) → freeze cgroups/units → syncfs →
//! snapshots → thaw → post hooks. The journal (in the state directory, never on a frozen
//! volume) names everything to undo; the watchdog — this program run again in its own
//! session ([`watchdog`]) — thaws and runs the post hooks if hero-snap dies (even by
//! SIGKILL) or the freeze deadline passes. `gc` (and the start of every run) completes
//! the journals of dead runs. decisions/D-01-state-snapshot-contract.md is the contract.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archive::format::{Consistency, Warning};
use crate::error::{Error, Result};
use crate::inventory::{Command, Inventory, OnError};
use crate::plan::{Job, Placement};
use crate::progress::{Event, Progress};
use crate::snapshot::Taken;
use crate::state::{failpoint, Lock, Recovered};

pub(crate) mod watchdog;

/// A cgroup whose processes are frozen: v2 (`cgroup.freeze`) or the v1 freezer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Cgroup {
    pub dir: PathBuf,
    pub v2: bool,
}

impl Cgroup {
    /// Finds a declared cgroup under the cgroup2 mount, else under the v1 freezer.
    pub(crate) fn resolve(name: &str) -> Result<Cgroup> {
        let rel = name.trim_start_matches('/');
        let mounts = crate::mounts::read_mounts()?;
        for m in mounts.iter().filter(|m| m.fstype == "cgroup2") {
            let dir = m.mount_point.join(rel);
            if dir.join("cgroup.freeze").exists() {
                return Ok(Cgroup { dir, v2: true });
            }
        }
        for m in mounts.iter().filter(|m| m.fstype == "cgroup" && m.mount_point.file_name().is_some_and(|f| f.to_string_lossy().contains("freezer"))) {
            let dir = m.mount_point.join(rel);
            if dir.join("freezer.state").exists() {
                return Ok(Cgroup { dir, v2: false });
            }
        }
        Err(Error::Refused(format!("cgroup `{name}` not found under the cgroup2 mount or the v1 freezer; fix `quiesce.cgroup` in the inventory")))
    }

    fn set(&self, frozen: bool) -> Result<()> {
        let (file, value) =
            if self.v2 { ("cgroup.freeze", if frozen { "1" } else { "0" }) } else { ("freezer.state", if frozen { "FROZEN" } else { "THAWED" }) };
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(Error::io(&path, if frozen { "freezing" } else { "thawing" }))
    }

    fn is_frozen(&self) -> bool {
        if self.v2 {
            fs::read_to_string(self.dir.join("cgroup.events")).is_ok_and(|t| t.lines().any(|l| l.trim() == "frozen 1"))
        } else {
            fs::read_to_string(self.dir.join("freezer.state")).is_ok_and(|t| t.trim() == "FROZEN")
        }
    }

    fn freeze(&self, timeout: Duration) -> Result<()> {
        self.set(true)?;
        let until = Instant::now() + timeout;
        while !self.is_frozen() {
            if Instant::now() > until {
                return Err(Error::command(format!("{}: the processes did not freeze within {} ms", self.dir.display(), timeout.as_millis())));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }
}

/// The backup journal: what to undo if this run dies.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    run_id: String,
    pid: u32,
    cgroups: Vec<Cgroup>,
    units: Vec<String>,
    /// (service, post hook): run when the service's pre-hook marker exists.
    posts: Vec<(String, Command)>,
    snapshots: Vec<Taken>,
}

fn marker(state: &Path, run: &str, service: &str) -> PathBuf {
    state.join(format!("backup-{run}.pre-{service}"))
}

/// The frozen views of one run; `release` removes the snapshots (Drop does it too).
pub(crate) struct Frozen {
    pub consistency: Consistency,
    pub freeze_window_ms: Option<u64>,
    pub warnings: Vec<Warning>,
    taken: Vec<Taken>,
    state: PathBuf,
    run: String,
    /// Quiesced copy: the post hooks run at release.
    deferred_posts: Vec<(String, Command)>,
    watchdog: Option<watchdog::Watchdog>,
    released: bool,
    _lock: Lock,
}

impl Frozen {
    /// Where the job's data is read: in its snapshot, or in place.
    pub(crate) fn view(&self, live: &Path) -> PathBuf {
        self.taken.iter().find_map(|t| t.view(live)).unwrap_or_else(|| live.to_path_buf())
    }

    /// Whether the view of `live` keeps its inode numbers and ctimes: true for the live
    /// path and for btrfs, LVM and ZFS snapshots, false for a reflink copy.
    pub(crate) fn stable(&self, live: &Path) -> bool {
        !self.taken.iter().any(|t| matches!(t, crate::snapshot::Taken::Reflink(_)) && t.view(live).is_some())
    }

    /// Checks that no snapshot became invalid while it was read.
    pub(crate) fn check(&self) -> Result<()> {
        self.taken.iter().try_for_each(Taken::still_valid)
    }

    pub(crate) fn release(mut self) -> Result<Vec<Warning>> {
        self.released = true;
        let mut warnings = Vec::new();
        run_posts(&self.state, &self.run, &self.deferred_posts, &mut warnings);
        finish_watchdog(self.watchdog.take());
        let mut first_err = None;
        for t in &self.taken {
            if let Err(e) = t.remove() {
                first_err.get_or_insert(e);
            }
        }
        if first_err.is_none() {
            crate::state::journal::remove(&self.state, "backup", &self.run);
        }
        first_err.map_or(Ok(warnings), Err)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.released {
            let mut w = Vec::new();
            run_posts(&self.state, &self.run, &self.deferred_posts, &mut w);
            finish_watchdog(self.watchdog.take());
            if self.taken.iter().all(|t| t.remove().is_ok()) {
                crate::state::journal::remove(&self.state, "backup", &self.run);
            }
        }
    }
}

fn finish_watchdog(watchdog: Option<watchdog::Watchdog>) {
    if let Some(w) = watchdog {
        w.finish();
    }
}

/// Thaws every cgroup and unit, each whatever happened to the others; the failures.
/// The backup, the watchdog and `gc` all thaw through here.
fn thaw(cgroups: &[Cgroup], units: &[String]) -> Vec<Error> {
    let mut failed = Vec::new();
    for c in cgroups {
        if let Err(e) = c.set(false) {
            failed.push(e);
        }
    }
    for u in units {
        if let Err(e) = crate::process::tool(&["systemctl", "thaw", u]) {
            failed.push(e);
        }
    }
    failed
}

/// Runs a pre hook once its marker is written. The marker is what makes the post hook run
/// (here, in the watchdog, or in `gc`): a hook run without one would leave its service
/// paused for good, so no marker means no pre hook, and the failure is the hook's.
fn run_pre(marker: &Path, svc: &str, cmd: &Command) -> Result<String> {
    fs::write(marker, b"").map_err(Error::io(marker, "writing the pre-hook marker (the post hook depends on it)"))?;
    crate::hooks::run(cmd, &[("service", svc)])
}

fn run_posts(state: &Path, run: &str, posts: &[(String, Command)], warnings: &mut Vec<Warning>) {
    for (svc, cmd) in posts {
        let m = marker(state, run, svc);
        if fs::remove_file(&m).is_ok() {
            if let Err(e) = crate::hooks::run(cmd, &[("service", svc)]) {
                warnings.push(Warning { code: "post-hook-failed".into(), message: format!("{svc}: {e}") });
            }
        }
    }
}

/// `syncfs` on every planned volume. Errors are ignored: the sync only shortens the
/// snapshot's work; the snapshot is what must succeed, and says so if it does not.
fn sync_volumes(plan: &crate::plan::Plan) {
    for vol in &plan.volumes {
        if let Ok(f) = fs::File::open(&vol.mount.mount_point) {
            let _ = nix::unistd::syncfs(&f);
        }
    }
}

/// Options of the freeze window.
pub(crate) struct FreezeOptions<'a> {
    pub state: &'a Path,
    pub run: &'a str,
    /// Longest the services may stay frozen; the watchdog thaws them at this deadline.
    pub deadline: Duration,
}

/// Quiesces, snapshots and thaws. Returns the frozen views, or an error with everything undone.
pub(crate) fn freeze(inv: &Inventory, jobs: &[Job], placement: &Placement, opts: &FreezeOptions, progress: &dyn Progress) -> Result<Frozen> {
    let mut warnings: Vec<Warning> = Vec::new();
    let lock = Lock::acquire(opts.state, &mut warnings)?;
    failpoint("backup-locked");
    for r in recover(opts.state)? {
        warnings.push(Warning { code: "recovered-dead-run".into(), message: format!("completed the journal of dead run {} ({})", r.run_id, r.action) });
    }
    let plan = &placement.plan;
    warnings.extend(plan_warnings(plan));
    let hooks_only = plan.consistency == Consistency::QuiescedCopy;
    let Quiesced { cgroups, units, pres, posts } = quiesced(inv, jobs, hooks_only)?;
    // Planned snapshots, journaled before anything is created.
    let planned = planned_snapshots(placement, jobs, opts);
    let journal = Journal {
        run_id: opts.run.to_string(),
        pid: std::process::id(),
        cgroups: cgroups.clone(),
        units: units.clone(),
        posts: posts.clone(),
        snapshots: planned.clone(),
    };
    crate::state::journal::save(opts.state, "backup", opts.run, &journal)?;
    failpoint("backup-journaled");
    let mut frozen = Frozen {
        consistency: plan.consistency,
        freeze_window_ms: None,
        warnings: Vec::new(),
        taken: planned,
        state: opts.state.to_path_buf(),
        run: opts.run.to_string(),
        deferred_posts: Vec::new(),
        watchdog: None,
        released: false,
        _lock: lock,
    };
    frozen.watchdog = start_watchdog(opts, &cgroups, &units, &posts, hooks_only)?;
    failpoint("backup-watchdog-started");

    progress.event(&Event::Phase { phase: "quiesce".into() });
    run_pre_hooks(&pres, &posts, opts, &mut warnings)?;

    failpoint("backup-pre-hooks-done");
    // Flush what is dirty before the window opens: the sync inside it then writes only what
    // the services wrote since, so the window does not grow with the page cache's backlog.
    sync_volumes(plan);
    progress.event(&Event::Phase { phase: "freeze".into() });
    let start = Instant::now();
    let result = hold_still_and_snapshot(&cgroups, &units, plan, &frozen.taken, opts.deadline);
    let thaw_err = thaw(&cgroups, &units).into_iter().next();
    let window = start.elapsed();
    failpoint("backup-thawed");
    if hooks_only {
        frozen.deferred_posts = posts;
    } else {
        run_posts(opts.state, opts.run, &posts, &mut warnings);
        failpoint("backup-post-hooks-done");
        finish_watchdog(frozen.watchdog.take());
    }
    result?;
    if let Some(e) = thaw_err {
        return Err(e);
    }
    if !hooks_only && window > opts.deadline {
        return Err(Error::command(format!(
            "the freeze window took {} ms, past the {} ms deadline: the watchdog thawed the services and the snapshot is not trusted",
            window.as_millis(),
            opts.deadline.as_millis()
        )));
    }
    if !cgroups.is_empty() || !units.is_empty() {
        frozen.freeze_window_ms = Some(window.as_millis() as u64);
    }
    for t in &frozen.taken {
        t.open()?;
    }
    frozen.warnings = warnings;
    Ok(frozen)
}

/// The watchdog that thaws and runs the post hooks if this process dies while they are
/// owed, or the deadline passes; none when nothing would be owed.
fn start_watchdog(
    opts: &FreezeOptions,
    cgroups: &[Cgroup],
    units: &[String],
    posts: &[(String, Command)],
    hooks_only: bool,
) -> Result<Option<watchdog::Watchdog>> {
    let job = watchdog::Job {
        state: opts.state.to_path_buf(),
        run_id: opts.run.to_string(),
        cgroups: cgroups.to_vec(),
        units: units.to_vec(),
        posts: posts.to_vec(),
        deadline_ms: if hooks_only { None } else { Some(opts.deadline.as_millis() as u64) },
    };
    // With nothing to thaw and no post hook owed, a dead run leaves only what `gc` removes:
    // no watchdog, so programs that never freeze need not call run_watchdog_if_invoked.
    if !job.is_empty() {
        return Ok(Some(watchdog::Watchdog::spawn(&job)?));
    }
    Ok(None)
}

/// Warnings the plan carries into the manifest: why it is not atomic, nested mounts.
fn plan_warnings(plan: &crate::plan::Plan) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for note in &plan.notes {
        if plan.consistency != Consistency::Atomic {
            warnings.push(Warning {
                code: format!("consistency-{}", serde_json::to_value(plan.consistency).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()),
                message: note.clone(),
            });
        }
    }
    for n in &plan.nested_mounts {
        warnings.push(Warning { code: "nested-mount".into(), message: n.clone() });
    }
    warnings
}

/// What holds the selected services still: cgroups and units to freeze (not for a
/// quiesced copy, whose hooks hold them for the whole read), pre and post hooks.
struct Quiesced {
    cgroups: Vec<Cgroup>,
    units: Vec<String>,
    pres: Vec<(String, Command, OnError)>,
    posts: Vec<(String, Command)>,
}

fn quiesced(inv: &Inventory, jobs: &[Job], hooks_only: bool) -> Result<Quiesced> {
    let services: BTreeSet<&str> = jobs.iter().map(|j| j.service.as_str()).collect();
    let mut cgroups = Vec::new();
    let mut units = Vec::new();
    let mut pres: Vec<(String, Command, OnError)> = Vec::new();
    let mut posts = Vec::new();
    for name in &services {
        let q = &inv.service(name).map(|s| &s.quiesce).ok_or_else(|| Error::Usage(format!("service `{name}` is not in the inventory")))?;
        if let Some(pre) = &q.pre {
            pres.push((name.to_string(), pre.clone(), q.on_error));
            if let Some(post) = &q.post {
                posts.push((name.to_string(), post.clone()));
            }
        }
        if !hooks_only {
            if let Some(cg) = &q.cgroup {
                cgroups.push(Cgroup::resolve(cg)?);
            }
            if let Some(u) = &q.unit {
                units.push(u.clone());
            }
        }
    }
    Ok(Quiesced { cgroups, units, pres, posts })
}

/// The snapshot of each volume, named before anything is created (ZFS: one per pool).
fn planned_snapshots(placement: &Placement, jobs: &[Job], opts: &FreezeOptions) -> Vec<Taken> {
    let mut planned = Vec::new();
    for (i, vol) in placement.plan.volumes.iter().enumerate() {
        let lives: Vec<PathBuf> = jobs.iter().zip(&placement.job_volume).filter(|(_, v)| **v == i).map(|(j, _)| j.path.clone()).collect();
        if let Some(t) = Taken::plan(vol, &lives, opts.run, i, opts.state) {
            planned.push(t);
        }
    }
    Taken::merge_zfs(planned)
}

/// Runs the pre hooks in parallel, each after its marker (which tells who needs a post
/// hook). A failure aborts the backup (after the post hooks owed) or warns, per hook.
fn run_pre_hooks(pres: &[(String, Command, OnError)], posts: &[(String, Command)], opts: &FreezeOptions, warnings: &mut Vec<Warning>) -> Result<()> {
    // Pre hooks in parallel; a marker per hook that ran tells who needs a post hook.
    let results: Vec<(String, OnError, Result<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = pres
            .iter()
            .map(|(svc, cmd, on_error)| {
                let m = marker(opts.state, opts.run, svc);
                scope.spawn(move || (svc.clone(), *on_error, run_pre(&m, svc, cmd)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("hook thread")).collect()
    });
    for (svc, on_error, res) in results {
        if let Err(e) = res {
            match on_error {
                OnError::Abort => {
                    let mut w = Vec::new();
                    run_posts(opts.state, opts.run, posts, &mut w);
                    return Err(Error::command(format!("pre-freeze hook of `{svc}` failed, backup aborted (on_error: abort): {e}")));
                }
                OnError::Warn => warnings.push(Warning { code: "pre-hook-failed".into(), message: format!("{svc}: {e}; continuing (on_error: warn)") }),
            }
        }
    }
    Ok(())
}

/// The freeze window: freeze cgroups and units, sync, take every snapshot. The caller
/// thaws whatever happened.
fn hold_still_and_snapshot(cgroups: &[Cgroup], units: &[String], plan: &crate::plan::Plan, taken: &[Taken], deadline: Duration) -> Result<()> {
    for c in cgroups {
        c.freeze(deadline / 4)?;
    }
    for u in units {
        crate::process::tool(&["systemctl", "freeze", u])?;
    }
    failpoint("backup-frozen");
    sync_volumes(plan);
    failpoint("backup-synced");
    for (i, t) in taken.iter().enumerate() {
        t.take()?;
        failpoint(&format!("backup-snapshot-{i}-taken"));
    }
    failpoint("backup-snapshotted");
    Ok(())
}

/// Completes the backup journals of dead runs: thaw, post hooks, remove snapshots.
pub(crate) fn recover(state: &Path) -> Result<Vec<Recovered>> {
    let mut out = Vec::new();
    for (path, j) in crate::state::journal::dead::<Journal>(state, "backup", |j| j.pid)? {
        // Nobody to tell about a failed thaw here: it was tried, the run is over.
        let _ = thaw(&j.cgroups, &j.units);
        failpoint("gc-backup-thawed");
        let mut w = Vec::new();
        run_posts(state, &j.run_id, &j.posts, &mut w);
        for t in &j.snapshots {
            t.remove()?;
        }
        let _ = fs::remove_file(&path);
        out.push(Recovered { run_id: j.run_id, action: "backup-cleaned".into(), outcomes: Vec::new() });
    }
    Ok(out)
}

#[cfg(test)]
mod pre_hook_tests {
    use super::*;

    /// Review finding (issue 14): a marker that could not be written used to be ignored, the
    /// pre hook ran, and its post hook never did. Now the pre hook does not run either.
    #[test]
    fn no_marker_no_pre_hook() {
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("pre-ran");
        let cmd = Command { argv: vec!["touch".into(), ran.display().to_string()], timeout_secs: 5 };
        let unwritable = dir.path().join("missing-dir/backup-run.pre-svc");
        let err = run_pre(&unwritable, "svc", &cmd).unwrap_err();
        assert!(err.to_string().contains("pre-hook marker"), "{err}");
        assert!(!ran.exists(), "the pre hook ran without its marker");
        let marker = dir.path().join("backup-run.pre-svc");
        run_pre(&marker, "svc", &cmd).unwrap();
        assert!(ran.exists() && marker.exists());
    }
}
