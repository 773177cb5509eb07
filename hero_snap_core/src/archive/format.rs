//! The two YAML members of an archive: the manifest (first: what is inside) and the index
//! (last: what every byte must hash to). Both are documented in docs/FORMAT.md.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inventory::{Class, Scope};

/// The format of a full archive this build writes (readable by every hero-snap).
pub const ARCHIVE_FORMAT: u32 = 1;
/// The format of an incremental archive (decisions/D-13): a manifest with a `parent`,
/// index entries whose bytes are in an ancestor (`in`). This build reads 1 and 2.
pub const INCREMENTAL_FORMAT: u32 = 2;
/// The newest format this build reads.
pub const NEWEST_FORMAT: u32 = INCREMENTAL_FORMAT;
/// The tar member holding the manifest; always the first member.
pub const MANIFEST_PATH: &str = "hero-snap/manifest.yaml";
/// The tar member holding the index; always the last member.
pub const INDEX_PATH: &str = "hero-snap/index.yaml";
/// Prefix of every data member.
pub const SERVICES_DIR: &str = "services";

/// How consistent the archived state is across services and volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// One instant for every volume.
    Atomic,
    /// Each volume at its own instant.
    PerVolume,
    /// No filesystem snapshot: files copied while services were quiesced by their hooks.
    QuiescedCopy,
    /// Files copied from live directories with nothing frozen; only for tests and for
    /// data that does not change.
    Live,
}

/// A warning recorded in the manifest: a fallback, downgrade or skipped item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// Stable machine-readable code, e.g. `skipped-special-file`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

/// One archived (or deliberately left out) surface of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSurface {
    /// The name (of the surface or service).
    pub name: String,
    /// One copy per instance or per context.
    pub scope: Scope,
    /// Source, derived or transient.
    pub class: Class,
    /// The path layout on the source instance (`{context}` kept for per-context surfaces).
    pub path: String,
    /// Contexts whose copy of this surface is in the archive (per-context surfaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<String>,
    /// Regular files archived.
    pub files: u64,
    /// Bytes of file data archived.
    pub bytes: u64,
    /// An export surface (decisions/D-16): written by the service's `export` command, one
    /// copy per context; it has no path on the target and is restored by the target's
    /// `import`. Absent (false) for a directory surface. Additive: a format-1 reader
    /// ignores it and refuses the restore as an unknown surface of the target.
    #[serde(default, skip_serializing_if = "is_false")]
    pub export: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A surface not in the archive, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// The surface.
    pub surface: String,
    /// Source, derived or transient.
    pub class: Class,
    /// Why it is not in the archive.
    pub reason: String,
}

/// One service as archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestService {
    /// The name (of the surface or service).
    pub name: String,
    /// The service's version on the source.
    pub version: String,
    /// The service's state schema on the source.
    pub schema: u32,
    /// Contexts of this service in the archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<String>,
    /// The archived surfaces.
    pub surfaces: Vec<ManifestSurface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Surfaces not archived, and why.
    pub left_out: Vec<LeftOut>,
    /// Names of the secrets the service needs on the target; never their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Regular files archived.
    pub files: u64,
    /// Bytes of file data archived.
    pub bytes: u64,
}

/// The first member of every archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The archive format (see [`ARCHIVE_FORMAT`]).
    pub format: u32,
    /// Always `hero-snap`.
    pub tool: String,
    /// The version of hero-snap that wrote the archive.
    pub tool_version: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The instance's name.
    pub instance: String,
    /// Identifies the run (also in snapshot names and journals).
    pub run_id: String,
    /// How consistent the archived state is.
    pub consistency: Consistency,
    /// Milliseconds the services were frozen (absent when nothing was frozen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_window_ms: Option<u64>,
    /// What was asked for: the whole instance, or a selection.
    pub selection: SelectionRecord,
    /// The archived services.
    pub services: Vec<ManifestService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Fallbacks, downgrades and skipped items of the run.
    pub warnings: Vec<Warning>,
    /// Regular files archived.
    pub files: u64,
    /// Bytes of file data archived.
    pub bytes: u64,
    /// An incremental archive's parent: the archive whose state this one changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRecord>,
    /// Place in its chain: 0 for a full archive, the parent's level + 1 for an incremental.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub level: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Which archive an incremental builds on, and the hashes that make a substitute visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRecord {
    /// The parent's run id: the name its files go by in this archive's index (`in`).
    pub run_id: String,
    /// BLAKE3 of the parent's manifest member.
    pub manifest_blake3: String,
    /// BLAKE3 of the parent's index member.
    pub index_blake3: String,
}

