use super::*;
use kiln_oci::Digest;

fn exec(mounts: Vec<ExecMount>) -> Op {
    Op::Exec(ExecOp {
        args: vec!["sh".into(), "-c".into(), "make".into()],
        env: vec!["A=1".into()],
        proxy_env: vec![],
        cwd: "/src".into(),
        user: String::new(),
        network: Network::Host,
        extra_hosts: vec![],
        shm_size: None,
        platform: None,
        insecure: false,
        mounts,
    })
}

fn context() -> Op {
    Op::Context {
        name: "context".into(),
        exclude: vec![],
    }
}

/// The definition digest of `op` over one input (the context).
fn digest(op: Op) -> Digest {
    let mut g = BuildGraph::default();
    let ctx = g.add(context(), vec![], None);
    let other = g.add(Op::Merge, vec![ctx], None);
    let id = g.add(op, vec![ctx, other], None);
    g.vertex(id).digest.clone()
}

/// A cache mount: id, sharing, readonly, source, mode, uid, gid.
fn cache(
    id: &str,
    sharing: Sharing,
    readonly: bool,
    source: Option<&str>,
    (mode, uid, gid): (u32, u32, u32),
) -> MountKind {
    MountKind::Cache {
        id: id.into(),
        sharing,
        readonly,
        source: source.map(Into::into),
        mode,
        uid,
        gid,
    }
}

/// A secret mount: id, env, required, mode, uid, gid.
fn secret(
    id: &str,
    env: Option<&str>,
    required: bool,
    (mode, uid, gid): (u32, u32, u32),
) -> MountKind {
    MountKind::Secret {
        id: id.into(),
        env: env.map(Into::into),
        required,
        mode,
        uid,
        gid,
    }
}

/// An ssh mount: id, required, mode, uid, gid.
fn ssh(id: &str, required: bool, (mode, uid, gid): (u32, u32, u32)) -> MountKind {
    MountKind::Ssh {
        id: id.into(),
        required,
        mode,
        uid,
        gid,
    }
}

fn mount(kind: MountKind) -> ExecMount {
    ExecMount {
        target: "/m".into(),
        input: None,
        kind,
    }
}

#[test]
fn the_same_op_has_the_same_digest() {
    let m = || {
        vec![
            mount(cache("go", Sharing::Shared, false, None, (0o755, 0, 0))),
            ExecMount {
                target: "/src".into(),
                input: Some(1),
                kind: MountKind::Bind {
                    source: Some("app".into()),
                    readonly: true,
                },
            },
        ]
    };
    assert_eq!(digest(exec(m())), digest(exec(m())));
    assert!(digest(exec(m())).as_str().starts_with("sha256:"));
    // One graph merges the two into one vertex.
    let mut g = BuildGraph::default();
    let a = g.add(exec(m()), vec![], None);
    let b = g.add(exec(m()), vec![], None);
    assert_eq!(a, b);
    assert_eq!(g.len(), 1);
}

#[test]
fn every_field_of_a_mount_changes_the_digest() {
    use Sharing::*;
    let owner = (0o755, 0, 0);
    let base = || mount(cache("go", Shared, false, None, owner));
    let mut mounts = vec![
        base(),
        ExecMount {
            target: "/other".into(),
            ..base()
        },
        ExecMount {
            input: Some(0),
            ..base()
        },
    ];
    let kinds = [
        cache("npm", Shared, false, None, owner),
        cache("go", Locked, false, None, owner),
        cache("go", Private, false, None, owner),
        cache("go", Shared, true, None, owner),
        cache("go", Shared, false, Some("seed"), owner),
        cache("go", Shared, false, None, (0o700, 0, 0)),
        cache("go", Shared, false, None, (0o755, 1000, 0)),
        cache("go", Shared, false, None, (0o755, 0, 1000)),
        MountKind::Bind {
            source: None,
            readonly: true,
        },
        MountKind::Bind {
            source: Some("src".into()),
            readonly: true,
        },
        MountKind::Bind {
            source: None,
            readonly: false,
        },
        MountKind::Tmpfs { size: None },
        MountKind::Tmpfs {
            size: Some(1 << 20),
        },
        secret("npmrc", None, false, (0o400, 0, 0)),
        secret("token", None, false, (0o400, 0, 0)),
        secret("npmrc", Some("TOKEN"), false, (0o400, 0, 0)),
        secret("npmrc", None, true, (0o400, 0, 0)),
        secret("npmrc", None, false, (0o444, 0, 0)),
        secret("npmrc", None, false, (0o400, 1, 0)),
        secret("npmrc", None, false, (0o400, 0, 1)),
        ssh("default", false, (0o600, 0, 0)),
        ssh("work", false, (0o600, 0, 0)),
        ssh("default", true, (0o600, 0, 0)),
        ssh("default", false, (0o666, 0, 0)),
        ssh("default", false, (0o600, 1, 0)),
        ssh("default", false, (0o600, 0, 1)),
    ];
    mounts.extend(kinds.into_iter().map(mount));
    let mut digests: Vec<Digest> = mounts.into_iter().map(|m| digest(exec(vec![m]))).collect();
    let n = digests.len();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), n, "two different mounts gave one digest");
    // Order matters too: mounts are applied in order.
    let (a, b) = (base(), mount(MountKind::Tmpfs { size: None }));
    assert_ne!(
        digest(exec(vec![a.clone(), b.clone()])),
        digest(exec(vec![b, a]))
    );
}

