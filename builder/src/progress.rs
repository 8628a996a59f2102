//! Progress displays for the solver's events: BuildKit-like plain lines (CI), one JSON
//! object per line, or indicatif lines on a terminal.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_ops::VertexId;

use crate::solver::{Event, Reporter};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// `tty` on a terminal, `plain` otherwise.
    Auto,
    /// Live lines on a terminal.
    Tty,
    /// Plain lines, one per event (for CI logs).
    Plain,
    /// One JSON object per event.
    Json,
    /// Nothing.
    Quiet,
}

/// A step as shown to the user.
#[derive(Debug, Clone)]
pub struct StepLabel {
    /// Position in the display (`#3`).
    pub number: usize,
    /// `[stage 2/4] COPY . /app`.
    pub name: String,
}

/// Draws solver events.
pub struct Progress {
    mode: ProgressMode,
    labels: HashMap<VertexId, StepLabel>,
    out: Mutex<Box<dyn Write + Send>>,
    bars: Option<(MultiProgress, Mutex<HashMap<VertexId, ProgressBar>>)>,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Progress {
    /// A display over stderr.
    pub fn new(mode: ProgressMode, labels: HashMap<VertexId, StepLabel>) -> Progress {
        use std::io::IsTerminal;
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let bars =
            (mode == ProgressMode::Tty).then(|| (MultiProgress::new(), Mutex::new(HashMap::new())));
        Progress {
            mode,
            labels,
            out: Mutex::new(Box::new(std::io::stderr())),
            bars,
        }
    }

    fn label(&self, id: VertexId) -> StepLabel {
        self.labels.get(&id).cloned().unwrap_or(StepLabel {
            number: id.index() + 1,
            name: format!("vertex {}", id.index()),
        })
    }

    fn line(&self, s: &str) {
        let mut out = self.out.lock().expect("progress lock");
        let _ = writeln!(out, "{s}");
    }

    /// Prints a line outside the step display (warnings, summary).
    pub fn message(&self, s: &str) {
        match &self.bars {
            Some((m, _)) => {
                let _ = m.println(s);
            }
            None if self.mode != ProgressMode::Json && self.mode != ProgressMode::Quiet => {
                self.line(s)
            }
            None => {}
        }
    }
}

impl Reporter for Progress {
    fn event(&self, event: &Event) {
        match self.mode {
            ProgressMode::Quiet | ProgressMode::Auto => {}
            ProgressMode::Json => {
                let (id, status, extra) = match event {
                    Event::Started(id) => (*id, "started", serde_json::json!({})),
                    Event::Cached { id, key } => (*id, "cached", serde_json::json!({ "key": key })),
                    Event::Done { id, key, duration } => (
                        *id,
                        "done",
                        serde_json::json!({ "key": key, "duration_ms": duration.as_millis() as u64 }),
                    ),
                    Event::Failed { id, message } => {
                        (*id, "error", serde_json::json!({ "error": message }))
                    }
                    Event::Log { id, line } => (*id, "log", serde_json::json!({ "line": line })),
                };
                let l = self.label(id);
                let mut obj =
                    serde_json::json!({ "step": l.number, "name": l.name, "status": status });
                if let (Some(o), serde_json::Value::Object(e)) = (obj.as_object_mut(), extra) {
                    o.extend(e);
                }
                self.line(&obj.to_string());
            }
            ProgressMode::Plain => {
                let line = match event {
                    Event::Started(id) => {
                        let l = self.label(*id);
                        format!("#{} {}", l.number, l.name)
                    }
                    Event::Cached { id, .. } => format!("#{} CACHED", self.label(*id).number),
                    Event::Done { id, duration, .. } => {
                        format!("#{} DONE {}", self.label(*id).number, secs(*duration))
                    }
                    Event::Failed { id, message } => {
                        format!("#{} ERROR: {message}", self.label(*id).number)
                    }
                    Event::Log { id, line } => format!("#{} {line}", self.label(*id).number),
                };
                self.line(&line);
            }
            ProgressMode::Tty => {
                let Some((multi, bars)) = &self.bars else {
                    return;
                };
                let mut bars = bars.lock().expect("progress lock");
                match event {
                    Event::Log { id, line } => {
                        let _ = multi.println(format!("#{} {line}", self.label(*id).number));
                    }
                    Event::Started(id) => {
                        let l = self.label(*id);
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                                .expect("static template"),
                        );
                        bar.set_message(format!("#{} {}", l.number, l.name));
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bars.insert(*id, bar);
                    }
                    Event::Cached { id, .. }
                    | Event::Done { id, .. }
                    | Event::Failed { id, .. } => {
                        let l = self.label(*id);
                        let status = match event {
                            Event::Cached { .. } => "CACHED".to_string(),
                            Event::Done { duration, .. } => secs(*duration),
                            Event::Failed { message, .. } => format!("ERROR: {message}"),
                            Event::Started(_) | Event::Log { .. } => unreachable!(),
                        };
                        if let Some(bar) = bars.remove(id) {
                            bar.set_style(
                                ProgressStyle::with_template("{msg}").expect("static template"),
                            );
                            bar.finish_with_message(format!(
                                "=> #{} {} {status}",
                                l.number, l.name
                            ));
                        }
                    }
                }
            }
        }
    }
}
