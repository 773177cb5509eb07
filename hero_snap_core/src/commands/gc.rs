//! `gc`: finish or undo what dead runs left, from their journals in the state directory.

use std::path::Path;

use crate::error::Result;
use crate::state::Recovered;
use crate::{archive, exports, freeze, restore};

/// Completes the journals of dead runs in `state_dir`: thaws what a backup froze, runs its
/// post hooks, removes its snapshots; rolls back or completes an interrupted restore;
/// removes the export directories of a dead backup (D-16) and the staging directory of a
/// dead `extract`; aborts the multipart upload a dead backup to object storage left.
pub fn gc(state_dir: &Path) -> Result<Vec<Recovered>> {
    let mut out = freeze::recover(state_dir)?;
    out.extend(exports::recover(state_dir)?);
    out.extend(restore::recover(state_dir)?);
    out.extend(restore::pick::recover(state_dir)?);
    out.extend(archive::s3::recover(state_dir)?);
    out.extend(archive::chain::recover(state_dir));
    Ok(out)
}
