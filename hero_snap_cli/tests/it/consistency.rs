//! Cross-service consistency under load, with real services on real filesystems.
//!
//! hero_db is Debian's `redis-server` (AOF with `appendfsync always`, plus RDB), in its own
//! cgroup. The writer (`fixtures/demo/writer`, standing for hero_collab) runs in a second
//! cgroup and commits linked transactions for two contexts: transaction N of a context is an
//! RPUSH of N in Redis, then an INSERT of N in the context's SQLite database (hero_collab),
//! then a git commit "txn N" in the context's bare repository (hero_foundry); each step is
//! finished before the next begins, and round N writes every context before round N+1.
//! hero-snap backs the instance up while the writer runs, freezing both cgroups, then the
//! archive is restored into a bare target, Redis is started on the restored data, and the
//! three stores are read through `redis-cli`, `sqlite3` and `git`.
//!
//! The rule tested. The writer is stopped by the freeze at one instant, so it is inside at
//! most one transaction, which can only have reached a prefix of (Redis, SQLite, git). After
//! the restore:
//! - each store of each context holds exactly the ids 1..k: no gap, no duplicate;
//! - per context, k(git) <= k(sqlite) <= k(redis) <= k(git) + 1;
//! - at most one context has k(redis) != k(git): the one transaction in flight at the freeze;
//! - all contexts are within one round: max k(redis) <= min k(git) + 1.
//!
//! So every transaction id is in all three stores or in none, except the one in flight at
//! the freeze, which is in Redis only or in Redis and SQLite. Each test runs one backend
//! mix: all btrfs (one subvolume per service), all XFS (reflink copies), and mixed (Redis
//! and git on btrfs subvolumes, SQLite on XFS).

use crate::HERO_SNAP;
use test_support::cli::instance_args;
use test_support::fixtures;
use test_support::loopfs::LoopFs;
use test_support::prelude::*;
use test_support::sys::{free_port, leftovers_within, require_tools, tool, KillOnDrop, TestCgroup};

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const CONTEXTS: [&str; 2] = ["geomind", "threefold"];

/// A redis-server on 127.0.0.1 with its data in `dir`, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path, cg: &TestCgroup) -> Redis {
        let port = free_port();
        let p = port.to_string();
        let child = cg.spawn(&[
            "redis-server",
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--dir",
            dir.to_str().unwrap(),
            "--daemonize",
            "no",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "1 1",
            "--logfile",
            "",
        ]);
        let mut r = Redis { child, port };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = r.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = r.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("redis-server on port {port} over {} exited ({st}): {err}", dir.display());
            }
            let out = Command::new("redis-cli").args(["-p", &p, "ping"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return r;
            }
            assert!(Instant::now() < until, "redis-server on port {port} did not answer PING");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let p = self.port.to_string();
        let mut argv = vec!["redis-cli", "-p", &p];
        argv.extend_from_slice(args);
        tool(&argv)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn inventory(cg_db: &str, cg_writer: &str) -> String {
    fixtures::inventory("consistency", &[("cgroup_db", cg_db), ("cgroup_writer", cg_writer)])
}

/// The instance's filesystems; the root of the instance is `root`. Dropped in order
/// (a filesystem mounted inside another goes first).
fn filesystems(mix: &str) -> (PathBuf, Vec<LoopFs>) {
    let hero = |root: &Path, svc: &str| root.join("var/lib/hero").join(svc);
    match mix {
        "btrfs" => {
            let b = LoopFs::new("btrfs", 512);
            let root = b.mount.join("root");
            for svc in ["hero_db", "hero_collab", "hero_foundry"] {
                b.subvolume(&hero(&root, svc));
            }
            (root, vec![b])
        }
        "xfs" => {
            let x = LoopFs::new("xfs", 512);
            (x.mount.join("root"), vec![x])
        }
        "mixed" => {
            let b = LoopFs::new("btrfs", 512);
            let root = b.mount.join("root");
            b.subvolume(&hero(&root, "hero_db"));
            b.subvolume(&hero(&root, "hero_foundry"));
            std::fs::create_dir_all(hero(&root, "hero_collab")).unwrap();
            let x = LoopFs::new_at("xfs", 512, Some(&hero(&root, "hero_collab")));
            (root, vec![x, b])
        }
        other => panic!("unknown backend mix {other}"),
    }
}

/// Lays out one context: its SQLite database and a bare repository with a first commit.
fn layout_context(root: &Path, ctx: &str) -> (PathBuf, PathBuf) {
    let db_dir = root.join("var/lib/hero/hero_collab/contexts").join(ctx);
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = db_dir.join("collab.db");
    tool(&["sqlite3", db.to_str().unwrap(), "create table txns(id integer primary key)"]);
    let git = root.join("var/lib/hero/hero_foundry/contexts").join(ctx).join("git/main.git");
    tool(&["git", "init", "-q", "--bare", "-b", "main", git.to_str().unwrap()]);
    let empty_tree = tool(&["git", "--git-dir", git.to_str().unwrap(), "hash-object", "-w", "-t", "tree", "/dev/null"]);
    let first = tool(&[
        "git",
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@hero",
        "--git-dir",
        git.to_str().unwrap(),
        "commit-tree",
        empty_tree.trim(),
        "-m",
        "first commit",
    ]);
    tool(&["git", "--git-dir", git.to_str().unwrap(), "update-ref", "refs/heads/main", first.trim()]);
    (db, git)
}

/// Parses `ids` (one per line) and returns k if they are exactly 1..k.
fn prefix(what: &str, ids: &[u64]) -> u64 {
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(*id, i as u64 + 1, "{what}: id {id} at position {}: a gap or a duplicate ({ids:?})", i + 1);
    }
    ids.len() as u64
}

