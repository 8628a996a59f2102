//! From an image and `kiln run`'s flags to a container's config (Docker's rules for
//! Entrypoint, Cmd, Env, WorkingDir, User, StopSignal), and from a container to what the
//! sandbox starts: the image's snapshots as read-only lowers under the container's own
//! writable layer, its mounts, user and host files.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_cache::Store;
use kiln_frontend::convert::DEFAULT_PATH;
use kiln_fs::LayeredFs;
use kiln_ops::Platform;
use kiln_sandbox::container::{ContainerSpec, Stdio};
use kiln_sandbox::{MountSpec, NetworkMode, RootSpec, Spec};

use super::{
    Container, ContainerConfig, ContainerError, Containers, MountConfig, MountKind, Network,
    ProcessConfig, Result, io_err, now_rfc3339,
};
use crate::images::{ImageInfo, ImageStore, ImageStoreError};
use crate::snapshots::Snapshots;

/// What `kiln run` asks for beyond the image.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--name` (empty: generated).
    pub name: String,
    /// `-e`/`--env-file`, resolved to `KEY=value`, in order.
    pub env: Vec<String>,
    /// `--entrypoint` (`Some("")` clears the image's).
    pub entrypoint: Option<String>,
    /// `COMMAND [ARG...]`.
    pub command: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--network`.
    pub network: Option<Network>,
    /// `--init`.
    pub init: bool,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub stdin: bool,
    /// `--rm`.
    pub auto_remove: bool,
    /// `-v` and `--mount`.
    pub mounts: Vec<MountConfig>,
}

/// Sets `KEY=value` in `env`, replacing an entry for the same key.
fn env_set(env: &mut Vec<String>, kv: &str) {
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    {
        Some(e) => *e = kv.to_string(),
        None => env.push(kv.to_string()),
    }
}

fn has_env(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
}

/// The host's name (Docker's default for a container on the host's network).
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A container's config from its image and `run`'s options, as Docker resolves them:
/// `--entrypoint` replaces the image's Entrypoint and resets its Cmd; arguments replace
/// Cmd; `-e` overrides the image's Env by key; `-w` and `-u` override WorkingDir and
/// User. `id` and (without `--name`) `name` are the store's to fill in.
pub fn container_config(
    image_ref: &str,
    image: &ImageInfo,
    opts: &RunOptions,
) -> Result<ContainerConfig> {
    let ic = &image.config.config;
    let (entrypoint, cmd) = match &opts.entrypoint {
        Some(e) => (
            if e.is_empty() {
                Vec::new()
            } else {
                vec![e.clone()]
            },
            opts.command.clone(),
        ),
        None => (
            ic.entrypoint.clone().unwrap_or_default(),
            if opts.command.is_empty() {
                ic.cmd.clone().unwrap_or_default()
            } else {
                opts.command.clone()
            },
        ),
    };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(ContainerError::Invalid(format!(
            "no command specified: image {image_ref} has no Entrypoint or Cmd; give a command after the image"
        )));
    }
    let mut env = ic.env.clone();
    if !has_env(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    for kv in &opts.env {
        env_set(&mut env, kv);
    }
    let working_dir = match &opts.workdir {
        Some(w) if !w.starts_with('/') => {
            return Err(ContainerError::Invalid(format!(
                "the working directory '{w}' is invalid, it needs to be an absolute path"
            )));
        }
        Some(w) => w.clone(),
        None if ic.working_dir.is_empty() => "/".to_string(),
        None => ic.working_dir.clone(),
    };
    let network = opts.network.unwrap_or(Network::Host);
    let hostname = match (&opts.hostname, network) {
        (Some(h), _) => h.clone(),
        (None, Network::Host) => host_name(),
        // Filled in with the short id by `Containers::create`.
        (None, Network::None) => String::new(),
    };
    for m in &opts.mounts {
        if !m.target.starts_with('/') {
            return Err(ContainerError::Invalid(format!(
                "invalid mount path: '{}' mount path must be absolute",
                m.target
            )));
        }
    }
    Ok(ContainerConfig {
        id: String::new(),
        name: opts.name.clone(),
        image: image_ref.to_string(),
        image_id: image.config_digest.to_string(),
        manifest_digest: image.manifest_digest.to_string(),
        layers: image.layers.clone(),
        created: now_rfc3339(),
        process: ProcessConfig {
            entrypoint,
            cmd,
            env,
            working_dir,
            user: opts.user.clone().unwrap_or_else(|| ic.user.clone()),
            hostname,
            network,
            init: opts.init,
            tty: opts.tty,
            stdin: opts.stdin,
        },
        mounts: opts.mounts.clone(),
        stop_signal: ic.stop_signal.clone(),
        labels: ic.labels.clone(),
        auto_remove: opts.auto_remove,
    })
}

/// The image `reference` names: a tag, a full or short image id (config digest, as `kiln
/// images` shows it), a manifest digest, or a registry reference (resolved through the
/// image store's remote, if it has one).
pub fn find_image(
    store: &Store,
    images: &ImageStore,
    reference: &str,
) -> std::result::Result<ImageInfo, ImageStoreError> {
    let platform = Platform::host();
    let tags = store.tags()?;
    let wanted = crate::images::normalize_tag(reference);
    if !tags.iter().any(|(t, _)| *t == wanted) {
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hit = tags.iter().find(|(_, r)| {
                r.config.hex().starts_with(prefix) || r.manifest.hex().starts_with(prefix)
            });
            if let Some((_, rec)) = hit {
                return images.load(rec.manifest.as_str(), &platform);
            }
        }
    }
    images.get(reference, &platform).map(|i| (*i).clone())
}

