//! `RUN --mount` (BuildKit's `convert_runmount.go`): each mount's source becomes an
//! input of the exec op, and the parsed `--mount` becomes the graph's own
//! [`ExecMount`], its defaults resolved here.

use kiln_ops::{MountKind, Sharing};

use super::*;
use crate::instructions::Mount;

/// Mode of a new cache directory when `--mount` gives none (BuildKit's default).
const CACHE_MODE: u32 = 0o755;
/// Mode of a secret file when `--mount` gives none (BuildKit's default).
const SECRET_MODE: u32 = 0o400;
/// Mode of an SSH agent socket when `--mount` gives none (BuildKit's default).
const SSH_MODE: u32 = 0o600;

impl Converter<'_> {
    /// The `--mount`s of a RUN, expanded and parsed. A bind or cache mount `from` a
    /// stage or an image, and a bind mount of the context, add an input to the exec; the
    /// mount refers to it by index, never by name.
    pub(super) fn dispatch_run_mounts(
        &mut self,
        stage: &Stage,
        st: &State,
        run: &RunCmd,
        range: Range,
        inputs: &mut Vec<VertexId>,
        mounts: &mut Vec<ExecMount>,
    ) -> Result<(), Diagnostic> {
        let mut ssh_mounts = 0;
        for spec in &run.mounts {
            let spec = self.expand(st, spec, range)?;
            let mut m = instructions::parse_mount(&spec).map_err(|e| Diagnostic::at(range, e))?;
            if m.kind == MountType::Ssh {
                if m.default_target {
                    m.target = format!("/run/buildkit/ssh_agent.{ssh_mounts}");
                }
                ssh_mounts += 1;
            }
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
                        None => match self.named_context(from) {
                            Some((name, ctx)) => {
                                Some(self.context_source(&name, &ctx, &st.platform, range)?)
                            }
                            None => Some(self.image(from, &st.platform, range)?.0),
                        },
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
            mounts.push(exec_mount(m, input));
        }
        Ok(())
    }
}

/// The graph's mount for a parsed `--mount` whose source (if any) is input `input`.
/// `from` is dropped: the input stands for the stage or image it named, and the name
/// itself must not enter the digest (renaming a stage would invalidate the cache).
pub fn exec_mount(m: Mount, input: Option<usize>) -> ExecMount {
    let kind = match m.kind {
        MountType::Bind => MountKind::Bind {
            source: m.source,
            readonly: m.readonly,
        },
        MountType::Cache => MountKind::Cache {
            // The parser defaults the id to the target already; this keeps the graph
            // whole for a hand-made Mount.
            id: m.id.unwrap_or_else(|| m.target.clone()),
            sharing: match m.sharing {
                instructions::Sharing::Shared => Sharing::Shared,
                instructions::Sharing::Private => Sharing::Private,
                instructions::Sharing::Locked => Sharing::Locked,
            },
            readonly: m.readonly,
            source: m.source,
            mode: m.mode.unwrap_or(CACHE_MODE),
            uid: m.uid.unwrap_or(0),
            gid: m.gid.unwrap_or(0),
        },
        MountType::Tmpfs => MountKind::Tmpfs { size: m.size },
        MountType::Secret => MountKind::Secret {
            id: m.id.unwrap_or_default(),
            env: m.env,
            required: m.required,
            mode: m.mode.unwrap_or(SECRET_MODE),
            uid: m.uid.unwrap_or(0),
            gid: m.gid.unwrap_or(0),
        },
        MountType::Ssh => MountKind::Ssh {
            id: m.id.unwrap_or_else(|| "default".to_string()),
            required: m.required,
            mode: m.mode.unwrap_or(SSH_MODE),
            uid: m.uid.unwrap_or(0),
            gid: m.gid.unwrap_or(0),
        },
    };
    ExecMount {
        target: m.target,
        input,
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(spec: &str, input: Option<usize>) -> ExecMount {
        exec_mount(instructions::parse_mount(spec).unwrap(), input)
    }

    #[test]
    fn bind_maps_source_and_readonly() {
        assert_eq!(
            mapped("type=bind,target=/src,source=app,from=build", Some(1)),
            ExecMount {
                target: "/src".into(),
                input: Some(1),
                kind: MountKind::Bind {
                    source: Some("app".into()),
                    readonly: true,
                },
            }
        );
        assert_eq!(
            mapped("target=/src,rw", Some(2)).kind,
            MountKind::Bind {
                source: None,
                readonly: false,
            }
        );
    }

    #[test]
    fn cache_maps_every_field_with_buildkits_defaults() {
        assert_eq!(
            mapped("type=cache,target=/root/.cache", None),
            ExecMount {
                target: "/root/.cache".into(),
                input: None,
                kind: MountKind::Cache {
                    id: "/root/.cache".into(),
                    sharing: Sharing::Shared,
                    readonly: false,
                    source: None,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
            }
        );
        assert_eq!(
            mapped(
                "type=cache,target=/c,id=go,sharing=locked,ro,from=seed,source=/s,mode=0700,uid=1000,gid=100",
                Some(1),
            ),
            ExecMount {
                target: "/c".into(),
                input: Some(1),
                kind: MountKind::Cache {
                    id: "go".into(),
                    sharing: Sharing::Locked,
                    readonly: true,
                    source: Some("/s".into()),
                    mode: 0o700,
                    uid: 1000,
                    gid: 100,
                },
            }
        );
        let sharing = |s| match mapped(&format!("type=cache,target=/c,sharing={s}"), None).kind {
            MountKind::Cache { sharing, .. } => sharing,
            other => panic!("{other:?}"),
        };
        assert_eq!(sharing("private"), Sharing::Private);
        assert_eq!(sharing("shared"), Sharing::Shared);
    }

    #[test]
    fn tmpfs_maps_its_size() {
        assert_eq!(
            mapped("type=tmpfs,target=/t,size=64m", None),
            ExecMount {
                target: "/t".into(),
                input: None,
                kind: MountKind::Tmpfs {
                    size: Some(64 << 20)
                },
            }
        );
        assert_eq!(
            mapped("type=tmpfs,target=/t", None).kind,
            MountKind::Tmpfs { size: None }
        );
    }

    #[test]
    fn secret_maps_every_field_with_buildkits_defaults() {
        assert_eq!(
            mapped("type=secret,id=npmrc", None),
            ExecMount {
                target: "/run/secrets/npmrc".into(),
                input: None,
                kind: MountKind::Secret {
                    id: "npmrc".into(),
                    env: None,
                    required: false,
                    mode: 0o400,
                    uid: 0,
                    gid: 0,
                },
            }
        );
        assert_eq!(
            mapped(
                "type=secret,id=tok,env=TOKEN,required,mode=0440,uid=1,gid=2",
                None
            ),
            ExecMount {
                target: String::new(),
                input: None,
                kind: MountKind::Secret {
                    id: "tok".into(),
                    env: Some("TOKEN".into()),
                    required: true,
                    mode: 0o440,
                    uid: 1,
                    gid: 2,
                },
            }
        );
    }

    #[test]
    fn ssh_maps_with_buildkits_defaults() {
        assert_eq!(
            mapped("type=ssh", None),
            ExecMount {
                target: "/run/buildkit/ssh_agent.0".into(),
                input: None,
                kind: MountKind::Ssh {
                    id: "default".into(),
                    required: false,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            }
        );
        assert_eq!(
            mapped("type=ssh,id=work,required,mode=0666,uid=5,gid=6", None).kind,
            MountKind::Ssh {
                id: "work".into(),
                required: true,
                mode: 0o666,
                uid: 5,
                gid: 6,
            }
        );
    }
}
