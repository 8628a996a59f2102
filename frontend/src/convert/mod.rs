//! Typed instructions -> build graph (BuildKit's `dockerfile2llb`): ARG/ENV scoping and
//! expansion, stage references, `--target` pruning, and the image config of each stage.
//!
//! As BuildKit splits `convert.go`, one concern per file: `args` (ARG scoping and word
//! expansion), `stage` (stage references, order and dispatch), `dispatch` (one
//! instruction; the metadata ones), `run` and `runmount` (RUN and its `--mount`s),
//! `copy` (COPY and ADD). This file holds the public types, the per-stage state and
//! [`convert`] itself.

mod args;
mod context;
mod copy;
mod dispatch;
pub mod git;
mod run;
mod runmount;
mod stage;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::{HistoryEntry, ImageConfig};
use crate::error::{Diagnostic, Range, quoted};
use crate::instructions::{
    self, AddCmd, ArgDecl, CmdLine, Command, CopyCmd, Dockerfile, Instruction, MountType, RunCmd,
    Stage,
};
use crate::shell::{Env, Lex, ShellError};
use kiln_ops::{
    BuildGraph, Chown, ExecMount, ExecOp, FileAction, FileOp, Network, Op, Origin, Platform,
    VertexId,
};

pub use dispatch::{expand_port_spec, validate_signal};
pub use runmount::exec_mount;

/// Build args that Docker passes to RUN without an `ARG` declaration and keeps out of
/// the history.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The default `PATH` BuildKit gives images that have none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// A base image as the resolver knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Content digest (manifest digest or ChainID), when known.
    pub digest: Option<kiln_oci::Digest>,
    /// Its runtime configuration.
    pub config: ImageConfig,
    /// Its `author`.
    pub author: Option<String>,
    /// Its history entry count and layers are the builder's business; the frontend only
    /// needs the config.
    pub history_len: usize,
    /// The platform its config gives (`os`, `architecture`, `variant`), when it names
    /// one: a base of another platform than the stage's is warned about
    /// (`InvalidBaseImagePlatform`).
    pub platform: Option<Platform>,
}

/// Looks up base images. The builder implements this over its store and registries;
/// `kiln build --dry-run` uses [`NoResolver`].
pub trait ImageResolver {
    /// The image's config, or `None` when it is not known (dry run).
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String>;
}

/// A resolver that knows no images: configs are empty, digests unknown.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoResolver;

impl ImageResolver for NoResolver {
    fn resolve(&self, _: &str, _: &Platform) -> Result<Option<ResolvedImage>, String> {
        Ok(None)
    }
}

/// Options of one build.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// `--build-arg K=V`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// The platform to build for (default: the host's).
    pub target_platform: Platform,
    /// The platform the build runs on.
    pub build_platform: Platform,
    /// `.dockerignore` patterns for the context source.
    pub context_excludes: Vec<String>,
    /// `--network`: the network of a `RUN` without `--network` (or with
    /// `--network=default`); None: the host's, kiln's default.
    pub run_network: Option<Network>,
    /// `--add-host`: entries every `RUN` gets in its `/etc/hosts`.
    pub extra_hosts: Vec<kiln_ops::ExtraHost>,
    /// `--shm-size`: the size of every `RUN`'s `/dev/shm`, in bytes.
    pub shm_size: Option<u64>,
    /// `--build-context NAME=VALUE`, by name as given (see [`NamedContext`]).
    pub named_contexts: BTreeMap<String, NamedContext>,
}

/// A named context (`--build-context NAME=VALUE`, buildx's meaning): it stands for the
/// stage, image or `--from` name NAME wherever the Dockerfile uses it (`FROM NAME`,
/// `COPY --from=NAME`, `RUN --mount=from=NAME`), and replaces a stage named NAME
/// altogether (its instructions are not run), as BuildKit's `dockerfile2llb` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, read as the build context is (files owned 0:0, content cache
    /// keys), less the patterns of its own `.dockerignore`.
    Local {
        /// The directory's `.dockerignore` patterns.
        exclude: Vec<String>,
    },
    /// An image: `docker-image://REF` (REF) or `oci-layout://DIR[:TAG]` (as written).
    Image {
        /// The reference the builder resolves.
        reference: String,
    },
    /// A git repository (`https://host/repo.git#ref:subdir`, `git@host:repo.git`, ...):
    /// its files at the commit, as `ADD` of the repository gives them.
    Git {
        /// The repository, reference and subdir.
        source: kiln_ops::GitSource,
    },
    /// A file over HTTP(S): a tree holding it as `/context`, not unpacked (BuildKit's
    /// `llb.HTTP(url, Filename("context"))` for a named context).
    Http {
        /// The URL.
        url: String,
    },
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
            context_excludes: Vec::new(),
            run_network: None,
            extra_hosts: Vec::new(),
            shm_size: None,
            named_contexts: BTreeMap::new(),
        }
    }
}

