//! Walking, counting and hashing a directory tree: what backup archives, what the
//! inventory table sizes, what restore and verify hash.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, Mode};

use crate::error::{Error, Result};
use crate::progress::Cancel;

/// Prefix of every name hero-snap creates on a filesystem (snapshots, staging, parked
/// data); the walk never enters them.
pub(crate) const RESERVED_PREFIX: &str = ".hero-snap-";

/// Counts the regular files and their bytes under `root`, as the manifest announces them.
pub(crate) fn count_tree(root: &Path, cancel: &Cancel) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut links = std::collections::HashSet::new();
    walk_at(root, false, cancel, &mut |entry| {
        let Entry::Other { rel, parent, name, kind: Kind::File } = entry else { return Ok(()) };
        let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| Error::io(root.join(rel), "reading metadata")(e.into()))?;
        if st.st_nlink > 1 && !links.insert((st.st_dev, st.st_ino)) {
            return Ok(()); // archived once, as a hard link after that
        }
        files += 1;
        bytes += st.st_size as u64;
        Ok(())
    })?;
    Ok((files, bytes))
}

/// What a directory entry is, as its directory lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    /// A FIFO, socket or device node.
    Special,
}

/// One entry of [`walk_at`]. `rel` is its path under the root, empty for the root.
pub(crate) enum Entry<'a> {
    /// A directory, open for reading; its entries follow it.
    Dir { rel: &'a Path, dir: &'a std::fs::File },
    /// Anything else, by its name in its open directory.
    Other { rel: &'a Path, parent: BorrowedFd<'a>, name: &'a OsStr, kind: Kind },
}

/// Walks the tree at `root` depth first, a directory before its entries, on directory
/// descriptors: every entry is reached by its name in its held directory, one name lookup
/// instead of one per component of its path (on this VM's kernel, whose dentry hash is
/// small for the files cached, path walks were a quarter of a backup's CPU). Symlinks are
/// never followed below the root. Names starting with `.hero-snap-` are hero-snap's own
/// (snapshots, staging) and skipped. `sorted`: each directory's entries in byte order of
/// their names, the order archives are written in.
pub(crate) fn walk_at(root: &Path, sorted: bool, cancel: &Cancel, visit: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()> {
    use nix::fcntl::{open, OFlag};
    let fd = open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| Error::io(root, "opening")(e.into()))?;
    let dir = std::fs::File::from(fd);
    let mut rel = Vec::new();
    visit(Entry::Dir { rel: Path::new(""), dir: &dir })?;
    Walk { root, sorted, cancel, visit }.dir(&dir, &mut rel)
}

struct Walk<'w, 'v> {
    root: &'w Path,
    sorted: bool,
    cancel: &'w Cancel,
    visit: &'w mut (dyn FnMut(Entry<'_>) -> Result<()> + 'v),
}

impl Walk<'_, '_> {
    /// Visits the entries of `dir`, at `rel` (its path under the root, as bytes).
    fn dir(&mut self, dir: &std::fs::File, rel: &mut Vec<u8>) -> Result<()> {
        use nix::fcntl::{openat, OFlag};
        let (names, mut entries) = self.list(dir, rel)?;
        let name_of = |&(start, len, _): &(usize, usize, Option<Kind>)| OsStr::from_bytes(&names[start..start + len]);
        if self.sorted {
            entries.sort_unstable_by(|a, b| name_of(a).cmp(name_of(b)));
        }
        for entry in &entries {
            self.cancel.check()?;
            let (name, kind) = (name_of(entry), entry.2);
            let len = rel.len();
            if len > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let path = Path::new(OsStr::from_bytes(rel));
            let kind = match kind {
                Some(kind) => kind,
                None => kind_of(fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| self.error(path, "reading metadata", e))?.st_mode),
            };
            if kind == Kind::Dir {
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let sub = std::fs::File::from(openat(dir.as_fd(), name, flags, Mode::empty()).map_err(|e| self.error(path, "opening", e))?);
                (self.visit)(Entry::Dir { rel: path, dir: &sub })?;
                self.dir(&sub, rel)?;
            } else {
                (self.visit)(Entry::Other { rel: path, parent: dir.as_fd(), name, kind })?;
            }
            rel.truncate(len);
        }
        Ok(())
    }

    /// The names in `dir` but `.`, `..` and hero-snap's own, with their kinds where the
    /// filesystem gives them: the names one after another, and where each is in them (two
    /// allocations per directory, not one per name).
    #[allow(clippy::type_complexity)]
    fn list(&self, dir: &std::fs::File, rel: &[u8]) -> Result<(Vec<u8>, Vec<(usize, usize, Option<Kind>)>)> {
        use nix::dir::Type;
        let path = Path::new(OsStr::from_bytes(rel));
        let fd = dir.try_clone().map_err(Error::io(self.root.join(path), "listing"))?;
        let mut listing = nix::dir::Dir::from_fd(fd.into()).map_err(|e| self.error(path, "listing", e))?;
        let (mut names, mut entries) = (Vec::new(), Vec::new());
        for entry in listing.iter() {
            let entry = entry.map_err(|e| self.error(path, "listing", e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." || name.starts_with(RESERVED_PREFIX.as_bytes()) {
                continue;
            }
            let kind = entry.file_type().map(|t| match t {
                Type::Directory => Kind::Dir,
                Type::File => Kind::File,
                Type::Symlink => Kind::Symlink,
                _ => Kind::Special,
            });
            entries.push((names.len(), name.len(), kind));
            names.extend_from_slice(name);
        }
        Ok((names, entries))
    }

    fn error(&self, rel: &Path, action: &'static str, e: nix::errno::Errno) -> Error {
        Error::Io { path: self.root.join(rel), action, source: e.into() }
    }
}

