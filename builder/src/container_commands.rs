//! `kiln run`, `ps`, `start`, `stop`, `kill`, `logs`, `exec`, `rm`, `container prune` and
//! `inspect` of a container: Docker's flags, output and exit codes (125 when kiln itself
//! fails, 126/127 when the command cannot be run or found).

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use kiln_builder::containers::spec::{self, RunOptions};
use kiln_builder::containers::{
    Container, Containers, MountConfig, MountKind, Network, Status, kill_and_wait, signal_number,
    wait_gone,
};
use kiln_builder::format::{Record, Template};
use kiln_builder::images::ImageStore;
use kiln_cache::Store;
use kiln_sandbox::SandboxError;
use kiln_sandbox::container::{ContainerRuntime, ExecSpec, SignalForwarding, Stdio, TtySize};

/// A failure of a container command: printed as one line, exit code 125 unless the
/// runtime says otherwise (126, 127).
pub fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    let code = e
        .downcast_ref::<SandboxError>()
        .map_or(125, SandboxError::exit_code);
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

/// `--pull`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull when the store does not have the image.
    #[default]
    Missing,
    /// Always resolve the reference in its registry.
    Always,
    /// Never pull: the image must be in the store.
    Never,
}

/// `kiln run`'s flags.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Remove the container (and its writable layer) when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Name the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (`KEY=VALUE`, or `KEY` to take it from kiln's
    /// environment); repeatable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file (`KEY=VALUE` or `KEY` lines, `#` comments);
    /// repeatable.
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Bind mount a host path (`/host:/ctr[:ro|rw]`, the host path created if missing),
    /// mount a named volume (`NAME:/ctr[:ro|rw|nocopy]`, created if missing) or an
    /// anonymous one (`/ctr`); repeatable.
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Attach a mount: `type=bind|volume|tmpfs,source=PATH|NAME,target=PATH[,readonly]
    /// [,volume-nocopy]` (a missing bind source is an error); repeatable.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// Working directory inside the container (created if missing).
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User: `name|uid[:group|gid]`.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Overwrite the image's ENTRYPOINT (and reset its CMD).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Network: `host` (the default) or `none`. No bridge networks and no port
    /// publishing: a server in the container listens on the host's ports.
    #[arg(long = "network", alias = "net", value_parser = ["host", "none"])]
    pub network: Option<String>,
    /// Container host name (default: the host's on the host network, else the short id).
    #[arg(long = "hostname", short = 'h')]
    pub hostname: Option<String>,
    /// Run a minimal init as pid 1 that forwards signals and reaps zombies.
    #[arg(long)]
    pub init: bool,
    /// Keep stdin open (the command reads kiln's stdin).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// When to pull the image from its registry.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Print help (`-h` is `--hostname`, as in Docker).
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The image: a tag or id from `kiln images`, or a registry reference.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `kiln exec`'s flags.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable; repeatable.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// User: `name|uid[:group|gid]` (default: the container's).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Working directory (default: the container's).
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// The container.
    pub container: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// `KEY=VALUE` stays; `KEY` takes kiln's own value, and is dropped when unset (Docker).
fn resolve_env(kv: &str) -> Option<String> {
    if kv.contains('=') {
        Some(kv.to_string())
    } else {
        std::env::var(kv).ok().map(|v| format!("{kv}={v}"))
    }
}

fn env_from_file(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("open {}: no such file or directory", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let l = line.trim_start();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with('=') {
            bail!("invalid environment variable in {}: {line}", path.display());
        }
        out.extend(resolve_env(l));
    }
    Ok(out)
}

/// `-v SRC:DST[:OPTS]`.
fn parse_volume(v: &str) -> Result<MountConfig> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => bail!("invalid volume specification: '{v}'"),
    };
    let mut readonly = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => readonly = true,
            "rw" => readonly = false,
            "z" | "Z" | "private" | "rprivate" | "nocopy" => {}
            _ => bail!("invalid mode: {o}"),
        }
    }
    if !dst.starts_with('/') {
        bail!("invalid volume specification: '{v}': the container path must be absolute");
    }
    if !src.starts_with('/') {
        // A named volume, or (no source) an anonymous one.
        if !src.is_empty() && !kiln_builder::volumes::valid_name(src) {
            bail!(
                "create {src}: \"{src}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
            );
        }
        return Ok(MountConfig {
            kind: MountKind::Volume,
            source: src.to_string(),
            target: dst.to_string(),
            readonly,
            anonymous: src.is_empty(),
            size: None,
        });
    }
    let source = Path::new(src);
    if !source.exists() {
        // Docker's `-v` creates a missing bind source as a directory.
        std::fs::create_dir_all(source)
            .with_context(|| format!("creating the bind source {src}"))?;
    }
    Ok(MountConfig {
        kind: MountKind::Bind,
        source: src.to_string(),
        target: dst.to_string(),
        readonly,
        anonymous: false,
        size: None,
    })
}

