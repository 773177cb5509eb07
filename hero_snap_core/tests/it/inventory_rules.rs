//! Every inventory validation rule: a failing input and the message it must produce.

use std::path::Path;

use hero_snap_core::Error;
use hero_snap_core::{Class, Inventory, Scope};

const GOOD: &str = include_str!("../../../fixtures/inventories/rules.yaml");

fn parse(text: &str) -> Result<Inventory, Error> {
    Inventory::parse(text, Path::new("inv.yaml"))
}

/// Asserts the error names the file, the line, the field, and contains `needle`.
fn refused(text: &str, line: u64, field: &str, needle: &str) {
    match parse(text) {
        Err(Error::Inventory { file, line: l, field: f, message }) => {
            assert_eq!(file, Path::new("inv.yaml"));
            assert!(message.contains(needle), "message `{message}` lacks `{needle}`");
            assert!(f.contains(field), "field `{f}` is not `{field}` ({message})");
            assert_eq!(l, line, "wrong line for `{message}`");
            let shown = Error::Inventory { file, line: l, field: f, message }.to_string();
            assert!(shown.starts_with(&format!("inv.yaml:{line}: ")), "{shown}");
        }
        other => panic!("expected an inventory error containing `{needle}`, got {other:?}"),
    }
}

#[test]
fn the_good_inventory_parses() {
    let inv = parse(GOOD).unwrap();
    assert_eq!(inv.instance(), "demo");
    let db = inv.service("hero_db").unwrap();
    assert_eq!((db.schema, db.secrets.as_slice()), (2, &["HERO_DB_KEY".to_string()][..]));
    let f = &inv.service("hero_foundry").unwrap().surfaces[0];
    assert_eq!((f.scope, f.class), (Scope::Context, Class::Source));
}

#[test]
fn the_hero_fixture_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hero-instance.yaml");
    let inv = Inventory::load(&path).unwrap();
    for svc in ["hero_db", "hero_osis", "hero_foundry", "hero_collab", "hero_biz", "hero_books", "hero_indexer", "hero_embedder", "hero_voice", "hero_proc"] {
        assert!(inv.service(svc).is_some(), "{svc} missing from the fixture");
    }
    assert!(inv.service("hero_voice").unwrap().surfaces.iter().all(|s| s.class == Class::Transient));
    assert!(inv.service("hero_indexer").unwrap().surfaces.iter().all(|s| s.class == Class::Derived));
}

#[test]
fn unknown_field() {
    refused(&GOOD.replace("    schema: 2\n", "    schema: 2\n    shema: 3\n"), 7, "(document)", "unknown field");
}

#[test]
fn missing_field() {
    refused(&GOOD.replace("    schema: 2\n", ""), 7, "(document)", "missing field");
}

#[test]
fn relative_path() {
    refused(&GOOD.replace("path: /var/lib/hero/hero_db", "path: var/lib/hero/hero_db"), 10, "services.hero_db.surfaces[0].path", "relative");
}

#[test]
fn dot_dot_in_path() {
    refused(&GOOD.replace("path: /var/lib/hero/hero_db", "path: /var/lib/../hero_db"), 10, "surfaces[0].path", "`..`");
}

#[test]
fn overlapping_paths_across_services() {
    refused(
        &GOOD.replace("/var/lib/hero/hero_foundry/{context}/files", "/var/lib/hero/hero_db/{context}/files"),
        18,
        "services.hero_foundry.surfaces[0].path",
        "overlaps",
    );
}

#[test]
fn context_layout_without_placeholder() {
    refused(&GOOD.replace("/var/lib/hero/hero_foundry/{context}/files", "/var/lib/hero/hero_foundry/files"), 18, "surfaces[0].path", "{context}");
}

#[test]
fn placeholder_inside_a_component() {
    refused(
        &GOOD.replace("/var/lib/hero/hero_foundry/{context}/files", "/var/lib/hero/hero_foundry/ctx-{context}/files"),
        18,
        "surfaces[0].path",
        "whole path component",
    );
}

#[test]
fn placeholder_in_instance_surface() {
    refused(&GOOD.replace("path: /var/lib/hero/hero_db", "path: /var/lib/hero/{context}/db"), 10, "surfaces[0].path", "instance surface cannot contain");
}

#[test]
fn duplicate_surface() {
    let text = GOOD.replace(
        "        class: source\n  hero_foundry:",
        "        class: source\n      - name: data\n        path: /var/lib/hero/hero_db2\n        scope: instance\n        class: source\n  hero_foundry:",
    );
    refused(&text, 13, "services.hero_db.surfaces[1].name", "duplicate surface `data`");
}

#[test]
fn unknown_class() {
    refused(
        &GOOD.replace("        class: source\n  hero_foundry", "        class: precious\n  hero_foundry"),
        12,
        "surfaces[0].class",
        "unknown class `precious`",
    );
}

#[test]
fn unknown_scope() {
    refused(&GOOD.replace("scope: instance", "scope: global"), 11, "surfaces[0].scope", "unknown scope `global`");
}

#[test]
fn newer_format() {
    refused(&GOOD.replace("format: 1", "format: 2"), 1, "format", "not supported");
}

#[test]
fn bad_names() {
    refused(&GOOD.replace("name: data", "name: ../data"), 9, "surfaces[0].name", "not a valid surface name");
    refused(&GOOD.replace("[HERO_DB_KEY]", "[\"HERO DB KEY\"]"), 7, "services.hero_db.secrets", "not a valid secret name");
}

#[test]
fn migration_from_a_newer_schema() {
    let text = GOOD.replace("    secrets: [HERO_DB_KEY]\n", "    secrets: [HERO_DB_KEY]\n    migrations:\n      - {from: 2, run: {argv: [migrate]}}\n");
    refused(&text, 9, "services.hero_db.migrations", "older schemas only");
}

#[test]
fn empty_hook_argv() {
    let text = GOOD.replace("    secrets: [HERO_DB_KEY]\n", "    secrets: [HERO_DB_KEY]\n    hooks: {stop: {argv: []}}\n");
    refused(&text, 5, "services.hero_db.hooks.stop", "argv");
}

#[test]
fn duplicate_explicit_context() {
    refused(&GOOD.replace("instance: demo\n", "instance: demo\ncontexts: [a, b, a]\n"), 3, "contexts", "listed twice");
}

#[test]
fn contexts_are_discovered_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let inv = parse(GOOD).unwrap().rerooted(dir.path());
    for c in ["geomind", "threefold"] {
        std::fs::create_dir_all(dir.path().join(format!("var/lib/hero/hero_foundry/{c}/files"))).unwrap();
    }
    // a directory without the rest of the layout is not a context, nor is a file
    std::fs::create_dir_all(dir.path().join("var/lib/hero/hero_foundry/stray")).unwrap();
    std::fs::write(dir.path().join("var/lib/hero/hero_foundry/file"), "").unwrap();
    assert_eq!(inv.contexts().unwrap(), vec!["geomind", "threefold"]);
}
