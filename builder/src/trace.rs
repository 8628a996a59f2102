//! `kiln build --trace FILE.json`: the build as a timeline, in Chrome's trace event format
//! (`{"traceEvents": [...]}`), which Perfetto and `chrome://tracing` open.
//!
//! Every span is a complete event (`"ph": "X"`, `ts` and `dur` in microseconds since the
//! build started) on the thread that did the work (`tid`, the kernel's thread id): one per
//! build step, named as the progress display names it, with its cache state in `args`
//! (`hit`, or `miss` and the miss kind the explainer found); one per blob downloaded or
//! uploaded, one per registry lookup of a base image (`resolve REF`), and one per export,
//! push and the image assembly. Independent stages run on different threads at once, so
//! their spans overlap in the viewer.
//!
//! [`Trace`] is a [`Reporter`] that sits in front of the progress display: it keeps the
//! start of each open span and forwards every event.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use kiln_oci::transfer::{BlobDone, BlobKind};
use kiln_ops::VertexId;
use kiln_solver::{BlobState, Event, Reporter};
use serde_json::{Value, json};

use crate::progress::StepLabel;

/// A span still open: where and when it began.
#[derive(Debug, Clone, Copy)]
struct Open {
    ts: u64,
    tid: i32,
}

/// What ended a step's span.
#[derive(Debug, Clone)]
enum StepEnd {
    Hit,
    Built,
    Failed(String),
}

/// A finished step, named and given its miss kind when the trace is written.
#[derive(Debug, Clone)]
struct StepSpan {
    id: VertexId,
    open: Open,
    dur: u64,
    end: StepEnd,
}

/// Records a build's timeline (see the module docs) and forwards every event.
pub struct Trace {
    started: Instant,
    forward: Arc<dyn Reporter + Send + Sync>,
    labels: RwLock<HashMap<VertexId, StepLabel>>,
    steps_open: Mutex<HashMap<VertexId, Open>>,
    blobs_open: Mutex<HashMap<String, (Open, BlobKind)>>,
    /// Registry lookups of base images, by reference.
    resolves_open: Mutex<HashMap<String, Open>>,
    steps: Mutex<Vec<StepSpan>>,
    /// Finished spans other than steps, and instant events.
    other: Mutex<Vec<Value>>,
}

/// The kernel's id of the calling thread (what `tid` means in a trace).
fn tid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

impl Trace {
    /// A trace starting now, forwarding to `forward`.
    pub fn new(forward: Arc<dyn Reporter + Send + Sync>) -> Trace {
        Trace {
            started: Instant::now(),
            forward,
            labels: RwLock::default(),
            steps_open: Mutex::default(),
            blobs_open: Mutex::default(),
            resolves_open: Mutex::default(),
            steps: Mutex::default(),
            other: Mutex::default(),
        }
    }

