//! Keys and secrets: key and passphrase files others can read are refused with a message;
//! secret values never reach an archive; no output of any run prints key material.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn all_output(outs: &[Output]) -> String {
    outs.iter().map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))).collect()
}

#[test]
fn key_and_passphrase_files_others_can_read_are_refused() {
    let src = Instance::new(&["default"]);
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    let pass = src.dir.path().join("pass");
    fs::write(&pass, "a passphrase\n").unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        chmod(&key, mode);
        for verb in ["verify", "inspect", "restore", "preflight"] {
            let base = [verb, "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()];
            // verify and inspect take no instance options
            let argv = if matches!(verb, "verify" | "inspect") { base.iter().map(|s| s.to_string()).collect() } else { src.args(&base) };
            let out = HERO_SNAP.run(&argv);
            assert_eq!(out.status.code(), Some(6), "identity {mode:o}/{verb}: {}", stderr(&out));
            assert!(stderr(&out).contains(&format!("chmod 600 {}", key.display())) && stderr(&out).contains("identity file"), "{verb}: {}", stderr(&out));
        }
        chmod(&pass, mode);
        let out = HERO_SNAP.run(&["verify", "--from", archive.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(6), "passphrase {mode:o}: {}", stderr(&out));
        assert!(stderr(&out).contains("passphrase file") && stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    }
    chmod(&key, 0o600);
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]);
    chmod(&key, 0o400);
    HERO_SNAP.ok(&["verify", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]);
}

