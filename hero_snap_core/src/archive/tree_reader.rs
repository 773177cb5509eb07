//! The reading half of archiving a tree, on a thread of its own: the walk, opening each
//! file by its name in its held directory, reading and hashing it, and an incremental's
//! choice of what it inherits. The writer ([`super::write`]) gets the results in walk order
//! and only encodes them: tar headers, zstd's input, index lines. On a million small files
//! one thread doing both was the backup's critical path while zstd's workers waited
//! (docs/BENCHMARKS.md, "Per-file cost"; decisions/D-09).

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::chain::fingerprint;
use super::write::{open_source, ParentIndex};
use crate::error::{Error, Result};
use crate::fs_tree::{hash_reader, open_file_at, walk_at, Entry, Kind};
use crate::progress::Cancel;

/// Files up to this size are read whole by the reading thread; larger ones are handed
/// over open and stream through the writer in large steps.
const READ_WHOLE_MAX: u64 = 128 << 10;
/// A batch is handed over when it holds this many entries or this many bytes of data:
/// one hand-over per entry cost more than a small file's own work.
const BATCH_ENTRIES: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
/// Batches in flight. With the limits above, the reading thread gets at most a few MiB
/// ahead of the writer.
const BATCHES_IN_FLIGHT: usize = 4;

/// A regular file's data.
pub(crate) enum Content {
    /// Read whole into the batch's `data` (zero-filled to the described size if the file
    /// shrank meanwhile), with its BLAKE3; `changed`: it shrank or grew while read.
    Read { range: std::ops::Range<usize>, hash: blake3::Hash, changed: bool },
    /// Open, for the writer to stream; `meta` is this descriptor's `fstat`.
    Open { file: File },
    /// Open and sparse (fewer blocks than its size needs): written as a GNU sparse member.
    Sparse { file: File },
}

/// One entry of the tree, as the writer encodes it. `xattrs` are PAX records, empty if none.
pub(crate) enum Item {
    Dir {
        member: String,
        meta: Metadata,
        xattrs: Vec<u8>,
    },
    Symlink {
        member: String,
        meta: Metadata,
        target: PathBuf,
    },
    /// A further name of a hard-linked inode archived earlier as `first`.
    HardLink {
        member: String,
        meta: Metadata,
        first: String,
    },
    File {
        path: PathBuf,
        member: String,
        meta: Metadata,
        xattrs: Vec<u8>,
        content: Content,
    },
    /// Unchanged since the parent: listed in the index, its bytes held by `origin`.
    Inherited {
        member: String,
        meta: Metadata,
        size: u64,
        blake3: String,
        origin: String,
    },
    /// A FIFO, socket or device node: not archived.
    Special {
        path: PathBuf,
        kind: &'static str,
    },
}

/// Entries in walk order, and the data of those read whole.
#[derive(Default)]
pub(crate) struct Batch {
    pub items: Vec<Item>,
    pub data: Vec<u8>,
}

/// What the reading thread needs to know of the tree.
pub(crate) struct Tree<'a> {
    pub root: &'a Path,
    pub member_root: &'a str,
    /// The tree keeps the source's inode numbers and ctimes (see [`fingerprint`]).
    pub stable: bool,
}