/// The selection a backup was made with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectionRecord {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Services asked for (empty: all).
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Contexts asked for (empty: all).
    pub contexts: Vec<String>,
    #[serde(default)]
    /// Whether derived surfaces were asked for.
    pub include_derived: bool,
}

impl Manifest {
    /// The manifest as written into the archive.
    pub fn to_yaml(&self) -> Result<String> {
        serde_saphyr::to_string(self).map_err(|e| Error::Corrupt(format!("cannot serialise the manifest: {e}")))
    }

    /// Parses a manifest; refuses a format newer than this build reads.
    pub fn from_yaml(text: &str) -> Result<Manifest> {
        // Read the format first so that a newer archive gets the right message even
        // when the rest of its manifest has fields this build does not know.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_saphyr::from_str(text).map_err(|e| Error::Corrupt(format!("{MANIFEST_PATH}: {}", first_line(&e.to_string()))))?;
        if head.format > NEWEST_FORMAT {
            return Err(Error::FormatTooNew { archive: head.format, supported: NEWEST_FORMAT });
        }
        let m: Manifest = serde_saphyr::from_str(text).map_err(|e| Error::Corrupt(format!("{MANIFEST_PATH}: {}", first_line(&e.to_string()))))?;
        // Format 2 is the incremental's: it has a parent, a full archive has none.
        if (m.format >= INCREMENTAL_FORMAT) != m.parent.is_some() || (m.parent.is_some() != (m.level > 0)) {
            return Err(Error::Corrupt(format!("{MANIFEST_PATH}: format {}, level {} and a parent that do not go together", m.format, m.level)));
        }
        Ok(m)
    }

    /// The archived service of this name.
    pub fn service(&self, name: &str) -> Option<&ManifestService> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// One regular file's entry in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IndexEntry {
    pub path: String,
    pub size: u64,
    pub blake3: String,
    /// In an incremental: the run id of the ancestor holding the bytes; absent when this
    /// archive holds them.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub in_archive: Option<String>,
}

/// The last member of every archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Index {
    /// The archive format (see [`ARCHIVE_FORMAT`]).
    pub format: u32,
    /// BLAKE3 of the manifest member's bytes.
    pub manifest_blake3: String,
    /// Regular files (with content) in the archive.
    pub files: u64,
    /// All data members: files, directories, symlinks, hardlinks.
    pub entries: u64,
    /// Bytes of file data archived.
    pub bytes: u64,
    /// Every regular file, in archive order.
    pub index: Vec<IndexEntry>,
}

impl Index {
    /// The whole index as one YAML document: the tests' check that the line-by-line form
    /// is YAML. The reader never parses it whole (D-06).
    #[cfg(test)]
    pub(crate) fn from_yaml(text: &str) -> Result<Index> {
        serde_saphyr::from_str(text).map_err(|e| Error::Corrupt(format!("{INDEX_PATH}: {}", first_line(&e.to_string()))))
    }

