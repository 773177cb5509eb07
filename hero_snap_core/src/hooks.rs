//! Running the inventory's external commands (hooks, migrations, secret listings):
//! argv without a shell, a timeout that kills, output captured for the message.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::inventory::Command;

/// Runs `cmd` with `vars` substituted (`{name}` → value) and extra environment; fails on a
/// non-zero exit or on the timeout (the process is killed).
pub(crate) fn run(cmd: &Command, vars: &[(&str, &str)]) -> Result<String> {
    let argv: Vec<String> = cmd.argv.iter().map(|a| substitute(a, vars)).collect();
    let name = argv.first().cloned().unwrap_or_default();
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in vars {
        command.env(format!("HERO_SNAP_{}", k.to_uppercase()), v);
    }
    let child = command.spawn().map_err(|e| Error::Command(format!("`{name}`: cannot start it: {e}")))?;
    let (status, out, err) = wait_with_timeout(child, cmd.timeout())
        .map_err(|e| Error::Command(format!("`{}`: {e}", argv.join(" "))))?;
    match status {
        None => Err(Error::Command(format!("`{}` did not finish within {} s and was killed", argv.join(" "), cmd.timeout_secs))),
        Some(s) if !s.success() => Err(Error::Command(format!(
            "`{}` failed ({s}){}",
            argv.join(" "),
            if err.trim().is_empty() { String::new() } else { format!(": {}", err.trim()) }
        ))),
        Some(_) => Ok(out),
    }
}

/// Runs a command and returns its standard output.
pub(crate) fn run_capture(cmd: &Command) -> Result<String> {
    run(cmd, &[])
}

fn substitute(arg: &str, vars: &[(&str, &str)]) -> String {
    let mut out = arg.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> std::io::Result<(Option<std::process::ExitStatus>, String, String)> {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A killed hook's own children may hold the pipes open; don't wait for them.
    let out = if status.is_some() { out_t.join().unwrap_or_default() } else { String::new() };
    let err = if status.is_some() { err_t.join().unwrap_or_default() } else { String::new() };
    Ok((status, out, err))
}
