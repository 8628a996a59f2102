//! RUN: an exec op in the sandbox over the input's snapshots; its diff becomes a layer.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use kiln_frontend::convert::DEFAULT_PATH;
use kiln_frontend::error::shorten;
use kiln_fs::{LayeredFs, SourceFs};
use kiln_ops::{ExecMount, ExecOp, MountKind, Network, Sharing, VertexId};
use kiln_sandbox::{
    self as sandbox, InitResult, MountSpec, NetworkMode, RootSpec, SnapshotterKind, Spec, Stubs,
};

use super::{BuildWorker, Output, Result};
use crate::snapshots::is_empty_dir;
use kiln_solver::Event;

/// Why a RUN step failed, beyond the errors of the sandbox and the store.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The step failed and the store's filesystem is full.
    #[error(
        "process {shown} failed: no space left on device (the store's filesystem at {} is full)",
        store.display()
    )]
    DiskFull {
        /// The command, as messages show it.
        shown: String,
        /// The store's root.
        store: PathBuf,
    },
    /// The process exited with a non-zero code.
    #[error(
        "process {shown} did not complete successfully: exit code: {code}{}",
        last_output(tail)
    )]
    Exited {
        /// The command, as messages show it.
        shown: String,
        /// Its exit code.
        code: i32,
        /// Its last lines of output.
        tail: String,
    },
    /// The process was killed by a signal.
    #[error("process {shown} was killed by signal {signal}")]
    Signaled {
        /// The command, as messages show it.
        shown: String,
        /// The signal.
        signal: i32,
    },
    /// The sandbox could not start the process.
    #[error("could not run {shown}: {message}")]
    Setup {
        /// The command, as messages show it.
        shown: String,
        /// What the sandbox's init said.
        message: String,
    },
    /// A bind mount with no input.
    #[error("bind mount of {0} has no source")]
    NoBindSource(String),
    /// A bind mount of a context path that is not there (or is `.dockerignore`d).
    #[error("bind mount source {0:?} not found in the build context")]
    NoContextSource(String),
    /// A required secret was not given to the build.
    #[error("secret {0} not provided (kiln build --secret id={0},src=FILE)")]
    SecretMissing(String),
    /// A secret's file could not be read.
    #[error("reading secret {id}")]
    ReadSecret {
        /// The secret's id.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A required `RUN --mount=type=ssh` whose agent the build was not given.
    #[error("no SSH agent {0:?} forwarded (kiln build --ssh {0}=SOCKET, or --ssh default)")]
    SshMissing(String),
    /// The agent's proxy socket could not be made.
    #[error("forwarding the SSH agent {id}")]
    SshProxy {
        /// The agent's id.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A cache mount's directory could not be given its owner.
    #[error("chown of a cache mount: {0}")]
    ChownCache(rustix::io::Errno),
    /// Locking a cache mount failed.
    #[error(transparent)]
    Lock(#[from] rustix::io::Errno),
}

/// The `last output:` part of [`ExecError::Exited`] (nothing when there was none).
fn last_output(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\nlast output:\n{tail}")
    }
}

/// Holds what a run needs until it is over: temp dirs and cache-mount locks.
#[derive(Default)]
struct Held {
    dirs: Vec<tempfile::TempDir>,
    locks: Vec<fs::File>,
    /// SSH agent proxies, until the process is over.
    agents: Vec<super::ssh::AgentProxy>,
}

impl BuildWorker<'_> {
    fn log(&self, id: VertexId, line: &str) {
        if let Some(r) = self.reporter {
            r.event(&Event::Log {
                id,
                line: line.to_string(),
            });
        }
    }

    /// Snapshot directories of an output, top first (overlayfs order).
    fn lowers_top_first(&self, out: &Output) -> Result<Vec<PathBuf>> {
        let mut l = self.snapshots.chain(self.store, out.layers())?;
        l.reverse();
        Ok(l)
    }

    fn temp(&self, held: &mut Held, prefix: &str) -> Result<PathBuf> {
        let d = self.snapshots.temp_dir(prefix)?;
        let p = d.path().to_path_buf();
        held.dirs.push(d);
        Ok(p)
    }

    /// Runs `RUN` over `inputs[0]`.
    pub(super) fn exec_op(
        &self,
        id: VertexId,
        e: &ExecOp,
        inputs: &[Output],
        cancel: &AtomicBool,
    ) -> Result<Output> {
        let base = inputs.first().cloned().unwrap_or(Output::Fs {
            layers: Vec::new(),
            added: false,
        });
        let view = self.view(&base, "the image")?;
        let user = sandbox::resolve_user(&e.user, &view)?;
        let mut env = step_env(e, user.home.as_deref());

        let mut held = Held::default();
        let run = self.temp(&mut held, "run")?;
        let upper_dir = self.snapshots.temp_dir("layer")?;
        let upper = upper_dir.path().to_path_buf();
        fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))?;
        let merged = run.join("merged");
        let scratch = run.join("scratch");
        fs::create_dir(&scratch)?;
        let copy_mode = self.exec.snapshotter == SnapshotterKind::Copy;
        let root = if copy_mode {
            let tree = self.temp(&mut held, "tree")?;
            sandbox::copy::materialize(&view, &tree)?;
            fs::rename(&tree, &merged)?;
            RootSpec::Dir
        } else {
            fs::create_dir(&merged)?;
            let work = run.join("work");
            fs::create_dir(&work)?;
            let lowers = view.layers().iter().rev().cloned().collect();
            RootSpec::Overlay {
                lowers: non_empty(lowers, &run)?,
                upper: upper.clone(),
                work,
            }
        };

        let mut mounts = Vec::new();
        for m in &e.mounts {
            let input = m.input.and_then(|i| inputs.get(i));
            if let Some(spec) = self.mount_spec(m, input, &run, &mut held, &mut env)? {
                mounts.push(spec);
            }
        }
        // As BuildKit: SSH_AUTH_SOCK names the first forwarded agent, unless set.
        let first_agent = e
            .mounts
            .iter()
            .filter(|m| matches!(m.kind, MountKind::Ssh { .. }))
            .find(|m| match &m.kind {
                MountKind::Ssh { id, .. } => self.exec.ssh.contains_key(id),
                _ => false,
            });
        if let Some(m) = first_agent {
            if !env.iter().any(|kv| kv.starts_with("SSH_AUTH_SOCK=")) {
                env.push(format!("SSH_AUTH_SOCK={}", m.target));
            }
        }

        let spec = Spec {
            root,
            merged: merged.clone(),
            scratch,
            args: e.args.clone(),
            env,
            cwd: if e.cwd.is_empty() {
                "/".into()
            } else {
                e.cwd.clone()
            },
            uid: user.uid,
            gid: user.gid,
            groups: user.groups.clone(),
            network: match e.network {
                Network::Host => NetworkMode::Host,
                Network::None => NetworkMode::None,
            },
            hostname: "kiln".into(),
            // The build checked the entitlement before it started; this is the backstop.
            privileged: e.insecure && self.exec.allow_insecure,
            mounts,
            shm_size: e.shm_size,
            host_files: vec![
                ("/etc/resolv.conf".into(), "/etc/resolv.conf".into()),
                (hosts_file(&run, &e.extra_hosts)?, "/etc/hosts".into()),
            ],
            stubs_file: run.join("stubs.json"),
            result_file: run.join("result.json"),
        };
        let outcome =
            self.exec
                .runtime
                .run(&spec, &run, &|line: &str| self.log(id, line), cancel)?;
        // Cut, as every error shows it: a RUN of megabytes must not fill the terminal.
        let shown = shorten(&sandbox::describe_args(&e.args)).into_owned();
        if outcome.result != InitResult::Exited(0) && sandbox::disk_full(&upper) {
            return Err(ExecError::DiskFull {
                shown,
                store: self.store.root().to_path_buf(),
            }
            .into());
        }
        match outcome.result {
            InitResult::Exited(0) => {}
            InitResult::Exited(code) => {
                let tail = outcome.tail.join("\n");
                return Err(ExecError::Exited { shown, code, tail }.into());
            }
            InitResult::Signaled(signal) => {
                return Err(ExecError::Signaled { shown, signal }.into());
            }
            InitResult::SetupError(message) => {
                return Err(ExecError::Setup { shown, message }.into());
            }
        }
        drop(held.locks.drain(..));

        let stubs = Stubs::load(&spec.stubs_file);
        if copy_mode {
            stubs.remove_from(&merged);
            sandbox::copy::diff(&view, &merged, &upper)?;
        } else {
            stubs.remove_from(&upper);
            sandbox::copy::prune_copied_up(&upper, &stubs.parents(), &view);
        }
        drop(held);

        let mut layers = base.layers().to_vec();
        if is_empty_dir(&upper) {
            return Ok(Output::Fs {
                layers,
                added: false,
            });
        }
        layers.push(self.commit_layer(id, upper_dir)?);
        Ok(Output::Fs {
            layers,
            added: true,
        })
    }

    /// Turns one `--mount` into what the sandbox mounts (None: an optional secret that
    /// was not given).
    fn mount_spec(
        &self,
        m: &ExecMount,
        input: Option<&Output>,
        run: &Path,
        held: &mut Held,
        env: &mut Vec<String>,
    ) -> Result<Option<MountSpec>> {
        let copy_mode = self.exec.snapshotter == SnapshotterKind::Copy;
        let target = m.target.clone();
        Ok(Some(match &m.kind {
            MountKind::Bind { source, readonly } => {
                let sub = source.clone().unwrap_or_default();
                let readonly = *readonly;
                match input {
                    Some(Output::Context(name)) => {
                        self.context_mount(name, &sub, target, readonly, run, held)?
                    }
                    Some(out) => {
                        let lowers = self.lowers_top_first(out)?;
                        if copy_mode || !readonly {
                            self.rw_tree(lowers, &sub, target, readonly, run, held)?
                        } else {
                            MountSpec::Layers {
                                lowers: non_empty(lowers, run)?,
                                rw: None,
                                subpath: sub,
                                target,
                                readonly: true,
                            }
                        }
                    }
                    None => return Err(ExecError::NoBindSource(target).into()),
                }
            }
            MountKind::Cache {
                id,
                sharing,
                readonly,
                source,
                mode,
                uid,
                gid,
            } => {
                let seed = CacheSeed {
                    input,
                    source: source.as_deref().unwrap_or_default(),
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                };
                let dir = self.cache_mount_dir(id, *sharing, &seed, held)?;
                MountSpec::Bind {
                    source: dir,
                    target,
                    readonly: *readonly,
                }
            }
            MountKind::Tmpfs { size } => MountSpec::Tmpfs {
                target,
                size: *size,
            },
            MountKind::Secret {
                id,
                env: var,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(src) = self.exec.secrets.get(id) else {
                    if *required {
                        return Err(ExecError::SecretMissing(id.clone()).into());
                    }
                    return Ok(None);
                };
                if let Some(var) = var {
                    let value =
                        fs::read_to_string(src).map_err(|source| ExecError::ReadSecret {
                            id: id.clone(),
                            source,
                        })?;
                    env.push(format!("{var}={}", value.trim_end_matches('\n')));
                    if m.target.is_empty() {
                        return Ok(None);
                    }
                }
                MountSpec::Secret {
                    source: src.clone(),
                    target,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                }
            }
            MountKind::Ssh {
                id,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(agent) = self.exec.ssh.get(id) else {
                    if *required {
                        return Err(ExecError::SshMissing(id.clone()).into());
                    }
                    return Ok(None);
                };
                let dir = self.snapshots.temp_dir("ssh")?;
                let proxy = super::ssh::AgentProxy::start(dir, agent, *mode, *uid, *gid).map_err(
                    |source| ExecError::SshProxy {
                        id: id.clone(),
                        source,
                    },
                )?;
                let source = proxy.path().to_path_buf();
                held.agents.push(proxy);
                MountSpec::Bind {
                    source,
                    target,
                    readonly: false,
                }
            }
        }))
    }

    /// A bind mount of the build context (`sub` inside it) that shows exactly what COPY
    /// sees: the context under a layer of whiteouts for what `.dockerignore` excludes
    /// (an overlay, or with the copy snapshotter a filtered copy). Writes, when allowed,
    /// are thrown away and never reach the user's files.
    fn context_mount(
        &self,
        name: &str,
        sub: &str,
        target: String,
        readonly: bool,
        run: &Path,
        held: &mut Held,
    ) -> Result<MountSpec> {
        let (context, _) = self.context_fs(name)?;
        let root = context.root();
        let rel = sandbox::resolve_in_root(root, sub)?;
        let visible = rel.to_str().is_some_and(|r| context.lstat(r).is_some());
        if !visible || !root.join(&rel).exists() {
            return Err(ExecError::NoContextSource(sub.to_string()).into());
        }
        let whiteouts = self.temp(held, "ctx-whiteouts")?;
        context.write_whiteouts(&whiteouts)?;
        let sub = rel.to_string_lossy().into_owned();
        self.rw_tree(
            vec![whiteouts, root.to_path_buf()],
            &sub,
            target,
            readonly,
            run,
            held,
        )
    }

    /// A view of `lowers` of its own: with the copy snapshotter a copied tree, otherwise
    /// an overlay whose writes (unless `readonly`) go to a throw-away upper dir.
    fn rw_tree(
        &self,
        lowers: Vec<PathBuf>,
        sub: &str,
        target: String,
        readonly: bool,
        run: &Path,
        held: &mut Held,
    ) -> Result<MountSpec> {
        if self.exec.snapshotter == SnapshotterKind::Copy {
            let tree = self.temp(held, "mount")?;
            let view = LayeredFs::new(lowers.into_iter().rev().collect(), "a mount");
            sandbox::copy::materialize(&view, &tree)?;
            let rel = sandbox::resolve_in_root(&tree, sub)?;
            return Ok(MountSpec::Bind {
                source: tree.join(rel),
                target,
                readonly,
            });
        }
        let d = self.temp(held, "mount")?;
        let (u, w) = (d.join("upper"), d.join("work"));
        fs::create_dir(&u)?;
        fs::create_dir(&w)?;
        Ok(MountSpec::Layers {
            lowers: non_empty(lowers, run)?,
            rw: Some((u, w)),
            subpath: sub.to_string(),
            target,
            readonly,
        })
    }

    /// The directory of a cache mount, created (from `seed` when given) the first time;
    /// `sharing=locked` waits for other users, `private` takes a fresh directory when
    /// another build holds it.
    fn cache_mount_dir(
        &self,
        id: &str,
        sharing: Sharing,
        seed: &CacheSeed<'_>,
        held: &mut Held,
    ) -> Result<PathBuf> {
        let key = kiln_oci::digest::sha256_digest(cache_mount_key(id, seed).as_bytes());
        let hex = key.hex();
        let base = self.store.cache_mounts_dir();
        fs::create_dir_all(&base)?;
        let dir = base.join(&hex[..32]);
        let lock_path = base.join(format!("{}.lock", &hex[..32]));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        match sharing {
            Sharing::Shared => {
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared)
                    .map_err(ExecError::Lock)?;
                held.locks.push(lock);
            }
            Sharing::Locked => {
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
                    .map_err(ExecError::Lock)?;
                held.locks.push(lock);
            }
            Sharing::Private => {
                if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                    .is_err()
                {
                    let fresh = self.temp(held, "cache")?;
                    self.init_cache_dir(&fresh, seed)?;
                    return Ok(fresh);
                }
                held.locks.push(lock);
            }
        }
        if !dir.exists() {
            let tmp = self.snapshots.temp_dir("cache")?;
            self.init_cache_dir(tmp.path(), seed)?;
            let p = tmp.keep();
            if fs::rename(&p, &dir).is_err() {
                let _ = fs::remove_dir_all(&p);
            }
        }
        Ok(dir)
    }

    fn init_cache_dir(&self, dir: &Path, seed: &CacheSeed<'_>) -> Result<()> {
        if let Some(out @ Output::Fs { .. }) = seed.input {
            let view = self.view(out, "a stage")?;
            let rel = kiln_fs::resolve(&view, seed.source, true)?;
            if view.lstat(&rel).is_some_and(|e| e.meta.is_dir()) {
                sandbox::copy::materialize_subtree(&view, &rel, dir)?;
            }
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(seed.mode))?;
        rustix::fs::chown(
            dir,
            Some(rustix::fs::Uid::from_raw(seed.uid)),
            Some(rustix::fs::Gid::from_raw(seed.gid)),
        )
        .map_err(ExecError::ChownCache)?;
        Ok(())
    }
}