    /// Names the steps (as the progress display does).
    pub fn set_labels(&self, labels: HashMap<VertexId, StepLabel>) {
        *self.labels.write().expect("trace lock") = labels;
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Runs `f` as a span named `name` of category `cat` on this thread.
    pub fn span<T>(&self, name: &str, cat: &str, f: impl FnOnce() -> T) -> T {
        let open = Open {
            ts: self.now(),
            tid: tid(),
        };
        let r = f();
        let dur = self.now() - open.ts;
        self.other.lock().expect("trace lock").push(json!({
            "name": name, "cat": cat, "ph": "X", "ts": open.ts, "dur": dur,
            "pid": std::process::id(), "tid": open.tid,
        }));
        r
    }

    /// The trace as Chrome's JSON object; `miss_kind` gives a built step's miss kind
    /// (`files`, `instruction`, ...; see `kiln_cache::Miss`).
    pub fn to_json(&self, miss_kind: &dyn Fn(VertexId) -> Option<String>) -> Value {
        let pid = std::process::id();
        let labels = self.labels.read().expect("trace lock");
        let mut events = vec![
            json!({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                   "args": {"name": "kiln build"}}),
        ];
        let now = self.now();
        let steps = self.steps.lock().expect("trace lock").clone();
        // Steps still open (a build that failed or was interrupted): cut at the end.
        let unfinished: Vec<StepSpan> = self
            .steps_open
            .lock()
            .expect("trace lock")
            .iter()
            .map(|(id, open)| StepSpan {
                id: *id,
                open: *open,
                dur: now - open.ts,
                end: StepEnd::Failed("unfinished".into()),
            })
            .collect();
        for s in steps.into_iter().chain(unfinished) {
            let (name, number) = match labels.get(&s.id) {
                Some(l) => (l.name.clone(), l.number),
                None => (format!("vertex {}", s.id.index()), s.id.index() + 1),
            };
            let args = match &s.end {
                StepEnd::Hit => json!({"step": number, "cache": "hit"}),
                StepEnd::Built => {
                    let mut a = json!({"step": number, "cache": "miss"});
                    if let Some(k) = miss_kind(s.id) {
                        a["miss"] = k.into();
                    }
                    a
                }
                StepEnd::Failed(e) => json!({"step": number, "cache": "miss", "error": e}),
            };
            events.push(json!({
                "name": name, "cat": "step", "ph": "X", "ts": s.open.ts, "dur": s.dur,
                "pid": pid, "tid": s.open.tid, "args": args,
            }));
        }
        events.extend(self.other.lock().expect("trace lock").iter().cloned());
        json!({ "traceEvents": events, "displayTimeUnit": "ms" })
    }

    /// Writes the trace to `path` (a temporary file beside it, renamed into place).
    pub fn write(
        &self,
        path: &Path,
        miss_kind: &dyn Fn(VertexId) -> Option<String>,
    ) -> std::io::Result<()> {
        let json = serde_json::to_vec(&self.to_json(miss_kind))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&json)?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    fn record(&self, event: &Event, now: u64) {
        match event {
            Event::Started(id) => {
                let open = Open {
                    ts: now,
                    tid: tid(),
                };
                self.steps_open
                    .lock()
                    .expect("trace lock")
                    .insert(*id, open);
            }
            Event::Cached { id, .. } | Event::Done { id, .. } | Event::Failed { id, .. } => {
                let Some(open) = self.steps_open.lock().expect("trace lock").remove(id) else {
                    return;
                };
                let end = match event {
                    Event::Cached { .. } => StepEnd::Hit,
                    Event::Failed { message, .. } => StepEnd::Failed(message.clone()),
                    _ => StepEnd::Built,
                };
                self.steps.lock().expect("trace lock").push(StepSpan {
                    id: *id,
                    open,
                    dur: now - open.ts,
                    end,
                });
            }
            Event::Pull { reference } => {
                let open = Open {
                    ts: now,
                    tid: tid(),
                };
                self.resolves_open
                    .lock()
                    .expect("trace lock")
                    .insert(reference.clone(), open);
            }
            Event::Resolved { reference } => {
                let opened = self
                    .resolves_open
                    .lock()
                    .expect("trace lock")
                    .remove(reference);
                if let Some(open) = opened {
                    self.other.lock().expect("trace lock").push(json!({
                        "name": format!("resolve {reference}"), "cat": "pull", "ph": "X",
                        "ts": open.ts, "dur": now - open.ts, "pid": std::process::id(),
                        "tid": open.tid,
                    }));
                }
            }
            Event::Blob {
                vertex,
                digest,
                total,
                state,
                ..
            } => match state {
                BlobState::Started(kind) => {
                    let open = Open {
                        ts: now,
                        tid: tid(),
                    };
                    self.blobs_open
                        .lock()
                        .expect("trace lock")
                        .insert(digest.clone(), (open, *kind));
                }
                BlobState::Transferring => {}
                BlobState::Done(how) => {
                    let opened = self.blobs_open.lock().expect("trace lock").remove(digest);
                    let (open, kind) = match opened {
                        Some(o) => o,
                        // Nothing moved (it existed, was mounted or cached): an instant.
                        None => (
                            Open {
                                ts: now,
                                tid: tid(),
                            },
                            blob_kind(*how),
                        ),
                    };
                    let cat = match kind {
                        BlobKind::Download => "pull",
                        BlobKind::Upload => "push",
                    };
                    let mut args = json!({"size": total, "result": how.as_str()});
                    if let Some(v) = vertex {
                        args["step"] = self
                            .labels
                            .read()
                            .expect("trace lock")
                            .get(v)
                            .map_or(v.index() + 1, |l| l.number)
                            .into();
                    }
                    self.other.lock().expect("trace lock").push(json!({
                        "name": format!("{cat} {digest}"), "cat": cat, "ph": "X",
                        "ts": open.ts, "dur": now - open.ts, "pid": std::process::id(),
                        "tid": open.tid, "args": args,
                    }));
                }
            },
            Event::Log { .. } | Event::Miss { .. } => {}
        }
    }
}

/// Which way a blob that needed no transfer was going.
fn blob_kind(how: BlobDone) -> BlobKind {
    match how {
        BlobDone::Downloaded | BlobDone::Cached => BlobKind::Download,
        _ => BlobKind::Upload,
    }
}

impl Reporter for Trace {
    fn event(&self, event: &Event) {
        self.record(event, self.now());
        self.forward.event(event);
    }