/// Where a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`.
    Scratch,
    /// An image (the vertex of its source op).
    Image {
        /// The reference, expanded.
        reference: String,
        /// What the resolver knew.
        resolved: Option<Box<ResolvedImage>>,
    },
    /// An earlier stage.
    Stage(usize),
    /// A named local context (`--build-context NAME=DIR`): its files are the root.
    Context(String),
}

/// The result of converting one stage.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Index in the Dockerfile.
    pub index: usize,
    /// `AS` name.
    pub name: Option<String>,
    /// What it starts from.
    pub base: Base,
    /// Its platform.
    pub platform: Platform,
    /// The final filesystem (`None`: empty).
    pub root: Option<VertexId>,
    /// The image's runtime config at the end of the stage.
    pub config: ImageConfig,
    /// The image's `author`: the last `MAINTAINER`, else the base's.
    pub author: Option<String>,
    /// History added by this stage (the base's own history is the builder's).
    pub history: Vec<HistoryEntry>,
    /// Stages this one needs (FROM, COPY --from, RUN --mount from).
    pub depends_on: Vec<usize>,
    /// The FROM line.
    pub range: Range,
}

/// A converted build: the graph and the stages it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The build graph, pruned to what the target needs.
    pub graph: BuildGraph,
    /// The converted stages needed by the target, in the order they were converted.
    pub stages: Vec<StagePlan>,
    /// Index (into `stages`) of the target stage.
    pub target: usize,
    /// Non-fatal findings (unused build args, ...).
    pub warnings: Vec<String>,
}

impl Plan {
    /// The target stage.
    pub fn target_stage(&self) -> &StagePlan {
        &self.stages[self.target]
    }
}

/// Declared ARGs in declaration order (a re-declared name moves to the end), with their
/// values (`None`: declared without one, so unset for expansion). Lookups and
/// re-declarations cost O(log n), so converting n instructions stays linear-ish.
#[derive(Debug, Clone, Default)]
struct Vars {
    /// Declaration number -> (name, value).
    slots: BTreeMap<u64, (String, Option<String>)>,
    /// Name -> its declaration number in `slots`.
    index: HashMap<String, u64>,
    next: u64,
}

impl Vars {
    /// Declares `name` (again), last.
    fn declare(&mut self, name: String, value: Option<String>) {
        if let Some(old) = self.index.remove(&name) {
            self.slots.remove(&old);
        }
        self.index.insert(name.clone(), self.next);
        self.slots.insert(self.next, (name, value));
        self.next += 1;
    }

    fn is_declared(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The value of a declared name (`None` when not declared or declared without one).
    fn value(&self, name: &str) -> Option<&str> {
        let n = self.index.get(name)?;
        self.slots.get(n)?.1.as_deref()
    }

    /// In declaration order.
    fn iter(&self) -> impl Iterator<Item = &(String, Option<String>)> {
        self.slots.values()
    }
}

impl Env for Vars {
    fn get(&self, name: &str) -> Option<String> {
        self.value(name).map(str::to_owned)
    }
}

/// Per-stage dispatch state.
struct State {
    root: Option<VertexId>,
    config: ImageConfig,
    /// `MAINTAINER`, else the base image's author.
    author: Option<String>,
    /// Key -> position of its (last) `KEY=value` entry in `config.env`. Kept up to date
    /// by [`State::env_set`], so ENV costs O(1) instead of a scan of the environment.
    env_index: HashMap<String, usize>,
    /// ARGs declared in this stage.
    args: Vars,
    history: Vec<HistoryEntry>,
    platform: Platform,
    cmd_set: bool,
}

impl State {
    fn new(
        root: Option<VertexId>,
        config: ImageConfig,
        history: Vec<HistoryEntry>,
        platform: Platform,
    ) -> State {
        let env_index = config
            .env
            .iter()
            .enumerate()
            .map(|(i, kv)| (env_key(kv).to_string(), i))
            .collect();
        State {
            root,
            config,
            author: None,
            env_index,
            args: Vars::default(),
            history,
            platform,
            cmd_set: false,
        }
    }

    /// The value of an ENV variable.
    fn env_get(&self, key: &str) -> Option<&str> {
        let kv = &self.config.env[*self.env_index.get(key)?];
        Some(kv.split_once('=').map_or("", |(_, v)| v))
    }

    /// Sets an ENV variable, replacing it in place if present.
    fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.env_index.get(key) {
            Some(&i) => self.config.env[i] = entry,
            None => {
                self.env_index
                    .insert(key.to_string(), self.config.env.len());
                self.config.env.push(entry);
            }
        }
    }
}

/// The name in a `KEY=value` environment entry (an entry without `=` is all name).
fn env_key(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

/// The variables an instruction's words see: the stage's ARGs, overridden by its ENV.
/// Looked up on demand, not copied per instruction (that made conversion quadratic).
struct StageEnv<'a>(&'a State);

impl Env for StageEnv<'_> {
    fn get(&self, name: &str) -> Option<String> {
        match self.0.env_get(name) {
            Some(v) => Some(v.to_owned()),
            None => self.0.args.get(name),
        }
    }
}

