//! Named contexts (`--build-context NAME=VALUE`, BuildKit's `dockerui` named contexts):
//! which names they stand for, and the vertices they become.
//!
//! As in BuildKit's `dockerfile2llb`: a stage named NAME is replaced by the context (its
//! instructions are not converted); `FROM NAME` uses a stage of that name first, then
//! `scratch`, then the context, then an image; `COPY --from=NAME` and
//! `RUN --mount=from=NAME` use a stage (name or index) first, then the context, then an
//! image. Names are compared as BuildKit compares them: as image references, so
//! `docker.io/library/alpine:latest`, `library/alpine` and `alpine` are one name.

use super::*;

/// `NAME` as BuildKit looks a named context up: the familiar form of a reference, without
/// a `:latest` tag, lowercase.
pub(super) fn context_key(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let mut n = lower.as_str();
    for prefix in [
        "docker.io/library/",
        "docker.io/",
        "index.docker.io/library/",
    ] {
        if let Some(rest) = n.strip_prefix(prefix) {
            n = rest;
            break;
        }
    }
    let n = n.strip_prefix("library/").unwrap_or(n);
    n.strip_suffix(":latest").unwrap_or(n).to_string()
}

/// What a named context gives a stage that starts from it.
pub(super) struct ContextBase {
    pub(super) base: Base,
    pub(super) root: Option<VertexId>,
    pub(super) config: ImageConfig,
    pub(super) author: Option<String>,
}

impl Converter<'_> {
    /// The named context `name` stands for, with the name it was given under.
    pub(super) fn named_context(&self, name: &str) -> Option<(String, NamedContext)> {
        if self.opts.named_contexts.is_empty() {
            return None;
        }
        let key = context_key(name);
        self.opts
            .named_contexts
            .iter()
            .find(|(n, _)| context_key(n) == key)
            .map(|(n, c)| (n.clone(), c.clone()))
    }

    /// The source vertex of a named local context (one per name).
    fn named_local(&mut self, name: &str, exclude: &[String]) -> VertexId {
        if let Some(id) = self.named.get(name) {
            return *id;
        }
        let id = self.graph.add(
            Op::Context {
                name: name.to_string(),
                exclude: exclude.to_vec(),
            },
            Vec::new(),
            None,
        );
        self.named.insert(name.to_string(), id);
        id
    }

    /// The source vertex of a named git or HTTP context (one per name): the
    /// repository's checkout, or a tree holding the download as `/context`.
    fn named_remote(&mut self, name: &str, ctx: &NamedContext) -> VertexId {
        if let Some(id) = self.named.get(name) {
            return *id;
        }
        let op = match ctx {
            NamedContext::Git { source } => Op::Git(source.clone()),
            NamedContext::Http { url } => Op::File(FileOp {
                has_base: false,
                actions: vec![FileAction::Download {
                    url: url.clone(),
                    dest: "/context".to_string(),
                    checksum: None,
                    chown: None,
                    chmod: None,
                }],
            }),
            NamedContext::Local { .. } | NamedContext::Image { .. } => {
                unreachable!("named_remote of a local or image context")
            }
        };
        let id = self.graph.add(op, Vec::new(), None);
        self.named.insert(name.to_string(), id);
        id
    }

    /// The tree a `--from` or a mount's `from` reads when it names a context: the
    /// directory itself, the image, the repository's files or the downloaded file.
    pub(super) fn context_source(
        &mut self,
        name: &str,
        ctx: &NamedContext,
        platform: &Platform,
        range: Range,
    ) -> Result<VertexId, Diagnostic> {
        match ctx {
            NamedContext::Local { exclude } => Ok(self.named_local(name, exclude)),
            NamedContext::Image { reference } => Ok(self.image(reference, platform, range)?.0),
            NamedContext::Git { .. } | NamedContext::Http { .. } => {
                Ok(self.named_remote(name, ctx))
            }
        }
    }

    /// A stage that starts from a named context (`FROM NAME`, or a stage named NAME):
    /// an image's layers and config, or a directory's files as one layer (owned 0:0,
    /// as `COPY` from the build context makes them) with an empty config; a git or
    /// HTTP context's tree is that layer.
    pub(super) fn context_base(
        &mut self,
        name: &str,
        ctx: &NamedContext,
        platform: &Platform,
        range: Range,
    ) -> Result<ContextBase, Diagnostic> {
        match ctx {
            NamedContext::Local { exclude } => {
                let src = self.named_local(name, exclude);
                let root = self.graph.add(
                    Op::File(FileOp {
                        has_base: false,
                        actions: vec![FileAction::Copy {
                            input: 0,
                            src: ".".to_string(),
                            dest: "/".to_string(),
                            chown: None,
                            chmod: None,
                            unpack: false,
                            parents: false,
                            exclude: Vec::new(),
                        }],
                    }),
                    vec![src],
                    None,
                );
                Ok(ContextBase {
                    base: Base::Context(name.to_string()),
                    root: Some(root),
                    config: ImageConfig::default(),
                    author: None,
                })
            }
            NamedContext::Git { .. } | NamedContext::Http { .. } => Ok(ContextBase {
                base: Base::Context(name.to_string()),
                root: Some(self.named_remote(name, ctx)),
                config: ImageConfig::default(),
                author: None,
            }),
            NamedContext::Image { reference } => {
                let (id, resolved) = self.image(reference, platform, range)?;
                let (config, author) = resolved
                    .as_ref()
                    .map(|r| (r.config.clone(), r.author.clone()))
                    .unwrap_or_default();
                Ok(ContextBase {
                    base: Base::Image {
                        reference: reference.clone(),
                        resolved: resolved.map(Box::new),
                    },
                    root: Some(id),
                    config,
                    author,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::context_key;

    #[test]
    fn names_compare_as_references() {
        for n in [
            "alpine",
            "alpine:latest",
            "docker.io/library/alpine",
            "docker.io/library/alpine:latest",
            "library/alpine",
            "Alpine",
        ] {
            assert_eq!(context_key(n), "alpine", "{n}");
        }
        assert_eq!(context_key("alpine:3.19"), "alpine:3.19");
        assert_eq!(context_key("ghcr.io/o/app:latest"), "ghcr.io/o/app");
        assert_eq!(context_key("build"), "build");
    }
}
