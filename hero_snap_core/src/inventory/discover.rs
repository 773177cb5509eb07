//! Finding an instance's contexts on disk, from the per-context layouts of its surfaces.

use std::collections::BTreeSet;

use super::model::{Inventory, Surface};
use super::parse::valid_name;
use crate::error::{Error, Result};

impl Inventory {
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