fn parse_bool(v: &str, spec: &str) -> Result<bool> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bail!("invalid value for readonly in --mount {spec}: {v}"),
    }
}

/// `--mount type=bind|tmpfs,source=,target=[,readonly]`.
fn parse_mount(spec: &str) -> Result<MountConfig> {
    let mut kind = "volume";
    let mut source = String::new();
    let mut target = String::new();
    let mut readonly = false;
    let mut size = None;
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k.to_ascii_lowercase().as_str() {
            "type" => kind = v,
            "source" | "src" => source = v.to_string(),
            "target" | "destination" | "dst" => target = v.to_string(),
            "readonly" | "ro" => readonly = parse_bool(v, spec)?,
            "tmpfs-size" => {
                size = Some(
                    v.parse::<u64>()
                        .map_err(|_| anyhow!("invalid tmpfs-size in --mount {spec}: {v}"))?,
                )
            }
            "bind-propagation" | "consistency" | "tmpfs-mode" | "volume-nocopy" => {}
            _ => bail!("unexpected key '{k}' in '{field}'"),
        }
    }
    if target.is_empty() {
        bail!("invalid argument \"{spec}\" for \"--mount\" flag: target is required");
    }
    match kind {
        "bind" => {
            if source.is_empty() {
                bail!("invalid mount config for type \"bind\": field Source must not be empty");
            }
            if !Path::new(&source).exists() {
                bail!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {source}"
                );
            }
            let source = std::fs::canonicalize(&source)
                .with_context(|| format!("resolving the bind source {source}"))?;
            Ok(MountConfig {
                kind: MountKind::Bind,
                source: source.display().to_string(),
                target,
                readonly,
                anonymous: false,
                size: None,
            })
        }
        "tmpfs" => {
            if !source.is_empty() {
                bail!("invalid mount config for type \"tmpfs\": field Source must be empty");
            }
            Ok(MountConfig {
                kind: MountKind::Tmpfs,
                source: String::new(),
                target,
                readonly,
                anonymous: false,
                size,
            })
        }
        "volume" => {
            if !source.is_empty() && !kiln_builder::volumes::valid_name(&source) {
                bail!("invalid mount config for type \"volume\": invalid volume name {source:?}");
            }
            Ok(MountConfig {
                kind: MountKind::Volume,
                anonymous: source.is_empty(),
                source,
                target,
                readonly,
                size: None,
            })
        }
        other => {
            bail!("invalid mount type {other:?} in --mount {spec}: use bind, volume or tmpfs")
        }
    }
}

fn tty_size(tty: bool) -> Option<TtySize> {
    tty.then(|| ContainerRuntime::terminal_size().unwrap_or(TtySize { rows: 24, cols: 80 }))
}

