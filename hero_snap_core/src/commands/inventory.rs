//! `inventory`: the state-surface table, with the contexts found on disk and live sizes.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::fs_tree::count_tree;
use crate::inventory::{Class, Inventory, Scope};
use crate::progress::Cancel;

/// One row of the state-surface table (`hero-snap inventory`).
#[derive(Debug, Clone, Serialize)]
pub struct SurfaceRow {
    /// The service.
    pub service: String,
    /// The surface.
    pub surface: String,
    /// The surface's path (with `{context}` for per-context surfaces).
    pub path: String,
    /// One copy per instance or per context.
    pub scope: Scope,
    /// Source, derived or transient.
    pub class: Class,
    /// Contexts that have this surface on disk (per-context surfaces).
    pub contexts: Vec<String>,
    /// Whether anything of it exists on disk.
    pub present: bool,
    /// Regular files on disk.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

/// The state-surface table of `inv` with live sizes (`hero-snap inventory`).
pub fn surface_table(inv: &Inventory) -> Result<Vec<SurfaceRow>> {
    let never = Cancel::new();
    let mut rows = Vec::new();
    for svc in inv.services() {
        for s in &svc.surfaces {
            let contexts = inv.surface_contexts(s)?;
            let paths: Vec<PathBuf> = match s.scope {
                Scope::Instance => vec![s.path.clone()],
                Scope::Context => contexts.iter().map(|c| s.path_for(Some(c))).collect(),
            };
            let (mut files, mut bytes, mut present) = (0, 0, false);
            for p in paths.iter().filter(|p| p.is_dir()) {
                present = true;
                let (f, b) = count_tree(p, &never)?;
                files += f;
                bytes += b;
            }
            rows.push(SurfaceRow {
                service: svc.name.clone(),
                surface: s.name.clone(),
                path: s.path.display().to_string(),
                scope: s.scope,
                class: s.class,
                contexts,
                present,
                files,
                bytes,
            });
        }
    }
    Ok(rows)
}