/// Where a container's generated `/etc/hostname` and `/etc/hosts` are.
fn etc_files(containers: &Containers, c: &Container) -> Result<Vec<(PathBuf, String)>> {
    let dir = containers.dir(&c.id);
    let hostname = dir.join("hostname");
    let hn = &c.config.process.hostname;
    fs::write(&hostname, format!("{hn}\n")).map_err(io_err("writing", &hostname))?;
    let mut files = vec![(hostname, "/etc/hostname".to_string())];
    match c.config.process.network {
        // As Docker: the host's own /etc/hosts on the host's network.
        Network::Host => files.push(("/etc/hosts".into(), "/etc/hosts".into())),
        Network::None => {
            let hosts = dir.join("hosts");
            let text = format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
                 ff02::2\tip6-allrouters\n127.0.0.1\t{hn}\n"
            );
            fs::write(&hosts, text).map_err(io_err("writing", &hosts))?;
            files.push((hosts, "/etc/hosts".into()));
        }
    }
    files.push(("/etc/resolv.conf".into(), "/etc/resolv.conf".into()));
    Ok(files)
}

/// The image's snapshot directories of a container, bottom first (unpacked if need be:
/// their blobs must be in the store).
pub fn layer_dirs(store: &Store, c: &ContainerConfig) -> Result<Vec<PathBuf>> {
    Snapshots::new(store)
        .chain(store, &c.layers)
        .map_err(|e| ContainerError::Layers {
            image: c.image.clone(),
            message: format!("{e:#}"),
        })
}

/// The container's tree as the sandbox sees it, for lookups (`/etc/passwd`): the
/// image's layers with its writable layer on top.
pub fn tree(containers: &Containers, store: &Store, c: &Container) -> Result<LayeredFs> {
    let mut layers = layer_dirs(store, &c.config)?;
    layers.push(containers.upper_dir(&c.id));
    Ok(LayeredFs::new(layers, format!("container {}", c.name)))
}

/// What the sandbox starts for container `c`, with `stdio`.
pub fn sandbox_spec(
    containers: &Containers,
    store: &Store,
    c: &Container,
    stdio: Stdio,
) -> Result<ContainerSpec> {
    let p = &c.config.process;
    let mut lowers = layer_dirs(store, &c.config)?;
    let view = LayeredFs::new(
        lowers
            .iter()
            .cloned()
            .chain(std::iter::once(containers.upper_dir(&c.id)))
            .collect(),
        format!("container {}", c.name),
    );
    let user = kiln_sandbox::resolve_user(&p.user, &view)?;
    let run = containers.run_dir(&c.id);
    let merged = run.join("merged");
    let scratch = run.join("scratch");
    for d in [&merged, &scratch] {
        fs::create_dir_all(d).map_err(io_err("creating", d))?;
    }
    lowers.reverse();
    if lowers.is_empty() {
        // overlayfs needs a lower layer (an image of no layers: `FROM scratch`).
        let empty = run.join("empty");
        fs::create_dir_all(&empty).map_err(io_err("creating", &empty))?;
        lowers.push(empty);
    }
    let mut env = p.env.clone();
    if !has_env(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={}", p.hostname));
    }
    if !has_env(&env, "HOME") {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }
    if p.tty && !has_env(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    let mut mounts = Vec::new();
    for m in &c.config.mounts {
        mounts.push(match m.kind {
            MountKind::Bind => MountSpec::Bind {
                source: PathBuf::from(&m.source),
                target: m.target.clone(),
                readonly: m.readonly,
            },
            MountKind::Tmpfs => MountSpec::Tmpfs {
                target: m.target.clone(),
                size: m.size,
            },
            MountKind::Volume => MountSpec::Bind {
                source: crate::volumes::Volumes::open(store)
                    .data_dir(&m.source)
                    .map_err(|e| {
                        ContainerError::Invalid(format!(
                            "container {}: volume at {}: {e}",
                            c.name, m.target
                        ))
                    })?,
                target: m.target.clone(),
                readonly: m.readonly,
            },
        });
    }
    Ok(ContainerSpec {
        sandbox: Spec {
            root: RootSpec::Overlay {
                lowers,
                upper: containers.upper_dir(&c.id),
                work: containers.work_dir(&c.id),
            },
            merged,
            scratch,
            args: p.args(),
            env,
            cwd: p.working_dir.clone(),
            uid: user.uid,
            gid: user.gid,
            groups: user.groups,
            network: match p.network {
                Network::Host => NetworkMode::Host,
                Network::None => NetworkMode::None,
            },
            hostname: p.hostname.clone(),
            privileged: false,
            mounts,
            shm_size: None,
            host_files: etc_files(containers, c)?,
            stubs_file: run.join("stubs.json"),
            result_file: containers.result_path(&c.id),
        },
        spec_file: run.join("spec.json"),
        init: p.init,
        stdio: Stdio {
            log: Some(containers.log_path(&c.id)),
            ..stdio
        },
    })
}

/// Whether `path` is an absolute host path (a bind source) rather than a volume name.
pub fn is_host_path(path: &str) -> bool {
    Path::new(path).is_absolute() || path.starts_with('.') || path.starts_with('~')
}
