//! kiln's solver: runs a build graph (`kiln_ops`) on a thread pool against a cache.
//!
//! It knows nothing about Dockerfiles, the store or the sandbox: a [`Worker`] executes
//! ops, loads and saves results, and says what an op reads beyond its definition. Each
//! vertex runs once its inputs are done; its cache key is [`cache_key`]`(definition
//! digest, input keys, content key)`, where the content key is whatever the worker says
//! the op's result depends on beyond its definition (file checksums for COPY, ChainIDs
//! for images: the builder's `cachekey` module forms those). A vertex whose key is in
//! the cache is loaded instead of run. Independent vertices run at the same time; the
//! first failure stops the scheduling of new work and is returned. Progress goes to a
//! [`Reporter`] as [`Event`]s, which only the command line draws.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kiln_oci::Digest;
use kiln_oci::digest::sha256_digest;
use kiln_oci::transfer::{BlobDone, BlobKind};
use kiln_ops::{BuildGraph, Vertex, VertexId};

/// A vertex's cache key: `sha256` over its definition digest, its inputs' keys in order
/// and its content key (what the worker says it reads beyond its definition).
pub fn cache_key(definition: &Digest, inputs: &[Digest], content: Option<&str>) -> Digest {
    let mut buf = String::with_capacity(80 * (inputs.len() + 2));
    buf.push_str("kiln.v1\0");
    buf.push_str(definition.as_str());
    for k in inputs {
        buf.push('\0');
        buf.push_str(k.as_str());
    }
    buf.push_str("\0content\0");
    buf.push_str(content.unwrap_or(""));
    sha256_digest(buf.as_bytes())
}

/// What a worker does for the solver.
pub trait Worker: Sync {
    /// The result of a vertex (for example a chain of layers).
    type Output: Clone + Send + Sync;
    /// Why an op failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The part of the cache key the definition does not show (may read the inputs).
    fn content_key(
        &self,
        id: VertexId,
        vertex: &Vertex,
        inputs: &[Self::Output],
    ) -> Result<Option<String>, Self::Error>;

    /// Loads a cached result.
    fn load(&self, key: &Digest, vertex: &Vertex) -> Result<Option<Self::Output>, Self::Error>;

    /// Runs the op.
    fn execute(
        &self,
        id: VertexId,
        vertex: &Vertex,
        inputs: &[Self::Output],
        cancel: &AtomicBool,
    ) -> Result<Self::Output, Self::Error>;

    /// Records a result under its key.
    fn save(&self, key: &Digest, vertex: &Vertex, output: &Self::Output)
    -> Result<(), Self::Error>;

    /// Told that a vertex missed the cache (or `--no-cache` ignores it) just before it
    /// runs: where a worker explains why. Its inputs are done by then.
    fn missed(&self, _id: VertexId, _vertex: &Vertex, _key: &Digest) {}
}

/// Progress events, in the order they happen for each vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The vertex started (its key is being computed).
    Started(VertexId),
    /// Found in the cache.
    Cached {
        /// Which.
        id: VertexId,
        /// Its cache key.
        key: Digest,
    },
    /// Executed.
    Done {
        /// Which.
        id: VertexId,
        /// Its cache key.
        key: Digest,
        /// How long it took.
        duration: Duration,
    },
    /// Why a vertex missed the cache (sent by the worker before it runs the vertex).
    Miss {
        /// Which.
        id: VertexId,
        /// What differed, in words (`src/main.py changed`).
        reason: String,
    },
    /// A line of output of a running step.
    Log {
        /// Which.
        id: VertexId,
        /// The line, without its newline.
        line: String,
    },
    /// Failed.
    Failed {
        /// Which.
        id: VertexId,
        /// Why.
        message: String,
    },
    /// An image is being resolved in a registry (its manifest and config fetched).
    Pull {
        /// The reference as written.
        reference: String,
    },
    /// The lookup a [`Event::Pull`] announced ended (resolved or failed): its span ends.
    Resolved {
        /// The reference as written.
        reference: String,
    },
    /// A blob moving between a registry and the store (a pull, a lazy layer, a push).
    Blob {
        /// The vertex that needed it; none for `kiln pull`/`push` and `FROM` resolution.
        vertex: Option<VertexId>,
        /// The blob's digest.
        digest: String,
        /// Bytes done so far.
        done: u64,
        /// The blob's size.
        total: u64,
        /// Where it stands.
        state: BlobState,
    },
}

/// Where a blob transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    /// Started: a download or an upload.
    Started(BlobKind),
    /// Bytes moved (`done` of `total`).
    Transferring,
    /// Finished, and how.
    Done(BlobDone),
}

/// Receives progress events; implemented by the CLI's progress displays.
pub trait Reporter: Sync {
    /// Called from worker threads as things happen.
    fn event(&self, event: &Event);

