//! Progress displays for the solver's events: BuildKit-like plain lines (CI), one JSON
//! object per line, or indicatif lines on a terminal.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_ops::VertexId;

use kiln_registry::{BlobDone, BlobKind};
use kiln_solver::{BlobState, Event, Reporter};

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
    labels: std::sync::RwLock<HashMap<VertexId, StepLabel>>,
    out: Mutex<Box<dyn Write + Send>>,
    bars: Option<(MultiProgress, Mutex<HashMap<VertexId, ProgressBar>>)>,
    /// Tty bars of blobs being transferred, by digest.
    blob_bars: Mutex<HashMap<String, ProgressBar>>,
}

/// A byte count as BuildKit shows it (Docker's `units.HumanSize`: decimal units, four
/// significant digits): `0B`, `512B`, `12.3kB`, `45.63MB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{n}B");
    }
    let decimals = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", UNITS[unit])
}

/// The line of a blob event: `sha256:... 12.3MB / 45.6MB`, `... done`, `... exists`.
/// `None` for byte updates (a tty bar shows them; plain logs would drown in them).
pub fn blob_line(digest: &str, done: u64, total: u64, state: BlobState) -> Option<String> {
    let bytes = |d: u64| format!("{digest} {} / {}", human_size(d), human_size(total));
    match state {
        BlobState::Started(BlobKind::Download) => Some(bytes(done)),
        BlobState::Started(BlobKind::Upload) => Some(format!("{} uploading", bytes(done))),
        BlobState::Transferring => None,
        BlobState::Done(BlobDone::Downloaded | BlobDone::Uploaded) => {
            Some(format!("{} done", bytes(total)))
        }
        BlobState::Done(how) => Some(format!("{digest} {}", how.as_str())),
    }
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
            labels: std::sync::RwLock::new(labels),
            out: Mutex::new(Box::new(std::io::stderr())),
            bars,
            blob_bars: Mutex::new(HashMap::new()),
        }
    }

    /// Names the steps (known once the Dockerfile is converted, after `FROM`s are
    /// resolved through this display).
    pub fn set_labels(&self, labels: HashMap<VertexId, StepLabel>) {
        *self.labels.write().expect("progress lock") = labels;
    }

    /// Writes to `out` instead of stderr (tests).
    #[cfg(test)]
    fn with_output(mut self, out: Box<dyn Write + Send>) -> Progress {
        self.out = Mutex::new(out);
        self
    }

    /// `#3 ` for a vertex, nothing otherwise.
    fn prefix(&self, vertex: Option<VertexId>) -> String {
        vertex
            .map(|v| format!("#{} ", self.label(v).number))
            .unwrap_or_default()
    }

    fn blob_tty(&self, multi: &MultiProgress, prefix: &str, event: &Event) {
        let Event::Blob {
            digest,
            done,
            total,
            state,
            ..
        } = event
        else {
            return;
        };
        let mut bars = self.blob_bars.lock().expect("progress lock");
        let msg = |d: u64| {
            format!(
                "{prefix}{digest} {} / {}",
                human_size(d),
                human_size(*total)
            )
        };
        match state {
            BlobState::Started(_) => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .expect("static template"),
                );
                bar.set_message(msg(*done));
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(digest.clone(), bar);
            }
            BlobState::Transferring => {
                if let Some(bar) = bars.get(digest) {
                    bar.set_message(msg(*done));
                }
            }
            BlobState::Done(_) => {
                let line = blob_line(digest, *done, *total, *state).unwrap_or_default();
                match bars.remove(digest) {
                    Some(bar) => {
                        bar.set_style(
                            ProgressStyle::with_template("{msg}").expect("static template"),
                        );
                        bar.finish_with_message(format!("=> {prefix}{line}"));
                    }
                    None => {
                        let _ = multi.println(format!("=> {prefix}{line}"));
                    }
                }
            }
        }
    }

    fn label(&self, id: VertexId) -> StepLabel {
        let labels = self.labels.read().expect("progress lock");
        labels.get(&id).cloned().unwrap_or(StepLabel {
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
            // Only a trace shows where a lookup ended; its blobs have their own lines.
            _ if matches!(event, Event::Resolved { .. }) => {}
            ProgressMode::Json => {
                if let Event::Pull { reference } = event {
                    let obj = serde_json::json!({ "status": "pulling", "reference": reference });
                    self.line(&obj.to_string());
                    return;
                }
                if let Event::Blob {
                    vertex,
                    digest,
                    done,
                    total,
                    state,
                } = event
                {
                    if *state == BlobState::Transferring {
                        return;
                    }
                    let status = match state {
                        BlobState::Started(BlobKind::Download) => "downloading",
                        BlobState::Started(BlobKind::Upload) => "uploading",
                        BlobState::Transferring => unreachable!(),
                        BlobState::Done(how) => how.as_str(),
                    };
                    let mut obj = serde_json::json!({ "status": "blob", "digest": digest,
                        "done": done, "total": total, "state": status });
                    if let Some(v) = vertex {
                        obj["step"] = self.label(*v).number.into();
                    }
                    self.line(&obj.to_string());
                    return;
                }
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
                    Event::Miss { id, reason } => {
                        (*id, "miss", serde_json::json!({ "reason": reason }))
                    }
                    Event::Pull { .. } | Event::Resolved { .. } | Event::Blob { .. } => {
                        unreachable!("handled above")
                    }
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
                    Event::Miss { id, reason } => {
                        format!("#{} MISS: {reason}", self.label(*id).number)
                    }
                    Event::Pull { reference } => format!("pulling {reference}"),
                    Event::Resolved { .. } => return,
                    Event::Blob {
                        vertex,
                        digest,
                        done,
                        total,
                        state,
                    } => match blob_line(digest, *done, *total, *state) {
                        Some(l) => format!("{}{l}", self.prefix(*vertex)),
                        None => return,
                    },
                };
                self.line(&line);
            }
            ProgressMode::Tty => {
                let Some((multi, bars)) = &self.bars else {
                    return;
                };
                if let Event::Blob { vertex, .. } = event {
                    self.blob_tty(multi, &self.prefix(*vertex), event);
                    return;
                }
                let mut bars = bars.lock().expect("progress lock");
                match event {
                    Event::Pull { reference } => {
                        let _ = multi.println(format!("pulling {reference}"));
                    }
                    Event::Blob { .. } | Event::Resolved { .. } => {}
                    Event::Log { id, line } => {
                        let _ = multi.println(format!("#{} {line}", self.label(*id).number));
                    }
                    Event::Miss { id, reason } => {
                        let l = self.label(*id);
                        let _ = multi.println(format!("#{} MISS: {reason}", l.number));
                        if let Some(bar) = bars.get(id) {
                            bar.set_message(format!("#{} {} (MISS: {reason})", l.number, l.name));
                        }
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
                            Event::Started(_)
                            | Event::Log { .. }
                            | Event::Miss { .. }
                            | Event::Pull { .. }
                            | Event::Resolved { .. }
                            | Event::Blob { .. } => unreachable!(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn render(mode: ProgressMode, events: &[Event]) -> String {
        let out = Shared::default();
        let mut labels = HashMap::new();
        labels.insert(
            VertexId::new(2),
            StepLabel {
                number: 3,
                name: "[1/2] RUN make".into(),
            },
        );
        let p = Progress::new(mode, labels).with_output(Box::new(out.clone()));
        for e in events {
            p.event(e);
        }
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    fn blob(vertex: Option<usize>, done: u64, state: BlobState) -> Event {
        Event::Blob {
            vertex: vertex.map(VertexId::new),
            digest: "sha256:aaaa".into(),
            done,
            total: 45_600_000,
            state,
        }
    }

    #[test]
    fn sizes_read_like_buildkit() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(12_345), "12.35kB");
        assert_eq!(human_size(45_600_000), "45.6MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }

    #[test]
    fn a_miss_is_one_line_with_its_reason() {
        let miss = [Event::Miss {
            id: VertexId::new(2),
            reason: "1 file changed: src/a (content)".into(),
        }];
        assert_eq!(
            render(ProgressMode::Plain, &miss),
            "#3 MISS: 1 file changed: src/a (content)\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(render(ProgressMode::Json, &miss).trim()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"step": 3, "name": "[1/2] RUN make", "status": "miss",
                "reason": "1 file changed: src/a (content)"})
        );
    }

    #[test]
    fn plain_blob_lines() {
        let out = render(
            ProgressMode::Plain,
            &[
                Event::Pull {
                    reference: "reg:5000/base:1".into(),
                },
                blob(Some(2), 0, BlobState::Started(BlobKind::Download)),
                blob(Some(2), 12_300_000, BlobState::Transferring),
                blob(Some(2), 45_600_000, BlobState::Done(BlobDone::Downloaded)),
                blob(None, 0, BlobState::Started(BlobKind::Upload)),
                blob(None, 0, BlobState::Done(BlobDone::Mounted)),
                blob(None, 0, BlobState::Done(BlobDone::Cached)),
            ],
        );
        assert_eq!(
            out,
            "pulling reg:5000/base:1\n\
             #3 sha256:aaaa 0B / 45.6MB\n\
             #3 sha256:aaaa 45.6MB / 45.6MB done\n\
             sha256:aaaa 0B / 45.6MB uploading\n\
             sha256:aaaa mounted\n\
             sha256:aaaa cached\n"
        );
    }

    #[test]
    fn json_blob_objects() {
        let out = render(
            ProgressMode::Json,
            &[
                blob(Some(2), 0, BlobState::Started(BlobKind::Download)),
                blob(Some(2), 1, BlobState::Transferring),
                blob(None, 45_600_000, BlobState::Done(BlobDone::Downloaded)),
            ],
        );
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["state"], "downloading");
        assert_eq!(lines[0]["step"], 3);
        assert_eq!(lines[1]["state"], "downloaded");
        assert_eq!(lines[1]["done"], 45_600_000);
        assert!(lines[1].get("step").is_none());
    }

    /// Bars go to the terminal, not to the line output; every blob state is drawn
    /// without a panic, a blob finished without a bar included.
    #[test]
    fn tty_draws_blob_bars() {
        let out = render(
            ProgressMode::Tty,
            &[
                blob(Some(2), 0, BlobState::Started(BlobKind::Download)),
                blob(Some(2), 1_000, BlobState::Transferring),
                blob(Some(2), 45_600_000, BlobState::Done(BlobDone::Downloaded)),
                blob(None, 0, BlobState::Done(BlobDone::Exists)),
            ],
        );
        assert_eq!(out, "");
    }

    #[test]
    fn quiet_shows_no_blob() {
        let out = render(
            ProgressMode::Quiet,
            &[blob(None, 0, BlobState::Started(BlobKind::Download))],
        );
        assert_eq!(out, "");
    }
}
