//! Build records and miss explanations.
//!
//! A [`Recorder`] sits between the solver and the progress display: it sees every
//! event (which steps hit, which ran, how long they took), keeps the inputs of each
//! step's cache key as the worker captured them ([`Recorder::capture`]), and at the end
//! writes a [`BuildRecord`] into the store, also for a failed or interrupted build.
//!
//! When a step misses, the worker calls [`Recorder::missed`], which finds the most
//! recent record of the same step (same definition digest, or same stage position and
//! instruction keyword) and says what differed, the first of, in this order:
//! the base image, the instruction text or flags, a build arg or env the step uses, the
//! files, a parent step that missed, a key that matched but whose result is gone, or no
//! earlier record. Old records are read only once a step misses: a no-op rebuild never
//! reads them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kiln_cache::{
    BuildRecord, BuildStatus, Digest, FileEntry, FileSet, HitSource, Miss, StepInputs, StepRecord,
    StepStatus, Store,
};
use kiln_ops::{Op, VertexId};
use kiln_solver::{Event, Reporter};

use crate::cachekey::{FileKind, TreeEntry};

/// How many changed (added, removed) files a files explanation names before it says
/// how many more there are.
pub const MAX_LISTED: usize = 5;

/// What the recorder knows of a step from the plan.
#[derive(Debug, Clone, Default)]
pub struct StepMeta {
    /// `#N` and the display name.
    pub number: usize,
    /// Display name.
    pub name: String,
    /// Stage name.
    pub stage: String,
    /// Position within the stage (1-based; 0 for internal vertices).
    pub position: usize,
    /// Dockerfile line (0 for internal vertices).
    pub line: usize,
    /// The instruction as written.
    pub instruction: String,
    /// Definition digest.
    pub definition: String,
    /// Its inputs.
    pub inputs: Vec<VertexId>,
    /// The build context: never explained, never a cause.
    pub is_context: bool,
    /// A base image: a cause of its dependents' misses only when its digest changed
    /// (resolving a base for the first time is no reason to rebuild what is on it).
    pub is_image: bool,
}

#[derive(Debug, Default)]
struct StepState {
    started: Option<Instant>,
    key: Option<String>,
    status: Option<StepStatus>,
    duration_ms: u64,
    source: Option<HitSource>,
    miss: Option<Miss>,
    /// For a miss caused by a parent: the step number the chain started at.
    chain_root: Option<usize>,
    layer: Option<String>,
}