    /// Writes the index as YAML with one line per file, so that it can be produced from a
    /// spill file without holding every entry in memory.
    pub(crate) fn write_head(out: &mut impl std::io::Write, format: u32, manifest_blake3: &str, files: u64, entries: u64, bytes: u64) -> std::io::Result<()> {
        writeln!(out, "format: {format}")?;
        writeln!(out, "manifest_blake3: \"{manifest_blake3}\"")?;
        writeln!(out, "files: {files}")?;
        writeln!(out, "entries: {entries}")?;
        writeln!(out, "bytes: {bytes}")?;
        if files == 0 && format == ARCHIVE_FORMAT {
            writeln!(out, "index: []")
        } else {
            writeln!(out, "index:")
        }
    }

    /// One index line: a flow mapping with the path as a YAML double-quoted scalar.
    /// Written once per archived file, so written without the formatting machinery.
    pub(crate) fn write_entry(out: &mut impl std::io::Write, path: &str, size: u64, hash: &blake3::Hash) -> std::io::Result<()> {
        out.write_all(b"- {path: ")?;
        write_quoted(out, path)?;
        out.write_all(b", size: ")?;
        out.write_all(decimal(size, &mut [0u8; 20]))?;
        out.write_all(b", blake3: \"")?;
        out.write_all(hash.to_hex().as_bytes())?;
        out.write_all(b"\"}\n")
    }

    /// An incremental's line for a file whose bytes are in the ancestor `run_id`.
    pub(crate) fn write_inherited(out: &mut impl std::io::Write, path: &str, size: u64, hash: &str, run_id: &str) -> std::io::Result<()> {
        writeln!(out, "- {{path: {}, size: {size}, blake3: \"{hash}\", in: {}}}", yaml_quote(path), yaml_quote(run_id))
    }

    #[cfg(test)]
    pub(crate) fn to_yaml(&self) -> String {
        let mut out = Vec::new();
        Index::write_head(&mut out, self.format, &self.manifest_blake3, self.files, self.entries, self.bytes).expect("writing to a Vec");
        for e in &self.index {
            match &e.in_archive {
                None => out.extend_from_slice(format!("- {{path: {}, size: {}, blake3: \"{}\"}}\n", yaml_quote(&e.path), e.size, e.blake3).as_bytes()),
                Some(id) => Index::write_inherited(&mut out, &e.path, e.size, &e.blake3, id).expect("writing to a Vec"),
            }
        }
        String::from_utf8(out).expect("utf-8")
    }
}

/// A YAML double-quoted scalar on one line: quote and backslash escaped, and every
/// character YAML does not allow raw (controls, DEL, C1, BOM) written as a \u or \U escape.
/// `s` as [`yaml_quote`] quotes it; a plain ASCII path is written as it is, between quotes.
fn write_quoted(out: &mut impl std::io::Write, s: &str) -> std::io::Result<()> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.write_all(b"\"")?;
        out.write_all(s.as_bytes())?;
        out.write_all(b"\"")
    } else {
        out.write_all(yaml_quote(s).as_bytes())
    }
}

/// `n` in decimal, in the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        let printable = matches!(c as u32, 0x20..=0x7e | 0xa0..=0xd7ff | 0xe000..=0xfffd | 0x10000..=0x10ffff) && c != '\u{feff}';
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if printable => out.push(c),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Archive member path of a surface's root.
pub(crate) fn surface_member_root(service: &str, surface: &str, context: Option<&str>) -> String {
    match context {
        None => format!("{SERVICES_DIR}/{service}/instance/{surface}"),
        Some(ctx) => format!("{SERVICES_DIR}/{service}/contexts/{ctx}/{surface}"),
    }
}

/// Which surface a data member belongs to, and its path inside that surface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct MemberKey {
    pub service: String,
    /// The surface.
    pub surface: String,
    pub context: Option<String>,
}