fn kind_of(mode: libc::mode_t) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Special,
    }
}

/// Opens `name` in `dir` to read it, never through a symlink and never blocking (a FIFO
/// put in its place is opened, not waited on), without updating its access time where
/// this process may ask for that.
pub(crate) fn open_file_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<std::fs::File> {
    use nix::fcntl::{openat, OFlag};
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(nix::errno::Errno::EPERM) => openat(dir, name, flags, Mode::empty())?,
        other => other?,
    };
    Ok(std::fs::File::from(fd))
}

pub(crate) fn hash_reader(r: &mut impl Read) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Counts the bytes read through it.
pub(crate) struct CountingReader<R> {
    pub inner: R,
    pub count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A file name's bytes as the text hero-snap carries member paths in (the index, the
/// manifest's messages, lookups), losslessly: valid UTF-8 stays as it is; every other byte
/// `b` (0x80–0xFF) becomes U+F700 + `b`. A name that itself holds a character of
/// U+F780–U+F7FF has that character's bytes written the same way, so the mapping is a
/// bijection and [`name_bytes`] gives the original bytes back (docs/FORMAT.md §4).
pub(crate) fn name_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => (std::str::from_utf8(&rest[..e.valid_up_to()]).expect("valid up to"), e.error_len().unwrap_or(rest.len() - e.valid_up_to())),
        };
        for c in valid.chars() {
            if is_byte_char(c) {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf).bytes().for_each(|b| out.push(byte_char(b)));
            } else {
                out.push(c);
            }
        }
        let at = valid.len();
        rest[at..at + bad].iter().for_each(|&b| out.push(byte_char(b)));
        rest = &rest[at + bad..];
    }
    out
}

/// The bytes of a name [`name_text`] made.
pub(crate) fn name_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if is_byte_char(c) {
            out.push((c as u32 - 0xF700) as u8);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    out
}

/// A member path (as [`name_text`] carries it) as the file-system path it names: the text
/// itself unless it holds a character standing for a byte (U+F780–U+F7FF, which UTF-8
/// writes as EF 9E xx or EF 9F xx).
pub(crate) fn name_path(text: &str) -> std::borrow::Cow<'_, Path> {
    use std::os::unix::ffi::OsStringExt;
    if !text.as_bytes().contains(&0xEF) {
        return std::borrow::Cow::Borrowed(Path::new(text));
    }
    std::borrow::Cow::Owned(std::path::PathBuf::from(std::ffi::OsString::from_vec(name_bytes(text))))
}

fn is_byte_char(c: char) -> bool {
    ('\u{F780}'..='\u{F7FF}').contains(&c)
}

fn byte_char(b: u8) -> char {
    char::from_u32(0xF700 + u32::from(b)).expect("U+F780..U+F7FF are characters")
}

#[cfg(test)]
mod name_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for name in [&b"caf\xe9.txt"[..], b"plain", "caf\u{e9}".as_bytes(), "\u{F780}x\u{F7FF}".as_bytes(), b"\xff\xfe", b"a\nb", b"\xe2\x82"] {
            let text = name_text(name);
            assert_eq!(name_bytes(&text), name, "{text:?}");
        }
        assert_eq!(name_text(b"plain/\xe9"), "plain/\u{F7E9}");
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(name_bytes(&name_text(&bytes)), bytes);
        }
    }
}