/// Records one build and explains its misses (see the module docs).
pub struct Recorder {
    store: Store,
    forward: Arc<dyn Reporter + Send + Sync>,
    header: Mutex<BuildRecord>,
    meta: OnceLock<HashMap<VertexId, StepMeta>>,
    /// Names of the Dockerfile's ARGs and their effective values.
    args: Mutex<BTreeMap<String, String>>,
    secrets: BTreeSet<String>,
    state: Mutex<HashMap<VertexId, StepState>>,
    inputs: Mutex<HashMap<VertexId, StepInputs>>,
    /// Which build produced the cache record of a key (what `load` saw).
    hit_builds: Mutex<HashMap<String, Option<String>>>,
    /// Keys whose cache record exists but whose result is gone.
    gone: Mutex<HashSet<String>>,
    previous: OnceLock<Vec<BuildRecord>>,
    against: Option<BuildRecord>,
    /// Keys found in a `--cache-from` cache, and its name.
    remote_hits: Mutex<HashMap<String, String>>,
    /// The build records of the `--cache-from` caches: candidates after this store's.
    imported: OnceLock<Vec<BuildRecord>>,
    no_cache: bool,
    started: Instant,
    written: std::sync::atomic::AtomicBool,
    enabled: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Recorder {
    /// A recorder for the build `header` describes (its id, Dockerfile, args, ...);
    /// `enabled: false` explains misses but writes no record.
    pub fn new(
        store: Store,
        mut header: BuildRecord,
        forward: Arc<dyn Reporter + Send + Sync>,
        against: Option<BuildRecord>,
        no_cache: bool,
        secrets: BTreeSet<String>,
        enabled: bool,
    ) -> Recorder {
        header.version = kiln_cache::RECORD_VERSION;
        if header.id.is_empty() {
            header.id = kiln_cache::new_record_id();
        }
        header.started_ms = now_ms();
        Recorder {
            store,
            forward,
            header: Mutex::new(header),
            meta: OnceLock::new(),
            args: Mutex::default(),
            secrets,
            state: Mutex::default(),
            inputs: Mutex::default(),
            hit_builds: Mutex::default(),
            gone: Mutex::default(),
            previous: OnceLock::new(),
            against,
            remote_hits: Mutex::default(),
            imported: OnceLock::new(),
            no_cache,
            started: Instant::now(),
            written: Default::default(),
            enabled,
        }
    }

    /// This build's record id.
    pub fn id(&self) -> String {
        self.header.lock().expect("recorder lock").id.clone()
    }

    /// The Dockerfile's digest.
    pub fn set_dockerfile_digest(&self, digest: &Digest) {
        self.header.lock().expect("recorder lock").dockerfile_digest = digest.to_string();
    }

    /// The steps of the plan (once it is made) and the Dockerfile's ARGs with their
    /// effective values.
    pub fn set_plan(&self, meta: HashMap<VertexId, StepMeta>, args: BTreeMap<String, String>) {
        let _ = self.meta.set(meta);
        *self.args.lock().expect("recorder lock") = args;
    }

    /// The built image and each step's layer (after a successful solve).
    pub fn set_results(&self, image: &Digest, layers: HashMap<VertexId, Digest>) {
        self.header.lock().expect("recorder lock").image = Some(image.to_string());
        let mut st = self.state.lock().expect("recorder lock");
        for (id, d) in layers {
            st.entry(id).or_default().layer = Some(d.to_string());
        }
    }

    /// The key inputs of step `id`, as the worker computed them for its cache key. The
    /// build args its instruction names are added here.
    pub fn capture(&self, id: VertexId, mut inputs: StepInputs) {
        if let Some(m) = self.meta.get().and_then(|m| m.get(&id)) {
            let args = self.args.lock().expect("recorder lock");
            for (name, value) in args.iter() {
                if mentions(&m.instruction, name) {
                    inputs.args.insert(name.clone(), value.clone());
                }
            }
        }
        self.inputs
            .lock()
            .expect("recorder lock")
            .insert(id, inputs);
    }

    /// `load` found the cache record of `key`, made by build `build`.
    pub fn found(&self, key: &Digest, build: Option<String>) {
        self.hit_builds
            .lock()
            .expect("recorder lock")
            .insert(key.to_string(), build);
    }

    /// `load` found `key` in the `--cache-from` cache `reference`.
    pub fn found_remote(&self, key: &Digest, reference: &str) {
        self.remote_hits
            .lock()
            .expect("recorder lock")
            .insert(key.to_string(), reference.to_string());
    }

    /// The build records of the `--cache-from` caches (newest first): misses are
    /// explained against them after this store's own records, whatever their paths
    /// (they come from other machines).
    pub fn set_imported(&self, records: Vec<BuildRecord>) {
        let _ = self.imported.set(records);
    }

    fn is_imported(&self, r: &BuildRecord) -> bool {
        self.imported
            .get()
            .is_some_and(|i| i.iter().any(|x| std::ptr::eq(x, r)))
    }

    /// `load` found the cache record of `key` but not its result (a blob is missing).
    pub fn result_gone(&self, key: &Digest) {
        self.gone
            .lock()
            .expect("recorder lock")
            .insert(key.to_string());
    }

    /// Step `id` missed with `key`: explains why, keeps it and shows it.
    pub fn missed(&self, id: VertexId, key: &Digest) {
        let Some(meta) = self.meta.get().and_then(|m| m.get(&id)) else {
            return;
        };
        if meta.is_context {
            return;
        }
        let (miss, root) = if self.no_cache {
            (miss("no-cache", "--no-cache".into()), None)
        } else {
            self.explain(id, meta, key)
        };
        {
            let mut st = self.state.lock().expect("recorder lock");
            let s = st.entry(id).or_default();
            s.miss = Some(miss.clone());
            s.chain_root = root;
        }
        if !self.no_cache {
            self.forward.event(&Event::Miss {
                id,
                reason: miss.details,
            });
        }
    }

    /// The explanation of a miss, and the chain's first step when a parent caused it.
    fn explain(&self, id: VertexId, meta: &StepMeta, key: &Digest) -> (Miss, Option<usize>) {
        let cur = self
            .inputs
            .lock()
            .expect("recorder lock")
            .get(&id)
            .cloned()
            .unwrap_or_default();
        let records: Vec<&BuildRecord> = match &self.against {
            Some(r) => vec![r],
            None => self
                .previous()
                .iter()
                .chain(self.imported.get().into_iter().flatten())
                .collect(),
        };
        let (dockerfile, context) = {
            let h = self.header.lock().expect("recorder lock");
            (h.dockerfile.clone(), h.context.clone())
        };
        // A record from another store (`--explain-against`) is of the same Dockerfile
        // whatever its paths; in this store, only one of the same path and context is.
        let against = self.against.is_some();
        let same_file = |r: &BuildRecord| {
            against || (r.dockerfile == dockerfile && r.context == context) || self.is_imported(r)
        };
        let prev = find_previous(records.iter().copied(), meta, &same_file);
        if let Some((rec, p)) = prev {
            let arg_names: BTreeSet<String> = self
                .args
                .lock()
                .expect("recorder lock")
                .keys()
                .chain(rec.build_args.keys())
                .cloned()
                .collect();
            let load = |i: &StepInputs| -> Option<FileSet> {
                match (&i.files, &i.files_id) {
                    (Some(f), _) => Some(f.clone()),
                    (None, Some(id)) => self.store.fileset_get(id).ok().flatten(),
                    (None, None) => Some(FileSet::default()),
                }
            };
            if let Some(m) = diff_inputs(meta, &cur, p, &arg_names, &self.secrets, &load) {
                return (m, None);
            }
        }
        // Parents that missed in this build: the step each one's chain of misses
        // started at, every one (a `COPY --from` misses after its base's chain and
        // after its source stage's).
        {
            let st = self.state.lock().expect("recorder lock");
            let metas = self.meta.get().expect("plan set before solving");
            let mut roots: Vec<usize> = Vec::new();
            for i in &meta.inputs {
                let Some(pm) = metas.get(i) else { continue };
                if pm.is_context {
                    continue;
                }
                let cause = |s: &&StepState| {
                    s.miss
                        .as_ref()
                        .is_some_and(|m| !pm.is_image || m.kind == "base")
                };
                if let Some(ps) = st.get(i).filter(cause) {
                    let root = ps.chain_root.unwrap_or(pm.number);
                    if !roots.contains(&root) {
                        roots.push(root);
                    }
                }
            }
            let details = match roots.as_slice() {
                [] => None,
                [one] => Some(format!("after step #{one}")),
                [init @ .., last] => {
                    let init: Vec<String> = init.iter().map(|r| format!("#{r}")).collect();
                    Some(format!("after steps {} and #{last}", init.join(", ")))
                }
            };
            if let Some(details) = details {
                return (miss("parent", details), roots.first().copied());
            }
        }
        let key_s = key.to_string();
        if self.gone.lock().expect("recorder lock").contains(&key_s) {
            return (
                miss(
                    "gone",
                    "cache key unchanged, but its result is gone (a layer blob is missing)".into(),
                ),
                None,
            );
        }
        match prev {
            Some((rec, p)) if p.key.as_deref() == Some(key_s.as_str()) => {
                let what = if self.against.is_some() {
                    format!(
                        "cache key matches build {}, but this store does not have its result",
                        rec.id
                    )
                } else {
                    format!(
                        "cache key unchanged since build {}, but its result is gone (evicted)",
                        rec.id
                    )
                };
                (miss("gone", what), None)
            }
            Some((rec, _)) => (
                miss(
                    "other",
                    format!(
                        "cache key changed since build {} (no recorded input differs)",
                        rec.id
                    ),
                ),
                None,
            ),
            None => (
                miss(
                    "no-record",
                    match &self.against {
                        Some(r) => format!("no such step in build {}", r.id),
                        None => "no earlier build of this step in this store".into(),
                    },
                ),
                None,
            ),
        }
    }

    /// The earlier records of this store, newest first (read once, at the first miss).
    fn previous(&self) -> &[BuildRecord] {
        self.previous.get_or_init(|| {
            let me = self.id();
            let h = self.header.lock().expect("recorder lock");
            let mut all: Vec<BuildRecord> = self
                .store
                .records_newest_first()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.id != me)
                .collect();
            // The same Dockerfile and context first, then the rest (matched only by
            // definition digest, see `find_previous`).
            all.sort_by_key(|r| !(r.dockerfile == h.dockerfile && r.context == h.context));
            all
        })
    }