/// Splits a data member path into its surface and the relative path inside it ("" for the
/// surface root). Anything outside the documented layout is `None`.
pub(crate) fn split_member(path: &str) -> Option<(MemberKey, &str)> {
    let rest = path.strip_prefix(SERVICES_DIR)?.strip_prefix('/')?;
    let (service, rest) = rest.split_once('/')?;
    let (kind, rest) = rest.split_once('/')?;
    let (context, rest) = match kind {
        "instance" => (None, rest),
        "contexts" => {
            let (ctx, rest) = rest.split_once('/')?;
            (Some(ctx.to_string()), rest)
        }
        _ => return None,
    };
    let rest = rest.trim_end_matches('/');
    let (surface, inner) = match rest.split_once('/') {
        Some((s, i)) => (s, i),
        None => (rest, ""),
    };
    use crate::inventory::valid_name;
    if !valid_name(service) || !valid_name(surface) || context.as_deref().is_some_and(|c| !valid_name(c)) {
        return None;
    }
    Some((MemberKey { service: service.to_string(), surface: surface.to_string(), context }, inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_member_layout() {
        let (k, inner) = split_member("services/hero_db/instance/data/a/b").unwrap();
        assert_eq!((k.service.as_str(), k.surface.as_str(), k.context, inner), ("hero_db", "data", None, "a/b"));
        let (k, inner) = split_member("services/hero_foundry/contexts/geomind/files/").unwrap();
        assert_eq!((k.context.as_deref(), inner), (Some("geomind"), ""));
        assert!(split_member("services/x/other/y").is_none());
        assert!(split_member("etc/passwd").is_none());
        assert!(split_member("services/../instance/y").is_none());
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let err = Manifest::from_yaml("format: 3\nsomething_new: true\n").unwrap_err();
        assert!(matches!(&err, Error::FormatTooNew { archive: 3, .. }) && err.to_string().contains("archive format 3 is newer"), "{err}");
        assert_eq!(err.exit_code(), 10);
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_-]{0,12}"
    }

    proptest! {
        #[test]
        fn manifest_round_trips(instance in name(), svc in name(), version in "[0-9]\\.[0-9]{1,3}\\.[0-9]", schema in 0u32..100,
                                ctxs in proptest::collection::vec(name(), 0..4), files in any::<u64>(), bytes in any::<u64>(),
                                freeze in proptest::option::of(0u64..100_000), warn in "[ -~]{0,40}") {
            let m = Manifest {
                format: ARCHIVE_FORMAT, tool: "hero-snap".into(), tool_version: "0.1.0".into(),
                created: "2026-11-27T00:00:00Z".into(), instance, run_id: "r1".into(),
                consistency: Consistency::Atomic, freeze_window_ms: freeze,
                selection: SelectionRecord { services: vec![svc.clone()], contexts: ctxs.clone(), include_derived: true },
                services: vec![ManifestService {
                    name: svc, version, schema, contexts: ctxs.clone(),
                    surfaces: vec![ManifestSurface { name: "files".into(), scope: Scope::Context, class: Class::Source,
                        path: "/var/lib/x/{context}/files".into(), contexts: ctxs, files, bytes, export: files % 2 == 1 }],
                    left_out: vec![LeftOut { surface: "idx".into(), class: Class::Derived, reason: "derived".into() }],
                    secrets: vec!["KEY".into()], files, bytes }],
                warnings: vec![Warning { code: "w".into(), message: warn }],
                files, bytes, parent: None, level: 0,
            };
            let back = Manifest::from_yaml(&m.to_yaml().unwrap()).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn index_round_trips(paths in proptest::collection::vec("[^\u{0}]{1,40}", 0..20), sizes in proptest::collection::vec(any::<u64>(), 20)) {
            let index = Index {
                format: ARCHIVE_FORMAT,
                manifest_blake3: blake3::hash(b"m").to_hex().to_string(),
                files: paths.len() as u64, entries: 7, bytes: 42,
                index: paths.iter().zip(&sizes).enumerate().map(|(i, (p, s))| IndexEntry { path: p.clone(), size: *s, blake3: blake3::hash(p.as_bytes()).to_hex().to_string(),
                    in_archive: (i % 3 == 1).then(|| format!("2026{i}-\"{p}")) }).collect(),
            };
            let back = Index::from_yaml(&index.to_yaml()).unwrap();
            prop_assert_eq!(back, index);
        }
    }
}
