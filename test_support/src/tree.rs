//! The description of a tree: everything about each path that hero-snap promises to keep,
//! compared between a source and its restored copy, or before and after a refused run.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
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

// SAFETY: lseek on a descriptor this function owns and keeps open; no memory is passed.
#[allow(unsafe_code)]
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

/// The description as text, one line per path, sorted (the golden archives' expected
/// trees are committed in this form):
/// `<path> <kind> mode=<octal> uid=<n> gid=<n> mtime=<s> size=<n> [blake3=…] [link=…]
/// [hardlink=…] [extents=off+len,…] [xattr.<name>=<hex>]…`; the root is `.`.
pub fn describe(root: &Path) -> String {
    let mut out = String::new();
    for (path, n) in tree(root) {
        let path = if path.is_empty() { ".".to_string() } else { path };
        out.push_str(&format!("{path} {} mode={:o} uid={} gid={} mtime={} size={}", n.kind, n.mode, n.uid, n.gid, n.mtime, n.size));
        if !n.blake3.is_empty() {
            out.push_str(&format!(" blake3={}", n.blake3));
        }
        if let Some(l) = &n.link {
            out.push_str(&format!(" link={}", l.display()));
        }
        if let Some(h) = &n.hardlink_group {
            out.push_str(&format!(" hardlink={h}"));
        }
        if let Some(e) = &n.extents {
            let e: Vec<String> = e.iter().map(|(o, l)| format!("{o}+{l}")).collect();
            out.push_str(&format!(" extents={}", e.join(",")));
        }
        for (k, v) in &n.xattrs {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!(" xattr.{k}={hex}"));
        }
        out.push('\n');
    }
    out
}
