//! Archives in object storage, against a real single-node Ceph RADOS Gateway that
//! scripts/ceph-rgw starts on 127.0.0.1 (not a mock). One gateway serves every scenario;
//! its guard stops it when the test ends, also on failure. The S3 API is checked from the
//! outside with curl's SigV4 signing, not through hero-snap's own client.

use crate::HERO_SNAP;
use test_support::prelude::*;
use test_support::rgw::Gateway;

use std::fs;
use std::io::Read;
use std::process::Command;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Peak resident memory of a hero-snap run, in KiB, measured by /usr/bin/time.
fn peak_kib(gw: &Gateway, args: &[String]) -> u64 {
    let report = gw.dir.path().join("time.out");
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "%M", "-o"]).arg(&report).arg(HERO_SNAP.path()).args(args);
    c.envs(gw.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = c.output().unwrap();
    assert!(out.status.success(), "hero-snap {args:?} failed: {}", stderr(&out));
    fs::read_to_string(&report).unwrap().trim().lines().last().unwrap().parse().unwrap()
}

/// All scenarios share one gateway: starting Ceph costs ~20 s.
#[test]
fn archives_in_object_storage() {
    let gw = Gateway::start(HERO_SNAP);
    gw.make_bucket("hero");
    round_trip(&gw);
    a_chain_in_a_prefix(&gw);
    a_parents_index_by_ranged_reads(&gw);
    list_and_prune_a_prefix(&gw);
    killed_upload_is_aborted_by_gc(&gw);
    failed_backup_aborts_its_upload(&gw);
    clear_errors(&gw);
    one_gib_in_bounded_memory(&gw);
}

