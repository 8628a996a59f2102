use super::*;
use kiln_ops::{FileAction, MountKind, Op};

fn plan_with(src: &str, args: &[(&str, &str)], target: Option<&str>) -> Result<Plan, Diagnostic> {
    let (_, df) = crate::load(src)?;
    let opts = ConvertOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        target: target.map(str::to_string),
        target_platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/arm64").unwrap(),
        context_excludes: vec![],
        ..ConvertOptions::default()
    };
    convert(&df, &opts, &NoResolver)
}

fn plan(src: &str) -> Plan {
    plan_with(src, &[], None).unwrap()
}

fn execs(p: &Plan) -> Vec<ExecOp> {
    p.graph
        .topo_order()
        .into_iter()
        .filter_map(|id| match &p.graph.vertex(id).op {
            Op::Exec(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn images(p: &Plan) -> Vec<String> {
    p.graph
        .topo_order()
        .into_iter()
        .filter_map(|id| match &p.graph.vertex(id).op {
            Op::Image { reference, .. } => Some(reference.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn global_args_in_from_and_redeclared_in_stage() {
    let src = "ARG BASE=busybox\nARG V=1\nFROM ${BASE}:$V\nRUN echo a=$V\nARG V\nRUN echo b=$V\n";
    let p = plan(src);
    assert_eq!(images(&p), ["busybox:1"]);
    let e = execs(&p);
    // Before the re-declaration the global is not in the RUN environment.
    assert!(!e[0].env.iter().any(|kv| kv.starts_with("V=")));
    assert!(e[1].env.contains(&"V=1".to_string()));
    let p = plan_with(src, &[("V", "2")], None).unwrap();
    assert_eq!(images(&p), ["busybox:2"]);
    assert!(execs(&p)[1].env.contains(&"V=2".to_string()));
}

#[test]
fn env_overrides_arg() {
    let src = "FROM a\nARG X=fromarg\nENV X=fromenv\nRUN true\nWORKDIR /$X\n";
    let p = plan_with(src, &[("X", "cli")], None).unwrap();
    let e = &execs(&p)[0];
    assert!(e.env.contains(&"X=fromenv".to_string()));
    assert!(!e.env.contains(&"X=cli".to_string()));
    assert_eq!(p.target_stage().config.working_dir, "/fromenv");
}

#[test]
fn build_arg_overrides_default_and_is_in_history() {
    let p = plan_with("FROM a\nARG X=def\nRUN echo $X\n", &[("X", "cli")], None).unwrap();
    let hist: Vec<&str> = p
        .target_stage()
        .history
        .iter()
        .map(|h| h.created_by.as_str())
        .collect();
    assert_eq!(
        hist,
        ["ARG X=cli", "RUN |1 X=cli /bin/sh -c echo $X # buildkit"]
    );
}

#[test]
fn unused_build_args_warn() {
    let p = plan_with(
        "FROM a\nARG USED\n",
        &[("USED", "1"), ("NOPE", "2"), ("HTTP_PROXY", "p")],
        None,
    )
    .unwrap();
    assert_eq!(
        p.warnings,
        ["one or more build args were not consumed: [NOPE]"]
    );
}

#[test]
fn proxy_args_reach_run_without_declaration() {
    let p = plan_with(
        "FROM a\nRUN true\n",
        &[("http_proxy", "http://p:3128")],
        None,
    )
    .unwrap();
    assert_eq!(execs(&p)[0].proxy_env, ["http_proxy=http://p:3128"]);
    assert!(!p.target_stage().history[0].created_by.contains("proxy"));
}

/// Every vertex digest of a plan, in dependency order.
fn digests(p: &Plan) -> Vec<kiln_oci::Digest> {
    p.graph
        .topo_order()
        .into_iter()
        .map(|id| p.graph.vertex(id).digest.clone())
        .collect()
}

/// Regression: proxy build args entered RUN's definition digest, so a CI runner behind a
/// proxy never hit a cache filled elsewhere. BuildKit leaves them out of the key.
#[test]
fn proxy_build_args_do_not_change_run_digests() {
    let src = "FROM a\nRUN apt-get update\nFROM a AS b\nRUN --mount=type=cache,target=/c true\n";
    let without = plan(src);
    for args in [
        &[("HTTP_PROXY", "http://proxy:3128")][..],
        &[("https_proxy", "http://p:1"), ("NO_PROXY", "localhost")][..],
        &[("ALL_PROXY", "socks5://p"), ("ftp_proxy", "ftp://p")][..],
    ] {
        let with = plan_with(src, args, None).unwrap();
        assert_eq!(digests(&with), digests(&without), "{args:?}");
        assert_eq!(execs(&with)[0].proxy_env.len(), args.len());
    }
    // A proxy arg declared with ARG is an ordinary ARG: in the environment and the key.
    let declared = "FROM a\nARG HTTP_PROXY\nRUN true\n";
    let with = plan_with(declared, &[("HTTP_PROXY", "http://p")], None).unwrap();
    let e = &execs(&with)[0];
    assert!(e.env.contains(&"HTTP_PROXY=http://p".to_string()));
    assert!(e.proxy_env.is_empty());
    assert_ne!(digests(&with), digests(&plan(declared)));
}

/// Regression: a stage's name in `RUN --mount=from=NAME` entered the definition digest,
/// so renaming a stage invalidated the cache of every step that mounted it.
#[test]
fn renaming_a_stage_keeps_every_digest() {
    let df = |name: &str| {
        format!(
            "FROM busybox AS {name}\nRUN make\n\
             FROM busybox\n\
             COPY --from={name} /out /out\n\
             RUN --mount=type=bind,from={name},source=/out,target=/o cp -r /o /o2\n\
             RUN --mount=type=cache,from={name},source=/,target=/cache,id=c true\n"
        )
    };
    let a = plan(&df("builder"));
    let b = plan(&df("compile"));
    assert_eq!(digests(&a), digests(&b));
    // Naming the stage by its index is the same build too.
    assert_eq!(
        digests(&plan(&df("builder").replace("from=builder", "from=0"))),
        digests(&a)
    );
    // ...while the mounts still read the stage.
    let e = execs(&a);
    // (A graph mount has no `from`: it can only name its input by index.)
    assert_eq!(e[1].mounts[0].input, Some(1));
}

#[test]
fn platform_args() {
    let p = plan(
        "FROM --platform=$BUILDPLATFORM a AS b\nARG TARGETARCH\nARG BUILDARCH\nRUN echo $TARGETARCH $BUILDARCH\n",
    );
    assert_eq!(p.target_stage().platform.architecture(), "arm64");
    let e = &execs(&p)[0];
    assert!(e.env.contains(&"TARGETARCH=amd64".to_string()));
    assert!(e.env.contains(&"BUILDARCH=arm64".to_string()));
}

/// A RUN for the target platform names it in its definition when it is not the build
/// platform (BuildKit's exec `Platform`): the platforms of a multi-platform build never
/// share a RUN's result; a native RUN's definition is as before.
#[test]
fn foreign_runs_name_their_platform() {
    let p = plan(
        "FROM --platform=$BUILDPLATFORM a AS b\nRUN true\nFROM a\nCOPY --from=b / /\nRUN true\n",
    );
    let e = execs(&p);
    assert_eq!(e[0].platform, None);
    assert_eq!(e[1].platform.as_deref(), Some("linux/amd64"));
    let json = |e: &ExecOp| serde_json::to_string(e).unwrap();
    assert!(!json(&e[0]).contains("platform"));
    assert!(json(&e[1]).contains("\"platform\":\"linux/amd64\""));
}

#[test]
fn target_prunes_unneeded_stages() {
    let src =
        "FROM a AS one\nRUN one\nFROM b AS two\nRUN two\nFROM c AS three\nCOPY --from=one /x /x\n";
    let p = plan(src);
    let idx: Vec<usize> = p.stages.iter().map(|s| s.index).collect();
    assert_eq!(idx, [0, 2]);
    assert_eq!(images(&p).len(), 2);
    assert!(!images(&p).contains(&"b".to_string()));
    let p = plan_with(src, &[], Some("two")).unwrap();
    assert_eq!(p.stages.len(), 1);
    assert_eq!(images(&p), ["b"]);
}

#[test]
fn independent_stages_share_a_level() {
    let src = "FROM x AS a\nRUN sleep 1\nFROM x AS b\nRUN sleep 2\nFROM x\nCOPY --from=a /o /a\nCOPY --from=b /o /b\n";
    let p = plan(src);
    let levels = p.graph.levels();
    let ids: Vec<_> = execs(&p);
    assert_eq!(ids.len(), 2);
    let level_of = |args: &str| {
        levels
            .iter()
            .position(|l| l.iter().any(|id| matches!(&p.graph.vertex(*id).op, Op::Exec(e) if e.args.last().unwrap() == args)))
            .unwrap()
    };
    assert_eq!(level_of("sleep 1"), level_of("sleep 2"));
}

#[test]
fn identical_vertices_merge() {
    let src = "FROM x AS a\nRUN make\nFROM x AS b\nRUN make\nFROM scratch\nCOPY --from=a /o /a\nCOPY --from=b /o /b\n";
    let p = plan(src);
    assert_eq!(execs(&p).len(), 1);
    assert_eq!(p.stages[0].root, p.stages[1].root);
    assert_eq!(images(&p).len(), 1);
}

#[test]
fn digests_are_stable_and_input_sensitive() {
    let src = "FROM x\nARG A=1\nARG B=2\nRUN echo $A $B\nCOPY . /app\n";
    let d = |p: &Plan| {
        p.graph
            .vertex(p.target_stage().root.unwrap())
            .digest
            .clone()
    };
    let one = d(&plan_with(src, &[("A", "1"), ("B", "2")], None).unwrap());
    let two = d(&plan_with(src, &[("B", "2"), ("A", "1")], None).unwrap());
    assert_eq!(one, two);
    let three = d(&plan_with(src, &[("A", "9")], None).unwrap());
    assert_ne!(one, three);
    assert!(one.as_str().starts_with("sha256:") && one.as_str().len() == 71);
}

#[test]
fn workdir_and_copy_paths() {
    let p = plan("FROM x\nWORKDIR /app\nWORKDIR sub/../src\nCOPY a.txt b/\nCOPY c.txt ./d.txt\n");
    assert_eq!(p.target_stage().config.working_dir, "/app/src");
    let dests: Vec<String> = p
        .graph
        .topo_order()
        .into_iter()
        .flat_map(|id| match &p.graph.vertex(id).op {
            Op::File(f) => f
                .actions
                .iter()
                .filter_map(|a| match a {
                    FileAction::Copy { dest, .. } => Some(dest.clone()),
                    FileAction::Mkdir { path, .. } => Some(format!("mkdir {path}")),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            _ => vec![],
        })
        .collect();
    assert_eq!(
        dests,
        [
            "mkdir /app",
            "mkdir /app/src",
            "/app/src/b/",
            "/app/src/d.txt"
        ]
    );
}

#[test]
fn env_quotes_and_sequential_expansion() {
    let p = plan("FROM x\nENV A=1\nENV A=2 B=$A C=\"x y\" D='$A'\n");
    let env = &p.target_stage().config.env;
    assert!(env.contains(&"A=2".to_string()));
    assert!(env.contains(&"B=1".to_string()));
    assert!(env.contains(&"C=x y".to_string()));
    assert!(env.contains(&"D=$A".to_string()));
    assert!(env.iter().any(|e| e.starts_with("PATH=")));
}

#[test]
fn metadata_folds_into_config() {
    let src = "FROM x\nLABEL a=b \"c d\"=e\nEXPOSE 80 53/udp 8000-8001\nUSER app\nVOLUME /data\nSTOPSIGNAL SIGINT\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo hi\nHEALTHCHECK --interval=30s CMD curl -f localhost\nONBUILD RUN echo child\nMAINTAINER me\n";
    let p = plan(src);
    let c = &p.target_stage().config;
    assert_eq!(c.labels.get("c d").map(String::as_str), Some("e"));
    let ports: Vec<&str> = c.exposed_ports.iter().map(String::as_str).collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
    assert_eq!(c.user, "app");
    assert!(c.volumes.contains("/data"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(c.cmd.as_deref().unwrap(), ["/bin/bash", "-c", "echo hi"]);
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD-SHELL", "curl -f localhost"]);
    assert_eq!(hc.interval, Some(std::time::Duration::from_secs(30)));
    assert_eq!(c.on_build, ["RUN echo child"]);
    assert_eq!(p.target_stage().author.as_deref(), Some("me"));
    assert!(p.graph.is_empty() || images(&p).len() == 1);
    assert!(p.target_stage().history.iter().all(|h| h.vertex.is_none()));
}

#[test]
fn entrypoint_resets_inherited_cmd() {
    let p = plan("FROM x AS a\nCMD [\"a\"]\nFROM a\nENTRYPOINT [\"e\"]\n");
    assert_eq!(p.target_stage().config.cmd, None);
    let p = plan("FROM x\nCMD [\"a\"]\nENTRYPOINT [\"e\"]\n");
    assert_eq!(p.target_stage().config.cmd.as_deref().unwrap(), ["a"]);
}

#[test]
fn heredoc_run_and_copy() {
    let p = plan(
        "FROM x\nENV N=kiln\nRUN <<EOF\necho $N\nEOF\nCOPY <<EOT /etc/motd\nhello $N\nEOT\nCOPY <<'EOT' /etc/raw\nhello $N\nEOT\n",
    );
    let e = &execs(&p)[0];
    assert_eq!(e.args, ["/bin/sh", "-c", "echo $N\n"]);
    let files: Vec<(String, String)> = p
        .graph
        .topo_order()
        .into_iter()
        .flat_map(|id| match &p.graph.vertex(id).op {
            Op::File(f) => f
                .actions
                .iter()
                .filter_map(|a| match a {
                    FileAction::Mkfile { path, data, .. } => Some((path.clone(), data.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            _ => vec![],
        })
        .collect();
    assert_eq!(
        files,
        [
            ("/etc/motd".to_string(), "hello kiln\n".to_string()),
            ("/etc/raw".to_string(), "hello $N\n".to_string())
        ]
    );
}

#[test]
fn heredoc_with_command_goes_to_the_shell() {
    let p = plan("FROM x\nRUN cat <<EOF > /f\nline\nEOF\n");
    assert_eq!(execs(&p)[0].args[2], "cat <<EOF > /f\nline\nEOF\n");
}

#[test]
fn copy_link_is_a_merge() {
    let p = plan("FROM x\nCOPY --link a /a\n");
    let root = p.target_stage().root.unwrap();
    assert!(matches!(p.graph.vertex(root).op, Op::Merge));
    let layer = p.target_stage().history[0].vertex.unwrap();
    assert!(matches!(&p.graph.vertex(layer).op, Op::File(f) if !f.has_base));
}

#[test]
fn copy_from_index_and_image() {
    let p = plan(
        "FROM x\nRUN build\nFROM y\nCOPY --from=0 /o /o\nCOPY --from=alpine:3 /etc/os-release /\n",
    );
    assert_eq!(images(&p).len(), 3);
    assert_eq!(p.target_stage().depends_on, [0]);
}

#[test]
fn run_mounts_and_network() {
    let p = plan(
        "FROM x AS src\nFROM x\nRUN --mount=type=cache,target=/root/.cache --mount=type=bind,from=src,source=/,target=/s --network=none true\n",
    );
    let e = &execs(&p)[0];
    assert_eq!(e.network, Network::None);
    assert_eq!(e.mounts.len(), 2);
    assert_eq!(e.mounts[0].input, None);
    assert_eq!(e.mounts[1].input, Some(1));
}

/// `--network`, `--add-host` and `--shm-size` reach every RUN: `--network` only those
/// without their own (or with `--network=default`); each changes the definition digest,
/// and none of them does when unset (earlier keys hold).
#[test]
fn build_wide_run_settings() {
    let src =
        "FROM x\nRUN a\nRUN --network=default b\nRUN --network=host c\nRUN --network=none d\n";
    let (_, df) = crate::load(src).unwrap();
    let with = |o: ConvertOptions| convert(&df, &o, &NoResolver).unwrap();
    let base = with(ConvertOptions::default());
    let nets: Vec<Network> = execs(&base).iter().map(|e| e.network).collect();
    assert_eq!(
        nets,
        [Network::Host, Network::Host, Network::Host, Network::None]
    );
    let none = with(ConvertOptions {
        run_network: Some(Network::None),
        ..ConvertOptions::default()
    });
    let nets: Vec<Network> = execs(&none).iter().map(|e| e.network).collect();
    assert_eq!(
        nets,
        [Network::None, Network::None, Network::Host, Network::None]
    );
    let host = kiln_ops::ExtraHost {
        host: "db".into(),
        ip: "10.0.0.5".parse().unwrap(),
    };
    let hosts = with(ConvertOptions {
        extra_hosts: vec![host.clone()],
        shm_size: Some(1 << 30),
        ..ConvertOptions::default()
    });
    for e in execs(&hosts) {
        assert_eq!(e.extra_hosts, std::slice::from_ref(&host));
        assert_eq!(e.shm_size, Some(1 << 30));
    }
    let digest = |p: &Plan| {
        p.graph
            .vertex(p.target_stage().root.unwrap())
            .digest
            .clone()
    };
    assert_ne!(digest(&base), digest(&hosts));
    assert_ne!(digest(&base), digest(&none));
    // Unset, the new fields leave the serialized definition as it was.
    let e = &execs(&base)[0];
    let json = serde_json::to_string(e).unwrap();
    assert!(
        !json.contains("extra_hosts") && !json.contains("shm_size"),
        "{json}"
    );
}

struct OnbuildResolver;
impl ImageResolver for OnbuildResolver {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<Option<ResolvedImage>, String> {
        let mut config = ImageConfig::default();
        config.env.push("FROMBASE=1".to_string());
        if reference == "parent" {
            config.on_build = vec!["RUN echo triggered".to_string()];
        }
        Ok(Some(ResolvedImage {
            digest: Some(kiln_oci::digest::sha256_digest(reference.as_bytes())),
            config,
            author: Some(format!("author of {reference}")),
            history_len: 1,
            platform: None,
        }))
    }
}

#[test]
fn onbuild_triggers_of_the_base_run_first() {
    let (_, df) = crate::load("FROM parent\nRUN echo mine\n").unwrap();
    let p = convert(&df, &ConvertOptions::default(), &OnbuildResolver).unwrap();
    let args: Vec<String> = execs(&p).iter().map(|e| e.args[2].clone()).collect();
    assert_eq!(args, ["echo triggered", "echo mine"]);
    assert!(p.target_stage().config.on_build.is_empty());
    assert!(execs(&p)[0].env.contains(&"FROMBASE=1".to_string()));
}

/// The image's author is the base's, through stages, until a MAINTAINER replaces it;
/// scratch has none.
#[test]
fn author_comes_from_the_base_or_maintainer() {
    let author = |src: &str| {
        let (_, df) = crate::load(src).unwrap();
        let p = convert(&df, &ConvertOptions::default(), &OnbuildResolver).unwrap();
        p.target_stage().author.clone()
    };
    assert_eq!(
        author("FROM base AS a\nFROM a\nRUN true\n").as_deref(),
        Some("author of base")
    );
    let me = Some("me".to_string());
    assert_eq!(author("FROM base AS a\nMAINTAINER me\nFROM a\n"), me);
    assert_eq!(author("FROM base\nMAINTAINER me\n"), me);
    assert_eq!(author("FROM base\nMAINTAINER me\nFROM scratch\n"), None);
}

#[test]
fn scratch_stage_starts_empty() {
    let p = plan("FROM scratch\nCOPY a /a\n");
    let root = p.target_stage().root.unwrap();
    assert!(matches!(&p.graph.vertex(root).op, Op::File(f) if !f.has_base));
    assert!(images(&p).is_empty());
}

/// Issue 9: several sources to a destination without a trailing `/` are accepted, as
/// BuildKit does (the classic builder's error is not BuildKit's); each source becomes
/// its own copy to that destination.
#[test]
fn several_sources_without_trailing_slash_are_accepted() {
    for df in [
        "FROM x\nCOPY a b /dest\n",
        "FROM x\nADD a b /dest\n",
        "FROM x\nCOPY *.txt /dest\n",
    ] {
        let p = plan_with(df, &[], None).unwrap_or_else(|e| panic!("{df}: {e}"));
        let root = p.target_stage().root.unwrap();
        let Op::File(f) = &p.graph.vertex(root).op else {
            panic!("{df}: not a file op");
        };
        assert!(
            f.actions
                .iter()
                .all(|a| matches!(a, FileAction::Copy { dest, .. } if dest == "/dest")),
            "{df}"
        );
    }
}

// ---- issue 9: frontend ----

/// Regression (issue 9): `--dry-run` of 10,000 `ENV` lines took 25 s. The environment was
/// copied into a map for every instruction, ENV and ARG scanned the whole environment,
/// and pruning searched a path from every vertex to every history vertex. Each of those
/// would take minutes at this size; linear conversion takes well under a second (a few
/// in a debug build).
#[test]
fn long_dockerfiles_convert_in_linear_time() {
    const N: usize = 20_000;
    let mut src = String::from("ARG G0=g\n");
    for i in 1..N {
        src.push_str(&format!("ARG G{i}=${{G{}}}\n", i - 1));
    }
    src.push_str("FROM scratch AS one\n");
    for i in 0..N {
        src.push_str(&format!("ENV V{i}=v{i}\nARG A{i}=$V{i}\n"));
    }
    src.push_str("ENV LAST=$V0$A19999\nFROM one\n");
    for i in 0..N {
        src.push_str(&format!("WORKDIR /w{i}\n"));
    }
    src.push_str("ARG G19999\nENV G=$G19999\n");
    let p = plan(&src);
    let st = p.target_stage();
    assert_eq!(st.config.env.len(), N + 3, "PATH, N variables, LAST and G");
    assert_eq!(st.config.env[N + 1], "LAST=v0v19999");
    assert_eq!(st.config.env[N + 2], "G=g");
    assert_eq!(st.config.working_dir, format!("/w{}", N - 1));
    // One mkdir per WORKDIR, each a history entry with a layer.
    assert_eq!(p.graph.len(), N);
    assert_eq!(st.history.iter().filter(|h| h.vertex.is_some()).count(), N);
}

#[test]
fn env_and_arg_keep_their_order_and_overrides() {
    let p = plan("FROM scratch\nARG A=1\nARG B=2\nENV B=env\nARG A=3\nENV C=$A$B D=$C\nRUN true\n");
    let e = &execs(&p)[0];
    // ENV first (in order), then ARGs that ENV does not override, in declaration order
    // (a re-declared ARG moves to the end).
    assert_eq!(
        e.env,
        [
            format!("PATH={DEFAULT_PATH}"),
            "B=env".to_string(),
            "C=3env".to_string(),
            "D=".to_string(),
            "A=3".to_string(),
        ]
    );
}

/// Regression (issue 9): `ENV A=$A$A` 26 times took 1.2 GB. The 21st doubling passes
/// 1 MiB and fails, naming the line.
#[test]
fn doubling_env_fails_at_the_expansion_cap() {
    let mut src = String::from("FROM scratch\nENV A=x\n");
    for _ in 0..26 {
        src.push_str("ENV A=$A$A\n");
    }
    let e = plan_with(&src, &[], None).unwrap_err();
    assert_eq!(e.range.map(|r| r.start.line), Some(2 + 21), "{e:?}");
    assert_eq!(
        e.message,
        format!(
            "failed to expand \"$A$A\": {}",
            ShellError::TooLong(crate::shell::MAX_EXPANSION)
        )
    );
    let rendered = e.render("Dockerfile", &src);
    assert!(
        rendered.starts_with("Dockerfile:23:1: failed to expand"),
        "{rendered}"
    );
    // 20 doublings (exactly 1 MiB) are fine.
    let src: String = src.lines().take(22).map(|l| format!("{l}\n")).collect();
    let p = plan(&src);
    assert_eq!(p.target_stage().config.env[1].len(), "A=".len() + (1 << 20));
}

/// Regression (issue 9, finding 15): a stage-local ARG in `COPY --from` said "circular
/// dependency detected". BuildKit does not expand `--from` at all and says so, whatever
/// scope the variable has; kiln now gives its error, naming the value.
#[test]
fn copy_from_is_not_expanded() {
    let want = "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround (--from=\"$SRC\")";
    for src in [
        "FROM busybox AS src\nFROM busybox\nARG SRC=src\nCOPY --from=$SRC /x /y\n",
        "ARG SRC=src\nFROM busybox AS src\nFROM busybox\nCOPY --from=$SRC /x /y\n",
        // Even in a stage the target does not need.
        "FROM busybox AS src\nARG SRC=src\nCOPY --from=$SRC /x /y\nFROM scratch\n",
    ] {
        let e = plan_with(src, &[], None).unwrap_err();
        let line = src.lines().position(|l| l.starts_with("COPY")).unwrap() + 1;
        assert_eq!(e.message, want, "{src}");
        assert_eq!(e.range.map(|r| r.start.line), Some(line), "{src}");
    }
    let e = plan_with(
        "FROM busybox AS src\nFROM busybox\nCOPY --from=${SRC:-src} /x /y\n",
        &[],
        None,
    )
    .unwrap_err();
    assert!(e.message.contains("(--from=\"${SRC:-src}\")"), "{e:?}");
    // A plain stage name, index or image is used as it is.
    let p = plan(
        "FROM busybox AS src\nFROM scratch\nCOPY --from=src /x /y\nCOPY --from=0 /x /z\nCOPY --from=alpine:3 /a /b\n",
    );
    assert_eq!(images(&p), ["busybox", "alpine:3"]);
}

/// A mount `from` that names a stage only through a stage-local ARG was mounted as an
/// empty tree; it is an error, in BuildKit's words.
#[test]
fn run_mount_from_a_stage_not_converted_is_an_error() {
    let e = plan_with(
        "FROM busybox AS src\nFROM busybox\nARG SRC=src\nRUN --mount=from=$SRC,target=/m true\n",
        &[],
        None,
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "cannot mount from stage \"src\" to \"/m\", stage needs to be defined before current command"
    );
    assert_eq!(e.range.map(|r| r.start.line), Some(4));
}

/// Regression (issue 9, finding 14): a `RUN <<EOF` whose body starts with `#!` was run
/// by `/bin/sh -c BODY`. As in BuildKit, the body is an executable file mounted
/// read-only at `/dev/pipes/<name>` and the shell runs that file.
#[test]
fn heredoc_with_shebang_runs_as_a_file() {
    let p = plan("FROM x\nRUN <<EOF\n#!/bin/awk -f\nBEGIN { print \"hello\" > \"/out\" }\nEOF\n");
    let id = p
        .graph
        .topo_order()
        .into_iter()
        .find(|id| matches!(p.graph.vertex(*id).op, Op::Exec(_)))
        .unwrap();
    let v = p.graph.vertex(id);
    let Op::Exec(e) = &v.op else { unreachable!() };
    assert_eq!(e.args, ["/bin/sh", "-c", "/dev/pipes/EOF"]);
    assert_eq!(e.mounts.len(), 1);
    let m = &e.mounts[0];
    assert_eq!(m.target, "/dev/pipes");
    assert_eq!(
        m.kind,
        MountKind::Bind {
            source: Some("/".into()),
            readonly: true
        }
    );
    let input = v.inputs[m.input.unwrap()];
    match &p.graph.vertex(input).op {
        Op::File(f) => {
            assert!(!f.has_base);
            assert_eq!(
                f.actions,
                [FileAction::Mkfile {
                    path: "/EOF".to_string(),
                    mode: 0o755,
                    data: "#!/bin/awk -f\nBEGIN { print \"hello\" > \"/out\" }\n".to_string(),
                    chown: None,
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        p.target_stage().history[0].created_by,
        "RUN /bin/sh -c /dev/pipes/EOF # buildkit"
    );
    // `<<-` strips the tabs first; no `#!`, a heredoc with a command, and other
    // instructions are unchanged.
    let p = plan("FROM x\nRUN <<-EOT\n\t#!/bin/sh\n\techo hi\nEOT\n");
    assert_eq!(execs(&p)[0].args, ["/bin/sh", "-c", "/dev/pipes/EOT"]);
    let p = plan("FROM x\nRUN <<EOF\necho '#!'\nEOF\nRUN cat <<EOF\n#!/bin/sh\nEOF\n");
    let e = execs(&p);
    assert_eq!(e[0].args, ["/bin/sh", "-c", "echo '#!'\n"]);
    assert_eq!(e[1].args, ["/bin/sh", "-c", "cat <<EOF\n#!/bin/sh\nEOF\n"]);
    assert!(e.iter().all(|e| e.mounts.is_empty()));
}

fn plan_ctx(src: &str, contexts: &[(&str, NamedContext)]) -> Result<Plan, Diagnostic> {
    let (_, df) = crate::load(src)?;
    let opts = ConvertOptions {
        named_contexts: contexts
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..ConvertOptions::default()
    };
    convert(&df, &opts, &NoResolver)
}

fn local() -> NamedContext {
    NamedContext::Local {
        exclude: vec!["*.tmp".into()],
    }
}

fn contexts(p: &Plan) -> Vec<(String, Vec<String>)> {
    p.graph
        .topo_order()
        .into_iter()
        .filter_map(|id| match &p.graph.vertex(id).op {
            Op::Context { name, exclude } => Some((name.clone(), exclude.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn named_context_replaces_from_copy_from_and_mount_from() {
    let src = "FROM alpine\nCOPY --from=src /a /a\nRUN --mount=from=tools,target=/t true\n";
    let img = |r: &str| NamedContext::Image {
        reference: r.into(),
    };
    let p = plan_ctx(
        src,
        &[
            ("docker.io/library/alpine:latest", img("busybox:1.36")),
            ("src", local()),
            ("tools", img("oci-layout:///l:v1")),
        ],
    )
    .unwrap();
    assert_eq!(images(&p), ["busybox:1.36", "oci-layout:///l:v1"]);
    assert_eq!(
        contexts(&p),
        [("src".to_string(), vec!["*.tmp".to_string()])]
    );
    // The COPY reads the named context, never the main one.
    let copy = p
        .graph
        .topo_order()
        .into_iter()
        .find(|id| matches!(p.graph.vertex(*id).op, Op::File(_)))
        .unwrap();
    let v = p.graph.vertex(copy);
    assert!(matches!(&p.graph.vertex(v.inputs[1]).op, Op::Context { name, .. } if name == "src"));
    // Without contexts: the images and nothing else.
    let p = plan_ctx(src, &[]).unwrap();
    assert_eq!(images(&p), ["alpine", "src", "tools"]);
}

#[test]
fn named_context_replaces_a_stage_of_that_name() {
    let src = "FROM alpine AS deps\nRUN exit 1\nCOPY --from=nothing / /\n\
               FROM scratch\nCOPY --from=deps /x /x\n";
    let p = plan_ctx(src, &[("deps", local())]).unwrap();
    // The stage's own instructions are gone: no exec, no alpine, no `nothing` image.
    assert!(execs(&p).is_empty());
    assert!(images(&p).is_empty(), "{:?}", images(&p));
    let deps = p.stages.iter().find(|s| s.index == 0).unwrap();
    assert_eq!(deps.base, Base::Context("deps".into()));
    // Its root is the directory's files copied onto an empty tree.
    let root = p.graph.vertex(deps.root.unwrap());
    match &root.op {
        Op::File(f) => {
            assert!(!f.has_base);
            assert!(
                matches!(&f.actions[..], [FileAction::Copy { src, dest, chown: None, .. }]
                if src == "." && dest == "/")
            );
        }
        other => panic!("{other:?}"),
    }
    // A stage name wins over a context in FROM; `scratch` stays scratch.
    let src = "FROM busybox AS b\nFROM b\nFROM scratch\nCOPY --from=b / /\n";
    let img = NamedContext::Image {
        reference: "alpine".into(),
    };
    let p = plan_ctx(src, &[("scratch", img.clone())]).unwrap();
    assert_eq!(images(&p), ["busybox"]);
    assert_eq!(p.target_stage().base, Base::Scratch);
}

#[test]
fn from_a_named_local_context() {
    let p = plan_ctx("FROM ctx\nRUN true\n", &[("ctx", local())]).unwrap();
    assert_eq!(p.target_stage().base, Base::Context("ctx".into()));
    assert_eq!(execs(&p).len(), 1);
    assert_eq!(contexts(&p).len(), 1);
}

#[test]
fn git_and_http_named_contexts_are_one_source_each() {
    let git = NamedContext::Git {
        source: kiln_ops::GitSource {
            remote: "https://h/r.git".into(),
            reference: Some("v1".into()),
            subdir: Some("sub".into()),
            keep_git_dir: false,
            checksum: None,
        },
    };
    let http = NamedContext::Http {
        url: "https://h/files.tar.gz".into(),
    };
    let src = "FROM repo
COPY --from=repo /a /b
COPY --from=dl /context /dl.tgz
               RUN --mount=from=dl,target=/m true
";
    let p = plan_ctx(src, &[("repo", git.clone()), ("dl", http)]).unwrap();
    assert_eq!(p.target_stage().base, Base::Context("repo".into()));
    let ops: Vec<&Op> = p
        .graph
        .topo_order()
        .into_iter()
        .map(|id| &p.graph.vertex(id).op)
        .collect();
    // One git source (FROM and --from share it), one download into `/context`.
    let gits: Vec<_> = ops.iter().filter(|o| matches!(o, Op::Git(_))).collect();
    assert_eq!(gits.len(), 1, "{ops:?}");
    assert!(matches!(gits[0], Op::Git(g) if g.subdir.as_deref() == Some("sub")));
    let downloads: Vec<_> = ops
        .iter()
        .filter_map(|o| match o {
            Op::File(f) if !f.has_base => match &f.actions[..] {
                [FileAction::Download { url, dest, .. }] => Some((url.as_str(), dest.as_str())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(downloads, [("https://h/files.tar.gz", "/context")]);
    assert!(images(&p).is_empty() && contexts(&p).is_empty());
    // A stage of only `FROM repo` is the repository's tree itself.
    let p = plan_ctx("FROM repo\n", &[("repo", git.clone())]).unwrap();
    let root = p.graph.vertex(p.target_stage().root.unwrap());
    assert!(matches!(&root.op, Op::Git(_)), "{:?}", root.op);
    // A stage of that name is replaced by it.
    let p = plan_ctx(
        "FROM alpine AS repo
RUN exit 1
FROM repo
",
        &[("repo", git)],
    )
    .unwrap();
    assert!(execs(&p).is_empty() && images(&p).is_empty());
}

#[test]
fn add_git_is_a_git_source_copied_into_dest() {
    let src = "FROM scratch\nADD --keep-git-dir --checksum=ABCDEF https://h/r.git#v1:sub /src\n\
               ADD https://h/r.git a.txt /both/\n";
    let p = plan(src);
    let gits: Vec<kiln_ops::GitSource> = p
        .graph
        .topo_order()
        .into_iter()
        .filter_map(|id| match &p.graph.vertex(id).op {
            Op::Git(g) => Some(g.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(gits.len(), 2);
    assert_eq!(
        gits[0],
        kiln_ops::GitSource {
            remote: "https://h/r.git".into(),
            reference: Some("v1".into()),
            subdir: Some("sub".into()),
            keep_git_dir: true,
            checksum: Some("abcdef".into()),
        }
    );
    assert_eq!(gits[1].reference, None);
    // The second ADD reads the repository and the context: one input each.
    let root = p.graph.vertex(p.target_stage().root.unwrap());
    match &root.op {
        Op::File(f) => {
            let inputs: Vec<usize> = f
                .actions
                .iter()
                .map(|a| match a {
                    FileAction::Copy { input, .. } => *input,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(inputs, [1, 2]);
            assert!(matches!(p.graph.vertex(root.inputs[1]).op, Op::Git(_)));
            assert!(matches!(
                p.graph.vertex(root.inputs[2]).op,
                Op::Context { .. }
            ));
        }
        other => panic!("{other:?}"),
    }
    // A checksum for git is a commit id, not a digest.
    let e = plan_with(
        "FROM scratch\nADD --checksum=sha256:aa https://h/r.git /s\n",
        &[],
        None,
    )
    .unwrap_err();
    assert!(e.message.contains("expected a commit id"), "{}", e.message);
}

#[test]
fn ssh_mounts_without_a_target_are_numbered() {
    let p = plan(
        "FROM scratch\nRUN --mount=type=ssh --mount=type=ssh,id=b,target=/s \
                  --mount=type=ssh,id=c true\n",
    );
    let targets: Vec<String> = execs(&p)[0]
        .mounts
        .iter()
        .map(|m| m.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            "/run/buildkit/ssh_agent.0",
            "/s",
            "/run/buildkit/ssh_agent.2"
        ]
    );
}

/// Resolves every reference to a single image of `linux/amd64`, except `multi`, whose
/// index serves the platform asked for.
struct AmdOnlyResolver;
impl ImageResolver for AmdOnlyResolver {
    fn resolve(&self, reference: &str, p: &Platform) -> Result<Option<ResolvedImage>, String> {
        Ok(Some(ResolvedImage {
            platform: Some(if reference == "multi" {
                p.clone()
            } else {
                Platform::parse("linux/amd64").unwrap()
            }),
            ..ResolvedImage::default()
        }))
    }
}

#[test]
fn a_base_of_another_platform_warns_once_per_base() {
    let (_, df) = crate::load(
        "FROM amd AS a\nRUN true\nFROM amd AS b\nRUN true\nFROM multi\n\
         COPY --from=a /x /x\nCOPY --from=b /y /y\n",
    )
    .unwrap();
    let arm = ConvertOptions {
        target_platform: Platform::parse("linux/arm64").unwrap(),
        ..ConvertOptions::default()
    };
    let p = convert(&df, &arm, &AmdOnlyResolver).unwrap();
    assert_eq!(
        p.warnings,
        [
            "InvalidBaseImagePlatform: Base image amd was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build (line 1)"
        ]
    );
    // The base's own platform: no warning.
    let amd = ConvertOptions {
        target_platform: Platform::parse("linux/amd64").unwrap(),
        ..ConvertOptions::default()
    };
    assert!(
        convert(&df, &amd, &AmdOnlyResolver)
            .unwrap()
            .warnings
            .is_empty()
    );
    // `FROM --platform` names the stage's platform.
    let (_, df) = crate::load("FROM --platform=linux/s390x amd\nRUN true\n").unwrap();
    let p = convert(&df, &amd, &AmdOnlyResolver).unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert!(
        p.warnings[0].contains("expected \"linux/s390x\""),
        "{:?}",
        p.warnings
    );
}
