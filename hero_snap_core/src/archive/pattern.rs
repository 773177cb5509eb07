//! Which members `ls` and `extract` pick: glob patterns on a member's path.
//!
//! A pattern is matched against two spellings of every path, and against every directory
//! above it, so that naming a directory picks all it holds:
//! - the path inside its surface: `docs/readme.md`;
//! - the path as `extract` lays it out: `hero_foundry/contexts/geomind/files/docs/readme.md`
//!   (`<service>/instance/<surface>/…` for instance-scoped surfaces).
//!
//! Globs are the `glob` crate's: `*` and `?` never match `/`, `**` (a whole component)
//! matches any number of directories, `[abc]` and `[!abc]` are character classes. A
//! leading or trailing `/` is ignored.

use super::format::MemberKey;
use crate::error::{Error, Result};

/// The patterns given to `ls` or `extract --path`; none picks everything.
#[derive(Debug, Clone, Default)]
pub struct PathPatterns {
    globs: Vec<glob::Pattern>,
}

const OPTIONS: glob::MatchOptions = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

impl PathPatterns {
    /// Parses the patterns; a malformed one is a usage error naming it.
    pub fn new(patterns: &[String]) -> Result<PathPatterns> {
        let mut globs = Vec::new();
        for p in patterns {
            let text = p.trim_matches('/');
            if text.is_empty() {
                return Err(Error::Usage(format!("`{p}`: an empty path pattern; name a path inside a surface, e.g. docs/readme.md, or use `**`")));
            }
            globs.push(glob::Pattern::new(text).map_err(|e| Error::Usage(format!("`{p}`: not a glob pattern ({e})")))?);
        }
        Ok(PathPatterns { globs })
    }

    /// Whether no pattern was given (everything is picked).
    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// The patterns as given (trimmed), for messages.
    pub fn texts(&self) -> Vec<String> {
        self.globs.iter().map(|g| g.as_str().to_string()).collect()
    }

    /// Whether the member `inner` of the surface copy `key` is picked.
    pub(crate) fn picks(&self, key: &MemberKey, inner: &str) -> bool {
        if self.globs.is_empty() {
            return true;
        }
        let layout = layout_path(key, "");
        let hit = |candidate: &str| self.globs.iter().any(|g| g.matches_with(candidate, OPTIONS));
        // The layout's own levels: `svc`, `svc/instance`, `svc/contexts/ctx`, the surface root.
        let mut level = String::new();
        for part in layout.split('/') {
            if !level.is_empty() {
                level.push('/');
            }
            level.push_str(part);
            if hit(&level) {
                return true;
            }
        }
        let mut end = 0;
        while end < inner.len() {
            end = inner[end..].find('/').map_or(inner.len(), |i| end + i);
            let prefix = &inner[..end];
            if hit(prefix) || hit(&format!("{layout}/{prefix}")) {
                return true;
            }
            end += 1;
        }
        false
    }
}

/// `<service>/instance/<surface>[/inner]` or `<service>/contexts/<ctx>/<surface>[/inner]`:
/// where `extract` writes a member under its `--to`.
pub(crate) fn layout_path(key: &MemberKey, inner: &str) -> String {
    let mut out = match &key.context {
        None => format!("{}/instance/{}", key.service, key.surface),
        Some(c) => format!("{}/contexts/{c}/{}", key.service, key.surface),
    };
    if !inner.is_empty() {
        out.push('/');
        out.push_str(inner);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ctx: Option<&str>) -> MemberKey {
        MemberKey { service: "hero_foundry".into(), surface: "files".into(), context: ctx.map(String::from) }
    }

    fn picks(patterns: &[&str], ctx: Option<&str>, inner: &str) -> bool {
        PathPatterns::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap().picks(&key(ctx), inner)
    }

    #[test]
    fn patterns_pick_paths_their_directories_and_layouts() {
        assert!(picks(&[], None, "anything"));
        assert!(picks(&["docs/readme.md"], Some("geomind"), "docs/readme.md"));
        assert!(!picks(&["docs/readme.md"], Some("geomind"), "docs/readme.md.bak"));
        // A directory picks what it holds.
        assert!(picks(&["docs"], Some("geomind"), "docs/sub/deep.txt"));
        assert!(!picks(&["docs"], Some("geomind"), "docs-old/x"));
        // `*` stays within a component, `**` crosses them.
        assert!(picks(&["*.md"], None, "a.md"));
        assert!(!picks(&["*.md"], None, "x/a.bin"));
        assert!(picks(&["**/*.md"], None, "x/y/a.md"));
        // The layout spelling, for one context or one service.
        assert!(picks(&["hero_foundry/contexts/geomind/files/docs/readme.md"], Some("geomind"), "docs/readme.md"));
        assert!(!picks(&["hero_foundry/contexts/geomind/**"], Some("default"), "docs/readme.md"));
        assert!(picks(&["hero_foundry/contexts/geomind"], Some("geomind"), ""));
        assert!(picks(&["hero_foundry"], None, "blob.bin"));
        assert!(picks(&["/docs/"], None, "docs/a"));
        assert!(PathPatterns::new(&["".into()]).is_err());
        assert!(PathPatterns::new(&["[".into()]).unwrap_err().to_string().contains("not a glob"));
    }
}
