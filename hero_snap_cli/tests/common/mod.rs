//! Test helpers: a tree description that compares everything hero-snap promises to keep,
//! instances laid out in temporary directories, and the CLI.
#![allow(dead_code)]

pub mod loopfs;
pub mod rgw;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Everything about one path that a restore must reproduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds; directories included.
    pub mtime: i64,
    pub size: u64,
    pub blake3: String,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Relative path of the first file sharing this inode (hard-link identity).
    pub hardlink_group: Option<String>,
    /// Data extents (offset, length) from SEEK_DATA/SEEK_HOLE, for files with holes.
    pub extents: Option<Vec<(u64, u64)>>,
}

/// Describes the tree under `root`, keyed by relative path ("" is the root).
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    if fs::symlink_metadata(root).is_err() {
        return out; // an absent tree is the empty tree
    }
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let ft = meta.file_type();
        let kind = if ft.is_dir() { "dir" } else if ft.is_symlink() { "symlink" } else if ft.is_file() { "file" } else if ft.is_fifo() { "fifo" } else { "other" };
        let mut node = Node {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size: if ft.is_file() { meta.len() } else { 0 },
            blake3: String::new(),
            link: None,
            xattrs: BTreeMap::new(),
            hardlink_group: None,
            extents: None,
        };
        if ft.is_symlink() {
            node.link = Some(fs::read_link(entry.path()).unwrap());
            node.mode = 0;
        } else {
            for name in xattr::list(entry.path()).unwrap() {
                let v = xattr::get(entry.path(), &name).unwrap().unwrap_or_default();
                node.xattrs.insert(name.to_string_lossy().into_owned(), v);
            }
        }
        if ft.is_file() {
            node.blake3 = blake3::hash(&fs::read(entry.path()).unwrap()).to_hex().to_string();
            if meta.nlink() > 1 {
                let first = inodes.entry((meta.dev(), meta.ino())).or_insert_with(|| rel.clone());
                node.hardlink_group = Some(first.clone());
            }
            if meta.blocks() * 512 < meta.len() {
                node.extents = Some(extents(entry.path()));
            }
        }
        out.insert(rel, node);
    }
    out
}

fn extents(path: &Path) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        out.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    out
}

/// Asserts two trees are equal, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ta = tree(a);
    let tb = tree(b);
    let ka: Vec<_> = ta.keys().collect();
    let kb: Vec<_> = tb.keys().collect();
    assert_eq!(ka, kb, "different paths under {} and {}", a.display(), b.display());
    for (k, na) in &ta {
        assert_eq!(Some(na), tb.get(k), "`{k}` differs between {} and {}", a.display(), b.display());
    }
}

/// BLAKE3 over the whole description of a tree (for "unchanged" checks).
pub fn tree_hash(root: &Path) -> String {
    blake3::hash(format!("{:?}", tree(root)).as_bytes()).to_hex().to_string()
}

pub fn bin() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("hero-snap").unwrap()
}

/// The hero-snap binary as a plain std Command (for streaming stdin).
pub fn bin_command() -> std::process::Command {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("hero-snap"))
}

/// Runs hero-snap with args; returns the output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

pub fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "hero-snap {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// The last line of `--json` output: the result (earlier lines are events).
pub fn json_result(o: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&o.stdout);
    let last = text.lines().next_back().unwrap_or_else(|| panic!("no output; stderr: {}", stderr(o)));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A three-service instance inventory (paths under a --root).
pub const INVENTORY: &str = r#"format: 1
instance: test
secret_store: {file: /etc/hero/secrets}
state_dir: /var/lib/hero-snap
services:
  hero_db:
    version: "1.0.0"
    schema: 2
    secrets: [HERO_DB_KEY]
    surfaces:
      - {name: data, path: /var/lib/hero/hero_db/data, scope: instance, class: source}
  hero_foundry:
    version: "1.0.0"
    schema: 1
    surfaces:
      - {name: files, path: "/var/lib/hero/hero_foundry/contexts/{context}/files", scope: context, class: source}
      - {name: git, path: "/var/lib/hero/hero_foundry/contexts/{context}/git", scope: context, class: source}
  hero_indexer:
    version: "1.0.0"
    schema: 1
    surfaces:
      - {name: index, path: "/var/lib/hero/hero_indexer/{context}", scope: context, class: derived}
      - {name: cache, path: /var/lib/hero/hero_indexer_cache, scope: instance, class: transient}
"#;

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

    pub fn args<'a>(&'a self, v: &[&'a str]) -> Vec<String> {
        let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        a.extend(["--config".into(), self.inventory.display().to_string(), "--root".into(), self.root.display().to_string()]);
        a
    }
}

/// Deterministic incompressible bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let h = blake3::hash(&[seed.to_le_bytes(), counter.to_le_bytes()].concat());
        out.extend_from_slice(h.as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// An age identity (mode 600) and its recipient.
pub fn age_key(dir: &Path) -> (PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let path = dir.join("key.txt");
    use age::secrecy::ExposeSecret;
    fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    (path, id.to_public().to_string())
}

pub fn run_strings(args: &[String]) -> Output {
    bin().args(args).output().unwrap()
}

pub fn ok_strings(args: &[String]) -> Output {
    let out = run_strings(args);
    assert!(out.status.success(), "hero-snap {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}
