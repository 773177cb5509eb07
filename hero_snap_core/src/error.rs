//! One error type for the whole library. Every variant names the thing that went wrong
//! (file, surface, service, archive member) and, where there is one, what to do about it.

use std::path::PathBuf;

/// A cause kept inside an [`Error`] (a storage client's, a process's or the OS's error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. The variant decides the CLI's exit code ([`Error::exit_code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The inventory file is malformed or breaks a validation rule.
    #[error("{file}:{line}: {field}: {message}")]
    Inventory {
        /// The inventory file.
        file: PathBuf,
        /// The line (1-based).
        line: u64,
        /// The field, as a path (`services.hero_db.surfaces[0].path`).
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// An I/O operation failed on a named path.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// What hero-snap was doing (`reading`, `writing the archive`, ...).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The archive stream is damaged, truncated, or its contents do not match the index.
    #[error("archive is corrupt: {0}")]
    Corrupt(String),

    /// The archive is well-formed but holds something this build refuses to restore.
    #[error("archive refused: {0}")]
    Refused(String),

    /// Keys, recipients, identities or passphrases are missing, unreadable or wrong.
    #[error("encryption: {0}")]
    Crypto(String),

    /// The restore pre-flight found reasons not to restore; every one is listed.
    #[error("pre-flight refused the restore:\n{}", .0.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Preflight(Vec<crate::restore::Refusal>),

    /// Bad request from the caller (selection names nothing, conflicting options...).
    #[error("{0}")]
    Usage(String),

    /// The run was cancelled through its [`crate::Cancel`] token.
    #[error("cancelled")]
    Cancelled,

    /// Object storage refused or failed a request (missing bucket or object, credentials,
    /// access, region, unreachable endpoint after retries).
    #[error("object storage: {message}")]
    Storage {
        /// What failed, on which bucket or object, and what to check.
        message: String,
        /// The storage client's or the network's own error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A hook or external command failed, or a step of hero-snap's own work around one.
    #[error("{message}")]
    Command {
        /// Which command, what it said, what to do.
        message: String,
        /// The underlying error (the OS's when a program cannot start, the failed step's
        /// when a restore was rolled back), when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The run finished, but some service or surface it was asked for failed; the
    /// report's outcomes name them. The library returns reports; the CLI turns failed
    /// outcomes into this error for its exit code.
    #[error("{0}")]
    Incomplete(String),

    /// A free-space guard found less room than required (`prune --min-free`).
    #[error("{0}")]
    NoSpace(String),

    /// A backup series' last good backup is older than the maximum age asked for, or
    /// there is none (`status --max-age`).
    #[error("{0}")]
    Stale(String),

    /// The archive is of a newer format than this build reads (exit 10, as pre-flight's
    /// refusal of the same): restore it with a newer hero-snap.
    #[error("archive format {archive} is newer than this build of hero-snap reads (format {supported}); restore it with a newer hero-snap")]
    FormatTooNew {
        /// The archive's format.
        archive: u32,
        /// The newest format this build reads.
        supported: u32,
    },
}

impl Error {
    pub(crate) fn command(message: impl Into<String>) -> Error {
        Error::Command { message: message.into(), source: None }
    }

    pub(crate) fn command_caused(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Command { message: message.into(), source: Some(source.into()) }
    }

    pub(crate) fn storage(message: impl Into<String>) -> Error {
        Error::Storage { message: message.into(), source: None }
    }

    pub(crate) fn storage_caused(message: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Storage { message: message.into(), source: Some(source.into()) }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        // The path is made only on an error: on the way of every file, not allocated for each.
        move |source| Error::Io { path: path.into(), action, source }
    }

    /// The process exit code the CLI uses for this error (the table is in docs/CLI.md).
    ///
    /// ```
    /// use hero_snap_core::Error;
    /// assert_eq!(Error::Cancelled.exit_code(), 130);
    /// assert_eq!(Error::Cancelled.kind(), "cancelled");
    /// ```
    ///
    /// Pre-flight refusals all of one kind exit with that kind's code (10-16); mixed kinds
    /// exit 4.
    pub fn exit_code(&self) -> i32 {
        if let Error::Preflight(list) = self {
            if let Some(first) = list.first().map(|r| r.exit_code()) {
                if list.iter().all(|r| r.exit_code() == first) {
                    return first;
                }
            }
        }
        match self {
            Error::Io { .. } | Error::Command { .. } => 1,
            Error::Usage(_) => 2,
            Error::Corrupt(_) => 3,
            Error::Preflight(_) => 4,
            Error::Inventory { .. } => 5,
            Error::Crypto(_) => 6,
            Error::Refused(_) => 7,
            Error::Storage { .. } => 8,
            Error::Incomplete(_) => 9,
            Error::NoSpace(_) => 17,
            Error::Stale(_) => 18,
            Error::FormatTooNew { .. } => 10,
            Error::Cancelled => 130,
        }
    }

    /// A short stable name of the error kind, for `--json` output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Inventory { .. } => "inventory",
            Error::Io { .. } => "io",
            Error::Corrupt(_) => "corrupt",
            Error::Refused(_) => "refused",
            Error::Crypto(_) => "crypto",
            Error::Preflight(_) => "preflight",
            Error::Usage(_) => "usage",
            Error::Cancelled => "cancelled",
            Error::Command { .. } => "command",
            Error::Storage { .. } => "storage",
            Error::Incomplete(_) => "incomplete",
            Error::NoSpace(_) => "no-space",
            Error::Stale(_) => "stale",
            Error::FormatTooNew { .. } => "format-too-new",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::Refusal;

    /// docs/CLI.md's tables and `exit_code`/`kind` cannot drift apart: every variant's code
    /// is the row that names it, and its kind has that code (issue 17).
    #[test]
    fn the_exit_code_tables_in_cli_md_match_the_code() {
        let doc = include_str!("../../docs/CLI.md");
        let row = |code: i32| -> String {
            doc.lines().find(|l| l.starts_with(&format!("| {code} |"))).unwrap_or_else(|| panic!("CLI.md has no exit code {code}")).to_string()
        };
        let io = || std::io::Error::other("x");
        let errors: Vec<(&str, Error)> = vec![
            ("Error::Io", Error::io("/x", "reading")(io())),
            ("Error::Command", Error::command("x")),
            ("Error::Usage", Error::Usage("x".into())),
            ("Error::Corrupt", Error::Corrupt("x".into())),
            ("Error::Preflight", Error::Preflight(vec![Refusal::Selection { message: "x".into() }, Refusal::UnknownService { service: "s".into() }])),
            ("Error::Inventory", Error::Inventory { file: "/x".into(), line: 1, field: "f".into(), message: "m".into() }),
            ("Error::Crypto", Error::Crypto("x".into())),
            ("Error::Refused", Error::Refused("x".into())),
            ("Error::Storage", Error::storage("x")),
            ("Error::Incomplete", Error::Incomplete("x".into())),
            ("Error::NoSpace", Error::NoSpace("x".into())),
            ("Error::Stale", Error::Stale("x".into())),
            ("Error::FormatTooNew", Error::FormatTooNew { archive: 3, supported: 2 }),
            ("Error::Cancelled", Error::Cancelled),
        ];
        for (name, e) in &errors {
            let code = e.exit_code();
            assert!(row(code).contains(name), "{name} exits {code}, but CLI.md's row {code} does not name it: {}", row(code));
            let kind_row = format!("| `{}` | ", e.kind());
            let kinds = &doc[doc.find("| kind | exit | meaning |").expect("CLI.md's table of error kinds")..];
            let line = kinds.lines().find(|l| l.starts_with(&kind_row)).unwrap_or_else(|| panic!("CLI.md has no kind `{}`", e.kind()));
            assert!(line.contains(&format!(" {code} |")) || line.contains(&format!(" {code},")), "kind `{}` exits {code}: {line}", e.kind());
        }
        let refusals = [
            ("FormatTooNew", Refusal::FormatTooNew { archive: 3, supported: 2 }),
            ("UnknownService", Refusal::UnknownService { service: "s".into() }),
            ("MountPoint", Refusal::MountPoint { path: "/x".into() }),
            ("Collision", Refusal::Collision { service: "s".into(), surface: "x".into(), context: None, path: "/x".into() }),
            ("MissingSecrets", Refusal::MissingSecrets { names: vec!["N".into()], needed_by: vec![] }),
            ("Selection", Refusal::Selection { message: "x".into() }),
        ];
        for (name, r) in &refusals {
            let code = r.exit_code();
            assert!(row(code).contains(name), "{name} exits {code}, but CLI.md's row {code} does not name it: {}", row(code));
            assert_eq!(Error::Preflight(vec![r.clone()]).exit_code(), code, "a refusal alone exits with its own code");
        }
    }
}
