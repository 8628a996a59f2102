//! One instruction: the metadata instructions (ENV, LABEL, ARG, WORKDIR, USER, ...)
//! fold into the image config and history here; RUN, COPY and ADD have their own files.

use super::*;

impl Converter<'_> {
    pub(super) fn dispatch(
        &mut self,
        stage: &Stage,
        st: &mut State,
        cmd: &Command,
    ) -> Result<(), Diagnostic> {
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
                st.author = Some(m.clone());
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
