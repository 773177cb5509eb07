//! The inventory's `notify:` command (issue 16): told about a backup run when it ends, with
//! the run's JSON on stdin. Here it is a real `curl` posting to a listener on 127.0.0.1,
//! as it would post to ntfy or healthchecks.io; a failing or hanging command changes
//! nothing but a warning.

use crate::HERO_SNAP;
use test_support::prelude::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// An HTTP endpoint on a free port of 127.0.0.1: it records each request's body, then
/// answers 200. Stopped (and its thread joined) when dropped.
struct Listener {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start() -> Listener {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in socket.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    if let Some(body) = serve(conn) {
                        b.lock().unwrap().push(body);
                    }
                }
            }
        });
        Listener { port, bodies, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies.iter().map(|b| serde_json::from_str(b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}"))).collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (headers, then `Content-Length` bytes of body) and answers 200.
fn serve(conn: TcpStream) -> Option<String> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let mut conn = conn;
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The test inventory with a `notify:` block.
fn instance(notify: &str) -> Instance {
    Instance::with_inventory(&["default"], &format!("{INVENTORY}notify:\n{notify}"))
}

/// `notify` posting the run with curl, as to ntfy (no proxy: the listener is local).
fn curl_to(url: &str, on: &str) -> String {
    format!("  argv: [curl, -fsS, --noproxy, \"*\", --data-binary, \"@-\", \"{url}\"]\n  timeout_secs: 30\n  on: {on}\n")
}

fn backup(inst: &Instance, to: &str) -> Output {
    HERO_SNAP.run(&inst.args(&["backup", "--allow-live", "--no-encrypt", "--to", to]))
}

#[test]
fn a_failed_backup_posts_its_run_and_a_good_one_does_not() {
    let listener = Listener::start();
    let inst = instance(&curl_to(&listener.url(), "[failure]"));
    let missing = inst.dir.path().join("no-such-dir/a.hsnap");
    let out = backup(&inst, missing.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("notify"), "{}", stderr(&out));
    let got = listener.bodies();
    assert_eq!(got.len(), 1, "{got:?}");
    let run = &got[0];
    assert_eq!((run["event"].as_str(), run["ok"].as_bool(), run["exit_code"].as_i64()), (Some("failure"), Some(false), Some(1)), "{run}");
    assert_eq!((run["instance"].as_str(), run["selection"].as_str()), (Some("test"), Some("whole instance")), "{run}");
    assert_eq!(run["error"]["kind"], "io", "{run}");
    assert!(run["error"]["message"].as_str().unwrap().contains("no-such-dir"), "{run}");
    assert!(run["started"].is_string() && run["finished"].is_string() && run["duration_seconds"].is_number(), "{run}");
    assert_eq!(run["to"].as_str(), missing.to_str());

    // The same run is what `status` shows as the series' last.
    let status = last_json(&HERO_SNAP.run(&inst.args(&["status", "--json"])));
    let last = &status["result"]["series"][0]["last"];
    for field in ["started", "finished", "exit_code", "error", "to"] {
        assert_eq!(last[field], run[field], "{field}");
    }

    // A good run: `on: [failure]` leaves it untold.
    let out = backup(&inst, inst.dir.path().join("good.hsnap").to_str().unwrap());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(listener.bodies().len(), 1, "a good run was told: {:?}", listener.bodies());

    // A run that wrote an archive but missed a surface (exit 9) is a failure.
    std::fs::rename(inst.path("var/lib/hero/hero_db/data"), inst.path("var/lib/hero/hero_db/data.away")).unwrap();
    let out = backup(&inst, inst.dir.path().join("partial.hsnap").to_str().unwrap());
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let got = listener.bodies();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[1]["ok"].as_bool(), got[1]["exit_code"].as_i64(), got[1]["outcomes"]["failed"].as_u64()), (Some(false), Some(9), Some(1)), "{}", got[1]);
    assert!(got[1]["archive_bytes"].as_u64().is_some_and(|n| n > 0), "{}", got[1]);
}

#[test]
fn successes_are_told_when_asked() {
    let listener = Listener::start();
    let inst = instance(&curl_to(&listener.url(), "[failure, success]"));
    let archive = inst.dir.path().join("good.hsnap");
    let out = backup(&inst, archive.to_str().unwrap());
    assert!(out.status.success(), "{}", stderr(&out));
    let got = listener.bodies();
    assert_eq!(got.len(), 1, "{got:?}");
    let run = &got[0];
    assert_eq!((run["event"].as_str(), run["ok"].as_bool(), run["exit_code"].as_i64()), (Some("success"), Some(true), Some(0)), "{run}");
    assert!(run["error"].is_null(), "{run}");
    assert_eq!(run["archive_bytes"].as_u64(), Some(std::fs::metadata(&archive).unwrap().len()), "{run}");
    assert!(run["files"].as_u64().unwrap() > 0 && run["run_id"].is_string(), "{run}");
    assert_eq!(run["consistency"], "live");

    let out = backup(&inst, inst.dir.path().join("no-such-dir/a.hsnap").to_str().unwrap());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let got = listener.bodies();
    assert_eq!(got.iter().map(|r| r["event"].as_str().unwrap()).collect::<Vec<_>>(), ["success", "failure"]);
}

#[test]
fn a_failing_or_hanging_notify_command_leaves_the_exit_code_alone() {
    // Nothing listens on this port any more: curl fails (exit 7).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let inst = instance(&curl_to(&format!("http://127.0.0.1:{closed}/"), "[failure, success]"));
    let out = backup(&inst, inst.dir.path().join("good.hsnap").to_str().unwrap());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("WARN") && err.contains("notify: `curl -fsS --noproxy * --data-binary @- http://127.0.0.1:") && err.contains("failed (exit status: 7)"),
        "{err}"
    );
    assert!(err.contains("check the command under `notify` in") && err.contains("inventory.yaml"), "{err}");
    let out = backup(&inst, inst.dir.path().join("no-such-dir/a.hsnap").to_str().unwrap());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("failed (exit status: 7)"), "{}", stderr(&out));

    // A command that never ends is killed at its timeout, with what it started.
    let pid_file = inst.dir.path().join("notify.pid");
    let hang = format!("  argv: [sh, -c, \"sleep 300 & echo $! > {} ; wait\"]\n  timeout_secs: 1\n", pid_file.display());
    std::fs::write(&inst.inventory, format!("{INVENTORY}notify:\n{hang}")).unwrap();
    let out = backup(&inst, inst.dir.path().join("no-such-dir/a.hsnap").to_str().unwrap());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("notify: `sh -c sleep 300") && err.contains("did not finish within 1 s and was killed"), "{err}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    // Killed means gone, or a zombie where PID 1 does not reap; SIGKILL lands at once, the
    // bound only keeps a broken kill from hanging the test.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive() {
        assert!(std::time::Instant::now() < until, "the notify command's child {} survived its timeout", pid.trim());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
