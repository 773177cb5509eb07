//! Real filesystems for tests: loop-device btrfs and XFS, and cgroups. Everything is
//! removed on drop, also when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
        sh(&["btrfs", "subvolume", "list", "-o", self.mount.to_str().unwrap()])
            .lines()
            .filter_map(|l| l.split(" path ").nth(1).map(str::to_owned))
            .collect()
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

/// A cgroup for test processes (v2, or the v1 freezer hierarchy); its processes are
/// killed on drop.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// Path relative to the cgroup mount, as an inventory names it.
    pub name: String,
    v2: bool,
}

fn mount_of(fstype_and_source: &str, option: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find(|l| l.contains(fstype_and_source) && l.split(' ').next_back().is_some_and(|o| o.split(',').any(|x| x == option) || option.is_empty()))
        .map(|l| PathBuf::from(l.split(' ').nth(4).unwrap()))
}

pub fn cgroup2_mount() -> PathBuf {
    mount_of(" - cgroup2 ", "").expect("no cgroup2 mount")
}

impl TestCgroup {
    pub fn new(label: &str) -> TestCgroup {
        let name = format!("hero-snap-test-{}-{label}", std::process::id());
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup { dir, name, v2: true }
    }

    /// A cgroup in the v1 freezer hierarchy (hybrid hosts mount it beside cgroup2).
    pub fn new_v1(label: &str) -> TestCgroup {
        let mount = mount_of(" - cgroup ", "freezer").expect("no v1 freezer hierarchy mounted on this host");
        let name = format!("hero-snap-test-{}-{label}", std::process::id());
        let dir = mount.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup { dir, name, v2: false }
    }

    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    pub fn frozen(&self) -> bool {
        if self.v2 {
            std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap().lines().any(|l| l == "frozen 1")
        } else {
            std::fs::read_to_string(self.dir.join("freezer.state")).unwrap().trim() != "THAWED"
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if self.v2 {
            let _ = std::fs::write(self.dir.join("cgroup.freeze"), "0");
            let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        } else {
            let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
            for pid in std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default().lines() {
                let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