fn round_trip(gw: &Gateway) {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let key = key.to_str().unwrap();
    let url = "s3://hero/instances/a.hsnap";
    gw.ok(&a.args(&["backup", "--allow-live", "--to", url, "-r", &recipient]));
    assert!(gw.uploads("hero").is_empty(), "a finished backup left an upload");

    let out = gw.ok(&strings(&["inspect", "--from", url, "-i", key, "--json"]));
    let m = last_json(&out);
    assert_eq!(m["result"]["instance"], "test");
    let out = gw.ok(&strings(&["verify", "--from", url, "-i", key, "--json"]));
    let v = last_json(&out);
    assert!(v["result"]["files"].as_u64().unwrap() > 5);

    // Restore to a bare target: the trees are equal.
    let b = Instance::new(&[]);
    gw.ok(&b.args(&["preflight", "--from", url, "-i", key]));
    gw.ok(&b.args(&["restore", "--from", url, "-i", key]));
    let foundry = "var/lib/hero/hero_foundry/contexts";
    for dir in [
        "var/lib/hero/hero_db/data",
        &format!("{foundry}/default/files"),
        &format!("{foundry}/default/git"),
        &format!("{foundry}/geomind/files"),
        &format!("{foundry}/geomind/git"),
    ] {
        assert_same_tree(&a.path(dir), &b.path(dir));
    }

    // A truncated object: inspect still reads its head (it never fetches the rest), but
    // verify and restore refuse it before touching the target.
    let whole = gw.dir.path().join("whole.hsnap");
    let (status, _) = gw.api("GET", "/hero/instances/a.hsnap", None);
    assert_eq!(status, 200);
    fs::copy(gw.dir.path().join("curl-body"), &whole).unwrap();
    let data = fs::read(&whole).unwrap();
    let cut = gw.dir.path().join("cut.hsnap");
    fs::write(&cut, &data[..data.len() * 2 / 3]).unwrap();
    let (status, body) = gw.api("PUT", "/hero/instances/cut.hsnap", Some(cut.as_path()));
    assert_eq!(status, 200, "{body}");
    let cut_url = "s3://hero/instances/cut.hsnap";
    gw.ok(&strings(&["inspect", "--from", cut_url, "-i", key]));
    let out = gw.hero_snap(&strings(&["verify", "--from", cut_url, "-i", key]), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let c = Instance::new(&[]);
    let out = gw.hero_snap(&c.args(&["restore", "--from", cut_url, "-i", key]), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!c.path("var/lib/hero/hero_db").exists() && !c.path("var/lib/hero/hero_foundry").exists(), "a refused restore changed the target");
}

/// An incremental on a full one in the same prefix: `--since latest` finds the parent in
/// the index cache by its prefix, and restore and verify find it in the prefix.
fn a_chain_in_a_prefix(gw: &Gateway) {
    let a = Instance::new(&["default", "geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let key = key.to_str().unwrap();
    gw.ok(&a.args(&["backup", "--allow-live", "--to", "s3://hero/chain/0-full.hsnap", "-r", &recipient]));
    let db = a.path("var/lib/hero/hero_db/data");
    fs::write(db.join("dump.rdb"), pseudo_random(200_000, 7)).unwrap();
    fs::remove_file(a.path("var/lib/hero/hero_foundry/contexts/geomind/files/blob.bin")).unwrap();
    let url = "s3://hero/chain/1-inc.hsnap";
    let out = gw.ok(&a.args(&["backup", "--allow-live", "--json", "--to", url, "-r", &recipient, "--since", "latest"]));
    let r = last_json(&out)["result"].clone();
    assert_eq!(r["manifest"]["level"], 1, "{r}");
    assert!(r["inherited"][0].as_u64().unwrap() >= 5, "{r}");
    let out = gw.ok(&strings(&["verify", "--json", "--from", url, "-i", key]));
    assert_eq!(last_json(&out)["result"]["ancestors"].as_array().unwrap().len(), 1);
    let b = Instance::new(&[]);
    gw.ok(&b.args(&["restore", "--from", url, "-i", key]));
    for dir in ["var/lib/hero/hero_db/data", "var/lib/hero/hero_foundry/contexts/geomind/files", "var/lib/hero/hero_foundry/contexts/default/git"] {
        assert_same_tree(&a.path(dir), &b.path(dir));
    }
    // One file back from the chain in the prefix: ls names the full archive as its holder,
    // extract reads that archive for it (one_file.rs has the cases on files).
    let out = gw.ok(&strings(&["ls", "--json", "--from", url, "-i", key, "hero_foundry/contexts/default/files/docs/readme.md"]));
    let entries = last_json(&out)["result"]["entries"].clone();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_ne!(entries[0]["in"], r["manifest"]["run_id"], "{entries}");
    // What changed, from the two archives in the bucket (diff.rs has the cases).
    let out = gw.ok(&strings(&["diff", "--json", "s3://hero/chain/0-full.hsnap", url, "-i", key, "--path", "hero_db", "--path", "blob.bin"]));
    let d = last_json(&out)["result"].clone();
    let changed: Vec<(String, String)> =
        d["entries"].as_array().unwrap().iter().map(|e| (e["path"].as_str().unwrap().into(), e["change"].as_str().unwrap().into())).collect();
    assert!(changed.contains(&("dump.rdb".into(), "modified".into())) && changed.contains(&("blob.bin".into(), "removed".into())), "{d}");
    assert_eq!(d["removed"], 1, "{d}");
    let to = a.dir.path().join("one-file");
    let readme = "hero_foundry/contexts/default/files/docs/readme.md";
    gw.ok(&a.args(&["extract", "--from", url, "-i", key, "--path", readme, "--to", to.to_str().unwrap()]));
    assert_eq!(fs::read(to.join(readme)).unwrap(), fs::read(a.path(&format!("var/lib/hero/{readme}"))).unwrap());
}

/// A host without its state directory builds an incremental on the newest archive of the
/// prefix: the parent's index is read by ranged GETs from the object's end (decisions/D-17),
/// a small part of the object; a passphrase archive is opened with the backup's own passphrase.
fn a_parents_index_by_ranged_reads(gw: &Gateway) {
    let a = big_instance(24);
    let pass = a.dir.path().join("pass.txt");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pass = pass.to_str().unwrap();
    let backup = |to: &str, since: &[&str]| {
        let mut args = a.args(&["backup", "--allow-live", "--json", "--to", to, "--passphrase-file", pass]);
        args.extend(since.iter().map(|s| s.to_string()));
        let out = gw.hero_snap(&args, &[("HERO_SNAP_SCRYPT_WORK_FACTOR", "10")]);
        assert!(out.status.success(), "backup to {to}: {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        last_json(&out)["result"].clone()
    };
    // A file is taken as unchanged only if its ctime is before the parent's run (whole seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let full = backup("s3://hero/ranged/0-full.hsnap", &[]);
    fs::remove_dir_all(a.path("var/lib/hero-snap")).unwrap();
    fs::write(a.path("var/lib/hero/hero_foundry/contexts/default/files/docs/new.md"), "new\n").unwrap();
    let inc = backup("s3://hero/ranged/1-inc.hsnap", &["--since", "latest"]);
    assert_eq!(inc["manifest"]["level"], 1, "{inc}");
    assert_eq!(inc["manifest"]["parent"]["run_id"], full["manifest"]["run_id"]);
    let fetch = &inc["parent_fetch"];
    let (fetched, size) = (fetch["fetched_bytes"].as_u64().unwrap(), fetch["archive_bytes"].as_u64().unwrap());
    assert_eq!(size, full["archive_bytes"].as_u64().unwrap(), "{fetch}");
    eprintln!("ranged reads of the parent: {fetched} of {size} bytes in {} GETs", fetch["requests"]);
    assert!(fetched * 20 < size, "the parent's index cost {fetched} of {size} bytes: {fetch}");
    // Only the new file is in the incremental: the 24 MiB file is inherited, found unchanged by content.
    let files = inc["manifest"]["files"].as_u64().unwrap();
    assert_eq!(inc["inherited"][0].as_u64().unwrap(), files - 1, "{inc}");
    assert!(inc["archive_bytes"].as_u64().unwrap() < 1 << 20, "{inc}");
    let b = Instance::new(&[]);
    let restore = b.args(&["restore", "--from", "s3://hero/ranged/1-inc.hsnap", "--passphrase-file", pass]);
    let out = gw.hero_snap(&restore, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    for dir in ["var/lib/hero/hero_db/data", "var/lib/hero/hero_foundry/contexts/default/files"] {
        assert_same_tree(&a.path(dir), &b.path(dir));
    }
}

/// `list` and `prune` over s3://BUCKET/PREFIX/: the same rules as for a directory, the
/// objects checked through the S3 API.
fn list_and_prune_a_prefix(gw: &Gateway) {
    let a = Instance::new(&["geomind"]);
    let (key, recipient) = age_key(a.dir.path());
    let key = key.to_str().unwrap();
    let b = |name: &str, extra: &[&str]| {
        let url = format!("s3://hero/series/{name}");
        let mut args = vec!["backup", "--allow-live", "--to", url.as_str()];
        args.extend_from_slice(extra);
        gw.ok(&a.args(&args));
        url
    };
    let old = b("old.hsnap", &["--no-encrypt"]);
    let mid = b("mid.hsnap", &["-r", &recipient]);
    let new = b("new.hsnap", &["-r", &recipient]);
    let ctx = b("geomind.hsnap", &["--no-encrypt", "--context", "geomind"]);
    // Not listed: an archive one level deeper, a name starting with `.`. Listed, never
    // deleted: an object that is not an archive.
    let deeper = b("deeper/x.hsnap", &["--no-encrypt"]);
    let notes = gw.dir.path().join("notes.txt");
    fs::write(&notes, "not an archive").unwrap();
    for k in ["series/notes.txt", "series/.hidden"] {
        let (status, body) = gw.api("PUT", &format!("/hero/{k}"), Some(notes.as_path()));
        assert_eq!(status, 200, "{body}");
    }

    let out = gw.ok(&strings(&["list", "--json", "s3://hero/series/", "-i", key]));
    let v = last_json(&out);
    let files = v["result"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [ctx.as_str(), new.as_str(), mid.as_str(), old.as_str(), "s3://hero/series/notes.txt"], "newest first, then what is not an archive");
    assert_eq!(files[1]["encrypted"], true);
    assert_eq!(files[1]["summary"]["instance"], "test");
    assert_eq!(files[0]["summary"]["contexts"], serde_json::json!(["geomind"]));
    assert!(files[4]["problem"].as_str().unwrap().contains("not a hero-snap archive"));
    // The prefix without its slash is the same folder; the text listing names the objects.
    let text = String::from_utf8(gw.ok(&strings(&["list", "s3://hero/series", "-i", key])).stdout).unwrap();
    assert!(text.contains(&new) && text.contains("hero_db,hero_foundry"), "{text}");

    let out = gw.ok(&strings(&["prune", "--json", "s3://hero/series/", "--keep-last", "1", "-i", key, "--dry-run"]));
    let v = last_json(&out);
    let mut would: Vec<&str> = v["result"]["deleted"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    would.sort();
    assert_eq!(would, [mid.as_str(), old.as_str()]);
    assert!(gw.exists("hero", "series/old.hsnap") && gw.exists("hero", "series/mid.hsnap"), "a dry run deleted");
    gw.ok(&strings(&["prune", "s3://hero/series/", "--keep-last", "1", "-i", key]));
    assert!(!gw.exists("hero", "series/old.hsnap") && !gw.exists("hero", "series/mid.hsnap"));
    for k in ["series/new.hsnap", "series/geomind.hsnap", "series/notes.txt", "series/.hidden", "series/deeper/x.hsnap"] {
        assert!(gw.exists("hero", k), "prune deleted {k}");
    }
    assert!(deeper.ends_with("deeper/x.hsnap"));

    // Free space is a local filesystem's notion: refused for a bucket, before anything.
    let out = gw.hero_snap(&strings(&["prune", "s3://hero/series/", "--keep-last", "1", "-i", key, "--min-free", "1G"]), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--min-free"), "{}", stderr(&out));
    // A missing bucket: exit 8, named.
    let out = gw.hero_snap(&strings(&["list", "s3://no-such-bucket/x/"]), &[]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("bucket `no-such-bucket` does not exist"), "{}", stderr(&out));
}

/// An instance with `mib` MiB of incompressible data in hero_db.
pub(crate) fn big_instance(mib: u64) -> Instance {
    let inst = Instance::new(&["default"]);
    let mut src = fs::File::open("/dev/urandom").unwrap().take(mib << 20);
    let mut dst = fs::File::create(inst.path("var/lib/hero/hero_db/data/big.bin")).unwrap();
    std::io::copy(&mut src, &mut dst).unwrap();
    inst
}

fn killed_upload_is_aborted_by_gc(gw: &Gateway) {
    let a = big_instance(48);
    let url = "s3://hero/killed/a.hsnap";
    // The failpoint kills the process (SIGKILL) after its third part went to the storage.
    let out = gw.hero_snap(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", url]), &[("HERO_SNAP_FAILPOINT", "s3-upload")]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "the failpoint did not fire: {}", stderr(&out));
    assert!(!gw.exists("hero", "killed/a.hsnap"), "a killed backup published its object");
    assert_eq!(gw.uploads("hero"), ["killed/a.hsnap"], "the killed run should have left its multipart upload");

    let out = gw.ok(&a.args(&["gc", "--json"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("aborted 1 unfinished upload(s) to s3://hero/killed/a.hsnap"), "{text}");
    assert!(gw.uploads("hero").is_empty(), "gc left a multipart upload");
    assert!(!gw.exists("hero", "killed/a.hsnap"));
    // The journal is gone: a second gc has nothing to do.
    let out = gw.ok(&a.args(&["gc", "--json"]));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("upload"));
}

fn failed_backup_aborts_its_upload(gw: &Gateway) {
    // A setuid file, archived after 48 MiB have gone out in parts: the run fails
    // mid-upload and must abort the upload itself.
    let a = big_instance(48);
    let late = a.path("var/lib/hero/hero_foundry/contexts/default/git/objects/suid");
    fs::write(&late, b"x").unwrap();
    fs::set_permissions(&late, <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o4755)).unwrap();
    let url = "s3://hero/failed/a.hsnap";
    let out = gw.hero_snap(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", url]), &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("setuid"), "{}", stderr(&out));
    assert!(!gw.exists("hero", "failed/a.hsnap"));
    assert!(gw.uploads("hero").is_empty(), "a failed backup left its multipart upload");
    assert!(fs::read_dir(a.path("var/lib/hero-snap")).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with("upload-")), "journal left");
}

fn clear_errors(gw: &Gateway) {
    let a = Instance::new(&["default"]);
    // Missing bucket: exit 8 before anything is frozen or read.
    let out = gw.hero_snap(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", "s3://no-such-bucket/a.hsnap"]), &[]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("bucket `no-such-bucket` does not exist"), "{}", stderr(&out));
    let out = gw.hero_snap(&strings(&["inspect", "--allow-plaintext", "--from", "s3://no-such-bucket/a.hsnap"]), &[]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("bucket `no-such-bucket` does not exist"), "{}", stderr(&out));
    // Missing object in a bucket that exists.
    let out = gw.hero_snap(&strings(&["verify", "--allow-plaintext", "--from", "s3://hero/nothing-here.hsnap"]), &[]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("no such object"), "{}", stderr(&out));
    // Bad credentials, for a write and a read.
    let bad = [("AWS_SECRET_ACCESS_KEY", "not-the-secret")];
    let out = gw.hero_snap(&a.args(&["backup", "--allow-live", "--no-encrypt", "--to", "s3://hero/bad-keys.hsnap"]), &bad);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused the credentials"), "{}", stderr(&out));
    let out = gw.hero_snap(&strings(&["inspect", "--allow-plaintext", "--from", "s3://hero/instances/a.hsnap"]), &bad);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused the credentials"), "{}", stderr(&out));
    assert!(!gw.exists("hero", "bad-keys.hsnap"));
    // Flags override the environment: a wrong endpoint by flag fails, the right one works.
    let out = gw.hero_snap(&strings(&["inspect", "--allow-plaintext", "--from", "s3://hero/instances/a.hsnap", "--s3-endpoint", "http://127.0.0.1:9"]), &[]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let out = gw.hero_snap(
        &strings(&["inspect", "--allow-plaintext", "--from", "s3://hero/instances/a.hsnap", "--s3-endpoint", &gw.endpoint()]),
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
    );
    // The archive is encrypted: reaching it is enough (exit 6, not 8).
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
}

fn one_gib_in_bounded_memory(gw: &Gateway) {
    let a = big_instance(1024);
    let url = "s3://hero/big/a.hsnap";
    let up = peak_kib(gw, &a.args(&["backup", "--allow-live", "--no-encrypt", "--to", url]));
    assert!(gw.exists("hero", "big/a.hsnap"));
    let down = peak_kib(gw, &strings(&["verify", "--allow-plaintext", "--from", url]));
    eprintln!("1 GiB through s3://: peak memory backup {} MiB, verify {} MiB", up / 1024, down / 1024);
    assert!(up < 256 * 1024, "backup to S3 peaked at {} MiB", up / 1024);
    assert!(down < 256 * 1024, "verify from S3 peaked at {} MiB", down / 1024);
}