/// `kiln run`.
pub fn run(
    root: &Path,
    mut registry: kiln_builder::remote::RegistrySettings,
    args: &RunArgs,
) -> Result<ExitCode> {
    let mut env = Vec::new();
    for f in &args.env_file {
        env.extend(env_from_file(f)?);
    }
    env.extend(args.env.iter().filter_map(|e| resolve_env(e)));
    let mut mounts = Vec::new();
    // Targets of volumes not to fill from the image (`nocopy`, `volume-nocopy`).
    let mut nocopy = Vec::new();
    for v in &args.volumes {
        let m = parse_volume(v)?;
        let opts = v.split(':').nth(2).unwrap_or("");
        if opts.split(',').any(|o| o == "nocopy") {
            nocopy.push(m.target.clone());
        }
        mounts.push(m);
    }
    for spec in &args.mounts {
        let m = parse_mount(spec)?;
        let flag = spec
            .split(',')
            .find_map(|f| f.strip_prefix("volume-nocopy"));
        if matches!(flag, Some("" | "=true" | "=1")) {
            nocopy.push(m.target.clone());
        }
        mounts.push(m);
    }
    let opts = RunOptions {
        name: args.name.clone().unwrap_or_default(),
        env,
        entrypoint: args.entrypoint.clone(),
        command: args.command.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: args.hostname.clone(),
        network: match args.network.as_deref() {
            Some("none") => Some(Network::None),
            _ => Some(Network::Host),
        },
        init: args.init,
        tty: args.tty,
        stdin: args.interactive,
        auto_remove: args.rm,
        mounts,
    };

    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let container = {
        let _lock = store.lock_shared()?;
        let images = match args.pull {
            PullPolicy::Never => ImageStore::new(&store),
            policy => {
                registry.always_pull = policy == PullPolicy::Always;
                ImageStore::new(&store).with_remote(
                    Arc::new(kiln_builder::remote::Remote::new(registry)),
                    Arc::new(kiln_solver::NoReporter),
                )
            }
        };
        let image = spec::find_image(&store, &images, &args.image).map_err(|e| {
            anyhow!(
                "Unable to find image '{}': {}{}",
                args.image,
                kiln_solver::error_chain(&e),
                crate::commands::did_you_mean(&store, &args.image)
            )
        })?;
        // Until the container exists (which pins its layers), a lease keeps a concurrent
        // `kiln prune` off the image's blobs and snapshots; they are made present after.
        let _lease = store.lease(
            &format!("kiln run {}", args.image),
            &image
                .layers
                .iter()
                .flat_map(|l| [l.digest.to_string(), l.diff_id.to_string()])
                .chain([
                    image.manifest_digest.to_string(),
                    image.config_digest.to_string(),
                ])
                .collect::<Vec<_>>(),
        )?;
        // Only the layers not unpacked yet are read from their blobs.
        let snapshots = kiln_builder::snapshots::Snapshots::new(&store);
        images.ensure_layers(
            image
                .layers
                .iter()
                .filter(|l| !snapshots.path(&l.diff_id).is_dir()),
            None,
        )?;
        let mut config = spec::container_config(&args.image, &image, &opts)?;
        // A bad `-u` fails before anything is made (Docker checks it at create).
        let view = kiln_fs::LayeredFs::new(
            spec::layer_dirs(&store, &config)?,
            format!("image {}", args.image),
        );
        kiln_sandbox::resolve_user(&config.process.user, &view)
            .with_context(|| format!("unable to find user {}", config.process.user))?;
        let volumes = crate::storage_cmds::attach_volumes(
            &store,
            &mut config,
            &image.config.config.volumes,
            &view,
            &nocopy,
        )?;
        match containers.create(config) {
            Ok(c) => c,
            Err(e) => {
                crate::storage_cmds::drop_volumes(&store, &volumes);
                return Err(e.into());
            }
        }
    };
    if args.detach {
        start_detached(root, &store, &containers, &container)?;
        println!("{}", container.id);
        Ok(ExitCode::SUCCESS)
    } else {
        let c = start_attached(&store, &containers, &container, args.interactive)?;
        if container.config.auto_remove {
            crate::storage_cmds::remove_container(&store, &containers, &container, true, true)?;
        }
        Ok(code(c))
    }
}

