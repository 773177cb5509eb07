//! What a run shows: text, or with `--json` one JSON object per line (events while the
//! run goes, the result last; docs/CLI.md, docs/events.schema.json); and its progress,
//! through the one [`Progress`] the output allows.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;

use hero_snap_core::{Error, Event, Outcome, Progress, Result, Status};
use serde::Serialize;
use serde_json::{json, Value};

/// The `--json` event stream's schema version (docs/events.schema.json).
const EVENTS_VERSION: u32 = 1;

/// Where a command's text goes.
#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn println(self, line: &str) {
        match self {
            Stream::Stdout => println!("{line}"),
            Stream::Stderr => eprintln!("{line}"),
        }
    }
}

/// The output of one run.
pub struct Output {
    json: bool,
    /// With `backup --to -` stdout carries the archive, so the JSON lines go to stderr.
    to_stderr: bool,
    command: &'static str,
    /// The command's result, kept for the last JSON line.
    result: Mutex<Option<Value>>,
}

impl Output {
    pub fn new(json: bool, command: &'static str, archive_on_stdout: bool) -> Output {
        Output { json, to_stderr: archive_on_stdout, command, result: Mutex::new(None) }
    }

    /// Whether the output is JSON lines.
    pub fn json(&self) -> bool {
        self.json
    }

    /// The command's result: with `--json` kept for the last line, else printed by `print`.
    pub fn report<T: Serialize>(&self, value: &T, print: impl FnOnce(&T)) {
        if self.json {
            *self.result.lock().expect("no panics while held") = serde_json::to_value(value).ok();
        } else {
            print(value);
        }
    }

    /// The progress of a run: JSON events with `--json`, a bar when stderr is a
    /// terminal, else nothing.
    pub fn progress(&self) -> RunProgress<'_> {
        let view = if self.json {
            View::Json(Mutex::new(Tally::default()))
        } else if io::stderr().is_terminal() {
            View::Bar(new_bar())
        } else {
            View::Silent
        };
        RunProgress { out: self, view }
    }

    /// One line per outcome and a count, as text; with `--json` the outcomes were events.
    pub fn outcomes(&self, outcomes: &[Outcome], stream: Stream) {
        if self.json {
            return;
        }
        for o in outcomes {
            let status = match o.status {
                Status::Ok => "ok",
                Status::Skipped => "skipped",
                Status::Failed => "FAILED",
            };
            let reason = o.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
            stream.println(&format!("  {status:<8} {}{reason}", o.label()));
        }
        let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
        stream.println(&format!("{} ok, {} skipped, {} failed", count(Status::Ok), count(Status::Skipped), count(Status::Failed)));
    }

    /// Prints the last line (or the error text) and returns the exit code.
    pub fn finish(&self, result: Result<()>) -> i32 {
        let kept = self.result.lock().expect("no panics while held").take();
        let code = result.as_ref().err().map_or(0, Error::exit_code);
        if self.json {
            self.line(result_line(self.command, &result, kept));
        } else if let Err(e) = &result {
            eprintln!("hero-snap: {e}");
        }
        code
    }

    fn line(&self, mut v: Value) {
        if let Value::Object(map) = &mut v {
            map.insert("v".into(), EVENTS_VERSION.into());
        }
        // One write per line, so that a reader never sees half an event.
        let text = format!("{v}\n");
        if self.to_stderr {
            let _ = io::stderr().lock().write_all(text.as_bytes());
        } else {
            let mut o = io::stdout().lock();
            let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
        }
    }
}

/// The `result` event: the result on success; the error, and the result if there was one.
fn result_line(command: &str, result: &Result<()>, kept: Option<Value>) -> Value {
    let Err(e) = result else {
        return json!({"event": "result", "ok": true, "command": command, "result": kept});
    };
    let refusals = match e {
        Error::Preflight(r) => serde_json::to_value(r).ok(),
        _ => None,
    };
    let error = json!({"kind": e.kind(), "message": e.to_string(), "exit_code": e.exit_code(), "refusals": refusals});
    let mut v = json!({"event": "result", "ok": false, "command": command, "error": error});
    if let Some(r) = kept {
        v["result"] = r;
    }
    v
}

/// `a,b,c`, or `-` for none.
pub fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// A run's progress as its [`Output`] shows it. Call [`RunProgress::done`] before printing
/// the report; dropping it (on an error) clears the bar too.
pub struct RunProgress<'a> {
    out: &'a Output,
    view: View,
}

enum View {
    /// `--json`: every event as a line, bytes coalesced into at most one `progress`
    /// line per percent.
    Json(Mutex<Tally>),
    /// A bar on the terminal (stderr).
    Bar(indicatif::ProgressBar),
    /// Text output that is not a terminal: nothing until the report.
    Silent,
}

#[derive(Default)]
struct Tally {
    total: u64,
    done: u64,
    percent: u64,
}

impl RunProgress<'_> {
    /// Ends the progress display.
    pub fn done(self) {}

    fn json_event(&self, tally: &Mutex<Tally>, e: &Event) {
        let mut t = tally.lock().expect("no panics while held");
        match e {
            Event::Totals { bytes, .. } => *t = Tally { total: *bytes, ..Tally::default() },
            Event::Bytes { bytes } => {
                t.done += bytes;
                let percent = (t.done.min(t.total) * 100).checked_div(t.total).unwrap_or(100);
                if percent > t.percent {
                    t.percent = percent;
                    self.out.line(json!({"event": "progress", "bytes": t.done, "total_bytes": t.total}));
                }
                return;
            }
            _ => {}
        }
        drop(t);
        if let Ok(v) = serde_json::to_value(e) {
            self.out.line(v);
        }
    }
}

impl Progress for RunProgress<'_> {
    fn event(&self, e: &Event) {
        match &self.view {
            View::Json(tally) => self.json_event(tally, e),
            View::Bar(pb) => bar_event(pb, e),
            View::Silent => {}
        }
    }
}

impl Drop for RunProgress<'_> {
    fn drop(&mut self) {
        if let View::Bar(pb) = &self.view {
            pb.finish_and_clear();
        }
    }
}

fn new_bar() -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

fn bar_event(pb: &indicatif::ProgressBar, e: &Event) {
    match e {
        Event::Totals { bytes, .. } => pb.set_length(*bytes),
        Event::Bytes { bytes } => pb.inc(*bytes),
        Event::Phase { phase } => pb.set_message(phase.clone()),
        Event::Surface { service, surface, .. } => pb.set_message(format!("{service}.{surface}")),
        Event::Warning { warning } => pb.println(format!("warning [{}]: {}", warning.code, warning.message)),
        Event::Outcome(_) => {}
    }
}
