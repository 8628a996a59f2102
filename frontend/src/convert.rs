//! Typed instructions -> build graph (BuildKit's `dockerfile2llb`): ARG/ENV scoping and
//! expansion, stage references, `--target` pruning, and the image config of each stage.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::DiGraph;

use crate::config::{HistoryEntry, ImageConfig};
use crate::error::{Diagnostic, Range, quoted};
use crate::graph::{
    BuildGraph, Chown, ExecMount, ExecOp, FileAction, FileOp, Network, Op, Origin, Platform,
    VertexId,
};
use crate::instructions::{
    self, AddCmd, ArgDecl, CmdLine, Command, CopyCmd, Dockerfile, Instruction, MountType, RunCmd,
    Stage,
};
use crate::shell::{Env, Lex, ShellError};

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
    pub digest: Option<String>,
    /// Its configuration.
    pub config: ImageConfig,
    /// Its history entry count and layers are the builder's business; the frontend only
    /// needs the config.
    pub history_len: usize,
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
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: Platform::host(),
            build_platform: Platform::host(),
            context_excludes: Vec::new(),
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
    /// The image config at the end of the stage.
    pub config: ImageConfig,
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
    scratch: Option<VertexId>,
    used_args: BTreeSet<String>,
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
        scratch: None,
        used_args: BTreeSet::new(),
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
    let mut warnings = Vec::new();
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
    fn platform_args(&self) -> Vars {
        let t = &self.opts.target_platform;
        let b = &self.opts.build_platform;
        [
            ("TARGETPLATFORM", t.to_string()),
            ("TARGETOS", t.os().to_owned()),
            ("TARGETARCH", t.architecture().to_owned()),
            ("TARGETVARIANT", t.variant().unwrap_or_default().to_owned()),
            ("BUILDPLATFORM", b.to_string()),
            ("BUILDOS", b.os().to_owned()),
            ("BUILDARCH", b.architecture().to_owned()),
            ("BUILDVARIANT", b.variant().unwrap_or_default().to_owned()),
        ]
        .into_iter()
        .fold(Vars::default(), |mut vars, (k, v)| {
            vars.declare(k.to_string(), Some(v));
            vars
        })
    }

    fn init_meta_args(&mut self) -> Result<(), Diagnostic> {
        let mut meta = self.platform_args();
        for (decl, range) in &self.df.meta_args {
            let value = self.arg_value(decl, &meta, *range)?;
            self.used_args.insert(decl.key.clone());
            meta.declare(decl.key.clone(), value);
        }
        self.meta = meta;
        Ok(())
    }

    /// The value of an `ARG` declaration: the build arg if given, else its default
    /// (expanded in `scope`), else the global value for a re-declared global.
    fn arg_value(
        &self,
        decl: &ArgDecl,
        scope: &dyn Env,
        range: Range,
    ) -> Result<Option<String>, Diagnostic> {
        if let Some(v) = self.opts.build_args.get(&decl.key) {
            return Ok(Some(v.clone()));
        }
        match &decl.value {
            Some(default) => {
                let v = self
                    .lex
                    .process_word(default, scope)
                    .map_err(|e| shell_err(range, default, e))?;
                Ok(Some(v))
            }
            None => Ok(self.meta.value(&decl.key).map(str::to_owned)),
        }
    }

    /// The stage or image `COPY --from` names. As in BuildKit (dockerfile frontend 1.18
    /// and later), it is not expanded: stage-local ARGs would make the stage graph depend
    /// on dispatch, so any variable is refused with BuildKit's error, naming the value.
    fn copy_from_name<'f>(&self, from: &'f str, range: Range) -> Result<&'f str, Diagnostic> {
        let expanded = self
            .lex
            .process_word(from, &Vars::default())
            .map_err(|e| shell_err(range, from, e))?;
        if expanded != from {
            return Err(Diagnostic::at(
                range,
                format!(
                    "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround (--from={})",
                    quoted(from)
                ),
            ));
        }
        Ok(from)
    }

    fn expand_meta(&self, word: &str, range: Range) -> Result<String, Diagnostic> {
        self.lex
            .process_word(word, &self.meta)
            .map_err(|e| shell_err(range, word, e))
    }

    fn find_stage(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.df
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    fn target_index(&self) -> Result<usize, Diagnostic> {
        match &self.opts.target {
            None => Ok(self.df.stages.len() - 1),
            Some(t) => self.find_stage(t).ok_or_else(|| {
                let names: Vec<&str> = self
                    .df
                    .stages
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                Diagnostic::new(format!(
                    "target stage {t:?} could not be found (stages: {})",
                    if names.is_empty() {
                        "none named".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            }),
        }
    }

    /// A stage reference in `--from` or a mount's `from`: a stage name, a stage index,
    /// or else an image.
    fn stage_ref(
        &self,
        from: &str,
        current: usize,
        range: Range,
    ) -> Result<Option<usize>, Diagnostic> {
        if let Some(i) = self.find_stage(from) {
            return Ok(Some(i));
        }
        if !from.is_empty() && from.bytes().all(|b| b.is_ascii_digit()) {
            return match from.parse::<usize>() {
                Ok(i) if i < self.df.stages.len() && i != current => Ok(Some(i)),
                Ok(i) if i == current => Err(Diagnostic::at(
                    range,
                    format!(
                        "circular dependency detected on stage: {}",
                        stage_label(&self.df.stages[i])
                    ),
                )),
                _ => Err(Diagnostic::at(
                    range,
                    format!(
                        "invalid stage index {from}: the Dockerfile has {} stages",
                        self.df.stages.len()
                    ),
                )),
            };
        }
        Ok(None)
    }

    /// Stage dependencies, known before dispatch (references expanded with global ARGs).
    fn stage_deps(&self, stage: &Stage) -> Result<Vec<usize>, Diagnostic> {
        let mut deps = Vec::new();
        let base = self.expand_meta(&stage.base, stage.range)?;
        if let Some(i) = self.find_stage(&base).filter(|i| *i < stage.index) {
            deps.push(i);
        }
        for cmd in &stage.commands {
            let froms: Vec<String> = match &cmd.instruction {
                Instruction::Copy(CopyCmd { from: Some(f), .. }) => {
                    vec![self.copy_from_name(f, cmd.range)?.to_string()]
                }
                Instruction::Run(run) => run
                    .mounts
                    .iter()
                    .filter_map(|m| instructions::parse_mount(m).ok()?.from)
                    .map(|f| self.expand_meta(&f, cmd.range))
                    .collect::<Result<_, _>>()?,
                _ => Vec::new(),
            };
            for f in froms {
                if let Some(i) = self.stage_ref(&f, stage.index, cmd.range)? {
                    if i == stage.index {
                        return Err(Diagnostic::at(
                            cmd.range,
                            format!(
                                "circular dependency detected on stage: {}",
                                stage_label(stage)
                            ),
                        ));
                    }
                    deps.push(i);
                }
            }
        }
        deps.sort_unstable();
        deps.dedup();
        Ok(deps)
    }

    /// The stages the target needs, dependencies first.
    fn stage_order(&self, target: usize) -> Result<Vec<usize>, Diagnostic> {
        let mut g: DiGraph<usize, ()> = DiGraph::new();
        let mut nodes = BTreeMap::new();
        let mut todo = vec![target];
        while let Some(s) = todo.pop() {
            if nodes.contains_key(&s) {
                continue;
            }
            let n = g.add_node(s);
            nodes.insert(s, n);
            todo.extend(self.stage_deps(&self.df.stages[s])?);
        }
        for (&s, &n) in &nodes {
            for d in self.stage_deps(&self.df.stages[s])? {
                g.add_edge(nodes[&d], n, ());
            }
        }
        match petgraph::algo::toposort(&g, None) {
            Ok(order) => Ok(order.into_iter().map(|n| g[n]).collect()),
            Err(cycle) => {
                let stage = &self.df.stages[g[cycle.node_id()]];
                Err(Diagnostic::at(
                    stage.range,
                    format!(
                        "circular dependency detected on stage: {}",
                        stage_label(stage)
                    ),
                ))
            }
        }
    }

    fn scratch(&mut self) -> VertexId {
        *self.scratch.get_or_insert_with(|| {
            self.graph.add(
                Op::File(FileOp {
                    has_base: false,
                    actions: Vec::new(),
                }),
                Vec::new(),
                None,
            )
        })
    }

    fn context(&mut self) -> VertexId {
        if let Some(c) = self.context {
            return c;
        }
        let id = self.graph.add(
            Op::Context {
                name: "context".to_string(),
                exclude: self.opts.context_excludes.clone(),
            },
            Vec::new(),
            None,
        );
        self.context = Some(id);
        id
    }

    fn image(
        &mut self,
        reference: &str,
        platform: &Platform,
        range: Range,
    ) -> Result<(VertexId, Option<ResolvedImage>), Diagnostic> {
        let resolved = self.resolver.resolve(reference, platform).map_err(|e| {
            Diagnostic::at(range, format!("failed to resolve image {reference:?}: {e}"))
        })?;
        let id = self.graph.add(
            Op::Image {
                reference: reference.to_string(),
                platform: platform.clone(),
                digest: resolved.as_ref().and_then(|r| r.digest.clone()),
            },
            Vec::new(),
            None,
        );
        Ok((id, resolved))
    }

    fn dispatch_stage(&mut self, stage: &Stage) -> Result<StagePlan, Diagnostic> {
        let platform = match &stage.platform {
            Some(p) => {
                let p = self.expand_meta(p, stage.range)?;
                Platform::parse(&p).map_err(|e| Diagnostic::at(stage.range, e.to_string()))?
            }
            None => self.opts.target_platform.clone(),
        };
        let base_name = self.expand_meta(&stage.base, stage.range)?;
        if base_name.is_empty() {
            return Err(Diagnostic::at(
                stage.range,
                format!("base name ({}) should not be blank", stage.base),
            ));
        }
        let mut depends_on = self.stage_deps(stage)?;
        let (base, root, config, mut history) =
            match self.find_stage(&base_name).filter(|i| *i < stage.index) {
                Some(i) => {
                    let prev = &self.done[&i];
                    (
                        Base::Stage(i),
                        prev.root,
                        prev.config.clone(),
                        prev.history.clone(),
                    )
                }
                None if base_name.eq_ignore_ascii_case("scratch") => {
                    (Base::Scratch, None, ImageConfig::default(), Vec::new())
                }
                None => {
                    let (id, resolved) = self.image(&base_name, &platform, stage.range)?;
                    let config = resolved
                        .as_ref()
                        .map(|r| r.config.clone())
                        .unwrap_or_default();
                    (
                        Base::Image {
                            reference: base_name.clone(),
                            resolved: resolved.map(Box::new),
                        },
                        Some(id),
                        config,
                        Vec::new(),
                    )
                }
            };
        if !matches!(base, Base::Stage(_)) {
            history.clear();
        }
        let mut st = State::new(root, config, history, platform.clone());
        if st.env_get("PATH").is_none() {
            st.env_set("PATH", DEFAULT_PATH);
        }
        // ONBUILD triggers of the base run first, and are not inherited further.
        let triggers = std::mem::take(&mut st.config.on_build);
        for trigger in triggers {
            let ast = crate::parser::parse(&trigger).map_err(|e| {
                Diagnostic::at(
                    stage.range,
                    format!(
                        "invalid ONBUILD trigger {trigger:?} in base image: {}",
                        e.message
                    ),
                )
            })?;
            for node in &ast.children {
                let mut cmd = instructions::parse_command(&ast, node).map_err(|e| {
                    Diagnostic::at(
                        stage.range,
                        format!(
                            "invalid ONBUILD trigger {trigger:?} in base image: {}",
                            e.message
                        ),
                    )
                })?;
                cmd.range = stage.range;
                self.dispatch(stage, &mut st, &cmd)?;
            }
        }
        for cmd in &stage.commands {
            self.dispatch(stage, &mut st, cmd)?;
        }
        depends_on.sort_unstable();
        depends_on.dedup();
        Ok(StagePlan {
            index: stage.index,
            name: stage.name.clone(),
            base,
            platform,
            root: st.root,
            config: st.config,
            history: st.history,
            depends_on,
            range: stage.range,
        })
    }

    fn expand(&self, st: &State, word: &str, range: Range) -> Result<String, Diagnostic> {
        self.lex
            .process_word(word, &StageEnv(st))
            .map_err(|e| shell_err(range, word, e))
    }

    fn origin(&self, stage: &Stage, cmd: &Command) -> Origin {
        Origin {
            stage: stage.index,
            stage_name: stage_label(stage),
            instruction: cmd.original.clone(),
            range: cmd.range,
        }
    }

    fn history(&self, st: &mut State, created_by: String, vertex: Option<VertexId>) {
        st.history.push(HistoryEntry {
            created_by,
            comment: HISTORY_COMMENT.to_string(),
            vertex,
        });
    }

    fn shell(st: &State) -> Vec<String> {
        st.config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()])
    }

    fn with_shell(st: &State, cmd: &CmdLine) -> Vec<String> {
        if cmd.prepend_shell {
            let mut v = Self::shell(st);
            v.extend(cmd.args.iter().cloned());
            v
        } else {
            cmd.args.clone()
        }
    }

    fn resolve_path(st: &State, path: &str) -> String {
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

    fn chown(
        &self,
        st: &State,
        spec: &Option<String>,
        range: Range,
    ) -> Result<Option<Chown>, Diagnostic> {
        let Some(spec) = spec else { return Ok(None) };
        let spec = self.expand(st, spec, range)?;
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (spec.clone(), None),
        };
        if user.is_empty() {
            return Err(Diagnostic::at(
                range,
                format!("invalid --chown value {spec:?}: no user"),
            ));
        }
        Ok(Some(Chown { user, group }))
    }

    fn dispatch(&mut self, stage: &Stage, st: &mut State, cmd: &Command) -> Result<(), Diagnostic> {
        let range = cmd.range;
        match &cmd.instruction {
            Instruction::Env(pairs) => {
                // Every pair sees the environment from before the instruction.
                let env = StageEnv(st);
                let mut expanded = Vec::new();
                for p in pairs {
                    let k = self
                        .lex
                        .process_word(&p.key, &env)
                        .map_err(|e| shell_err(range, &p.key, e))?;
                    let v = self
                        .lex
                        .process_word(&p.value, &env)
                        .map_err(|e| shell_err(range, &p.value, e))?;
                    expanded.push((k, v));
                }
                let mut text = Vec::new();
                for (k, v) in expanded {
                    st.env_set(&k, &v);
                    text.push(format!("{k}={v}"));
                }
                self.history(st, format!("ENV {}", text.join(" ")), None);
            }
            Instruction::Label(pairs) => {
                let mut text = Vec::new();
                for p in pairs {
                    let k = self.expand(st, &p.key, range)?;
                    let v = self.expand(st, &p.value, range)?;
                    text.push(format!("{k}={v}"));
                    st.config.labels.insert(k, v);
                }
                self.history(st, format!("LABEL {}", text.join(" ")), None);
            }
            Instruction::Maintainer(m) => {
                st.config.author = Some(m.clone());
                self.history(st, format!("MAINTAINER {m}"), None);
            }
            Instruction::Arg(decls) => {
                let mut text = Vec::new();
                for d in decls {
                    let value = self.arg_value(d, &StageEnv(st), range)?;
                    self.used_args.insert(d.key.clone());
                    text.push(match &value {
                        Some(v) => format!("{}={v}", d.key),
                        None => d.key.clone(),
                    });
                    st.args.declare(d.key.clone(), value);
                }
                self.history(st, format!("ARG {}", text.join(" ")), None);
            }
            Instruction::Workdir(w) => {
                let w = self.expand(st, w, range)?;
                let path = Self::resolve_path(st, &w);
                let path = if path.len() > 1 {
                    path.trim_end_matches('/').to_string()
                } else {
                    path
                };
                st.config.working_dir = path.clone();
                let chown = (!st.config.user.is_empty()).then(|| {
                    let (u, g) = match st.config.user.split_once(':') {
                        Some((u, g)) => (u.to_string(), Some(g.to_string())),
                        None => (st.config.user.clone(), None),
                    };
                    Chown { user: u, group: g }
                });
                let (has_base, inputs) = match st.root {
                    Some(r) => (true, vec![r]),
                    None => (false, Vec::new()),
                };
                let id = self.graph.add(
                    Op::File(FileOp {
                        has_base,
                        actions: vec![FileAction::Mkdir {
                            path: path.clone(),
                            mode: 0o755,
                            chown,
                        }],
                    }),
                    inputs,
                    Some(self.origin(stage, cmd)),
                );
                st.root = Some(id);
                self.history(st, format!("WORKDIR {path}"), Some(id));
            }
            Instruction::User(u) => {
                let u = self.expand(st, u, range)?;
                st.config.user = u.clone();
                self.history(st, format!("USER {u}"), None);
            }
            Instruction::Volume(vols) => {
                let mut out = Vec::new();
                for v in vols {
                    let v = self.expand(st, v, range)?;
                    if v.trim().is_empty() {
                        return Err(Diagnostic::at(
                            range,
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    st.config.volumes.insert(v.clone());
                    out.push(v);
                }
                self.history(st, format!("VOLUME {}", go_list(&out)), None);
            }
            Instruction::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports {
                    let p = self.expand(st, p, range)?;
                    for port in expand_port_spec(&p).map_err(|m| Diagnostic::at(range, m))? {
                        st.config.exposed_ports.insert(port.clone());
                        out.push(port);
                    }
                }
                let map: Vec<String> = out.iter().map(|p| format!("{p}:{{}}")).collect();
                self.history(st, format!("EXPOSE map[{}]", map.join(" ")), None);
            }
            Instruction::StopSignal(s) => {
                let s = self.expand(st, s, range)?;
                validate_signal(&s).map_err(|m| Diagnostic::at(range, m))?;
                st.config.stop_signal = Some(s.clone());
                self.history(st, format!("STOPSIGNAL {s}"), None);
            }
            Instruction::Healthcheck(h) => {
                st.config.healthcheck = Some(h.clone());
                self.history(st, format!("HEALTHCHECK &{{{}}}", go_list(&h.test)), None);
            }
            Instruction::Shell(sh) => {
                st.config.shell = Some(sh.clone());
                self.history(st, format!("SHELL {}", go_list(sh)), None);
            }
            Instruction::Onbuild(expr) => {
                st.config.on_build.push(expr.clone());
                self.history(st, format!("ONBUILD {expr}"), None);
            }
            Instruction::Cmd(c) => {
                let args = Self::with_shell(st, c);
                self.history(st, format!("CMD {}", json_list(&args)), None);
                st.config.cmd = Some(args);
                st.cmd_set = true;
            }
            Instruction::Entrypoint(c) => {
                let args = Self::with_shell(st, c);
                self.history(st, format!("ENTRYPOINT {}", json_list(&args)), None);
                st.config.entrypoint = Some(args);
                // Docker: a new ENTRYPOINT resets a CMD inherited from the base.
                if !st.cmd_set {
                    st.config.cmd = None;
                }
            }
            Instruction::Run(run) => self.dispatch_run(stage, st, cmd, run)?,
            Instruction::Copy(copy) => self.dispatch_copy(stage, st, cmd, copy)?,
            Instruction::Add(add) => self.dispatch_add(stage, st, cmd, add)?,
        }
        Ok(())
    }

    fn dispatch_run(
        &mut self,
        stage: &Stage,
        st: &mut State,
        cmd: &Command,
        run: &RunCmd,
    ) -> Result<(), Diagnostic> {
        let range = cmd.range;
        // A lone here-document that starts with `#!`: (name, body), run as a file.
        let mut script = None;
        let mut args = if run.files.is_empty() || !run.cmd.prepend_shell {
            Self::with_shell(st, &run.cmd)
        } else {
            let line = run.cmd.args.first().cloned().unwrap_or_default();
            let mut sh = Self::shell(st);
            let lone = run.files.len() == 1
                && crate::parser::parse_heredoc(line.trim())
                    .ok()
                    .flatten()
                    .is_some();
            let body = run.files[0].body();
            if lone && body.starts_with("#!") && st.platform.os() != "windows" {
                // As BuildKit: the body becomes an executable file mounted read-only
                // under /dev/pipes/, and the shell runs that file, so the kernel hands
                // it to the interpreter its `#!` line names.
                let name = run.files[0].name.clone();
                sh.push(format!("{HEREDOC_PIPES}/{name}"));
                script = Some((name, body));
            } else if lone {
                // `RUN <<EOF` alone: the body is the script (BuildKit runs `sh -c BODY`).
                sh.push(body);
            } else {
                // Hand the whole here-document to the shell, which applies the quoting
                // and `<<-` rules itself.
                let mut script = line;
                for f in &run.files {
                    script.push('\n');
                    script.push_str(&f.content);
                    script.push_str(&f.name);
                }
                script.push('\n');
                sh.push(script);
            }
            sh
        };
        if args.is_empty() {
            return Err(Diagnostic::at(range, "RUN has an empty command"));
        }
        args.shrink_to_fit();
        // Environment: the image's ENV, then stage ARGs that ENV does not override, then
        // proxy build args (passed without declaration).
        let mut env = st.config.env.clone();
        let mut arg_env = Vec::new();
        for (k, v) in st.args.iter() {
            if let Some(v) = v {
                if st.env_get(k).is_none() {
                    env.push(format!("{k}={v}"));
                    arg_env.push(format!("{k}={v}"));
                }
            }
        }
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(*p) {
                if !st.args.is_declared(p) {
                    env.push(format!("{p}={v}"));
                }
            }
        }
        let mut inputs = vec![match st.root {
            Some(r) => r,
            None => self.scratch(),
        }];
        let mut mounts = Vec::new();
        if let Some((name, data)) = script {
            let file = self.graph.add(
                Op::File(FileOp {
                    has_base: false,
                    actions: vec![FileAction::Mkfile {
                        path: format!("/{name}"),
                        mode: 0o755,
                        data,
                        chown: None,
                    }],
                }),
                Vec::new(),
                None,
            );
            inputs.push(file);
            mounts.push(ExecMount {
                spec: heredoc_pipes_mount(),
                input: Some(inputs.len() - 1),
            });
        }
        for spec in &run.mounts {
            let spec = self.expand(st, spec, range)?;
            let m = instructions::parse_mount(&spec).map_err(|e| Diagnostic::at(range, e))?;
            let input = match (&m.kind, &m.from) {
                (MountType::Bind | MountType::Cache, Some(from)) => {
                    let src = match self.stage_ref(from, stage.index, range)? {
                        // A stage the dependency scan did not see (its name came from a
                        // stage-local ARG) must not be mounted as an empty tree.
                        Some(i) => match self.done.get(&i) {
                            Some(p) => p.root,
                            None => {
                                return Err(Diagnostic::at(
                                    range,
                                    format!(
                                        "cannot mount from stage {from:?} to {:?}, stage needs to be defined before current command",
                                        m.target
                                    ),
                                ));
                            }
                        },
                        None => Some(self.image(from, &st.platform, range)?.0),
                    };
                    let src = match src {
                        Some(s) => s,
                        None => self.scratch(),
                    };
                    inputs.push(src);
                    Some(inputs.len() - 1)
                }
                (MountType::Bind, None) => {
                    let ctx = self.context();
                    inputs.push(ctx);
                    Some(inputs.len() - 1)
                }
                _ => None,
            };
            mounts.push(ExecMount { spec: m, input });
        }
        let op = ExecOp {
            args: args.clone(),
            env,
            cwd: if st.config.working_dir.is_empty() {
                "/".to_string()
            } else {
                st.config.working_dir.clone()
            },
            user: st.config.user.clone(),
            network: if run.network.as_deref() == Some("none") {
                Network::None
            } else {
                Network::Host
            },
            insecure: run.security.as_deref() == Some("insecure"),
            mounts,
        };
        let id = self
            .graph
            .add(Op::Exec(op), inputs, Some(self.origin(stage, cmd)));
        st.root = Some(id);
        let prefix = if arg_env.is_empty() {
            String::new()
        } else {
            format!("|{} {} ", arg_env.len(), arg_env.join(" "))
        };
        let shown = if run.cmd.prepend_shell {
            args.join(" ")
        } else {
            json_list(&args)
        };
        self.history(st, format!("RUN {prefix}{shown} # buildkit"), Some(id));
        Ok(())
    }

    /// Applies file actions to the stage root (or, with `--link`, to an empty tree merged
    /// on top).
    fn file_op(&mut self, stage: &Stage, st: &mut State, cmd: &Command, step: FileStep) {
        let FileStep {
            link,
            actions,
            sources,
            created_by,
        } = step;
        let origin = Some(self.origin(stage, cmd));
        let id = match (link, st.root) {
            (false, Some(root)) => {
                let mut inputs = vec![root];
                inputs.extend(sources);
                self.graph.add(
                    Op::File(FileOp {
                        has_base: true,
                        actions,
                    }),
                    inputs,
                    origin,
                )
            }
            (true, Some(root)) => {
                let layer = self.graph.add(
                    Op::File(FileOp {
                        has_base: false,
                        actions: shift_inputs(actions),
                    }),
                    sources,
                    origin.clone(),
                );
                let merged = self.graph.add(Op::Merge, vec![root, layer], origin);
                st.root = Some(merged);
                self.history(st, created_by, Some(layer));
                return;
            }
            (_, None) => self.graph.add(
                Op::File(FileOp {
                    has_base: false,
                    actions: shift_inputs(actions),
                }),
                sources,
                origin,
            ),
        };
        st.root = Some(id);
        self.history(st, created_by, Some(id));
    }

    fn copy_source(
        &mut self,
        stage: &Stage,
        st: &State,
        from: Option<&str>,
        range: Range,
    ) -> Result<VertexId, Diagnostic> {
        let Some(from) = from else {
            return Ok(self.context());
        };
        // Checked again: ONBUILD triggers come here without the check in `convert`.
        let from = self.copy_from_name(from, range)?;
        match self.stage_ref(from, stage.index, range)? {
            Some(i) => {
                let Some(plan) = self.done.get(&i) else {
                    // Only an ONBUILD trigger can get here (stage_order converted every
                    // stage a COPY of this Dockerfile names); BuildKit's words.
                    return Err(Diagnostic::at(
                        range,
                        format!(
                            "cannot copy from stage {from:?}, it needs to be defined before current stage {:?}",
                            stage_label(stage)
                        ),
                    ));
                };
                Ok(match plan.root {
                    Some(r) => r,
                    None => self.scratch(),
                })
            }
            None => {
                if from.is_empty() {
                    return Err(Diagnostic::at(
                        range,
                        "--from requires a stage name, index or image",
                    ));
                }
                Ok(self.image(from, &st.platform, range)?.0)
            }
        }
    }

    fn dispatch_copy(
        &mut self,
        stage: &Stage,
        st: &mut State,
        cmd: &Command,
        c: &CopyCmd,
    ) -> Result<(), Diagnostic> {
        let range = cmd.range;
        let source = self.copy_source(stage, st, c.from.as_deref(), range)?;
        let chown = self.chown(st, &c.chown, range)?;
        let chmod = c
            .chmod
            .as_ref()
            .map(|m| self.expand(st, m, range))
            .transpose()?;
        if let Some(m) = &chmod {
            instructions::validate_chmod(m).map_err(|e| Diagnostic::at(range, e))?;
        }
        let dest_raw = self.expand(st, &c.paths.dest, range)?;
        let dest = Self::resolve_path(st, &dest_raw);
        let mut actions = Vec::new();
        let mut srcs = Vec::new();
        for s in &c.paths.sources {
            let s = self.expand(st, s, range)?;
            srcs.push(s.clone());
            actions.push(FileAction::Copy {
                input: 1,
                src: s,
                dest: dest.clone(),
                chown: chown.clone(),
                chmod: chmod.clone(),
                unpack: false,
                parents: c.parents,
                exclude: c.exclude.clone(),
            });
        }
        for doc in &c.paths.source_contents {
            let data = if doc.expand {
                self.expand_heredoc(st, &doc.body(), range)?
            } else {
                doc.body()
            };
            let path = if dest.ends_with('/') {
                format!("{dest}{}", doc.name)
            } else {
                dest.clone()
            };
            srcs.push(format!("<<{}", doc.name));
            let mode = match chmod.as_deref().map(|m| u32::from_str_radix(m, 8)) {
                Some(Ok(m)) => m,
                _ => 0o644,
            };
            actions.push(FileAction::Mkfile {
                path,
                mode,
                data,
                chown: chown.clone(),
            });
        }
        let sources = if c.paths.sources.is_empty() {
            Vec::new()
        } else {
            vec![source]
        };
        let created_by = format!(
            "COPY {}{} {} # buildkit",
            flag_text(c.from.as_deref(), &c.chown, &c.chmod, c.link),
            srcs.join(" "),
            dest_raw
        );
        self.file_op(
            stage,
            st,
            cmd,
            FileStep {
                link: c.link,
                actions,
                sources,
                created_by,
            },
        );
        Ok(())
    }

    fn expand_heredoc(&self, st: &State, body: &str, range: Range) -> Result<String, Diagnostic> {
        // Expand variables but keep quotes: the body is text, not a shell word.
        let mut lex = Lex::new(self.df.escape);
        lex.raw_quotes = true;
        lex.skip_unset_env = false;
        lex.process_word(body, &StageEnv(st))
            .map_err(|e| shell_err(range, body, e))
    }

    fn dispatch_add(
        &mut self,
        stage: &Stage,
        st: &mut State,
        cmd: &Command,
        a: &AddCmd,
    ) -> Result<(), Diagnostic> {
        let range = cmd.range;
        let chown = self.chown(st, &a.chown, range)?;
        let chmod = a
            .chmod
            .as_ref()
            .map(|m| self.expand(st, m, range))
            .transpose()?;
        let dest_raw = self.expand(st, &a.paths.dest, range)?;
        let dest = Self::resolve_path(st, &dest_raw);
        // Several sources to a destination without a trailing `/` are not an error: as
        // in BuildKit (unlike the classic builder), each is copied on its own, into the
        // destination when it is a directory, to that name otherwise.
        let mut actions = Vec::new();
        let mut srcs = Vec::new();
        let mut uses_context = false;
        for s in &a.paths.sources {
            let s = self.expand(st, s, range)?;
            srcs.push(s.clone());
            if instructions::is_git(&s) {
                return Err(Diagnostic::at(
                    range,
                    format!("ADD of a git repository ({s}) is not supported by kiln yet"),
                ));
            }
            if instructions::is_url(&s) {
                actions.push(FileAction::Download {
                    url: s,
                    dest: dest.clone(),
                    checksum: a.checksum.clone(),
                    chown: chown.clone(),
                    chmod: chmod.clone(),
                });
            } else {
                uses_context = true;
                actions.push(FileAction::Copy {
                    input: 1,
                    src: s,
                    dest: dest.clone(),
                    chown: chown.clone(),
                    chmod: chmod.clone(),
                    unpack: a.unpack.unwrap_or(true),
                    parents: false,
                    exclude: a.exclude.clone(),
                });
            }
        }
        for doc in &a.paths.source_contents {
            let data = if doc.expand {
                self.expand_heredoc(st, &doc.body(), range)?
            } else {
                doc.body()
            };
            let path = if dest.ends_with('/') {
                format!("{dest}{}", doc.name)
            } else {
                dest.clone()
            };
            srcs.push(format!("<<{}", doc.name));
            actions.push(FileAction::Mkfile {
                path,
                mode: 0o644,
                data,
                chown: chown.clone(),
            });
        }
        let sources = if uses_context {
            vec![self.context()]
        } else {
            Vec::new()
        };
        let created_by = format!(
            "ADD {}{} {} # buildkit",
            flag_text(None, &a.chown, &a.chmod, a.link),
            srcs.join(" "),
            dest_raw
        );
        self.file_op(
            stage,
            st,
            cmd,
            FileStep {
                link: a.link,
                actions,
                sources,
                created_by,
            },
        );
        Ok(())
    }
}

/// Where a `RUN <<EOF` whose body starts with `#!` finds its body as a file (BuildKit's
/// directory).
const HEREDOC_PIPES: &str = "/dev/pipes";

/// The read-only bind mount of the tree holding a `#!` here-document at
/// [`HEREDOC_PIPES`].
fn heredoc_pipes_mount() -> instructions::Mount {
    instructions::Mount {
        kind: MountType::Bind,
        target: HEREDOC_PIPES.to_string(),
        source: Some("/".to_string()),
        from: None,
        readonly: true,
        id: None,
        sharing: instructions::Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
    }
}

/// The file actions of one COPY or ADD, before they are attached to the stage.
struct FileStep {
    link: bool,
    actions: Vec<FileAction>,
    sources: Vec<VertexId>,
    created_by: String,
}

/// With no base input, source input numbers move down by one.
fn shift_inputs(actions: Vec<FileAction>) -> Vec<FileAction> {
    actions
        .into_iter()
        .map(|a| match a {
            FileAction::Copy {
                input,
                src,
                dest,
                chown,
                chmod,
                unpack,
                parents,
                exclude,
            } => FileAction::Copy {
                input: input - 1,
                src,
                dest,
                chown,
                chmod,
                unpack,
                parents,
                exclude,
            },
            other => other,
        })
        .collect()
}

fn flag_text(
    from: Option<&str>,
    chown: &Option<String>,
    chmod: &Option<String>,
    link: bool,
) -> String {
    let mut s = String::new();
    if let Some(f) = from {
        s.push_str(&format!("--from={f} "));
    }
    if let Some(c) = chown {
        s.push_str(&format!("--chown={c} "));
    }
    if let Some(c) = chmod {
        s.push_str(&format!("--chmod={c} "));
    }
    if link {
        s.push_str("--link ");
    }
    s
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

/// Expands an EXPOSE spec (`80`, `80/udp`, `8000-8002/tcp`) into `port/proto` entries.
pub fn expand_port_spec(spec: &str) -> Result<Vec<String>, String> {
    // An `ip:hostPort:containerPort` form is accepted by Docker and only the container
    // port is kept.
    let spec = spec.rsplit(':').next().unwrap_or(spec);
    let (ports, proto) = match spec.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let parse = |s: &str| -> Result<u16, String> {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid containerPort: {s}"))
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!(
            "invalid range specified for container port: {ports}"
        ));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// Checks a STOPSIGNAL value: a signal number or a known name, with or without `SIG`.
pub fn validate_signal(s: &str) -> Result<(), String> {
    const NAMES: &[&str] = &[
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(())
        } else {
            Err(format!("invalid signal: {s}"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rt = name
        .strip_prefix("RTMIN")
        .or_else(|| name.strip_prefix("RTMAX"))
        .is_some_and(|rest| {
            rest.is_empty() || rest.trim_start_matches(['+', '-']).parse::<u32>().is_ok()
        });
    if NAMES.contains(&name) || rt {
        Ok(())
    } else {
        Err(format!("invalid signal: {s}"))
    }
}

#[cfg(test)]
mod tests;