/// A mount names its source by input index: the digest covers which input, and that
/// input's own digest, never a name.
#[test]
fn a_mount_refers_to_its_input_by_index() {
    let bind = |input| {
        exec(vec![ExecMount {
            target: "/src".into(),
            input: Some(input),
            kind: MountKind::Bind {
                source: None,
                readonly: true,
            },
        }])
    };
    assert_ne!(digest(bind(0)), digest(bind(1)));

    // The same index over a different input tree is a different vertex.
    let mut g = BuildGraph::default();
    let ctx = g.add(context(), vec![], None);
    let a = g.add(Op::Merge, vec![ctx], None);
    let b = g.add(
        Op::Context {
            name: "context".into(),
            exclude: vec!["*.log".into()],
        },
        vec![],
        None,
    );
    let over_a = g.add(bind(1), vec![ctx, a], None);
    let over_b = g.add(bind(1), vec![ctx, b], None);
    assert_ne!(g.vertex(over_a).digest, g.vertex(over_b).digest);
    assert_eq!(g.vertex(over_a).inputs, [ctx, a]);
}

/// Proxy variables reach the step but not its digest.
#[test]
fn proxy_env_is_not_in_the_digest() {
    let with_proxy = match exec(vec![]) {
        Op::Exec(mut e) => {
            e.proxy_env = vec!["HTTP_PROXY=http://proxy:3128".into()];
            Op::Exec(e)
        }
        _ => unreachable!(),
    };
    assert_eq!(digest(with_proxy), digest(exec(vec![])));
}

#[test]
fn origins_do_not_change_the_digest_and_are_kept() {
    let origin = |name: &str| Origin {
        stage: 0,
        stage_name: name.into(),
        instruction: "RUN make".into(),
        range: Range::lines(2, 2),
    };
    let mut g = BuildGraph::default();
    let a = g.add(exec(vec![]), vec![], Some(origin("build")));
    let b = g.add(exec(vec![]), vec![], Some(origin("renamed")));
    assert_eq!(a, b);
    assert_eq!(g.vertex(a).origins.len(), 2);
}

#[test]
fn prune_keeps_what_the_roots_need() {
    let mut g = BuildGraph::default();
    let ctx = g.add(context(), vec![], None);
    let used = g.add(exec(vec![]), vec![ctx], None);
    let _unused = g.add(Op::Merge, vec![ctx], None);
    let (pruned, roots) = g.prune(&[used]);
    assert_eq!(pruned.len(), 2);
    assert_eq!(pruned.vertex(roots[0]).digest, g.vertex(used).digest);
    assert_eq!(g.levels().len(), 2);
}

#[test]
fn dot_labels_are_quoted() {
    let mut g = BuildGraph::default();
    g.add(
        exec(vec![]),
        vec![],
        Some(Origin {
            stage: 0,
            stage_name: "a\"b".into(),
            instruction: "RUN echo \\ \t".into(),
            range: Range::lines(1, 1),
        }),
    );
    let dot = g.to_dot();
    assert!(dot.starts_with("digraph kiln {\n"), "{dot}");
    assert!(
        dot.contains(r#"[label="[a\"b] RUN echo \\ \x09\n"#),
        "{dot}"
    );
    assert_eq!(dot.lines().count(), 5, "one line per vertex: {dot}");
}

/// A typed digest enters the definition as the same string it was before it was
/// typed, so definition digests (and every cache key over them) stay as they were.
#[test]
fn image_digest_is_defined_as_its_string() {
    let d = kiln_oci::digest::sha256_digest(b"manifest");
    let op = Op::Image {
        reference: "busybox".into(),
        platform: Platform::host(),
        digest: Some(d.clone()),
    };
    let json = serde_json::to_string(&op).unwrap();
    assert!(json.contains(&format!("\"digest\":\"{d}\"")), "{json}");
}