/// Walks `tree` on a thread of its own and gives each batch to `write`, in walk order. The
/// first error of either side ends both; the reader is joined before this returns.
pub(crate) fn read_tree(tree: &Tree, parent: Option<&mut ParentIndex>, cancel: &Cancel, write: impl FnMut(&mut Batch) -> Result<()>) -> Result<()> {
    // Followed, as the walk follows a root that is a symlink: the root is the directory it names.
    let root_dev = std::fs::metadata(tree.root).map_err(Error::io(tree.root, "reading"))?.dev();
    let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(BATCHES_IN_FLIGHT);
    let (back, recycled) = mpsc::channel::<Batch>();
    std::thread::scope(|s| {
        let reader = TreeReader {
            root: tree.root,
            member_root: tree.member_root,
            stable: tree.stable,
            root_dev,
            hardlinks: HashMap::new(),
            parent,
            cancel: cancel.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("hero-snap-read".into())
            .spawn_scoped(s, move || reader.run(tx, recycled))
            .map_err(|e| Error::io(tree.root, "starting the reading thread")(e))?;
        let result = drain(rx, back, write);
        match thread.join() {
            Ok(()) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Hands every batch to `write` and back for reuse; dropping `rx` on an error stops the reader.
fn drain(rx: mpsc::Receiver<Result<Batch>>, back: mpsc::Sender<Batch>, mut write: impl FnMut(&mut Batch) -> Result<()>) -> Result<()> {
    for batch in rx {
        let mut batch = batch?;
        write(&mut batch)?;
        batch.items.clear();
        batch.data.clear();
        let _ = back.send(batch);
    }
    Ok(())
}

struct TreeReader<'a> {
    root: &'a Path,
    member_root: &'a str,
    stable: bool,
    root_dev: u64,
    /// Hard links are kept within a surface; a restore places surfaces independently.
    hardlinks: HashMap<(u64, u64), String>,
    parent: Option<&'a mut ParentIndex>,
    cancel: Cancel,
}

impl TreeReader<'_> {
    fn run(mut self, tx: mpsc::SyncSender<Result<Batch>>, recycled: mpsc::Receiver<Batch>) {
        let mut batch = Batch::default();
        let cancel = self.cancel.clone();
        let walked = walk_at(self.root, true, &cancel, &mut |entry| {
            if let Some(item) = self.read_entry(entry, &mut batch.data)? {
                batch.items.push(item);
            }
            if batch.items.len() >= BATCH_ENTRIES || batch.data.len() >= BATCH_BYTES {
                let next = recycled.try_recv().unwrap_or_default();
                // The writer stopped only with an error of its own, which it reports.
                tx.send(Ok(std::mem::replace(&mut batch, next))).map_err(|_| Error::Refused("the archive writer stopped".into()))?;
            }
            Ok(())
        });
        let _ = tx.send(walked.map(|()| batch));
    }

    /// The member path of the entry at `rel`, in one allocation.
    fn member(&self, rel: &Path) -> String {
        use std::os::unix::ffi::OsStrExt;
        let bytes = rel.as_os_str().as_bytes();
        if bytes.is_empty() {
            return self.member_root.to_string();
        }
        let mut member = String::with_capacity(self.member_root.len() + 1 + bytes.len());
        member.push_str(self.member_root);
        member.push('/');
        // Any byte string: a name that is not UTF-8, or holds a character that stands for a
        // byte (its UTF-8 starts with 0xEF), is carried losslessly (fs_tree::name_text).
        match std::str::from_utf8(bytes) {
            Ok(text) if !bytes.contains(&0xEF) => member.push_str(text),
            _ => member.push_str(&crate::fs_tree::name_text(bytes)),
        }
        member
    }

    fn read_entry(&mut self, entry: Entry<'_>, data: &mut Vec<u8>) -> Result<Option<Item>> {
        let (rel, meta, file) = match entry {
            Entry::Dir { rel, dir } => {
                let path = self.root.join(rel);
                let meta = dir.metadata().map_err(Error::io(&path, "reading metadata"))?;
                if meta.dev() != self.root_dev {
                    return Err(Error::Refused(format!(
                        "{}: another filesystem is mounted inside the surface at {}; declare it as a surface of its own or unmount it",
                        self.root.display(),
                        path.display()
                    )));
                }
                return Ok(Some(Item::Dir { member: self.member(rel), xattrs: xattr_records(&path, Some(dir))?, meta }));
            }
            // A regular file is opened here, by its name in its directory, and described by
            // its open descriptor: what is archived is what was looked at.
            Entry::Other { rel, parent, name, kind: Kind::File } => {
                let f = open_file_at(parent, name).map_err(|e| Error::io(self.root.join(rel), "opening")(e))?;
                let meta = f.metadata().map_err(|e| Error::io(self.root.join(rel), "reading metadata")(e))?;
                (rel, meta, Some(f))
            }
            // Symlinks and special files are few: reached by their path.
            Entry::Other { rel, .. } => {
                let path = self.root.join(rel);
                (rel, std::fs::symlink_metadata(&path).map_err(Error::io(&path, "reading metadata"))?, None)
            }
        };
        let path = self.root.join(rel);
        let member = self.member(rel);
        let ft = meta.file_type();
        if ft.is_file() {
            return self.read_file(path, member, (meta, file), data).map(Some);
        }
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(Error::io(&path, "reading the symlink"))?;
            return Ok(Some(Item::Symlink { member, meta, target }));
        }
        if ft.is_dir() {
            // Listed as something else, a directory by now (a live tree): archived empty.
            return Ok(Some(Item::Dir { member, xattrs: xattr_records(&path, None)?, meta }));
        }
        let kind = if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else {
            "device node"
        };
        Ok(Some(Item::Special { path, kind }))
    }

    /// `described`: the walk's metadata, with the descriptor it describes if it opened one.
    fn read_file(&mut self, path: PathBuf, member: String, described: (Metadata, Option<File>), data: &mut Vec<u8>) -> Result<Item> {
        let (meta, file) = described;
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.hardlinks.get(&key) {
                return Ok(Item::HardLink { member, meta, first: first.clone() });
            }
            self.hardlinks.insert(key, member.clone());
        }
        if meta.permissions().mode() & 0o6000 != 0 {
            return Err(Error::Refused(format!(
                "{}: is setuid or setgid; service state should not hold such files, and a restore would refuse it (clear the bit with chmod u-s,g-s)",
                path.display()
            )));
        }
        // A file the walk did not open is opened here and described by its own descriptor.
        let (file, meta) = match file {
            Some(f) => (f, meta),
            None => {
                let f = open_source(&path).map_err(Error::io(&path, "opening"))?;
                let meta = f.metadata().map_err(Error::io(&path, "reading metadata"))?;
                (f, meta)
            }
        };
        // A hard-linked inode is archived whole every time: its names live in one archive.
        if meta.nlink() == 1 {
            if let Some((size, blake3, origin)) = self.inherit(&path, &member, (&meta, &file))? {
                return Ok(Item::Inherited { member, meta, size, blake3, origin });
            }
        }
        let xattrs = xattr_records(&path, Some(&file))?;
        let size = meta.len();
        let content = if meta.blocks() * 512 < size {
            Content::Sparse { file }
        } else if size <= READ_WHOLE_MAX {
            read_whole(file, size, data).map_err(Error::io(&path, "reading"))?
        } else {
            Content::Open { file }
        };
        Ok(Item::File { path, member, meta, xattrs, content })
    }

    /// The index line's size, hash and origin, if the parent's index has the file unchanged.
    /// `file` is the file open; hashed to compare, it is rewound for whoever reads it next.
    fn inherit(&mut self, path: &Path, member: &str, file: (&Metadata, &File)) -> Result<Option<(u64, String, String)>> {
        let (meta, mut file) = file;
        let Some(parent) = self.parent.as_deref_mut() else { return Ok(None) };
        let Some((entry, prints)) = parent.lookup.get(member)? else { return Ok(None) };
        if entry.size != meta.len() {
            return Ok(None);
        }
        let mut same_content = || -> Result<bool> {
            let hash = hash_reader(&mut file).and_then(|h| file.rewind().map(|()| h)).map_err(Error::io(path, "reading"))?;
            Ok(hash.to_hex().as_str() == entry.blake3)
        };
        let same = match prints {
            // An index read from the archive has no metadata to compare (D-17): ctime, which
            // every change of content or metadata moves, says it is as old as the parent.
            None => meta.ctime() < parent.changed_before && same_content()?,
            Some((_, weak)) if parent.rehash => weak == fingerprint(meta, false) && same_content()?,
            Some((strong, _)) if self.stable => strong == fingerprint(meta, true),
            Some((_, weak)) => weak == fingerprint(meta, false),
        };
        if !same {
            return Ok(None);
        }
        let origin = entry.in_archive.unwrap_or_else(|| parent.run_id.clone());
        Ok(Some((entry.size, entry.blake3, origin)))
    }
}

/// Reads `size` bytes of `file` onto the end of `data`, zeros in place of what is missing
/// if it shrank. One byte more is asked for in the same call: a regular file's read returns
/// less than asked only at its end, so one call both reads it and shows whether it grew.
fn read_whole(mut file: File, size: u64, data: &mut Vec<u8>) -> io::Result<Content> {
    let size = usize::try_from(size).expect("at most READ_WHOLE_MAX");
    let start = data.len();
    data.resize(start + size + 1, 0);
    let mut n = 0;
    loop {
        match file.read(&mut data[start + n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if n >= size {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                data.truncate(start);
                return Err(e);
            }
        }
    }
    data.truncate(start + size);
    if n < size {
        data[start + n..].fill(0);
    }
    let hash = blake3::hash(&data[start..]);
    Ok(Content::Read { range: start..start + size, hash, changed: n != size })
}

/// The PAX records of `path`'s extended attributes (read through `file` when it is open),
/// empty if it has none or its filesystem keeps none.
pub(crate) fn xattr_records(path: &Path, file: Option<&File>) -> Result<Vec<u8>> {
    use xattr::FileExt;
    let names = match file.map_or_else(|| xattr::list(path), |f| f.list_xattr()) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, "listing extended attributes")(e)),
    };
    let mut records = Vec::new();
    for name in names {
        let value = file.map_or_else(|| xattr::get(path, &name), |f| f.get_xattr(&name));
        let Some(value) = value.map_err(Error::io(path, "reading extended attributes"))? else { continue };
        let key = format!("SCHILY.xattr.{}", name.to_string_lossy());
        pax_record(&mut records, &key, &value);
    }
    Ok(records)
}

