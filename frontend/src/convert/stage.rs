//! Stages: `FROM` and `--from` references (names, indexes or images), the order the
//! target needs them in, and the dispatch of one stage (its base, ONBUILD triggers, and
//! its instructions).

use petgraph::graph::DiGraph;

use super::*;

impl Converter<'_> {
    /// The stage or image `COPY --from` names. As in BuildKit (dockerfile frontend 1.18
    /// and later), it is not expanded: stage-local ARGs would make the stage graph depend
    /// on dispatch, so any variable is refused with BuildKit's error, naming the value.
    pub(super) fn copy_from_name<'f>(
        &self,
        from: &'f str,
        range: Range,
    ) -> Result<&'f str, Diagnostic> {
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

    fn find_stage(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.df
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    pub(super) fn target_index(&self) -> Result<usize, Diagnostic> {
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
    pub(super) fn stage_ref(
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
        // A stage a named context replaces runs none of its instructions.
        if self.replacing_context(stage).is_some() {
            return Ok(deps);
        }
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
    pub(super) fn stage_order(&self, target: usize) -> Result<Vec<usize>, Diagnostic> {
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

    /// The named context that replaces `stage` (one given under the stage's name).
    fn replacing_context(&self, stage: &Stage) -> Option<(String, NamedContext)> {
        self.named_context(stage.name.as_deref()?)
    }

    pub(super) fn scratch(&mut self) -> VertexId {
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

    pub(super) fn context(&mut self) -> VertexId {
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

    pub(super) fn image(
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

    /// BuildKit's `InvalidBaseImagePlatform` warning: the base `reference` resolved to a
    /// single image of another platform (`actual`) than the stage's (`expected`); the
    /// build goes on with it. Once per base and platform.
    fn check_base_platform(
        &mut self,
        reference: &str,
        expected: &Platform,
        actual: &Platform,
        range: Range,
    ) {
        let variant_differs =
            expected.variant().is_some() && expected.variant() != actual.variant();
        if expected.os() == actual.os()
            && expected.architecture() == actual.architecture()
            && !variant_differs
        {
            return;
        }
        if !self
            .platform_warned
            .insert((reference.to_string(), expected.clone()))
        {
            return;
        }
        self.warnings.push(format!(
            "InvalidBaseImagePlatform: Base image {reference} was pulled with platform \"{actual}\", expected \"{expected}\" for current build (line {})",
            range.start.line
        ));
    }

    pub(super) fn dispatch_stage(&mut self, stage: &Stage) -> Result<StagePlan, Diagnostic> {
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
        if let Some((name, ctx)) = self.replacing_context(stage) {
            let b = self.context_base(&name, &ctx, &platform, stage.range)?;
            return Ok(StagePlan {
                index: stage.index,
                name: stage.name.clone(),
                base: b.base,
                platform,
                root: b.root,
                config: b.config,
                author: b.author,
                history: Vec::new(),
                depends_on,
                range: stage.range,
            });
        }
        let named = match self.find_stage(&base_name).filter(|i| *i < stage.index) {
            None if !base_name.eq_ignore_ascii_case("scratch") => self.named_context(&base_name),
            _ => None,
        };
        let (base, root, config, author, mut history) =
            match self.find_stage(&base_name).filter(|i| *i < stage.index) {
                Some(i) => {
                    let prev = &self.done[&i];
                    (
                        Base::Stage(i),
                        prev.root,
                        prev.config.clone(),
                        prev.author.clone(),
                        prev.history.clone(),
                    )
                }
                None if named.is_some() => {
                    let (name, ctx) = named.expect("checked");
                    let b = self.context_base(&name, &ctx, &platform, stage.range)?;
                    (b.base, b.root, b.config, b.author, Vec::new())
                }
                None if base_name.eq_ignore_ascii_case("scratch") => (
                    Base::Scratch,
                    None,
                    ImageConfig::default(),
                    None,
                    Vec::new(),
                ),
                None => {
                    let (id, resolved) = self.image(&base_name, &platform, stage.range)?;
                    if let Some(actual) = resolved.as_ref().and_then(|r| r.platform.as_ref()) {
                        self.check_base_platform(&base_name, &platform, actual, stage.range);
                    }
                    let (config, author) = resolved
                        .as_ref()
                        .map(|r| (r.config.clone(), r.author.clone()))
                        .unwrap_or_default();
                    (
                        Base::Image {
                            reference: base_name.clone(),
                            resolved: resolved.map(Box::new),
                        },
                        Some(id),
                        config,
                        author,
                        Vec::new(),
                    )
                }
            };
        if !matches!(base, Base::Stage(_)) {
            history.clear();
        }
        let mut st = State::new(root, config, history, platform.clone());
        st.author = author;
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
            author: st.author,
            history: st.history,
            depends_on,
            range: stage.range,
        })
    }
}