/// Starts `c` in the foreground: its output streams through and into its log, kiln's
/// signals go to its pid 1. Returns its exit code (the runtime's 125/126/127 when it
/// cannot start).
fn start_attached(
    store: &Store,
    containers: &Containers,
    c: &Container,
    stdin: bool,
) -> Result<i32> {
    containers.prepare_start(&c.id)?;
    let stdio = Stdio {
        stdin,
        tty: tty_size(c.config.process.tty),
        attach: true,
        log: None,
    };
    let spec = spec::sandbox_spec(containers, store, c, stdio)?;
    let runtime = ContainerRuntime::new()?;
    // Caught from before the start: a signal that comes while it starts waits for pid 1.
    let forwarding = SignalForwarding::pending();
    let mut running = match runtime.start(&spec) {
        Ok(r) => r,
        Err(e) => {
            let code = e.exit_code();
            containers.mark_exited(&c.id, code, Some(e.to_string()))?;
            eprintln!("error: {e}");
            return Ok(code);
        }
    };
    forwarding.target(running.pid());
    containers.mark_running(&c.id, running.pid(), running.start_time(), false)?;
    let code = running.wait()?;
    drop(forwarding);
    containers.mark_exited(&c.id, code, None)?;
    Ok(code)
}

/// Starts `c` under a monitor that records its exit (and removes it, with `--rm`).
fn start_detached(
    root: &Path,
    store: &Store,
    containers: &Containers,
    c: &Container,
) -> Result<()> {
    containers.prepare_start(&c.id)?;
    let stdio = Stdio {
        stdin: false,
        tty: tty_size(c.config.process.tty),
        attach: false,
        log: None,
    };
    let spec = spec::sandbox_spec(containers, store, c, stdio)?;
    let runtime = ContainerRuntime::new()?;
    let then: Vec<String> = if c.config.auto_remove {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        vec![
            "--root".into(),
            root.display().to_string(),
            "rm".into(),
            "-f".into(),
            "-v".into(),
            c.id.clone(),
        ]
    } else {
        Vec::new()
    };
    match runtime.spawn_monitor_then(&spec, &containers.exit_path(&c.id), &then) {
        Ok(m) => {
            // The monitor may already have recorded the end (and removed the container).
            if containers.dir(&c.id).exists() {
                let _ = containers.mark_running(&c.id, m.pid, m.start_time, true);
            }
            Ok(())
        }
        Err(e) => {
            containers.mark_exited(&c.id, e.exit_code(), Some(e.to_string()))?;
            if c.config.auto_remove {
                crate::storage_cmds::remove_container(store, containers, c, true, true)?;
            }
            Err(e.into())
        }
    }
}

