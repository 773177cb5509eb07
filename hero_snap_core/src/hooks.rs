//! Running the inventory's external commands (hooks, migrations, secret listings, notify):
//! `{name}` substitution and `HERO_SNAP_*` variables, then [`crate::process`] runs them.

use crate::error::Result;
use crate::inventory::Command;
use crate::process::Program;

/// Runs `cmd` with `vars` substituted (`{name}` → value) and extra environment; fails on a
/// non-zero exit or on the timeout (the process is killed).
pub(crate) fn run(cmd: &Command, vars: &[(&str, &str)]) -> Result<String> {
    program(cmd, vars).run()
}

/// [`run`], with `input` written to the command's stdin.
pub(crate) fn run_with_input(cmd: &Command, vars: &[(&str, &str)], input: &[u8]) -> Result<String> {
    program(cmd, vars).stdin(input).run()
}

fn program(cmd: &Command, vars: &[(&str, &str)]) -> Program {
    let argv: Vec<String> = cmd.argv.iter().map(|a| substitute(a, vars)).collect();
    let mut program = Program::new(&argv).timeout(cmd.timeout());
    for (k, v) in vars {
        program = program.env(format!("HERO_SNAP_{}", k.to_uppercase()), *v);
    }
    program
}

fn substitute(arg: &str, vars: &[(&str, &str)]) -> String {
    let mut out = arg.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_substituted_and_exported() {
        let cmd = Command { argv: vec!["sh".into(), "-c".into(), "echo {service} $HERO_SNAP_SERVICE $HERO_SNAP_NEW_CONTEXT".into()], timeout_secs: 5 };
        assert_eq!(run(&cmd, &[("service", "hero_db"), ("new_context", "geomind2")]).unwrap().trim(), "hero_db hero_db geomind2");
    }

    #[test]
    fn input_reaches_the_command() {
        let cmd = Command { argv: vec!["sh".into(), "-c".into(), "echo {event}; cat".into()], timeout_secs: 5 };
        assert_eq!(run_with_input(&cmd, &[("event", "failure")], b"{\"ok\":false}").unwrap(), "failure\n{\"ok\":false}");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
        let cmd = Command { argv: vec!["sh".into(), "-c".into(), "sleep 300 & sleep 300".into()], timeout_secs: 1 };
        let started = std::time::Instant::now();
        let e = run(&cmd, &[]).unwrap_err().to_string();
        assert!(e.contains("did not finish within 1 s and was killed"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "{:?}", started.elapsed());
    }
}
