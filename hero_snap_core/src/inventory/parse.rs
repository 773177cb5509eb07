//! Reading an inventory file: YAML with locations kept, so that every validation error
//! names the file, the line, the field and the fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::model::*;
use crate::error::{Error, Result};

// ---- the file as written -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInventory {
    format: Spanned<u32>,
    instance: Spanned<String>,
    #[serde(default)]
    contexts: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    secret_store: Option<Spanned<SecretStore>>,
    #[serde(default)]
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    notify: Option<Spanned<FileNotify>>,
    services: BTreeMap<String, Spanned<FileService>>,
}

/// `notify:`: a command (argv, timeout) and the runs it is told about.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNotify {
    argv: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default)]
    on: Option<Spanned<Vec<NotifyOn>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    version: Spanned<String>,
    schema: u32,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    surfaces: Vec<Spanned<FileSurface>>,
    #[serde(default)]
    exports: Vec<Spanned<FileExport>>,
    #[serde(default)]
    migrations: Vec<Spanned<Migration>>,
    #[serde(default)]
    quiesce: Quiesce,
    #[serde(default)]
    hooks: Hooks,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSurface {
    name: Spanned<String>,
    path: Spanned<String>,
    scope: Spanned<String>,
    class: Spanned<String>,
    #[serde(default)]
    snapshot: Option<SnapshotBackend>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; kept so the field is accepted
    description: Option<String>,
}

/// `exports[i]`: a per-context export surface (D-16).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExport {
    name: Spanned<String>,
    export: Command,
    import: Command,
}

/// Names of services, surfaces, contexts and secrets: safe as one path component and in YAML.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.starts_with('-')
}

impl Inventory {
    /// Reads and validates an inventory file.
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path, "reading the inventory"))?;
        Inventory::parse(&text, path)
    }

    /// [`Inventory::load`], then, with a `root`, [`Inventory::rerooted`] under it: the root
    /// directory is created when missing and its path resolved first (`--root`).
    pub fn load_under(path: &Path, root: Option<&Path>) -> Result<Inventory> {
        let inv = Inventory::load(path)?;
        let Some(root) = root else { return Ok(inv) };
        std::fs::create_dir_all(root).map_err(Error::io(root, "creating the root"))?;
        let root = std::fs::canonicalize(root).map_err(Error::io(root, "resolving the root"))?;
        Ok(inv.rerooted(&root))
    }

    /// Parses and validates inventory text; `source` is only used in messages.
    pub fn parse(text: &str, source: &Path) -> Result<Inventory> {
        let err = |line: u64, field: &str, message: String| Error::Inventory { file: source.to_path_buf(), line, field: field.to_string(), message };
        let file: FileInventory = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("").to_string();
            let hint = if first.contains("unknown field") {
                "; remove it or check its spelling against docs/INVENTORY.md"
            } else if first.contains("missing field") {
                "; add it (docs/INVENTORY.md lists the required fields)"
            } else {
                ""
            };
            err(line, "(document)", format!("{first}{hint}"))
        })?;

        if file.format.value != INVENTORY_FORMAT {
            return Err(err(
                file.format.referenced.line(),
                "format",
                format!(
                    "inventory format {} is not supported; this build reads format {INVENTORY_FORMAT} (upgrade hero-snap, or rewrite the file)",
                    file.format.value
                ),
            ));
        }
        if !valid_name(&file.instance.value) {
            return Err(err(
                file.instance.referenced.line(),
                "instance",
                format!("`{}` is not a valid instance name; use letters, digits, `_`, `-`, `.`", file.instance.value),
            ));
        }
        let rules = Rules { source };
        let contexts = rules.contexts(file.contexts)?;
        let state_dir = rules.state_dir(file.state_dir)?;
        let notify = file.notify.map(|n| rules.notify(n)).transpose()?;
        if file.services.is_empty() {
            return Err(err(0, "services", "no services are declared; declare at least one".into()));
        }
        // (path, service, surface, line) of every surface, for the overlap rule.
        let mut claimed: Vec<(PathBuf, String, String, u64)> = Vec::new();
        let mut services = Vec::new();
        for (svc_name, svc) in file.services {
            services.push(rules.service(svc_name, svc, &mut claimed)?);
        }

        let secret_store = match file.secret_store {
            Some(Spanned { value: SecretStore::Command(c), referenced, .. }) if c.argv.is_empty() => {
                return Err(err(
                    referenced.line(),
                    "secret_store.command.argv",
                    "`argv` is empty; give the program that prints the secret names, e.g. [hero_proc, secret, list]".into(),
                ));
            }
            other => other.map(|s| s.value),
        };
        Ok(Inventory { source: source.to_path_buf(), instance: file.instance.value, contexts, secret_store, state_dir, notify, root: None, services })
    }
}