    /// An event that happened at `at` and is told only now (the blob events of a layer
    /// fetched ahead, told when a step asks for the layer): a timeline places it at `at`.
    fn event_at(&self, event: &Event, at: std::time::Instant) {
        let _ = at;
        self.event(event);
    }
}

/// A reporter that ignores everything.
pub struct NoReporter;

impl Reporter for NoReporter {
    fn event(&self, _: &Event) {}
}

/// The outcome of one vertex.
#[derive(Debug, Clone)]
pub struct Solved<O> {
    /// The result.
    pub output: O,
    /// The cache key.
    pub key: Digest,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Time spent (key, load or execute).
    pub duration: Duration,
}

/// The outcome of every vertex of a graph.
pub type Solution<O> = HashMap<VertexId, Solved<O>>;

/// Why a vertex did not finish.
#[derive(Debug, thiserror::Error)]
pub enum StepError<E> {
    /// The build was cancelled or another vertex failed first.
    #[error("cancelled")]
    Cancelled,
    /// The worker failed.
    #[error(transparent)]
    Worker(E),
}

/// A failed solve: which vertex and why.
#[derive(Debug)]
pub struct SolveError<E> {
    /// The vertex that failed.
    pub vertex: VertexId,
    /// The error.
    pub error: StepError<E>,
}

/// An error with its causes on one line, `outer: inner: ...`: what the binary prints
/// after `error: `, and what [`Event::Failed`] carries.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Solver options.
#[derive(Debug, Clone, Copy, Default)]
pub struct SolveOptions {
    /// Ignore cached results (results are still recorded).
    pub no_cache: bool,
}

/// Solves every vertex of `graph` and returns the results by vertex.
pub fn solve<W: Worker>(
    graph: &BuildGraph,
    worker: &W,
    reporter: &dyn Reporter,
    opts: SolveOptions,
    cancel: &AtomicBool,
) -> Result<Solution<W::Output>, SolveError<W::Error>> {
    let order = graph.topo_order();
    let mut waiting: HashMap<VertexId, usize> = order
        .iter()
        .map(|id| {
            let mut inputs = graph.vertex(*id).inputs.clone();
            inputs.sort_unstable();
            inputs.dedup();
            (*id, inputs.len())
        })
        .collect();
    let results: Mutex<HashMap<VertexId, Solved<W::Output>>> = Mutex::new(HashMap::new());
    let failed = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(VertexId, Result<(), StepError<W::Error>>)>();
    let mut first_error: Option<SolveError<W::Error>> = None;

    rayon::in_place_scope(|scope| {
        let mut running = 0usize;
        let spawn = |id: VertexId, running: &mut usize| {
            *running += 1;
            let tx = tx.clone();
            let results = &results;
            let failed = failed.clone();
            scope.spawn(move |_| {
                let r = if failed.load(Ordering::SeqCst) || cancel.load(Ordering::SeqCst) {
                    Err(StepError::Cancelled)
                } else {
                    run_one(graph, worker, reporter, opts, cancel, id, results)
                        .map_err(StepError::Worker)
                };
                let _ = tx.send((id, r));
            });
        };
        for id in &order {
            if waiting[id] == 0 {
                spawn(*id, &mut running);
            }
        }
        while running > 0 {
            let (id, r) = rx.recv().expect("workers hold a sender");
            running -= 1;
            match r {
                Ok(()) => {
                    if failed.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut deps = graph.dependents(id);
                    deps.sort_unstable();
                    deps.dedup();
                    for d in deps {
                        let w = waiting.get_mut(&d).expect("known vertex");
                        *w -= 1;
                        if *w == 0 {
                            spawn(d, &mut running);
                        }
                    }
                }
                Err(error) => {
                    if !failed.swap(true, Ordering::SeqCst) {
                        reporter.event(&Event::Failed {
                            id,
                            message: error_chain(&error),
                        });
                        first_error = Some(SolveError { vertex: id, error });
                    }
                }
            }
        }
    });
    match first_error {
        Some(e) => Err(e),
        None => Ok(results.into_inner().expect("no poisoned lock")),
    }
}

