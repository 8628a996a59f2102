//! One `kiln build`: frontend, solve, assemble the image, tag, export, report.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use kiln_cache::{BuildRecord, BuildStatus, CacheError, Digest, Store, TagRecord};
use kiln_frontend::convert::{self, Base, ConvertOptions, ImageResolver, Plan};
use kiln_frontend::error::shorten;
use kiln_frontend::{Diagnostic, dockerignore};
use kiln_fs::ContextFs;
use kiln_layer::{Compression, LayerError, LayerOptions, UnpackOptions, WhiteoutMode};
use kiln_ops::{Op, Platform, VertexId, describe};

use crate::explain::{Recorder, StepMeta};
use crate::exporter::{self, ExportError};
use crate::image::{self, BuiltImage, HistoryItem, ImageError, ImageSpec, LayerDesc, MediaTypes};
use crate::images::{ImageStore, ImageStoreError, normalize_tag};
use crate::progress::{Progress, ProgressMode, StepLabel};
use crate::remote::RemoteError;
use crate::report::{Report, ReportImage, ReportLayer, ReportStep};
use crate::trace::Trace;
use crate::worker::{BuildWorker, ExecSettings, Output, WorkerError};
use kiln_solver::{Reporter, SolveOptions, Solved, StepError};

/// Why a build failed. Each variant's message is one line; its source (if any) follows
/// after a colon where the binary prints the chain (`error: a: b: c`).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile is wrong (rendered with its location and source line).
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),
    /// `--output` is not `type=...,dest=...`.
    #[error("invalid --output {0:?}: expected type=oci|docker|local,dest=PATH")]
    OutputSyntax(String),
    /// `--output` has no `dest=`.
    #[error("--output {0:?} needs dest=PATH")]
    OutputDest(String),
    /// `--output` names an unknown type.
    #[error("unsupported output type {0:?}: expected oci, docker or local")]
    OutputType(Option<String>),
    /// The store could not be opened.
    #[error("opening the store at {}", root.display())]
    OpenStore {
        /// Its root.
        root: PathBuf,
        /// Why.
        #[source]
        source: CacheError,
    },
    /// The Dockerfile could not be read.
    #[error("reading {}", path.display())]
    ReadDockerfile {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `.dockerignore` could not be read.
    #[error("reading .dockerignore of {}", context.display())]
    Dockerignore {
        /// The build context.
        context: PathBuf,
        /// Why.
        #[source]
        source: dockerignore::IgnoreError,
    },
    /// `--build-context` is wrong.
    #[error("invalid --build-context {spec:?}: {reason}")]
    BuildContext {
        /// The flag's value.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The agent serving `--ssh ID=KEYFILE` failed.
    #[error(transparent)]
    SshAgent(#[from] crate::worker::ssh::KeyAgentError),
    /// `--ssh` is wrong.
    #[error("invalid --ssh {spec:?}: {reason}")]
    Ssh {
        /// The flag's value.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A named context's `.dockerignore` could not be read.
    #[error("reading .dockerignore of the named context {name} ({})", dir.display())]
    NamedDockerignore {
        /// The context's name.
        name: String,
        /// Its directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: dockerignore::IgnoreError,
    },
    /// A step failed.
    #[error("{step}")]
    Step {
        /// The step: `stage NAME, Dockerfile:LINE: INSTRUCTION`, or its label.
        step: String,
        /// Why.
        #[source]
        source: StepError<WorkerError>,
    },
    /// Pushing a tag failed.
    #[error("pushing {tag}")]
    Push {
        /// The tag.
        tag: String,
        /// Why.
        #[source]
        source: Box<RemoteError>,
    },
    /// `--output type=local` could not write a layer.
    #[error("writing layer {digest} to {}", dest.display())]
    ExportLocal {
        /// The layer's blob.
        digest: Digest,
        /// The destination.
        dest: PathBuf,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// `--explain-against` could not be read.
    #[error("reading the build record {}", path.display())]
    ExplainAgainst {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `--cache-to` option the build cannot honour.
    #[error("{0}")]
    CacheTo(String),
    /// `--cache-to` failed (without `ignore-error=true`).
    #[error("exporting the cache to {to}")]
    CacheExport {
        /// The reference or directory.
        to: String,
        /// Why.
        #[source]
        source: Box<crate::remote_cache::RemoteCacheError>,
    },
    /// `--trace` could not be written.
    #[error("writing the trace to {}", path.display())]
    Trace {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker failed outside a step (setting up, saving the stat memo).
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A base image could not be read.
    #[error(transparent)]
    Images(#[from] Box<ImageStoreError>),
    /// The image config or manifest could not be made.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An exporter failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The build context could not be read.
    #[error(transparent)]
    Fs(#[from] kiln_fs::FsError),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::SandboxError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] CacheError),
    /// An I/O error without more to say than itself.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `--platform` is invalid, or a multi-platform build cannot do what was asked.
    #[error("{0}")]
    Platform(String),
    /// A `RUN` for a foreign architecture, and no emulator (checked before running).
    #[error(transparent)]
    Emulation(#[from] crate::multiplatform::EmulationError),
}

impl From<ImageStoreError> for BuildError {
    fn from(e: ImageStoreError) -> BuildError {
        BuildError::Images(Box::new(e))
    }
}

type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Where `--output` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// `type=oci,dest=DIR` (a layout) or `dest=FILE.tar` (an archive).
    Oci(PathBuf),
    /// `type=docker,dest=FILE.tar`.
    Docker(PathBuf),
    /// `type=local,dest=DIR`: the final filesystem.
    Local(PathBuf),
}

impl OutputSpec {
    /// Parses `type=...,dest=...`.
    pub fn parse(s: &str) -> Result<OutputSpec> {
        let mut kind = None;
        let mut dest = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v.to_string()),
                Some(("dest", v)) => dest = Some(PathBuf::from(v)),
                _ => return Err(BuildError::OutputSyntax(s.to_string())),
            }
        }
        let dest = dest.ok_or_else(|| BuildError::OutputDest(s.to_string()))?;
        match kind.as_deref() {
            Some("oci") => Ok(OutputSpec::Oci(dest)),
            Some("docker") => Ok(OutputSpec::Docker(dest)),
            Some("local") => Ok(OutputSpec::Local(dest)),
            _ => Err(BuildError::OutputType(kind)),
        }
    }
}

/// What an `--ssh` id forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSource {
    /// An agent's socket.
    Socket(PathBuf),
    /// Private key files, served by an agent kiln runs for the build (see
    /// [`crate::worker::ssh::KeyAgent`]).
    Keys(Vec<PathBuf>),
}

/// Parses `--ssh default|ID|ID=PATH[,PATH...]` (buildx's flag): an id and what it
/// forwards; `default` or a bare ID take `$SSH_AUTH_SOCK` (`auth_sock`). A PATH that is
/// a socket is an agent's, and must be the only one; others are private key files.
pub fn parse_ssh(spec: &str, auth_sock: Option<&str>) -> Result<(String, SshSource)> {
    let bad = |reason: String| BuildError::Ssh {
        spec: spec.to_string(),
        reason,
    };
    let (id, paths) = match spec.split_once('=') {
        Some((id, p)) => (id, p),
        None => match auth_sock.filter(|s| !s.is_empty()) {
            Some(s) => (spec, s),
            None => return Err(bad("SSH_AUTH_SOCK is not set: give ID=SOCKET".into())),
        },
    };
    if id.is_empty() || id.contains(',') {
        return Err(bad("expected default, ID or ID=PATH[,PATH...]".into()));
    }
    let paths: Vec<PathBuf> = paths
        .split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    if paths.is_empty() {
        return Err(bad("no socket or key file given".into()));
    }
    use std::os::unix::fs::FileTypeExt;
    let mut keys = Vec::new();
    for path in &paths {
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if paths.len() > 1 {
                    return Err(bad(format!(
                        "{} is an agent socket, which must be the only path of an id",
                        path.display()
                    )));
                }
                return Ok((id.to_string(), SshSource::Socket(path.clone())));
            }
            Ok(m) if m.is_file() => keys.push(path.clone()),
            Ok(_) => {
                return Err(bad(format!(
                    "{} is neither an agent socket nor a key file",
                    path.display()
                )));
            }
            Err(e) => return Err(bad(format!("{}: {e}", path.display()))),
        }
    }
    Ok((id.to_string(), SshSource::Keys(keys)))
}

/// What a named context (`--build-context NAME=VALUE`) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextSource {
    /// A local directory (read as the build context is, with its own `.dockerignore`).
    Dir(PathBuf),
    /// An image: `docker-image://REF` gives REF, `oci-layout://DIR[:TAG]` stays as
    /// written (kiln resolves it as in `FROM`).
    Image(String),
    /// A git repository, as `ADD` takes one (`https://host/repo.git#ref:subdir`,
    /// `git@host:repo.git`, `ssh://...`, `git://...`).
    Git(kiln_ops::GitSource),
    /// Any other `http(s)://` URL: the file, as `/context` of an otherwise empty tree.
    Http(String),
}

impl ContextSource {
    /// Parses `NAME=VALUE` as buildx does (BuildKit's `dockerui` named contexts):
    /// VALUE is `docker-image://REF`, `oci-layout://DIR[:TAG]`, a git repository (as
    /// `ADD` tells one: `git@`, `git://`, `ssh://`, or an `http(s)` URL whose path ends
    /// in `.git`), another `http(s)` URL (a file, kept whole as `/context`: BuildKit
    /// does not unpack a named context's archive), or else a local directory.
    pub fn parse(spec: &str) -> Result<(String, ContextSource)> {
        let bad = |reason: &str| BuildError::BuildContext {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=VALUE"))?;
        if name.is_empty() || value.is_empty() {
            return Err(bad("expected NAME=VALUE"));
        }
        if name == crate::worker::MAIN_CONTEXT {
            return Err(bad("\"context\" is the build context itself"));
        }
        let source = if let Some(r) = value.strip_prefix("docker-image://") {
            crate::remote::parse_name(r).map_err(|e| bad(&e))?;
            ContextSource::Image(r.to_string())
        } else if value.starts_with("oci-layout://") {
            ContextSource::Image(value.to_string())
        } else if kiln_frontend::instructions::is_git(value) {
            let source = kiln_frontend::convert::git::parse_git_ref(value)
                .and_then(|g| g.source(false, None))
                .map_err(|e| bad(&e))?;
            ContextSource::Git(source)
        } else if kiln_frontend::instructions::is_url(value) {
            ContextSource::Http(value.to_string())
        } else if value.contains("://") {
            return Err(bad(
                "kiln takes a directory, docker-image://REF, oci-layout://DIR[:TAG], \
                 a git repository or an http(s) URL",
            ));
        } else {
            let dir = PathBuf::from(value);
            if !dir.is_dir() {
                return Err(bad(&format!("{} is not a directory", dir.display())));
            }
            ContextSource::Dir(dir)
        };
        Ok((name.to_string(), source))
    }
}

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The store root.
    pub root: PathBuf,
    /// Build context directory.
    pub context: PathBuf,
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// How the Dockerfile is named in messages.
    pub dockerfile_name: String,
    /// `-t`.
    pub tags: Vec<String>,
    /// `--build-arg`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--platform`.
    pub platform: Platform,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--progress`.
    pub progress: ProgressMode,
    /// `--output`.
    pub outputs: Vec<OutputSpec>,
    /// Layer compression.
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: Option<i64>,
    /// `--secret`: ids and files.
    pub secrets: Vec<(String, PathBuf)>,
    /// `--snapshotter` (None: detect).
    pub snapshotter: Option<kiln_sandbox::SnapshotterKind>,
    /// Registry settings (`--pull`, insecure registries, CA).
    pub registry: crate::remote::RegistrySettings,
    /// `--push`: push the tags after the build.
    pub push: bool,
    /// `--allow security.insecure`: `RUN --security=insecure` may run privileged.
    pub allow_insecure: bool,
    /// Write a build record (`--no-record` or `KILN_NO_RECORD=1` turn it off).
    pub record: bool,
    /// `--explain-against RECORD.json`: explain misses against this exported record
    /// instead of this store's records.
    pub explain_against: Option<PathBuf>,
    /// `--cache-to`: where to export the cache after the build.
    pub cache_to: Vec<crate::remote_cache::CacheToSpec>,
    /// `--cache-from`: caches to look keys up in, in order.
    pub cache_from: Vec<crate::remote_cache::CacheLocation>,
    /// `--label K=V`: labels set on the image's config (over the Dockerfile's), as
    /// `docker build --label`.
    pub labels: BTreeMap<String, String>,
    /// `--network`: the network of RUN steps that do not choose one (None: the host's).
    pub run_network: Option<kiln_ops::Network>,
    /// `--add-host`: entries for every RUN step's `/etc/hosts`.
    pub extra_hosts: Vec<kiln_ops::ExtraHost>,
    /// `--shm-size`: every RUN step's `/dev/shm` size in bytes.
    pub shm_size: Option<u64>,
    /// `--trace FILE.json`: write the build's timeline as Chrome trace events.
    pub trace: Option<PathBuf>,
    /// `--build-context NAME=VALUE`, in the order given (a later NAME wins).
    pub named_contexts: Vec<(String, ContextSource)>,
    /// `--ssh`: agent sockets or key files by id (see [`parse_ssh`]).
    pub ssh: Vec<(String, SshSource)>,
    /// One platform's build of a multi-platform one: step labels name the platform
    /// (`[linux/arm64 2/3] RUN ...`), as BuildKit's do.
    pub multi_platform: bool,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildOutcome {
    /// The report.
    pub report: Report,
    /// Warnings from the frontend.
    pub warnings: Vec<String>,
    /// The manifest's media type (for `containerimage.descriptor`).
    pub manifest_media_type: String,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
}

/// A Dockerfile error, rendered as `FILE:LINE:COL: message` plus the source excerpt.
#[derive(Debug, thiserror::Error)]
#[error("{rendered}")]
pub struct DockerfileError {
    /// The rendered message.
    pub rendered: String,
}

/// Adds the named contexts to `opts`, and opens the local ones (each with its own
/// `.dockerignore`, as BuildKit reads it; the build context's does not apply).
pub fn with_named_contexts(
    mut opts: ConvertOptions,
    contexts: &[(String, ContextSource)],
) -> Result<(ConvertOptions, Vec<(String, ContextFs)>)> {
    let mut dirs = BTreeMap::new();
    for (name, source) in contexts {
        let ctx = match source {
            ContextSource::Image(reference) => convert::NamedContext::Image {
                reference: reference.clone(),
            },
            ContextSource::Git(source) => convert::NamedContext::Git {
                source: source.clone(),
            },
            ContextSource::Http(url) => convert::NamedContext::Http { url: url.clone() },
            ContextSource::Dir(dir) => {
                let exclude = dockerignore::load_in(dir)
                    .map_err(|source| BuildError::NamedDockerignore {
                        name: name.clone(),
                        dir: dir.clone(),
                        source,
                    })?
                    .unwrap_or_default();
                dirs.insert(name.clone(), ContextFs::new(dir, &exclude)?);
                convert::NamedContext::Local { exclude }
            }
        };
        if !matches!(ctx, convert::NamedContext::Local { .. }) {
            dirs.remove(name);
        }
        opts.named_contexts.insert(name.clone(), ctx);
    }
    Ok((opts, dirs.into_iter().collect()))
}

/// Refuses a build with a `RUN --security=insecure` that `--allow security.insecure`
/// did not grant, before anything runs (buildx's entitlement rule).
fn check_entitlements(plan: &Plan) -> Result<(), Diagnostic> {
    for id in plan.graph.topo_order() {
        let v = plan.graph.vertex(id);
        if let Op::Exec(e) = &v.op {
            if e.insecure {
                let msg = "RUN --security=insecure needs the security.insecure entitlement: \
                           pass --allow security.insecure";
                return Err(match v.origins.first() {
                    Some(o) => Diagnostic::at(o.range, msg),
                    None => Diagnostic::new(msg),
                });
            }
        }
    }
    Ok(())
}

fn step_labels(
    plan: &Plan,
    dockerfile_stages: usize,
    multi_platform: Option<&Platform>,
) -> HashMap<VertexId, StepLabel> {
    let mut labels = HashMap::new();
    let mut per_stage: HashMap<usize, usize> = HashMap::new();
    let total: HashMap<usize, usize> = plan.stages.iter().map(|s| (s.index, 0)).collect();
    let mut totals = total;
    for id in plan.graph.topo_order() {
        if let Some(o) = plan.graph.vertex(id).origins.first() {
            *totals.entry(o.stage).or_default() += 1;
        }
    }
    for (n, id) in plan.graph.topo_order().into_iter().enumerate() {
        let v = plan.graph.vertex(id);
        let name = match (v.origins.first(), &v.op) {
            (Some(o), _) => {
                let i = per_stage.entry(o.stage).or_default();
                *i += 1;
                let stage = plan.stages.iter().find(|s| s.index == o.stage);
                let mut head = String::new();
                if let (Some(target), Some(st)) = (multi_platform, stage) {
                    head.push_str(&platform_prefix(&st.platform, target));
                    head.push(' ');
                }
                // BuildKit names a stage only when the Dockerfile has several:
                // `[build 2/3]`, `[stage-1 2/3]`; a single stage is `[2/3]`.
                if dockerfile_stages > 1 {
                    match stage.and_then(|s| s.name.as_deref()) {
                        Some(name) => head.push_str(name),
                        None => head.push_str(&format!("stage-{}", o.stage)),
                    }
                    head.push(' ');
                }
                format!(
                    "[{head}{i}/{}] {}",
                    totals[&o.stage],
                    shorten(o.instruction.trim())
                )
            }
            (
                None,
                Op::Image {
                    reference,
                    platform,
                    ..
                },
            ) => match multi_platform {
                Some(target) => format!(
                    "[{} internal] FROM {reference}",
                    platform_prefix(platform, target)
                ),
                None => format!("[internal] FROM {reference}"),
            },
            (None, Op::Context { name, .. }) if name != crate::worker::MAIN_CONTEXT => {
                format!("[context {name}] load from client")
            }
            (None, Op::Context { .. }) => "[internal] load build context".to_string(),
            (None, op) => format!("[internal] {}", describe(op)),
        };
        labels.insert(
            id,
            StepLabel {
                number: n + 1,
                name,
            },
        );
    }
    labels
}

/// The platform part of a step label in a multi-platform build, as BuildKit's
/// `prefixCommand` writes it: the stage's platform, and when the stage runs on another
/// architecture than the one being built (a `FROM --platform=$BUILDPLATFORM` cross
/// stage), `->` and the target's (`linux/amd64->arm64`; the whole target platform when
/// the OS differs too).
fn platform_prefix(stage: &Platform, target: &Platform) -> String {
    if stage.os() != target.os() {
        format!("{stage}->{target}")
    } else if stage.architecture() != target.architecture() {
        match target.variant() {
            Some(v) => format!("{stage}->{}/{v}", target.architecture()),
            None => format!("{stage}->{}", target.architecture()),
        }
    } else {
        stage.to_string()
    }
}

/// The history of a stage's base, recursively through stages.
fn base_history(plan: &Plan, images: &ImageStore, stage_index: usize) -> Result<Vec<HistoryItem>> {
    let Some(st) = plan.stages.iter().find(|s| s.index == stage_index) else {
        return Ok(Vec::new());
    };
    match &st.base {
        Base::Scratch => Ok(Vec::new()),
        // The directory's files are one layer no instruction made: described as
        // BuildKit's exporter describes a layer without history.
        Base::Context(name) => Ok(vec![HistoryItem {
            created: None,
            created_by: format!("[context {name}] load from client"),
            comment: Some("buildkit.exporter.image.v0".to_string()),
            empty_layer: false,
        }]),
        Base::Stage(i) => base_history(plan, images, *i),
        Base::Image { reference, .. } => {
            Ok(images.get(reference, &st.platform)?.config.history.clone())
        }
    }
}

/// How many of the bottom layers of stage `stage_index` come from a base image.
fn base_layer_count(plan: &Plan, images: &ImageStore, stage_index: usize) -> Result<usize> {
    let Some(st) = plan.stages.iter().find(|s| s.index == stage_index) else {
        return Ok(0);
    };
    match &st.base {
        Base::Scratch | Base::Context(_) => Ok(0),
        Base::Stage(i) => base_layer_count(plan, images, *i),
        Base::Image { reference, .. } => Ok(images.get(reference, &st.platform)?.layers.len()),
    }
}

/// Writes the record of a build that ends without saying how (a panic) as failed.
struct FinishOnDrop<'a>(&'a Recorder);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0
            .finish(BuildStatus::Failed, Some("the build panicked".into()));
    }
}

/// Reads a record exported by `kiln builds inspect --format json`.
fn read_against(path: &Path) -> Result<BuildRecord> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| BuildError::ExplainAgainst {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(|e| err(Box::new(e)))?;
    serde_json::from_slice(&bytes).map_err(|e| err(Box::new(e)))
}

/// Runs a build, and writes its record (whatever the outcome) unless `req.record` is off.
pub fn build(req: &BuildRequest) -> Result<BuildOutcome> {
    let store = Store::open(&req.root).map_err(|source| BuildError::OpenStore {
        root: req.root.clone(),
        source,
    })?;
    let _lock = store.lock_shared()?;
    // Leases of builds killed with -9 protect nothing: dropped now (one readdir) rather
    // than at the next `du` or `prune`, so that the collector after this build does
    // not keep what they named.
    store.drop_dead_leases()?;
    let against = req
        .explain_against
        .as_deref()
        .map(read_against)
        .transpose()?;
    // Made before conversion, which resolves `FROM`s through it; steps are named after.
    let progress = std::sync::Arc::new(Progress::new(req.progress, HashMap::new()));
    // `--trace`: the timeline sees every event before the display does.
    let trace = req
        .trace
        .as_ref()
        .map(|_| std::sync::Arc::new(Trace::new(progress.clone())));
    let events: std::sync::Arc<dyn Reporter + Send + Sync> = match &trace {
        Some(t) => t.clone(),
        None => progress.clone(),
    };
    let header = BuildRecord {
        context: req.context.display().to_string(),
        dockerfile: req.dockerfile.display().to_string(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        platform: req.platform.to_string(),
        tags: req.tags.clone(),
        outputs: req
            .outputs
            .iter()
            .map(|o| match o {
                OutputSpec::Oci(d) => format!("type=oci,dest={}", d.display()),
                OutputSpec::Docker(d) => format!("type=docker,dest={}", d.display()),
                OutputSpec::Local(d) => format!("type=local,dest={}", d.display()),
            })
            .collect(),
        ..BuildRecord::default()
    };
    let recorder = Recorder::new(
        store.clone(),
        header,
        events.clone(),
        against,
        req.no_cache,
        req.secrets.iter().map(|(id, _)| id.clone()).collect(),
        req.record,
    );
    let guard = FinishOnDrop(&recorder);
    // What this build uses is added to its lease as it goes (the worker's job); what
    // it writes is newer than the lease, which a collector keeps too. Held through the
    // collection below, so the build that just ran stays cached.
    let lease = store.lease(&format!("build of {}", req.dockerfile.display()), &[])?;
    let mut r = build_inner(
        req,
        &store,
        &lease,
        &progress,
        &recorder,
        trace.as_deref(),
        &events,
    );
    if let (Some(t), Some(path)) = (&trace, &req.trace) {
        // Failed and interrupted builds too: the timeline shows where they stopped.
        let written = t.write(path, &|id| recorder.miss_of(id).map(|m| m.kind));
        if let (Err(source), true) = (written, r.is_ok()) {
            r = Err(BuildError::Trace {
                path: path.clone(),
                source,
            });
        }
    }
    match &r {
        Ok(_) => recorder.finish(BuildStatus::Completed, None),
        Err(e) => {
            let status = if crate::interrupt::interrupted() {
                BuildStatus::Interrupted
            } else {
                BuildStatus::Failed
            };
            recorder.finish(status, Some(kiln_solver::error_chain(e)));
        }
    }
    drop(guard);
    // After every build, failed and interrupted ones too: a build that fails again and
    // again must not grow the store past its budget. The build's lease is still held:
    // what it used stays (issue 12: "the most recent build still fully cached"), the
    // least recently used rest goes.
    collect_if_over_budget(&store, &progress);
    drop(lease);
    r
}

/// The collection after a build: when the store is over budget, least recently used
/// records go, and the build's output says what went.
fn collect_if_over_budget(store: &Store, progress: &Progress) {
    match crate::usage::gc_if_over_budget(store) {
        Ok(Some(r)) if r.plan.freed == 0 => {
            let (budget, used, _) = r.budget.expect("budgeted");
            progress.message(&format!(
                "WARNING: store over budget ({} used, max {}, min free {}) but nothing can be removed: builds, containers or tagged images use it all",
                crate::changes::human_size(used),
                crate::changes::human_size(budget.max_used),
                crate::changes::human_size(budget.min_free),
            ));
        }
        Ok(Some(r)) => {
            let (budget, used, _) = r.budget.expect("budgeted");
            progress.message(&format!(
                "store over budget ({} used, max {}, min free {}): removed {} cache records, {} blobs and snapshots, freed {}",
                crate::changes::human_size(used),
                crate::changes::human_size(budget.max_used),
                crate::changes::human_size(budget.min_free),
                r.plan.records.len(),
                r.plan.refs.len(),
                crate::changes::human_size(r.plan.freed)
            ));
        }
        Ok(None) => {}
        Err(e) => progress.message(&format!("WARNING: garbage collection failed: {e}")),
    }
}

/// Runs `f` as a span of the trace, if there is one.
fn traced<T>(trace: Option<&Trace>, name: &str, cat: &str, f: impl FnOnce() -> T) -> T {
    match trace {
        Some(t) => t.span(name, cat, f),
        None => f(),
    }
}

fn build_inner(
    req: &BuildRequest,
    store: &Store,
    lease: &kiln_cache::Lease,
    progress: &std::sync::Arc<Progress>,
    recorder: &Recorder,
    trace: Option<&Trace>,
    events: &std::sync::Arc<dyn Reporter + Send + Sync>,
) -> Result<BuildOutcome> {
    let started = Instant::now();
    for c in &req.cache_to {
        c.check_compression(req.compression.name())
            .map_err(BuildError::CacheTo)?;
    }
    let store = store.clone();
    let source = std::fs::read(&req.dockerfile).map_err(|source| BuildError::ReadDockerfile {
        path: req.dockerfile.clone(),
        source,
    })?;
    recorder.set_dockerfile_digest(&kiln_cache::sha256_of(&source));
    let source = String::from_utf8_lossy(&source).into_owned();
    let located = |e: Diagnostic| DockerfileError {
        rendered: e.render(&req.dockerfile_name, &source),
    };
    let (_, df) = kiln_frontend::load(&source).map_err(located)?;
    let excludes = dockerignore::load_for(&req.context, &req.dockerfile)
        .map_err(|source| BuildError::Dockerignore {
            context: req.context.clone(),
            source,
        })?
        .map(|(_, p)| p)
        .unwrap_or_default();
    let remote = std::sync::Arc::new(crate::remote::Remote::new(req.registry.clone()));
    let quiet = matches!(req.progress, ProgressMode::Quiet | ProgressMode::Json);
    let opts = ConvertOptions {
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        target_platform: req.platform.clone(),
        build_platform: Platform::host(),
        context_excludes: excludes.clone(),
        run_network: req.run_network,
        extra_hosts: req.extra_hosts.clone(),
        shm_size: req.shm_size,
        named_contexts: BTreeMap::new(),
    };
    let (opts, named_dirs) = with_named_contexts(opts, &req.named_contexts)?;
    let dry = crate::bases::dry_run(&df, &opts);
    // A base's new layers are fetched beside its config when a step the target needs
    // will read them. Not with `--cache-from`: its hits may need none of them.
    let images = ImageStore::new(&store)
        .with_remote(remote.clone(), events.clone())
        .with_prefetch(
            req.cache_from.is_empty() && crate::bases::reads_bases(&df, dry.stages.as_deref()),
        );
    // Every base resolved at once, not one `FROM` after the other (see `bases`).
    // A base that fails is remembered with its error, which the conversion reports.
    crate::bases::resolve_at_once(&dry.bases, &|reference, platform| {
        let _ = ImageResolver::resolve(&images, reference, platform);
    });
    let plan = convert::convert(&df, &opts, &images).map_err(located)?;
    if !req.allow_insecure {
        check_entitlements(&plan).map_err(located)?;
    }
    // A RUN for a foreign architecture fails now, not after the steps before it.
    crate::multiplatform::check_plan_emulation(
        &plan,
        Path::new(crate::multiplatform::BINFMT_MISC),
    )?;
    let labels = step_labels(
        &plan,
        df.stages.len(),
        req.multi_platform.then_some(&req.platform),
    );
    progress.set_labels(labels.clone());
    if let Some(t) = trace {
        t.set_labels(labels.clone());
    }
    recorder.set_plan(
        step_meta(&plan, &labels),
        crate::explain::dockerfile_args(&source, &req.build_args),
    );
    for w in &plan.warnings {
        progress.message(&format!("WARNING: {w}"));
    }

    let layer_opts = LayerOptions {
        compression: req.compression,
        source_date_epoch: req.source_date_epoch,
        ..LayerOptions::default()
    };
    let context = ContextFs::new(&req.context, &excludes)?;
    let order = plan.graph.topo_order();
    let snapshotter = match req.snapshotter {
        Some(k) => k,
        None => {
            let (k, notice) = kiln_sandbox::SnapshotterKind::detect(store.root());
            if let Some(n) = notice {
                if order
                    .iter()
                    .any(|id| matches!(plan.graph.vertex(*id).op, Op::Exec(_)))
                {
                    progress.message(&format!("NOTE: {n}"));
                }
            }
            k
        }
    };
    // `--ssh ID=KEYFILE`: an agent per id for this build, stopped when it ends (the
    // agents live until this function returns).
    let mut key_agents = Vec::new();
    let mut ssh_sockets = HashMap::new();
    for (id, source) in &req.ssh {
        match source {
            SshSource::Socket(p) => {
                ssh_sockets.insert(id.clone(), p.clone());
            }
            SshSource::Keys(keys) => {
                let dir = tempfile::Builder::new()
                    .prefix("ssh-agent-")
                    .tempdir_in(store.tmp_dir())
                    .map_err(|e| crate::worker::ssh::KeyAgentError::Start {
                        id: id.clone(),
                        reason: format!(
                            "creating its directory in {}: {e}",
                            store.tmp_dir().display()
                        ),
                    })?;
                let agent = crate::worker::ssh::KeyAgent::start(dir, id, keys)?;
                ssh_sockets.insert(id.clone(), agent.socket().to_path_buf());
                key_agents.push(agent);
            }
        }
    }
    let exec = ExecSettings {
        snapshotter,
        runtime: Box::new(kiln_sandbox::LinuxRuntime::new()?),
        secrets: req.secrets.iter().cloned().collect(),
        allow_insecure: req.allow_insecure,
        ssh: ssh_sockets,
    };
    let leaves: Vec<VertexId> = order
        .into_iter()
        .filter(|id| plan.graph.dependents(*id).is_empty())
        .collect();
    // The steps whose layers the image can hold are compressed as they are made; a
    // builder stage's are not, unless a `mode=max` cache export wants them all.
    let max_cache = (req.cache_to.iter()).any(|c| c.mode == crate::remote_cache::CacheMode::Max);
    let image_chain =
        (!max_cache).then(|| crate::worker::image_chain(&plan.graph, plan.target_stage().root));
    // Each cache is read once, before solving; one that cannot be read is a warning.
    let import_trace = trace.filter(|_| !req.cache_from.is_empty());
    let imported = traced(import_trace, "import cache", "pull", || {
        crate::remote_cache::Imported::load(&store, &remote, &req.cache_from, &|l| {
            progress.message(&l)
        })
    });
    recorder.set_imported(imported.builds());
    let worker = BuildWorker::new(&store, context, &images, layer_opts, exec)?
        .with_imported(&imported)
        .with_reporter(recorder)
        .with_recorder(recorder)
        .with_network_timeouts(req.registry.timeouts)
        .with_lazy_snapshots(leaves)
        .with_streamed_chain(crate::worker::streamed_chain(&plan.graph))
        .with_image_chain(image_chain)
        .with_lease(lease)
        .with_named_contexts(named_dirs)?;
    let cancel: &AtomicBool = crate::interrupt::flag();
    let results = kiln_solver::solve(
        &plan.graph,
        &worker,
        recorder,
        SolveOptions {
            no_cache: req.no_cache,
        },
        cancel,
    )
    .map_err(|e| {
        let v = plan.graph.vertex(e.vertex);
        let what = match v.origins.first() {
            Some(o) => format!(
                "stage {}, {}:{}: {}",
                o.stage_name,
                req.dockerfile_name,
                o.range.start.line,
                shorten(o.instruction.trim())
            ),
            None => labels
                .get(&e.vertex)
                .map(|l| l.name.clone())
                .unwrap_or_default(),
        };
        // Which platform's build failed, in a multi-platform one (its labels say it;
        // `stage NAME, Dockerfile:LINE` does not).
        let what = match (req.multi_platform, v.origins.is_empty()) {
            (true, false) => format!("{}: {what}", req.platform),
            _ => what,
        };
        BuildError::Step {
            step: what,
            source: e.error,
        }
    })?;
    worker.finish()?;

    let built = traced(trace, "assemble image", "export", || {
        assemble(req, &store, &images, &plan, &results)
    })?;
    recorder.set_results(
        &built.manifest_digest,
        results
            .iter()
            .filter_map(|(id, s)| match &s.output {
                Output::Fs {
                    layers,
                    added: true,
                } => layers.last().map(|l| (*id, l.digest.clone())),
                _ => None,
            })
            .collect(),
    );
    for tag in &req.tags {
        let _tags_lock = store.lock_shared()?;
        store.tag_set(
            &normalize_tag(tag),
            &TagRecord::new(built.manifest_digest.clone(), built.config_digest.clone()),
        )?;
    }
    if req.push {
        for tag in &req.tags {
            let r = traced(trace, &format!("push {tag}"), "push", || {
                remote.push(
                    &store,
                    tag,
                    false,
                    &crate::remote::BlobReporter::new(&**events, None),
                )
            })
            .map_err(|source| BuildError::Push {
                tag: tag.clone(),
                source: Box::new(source),
            })?;
            if !quiet {
                progress.message(&format!(
                    "pushed {tag}: {} ({} bytes uploaded, {} blobs skipped, {} mounted)",
                    r.digest, r.bytes_uploaded, r.blobs_skipped, r.blobs_mounted
                ));
            }
        }
    }
    if !req.outputs.is_empty() {
        // The exporters read every layer: those of a resolved base are fetched now.
        images.ensure_layers(&results_layers(&built), None)?;
    }
    for out in &req.outputs {
        let name = match out {
            OutputSpec::Oci(d) => format!("export type=oci,dest={}", d.display()),
            OutputSpec::Docker(d) => format!("export type=docker,dest={}", d.display()),
            OutputSpec::Local(d) => format!("export type=local,dest={}", d.display()),
        };
        traced(trace, &name, "export", || {
            export_one(req, &store, &built, out)
        })?;
    }
    for spec in &req.cache_to {
        traced(
            trace,
            &format!("export cache {}", spec.location),
            "export",
            || {
                export_cache(
                    req, &store, &remote, progress, recorder, &plan, &results, spec,
                )
            },
        )?;
    }

    // Done with the blobs: those the store can make again (a RUN's layer from its
    // snapshot, a fetched base's from its registry) go, so that each such layer is kept
    // once, unpacked. A build that exports its image (`--output`) keeps its image's:
    // the next export reads them again. A failure only leaves them in place.
    let exported: std::collections::HashSet<Digest> = if req.outputs.is_empty() {
        Default::default()
    } else {
        built.layers.iter().map(|l| l.digest.clone()).collect()
    };
    let made = results
        .values()
        .flat_map(|s| s.output.layers())
        .filter(|l| !exported.contains(&l.digest));
    // A base layer this build fetched (to unpack it) goes back to being fetched when
    // needed; one the store had before (`kiln pull`, a local image) stays.
    let bases = made.clone().filter(|l| images.was_fetched(l));
    if let Err(e) = crate::recreate::compact(&store, made, bases, Some(lease)) {
        progress.message(&format!(
            "warning: keeping the compressed copies of unpacked layers: {}",
            kiln_solver::error_chain(&e)
        ));
    }

    let mut steps = Vec::new();
    for (id, solved) in &results {
        let v = plan.graph.vertex(*id);
        let Some(origin) = v.origins.first() else {
            continue;
        };
        let mut step = report_step(origin, solved);
        step.miss = recorder.miss_of(*id);
        steps.push(step);
    }
    let report = Report::new(
        ReportImage {
            digest: built.manifest_digest.clone(),
            config: built.config_digest.clone(),
            tags: req.tags.clone(),
        },
        steps,
        started.elapsed().as_millis() as u64,
    );
    // As BuildKit's image exporter: the manifest and config by their digests, then the
    // image ID (the config digest, which `kiln images` shows).
    progress.message(&format!(
        "exporting manifest {} done",
        built.manifest_digest
    ));
    progress.message(&format!("exporting config {} done", built.config_digest));
    progress.message(&format!("writing image {} done", built.config_digest));
    for t in &req.tags {
        progress.message(&format!("naming to {} done", normalize_tag(t)));
    }
    Ok(BuildOutcome {
        report,
        warnings: plan.warnings.clone(),
        manifest_media_type: MediaTypes::Oci.manifest().to_string(),
        manifest_size: built.manifest_json.len() as u64,
    })
}

/// `--cache-to`: exports this build's records (and its build record, with its file
/// sets, so another machine can explain its misses) to `spec`'s location.
#[allow(clippy::too_many_arguments)]
fn export_cache(
    req: &BuildRequest,
    store: &Store,
    remote: &crate::remote::Remote,
    progress: &Progress,
    recorder: &Recorder,
    plan: &Plan,
    results: &HashMap<VertexId, Solved<Output>>,
    spec: &crate::remote_cache::CacheToSpec,
) -> Result<()> {
    let cands = crate::remote_cache::export::candidates(plan, results, spec.mode);
    let mut record = recorder.record(BuildStatus::Completed, None);
    for s in &mut record.steps {
        if let (None, Some(id)) = (&s.inputs.files, &s.inputs.files_id) {
            s.inputs.files = store.fileset_get(id).ok().flatten();
        }
    }
    let record = req.record.then_some(record);
    let r = crate::remote_cache::export(
        store,
        remote,
        spec,
        cands,
        record,
        &crate::remote::BlobReporter::new(progress, None),
    );
    match r {
        Ok(r) => {
            if !matches!(req.progress, ProgressMode::Quiet | ProgressMode::Json) {
                progress.message(&r.line(&spec.location));
            }
            Ok(())
        }
        Err(e) if spec.ignore_error => {
            progress.message(&format!(
                "WARNING: cache export to {}: {}",
                spec.location,
                kiln_solver::error_chain(&e)
            ));
            Ok(())
        }
        Err(e) => Err(BuildError::CacheExport {
            to: spec.location.to_string(),
            source: Box::new(e),
        }),
    }
}

fn report_step(origin: &kiln_ops::Origin, solved: &Solved<Output>) -> ReportStep {
    let layer = match &solved.output {
        Output::Fs {
            layers,
            added: true,
        } => layers.last().map(|l| ReportLayer {
            digest: l.digest.clone(),
            size: l.size,
        }),
        _ => None,
    };
    ReportStep {
        stage: origin.stage_name.clone(),
        line: origin.range.start.line,
        instruction: origin.instruction.trim().to_string(),
        key: solved.key.clone(),
        cached: solved.cached,
        duration_ms: solved.duration.as_millis() as u64,
        layer,
        miss: None,
    }
}

/// What the recorder needs to know of each vertex (see [`StepMeta`]).
fn step_meta(plan: &Plan, labels: &HashMap<VertexId, StepLabel>) -> HashMap<VertexId, StepMeta> {
    let mut per_stage: HashMap<usize, usize> = HashMap::new();
    let mut out = HashMap::new();
    for id in plan.graph.topo_order() {
        let v = plan.graph.vertex(id);
        let label = labels.get(&id);
        let mut m = StepMeta {
            number: label.map(|l| l.number).unwrap_or(id.index() + 1),
            name: label.map(|l| l.name.clone()).unwrap_or_default(),
            definition: v.digest.to_string(),
            inputs: v.inputs.clone(),
            is_context: matches!(v.op, Op::Context { .. }),
            is_image: matches!(v.op, Op::Image { .. }),
            ..StepMeta::default()
        };
        if let Some(o) = v.origins.first() {
            let i = per_stage.entry(o.stage).or_default();
            *i += 1;
            m.stage = o.stage_name.clone();
            m.position = *i;
            m.line = o.range.start.line;
            m.instruction = o.instruction.trim().to_string();
        } else {
            m.instruction = m.name.clone();
        }
        out.insert(id, m);
    }
    out
}

/// Builds the target stage's config and manifest and stores them as blobs.
fn assemble(
    req: &BuildRequest,
    store: &Store,
    images: &ImageStore,
    plan: &Plan,
    results: &HashMap<VertexId, Solved<Output>>,
) -> Result<BuiltImage> {
    let target = plan.target_stage();
    let mut layers = match target.root {
        Some(r) => results[&r].output.layers().to_vec(),
        None => Vec::new(),
    };
    // Layers the build made (cache hits included) in `--compression`; a base image's
    // keep theirs (BuildKit's default, without force-compression).
    let base_len = base_layer_count(plan, images, target.index)?.min(layers.len());
    let other = layers[base_len..]
        .iter()
        .filter(|l| l.media_type != req.compression.media_type());
    images.ensure_layers(other, None)?;
    crate::worker::layers_in_compression(store, &mut layers[base_len..], req.compression)?;
    let created = match req.source_date_epoch {
        Some(e) => chrono::DateTime::from_timestamp(e, 0),
        None => Some(chrono::Utc::now()),
    };
    let mut history = base_history(plan, images, target.index)?;
    for h in &target.history {
        let added = h
            .vertex
            .and_then(|v| results.get(&v))
            .is_some_and(|s| matches!(s.output, Output::Fs { added: true, .. }));
        history.push(HistoryItem {
            created,
            created_by: h.created_by.clone(),
            comment: Some(h.comment.clone()),
            empty_layer: !added,
        });
    }
    let (os, arch, variant) = (
        target.platform.os().to_owned(),
        target.platform.architecture().to_owned(),
        target.platform.variant().map(str::to_owned),
    );
    let mut config = target.config.clone();
    // `--label` wins over the Dockerfile's LABEL, as with `docker build --label`.
    config
        .labels
        .extend(req.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let spec = ImageSpec {
        platform_os: os,
        platform_arch: arch,
        platform_variant: variant,
        created,
        author: target.author.clone(),
        config,
        history,
        layers: layers.iter().map(LayerDesc::from).collect(),
        annotations: BTreeMap::new(),
    };
    let built = image::build_image(&spec, MediaTypes::Oci)?;
    store.put_blob(&built.config_json)?;
    store.put_blob(&built.manifest_json)?;
    Ok(built)
}

/// The layers of a built image, as the store knows them.
fn results_layers(built: &BuiltImage) -> Vec<crate::snapshots::LayerRef> {
    built
        .layers
        .iter()
        .map(crate::snapshots::LayerRef::from)
        .collect()
}

/// Runs one `--output`.
fn export_one(
    req: &BuildRequest,
    store: &Store,
    built: &BuiltImage,
    out: &OutputSpec,
) -> Result<()> {
    let blob_path = |d: &Digest| store.blob_file(d).map_err(std::io::Error::other);
    match out {
        OutputSpec::Oci(dest) if dest.extension().is_some_and(|e| e == "tar") => {
            exporter::write_oci_archive(built, &blob_path, dest, &req.tags)?
        }
        OutputSpec::Oci(dest) => exporter::write_oci_layout(built, &blob_path, dest, &req.tags)?,
        OutputSpec::Docker(dest) => {
            exporter::write_docker_archive(built, &blob_path, dest, &req.tags)?
        }
        OutputSpec::Local(dest) => export_local(store, built, dest)?,
    }
    Ok(())
}

/// Writes the image's filesystem to a directory (`--output type=local`).
fn export_local(store: &Store, built: &BuiltImage, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    for l in &built.layers {
        let blob = store.open_blob(&l.digest)?;
        let opts = UnpackOptions {
            expected_diff_id: Some(l.diff_id.clone()),
            whiteouts: WhiteoutMode::Apply,
            allow_devices: crate::snapshots::is_root(),
        };
        kiln_layer::unpack_layer(std::io::BufReader::new(blob), dest, &opts).map_err(|source| {
            BuildError::ExportLocal {
                digest: l.digest.clone(),
                dest: dest.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_frontend::convert::{ConvertOptions, NoResolver};

    fn labels(dockerfile: &str, target: &str, multi: bool) -> Vec<String> {
        let (_, df) = kiln_frontend::load(dockerfile).unwrap();
        let target = Platform::parse(target).unwrap();
        let opts = ConvertOptions {
            target_platform: target.clone(),
            build_platform: Platform::parse("linux/amd64").unwrap(),
            ..ConvertOptions::default()
        };
        let plan = convert::convert(&df, &opts, &NoResolver).unwrap();
        let mut l: Vec<StepLabel> = step_labels(&plan, df.stages.len(), multi.then_some(&target))
            .into_values()
            .collect();
        l.sort_by_key(|l| l.number);
        l.into_iter().map(|l| l.name).collect()
    }

    /// The instructions of the file ops [`crate::worker::streamed_chain`] picks.
    fn streamed(dockerfile: &str) -> Vec<String> {
        let (_, df) = kiln_frontend::load(dockerfile).unwrap();
        let plan = convert::convert(&df, &ConvertOptions::default(), &NoResolver).unwrap();
        let mut out: Vec<String> = crate::worker::streamed_chain(&plan.graph)
            .into_iter()
            .map(|id| plan.graph.vertex(id).origins[0].instruction.clone())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn copies_only_later_copies_read_are_streamed() {
        // Each COPY of the final stage but the last (a leaf) is read only by the next.
        let df = "FROM busybox AS a\nRUN make\nFROM busybox\n\
                  COPY --from=a /out /a\nCOPY x /x\nCOPY y /y\n";
        assert_eq!(streamed(df), ["COPY --from=a /out /a", "COPY x /x"]);
        // A RUN needs the snapshot of the COPY below it, and that one of the COPYs below.
        let df = "FROM busybox\nCOPY x /x\nCOPY y /y\nRUN make\nCOPY z /z\n";
        assert!(streamed(df).is_empty(), "{:?}", streamed(df));
        // A stage read by a COPY --from is streamed; one a RUN mounts is not.
        let df = "FROM scratch AS s\nCOPY x /x\nFROM busybox AS m\nCOPY y /y\n\
                  FROM busybox\nRUN --mount=from=m,target=/m make\nCOPY --from=s /x /x\n";
        assert_eq!(streamed(df), ["COPY x /x"]);
    }

    #[test]
    fn step_labels_name_the_platform_in_multi_platform_builds() {
        let single = "FROM busybox\nRUN a\nRUN b\n";
        assert_eq!(
            labels(single, "linux/arm64", false),
            ["[internal] FROM busybox", "[1/2] RUN a", "[2/2] RUN b"]
        );
        assert_eq!(
            labels(single, "linux/arm64", true),
            [
                "[linux/arm64 internal] FROM busybox",
                "[linux/arm64 1/2] RUN a",
                "[linux/arm64 2/2] RUN b"
            ]
        );
        // A cross stage (`FROM --platform=$BUILDPLATFORM`) says what it builds for;
        // stages are named when the Dockerfile has several.
        let cross = "FROM --platform=$BUILDPLATFORM busybox AS build\nRUN make\n\
                     FROM scratch\nCOPY --from=build /out /out\n";
        let l = labels(cross, "linux/arm/v7", true);
        assert!(
            l.contains(&"[linux/amd64->arm/v7 build 1/1] RUN make".to_string()),
            "{l:?}"
        );
        assert!(
            l.contains(&"[linux/arm/v7 stage-1 1/1] COPY --from=build /out /out".to_string()),
            "{l:?}"
        );
        let l = labels(cross, "linux/arm64", false);
        assert!(l.contains(&"[build 1/1] RUN make".to_string()), "{l:?}");
        assert_eq!(
            platform_prefix(
                &Platform::parse("linux/amd64").unwrap(),
                &Platform::parse("windows/amd64").unwrap()
            ),
            "linux/amd64->windows/amd64"
        );
    }
}
