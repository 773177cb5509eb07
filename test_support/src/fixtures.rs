//! The test inventories, `fixtures/inventories/*.yaml` (their README says which test uses
//! which). Some hold placeholders, `{name}`, for what only the test knows (a temporary
//! path, a cgroup's name); the format's own placeholders (`{context}`, `{service}`…) stay.

use std::path::PathBuf;

/// The repository's root (the workspace's).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The path of `fixtures/inventories/<name>.yaml`.
pub fn inventory_path(name: &str) -> PathBuf {
    repo().join("fixtures/inventories").join(format!("{name}.yaml"))
}

/// The text of `fixtures/inventories/<name>.yaml` with each `{key}` of `vars` replaced by
/// its value. Every key must occur, and only the format's own placeholders may be left.
pub fn inventory(name: &str, vars: &[(&str, &str)]) -> String {
    let path = inventory_path(name);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (k, v) in vars {
        let p = format!("{{{k}}}");
        assert!(text.contains(&p), "{}: no placeholder {p}", path.display());
        text = text.replace(&p, v);
    }
    // What is left between braces must be one of the format's own placeholders.
    const OWN: [&str; 5] = ["context", "new_context", "service", "from_schema", "to_schema"];
    for piece in text.split('{').skip(1) {
        if let Some((word, _)) = piece.split_once('}') {
            let is_name = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(!is_name || OWN.contains(&word), "{}: placeholder {{{word}}} is not filled in", path.display());
        }
    }
    text
}