/// The validation rules past the file's syntax; every error names the file and line.
struct Rules<'a> {
    source: &'a Path,
}

impl Rules<'_> {
    fn err(&self, line: u64, field: &str, message: String) -> Error {
        Error::Inventory { file: self.source.to_path_buf(), line, field: field.to_string(), message }
    }

    fn contexts(&self, list: Option<Vec<Spanned<String>>>) -> Result<Option<Vec<String>>> {
        let Some(list) = list else { return Ok(None) };
        let mut seen = BTreeSet::new();
        for c in &list {
            if !valid_name(&c.value) {
                return Err(self.err(
                    c.referenced.line(),
                    "contexts",
                    format!("`{}` is not a valid context name; use letters, digits, `_`, `-`, `.`", c.value),
                ));
            }
            if !seen.insert(c.value.clone()) {
                return Err(self.err(c.referenced.line(), "contexts", format!("context `{}` is listed twice; remove one", c.value)));
            }
        }
        Ok(Some(list.into_iter().map(|c| c.value).collect()))
    }

    fn state_dir(&self, dir: Option<Spanned<String>>) -> Result<Option<PathBuf>> {
        let Some(s) = dir else { return Ok(None) };
        let p = PathBuf::from(&s.value);
        if !p.is_absolute() {
            return Err(self.err(s.referenced.line(), "state_dir", format!("`{}` is relative; write an absolute path", s.value)));
        }
        Ok(Some(p))
    }

    fn notify(&self, n: Spanned<FileNotify>) -> Result<Notify> {
        let line = n.referenced.line();
        let n = n.value;
        if n.argv.is_empty() {
            return Err(self.err(line, "notify.argv", "`argv` is empty; give the program to run, e.g. [curl, -fsS, --data-binary, \"@-\", URL]".into()));
        }
        let mut on = Vec::new();
        if let Some(list) = n.on {
            if list.value.is_empty() {
                return Err(self.err(
                    list.referenced.line(),
                    "notify.on",
                    "is empty, so the command would never run; write [failure] or [failure, success]".into(),
                ));
            }
            for when in list.value {
                if on.contains(&when) {
                    return Err(self.err(list.referenced.line(), "notify.on", format!("`{}` is listed twice; remove one", when.as_str())));
                }
                on.push(when);
            }
        } else {
            on.push(NotifyOn::Failure);
        }
        let command = Command { argv: n.argv, timeout_secs: n.timeout_secs };
        Ok(Notify { command, on })
    }

    /// One service and its surfaces, migrations and hooks.
    fn service(&self, svc_name: String, svc: Spanned<FileService>, claimed: &mut Vec<(PathBuf, String, String, u64)>) -> Result<Service> {
        let line = svc.referenced.line();
        let svc = svc.value;
        let field = |f: &str| format!("services.{svc_name}.{f}");
        if !valid_name(&svc_name) {
            return Err(self.err(line, &format!("services.{svc_name}"), "not a valid service name; use letters, digits, `_`, `-`, `.`".into()));
        }
        if svc.version.value.trim().is_empty() {
            return Err(self.err(svc.version.referenced.line(), &field("version"), "is empty; write the service's version".into()));
        }
        let mut secrets = Vec::new();
        for s in svc.secrets {
            if !valid_name(&s.value) {
                return Err(self.err(s.referenced.line(), &field("secrets"), format!("`{}` is not a valid secret name", s.value)));
            }
            secrets.push(s.value);
        }
        if svc.surfaces.is_empty() {
            return Err(self.err(line, &field("surfaces"), "no surfaces declared; declare where the service keeps its state".into()));
        }
        let mut surfaces: Vec<Surface> = Vec::new();
        for (i, s) in svc.surfaces.into_iter().enumerate() {
            let surface = self.surface(&svc_name, i, s.value, &surfaces, claimed)?;
            surfaces.push(surface);
        }
        let exports = self.exports(&svc_name, svc.exports, &surfaces)?;
        let mut migrations: Vec<Migration> = Vec::new();
        for m in svc.migrations {
            let mline = m.referenced.line();
            let m = m.value;
            if m.from >= svc.schema {
                return Err(self.err(
                    mline,
                    &field("migrations"),
                    format!("a migration from schema {} cannot apply to a service at schema {}; migrations go from older schemas only", m.from, svc.schema),
                ));
            }
            if migrations.iter().any(|o| o.from == m.from) {
                return Err(self.err(mline, &field("migrations"), format!("two migrations from schema {}; keep one", m.from)));
            }
            if m.run.argv.is_empty() {
                return Err(self.err(mline, &field("migrations"), "the migration's `argv` is empty".into()));
            }
            migrations.push(m);
        }
        for (hook, cmd) in [
            ("quiesce.pre", &svc.quiesce.pre),
            ("quiesce.post", &svc.quiesce.post),
            ("hooks.stop", &svc.hooks.stop),
            ("hooks.start", &svc.hooks.start),
            ("hooks.rebuild", &svc.hooks.rebuild),
            ("hooks.rename", &svc.hooks.rename),
        ] {
            if cmd.as_ref().is_some_and(|c| c.argv.is_empty()) {
                return Err(self.err(line, &field(hook), "`argv` is empty; give the program to run".into()));
            }
        }
        Ok(Service {
            name: svc_name,
            version: svc.version.value,
            schema: svc.schema,
            secrets,
            surfaces,
            exports,
            migrations,
            quiesce: svc.quiesce,
            hooks: svc.hooks,
        })
    }

    /// The service's export surfaces: valid names, unique among its surfaces and exports,
    /// both commands given.
    fn exports(&self, svc_name: &str, list: Vec<Spanned<FileExport>>, surfaces: &[Surface]) -> Result<Vec<Export>> {
        let mut out: Vec<Export> = Vec::new();
        for (i, e) in list.into_iter().enumerate() {
            let line = e.referenced.line();
            let e = e.value;
            let f = |name: &str| format!("services.{svc_name}.exports[{i}].{name}");
            let (name, nline) = (e.name.value, e.name.referenced.line());
            if !valid_name(&name) {
                return Err(self.err(nline, &f("name"), format!("`{name}` is not a valid export name; use letters, digits, `_`, `-`, `.`")));
            }
            if surfaces.iter().any(|s| s.name == name) || out.iter().any(|o| o.name == name) {
                return Err(self.err(
                    nline,
                    &f("name"),
                    format!(
                        "`{name}` is already the name of a surface or export of `{svc_name}`; give each its own name (both name a directory of the archive)"
                    ),
                ));
            }
            for (which, cmd) in [("export", &e.export), ("import", &e.import)] {
                if cmd.argv.is_empty() {
                    return Err(self.err(line, &f(which), "`argv` is empty; give the program to run".into()));
                }
            }
            out.push(Export { name, export: e.export, import: e.import });
        }
        Ok(out)
    }

    /// One surface of service `svc_name` (its `i`th); `earlier` are the service's surfaces
    /// before it, `claimed` every surface path so far (path, service, surface, line).
    fn surface(&self, svc_name: &str, i: usize, s: FileSurface, earlier: &[Surface], claimed: &mut Vec<(PathBuf, String, String, u64)>) -> Result<Surface> {
        let f = |name: &str| format!("services.{svc_name}.surfaces[{i}].{name}");
        if !valid_name(&s.name.value) {
            return Err(self.err(
                s.name.referenced.line(),
                &f("name"),
                format!("`{}` is not a valid surface name; use letters, digits, `_`, `-`, `.`", s.name.value),
            ));
        }
        if earlier.iter().any(|o| o.name == s.name.value) {
            return Err(self.err(
                s.name.referenced.line(),
                &f("name"),
                format!("duplicate surface `{}` in service `{svc_name}`; give each surface its own name", s.name.value),
            ));
        }
        let scope = match s.scope.value.as_str() {
            "instance" => Scope::Instance,
            "context" => Scope::Context,
            other => {
                return Err(self.err(
                    s.scope.referenced.line(),
                    &f("scope"),
                    format!("unknown scope `{other}`; use `instance` (one copy per instance) or `context` (one copy per context)"),
                ))
            }
        };
        let class = match s.class.value.as_str() {
            "source" => Class::Source,
            "derived" => Class::Derived,
            "transient" => Class::Transient,
            other => return Err(self.err(s.class.referenced.line(), &f("class"), format!("unknown class `{other}`; use `source`, `derived` or `transient`"))),
        };
        let pline = s.path.referenced.line();
        let path = PathBuf::from(&s.path.value);
        if !path.is_absolute() {
            return Err(self.err(pline, &f("path"), format!("`{}` is relative; write an absolute path", s.path.value)));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) || s.path.value.contains("//") {
            return Err(self.err(pline, &f("path"), format!("`{}` contains `.`, `..` or `//`; write the path in its plain form", s.path.value)));
        }
        if path == Path::new("/") {
            return Err(self.err(pline, &f("path"), "`/` cannot be a surface; name the service's own directory".into()));
        }
        let placeholders = path.components().filter(|c| c.as_os_str() == CONTEXT_PLACEHOLDER).count();
        let stray = s.path.value.matches(CONTEXT_PLACEHOLDER).count() != placeholders;
        match scope {
            Scope::Context if placeholders != 1 || stray => {
                return Err(self.err(pline, &f("path"), format!(
                    "a per-context surface needs exactly one `{CONTEXT_PLACEHOLDER}` as a whole path component, e.g. `/var/lib/hero/{svc_name}/{CONTEXT_PLACEHOLDER}/{}`", s.name.value)));
            }
            Scope::Instance if placeholders > 0 || stray => {
                return Err(self.err(
                    pline,
                    &f("path"),
                    format!("an instance surface cannot contain `{CONTEXT_PLACEHOLDER}`; set `scope: context` or remove the placeholder"),
                ));
            }
            _ => {}
        }
        if path.components().nth(1).is_some_and(|c| c.as_os_str() == CONTEXT_PLACEHOLDER) {
            return Err(self.err(pline, &f("path"), "`{context}` cannot be the first component; put the contexts in a directory of their own".into()));
        }
        for (other, osvc, osurf, oline) in claimed.iter() {
            if paths_overlap(other, &path) {
                return Err(self.err(
                    pline,
                    &f("path"),
                    format!(
                        "`{}` overlaps `{}` of surface `{osvc}.{osurf}` (line {oline}); a path can belong to one surface only: move one, or narrow it",
                        path.display(),
                        other.display()
                    ),
                ));
            }
        }
        claimed.push((path.clone(), svc_name.to_string(), s.name.value.clone(), pline));
        Ok(Surface { name: s.name.value, path, scope, class, snapshot: s.snapshot })
    }
}