    /// Writes the record (once; later calls do nothing) and trims old ones.
    pub fn finish(&self, status: BuildStatus, error: Option<String>) {
        if self.written.swap(true, std::sync::atomic::Ordering::SeqCst) || !self.enabled {
            return;
        }
        let record = self.record(status, error);
        // A build's result never depends on its record: a failure here is a warning.
        if let Err(e) = self.store.record_put(&record) {
            eprintln!("warning: writing build record {}: {e}", record.id);
            return;
        }
        if let Ok(limits) = self.store.record_limits() {
            let _ = self.store.records_trim(limits, SystemTime::now());
        }
    }

    /// The record as it stands.
    pub fn record(&self, status: BuildStatus, error: Option<String>) -> BuildRecord {
        let mut r = self.header.lock().expect("recorder lock").clone();
        r.status = Some(status);
        r.error = error;
        r.ended_ms = r.started_ms + self.started.elapsed().as_millis() as u64;
        let st = self.state.lock().expect("recorder lock");
        let inputs = self.inputs.lock().expect("recorder lock");
        if let Some(meta) = self.meta.get() {
            let mut steps: Vec<StepRecord> = meta
                .iter()
                .filter(|(_, m)| !m.is_context)
                .map(|(id, m)| {
                    let s = st.get(id);
                    StepRecord {
                        number: m.number,
                        name: m.name.clone(),
                        stage: m.stage.clone(),
                        position: m.position,
                        line: m.line,
                        instruction: m.instruction.clone(),
                        definition: m.definition.clone(),
                        key: s.and_then(|s| s.key.clone()),
                        status: s.and_then(|s| s.status),
                        source: s.and_then(|s| s.source.clone()),
                        miss: s.and_then(|s| s.miss.clone()),
                        duration_ms: s.map(|s| s.duration_ms).unwrap_or(0),
                        layer: s.and_then(|s| s.layer.clone()),
                        inputs: inputs.get(id).cloned().unwrap_or_default(),
                    }
                })
                .collect();
            steps.sort_by_key(|s| s.number);
            r.steps = steps;
        }
        r
    }