struct Converter<'a> {
    df: &'a Dockerfile,
    opts: &'a ConvertOptions,
    resolver: &'a dyn ImageResolver,
    graph: BuildGraph,
    lex: Lex,
    /// Global ARG values (after build-arg overrides), usable in FROM and re-declared ARGs.
    meta: Vars,
    done: BTreeMap<usize, StagePlan>,
    context: Option<VertexId>,
    /// Named local contexts' source vertices, by name.
    named: BTreeMap<String, VertexId>,
    scratch: Option<VertexId>,
    used_args: BTreeSet<String>,
    /// Non-fatal findings made while converting (BuildKit's lint warnings).
    warnings: Vec<String>,
    /// Bases already warned about as another platform's: (reference, platform).
    platform_warned: BTreeSet<(String, Platform)>,
}

fn shell_err(range: Range, word: &str, e: ShellError) -> Diagnostic {
    Diagnostic::at(range, format!("failed to expand {}: {e}", quoted(word)))
}

/// Converts a typed Dockerfile into a build graph.
pub fn convert(
    df: &Dockerfile,
    opts: &ConvertOptions,
    resolver: &dyn ImageResolver,
) -> Result<Plan, Diagnostic> {
    let mut c = Converter {
        df,
        opts,
        resolver,
        graph: BuildGraph::default(),
        lex: Lex::new(df.escape),
        meta: Vars::default(),
        done: BTreeMap::new(),
        context: None,
        named: BTreeMap::new(),
        scratch: None,
        used_args: BTreeSet::new(),
        warnings: Vec::new(),
        platform_warned: BTreeSet::new(),
    };
    c.init_meta_args()?;
    // BuildKit checks every stage's COPY --from, needed by the target or not.
    for stage in &df.stages {
        for cmd in &stage.commands {
            if let Instruction::Copy(CopyCmd { from: Some(f), .. }) = &cmd.instruction {
                c.copy_from_name(f, cmd.range)?;
            }
        }
    }
    let target = c.target_index()?;
    let order = c.stage_order(target)?;
    for idx in &order {
        let plan = c.dispatch_stage(&df.stages[*idx])?;
        c.done.insert(*idx, plan);
    }
    let mut warnings = std::mem::take(&mut c.warnings);
    let unused: Vec<&String> = opts
        .build_args
        .keys()
        .filter(|k| !c.used_args.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .collect();
    if !unused.is_empty() {
        let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        warnings.push(format!(
            "one or more build args were not consumed: [{}]",
            names.join(" ")
        ));
    }
    // Prune to what the target needs and renumber the stages' vertices.
    let mut stages: Vec<StagePlan> = order.iter().map(|i| c.done[i].clone()).collect();
    let mut roots: Vec<VertexId> = Vec::new();
    for s in &stages {
        roots.extend(s.root);
        roots.extend(s.history.iter().filter_map(|h| h.vertex));
    }
    let (graph, new_roots) = c.graph.prune(&roots);
    let map: BTreeMap<VertexId, VertexId> = roots.iter().copied().zip(new_roots).collect();
    for s in &mut stages {
        s.root = s.root.map(|r| map[&r]);
        for h in &mut s.history {
            h.vertex = h.vertex.map(|v| map[&v]);
        }
    }
    let target = stages
        .iter()
        .position(|s| s.index == target)
        .expect("target converted");
    Ok(Plan {
        graph,
        stages,
        target,
        warnings,
    })
}

impl Converter<'_> {
    pub(super) fn origin(&self, stage: &Stage, cmd: &Command) -> Origin {
        Origin {
            stage: stage.index,
            stage_name: stage_label(stage),
            instruction: cmd.original.clone(),
            range: cmd.range,
        }
    }

    pub(super) fn history(&self, st: &mut State, created_by: String, vertex: Option<VertexId>) {
        st.history.push(HistoryEntry {
            created_by,
            comment: HISTORY_COMMENT.to_string(),
            vertex,
        });
    }

    pub(super) fn shell(st: &State) -> Vec<String> {
        st.config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()])
    }

    pub(super) fn with_shell(st: &State, cmd: &CmdLine) -> Vec<String> {
        if cmd.prepend_shell {
            let mut v = Self::shell(st);
            v.extend(cmd.args.iter().cloned());
            v
        } else {
            cmd.args.clone()
        }
    }

    pub(super) fn resolve_path(st: &State, path: &str) -> String {
        let keep_slash = path.ends_with('/') && path.len() > 1;
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            let wd = if st.config.working_dir.is_empty() {
                "/"
            } else {
                &st.config.working_dir
            };
            format!("{}/{}", wd.trim_end_matches('/'), path)
        };
        let mut cleaned = clean_path(&joined);
        if keep_slash && cleaned != "/" {
            cleaned.push('/');
        }
        cleaned
    }
}

fn stage_label(stage: &Stage) -> String {
    stage
        .name
        .clone()
        .unwrap_or_else(|| stage.index.to_string())
}

/// `[a b c]`, as Go prints a string slice.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// `["a","b"]`.
fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

/// Lexically cleans an absolute path (`/a/./b/../c` -> `/a/c`).
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests;