fn run_one<W: Worker>(
    graph: &BuildGraph,
    worker: &W,
    reporter: &dyn Reporter,
    opts: SolveOptions,
    cancel: &AtomicBool,
    id: VertexId,
    results: &Mutex<HashMap<VertexId, Solved<W::Output>>>,
) -> Result<(), W::Error> {
    let start = Instant::now();
    let vertex = graph.vertex(id);
    reporter.event(&Event::Started(id));
    let (inputs, input_keys): (Vec<W::Output>, Vec<Digest>) = {
        let r = results.lock().expect("no poisoned lock");
        vertex
            .inputs
            .iter()
            .map(|i| (r[i].output.clone(), r[i].key.clone()))
            .unzip()
    };
    let content = worker.content_key(id, vertex, &inputs)?;
    let key = cache_key(&vertex.digest, &input_keys, content.as_deref());
    if !opts.no_cache {
        if let Some(output) = worker.load(&key, vertex)? {
            reporter.event(&Event::Cached {
                id,
                key: key.clone(),
            });
            results.lock().expect("no poisoned lock").insert(
                id,
                Solved {
                    output,
                    key,
                    cached: true,
                    duration: start.elapsed(),
                },
            );
            return Ok(());
        }
    }
    worker.missed(id, vertex, &key);
    let output = worker.execute(id, vertex, &inputs, cancel)?;
    worker.save(&key, vertex, &output)?;
    let duration = start.elapsed();
    reporter.event(&Event::Done {
        id,
        key: key.clone(),
        duration,
    });
    results.lock().expect("no poisoned lock").insert(
        id,
        Solved {
            output,
            key,
            cached: false,
            duration,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ops::{ExecOp, Network, Op};
    use std::sync::Condvar;
    use std::sync::atomic::AtomicUsize;

    /// A worker over fake ops that counts executions and cache hits, as BuildKit's
    /// solver tests do.
    #[derive(Default)]
    struct Counting {
        executed: Mutex<Vec<String>>,
        cache: Mutex<HashMap<Digest, String>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
        fail_on: Option<String>,
        content: Mutex<HashMap<String, String>>,
        together: Option<Rendezvous>,
    }

    /// Vertices that must all be running at once before any of them finishes: the
    /// proof that the solver runs them in parallel, with no sleep hoping they overlap.
    struct Rendezvous {
        names: Vec<&'static str>,
        arrived: Mutex<usize>,
        all_here: Condvar,
    }

    impl Rendezvous {
        fn of(names: &[&'static str]) -> Rendezvous {
            Rendezvous {
                names: names.to_vec(),
                arrived: Mutex::new(0),
                all_here: Condvar::new(),
            }
        }

        /// Waits, if `name` is one of them, until all of them are running. A solver
        /// that ran them one at a time would never let the others arrive: give up after
        /// a while (the test then fails on `max_running`) rather than hang.
        fn wait(&self, name: &str) {
            if !self.names.contains(&name) {
                return;
            }
            let mut arrived = self.arrived.lock().unwrap();
            *arrived += 1;
            self.all_here.notify_all();
            let _ = self
                .all_here
                .wait_timeout_while(arrived, Duration::from_secs(10), |n| *n < self.names.len())
                .unwrap();
        }
    }

    fn name(v: &Vertex) -> String {
        match &v.op {
            Op::Exec(e) => e.args.join(" "),
            _ => "other".into(),
        }
    }

    /// The fake worker's failure.
    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    impl Worker for Counting {
        type Output = String;
        type Error = Boom;
        fn content_key(
            &self,
            _: VertexId,
            v: &Vertex,
            _: &[String],
        ) -> Result<Option<String>, Boom> {
            Ok(self.content.lock().unwrap().get(&name(v)).cloned())
        }
        fn load(&self, key: &Digest, _: &Vertex) -> Result<Option<String>, Boom> {
            Ok(self.cache.lock().unwrap().get(key).cloned())
        }
        fn execute(
            &self,
            _: VertexId,
            v: &Vertex,
            inputs: &[String],
            _: &AtomicBool,
        ) -> Result<String, Boom> {
            let n = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(n, Ordering::SeqCst);
            if let Some(r) = &self.together {
                r.wait(&name(v));
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.fail_on.as_deref() == Some(name(v).as_str()) {
                return Err(Boom);
            }
            self.executed.lock().unwrap().push(name(v));
            Ok(format!("{}({})", name(v), inputs.join(",")))
        }
        fn save(&self, key: &Digest, _: &Vertex, out: &String) -> Result<(), Boom> {
            self.cache.lock().unwrap().insert(key.clone(), out.clone());
            Ok(())
        }
    }

    fn exec(args: &str) -> Op {
        Op::Exec(ExecOp {
            args: vec![args.to_string()],
            env: vec![],
            proxy_env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: Network::Host,
            extra_hosts: vec![],
            shm_size: None,
            platform: None,
            insecure: false,
            mounts: vec![],
        })
    }

    /// a -> b, a -> c, (b, c) -> d
    fn diamond() -> (BuildGraph, [VertexId; 4]) {
        let mut g = BuildGraph::default();
        let a = g.add(exec("a"), vec![], None);
        let b = g.add(exec("b"), vec![a], None);
        let c = g.add(exec("c"), vec![a], None);
        let d = g.add(exec("d"), vec![b, c], None);
        (g, [a, b, c, d])
    }

    fn run(
        g: &BuildGraph,
        w: &Counting,
        no_cache: bool,
    ) -> Result<HashMap<VertexId, Solved<String>>, SolveError<Boom>> {
        // A pool of its own: the global one is shared with the tests running alongside,
        // which could keep b and c from running at the same time.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        pool.install(|| {
            solve(
                g,
                w,
                &NoReporter,
                SolveOptions { no_cache },
                &AtomicBool::new(false),
            )
        })
    }

    #[test]
    fn cache_key_covers_definition_inputs_and_content() {
        let [x, y, a, b] = [b"x", b"y", b"a", b"b"].map(|s| sha256_digest(s));
        let k = cache_key(&x, std::slice::from_ref(&a), None);
        assert_eq!(k, cache_key(&x, std::slice::from_ref(&a), None));
        assert_ne!(k, cache_key(&y, std::slice::from_ref(&a), None));
        assert_ne!(k, cache_key(&x, &[b], None));
        assert_ne!(k, cache_key(&x, &[a], Some("c")));
        assert_ne!(k, cache_key(&x, &[], None));
        // The formula over the digests' strings: keys recorded before they were typed
        // still hit.
        let expected = sha256_digest(format!("kiln.v1\0{x}\0content\0").as_bytes());
        assert_eq!(cache_key(&x, &[], None), expected);
    }

    #[test]
    fn runs_each_vertex_once_and_in_parallel() {
        let (g, [_, _, _, d]) = diamond();
        let w = Counting {
            together: Some(Rendezvous::of(&["b", "c"])),
            ..Default::default()
        };
        let r = run(&g, &w, false).unwrap();
        let mut ex = w.executed.lock().unwrap().clone();
        ex.sort();
        assert_eq!(ex, ["a", "b", "c", "d"]);
        assert_eq!(r[&d].output, "d(b(a()),c(a()))");
        assert_eq!(
            w.max_running.load(Ordering::SeqCst),
            2,
            "b and c run together"
        );
    }

    #[test]
    fn second_solve_is_all_cached_and_no_cache_reruns() {
        let (g, _) = diamond();
        let w = Counting::default();
        run(&g, &w, false).unwrap();
        w.executed.lock().unwrap().clear();
        let r = run(&g, &w, false).unwrap();
        assert!(w.executed.lock().unwrap().is_empty());
        assert!(r.values().all(|s| s.cached));
        let r = run(&g, &w, true).unwrap();
        assert_eq!(w.executed.lock().unwrap().len(), 4);
        assert!(r.values().all(|s| !s.cached));
    }

    #[test]
    fn content_change_invalidates_only_dependents() {
        let (g, _) = diamond();
        let w = Counting::default();
        run(&g, &w, false).unwrap();
        w.executed.lock().unwrap().clear();
        w.content
            .lock()
            .unwrap()
            .insert("b".into(), "changed".into());
        run(&g, &w, false).unwrap();
        let mut ex = w.executed.lock().unwrap().clone();
        ex.sort();
        assert_eq!(ex, ["b", "d"]);
    }

    #[test]
    fn failure_names_the_vertex_and_stops_dependents() {
        let (g, [_, b, _, _]) = diamond();
        let w = Counting {
            fail_on: Some("b".into()),
            ..Default::default()
        };
        let err = run(&g, &w, false).unwrap_err();
        assert_eq!(err.vertex, b);
        assert!(matches!(err.error, StepError::Worker(Boom)));
        assert!(!w.executed.lock().unwrap().contains(&"d".to_string()));
    }

    /// What the binary prints after `error: ` and what `Event::Failed` carries: every
    /// cause, outermost first, as the context chains of the untyped errors did.
    #[test]
    fn error_chain_joins_the_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("stage a, Dockerfile:2: RUN x")]
        struct Outer(#[source] StepError<std::io::Error>);
        let e = Outer(StepError::Worker(std::io::Error::other("disk on fire")));
        assert_eq!(
            error_chain(&e),
            "stage a, Dockerfile:2: RUN x: disk on fire"
        );
        assert_eq!(error_chain(&StepError::<Boom>::Cancelled), "cancelled");
    }

    /// The failure event carries the whole chain of the worker's error.
    #[test]
    fn failed_event_carries_the_error_chain() {
        struct Events(Mutex<Vec<Event>>);
        impl Reporter for Events {
            fn event(&self, e: &Event) {
                self.0.lock().unwrap().push(e.clone());
            }
        }
        let (g, [_, b, _, _]) = diamond();
        let w = Counting {
            fail_on: Some("b".into()),
            ..Default::default()
        };
        let events = Events(Mutex::new(Vec::new()));
        solve(
            &g,
            &w,
            &events,
            SolveOptions::default(),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        let failed: Vec<Event> = events
            .0
            .into_inner()
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e, Event::Failed { .. }))
            .collect();
        assert_eq!(
            failed,
            [Event::Failed {
                id: b,
                message: "boom".into()
            }]
        );
    }
}