    /// The miss explanation of step `id`, if it missed.
    pub fn miss_of(&self, id: VertexId) -> Option<Miss> {
        self.state
            .lock()
            .expect("recorder lock")
            .get(&id)
            .and_then(|s| s.miss.clone())
    }
}

impl Reporter for Recorder {
    fn event(&self, event: &Event) {
        {
            let mut st = self.state.lock().expect("recorder lock");
            match event {
                Event::Started(id) => {
                    let s = st.entry(*id).or_default();
                    s.started = Some(Instant::now());
                    s.status = Some(StepStatus::Cancelled);
                }
                Event::Cached { id, key } => {
                    let build = self
                        .hit_builds
                        .lock()
                        .expect("recorder lock")
                        .get(key.as_str())
                        .cloned()
                        .flatten();
                    let remote = self
                        .remote_hits
                        .lock()
                        .expect("recorder lock")
                        .get(key.as_str())
                        .cloned();
                    let s = st.entry(*id).or_default();
                    s.key = Some(key.to_string());
                    s.status = Some(StepStatus::Cached);
                    s.source = Some(match remote {
                        Some(reference) => HitSource::Registry { reference },
                        None => HitSource::Store { build },
                    });
                    s.duration_ms = s
                        .started
                        .map(|t| t.elapsed().as_millis() as u64)
                        .unwrap_or(0);
                }
                Event::Done { id, key, duration } => {
                    let s = st.entry(*id).or_default();
                    s.key = Some(key.to_string());
                    s.status = Some(StepStatus::Built);
                    s.duration_ms = duration.as_millis() as u64;
                }
                Event::Failed { id, .. } => {
                    let s = st.entry(*id).or_default();
                    s.status = Some(StepStatus::Failed);
                    s.duration_ms = s
                        .started
                        .map(|t| t.elapsed().as_millis() as u64)
                        .unwrap_or(0);
                }
                _ => {}
            }
        }
        self.forward.event(event);
    }
}

