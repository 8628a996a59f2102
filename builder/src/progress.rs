//! Progress displays for the solver's events: BuildKit-like plain lines (CI), one JSON
//! object per line, or indicatif lines on a terminal.

use std::collections::{HashMap, VecDeque};
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
    bars: Option<(MultiProgress, Mutex<HashMap<VertexId, StepBars>>)>,
    /// Tty bars of blobs being transferred, by digest.
    blob_bars: Mutex<HashMap<String, ProgressBar>>,
}

/// How many of a running step's last output lines a terminal shows under it
/// (BuildKit's 6).
pub const TAIL_LINES: usize = 6;

/// `line` made to fit one terminal row of `width` columns: escape sequences and
/// control characters removed (a `\r`-redrawn progress line keeps its last state), tabs
/// as spaces, then cut to `width` display columns (wide characters count two) with `…`
/// marking the cut. A terminal never wraps the result, so a redraw never scrolls.
pub fn fit_line(line: &str, width: usize) -> String {
    let line = line.rsplit('\r').find(|p| !p.is_empty()).unwrap_or("");
    let plain = console::strip_ansi_codes(line);
    let plain: String = plain
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    console::truncate_str(&plain, width, "…").into_owned()
}

/// The last [`TAIL_LINES`] lines of a step's output.
#[derive(Debug, Default)]
pub struct LogTail {
    lines: VecDeque<String>,
}

impl LogTail {
    /// Adds a line (or several, split at newlines), dropping the oldest beyond
    /// [`TAIL_LINES`].
    pub fn push(&mut self, text: &str) {
        for l in text.split('\n') {
            self.lines.push_back(l.to_string());
            if self.lines.len() > TAIL_LINES {
                self.lines.pop_front();
            }
        }
    }

    /// The lines kept, oldest first, each fitted to `width` columns.
    pub fn render(&self, width: usize) -> Vec<String> {
        self.lines.iter().map(|l| fit_line(l, width)).collect()
    }
}

/// A running step on a terminal: its spinner line and the rows of its output's tail.
struct StepBars {
    bar: ProgressBar,
    tail: LogTail,
    tail_bars: Vec<ProgressBar>,
}

/// The terminal's width in columns (80 when it cannot be told).
fn term_width() -> usize {
    match console::Term::stderr().size_checked() {
        Some((_, cols)) if cols > 0 => usize::from(cols),
        _ => 80,
    }
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
                        let _ =
                            multi.println(fit_line(&format!("pulling {reference}"), term_width()));
                    }
                    Event::Blob { .. } | Event::Resolved { .. } => {}
                    Event::Log { id, line } => {
                        let width = term_width();
                        match bars.get_mut(id) {
                            // BuildKit's display: the step's last lines, dimmed, under it.
                            Some(step) => {
                                step.tail.push(line);
                                let rows = step.tail.render(width.saturating_sub(2));
                                while step.tail_bars.len() < rows.len() {
                                    let after = step.tail_bars.last().unwrap_or(&step.bar);
                                    let row = multi.insert_after(after, ProgressBar::new_spinner());
                                    row.set_style(
                                        ProgressStyle::with_template("  {wide_msg:.dim}")
                                            .expect("static template"),
                                    );
                                    step.tail_bars.push(row);
                                }
                                for (row, text) in step.tail_bars.iter().zip(rows) {
                                    row.set_message(text);
                                }
                            }
                            None => {
                                let number = self.label(*id).number;
                                let _ =
                                    multi.println(fit_line(&format!("#{number} {line}"), width));
                            }
                        }
                    }
                    Event::Miss { id, reason } => {
                        let l = self.label(*id);
                        let _ = multi.println(fit_line(
                            &format!("#{} MISS: {reason}", l.number),
                            term_width(),
                        ));
                        if let Some(step) = bars.get(id) {
                            step.bar
                                .set_message(format!("#{} {} (MISS: {reason})", l.number, l.name));
                        }
                    }
                    Event::Started(id) => {
                        let l = self.label(*id);
                        let bar = multi.add(ProgressBar::new_spinner());
                        // `wide_msg`: the row is cut to the terminal's width, never wrapped.
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {wide_msg} {elapsed}")
                                .expect("static template"),
                        );
                        bar.set_message(format!("#{} {}", l.number, l.name));
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bars.insert(
                            *id,
                            StepBars {
                                bar,
                                tail: LogTail::default(),
                                tail_bars: Vec::new(),
                            },
                        );
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
                        if let Some(step) = bars.remove(id) {
                            let failed = matches!(event, Event::Failed { .. });
                            for row in step.tail_bars {
                                // A failed step's last lines stay; the others go, as
                                // BuildKit's do.
                                if failed {
                                    row.finish();
                                } else {
                                    row.finish_and_clear();
                                    multi.remove(&row);
                                }
                            }
                            step.bar.set_style(
                                ProgressStyle::with_template("{wide_msg} {prefix}")
                                    .expect("static template"),
                            );
                            step.bar.set_prefix(status);
                            step.bar
                                .finish_with_message(format!("=> #{} {}", l.number, l.name));
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

    /// Regression (issue 15): a long RUN output line was drawn whole and wrapped over
    /// several rows on each redraw. Lines are cut to the width, by display columns.
    #[test]
    fn lines_are_cut_to_the_terminal_width() {
        assert_eq!(fit_line("short", 10), "short");
        assert_eq!(fit_line("0123456789abcdef", 10), "012345678…");
        assert_eq!(
            console::measure_text_width(&fit_line(&"x".repeat(500), 80)),
            80
        );
        // Escapes do not count, and are dropped; tabs are spaces; `\r` keeps the last
        // state of a redrawn line.
        assert_eq!(fit_line("\x1b[31mred\x1b[0m\tok", 20), "red ok");
        assert_eq!(fit_line("10%\r50%\r100%\r", 20), "100%");
        // Wide characters take two columns.
        let cut = fit_line("漢字漢字漢字", 7);
        assert!(console::measure_text_width(&cut) <= 7, "{cut}");
        assert_eq!(fit_line("", 5), "");
    }

    /// The tail keeps the last six lines, fitted.
    #[test]
    fn log_tail_keeps_the_last_lines() {
        let mut t = LogTail::default();
        for i in 0..10 {
            t.push(&format!("line {i} {}", "y".repeat(100)));
        }
        t.push("a\nb");
        let rows = t.render(12);
        assert_eq!(rows.len(), TAIL_LINES);
        assert_eq!(rows[0], "line 6 yyyy…");
        assert_eq!(rows[4], "a");
        assert_eq!(rows[5], "b");
        assert!(rows.iter().all(|r| console::measure_text_width(r) <= 12));
    }

    /// On a tty, steps with output, finished, cached and failed are drawn without a
    /// panic and nothing goes to the line output.
    #[test]
    fn tty_draws_step_tails() {
        let id = VertexId::new(2);
        let mut events = vec![Event::Started(id)];
        for i in 0..9 {
            events.push(Event::Log {
                id,
                line: format!("output {i} {}", "z".repeat(300)),
            });
        }
        events.push(Event::Failed {
            id,
            message: "exit code 1".into(),
        });
        events.push(Event::Log {
            id,
            line: "late".into(),
        });
        assert_eq!(render(ProgressMode::Tty, &events), "");
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
