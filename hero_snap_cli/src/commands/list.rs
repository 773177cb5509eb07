//! `hero-snap list`: the archives in a directory or bucket folder, with a summary of each.

use hero_snap_core::{Listed, Result};

use crate::cli::ListArgs;
use crate::output::{list_or_dash, Output};

pub fn run(args: &ListArgs, out: &Output) -> Result<()> {
    let keys = args.keys.decryption()?;
    let listed = hero_snap_core::list(&args.s3.folder(&args.dir)?, &keys)?;
    out.report(&listed, |l| print(l));
    Ok(())
}

fn print(listed: &[Listed]) {
    println!("{:<20} {:<14} {:>10} {:<9} {:<32} {:<24} file", "created", "instance", "size", "encrypted", "services", "contexts");
    for l in listed {
        let enc = match l.encrypted {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        match &l.summary {
            Some(s) => {
                let created = s.created.get(..19).unwrap_or(&s.created);
                let (services, contexts) = (s.services.join(","), list_or_dash(&s.contexts));
                println!("{:<20} {:<14} {:>10} {:<9} {:<32} {:<24} {}", created, s.instance, l.size, enc, services, contexts, l.path);
            }
            None => println!("{:<20} {:<14} {:>10} {:<9} {}: {}", "-", "-", l.size, enc, l.path, l.problem.as_deref().unwrap_or("unreadable")),
        }
    }
}