#[test]
fn secret_values_never_enter_an_archive_and_no_output_prints_keys() {
    let value = format!("s3cr3t-value-{}-xyzzy", std::process::id());
    let src = Instance::new(&["default", "geomind"]);
    // The secret store lists NAME=value; a transient surface holds the value too.
    fs::write(src.path("etc/hero/secrets"), format!("HERO_DB_KEY={value}\n")).unwrap();
    fs::write(src.path("var/lib/hero/hero_indexer_cache/tmp"), format!("HERO_DB_KEY={value}\n")).unwrap();
    let (key, recipient) = age_key(src.dir.path());
    let secret_key = fs::read_to_string(&key).unwrap().trim().to_string();
    assert!(secret_key.starts_with("AGE-SECRET-KEY-1"));
    let passphrase = format!("horse-{}-battery", std::process::id());
    let pass = src.dir.path().join("pass");
    fs::write(&pass, format!("{passphrase}\n")).unwrap();
    chmod(&pass, 0o600);
    let archive = src.dir.path().join("a.hsnap");
    let pw_archive = src.dir.path().join("pw.hsnap");
    let a = archive.to_str().unwrap();
    let k = key.to_str().unwrap();
    let mut outs = vec![
        HERO_SNAP.ok(&src.args(&["plan", "--allow-live", "--json"])),
        HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", a, "-r", &recipient])),
        HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", a, "-r", &recipient, "--json"])),
        HERO_SNAP.ok(&["inspect", "--from", a, "-i", k]),
        HERO_SNAP.ok(&["inspect", "--from", a, "-i", k, "--json"]),
        HERO_SNAP.ok(&["verify", "--from", a, "-i", k, "--json"]),
    ];
    let mut cmd = HERO_SNAP.cmd();
    cmd.env("HERO_SNAP_SCRYPT_WORK_FACTOR", "10").args(src.args(&[
        "backup",
        "--allow-live",
        "--to",
        pw_archive.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]));
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    outs.push(o);
    outs.push(HERO_SNAP.ok(&["verify", "--from", pw_archive.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()]));

    // Restore into a target whose store has the value too; then failures that handle keys.
    let t = Instance::new(&[]);
    fs::write(t.path("etc/hero/secrets"), format!("HERO_DB_KEY={value}\n")).unwrap();
    outs.push(HERO_SNAP.ok(&t.args(&["preflight", "--from", a, "-i", k, "--json"])));
    outs.push(HERO_SNAP.ok(&t.args(&["restore", "--from", a, "-i", k, "--json"])));
    let wrong = t.dir.path().join("wrong");
    fs::write(&wrong, format!("{}\n", secret_key.replace('Q', "P").replace('q', "p"))).unwrap();
    chmod(&wrong, 0o600);
    outs.push(HERO_SNAP.run(&["verify", "--from", a, "-i", wrong.to_str().unwrap()]));
    let other = tempfile::tempdir().unwrap();
    let (other_key, _) = age_key(other.path());
    let other_secret = fs::read_to_string(&other_key).unwrap().trim().to_string();
    outs.push(HERO_SNAP.run(&["verify", "--from", a, "-i", other_key.to_str().unwrap()]));
    outs.push(HERO_SNAP.run(&["verify", "--from", a, "-i", other_key.to_str().unwrap(), "--json"]));
    let bad_pass = t.dir.path().join("bad-pass");
    fs::write(&bad_pass, format!("{passphrase}-wrong\n")).unwrap();
    chmod(&bad_pass, 0o600);
    outs.push(HERO_SNAP.run(&["verify", "--from", pw_archive.to_str().unwrap(), "--passphrase-file", bad_pass.to_str().unwrap()]));
    chmod(&key, 0o644);
    outs.push(HERO_SNAP.run(&["verify", "--from", a, "-i", k]));
    chmod(&key, 0o600);
    let text = all_output(&outs);
    assert!(text.contains("HERO_DB_KEY") || text.contains("none of the given keys"), "the outputs were captured");
    for (what, needle) in [
        ("the secret value", value.as_str()),
        ("the age identity", secret_key.as_str()),
        ("another identity", other_secret.as_str()),
        ("the passphrase", passphrase.as_str()),
        ("the identity's key body", &secret_key["AGE-SECRET-KEY-1".len()..]),
    ] {
        assert!(!text.contains(needle), "an output prints {what}");
    }

    // The decrypted tar streams hold the secret's name (manifest) and never its value.
    let recipient_archive = fs::read(&archive).unwrap();
    let dec = age::Decryptor::new(&recipient_archive[..]).unwrap();
    let id: age::x25519::Identity = secret_key.parse().unwrap();
    let mut compressed = Vec::new();
    std::io::Read::read_to_end(&mut dec.decrypt(std::iter::once(&id as &dyn age::Identity)).unwrap(), &mut compressed).unwrap();
    let pw_data = fs::read(&pw_archive).unwrap();
    let dec = age::Decryptor::new(&pw_data[..]).unwrap();
    let id = age::scrypt::Identity::new(age::secrecy::SecretString::from(passphrase.clone()));
    let mut pw_compressed = Vec::new();
    std::io::Read::read_to_end(&mut dec.decrypt(std::iter::once(&id as &dyn age::Identity)).unwrap(), &mut pw_compressed).unwrap();
    for z in [compressed, pw_compressed] {
        let mut child = Command::new("zstd").args(["-d", "-c"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &z).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        let tar = out.stdout;
        assert!(tar.windows(11).any(|w| w == b"HERO_DB_KEY"), "the manifest names the secret");
        assert!(tar.windows(8).any(|w| w == b"dump.rdb"), "the stream is the archive's tar");
        assert!(!tar.windows(value.len()).any(|w| w == value.as_bytes()), "the secret value is in the archive");
    }
}

/// Pre-flight checks the secret names the archive's manifest records against the target's
/// store, run for real: a stand-in `hero_proc` that implements `secret list` and `secret
/// set`. The target inventory itself lists no secrets, so only the archive can ask.
#[test]
fn preflight_checks_the_archives_secret_names_against_a_real_store() {
    let src = Instance::new(&["default"]);
    let (key, recipient) = age_key(src.dir.path());
    let archive = src.dir.path().join("a.hsnap");
    HERO_SNAP.ok(&src.args(&["backup", "--allow-live", "--to", archive.to_str().unwrap(), "-r", &recipient]));

    let t = Instance::new(&[]);
    let store = t.dir.path().join("store");
    let mode = t.dir.path().join("mode");
    let hero_proc = t.dir.path().join("hero_proc");
    fs::write(
        &hero_proc,
        format!(
            "#!/bin/sh\n# A stand-in for hero_proc's secret commands: names in a file, values never printed.\n\
             case \"$(cat {mode} 2>/dev/null)\" in fail) echo 'hero_proc: cannot reach the daemon' >&2; exit 3;; hang) sleep 60;; esac\n\
             case \"$1 $2\" in\n  'secret list') [ ! -f {store} ] || cut -d= -f1 {store};;\n  'secret set') echo \"$3=$4\" >> {store};;\n  *) exit 64;;\nesac\n",
            mode = mode.display(),
            store = store.display()
        ),
    )
    .unwrap();
    chmod(&hero_proc, 0o755);
    let inv = INVENTORY.replace("    secrets: [HERO_DB_KEY]\n", "").replace(
        "secret_store: {file: /etc/hero/secrets}",
        &format!("secret_store: {{command: {{argv: [{}, secret, list], timeout_secs: 2}}}}", hero_proc.display()),
    );
    fs::write(&t.inventory, inv).unwrap();
    let preflight = t.args(&["preflight", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]);

    // The store lacks the name: refused with the name, the service and the command that sets it.
    let out = HERO_SNAP.run(&preflight);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("HERO_DB_KEY (for hero_db)") && err.contains("hero_proc secret set HERO_DB_KEY"), "{err}");
    // A failing store: a clear error with its own message.
    fs::write(&mode, "fail").unwrap();
    let out = HERO_SNAP.run(&preflight);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot check the target's secrets") && stderr(&out).contains("cannot reach the daemon"), "{}", stderr(&out));
    // A hanging store: killed at its timeout, said so.
    fs::write(&mode, "hang").unwrap();
    let out = HERO_SNAP.run(&preflight);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not finish within 2 s and was killed"), "{}", stderr(&out));
    // Set through the store's own command: pre-flight and restore go through.
    fs::write(&mode, "ok").unwrap();
    let set = Command::new(&hero_proc).args(["secret", "set", "HERO_DB_KEY", "a-value"]).status().unwrap();
    assert!(set.success());
    HERO_SNAP.ok(&preflight);
    HERO_SNAP.ok(&t.args(&["restore", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap()]));
}
