//! Real filesystems for tests: loop-device btrfs, XFS and ext4, removed on drop, also when
//! the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys::tool;

fn sh(argv: &[&str]) -> String {
    tool(argv).trim().to_string()
}

/// A filesystem on a loop device over a sparse image, mounted at `mount`.
pub struct LoopFs {
    pub mount: PathBuf,
    device: String,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// `fstype`: "btrfs", "xfs" (with reflink) or "ext4".
    pub fn new(fstype: &str, size_mb: u64) -> LoopFs {
        LoopFs::new_at(fstype, size_mb, None)
    }

    pub fn new_at(fstype: &str, size_mb: u64, mount: Option<&Path>) -> LoopFs {
        let dir = tempfile::Builder::new().prefix("hero-snap-fs.").tempdir_in("/var/tmp").unwrap();
        let image = dir.path().join("image");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(size_mb << 20).unwrap();
        drop(f);
        let device = sh(&["losetup", "--find", "--show", image.to_str().unwrap()]);
        let mut fs = LoopFs { mount: PathBuf::new(), device, _dir: dir };
        match fstype {
            "btrfs" => sh(&["mkfs.btrfs", "-q", "-f", &fs.device]),
            "xfs" => sh(&["mkfs.xfs", "-q", "-f", "-m", "reflink=1", &fs.device]),
            // Small filesystems (disk-full tests): XFS needs 300 MiB, ext4 takes 32.
            "ext4" => sh(&["mkfs.ext4", "-q", "-F", &fs.device]),
            other => panic!("unsupported test filesystem {other}"),
        };
        let mp = match mount {
            Some(m) => m.to_path_buf(),
            None => fs._dir.path().join("mnt"),
        };
        std::fs::create_dir_all(&mp).unwrap();
        sh(&["mount", &fs.device, mp.to_str().unwrap()]);
        fs.mount = mp;
        fs
    }

    /// Creates a btrfs subvolume at `path` (inside this filesystem).
    pub fn subvolume(&self, path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        sh(&["btrfs", "subvolume", "create", path.to_str().unwrap()]);
    }

    /// Subvolumes of this btrfs, as `btrfs subvolume list` paths.
    pub fn subvolumes(&self) -> Vec<String> {
        sh(&["btrfs", "subvolume", "list", "-o", self.mount.to_str().unwrap()]).lines().filter_map(|l| l.split(" path ").nth(1).map(str::to_owned)).collect()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if !self.mount.as_os_str().is_empty() {
            let st = Command::new("umount").arg(&self.mount).status();
            if !st.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