/// What a new cache directory starts as: a copy of `source` in `input` (a `from=`
/// tree), owned and permissioned as the mount says.
struct CacheSeed<'a> {
    input: Option<&'a Output>,
    source: &'a str,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The environment of a RUN step: the op's `env`, the proxy build args (which its
/// definition digest leaves out), and `PATH` and `HOME` when neither set them.
fn step_env(e: &ExecOp, home: Option<&str>) -> Vec<String> {
    let mut env = e.env.clone();
    env.extend(e.proxy_env.iter().cloned());
    if !env.iter().any(|kv| kv.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={}", home.unwrap_or("/")));
    }
    env
}

/// What a cache mount's directory is keyed on: its id, and with `from=` the source's
/// layer chain and subpath too. BuildKit keys a cache on its id plus the `from` ref
/// (`getRefCacheDir`: `id + ":" + ref.ID()`), so the same id seeded from another source
/// gets its own cache instead of silently reusing the first one's.
fn cache_mount_key(id: &str, seed: &CacheSeed<'_>) -> String {
    match seed.input {
        Some(out @ Output::Fs { layers, .. }) if !layers.is_empty() => {
            let chain: Vec<&str> = out.layers().iter().map(|l| l.diff_id.as_str()).collect();
            format!("{id}:{}:{}", chain.join(","), seed.source)
        }
        _ => id.to_string(),
    }
}

/// `lowers`, or one empty directory when there are none (overlayfs needs a lower layer).
fn non_empty(mut lowers: Vec<PathBuf>, run: &Path) -> Result<Vec<PathBuf>> {
    if lowers.is_empty() {
        let empty = run.join("empty");
        if !empty.exists() {
            fs::create_dir(&empty)?;
            fs::set_permissions(&empty, fs::Permissions::from_mode(0o755))?;
        }
        lowers.push(empty);
    }
    Ok(lowers)
}

/// The step's `/etc/hosts`: the host's, bound read-only as it is, or with `--add-host`
/// entries a copy of it in the step's run directory with `IP\tHOST` lines after it (as
/// Docker writes them).
fn hosts_file(run: &Path, extra: &[kiln_ops::ExtraHost]) -> io::Result<PathBuf> {
    let host = PathBuf::from("/etc/hosts");
    if extra.is_empty() {
        return Ok(host);
    }
    let mut text = match fs::read_to_string(&host) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for h in extra {
        text.push_str(&format!("{}\t{}\n", h.ip, h.host));
    }
    let path = run.join("hosts");
    fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_host_lines_follow_the_hosts_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            hosts_file(dir.path(), &[]).unwrap(),
            PathBuf::from("/etc/hosts")
        );
        let extra = [kiln_ops::ExtraHost {
            host: "db.internal".into(),
            ip: "10.1.2.3".parse().unwrap(),
        }];
        let p = hosts_file(dir.path(), &extra).unwrap();
        let text = fs::read_to_string(p).unwrap();
        assert!(
            text.ends_with("\n10.1.2.3\tdb.internal\n") || text == "10.1.2.3\tdb.internal\n",
            "{text:?}"
        );
    }

    fn op(env: &[&str], proxy_env: &[&str]) -> ExecOp {
        ExecOp {
            args: vec!["true".into()],
            env: env.iter().map(|s| s.to_string()).collect(),
            proxy_env: proxy_env.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            user: String::new(),
            network: Network::Host,
            extra_hosts: vec![],
            shm_size: None,
            platform: None,
            insecure: false,
            mounts: vec![],
        }
    }

    /// Proxy build args stay out of the RUN key but must still reach the step.
    #[test]
    fn proxy_build_args_reach_the_step() {
        let env = step_env(&op(&["A=1"], &["HTTP_PROXY=http://p:3128"]), None);
        assert_eq!(
            env,
            [
                "A=1",
                "HTTP_PROXY=http://p:3128",
                &format!("PATH={DEFAULT_PATH}"),
                "HOME=/"
            ]
        );
    }

    #[test]
    fn path_and_home_only_when_unset() {
        let env = step_env(&op(&["PATH=/x", "HOME=/h"], &[]), Some("/root"));
        assert_eq!(env, ["PATH=/x", "HOME=/h"]);
        let env = step_env(&op(&[], &[]), Some("/root"));
        assert_eq!(env, [format!("PATH={DEFAULT_PATH}"), "HOME=/root".into()]);
    }
}
