//! Walking, counting and hashing a directory tree: what backup archives, what the
//! inventory table sizes, what restore and verify hash.

use std::io::{self, Read};
use std::path::Path;

use crate::error::{Error, Result};
use crate::progress::Cancel;

/// Prefix of every name hero-snap creates on a filesystem (snapshots, staging, parked
/// data); the walk never enters them.
pub(crate) const RESERVED_PREFIX: &str = ".hero-snap-";

/// A file walk in a stable order that never follows symlinks.
/// Names starting with `.hero-snap-` are hero-snap's own (snapshots, staging) and skipped.
pub(crate) fn walk(root: &Path) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with(RESERVED_PREFIX))
}

pub(crate) fn walk_error(root: &Path, e: walkdir::Error) -> Error {
    let path = e.path().unwrap_or(root).to_path_buf();
    match e.into_io_error() {
        Some(io) => Error::Io { path, action: "walking", source: io },
        None => Error::Refused(format!("{}: filesystem loop", path.display())),
    }
}

/// Counts the regular files and their bytes under `root`, as the manifest announces them.
pub(crate) fn count_tree(root: &Path, cancel: &Cancel) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut links = std::collections::HashSet::new();
    let mut dirs = DirFd::default();
    for entry in walk(root) {
        cancel.check()?;
        let entry = entry.map_err(|e| walk_error(root, e))?;
        if entry.file_type().is_file() {
            let st = dirs.stat(entry.path()).map_err(Error::io(entry.path(), "reading metadata"))?;
            if st.st_nlink > 1 && !links.insert((st.st_dev, st.st_ino)) {
                continue; // archived once, as a hard link after that
            }
            files += 1;
            bytes += st.st_size as u64;
        }
    }
    Ok((files, bytes))
}

/// The directory of the last file asked for, held open: a walk lists a directory's
/// files one after another, and a file reached by its last name from its directory costs
/// one name lookup, not one per component of its path (on a kernel whose dentry hash
/// is small for the files cached, that walk was a quarter of a backup's CPU).
#[derive(Default)]
pub(crate) struct DirFd {
    dir: Option<(std::path::PathBuf, std::os::fd::OwnedFd)>,
}

impl DirFd {
    fn split<'p>(&mut self, path: &'p Path) -> io::Result<(std::os::fd::BorrowedFd<'_>, &'p std::ffi::OsStr)> {
        use std::os::fd::AsFd;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file's path"));
        };
        if self.dir.as_ref().is_none_or(|(p, _)| p != parent) {
            use nix::fcntl::{open, OFlag};
            let fd = open(parent, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
            self.dir = Some((parent.to_path_buf(), fd));
        }
        let (_, fd) = self.dir.as_ref().expect("opened above");
        Ok((fd.as_fd(), name))
    }

    /// `lstat` of `path`.
    pub(crate) fn stat(&mut self, path: &Path) -> io::Result<nix::sys::stat::FileStat> {
        let (dir, name) = self.split(path)?;
        Ok(nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?)
    }

    /// Opens the file at `path` to read it, never through a symlink in its last component
    /// and never blocking (a FIFO put in its place is opened, not waited on), without
    /// updating its access time where this process may ask for that.
    pub(crate) fn open_file(&mut self, path: &Path) -> io::Result<std::fs::File> {
        use nix::fcntl::{openat, OFlag};
        let (dir, name) = self.split(path)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let mode = nix::sys::stat::Mode::empty();
        let fd = match openat(dir, name, flags | OFlag::O_NOATIME, mode) {
            Err(nix::errno::Errno::EPERM) => openat(dir, name, flags, mode)?,
            other => other?,
        };
        Ok(std::fs::File::from(fd))
    }
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

/// A member path (as [`name_text`] carries it) as the file-system path it names.
pub(crate) fn name_path(text: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::path::PathBuf::from(std::ffi::OsString::from_vec(name_bytes(text)))
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