/// One PAX record: "LEN KEY=VALUE\n", where LEN counts the whole record including itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(dir: &Path, bytes: &[u8]) -> File {
        let path = dir.join("f");
        std::fs::write(&path, bytes).unwrap();
        File::open(&path).unwrap()
    }

    #[test]
    fn a_file_read_whole_shows_whether_it_grew_or_shrank() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = b"before".to_vec();
        for (bytes, described, changed) in [(&b"hello"[..], 5, false), (b"hello, world", 5, true), (b"hel", 5, true), (b"", 0, false), (b"x", 0, true)] {
            data.truncate(6);
            let Content::Read { range, hash, changed: seen } = read_whole(file_of(dir.path(), bytes), described, &mut data).unwrap() else {
                panic!("read whole")
            };
            assert_eq!(range, 6..6 + described as usize);
            assert_eq!(seen, changed, "{bytes:?} described as {described} bytes");
            // What is archived is the described size: cut if it grew, zeros if it shrank.
            let mut want = bytes[..bytes.len().min(described as usize)].to_vec();
            want.resize(described as usize, 0);
            assert_eq!(&data[range], &want[..]);
            assert_eq!(hash, blake3::hash(&want));
            assert_eq!(&data[..6], b"before");
        }
    }

    #[test]
    fn a_writer_error_stops_the_reader_and_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        // More entries than the batches in flight hold: the reader would block if not stopped.
        for i in 0..(BATCH_ENTRIES * (BATCHES_IN_FLIGHT + 2)) {
            std::fs::write(dir.path().join(format!("{i:05}")), b"x").unwrap();
        }
        let tree = Tree { root: dir.path(), member_root: "s", stable: true };
        let mut batches = 0;
        let result = read_tree(&tree, None, &Cancel::new(), |_| {
            batches += 1;
            Err(Error::Refused("the output is full".into()))
        });
        assert!(matches!(result, Err(Error::Refused(m)) if m == "the output is full"));
        assert_eq!(batches, 1);
    }

    #[test]
    fn entries_come_in_walk_order_with_their_member_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/z"), b"z").unwrap();
        std::fs::write(dir.path().join("a"), b"a").unwrap();
        std::fs::write(dir.path().join(".hero-snap-staging"), b"ours").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b/link")).unwrap();
        let tree = Tree { root: dir.path(), member_root: "s/v", stable: true };
        let mut seen = Vec::new();
        read_tree(&tree, None, &Cancel::new(), |batch| {
            for item in &batch.items {
                seen.push(match item {
                    Item::Dir { member, .. } => format!("dir {member}"),
                    Item::File { member, content: Content::Read { range, .. }, .. } => format!("file {member} {:?}", &batch.data[range.clone()]),
                    Item::Symlink { member, target, .. } => format!("link {member} -> {}", target.display()),
                    _ => "other".into(),
                });
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["dir s/v", "file s/v/a [97]", "dir s/v/b", "dir s/v/b/c", "file s/v/b/c/z [122]", "link s/v/b/link -> a"]);
    }

    #[test]
    fn a_root_that_is_a_symlink_is_the_directory_it_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/f"), b"f").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("link")).unwrap();
        let root = dir.path().join("link");
        let tree = Tree { root: &root, member_root: "s", stable: true };
        let mut kinds = Vec::new();
        read_tree(&tree, None, &Cancel::new(), |batch| {
            kinds.extend(batch.items.iter().map(|i| matches!(i, Item::Dir { .. })));
            Ok(())
        })
        .unwrap();
        assert_eq!(kinds, [true, false]);
    }
}