fn numbers(text: &str) -> Vec<u64> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().parse().unwrap_or_else(|_| panic!("not an id: {l:?}"))).collect()
}

/// Reads (k_redis, k_sqlite, k_git) of one context through the services' own tools.
fn counts(redis: &Redis, root: &Path, ctx: &str) -> (u64, u64, u64) {
    let r = prefix(&format!("redis txns:{ctx}"), &numbers(&redis.cli(&["LRANGE", &format!("txns:{ctx}"), "0", "-1"])));
    let db = root.join("var/lib/hero/hero_collab/contexts").join(ctx).join("collab.db");
    let s = prefix(&format!("sqlite {ctx}"), &numbers(&tool(&["sqlite3", db.to_str().unwrap(), "select id from txns order by id"])));
    let git = root.join("var/lib/hero/hero_foundry/contexts").join(ctx).join("git/main.git");
    let log = tool(&["git", "--git-dir", git.to_str().unwrap(), "log", "--reverse", "--format=%s", "main"]);
    let ids: Vec<u64> = log.lines().filter_map(|l| l.strip_prefix("txn ")).map(|n| n.parse().unwrap()).collect();
    let g = prefix(&format!("git {ctx}"), &ids);
    (r, s, g)
}

fn consistent_under_load(mix: &str) {
    require_tools(&["redis-server", "redis-cli", "sqlite3", "git"]);
    let (root, fs) = filesystems(mix);
    let work = tempfile::Builder::new().prefix("hero-snap-consistency.").tempdir_in("/var/tmp").unwrap();
    let cg_db = TestCgroup::new(&format!("cons-{mix}-db"));
    let cg_writer = TestCgroup::new(&format!("cons-{mix}-writer"));
    let inv = work.path().join("inventory.yaml");
    std::fs::write(&inv, inventory(&cg_db.name, &cg_writer.name)).unwrap();
    let state = work.path().join("state");
    let with = |v: &[&str]| instance_args(v, &inv, &root, &state);

    let data = root.join("var/lib/hero/hero_db/data");
    std::fs::create_dir_all(&data).unwrap();
    let redis = Redis::start(&data, &cg_db);
    let mut writer_args = vec!["run".to_string(), redis.port.to_string()];
    for ctx in CONTEXTS {
        let (db, git) = layout_context(&root, ctx);
        writer_args.extend([ctx.to_string(), db.display().to_string(), git.display().to_string()]);
    }
    let writer_path = fixtures::repo().join("fixtures/demo/writer");
    let mut argv = vec![writer_path.to_str().unwrap()];
    argv.extend(writer_args.iter().map(String::as_str));
    let mut writer = KillOnDrop(cg_writer.spawn(&argv));

    let plan = last_json(&HERO_SNAP.ok(&with(&["plan", "--json"])));
    assert_eq!(plan["result"]["consistency"], "atomic", "{mix}: {plan}");
    let backends: Vec<&str> = plan["result"]["volumes"].as_array().unwrap().iter().map(|v| v["backend"].as_str().unwrap()).collect();
    let expected: &[&str] = match mix {
        "btrfs" => &["btrfs"],
        "xfs" => &["reflink"],
        _ => &["btrfs", "reflink"],
    };
    for b in expected {
        assert!(backends.contains(b), "{mix}: volumes {backends:?} lack {b}");
    }

    // Load: wait until the writer has committed a good number of rounds.
    let last = CONTEXTS[CONTEXTS.len() - 1];
    let until = Instant::now() + Duration::from_secs(60);
    let before = loop {
        if let Some(st) = writer.0.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            let _ = writer.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("{mix}: the writer exited ({st}): {err}");
        }
        let n: u64 = redis.cli(&["LLEN", &format!("txns:{last}")]).trim().parse().unwrap();
        if n >= 20 {
            break n;
        }
        assert!(Instant::now() < until, "{mix}: the writer committed only {n} rounds in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    };

    let (key, recipient) = age_key(work.path());
    let archive = work.path().join("a.hsnap");
    HERO_SNAP.ok(&with(&["backup", "--to", archive.to_str().unwrap(), "-r", &recipient]));
    assert!(!cg_db.frozen() && !cg_writer.frozen(), "{mix}: services left frozen");
    // The writer went on after the backup: the freeze happened in the middle of the load.
    let until = Instant::now() + Duration::from_secs(30);
    while redis.cli(&["LLEN", &format!("txns:{last}")]).trim().parse::<u64>().unwrap() <= before + 1 {
        assert!(writer.0.try_wait().unwrap().is_none(), "{mix}: the writer died during the backup");
        assert!(Instant::now() < until, "{mix}: the writer did not go on after the backup");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(writer);
    drop(redis);

    let m = last_json(&HERO_SNAP.ok(&["inspect", "--from", archive.to_str().unwrap(), "-i", key.to_str().unwrap(), "--json"]));
    assert_eq!(m["result"]["consistency"], "atomic", "{mix}: {m}");

    // Restore into a bare target and start Redis on the restored data.
    let target = tempfile::Builder::new().prefix("hero-snap-consistency-target.").tempdir_in("/var/tmp").unwrap();
    let out = HERO_SNAP.run(
        &[
            "restore",
            "--from",
            archive.to_str().unwrap(),
            "-i",
            key.to_str().unwrap(),
            "--config",
            inv.to_str().unwrap(),
            "--root",
            target.path().to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]
        .map(String::from),
    );
    assert!(out.status.success(), "{mix}: restore failed: {}", stderr(&out));
    let cg_restored = TestCgroup::new(&format!("cons-{mix}-restored"));
    let redis = Redis::start(&target.path().join("var/lib/hero/hero_db/data"), &cg_restored);

    let mut partial = Vec::new();
    let (mut rmax, mut gmin) = (0, u64::MAX);
    for ctx in CONTEXTS {
        let (r, s, g) = counts(&redis, target.path(), ctx);
        eprintln!("{mix}: {ctx}: restored redis 1..{r}, sqlite 1..{s}, git 1..{g}");
        assert!(g >= before.saturating_sub(1), "{mix}: {ctx} has {g} transactions, the writer had done {before} rounds before the backup");
        assert!(
            g <= s && s <= r && r <= g + 1,
            "{mix}: {ctx}: redis 1..{r}, sqlite 1..{s}, git 1..{g}: a transaction reached a later store without an earlier one, or two are partial"
        );
        if r != g {
            partial.push(format!("{ctx}: txn {r}"));
        }
        rmax = rmax.max(r);
        gmin = gmin.min(g);
        let git = target.path().join("var/lib/hero/hero_foundry/contexts").join(ctx).join("git/main.git");
        tool(&["git", "--git-dir", git.to_str().unwrap(), "fsck", "--strict", "--no-progress"]);
    }
    assert!(partial.len() <= 1, "{mix}: more than one transaction in flight at the freeze: {partial:?}");
    assert!(rmax <= gmin + 1, "{mix}: one context reached txn {rmax}, another stops at {gmin}: not one instant");

    // No snapshot or staging left on the instance's filesystems.
    for f in &fs {
        let left = leftovers_within(&f.mount, 5);
        assert!(left.is_empty(), "{mix}: left {left:?}");
    }
    drop(redis);
    drop(fs);
}

#[test]
fn consistent_under_load_btrfs() {
    consistent_under_load("btrfs");
}

#[test]
fn consistent_under_load_reflink() {
    consistent_under_load("xfs");
}

#[test]
fn consistent_under_load_mixed() {
    consistent_under_load("mixed");
}
