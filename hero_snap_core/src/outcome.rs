//! The typed end of a run: one result per service and surface, so that nothing that was
//! asked for can go missing behind a "completed with warnings".

use serde::Serialize;

/// How one service or surface fared in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Done: archived, verified or restored.
    Ok,
    /// Left out on purpose, by a rule or the selection; `reason` says which.
    Skipped,
    /// Asked for but not done; `reason` says why. The CLI exits 9 when any outcome failed.
    Failed,
}

impl Status {
    /// `ok`, `skipped` or `failed`, as in the JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }
}

/// The result of a run for one surface (or, with `surface: None`, for a whole service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The service.
    pub service: String,
    /// The surface; `None` when the outcome is about the service itself (e.g. its start hook).
    pub surface: Option<String>,
    /// The context of a per-context surface.
    pub context: Option<String>,
    /// What happened.
    pub status: Status,
    /// Why it was skipped or failed (or a note on an `ok`, e.g. the new context name).
    pub reason: Option<String>,
}

impl Outcome {
    pub(crate) fn new(service: &str, surface: Option<&str>, context: Option<&str>, status: Status, reason: Option<String>) -> Outcome {
        Outcome { service: service.into(), surface: surface.map(Into::into), context: context.map(Into::into), status, reason }
    }

    /// `service.surface[context]`, for messages.
    pub fn label(&self) -> String {
        let mut s = self.service.clone();
        if let Some(surface) = &self.surface {
            s.push('.');
            s.push_str(surface);
        }
        if let Some(c) = &self.context {
            s.push_str(&format!("[{c}]"));
        }
        s
    }
}

/// The failed outcomes of a list, for the caller's exit decision.
pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.status == Status::Failed).collect()
}

/// Sorts outcomes by service, surface, context, so that reports read the same every run.
pub(crate) fn sort(outcomes: &mut [Outcome]) {
    outcomes.sort_by(|a, b| (&a.service, &a.surface, &a.context).cmp(&(&b.service, &b.surface, &b.context)));
}

/// [`crate::Error::Incomplete`] (exit 9) naming every failed outcome, or `Ok` when none
/// failed. The reports of backup, verify and restore carry outcomes rather than failing,
/// so that a caller sees what did succeed; this turns them into the run's verdict.
pub fn check_outcomes(outcomes: &[Outcome]) -> crate::Result<()> {
    let failed = failures(outcomes);
    if failed.is_empty() {
        return Ok(());
    }
    Err(crate::Error::Incomplete(format!(
        "{} of {} surfaces failed: {}",
        failed.len(),
        outcomes.len(),
        failed.iter().map(|o| format!("{} ({})", o.label(), o.reason.as_deref().unwrap_or("failed"))).collect::<Vec<_>>().join("; ")
    )))
}