    fn event_at(&self, event: &Event, at: Instant) {
        let ts = at.saturating_duration_since(self.started).as_micros() as u64;
        self.record(event, ts);
        self.forward.event_at(event, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::NoReporter;

    fn label(n: usize, name: &str) -> StepLabel {
        StepLabel {
            number: n,
            name: name.into(),
        }
    }

    /// Steps become complete events on the thread that ran them, named by their labels,
    /// with their cache state; two steps on two threads at once overlap.
    #[test]
    fn steps_are_complete_events_with_cache_state() {
        let t = Trace::new(Arc::new(NoReporter));
        let (a, b, c) = (VertexId::new(0), VertexId::new(1), VertexId::new(2));
        t.set_labels(HashMap::from([
            (a, label(1, "[one 1/1] RUN sleep 1")),
            (b, label(2, "[two 1/1] RUN sleep 1")),
            (c, label(3, "[final 1/1] COPY --from=one /a /a")),
        ]));
        let key = kiln_cache::sha256_of(b"k");
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for id in [a, b] {
                let (t, key, barrier) = (&t, key.clone(), &barrier);
                s.spawn(move || {
                    t.event(&Event::Started(id));
                    barrier.wait();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    t.event(&Event::Done {
                        id,
                        key,
                        duration: Default::default(),
                    });
                });
            }
        });
        t.event(&Event::Started(c));
        t.event(&Event::Cached { id: c, key });
        let v = t.to_json(&|id| (id == a).then(|| "files".to_string()));
        let events = v["traceEvents"].as_array().unwrap();
        let step = |name: &str| {
            events
                .iter()
                .find(|e| e["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {v}"))
                .clone()
        };
        let (ea, eb, ec) = (
            step("[one 1/1] RUN sleep 1"),
            step("[two 1/1] RUN sleep 1"),
            step("[final 1/1] COPY --from=one /a /a"),
        );
        for e in [&ea, &eb, &ec] {
            assert_eq!(e["ph"], "X");
            assert_eq!(e["pid"], std::process::id());
        }
        assert_ne!(ea["tid"], eb["tid"]);
        let span = |e: &Value| {
            let ts = e["ts"].as_u64().unwrap();
            (ts, ts + e["dur"].as_u64().unwrap())
        };
        let ((a0, a1), (b0, b1)) = (span(&ea), span(&eb));
        assert!(a0 < b1 && b0 < a1, "{ea} {eb}");
        assert_eq!(
            ea["args"],
            json!({"step": 1, "cache": "miss", "miss": "files"})
        );
        assert_eq!(eb["args"], json!({"step": 2, "cache": "miss"}));
        assert_eq!(ec["args"], json!({"step": 3, "cache": "hit"}));
        assert_eq!(ec["tid"], tid());
    }

    #[test]
    fn blobs_and_spans() {
        let t = Trace::new(Arc::new(NoReporter));
        let blob = |state| Event::Blob {
            vertex: None,
            digest: "sha256:aa".into(),
            done: 0,
            total: 10,
            state,
        };
        t.event(&blob(BlobState::Started(BlobKind::Upload)));
        t.event(&blob(BlobState::Done(BlobDone::Uploaded)));
        let r = t.span("export type=oci", "export", || 7);
        assert_eq!(r, 7);
        let v = t.to_json(&|_| None);
        let names: Vec<&str> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["push sha256:aa", "export type=oci"]);
    }
}