/// True when one path is a prefix of the other, `{context}` matching any one component.
fn paths_overlap(a: &Path, b: &Path) -> bool {
    a.components().zip(b.components()).all(|(x, y)| x == y || x.as_os_str() == CONTEXT_PLACEHOLDER || y.as_os_str() == CONTEXT_PLACEHOLDER)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty secret-store command used to reach pre-flight and panic there (review
    /// finding, issue 14); it is refused where it is written.
    #[test]
    fn an_empty_secret_store_command_is_refused_with_its_line() {
        let text = "format: 1\ninstance: demo\nsecret_store:\n  command:\n    argv: []\nservices:\n  hero_db:\n    version: \"1\"\n    schema: 1\n    surfaces:\n      - {name: data, path: /var/lib/hero/db, scope: instance, class: source}\n";
        match Inventory::parse(text, Path::new("inv.yaml")) {
            Err(Error::Inventory { line, field, message, .. }) => {
                assert_eq!(field, "secret_store.command.argv");
                assert!((3..=5).contains(&line), "line {line}");
                assert!(message.contains("argv"), "{message}");
            }
            other => panic!("expected an inventory error, got {other:?}"),
        }
    }

    const SERVICES: &str = "services:\n  hero_db:\n    version: \"1\"\n    schema: 1\n    surfaces:\n      - {name: data, path: /var/lib/hero/db, scope: instance, class: source}\n";

    #[test]
    fn notify_defaults_to_failures_and_takes_successes_too() {
        let text = format!("format: 1\ninstance: demo\nnotify:\n  argv: [curl, -d, \"@-\", \"https://ntfy.sh/t\"]\n{SERVICES}");
        let inv = Inventory::parse(&text, Path::new("inv.yaml")).unwrap();
        let n = inv.notify().unwrap();
        assert_eq!((n.on.as_slice(), n.command.timeout_secs), (&[NotifyOn::Failure][..], 60));
        assert!(n.wants(false) && !n.wants(true));
        let text = format!("format: 1\ninstance: demo\nnotify:\n  argv: [x]\n  timeout_secs: 5\n  on: [failure, success]\n{SERVICES}");
        let n = Inventory::parse(&text, Path::new("inv.yaml")).unwrap().notify().cloned().unwrap();
        assert!(n.wants(false) && n.wants(true) && n.command.timeout_secs == 5);
        assert!(Inventory::parse(&format!("format: 1\ninstance: demo\n{SERVICES}"), Path::new("inv.yaml")).unwrap().notify().is_none());
    }

    #[test]
    fn notify_rules_name_the_field() {
        for (notify, field, says) in [
            ("  argv: []\n", "notify.argv", "`argv` is empty"),
            ("  argv: [x]\n  on: []\n", "notify.on", "would never run"),
            ("  argv: [x]\n  on: [failure, failure]\n", "notify.on", "`failure` is listed twice"),
            ("  argv: [x]\n  on: [always]\n", "(document)", "always"),
            ("  argv: [x]\n  when: [failure]\n", "(document)", "unknown field"),
        ] {
            let text = format!("format: 1\ninstance: demo\nnotify:\n{notify}{SERVICES}");
            match Inventory::parse(&text, Path::new("inv.yaml")) {
                Err(Error::Inventory { line, field: f, message, .. }) => {
                    assert_eq!(f, field, "{message}");
                    assert!((3..=5).contains(&line), "line {line}: {message}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected an inventory error for {notify:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn export_rules_name_the_field() {
        let head = "format: 1\ninstance: demo\nservices:\n  hero_db:\n    version: \"1\"\n    schema: 1\n    surfaces:\n      - {name: data, path: /var/lib/hero/db, scope: instance, class: source}\n    exports:\n";
        let ok = Inventory::parse(&format!("{head}      - {{name: memory, export: {{argv: [x]}}, import: {{argv: [y]}}}}\n"), Path::new("inv.yaml")).unwrap();
        assert_eq!(ok.service("hero_db").unwrap().export("memory").unwrap().import.argv, ["y"]);
        for (export, field, says) in [
            ("{name: data, export: {argv: [x]}, import: {argv: [y]}}", "services.hero_db.exports[0].name", "already the name of a surface or export"),
            ("{name: ../m, export: {argv: [x]}, import: {argv: [y]}}", "services.hero_db.exports[0].name", "not a valid export name"),
            ("{name: m, export: {argv: []}, import: {argv: [y]}}", "services.hero_db.exports[0].export", "`argv` is empty"),
            ("{name: m, export: {argv: [x]}, import: {argv: []}}", "services.hero_db.exports[0].import", "`argv` is empty"),
            ("{name: m, export: {argv: [x]}}", "(document)", "missing field `import`"),
        ] {
            match Inventory::parse(&format!("{head}      - {export}\n"), Path::new("inv.yaml")) {
                Err(Error::Inventory { line, field: f, message, .. }) => {
                    assert_eq!(f, field, "{message}");
                    assert_eq!(line, 10, "{message}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected an inventory error for {export}, got {other:?}"),
            }
        }
    }

    #[test]
    fn overlap_rules() {
        assert!(paths_overlap(Path::new("/a/b"), Path::new("/a/b/c")));
        assert!(paths_overlap(Path::new("/a/{context}/x"), Path::new("/a/shared/x/y")));
        assert!(!paths_overlap(Path::new("/a/{context}/x"), Path::new("/a/shared/y")));
        assert!(!paths_overlap(Path::new("/a/b"), Path::new("/a/c")));
    }

    #[test]
    fn path_for_context() {
        let s = Surface { name: "f".into(), path: "/v/{context}/files".into(), scope: Scope::Context, class: Class::Source, snapshot: None };
        assert_eq!(s.path_for(Some("geomind")), PathBuf::from("/v/geomind/files"));
        assert_eq!(s.context_layout(), Some((PathBuf::from("/v"), PathBuf::from("files"))));
    }
}
