//! One run at a time per state directory: a flock on `state_dir/lock` holding the
//! owner's pid, taken over (with a warning) from a dead run.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::archive::format::Warning;
use crate::error::{Error, Result};

/// A lock that keeps two runs apart (flock on state_dir/lock, holding the owner's pid).
pub(crate) struct Lock {
    _file: nix::fcntl::Flock<fs::File>,
}

impl Lock {
    pub(crate) fn acquire(state: &Path, warnings: &mut Vec<Warning>) -> Result<Lock> {
        fs::create_dir_all(state).map_err(Error::io(state, "creating the state directory"))?;
        let path = state.join("lock");
        let previous = fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<i32>().ok());
        let file = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(Error::io(&path, "opening the lock"))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, _)| {
            Error::Refused(format!(
                "another hero-snap run holds {} (pid {}); wait for it to finish",
                path.display(),
                previous.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            ))
        })?;
        if let Some(pid) = previous.filter(|p| *p != std::process::id() as i32) {
            if !super::process_alive(pid as u32) {
                warnings.push(Warning { code: "stale-lock".into(), message: format!("took over the lock of dead run pid {pid}") });
            }
        }
        let mut f: &fs::File = &lock;
        f.set_len(0).map_err(Error::io(&path, "writing the lock"))?;
        write!(f, "{}", std::process::id()).map_err(Error::io(&path, "writing the lock"))?;
        Ok(Lock { _file: lock })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // A clean exit leaves no pid behind, so only a dead run's lock reads as stale.
        let _ = self._file.set_len(0);
    }
}
