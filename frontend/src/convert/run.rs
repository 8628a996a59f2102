//! RUN (BuildKit's `dispatchRun`): the command line, here-documents, the environment
//! (proxy build args kept apart) and the exec op.

use kiln_ops::MountKind;

use super::*;

impl Converter<'_> {
    pub(super) fn dispatch_run(
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
        let mut proxy_env = Vec::new();
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(*p) {
                if !st.args.is_declared(p) {
                    proxy_env.push(format!("{p}={v}"));
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
            mounts.push(heredoc_pipes_mount(inputs.len() - 1));
        }
        self.dispatch_run_mounts(stage, st, run, range, &mut inputs, &mut mounts)?;
        let op = ExecOp {
            args: args.clone(),
            env,
            proxy_env,
            cwd: if st.config.working_dir.is_empty() {
                "/".to_string()
            } else {
                st.config.working_dir.clone()
            },
            user: st.config.user.clone(),
            network: match run.network.as_deref() {
                Some("none") => Network::None,
                Some("host") => Network::Host,
                // `default` or nothing: the build's `--network`.
                _ => self.opts.run_network.unwrap_or(Network::Host),
            },
            extra_hosts: self.opts.extra_hosts.clone(),
            shm_size: self.opts.shm_size,
            insecure: run.security.as_deref() == Some("insecure"),
            mounts,
            platform: (st.platform != self.opts.build_platform).then(|| st.platform.to_string()),
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
}

/// Where a `RUN <<EOF` whose body starts with `#!` finds its body as a file (BuildKit's
/// directory).
const HEREDOC_PIPES: &str = "/dev/pipes";

/// The read-only bind mount of the tree holding a `#!` here-document (input `input`) at
/// [`HEREDOC_PIPES`].
fn heredoc_pipes_mount(input: usize) -> ExecMount {
    ExecMount {
        target: HEREDOC_PIPES.to_string(),
        input: Some(input),
        kind: MountKind::Bind {
            source: Some("/".to_string()),
            readonly: true,
        },
    }
}