fn miss(kind: &str, details: String) -> Miss {
    Miss {
        kind: kind.into(),
        details,
    }
}

/// Whether `text` refers to `$name` or `${name...}`.
fn mentions(text: &str, name: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find('$') {
        let at = i + p + 1;
        let rest = &text[at..];
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        if let Some(after) = rest.strip_prefix(name) {
            let next = after.as_bytes().first();
            if !next.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                return true;
            }
        }
        i = at;
        if i >= bytes.len() {
            break;
        }
    }
    false
}

/// The first word of an instruction, upper-cased (`COPY`).
fn keyword(instruction: &str) -> String {
    instruction
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// The most recent step of `records` that is the same step as `meta`: same definition
/// digest, or (in a record `same_file` accepts as one of the same Dockerfile) same stage,
/// position in it and instruction keyword.
pub fn find_previous<'r>(
    records: impl IntoIterator<Item = &'r BuildRecord>,
    meta: &StepMeta,
    same_file: &dyn Fn(&BuildRecord) -> bool,
) -> Option<(&'r BuildRecord, &'r StepRecord)> {
    let ran = |s: &&StepRecord| s.key.is_some();
    for r in records {
        if let Some(s) = r
            .steps
            .iter()
            .filter(ran)
            .find(|s| s.definition == meta.definition)
        {
            return Some((r, s));
        }
        if !same_file(r) {
            continue;
        }
        let same_place = |s: &&StepRecord| {
            if meta.position > 0 {
                s.stage == meta.stage
                    && s.position == meta.position
                    && keyword(&s.instruction) == keyword(&meta.instruction)
            } else {
                // An internal vertex (a base image): by its name.
                s.position == 0 && s.name == meta.name
            }
        };
        if let Some(s) = r.steps.iter().filter(ran).find(same_place) {
            return Some((r, s));
        }
    }
    None
}

/// The `--flag` names of an instruction and their values.
fn flags(instruction: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in instruction.split_whitespace().skip(1) {
        let Some(f) = w.strip_prefix("--") else {
            break;
        };
        let (k, v) = f.split_once('=').unwrap_or((f, ""));
        out.entry(format!("--{k}")).or_default().push(v.to_string());
    }
    out
}

