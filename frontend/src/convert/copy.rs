//! COPY and ADD (BuildKit's `dispatchCopy`): sources, `--from`, `--chown`/`--chmod`,
//! here-documents, URLs, and `--link` as a merge.

use super::*;

/// Where and how COPY or ADD writes its heredoc sources.
struct HeredocFiles<'a> {
    dest: &'a str,
    mode: u32,
    chown: &'a Option<Chown>,
}

impl Converter<'_> {
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
                if let Some((name, ctx)) = self.named_context(from) {
                    return self.context_source(&name, &ctx, &st.platform, range);
                }
                Ok(self.image(from, &st.platform, range)?.0)
            }
        }
    }

    pub(super) fn dispatch_copy(
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
        let mode = match chmod.as_deref().map(|m| u32::from_str_radix(m, 8)) {
            Some(Ok(m)) => m,
            _ => 0o644,
        };
        let files = HeredocFiles {
            dest: &dest,
            mode,
            chown: &chown,
        };
        self.heredoc_files(
            st,
            &c.paths.source_contents,
            &files,
            range,
            &mut srcs,
            &mut actions,
        )?;
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

    /// One `Mkfile` per heredoc source of COPY or ADD (`<<EOF`): into `dest/NAME` when
    /// `dest` ends with `/`, else at `dest`; its `<<NAME` goes into `srcs` for the history.
    fn heredoc_files(
        &self,
        st: &State,
        docs: &[crate::parser::Heredoc],
        files: &HeredocFiles<'_>,
        range: Range,
        srcs: &mut Vec<String>,
        actions: &mut Vec<FileAction>,
    ) -> Result<(), Diagnostic> {
        let dest = files.dest;
        for doc in docs {
            let data = if doc.expand {
                self.expand_heredoc(st, &doc.body(), range)?
            } else {
                doc.body()
            };
            let path = if dest.ends_with('/') {
                format!("{dest}{}", doc.name)
            } else {
                dest.to_string()
            };
            srcs.push(format!("<<{}", doc.name));
            actions.push(FileAction::Mkfile {
                path,
                mode: files.mode,
                data,
                chown: files.chown.clone(),
            });
        }
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

    pub(super) fn dispatch_add(
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
        // The step's source inputs (the context, git repositories), numbered from 1.
        let mut sources: Vec<VertexId> = Vec::new();
        let input_of = |v: VertexId, sources: &mut Vec<VertexId>| -> usize {
            let i = match sources.iter().position(|s| *s == v) {
                Some(i) => i,
                None => {
                    sources.push(v);
                    sources.len() - 1
                }
            };
            i + 1
        };
        for s in &a.paths.sources {
            let s = self.expand(st, s, range)?;
            srcs.push(s.clone());
            if instructions::is_git(&s) {
                // The repository's files (at the resolved commit) into `dest`, as
                // BuildKit copies a git source's root.
                let source = git::parse_git_ref(&s)
                    .and_then(|g| g.source(a.keep_git_dir, a.checksum.as_deref()))
                    .map_err(|e| Diagnostic::at(range, e))?;
                let repo = self.graph.add(Op::Git(source), Vec::new(), None);
                actions.push(FileAction::Copy {
                    input: input_of(repo, &mut sources),
                    src: ".".to_string(),
                    dest: dest.clone(),
                    chown: chown.clone(),
                    chmod: chmod.clone(),
                    unpack: false,
                    parents: false,
                    exclude: a.exclude.clone(),
                });
            } else if instructions::is_url(&s) {
                actions.push(FileAction::Download {
                    url: s,
                    dest: dest.clone(),
                    checksum: a.checksum.clone(),
                    chown: chown.clone(),
                    chmod: chmod.clone(),
                });
            } else {
                let ctx = self.context();
                actions.push(FileAction::Copy {
                    input: input_of(ctx, &mut sources),
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
        let files = HeredocFiles {
            dest: &dest,
            mode: 0o644,
            chown: &chown,
        };
        self.heredoc_files(
            st,
            &a.paths.source_contents,
            &files,
            range,
            &mut srcs,
            &mut actions,
        )?;
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
