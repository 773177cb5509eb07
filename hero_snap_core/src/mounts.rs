//! The mount table: which filesystem holds a path (`/proc/self/mountinfo`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// The mount id.
    pub id: u32,
    /// "major:minor"
    pub device: String,
    /// Path inside the filesystem that is mounted here (btrfs: the subvolume).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// The mount source (device, dataset).
    pub source: String,
}

/// Parses /proc/self/mountinfo text.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        if fields.len() < sep + 3 || sep < 6 {
            continue;
        }
        out.push(Mount {
            id: fields[0].parse().unwrap_or(0),
            device: fields[2].to_string(),
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            fstype: fields[sep + 1].to_string(),
            source: unescape(fields[sep + 2]),
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path` (the last, i.e. topmost, of the longest matching mount points).
pub(crate) fn mount_of<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point) && best.is_none_or(|b| m.mount_point.components().count() >= b.mount_point.components().count()) {
            best = Some(m);
        }
    }
    best
}

/// The mounts of this process's mount namespace.
pub(crate) fn read_mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::io("/proc/self/mountinfo", "reading the mount table"))?;
    Ok(parse_mountinfo(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
        80 22 0:45 /@data /var/lib/hero rw,relatime shared:40 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=256,subvol=/@data\n\
        81 80 7:1 / /var/lib/hero/with\\040space rw - xfs /dev/loop1 rw\n";

    #[test]
    fn parses_and_resolves() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].root, PathBuf::from("/@data"));
        assert_eq!(m[2].mount_point, PathBuf::from("/var/lib/hero/with space"));
        assert_eq!(mount_of(&m, Path::new("/var/lib/hero/x")).unwrap().fstype, "btrfs");
        assert_eq!(mount_of(&m, Path::new("/var/lib/hero/with space/y")).unwrap().fstype, "xfs");
        assert_eq!(mount_of(&m, Path::new("/etc")).unwrap().fstype, "ext4");
    }
}