/// What differs between this step's inputs and an earlier record's, the first in the
/// order of the module docs up to the files; `None` if none of them does.
pub fn diff_inputs(
    meta: &StepMeta,
    cur: &StepInputs,
    prev: &StepRecord,
    arg_names: &BTreeSet<String>,
    secrets: &BTreeSet<String>,
    load_files: &dyn Fn(&StepInputs) -> Option<FileSet>,
) -> Option<Miss> {
    let old = &prev.inputs;
    if let (Some(a), Some(b)) = (&old.base, &cur.base) {
        if a.digest != b.digest {
            // The manifest digests, as users know their images; the ChainIDs (the key)
            // when a record has none (written before they were kept).
            let (from, to) = match (&a.manifest, &b.manifest) {
                (Some(x), Some(y)) if x != y => (x, y),
                _ => (&a.digest, &b.digest),
            };
            return Some(miss(
                "base",
                format!("FROM {}: {} -> {}", b.reference, short(from), short(to)),
            ));
        }
    }
    if prev.instruction.trim() != meta.instruction.trim() {
        let (fa, fb) = (flags(&prev.instruction), flags(&meta.instruction));
        let changed: Vec<&String> = fa
            .keys()
            .chain(fb.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| fa.get(*k) != fb.get(*k))
            .collect();
        let details = if !changed.is_empty() {
            let names: Vec<&str> = changed.iter().map(|s| s.as_str()).collect();
            format!("{} changed", names.join(", "))
        } else if keyword(&meta.instruction) == "RUN" {
            "command changed".to_string()
        } else {
            format!(
                "instruction changed: {} -> {}",
                prev.instruction.trim(),
                meta.instruction.trim()
            )
        };
        return Some(miss("instruction", details));
    }
    // Build args the step names, then its environment (where RUN sees the args).
    let arg_change = |k: &String, a: Option<&String>, b: Option<&String>| -> Miss {
        let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
        if secrets.contains(k) || secrets.contains(&k.to_ascii_lowercase()) {
            miss("secret", format!("secret {k} changed"))
        } else if arg_names.contains(k) {
            miss("arg", format!("ARG {k}: {} -> {}", show(a), show(b)))
        } else {
            miss("env", format!("ENV {k}: {} -> {}", show(a), show(b)))
        }
    };
    for (a, b) in [(&old.args, &cur.args), (&old.env, &cur.env)] {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        // ARGs before ENVs, each by name.
        let mut keys: Vec<&String> = keys.into_iter().collect();
        keys.sort_by_key(|k| !arg_names.contains(*k));
        for k in keys {
            if a.get(k) != b.get(k) {
                return Some(arg_change(k, a.get(k), b.get(k)));
            }
        }
    }
    if cur.command != old.command {
        return Some(miss("instruction", "command changed".into()));
    }
    if cur.mounts != old.mounts || cur.network != old.network {
        return Some(miss("instruction", "mounts or network changed".into()));
    }
    // The same set id is the same files: nothing to read.
    let same_set = old.files_id.is_some() && old.files_id == cur.files_id;
    let has = |i: &StepInputs| i.files.is_some() || i.files_id.is_some();
    if !same_set && (has(old) || has(cur)) {
        // A set that cannot be read (removed by hand) compares with nothing.
        if let (Some(a), Some(b)) = (load_files(old), load_files(cur)) {
            if let Some(d) = diff_files(&a, &b) {
                return Some(miss("files", d));
            }
        }
    }
    if cur.content != old.content {
        // A git source's content key is `git+submodules:<commit>` (`git:<commit>` from
        // a kiln that checked out no submodules).
        let commit = |i: &StepInputs| {
            let c = i.content.as_deref()?;
            c.strip_prefix("git+submodules:")
                .or_else(|| c.strip_prefix("git:"))
                .map(str::to_owned)
        };
        let what = match (commit(old), commit(cur)) {
            (Some(a), Some(b)) if a == b => {
                format!("{b} is checked out with its submodules now")
            }
            (Some(a), Some(b)) => format!("the git reference moved from {a} to {b}"),
            _ => "downloaded content changed".into(),
        };
        return Some(miss("files", what));
    }
    None
}

/// `sha256:0123456789ab…`.
fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}…", &hex[..12]),
        _ => digest.to_string(),
    }
}

