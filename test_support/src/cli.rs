//! Running the `hero-snap` binary, reading its JSON result, and test instances laid out in
//! temporary directories.
//!
//! Only the CLI package's own tests know where cargo built the binary
//! (`env!("CARGO_BIN_EXE_hero-snap")`), so they hand its path in: `Cli::new(path)`.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::data::pseudo_random;

/// The `hero-snap` binary under test.
#[derive(Clone, Copy, Debug)]
pub struct Cli {
    path: &'static str,
}

impl Cli {
    pub const fn new(path: &'static str) -> Cli {
        Cli { path }
    }

    pub fn path(&self) -> &Path {
        Path::new(self.path)
    }

    /// A std Command (for streaming, spawning, signals).
    pub fn command(&self) -> Command {
        Command::new(self.path)
    }

    /// An assert_cmd Command (for `write_stdin`).
    pub fn cmd(&self) -> assert_cmd::Command {
        assert_cmd::Command::new(self.path)
    }

    /// Runs hero-snap with `args`; returns the output.
    pub fn run<S: AsRef<OsStr> + Debug>(&self, args: &[S]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs hero-snap with `args`; fails the test unless it succeeds.
    pub fn ok<S: AsRef<OsStr> + Debug>(&self, args: &[S]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "hero-snap {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        out
    }
}

/// The last non-empty line of `--json` output, the result (earlier lines are events).
pub fn last_json(o: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&o.stdout);
    let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_else(|| panic!("no output; stderr: {}", stderr(o)));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {text}"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A three-service instance inventory (paths under a --root): `fixtures/inventories/basic.yaml`.
pub const INVENTORY: &str = include_str!("../../fixtures/inventories/basic.yaml");

/// A test instance: inventory file and a root with data for the given contexts.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub inventory: PathBuf,
    pub root: PathBuf,
}

impl Instance {
    pub fn new(contexts: &[&str]) -> Instance {
        Instance::with_inventory(contexts, INVENTORY)
    }

    pub fn with_inventory(contexts: &[&str], inventory: &str) -> Instance {
        Instance::in_dir(contexts, inventory, &std::env::temp_dir())
    }

    /// An instance whose files live under `base` (e.g. a loop-device filesystem).
    pub fn in_dir(contexts: &[&str], inventory: &str, base: &Path) -> Instance {
        let dir = tempfile::tempdir_in(base).unwrap();
        let inv = dir.path().join("inventory.yaml");
        fs::write(&inv, inventory).unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc/hero")).unwrap();
        fs::write(root.join("etc/hero/secrets"), "HERO_DB_KEY\n").unwrap();
        let inst = Instance { inventory: inv, root, dir };
        if !contexts.is_empty() {
            inst.fill(contexts);
        }
        inst
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Deterministic data for the instance and each context.
    pub fn fill(&self, contexts: &[&str]) {
        let db = self.path("var/lib/hero/hero_db/data");
        fs::create_dir_all(&db).unwrap();
        fs::write(db.join("dump.rdb"), pseudo_random(200_000, 1)).unwrap();
        fs::write(db.join("appendonly.aof"), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n".repeat(100)).unwrap();
        fs::create_dir_all(self.path("var/lib/hero/hero_indexer_cache")).unwrap();
        fs::write(self.path("var/lib/hero/hero_indexer_cache/tmp"), b"scratch").unwrap();
        for (i, c) in contexts.iter().enumerate() {
            let files = self.path(&format!("var/lib/hero/hero_foundry/contexts/{c}/files"));
            fs::create_dir_all(files.join("docs")).unwrap();
            fs::write(files.join("docs/readme.md"), format!("# {c}\n")).unwrap();
            fs::write(files.join("blob.bin"), pseudo_random(50_000, 10 + i as u64)).unwrap();
            let git = self.path(&format!("var/lib/hero/hero_foundry/contexts/{c}/git"));
            fs::create_dir_all(git.join("objects")).unwrap();
            fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
            let idx = self.path(&format!("var/lib/hero/hero_indexer/{c}"));
            fs::create_dir_all(&idx).unwrap();
            fs::write(idx.join("index.bin"), pseudo_random(1000, 99)).unwrap();
        }
    }

    /// `v` followed by `--config <inventory> --root <root>`.
    pub fn args<'a>(&'a self, v: &[&'a str]) -> Vec<String> {
        let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        a.extend(["--config".into(), self.inventory.display().to_string(), "--root".into(), self.root.display().to_string()]);
        a
    }
}

/// `v` followed by `--config <inventory> --root <root> --state-dir <state>`: for the tests
/// that lay out their own instance.
pub fn instance_args(v: &[&str], inventory: &Path, root: &Path, state: &Path) -> Vec<String> {
    let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    a.extend(["--config", inventory.to_str().unwrap(), "--root", root.to_str().unwrap(), "--state-dir", state.to_str().unwrap()].map(String::from));
    a
}