/// `kiln start [-a] CONTAINER...`.
pub fn start(root: &Path, attach: bool, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    if attach && names.len() > 1 {
        bail!("you cannot attach to multiple containers at once");
    }
    for name in names {
        let c = containers.get(name)?;
        if c.state.running() {
            if !attach {
                println!("{name}");
            }
            continue;
        }
        if attach {
            let code = start_attached(&store, &containers, &c, false)?;
            if c.config.auto_remove {
                crate::storage_cmds::remove_container(&store, &containers, &c, true, true)?;
            }
            return Ok(self::code(code));
        }
        start_detached(root, &store, &containers, &c)?;
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until what owns a container that just ended has recorded it (the monitor's
/// exit record, or the foreground kiln's state), up to a few seconds.
fn wait_recorded(containers: &Containers, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match containers.get(id) {
            Ok(c) if c.state.status == Status::Dead => {}
            _ => return,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kiln stop [-t N] CONTAINER...`: the image's StopSignal (SIGTERM), then SIGKILL.
pub fn stop(root: &Path, time: u64, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    for name in names {
        let c = containers.get(name)?;
        if c.state.running() {
            let sig_name = c.config.stop_signal.as_deref().unwrap_or("SIGTERM");
            let sig = signal_number(sig_name).unwrap_or(15);
            kiln_sandbox::container::signal(c.state.pid, c.state.start_time, sig);
            if !wait_gone(&c.state, Duration::from_secs(time)) {
                kill_and_wait(&c.state);
            }
            wait_recorded(&containers, &c.id);
        }
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln kill [-s SIGNAL] CONTAINER...`.
pub fn kill(root: &Path, signal: &str, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let sig = signal_number(signal).ok_or_else(|| anyhow!("invalid signal: {signal}"))?;
    for name in names {
        let c = containers.get(name)?;
        if !c.state.running()
            || !kiln_sandbox::container::signal(c.state.pid, c.state.start_time, sig)
        {
            bail!(
                "cannot kill container: {name}: container {} is not running",
                c.id
            );
        }
        println!("{name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the complete json-file lines of `buf` to stdout/stderr; keeps a partial last
/// line in `buf`.
fn print_log_lines(buf: &mut Vec<u8>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let end = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => return Ok(()),
    };
    for line in buf[..end].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let text = v.get("log").and_then(|l| l.as_str()).unwrap_or_default();
        if v.get("stream").and_then(|s| s.as_str()) == Some("stderr") {
            err.write_all(text.as_bytes())?;
        } else {
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush()?;
    buf.drain(..end);
    Ok(())
}

/// `kiln logs [-f] CONTAINER`.
pub fn logs(root: &Path, follow: bool, name: &str) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let c = containers.get(name)?;
    let path = containers.log_path(&c.id);
    let mut buf = Vec::new();
    let mut pos = 0u64;
    loop {
        let running = follow && containers.get(&c.id).is_ok_and(|c| c.state.running());
        if let Ok(mut f) = std::fs::File::open(&path) {
            f.seek(SeekFrom::Start(pos))?;
            pos += f.read_to_end(&mut buf)? as u64;
            print_log_lines(&mut buf)?;
        }
        if !running {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kiln exec`.
pub fn exec(root: &Path, args: &ExecArgs) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let c = containers.get(&args.container)?;
    if !c.state.running() {
        bail!("container {} is not running", c.id);
    }
    let p = &c.config.process;
    let proc_root = PathBuf::from(format!("/proc/{}/root", c.state.pid));
    let view = kiln_fs::LayeredFs::new(vec![proc_root], format!("container {}", c.name));
    let user_spec = args.user.clone().unwrap_or_else(|| p.user.clone());
    let user = kiln_sandbox::resolve_user(&user_spec, &view)
        .with_context(|| format!("unable to find user {user_spec}"))?;
    let mut env = p.env.clone();
    env.push(format!("HOSTNAME={}", p.hostname));
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    if args.tty {
        env.push("TERM=xterm".into());
    }
    env.extend(args.env.iter().filter_map(|e| resolve_env(e)));
    let spec = ExecSpec {
        args: args.command.clone(),
        env,
        cwd: args
            .workdir
            .clone()
            .unwrap_or_else(|| p.working_dir.clone()),
        uid: user.uid,
        gid: user.gid,
        groups: user.groups,
        privileged: false,
        stdio: Stdio {
            stdin: args.interactive,
            tty: tty_size(args.tty),
            attach: true,
            log: None,
        },
    };
    let runtime = ContainerRuntime::new()?;
    let forwarding = SignalForwarding::pending();
    let mut process = runtime.exec(c.state.pid, c.state.start_time, &spec)?;
    forwarding.target(process.pid());
    let status = process.wait()?;
    drop(forwarding);
    Ok(code(status))
}

/// `kiln rm [-f] [-v] CONTAINER...`: removes each; the first failure is the error (the
/// others are still removed), as Docker does.
pub fn rm(root: &Path, force: bool, volumes: bool, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let mut failed = None;
    for name in names {
        let r = containers.get(name).and_then(|c| {
            crate::storage_cmds::remove_container(&store, &containers, &c, force, volumes)
        });
        match r {
            Ok(()) => println!("{name}"),
            Err(e) => {
                if failed.is_some() {
                    eprintln!("error: {e}");
                } else {
                    failed = Some(e);
                }
            }
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Docker's sizes (`go-units.HumanSize`): decimal units, 4 significant digits.
pub fn docker_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    // `%.4g`: 4 significant digits, no trailing zeros.
    let digits = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[u])
}

/// `kiln container prune [-f]`.
pub fn prune(root: &Path, force: bool) -> Result<ExitCode> {
    if !crate::storage_cmds::confirm(force, crate::storage_cmds::warnings::CONTAINERS)? {
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let mut deleted = Vec::new();
    let mut reclaimed = 0;
    for c in containers.list()? {
        if c.state.running() {
            continue;
        }
        let size = dir_size(&containers.upper_dir(&c.id));
        containers.remove(&c.id, false)?;
        reclaimed += size;
        deleted.push(c.id);
    }
    if !deleted.is_empty() {
        println!("Deleted Containers:");
        for id in &deleted {
            println!("{id}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", docker_size(reclaimed));
    Ok(ExitCode::SUCCESS)
}

/// go-units' `HumanDuration`, as `docker ps` prints ages.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    let mins = d.num_minutes();
    let hours = d.num_hours();
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if mins == 1 {
        "About a minute".into()
    } else if mins < 60 {
        format!("{mins} minutes")
    } else if (hours as f64) < 1.5 && hours <= 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    }
}

fn ago(t: Option<&str>) -> Option<chrono::Duration> {
    let t = chrono::DateTime::parse_from_rfc3339(t?).ok()?;
    Some((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).max(chrono::Duration::zero()))
}

/// `docker ps`'s STATUS.
pub fn status_text(c: &Container) -> String {
    let s = &c.state;
    match s.status {
        Status::Created => "Created".into(),
        Status::Running => format!(
            "Up {}",
            human_duration(ago(s.started_at.as_deref()).unwrap_or_default())
        ),
        Status::Exited => match ago(s.finished_at.as_deref()) {
            Some(d) => format!("Exited ({}) {} ago", s.exit_code, human_duration(d)),
            None => format!("Exited ({})", s.exit_code),
        },
        Status::Dead => "Dead".into(),
    }
}

/// `docker ps`'s COMMAND: the argv quoted, cut to 20 characters with an ellipsis.
fn command_text(c: &Container, no_trunc: bool) -> String {
    let cmd = c.config.process.args().join(" ");
    let cmd = if !no_trunc && cmd.chars().count() > 20 {
        cmd.chars().take(19).collect::<String>() + "…"
    } else {
        cmd
    };
    format!("\"{cmd}\"")
}

/// Flags of `kiln ps`.
pub struct PsFlags {
    /// `-a`.
    pub all: bool,
    /// `-q`.
    pub quiet: bool,
    /// `--no-trunc`.
    pub no_trunc: bool,
    /// `-s`.
    pub size: bool,
    /// `--format`.
    pub format: Option<String>,
}

/// `kiln ps [-a] [-q] [-s] [--no-trunc] [--format TEMPLATE]`, as `docker ps`: the
/// default table is Docker's template, `-q` wins over `--format` (with Docker's
/// warning), a template that shows `.Size` computes sizes without `-s`, and a bad
/// template fails (exit 1, Docker's message) before anything is listed.
pub fn ps(root: &Path, flags: &PsFlags) -> Result<ExitCode> {
    let kind = &kiln_builder::format::CONTAINERS;
    let format = match (&flags.format, flags.quiet) {
        (Some(f), false) => f.clone(),
        (Some(_), true) => {
            eprintln!(
                "WARNING: Ignoring custom format, because both --format and --quiet are set."
            );
            "{{.ID}}".to_string()
        }
        (None, true) => "{{.ID}}".to_string(),
        (None, false) if flags.size => format!("{}\\t{{{{.Size}}}}", kind.default_table),
        (None, false) => "table".to_string(),
    };
    let template = match Template::parse(&format, kind) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let size = !flags.quiet && (flags.size || template.uses("Size"));
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let mut records = Vec::new();
    for c in containers.list()? {
        if flags.all || c.state.running() {
            records.push(ps_record(&store, &containers, &c, flags.no_trunc, size)?);
        }
    }
    print!("{}", template.render(kind, &records));
    Ok(ExitCode::SUCCESS)
}

/// One container's fields for `ps --format`, as Docker's `ContainerContext` shows them.
fn ps_record(
    store: &Store,
    containers: &Containers,
    c: &Container,
    no_trunc: bool,
    size: bool,
) -> Result<Record> {
    let trunc = |s: &str| -> String {
        if no_trunc {
            s.to_string()
        } else {
            s.trim_start_matches("sha256:").chars().take(12).collect()
        }
    };
    let image = if c.config.image.starts_with("sha256:") {
        trunc(&c.config.image)
    } else {
        c.config.image.clone()
    };
    let created = chrono::DateTime::parse_from_rfc3339(&c.config.created).ok();
    let mut r = Record::default();
    r.set("ID", trunc(&c.id))
        .set("Names", c.name.clone())
        .set("Image", image)
        .set("Command", command_text(c, no_trunc))
        .set(
            "CreatedAt",
            created.map_or_else(String::new, |t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S +0000 UTC")
                    .to_string()
            }),
        )
        .set(
            "RunningFor",
            format!(
                "{} ago",
                human_duration(ago(Some(&c.config.created)).unwrap_or_default())
            ),
        )
        .set("Status", status_text(c))
        .set("State", c.state.status.as_str())
        .set("Ports", "")
        .set("Networks", c.config.process.network.as_str())
        .set(
            "LocalVolumes",
            c.config
                .mounts
                .iter()
                .filter(|m| m.kind == MountKind::Volume)
                .count()
                .to_string(),
        )
        .set(
            "Mounts",
            c.config
                .mounts
                .iter()
                .filter(|m| m.kind != MountKind::Tmpfs)
                .map(|m| trunc(&m.source))
                .collect::<Vec<_>>()
                .join(","),
        )
        .set(
            "Labels",
            c.config
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
    let size_text = if size {
        let (rw, virt) = kiln_builder::changes::container_size(
            store,
            &containers.upper_dir(&c.id),
            &c.config.layers,
        )?;
        kiln_builder::changes::ps_size(rw, virt)
    } else {
        "0B".to_string()
    };
    r.set("Size", size_text);
    r.labels = c.config.labels.clone();
    Ok(r)
}

/// A container as `docker inspect` shows it.
pub fn inspect_json(containers: &Containers, c: &Container) -> serde_json::Value {
    let s = &c.state;
    let p = &c.config.process;
    let zero = "0001-01-01T00:00:00Z";
    let mounts: Vec<serde_json::Value> = c
        .config
        .mounts
        .iter()
        .map(|m| {
            serde_json::json!({
                "Type": match m.kind { MountKind::Bind => "bind", MountKind::Volume => "volume", MountKind::Tmpfs => "tmpfs" },
                "Name": if m.kind == MountKind::Volume { Some(&m.source) } else { None },
                "Source": m.source,
                "Destination": m.target,
                "RW": !m.readonly,
            })
        })
        .collect();
    serde_json::json!({
        "Id": c.id,
        "Created": c.config.created,
        "Path": p.args().first(),
        "Args": p.args().get(1..).unwrap_or_default(),
        "State": {
            "Status": s.status.as_str(),
            "Running": s.running(),
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": s.status == Status::Dead,
            "Pid": s.pid,
            "ExitCode": s.exit_code,
            "Error": s.error.clone().unwrap_or_default(),
            "StartedAt": s.started_at.as_deref().unwrap_or(zero),
            "FinishedAt": s.finished_at.as_deref().unwrap_or(zero),
        },
        "Image": c.image_id,
        "LogPath": containers.log_path(&c.id),
        "Name": format!("/{}", c.name),
        "HostConfig": {
            "NetworkMode": p.network.as_str(),
            "AutoRemove": c.config.auto_remove,
            "Init": p.init,
        },
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {
                "UpperDir": containers.upper_dir(&c.id),
                "WorkDir": containers.work_dir(&c.id),
            },
        },
        "Mounts": mounts,
        "Config": {
            "Hostname": p.hostname,
            "User": p.user,
            "Tty": p.tty,
            "OpenStdin": p.stdin,
            "Env": p.env,
            "Cmd": p.cmd,
            "Image": c.config.image,
            "WorkingDir": p.working_dir,
            "Entrypoint": if p.entrypoint.is_empty() { None } else { Some(&p.entrypoint) },
            "Labels": c.config.labels,
            "StopSignal": c.config.stop_signal,
        },
    })
}

/// `kiln inspect NAME...`: containers first, then images, as Docker looks them up.
pub fn inspect(root: &Path, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let mut out = Vec::new();
    for name in names {
        match containers.get(name) {
            Ok(c) => out.push(inspect_json(&containers, &c)),
            Err(kiln_builder::containers::ContainerError::NotFound(_)) => {
                let image = crate::commands::inspect_image(&store, name).map_err(|_| {
                    anyhow!(
                        "No such object: {name}{}",
                        crate::commands::did_you_mean(&store, name)
                    )
                })?;
                out.push(image);
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_as_docker_prints_them() {
        assert_eq!(docker_size(0), "0B");
        assert_eq!(docker_size(1234), "1.234kB");
        assert_eq!(docker_size(55_000_000), "55MB");
        assert_eq!(docker_size(123_456_789), "123.5MB");
        let s = chrono::Duration::seconds;
        assert_eq!(human_duration(s(0)), "Less than a second");
        assert_eq!(human_duration(s(3)), "3 seconds");
        assert_eq!(human_duration(s(70)), "About a minute");
        assert_eq!(human_duration(s(150)), "2 minutes");
        assert_eq!(human_duration(s(3700)), "About an hour");
        assert_eq!(human_duration(s(3 * 3600)), "3 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
    }

    #[test]
    fn volume_and_mount_flags() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("made");
        let m = parse_volume(&format!("{}:/data:ro", src.display())).unwrap();
        assert!(src.is_dir(), "-v creates a missing bind source");
        assert_eq!(
            (m.kind, m.target.as_str(), m.readonly),
            (MountKind::Bind, "/data", true)
        );
        let e = parse_mount(&format!(
            "type=bind,source={},target=/x",
            dir.path().join("nope").display()
        ))
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "invalid mount config for type \"bind\": bind source path does not exist: "
            ),
            "{e}"
        );
        let m = parse_mount("type=tmpfs,target=/t,tmpfs-size=1024").unwrap();
        assert_eq!((m.kind, m.size), (MountKind::Tmpfs, Some(1024)));
        let m = parse_mount(&format!(
            "type=bind,src={},dst=/y,readonly",
            dir.path().display()
        ))
        .unwrap();
        assert!(m.readonly);
        let m = parse_volume("data:/x:ro").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.readonly, m.anonymous),
            (MountKind::Volume, "data", true, false)
        );
        let m = parse_volume("/x").unwrap();
        assert_eq!((m.kind, m.anonymous), (MountKind::Volume, true));
        assert!(
            parse_volume("b@d:/x")
                .unwrap_err()
                .to_string()
                .contains("includes invalid characters for a local volume name")
        );
        let m = parse_mount("type=volume,source=v1,target=/v,volume-nocopy").unwrap();
        assert_eq!((m.kind, m.source.as_str()), (MountKind::Volume, "v1"));
        assert!(parse_volume("/a:rel").is_err());
    }
}
