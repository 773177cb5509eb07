//! Archive format v1 through the CLI: metadata round trip, stock tools, verify.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const ONE_SURFACE: &str = include_str!("../../../fixtures/inventories/one-surface.yaml");

/// Every file type and piece of metadata the format promises to keep.
fn build_tricky_tree(root: &Path) {
    use std::os::unix::fs::symlink;
    fs::create_dir_all(root.join("sub/deeper/deepest")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("plain.txt"), "hello\n").unwrap();
    fs::write(root.join("empty"), "").unwrap();
    fs::write(root.join("sub/deeper/deepest/data.bin"), pseudo_random(300_000, 7)).unwrap();
    let long = format!("sub/{}", "n".repeat(150));
    fs::write(root.join(&long), "long name\n").unwrap();
    fs::write(root.join("sub/ünïcødé ✓.txt"), "utf-8 name\n").unwrap();
    // hard links: three names, one inode
    fs::write(root.join("h1"), "linked content\n").unwrap();
    fs::hard_link(root.join("h1"), root.join("sub/h2")).unwrap();
    fs::hard_link(root.join("h1"), root.join("sub/deeper/h3")).unwrap();
    // symlinks: relative, absolute, dangling; never followed
    symlink("plain.txt", root.join("rel-link")).unwrap();
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    // sparse: hole, data, hole, data, hole
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(root.join("sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&pseudo_random(100_000, 3)).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
    }
    // xattrs
    xattr::set(root.join("plain.txt"), "user.hero", b"value with spaces").unwrap();
    xattr::set(root.join("plain.txt"), "user.binary", &[0u8, 1, 2, 255]).unwrap();
    xattr::set(root.join("sub"), "user.dir", b"on a directory").unwrap();
    // modes and owners
    fs::set_permissions(root.join("plain.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::lchown(root.join("sub/deeper/deepest/data.bin"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("rel-link"), Some(4321), Some(8765)).unwrap();
    std::os::unix::fs::chown(root.join("empty-dir"), Some(1000), Some(1000)).unwrap();
    // times, directories last so that creating children does not move them
    let t = filetime::FileTime::from_unix_time(1_500_000_000, 0);
    for p in ["plain.txt", "empty", "h1", "sparse.img", "sub/deeper/deepest/data.bin", &long] {
        filetime::set_file_mtime(root.join(p), t).unwrap();
    }
    filetime::set_symlink_file_times(root.join("rel-link"), t, filetime::FileTime::from_unix_time(1_400_000_000, 0)).unwrap();
    for (i, d) in ["sub/deeper/deepest", "sub/deeper", "sub", "empty-dir", ""].iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(1_600_000_000 + i as i64, 0);
        filetime::set_file_mtime(root.join(d), t).unwrap();
    }
}

#[test]
fn round_trip_keeps_types_and_metadata() {
    let src = Instance::with_inventory(&[], ONE_SURFACE);
    let data = src.path("srv/data");
    build_tricky_tree(&data);
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]);

    let dst = Instance::with_inventory(&[], ONE_SURFACE);
    let mut args = dst.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]);
    args.extend(["--state-dir".into(), dst.dir.path().join("state").display().to_string()]);
    HERO_SNAP.ok(&args);
    let restored = dst.path("srv/data");
    assert_same_tree(&data, &restored);
    // The comparison must see what it claims to: holes, links, xattrs.
    let t = tree(&restored);
    assert!(t["sparse.img"].extents.as_ref().is_some_and(|e| e.len() >= 2), "sparse file lost its holes");
    assert_eq!(t["sub/h2"].hardlink_group.as_deref(), Some("h1"));
    assert_eq!(t["plain.txt"].xattrs["user.binary"], vec![0u8, 1, 2, 255]);
    assert_eq!(t["sub/deeper/deepest/data.bin"].uid, 1234);
    assert_eq!(t["empty-dir"].mode, 0o1777);
}

#[test]
fn tree_comparison_notices_differences() {
    // The helper the round trip relies on must fail on each kind of difference.
    let a = tempfile::tempdir().unwrap();
    build_tricky_tree(a.path());
    let b = tempfile::tempdir().unwrap();
    build_tricky_tree(b.path());
    // same tree built twice is equal except the root's own mtime, which both set
    assert_eq!(tree(a.path()), tree(b.path()));
    type Change = Box<dyn Fn(&Path)>;
    let changes: Vec<Change> = vec![
        Box::new(|p| fs::set_permissions(p.join("plain.txt"), fs::Permissions::from_mode(0o644)).unwrap()),
        Box::new(|p| std::os::unix::fs::lchown(p.join("h1"), Some(7), None).unwrap()),
        Box::new(|p| filetime::set_file_mtime(p.join("empty"), filetime::FileTime::from_unix_time(1, 0)).unwrap()),
        Box::new(|p| xattr::set(p.join("plain.txt"), "user.hero", b"other").unwrap()),
        Box::new(|p| {
            fs::remove_file(p.join("rel-link")).unwrap();
            std::os::unix::fs::symlink("empty", p.join("rel-link")).unwrap()
        }),
        Box::new(|p| {
            fs::remove_file(p.join("sub/h2")).unwrap();
            fs::write(p.join("sub/h2"), "linked content\n").unwrap()
        }),
        Box::new(|p| {
            let d = fs::read(p.join("sparse.img")).unwrap();
            fs::write(p.join("sparse.img"), d).unwrap()
        }),
    ];
    for (i, change) in changes.iter().enumerate() {
        let c = tempfile::tempdir().unwrap();
        build_tricky_tree(c.path());
        change(c.path());
        filetime::set_file_mtime(c.path(), filetime::FileTime::from_unix_time(1_600_000_004, 0)).unwrap();
        assert_ne!(tree(a.path()), tree(c.path()), "change {i} went unnoticed");
    }
}