/// `3 files changed: a (content), b (mode 644 -> 755); 1 added: c; 2 removed: d, e`,
/// at most [`MAX_LISTED`] names per part; `None` if the sets are the same.
pub fn diff_files(old: &FileSet, new: &FileSet) -> Option<String> {
    let a: HashMap<&str, &FileEntry> = old.0.iter().map(|e| (e.path.as_str(), e)).collect();
    let b: HashMap<&str, &FileEntry> = new.0.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut changed = Vec::new();
    let mut added = Vec::new();
    for e in &new.0 {
        match a.get(e.path.as_str()) {
            None => added.push(e.path.clone()),
            Some(o) => {
                let what = entry_changes(o, e);
                if !what.is_empty() {
                    changed.push(format!("{} ({})", e.path, what.join(", ")));
                }
            }
        }
    }
    let removed: Vec<String> = old
        .0
        .iter()
        .filter(|e| !b.contains_key(e.path.as_str()))
        .map(|e| e.path.clone())
        .collect();
    let list = |v: &[String]| {
        let mut s = v
            .iter()
            .take(MAX_LISTED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if v.len() > MAX_LISTED {
            s.push_str(&format!(" and {} more", v.len() - MAX_LISTED));
        }
        s
    };
    let plural = |n: usize| if n == 1 { "file" } else { "files" };
    let mut parts = Vec::new();
    if !changed.is_empty() {
        parts.push(format!(
            "{} {} changed: {}",
            changed.len(),
            plural(changed.len()),
            list(&changed)
        ));
    }
    if !added.is_empty() {
        parts.push(format!("{} added: {}", added.len(), list(&added)));
    }
    if !removed.is_empty() {
        parts.push(format!("{} removed: {}", removed.len(), list(&removed)));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn kind_name(k: char) -> &'static str {
    match k {
        'f' => "file",
        'd' => "directory",
        'l' => "symlink",
        'p' => "fifo",
        'c' => "char device",
        'b' => "block device",
        _ => "socket",
    }
}

fn entry_changes(o: &FileEntry, e: &FileEntry) -> Vec<String> {
    let mut what = Vec::new();
    if o.kind != e.kind {
        what.push(format!(
            "type {} -> {}",
            kind_name(o.kind),
            kind_name(e.kind)
        ));
        return what;
    }
    if o.hash != e.hash || o.size != e.size {
        what.push("content".to_string());
    }
    if o.mode != e.mode {
        what.push(format!("mode {:o} -> {:o}", o.mode, e.mode));
    }
    if o.uid != e.uid {
        what.push(format!("owner {} -> {}", o.uid, e.uid));
    }
    if o.gid != e.gid {
        what.push(format!("group {} -> {}", o.gid, e.gid));
    }
    if o.link != e.link {
        what.push(format!(
            "link {} -> {}",
            o.link.as_deref().unwrap_or(""),
            e.link.as_deref().unwrap_or("")
        ));
    }
    what
}

/// The comparable form of the entries a cache key was computed from, sorted by path.
pub fn file_set(entries: &[TreeEntry]) -> FileSet {
    let mut v: Vec<FileEntry> = entries
        .iter()
        .map(|e| FileEntry {
            path: e.path.to_string_lossy().into_owned(),
            kind: match e.kind {
                FileKind::File => 'f',
                FileKind::Dir => 'd',
                FileKind::Symlink => 'l',
                FileKind::Fifo => 'p',
                FileKind::CharDevice => 'c',
                FileKind::BlockDevice => 'b',
                FileKind::Socket => 's',
            },
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            hash: e.content.map(|h| *h.as_bytes()),
            link: e
                .link_target
                .as_ref()
                .map(|l| l.to_string_lossy().into_owned()),
        })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    FileSet(v)
}

/// The inputs of an op's key that its definition shows (the worker adds the files and
/// the base's digest, which it computes).
pub fn op_inputs(op: &Op) -> StepInputs {
    let mut i = StepInputs::default();
    if let Op::Exec(e) = op {
        i.command = Some(e.args.clone());
        i.env = e
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect();
        i.mounts = e
            .mounts
            .iter()
            .map(|m| serde_json::to_string(m).unwrap_or_default())
            .collect();
        i.network = serde_json::to_value(e.network)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
    }
    i
}

/// The ARG names a Dockerfile declares and their defaults (`ARG A=1 B`), with the
/// `--build-arg` values over them: the values a step that names them sees.
pub fn dockerfile_args(
    source: &str,
    build_args: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in source.lines() {
        let t = line.trim_start();
        let Some(rest) = t.get(..4).filter(|k| k.eq_ignore_ascii_case("ARG ")) else {
            continue;
        };
        let _ = rest;
        for w in t[4..].split_whitespace() {
            let (k, v) = match w.split_once('=') {
                Some((k, v)) => (k, v.trim_matches('"').to_string()),
                None => (w, String::new()),
            };
            let v = build_args.get(k).cloned().unwrap_or(v);
            out.insert(k.to_string(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests;
