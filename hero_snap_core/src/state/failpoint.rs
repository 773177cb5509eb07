//! Crash-test points: named places where a test may have the process killed.

/// Test hook: when the environment variable `HERO_SNAP_FAILPOINT` names this point, the
/// process kills itself with SIGKILL here (used by the crash tests; a no-op otherwise).
/// `NAME:stop` stops it with SIGSTOP instead, so a test can look at the frozen state and
/// let the freeze deadline expire.
/// The variable is read once per process: some points are passed once per restored file.
pub(crate) fn failpoint(name: &str) {
    use nix::sys::signal::{raise, Signal};
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(v) = POINT.get_or_init(|| std::env::var_os("HERO_SNAP_FAILPOINT").map(|v| v.to_string_lossy().into_owned())) else { return };
    if v == name {
        let _ = raise(Signal::SIGKILL);
    } else if v.strip_suffix(":stop") == Some(name) {
        let _ = raise(Signal::SIGSTOP);
    }
}