#[test]
fn stock_tools_read_the_archive() {
    let src = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    let script = format!("age -d -i {} {} | zstd -d | tar -tf -", key.display(), archive.display());
    let out = Command::new("bash").args(["-o", "pipefail", "-c", &script]).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "age | zstd | tar failed");
    let list = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.first(), Some(&"hero-snap/manifest.yaml"), "manifest must be the first member");
    assert_eq!(lines.last(), Some(&"hero-snap/index.yaml"), "index must be the last member");
    assert!(lines.contains(&"services/hero_db/instance/data/dump.rdb"));
    assert!(lines.contains(&"services/hero_foundry/contexts/geomind/files/docs/readme.md"));
    assert!(!list.contains("hero_indexer"), "derived surfaces are left out by default");
    assert!(!list.contains("cache"), "transient surfaces are never archived");
}

#[test]
fn plaintext_needs_explicit_flags() {
    let src = Instance::new(&["default"]);
    let archive = src.dir.path().join("p.hsnap");
    let out = HERO_SNAP.run(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--no-encrypt"), "{}", stderr(&out));
    assert!(!archive.exists());
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "--no-encrypt"]));
    let out = HERO_SNAP.run(&["verify", "--from", archive.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("--allow-plaintext"));
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "--allow-plaintext"]);
}

#[test]
fn passphrase_and_ssh_recipients() {
    let src = Instance::new(&["default"]);
    let pass = src.dir.path().join("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o644)).unwrap();
    let archive = src.dir.path().join("pw.hsnap");
    let out = HERO_SNAP.run(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(6), "a passphrase file readable by others is refused");
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = HERO_SNAP.cmd();
    cmd.env("HERO_SNAP_SCRYPT_WORK_FACTOR", "10").args(src.args(&[
        "backup",
        "--allow-live",
        "--to",
        archive.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]));
    assert!(cmd.output().unwrap().status.success());
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]);

    // ssh-ed25519
    let k = src.dir.path().join("id_ed25519");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f", k.to_str().unwrap()]).status().unwrap();
    assert!(st.success());
    let pubkey = fs::read_to_string(k.with_extension("pub")).unwrap();
    let archive = src.dir.path().join("ssh.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", pubkey.trim()]));
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "-i", k.to_str().unwrap()]);
    // a wrong identity gives a clear error
    let elsewhere = tempfile::tempdir().unwrap();
    let (other, _) = age_key(elsewhere.path());
    let out = HERO_SNAP.run(&["verify", "--from", archive.to_str().unwrap(), "-i", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("none of the given keys opens it"), "{}", stderr(&out));
}

#[test]
fn stdout_and_stdin_streams() {
    let src = Instance::new(&["default"]);
    let (key, recipient) = age_key(src.dir.path());
    let out = HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", "-", "-r", &recipient]));
    assert!(out.stdout.starts_with(b"age-encryption.org/v1"));
    let mut cmd = HERO_SNAP.cmd();
    cmd.args(["inspect", "--from", "-", "-i", key.to_str().unwrap(), "--json"]).write_stdin(out.stdout.clone());
    let o = cmd.output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"]["instance"], "test");
    let mut cmd = HERO_SNAP.cmd();
    cmd.args(["verify", "--from", "-", "-i", key.to_str().unwrap()]).write_stdin(out.stdout);
    assert!(cmd.output().unwrap().status.success());
}

#[test]
fn failed_backup_leaves_no_partial_archive() {
    let src = Instance::new(&["default"]);
    // an unreadable FIFO is skipped with a warning, but a directory we cannot walk fails the run
    let bad = src.path("var/lib/hero/hero_db/data/loop");
    std::os::unix::fs::symlink(".", &bad).unwrap(); // symlinks are not followed: harmless
    let archive = src.dir.path().join("out/a.hsnap");
    fs::create_dir_all(archive.parent().unwrap()).unwrap();
    // The surface holds a setuid file: the backup refuses it.
    use std::os::unix::fs::PermissionsExt;
    let suid = src.path("var/lib/hero/hero_db/data/suid");
    fs::write(&suid, "x").unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = HERO_SNAP.run(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "--no-encrypt"]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("setuid"));
    let left: Vec<_> = fs::read_dir(archive.parent().unwrap()).unwrap().collect();
    assert!(left.is_empty(), "a failed backup left {left:?}");
}

/// Reading a file for a backup leaves its access time alone (O_NOATIME): a backup must not
/// dirty every inode of a live instance.
#[test]
fn backup_leaves_access_times_alone() {
    let a = Instance::new(&["default"]);
    let file = a.path("var/lib/hero/hero_db/data/dump.rdb");
    fs::write(&file, "old data").unwrap();
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    filetime::set_file_atime(&file, old).unwrap();
    let archive = a.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", archive.to_str().unwrap()]));
    let after = filetime::FileTime::from_last_access_time(&fs::metadata(&file).unwrap());
    assert_eq!(after, old, "the backup changed the file's access time");
    // The control: a plain read does change it here, so the check above could fail (on a
    // `noatime` mount it would prove nothing, and this says so).
    fs::read(&file).unwrap();
    let read = filetime::FileTime::from_last_access_time(&fs::metadata(&file).unwrap());
    assert_ne!(read, old, "the test filesystem does not record access times (noatime?): this test cannot check O_NOATIME");
    // The file was archived, so it was read.
    let out = HERO_SNAP.ok(&["verify", "--allow-plaintext", "--from", archive.to_str().unwrap(), "--json"]);
    assert!(last_json(&out)["result"]["files"].as_u64().unwrap() > 0);
}
