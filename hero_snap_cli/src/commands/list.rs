//! `hero-snap list`: the archives in a directory or bucket folder, with a summary of each.

use hero_snap_core::{Listed, Result};

use crate::cli::ListArgs;
use crate::output::{list_or_dash, Output};

pub fn run(args: &ListArgs, out: &Output) -> Result<()> {
    let keys = args.keys.decryption()?;
    let listed = hero_snap_core::list(&args.s3.folder(&args.dir)?, &keys, Some(&args.instance.state()))?;
    out.report(&listed, |l| print(l));
    Ok(())
}

fn print(listed: &[Listed]) {
    println!("{:<20} {:<14} {:>10} {:<9} {:<32} {:<24} file", "created", "instance", "size", "encrypted", "services", "contexts");
    for l in listed {
        let enc = match (l.encrypted, l.from_catalog) {
            // Summarised from this host's catalog: the archive was not opened.
            (Some(true), true) => "catalog",
            (Some(true), false) => "yes",
            (Some(false), _) => "no",
            (None, _) => "-",
        };
        match &l.summary {
            Some(s) => {
                let created = s.created.get(..19).unwrap_or(&s.created);
                let (services, contexts) = (s.services.join(","), list_or_dash(&s.contexts));
                let chain = match (&s.level, &s.parent) {
                    (Some(level), Some(parent)) => format!(" (incremental, level {level}, on {parent})"),
                    _ => String::new(),
                };
                println!("{:<20} {:<14} {:>10} {:<9} {:<32} {:<24} {}{chain}", created, s.instance, l.size, enc, services, contexts, l.path);
            }
            None => println!("{:<20} {:<14} {:>10} {:<9} {}: {}", "-", "-", l.size, enc, l.path, l.problem.as_deref().unwrap_or("unreadable")),
        }
    }
}
