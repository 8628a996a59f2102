//! The container store: what `kiln run` creates and `ps`, `start`, `stop`, `rm`, ...
//! act on.
//!
//! Each container is a directory `containers/<64-hex id>/` of the store:
//!
//! - `config.json`: what it is ([`ContainerConfig`]): id, name, the image as given and
//!   its id, the resolved process (entrypoint, cmd, env, workdir, user, hostname,
//!   network, init, tty, stdin), its mounts, the image's StopSignal and labels. Written
//!   once, at creation.
//! - `state.json`: how it is ([`State`]): created, running (pid and start time), exited
//!   (code), with start and finish times. Rewritten atomically (temp file + rename).
//! - `upper/` and `work/`: its writable layer, the overlay's upper and work dirs over
//!   the image's snapshots (which stay shared and read-only).
//! - `<id>-json.log`: its output as Docker's json-file log.
//! - `run/`: the sandbox's scratch (spec, mount point, how pid 1 ended), and
//!   `exit.json`, where a detached container's monitor records how it ended.
//!
//! A kiln killed with -9 cannot update `state.json`: a container recorded as running
//! whose pid is gone (or is another process now) is reported [`Status::Exited`] with the
//! code its monitor or init process recorded, or [`Status::Dead`] when none did.

pub mod names;
pub mod spec;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kiln_cache::Store;
use kiln_sandbox::InitResult;
use kiln_sandbox::container::{ExitRecord, is_alive};
use serde::{Deserialize, Serialize};

use crate::snapshots::LayerRef;

/// Why a container operation failed: one line naming the container, path or name.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No container has this name, id or id prefix.
    #[error("No such container: {0}")]
    NotFound(String),
    /// An id prefix matches several containers.
    #[error("multiple containers found with provided prefix: {0}")]
    Ambiguous(String),
    /// The name is taken (Docker's message).
    #[error(
        "Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name."
    )]
    NameInUse {
        /// The name.
        name: String,
        /// The container that has it.
        id: String,
    },
    /// The name breaks Docker's rule.
    #[error("Invalid container name ({0}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    InvalidName(String),
    /// A running container cannot be removed without force (Docker's message).
    #[error(
        "cannot remove container \"/{0}\": container is running: stop the container before removing or force remove"
    )]
    Running(String),
    /// A container file is unreadable or unwritable.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A container file is not what kiln wrote.
    #[error("container file {} is corrupt: {source}", .path.display())]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Something about the run request is wrong (a flag's value, the image's config).
    #[error("{0}")]
    Invalid(String),
    /// The image's layers could not be prepared.
    #[error("preparing the layers of image {image}: {message}")]
    Layers {
        /// The image as given.
        image: String,
        /// Why.
        message: String,
    },
    /// A user name or group that the image's `/etc/passwd` or `/etc/group` lacks.
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::SandboxError),
}

/// Result of this module.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ContainerError + 'p {
    move |source| ContainerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network (kiln's default: there are no bridge networks).
    Host,
    /// Only loopback.
    None,
}

impl Network {
    /// Docker's name (`NetworkMode`).
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
        }
    }
}

/// The process of a container, as resolved from the image's config and `run`'s flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// The entrypoint in effect (the image's, or `--entrypoint`).
    pub entrypoint: Vec<String>,
    /// The command in effect (`run`'s arguments, or the image's `Cmd`).
    pub cmd: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory.
    pub working_dir: String,
    /// `USER` as given (`name`, `uid`, `name:group`, `uid:gid`; empty: root).
    pub user: String,
    /// Host name.
    pub hostname: String,
    /// Network.
    pub network: Network,
    /// `--init`.
    pub init: bool,
    /// `-t`.
    pub tty: bool,
    /// `-i`.
    pub stdin: bool,
}

impl ProcessConfig {
    /// argv: entrypoint then cmd.
    pub fn args(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(self.cmd.iter())
            .cloned()
            .collect()
    }
}

/// The kind of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A kiln volume.
    Volume,
    /// A tmpfs.
    Tmpfs,
}

/// A mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    /// Its kind.
    pub kind: MountKind,
    /// Host path (bind), volume name (volume), empty (tmpfs).
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Read-only.
    pub readonly: bool,
    /// A volume made for this container only (`-v /path`, the image's `VOLUME`s):
    /// removed with it by `rm -v` and `--rm`.
    #[serde(default)]
    pub anonymous: bool,
    /// tmpfs size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
}

/// What a container is: written once, at creation (`config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// 64 hex digits.
    pub id: String,
    /// Its name (without Docker's leading `/`).
    pub name: String,
    /// The image as given to `run`.
    pub image: String,
    /// The image's id: its config digest.
    pub image_id: String,
    /// The image's manifest digest.
    pub manifest_digest: String,
    /// The image's layers, bottom first: their snapshots are the container's lowers.
    pub layers: Vec<LayerRef>,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Its process.
    pub process: ProcessConfig,
    /// Its mounts.
    pub mounts: Vec<MountConfig>,
    /// The image's `StopSignal` (`SIGTERM` when unset).
    pub stop_signal: Option<String>,
    /// The image's labels.
    pub labels: BTreeMap<String, String>,
    /// `--rm`.
    pub auto_remove: bool,
}

/// A container's status, as Docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made, never started.
    Created,
    /// Its pid 1 runs.
    Running,
    /// Ended (see [`State::exit_code`]).
    Exited,
    /// Ended with nothing recording how (its kiln was killed).
    Dead,
}

impl Status {
    /// `created`, `running`, `exited`, `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

/// How a container is (`state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Status.
    pub status: Status,
    /// Host pid of pid 1 while running (0 otherwise).
    pub pid: i32,
    /// Its start time (`kiln_sandbox::container::start_time`), against pid reuse.
    pub start_time: u64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// When it last started (RFC 3339).
    pub started_at: Option<String>,
    /// When it last ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Why it could not start or run, if kiln knows.
    #[serde(default)]
    pub error: Option<String>,
    /// Whether a detached monitor owns it (records `exit.json` when it ends).
    #[serde(default)]
    pub detached: bool,
}

impl State {
    fn created() -> State {
        State {
            status: Status::Created,
            pid: 0,
            start_time: 0,
            exit_code: 0,
            started_at: None,
            finished_at: None,
            error: None,
            detached: false,
        }
    }

    /// Whether its pid 1 runs.
    pub fn running(&self) -> bool {
        self.status == Status::Running
    }
}

/// A container: its config and its current state.
#[derive(Debug, Clone)]
pub struct Container {
    /// 64 hex digits.
    pub id: String,
    /// Name.
    pub name: String,
    /// The image's config digest.
    pub image_id: String,
    /// Its config.
    pub config: ContainerConfig,
    /// Its state, with a dead pid resolved (see the module docs).
    pub state: State,
}

impl Container {
    /// The first 12 hex digits of its id.
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

/// Now, as RFC 3339 with nanoseconds (Docker's form).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Random bytes from the kernel.
fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    let path = Path::new("/dev/urandom");
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io_err("reading", path))?;
    Ok(buf)
}

/// Writes `value` as JSON to `path`, atomically ([`kiln_cache::atomic`]).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| ContainerError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    kiln_cache::atomic::write(path, &bytes).map_err(|e| ContainerError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source: e.into_io(),
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(io_err("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| ContainerError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// The containers of a store.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
    tmp: PathBuf,
}

/// Whether `s` is 64 lowercase hex digits.
fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Containers {
    /// The containers of `store` (`containers/`, created if missing).
    pub fn open(store: &Store) -> Result<Containers> {
        let dir = store.containers_dir();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(Containers {
            dir,
            tmp: store.tmp_dir(),
        })
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Its writable layer: the overlay's upper dir.
    pub fn upper_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join("upper")
    }

    /// overlayfs' work dir of its writable layer.
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join("work")
    }

    /// The sandbox's scratch directory (spec, mount point, result).
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join("run")
    }

    /// Its json-file log.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join(format!("{id}-json.log"))
    }

    /// Where a detached container's monitor records how it ended.
    pub fn exit_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("exit.json")
    }

    /// Where the init process records how pid 1 ended.
    pub fn result_path(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("result.json")
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("state.json")
    }

    fn config_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("config.json")
    }

    /// Ids of every container (directories with a config).
    fn ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(io_err("reading", &self.dir))?;
        for e in rd {
            let e = e.map_err(io_err("reading", &self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_id(&name) && self.config_path(&name).is_file() {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    /// Loads container `id`.
    fn load(&self, id: &str) -> Result<Container> {
        let config: ContainerConfig = read_json(&self.config_path(id))?;
        let state = match read_json::<State>(&self.state_path(id)) {
            Ok(s) => s,
            Err(ContainerError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                State::created()
            }
            Err(e) => return Err(e),
        };
        let state = self.resolve(id, state);
        Ok(Container {
            id: config.id.clone(),
            name: config.name.clone(),
            image_id: config.image_id.clone(),
            config,
            state,
        })
    }

    /// A state that says running with a pid that is gone: exited with what the monitor
    /// or the init process recorded, or dead.
    fn resolve(&self, id: &str, mut state: State) -> State {
        if state.status != Status::Running || is_alive(state.pid, state.start_time) {
            return state;
        }
        let exit: Option<ExitRecord> = read_json(&self.exit_path(id)).ok();
        let result: Option<InitResult> = read_json(&self.result_path(id)).ok();
        let finished = |path: &Path| {
            fs::metadata(path).and_then(|m| m.modified()).ok().map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            })
        };
        state.pid = 0;
        state.start_time = 0;
        match (exit, result) {
            (Some(e), _) => {
                state.status = Status::Exited;
                state.exit_code = e.exit_code;
                state.finished_at = Some(e.finished_at);
                state.error = e.error;
            }
            (None, Some(r)) => {
                state.status = Status::Exited;
                state.exit_code = kiln_sandbox::container::docker_code(&r);
                state.finished_at = finished(&self.result_path(id));
                if let InitResult::SetupError(m) = r {
                    state.error = Some(m);
                }
            }
            (None, None) => {
                state.status = Status::Dead;
                // Docker reports a container it lost track of with code 137 (killed).
                state.exit_code = 137;
                state.finished_at = state.finished_at.or_else(|| finished(&self.state_path(id)));
            }
        }
        state
    }

    /// Every container, newest first.
    pub fn list(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.load(&id) {
                Ok(c) => out.push(c),
                // Removed meanwhile.
                Err(ContainerError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| b.config.created.cmp(&a.config.created));
        Ok(out)
    }

    /// The container a name, full id or unique id prefix names (as Docker looks them up:
    /// full id, then name, then prefix).
    pub fn get(&self, name_or_id: &str) -> Result<Container> {
        let wanted = name_or_id.strip_prefix('/').unwrap_or(name_or_id);
        if is_id(wanted) && self.config_path(wanted).is_file() {
            return self.load(wanted);
        }
        let all = self.list()?;
        if let Some(c) = all.iter().find(|c| c.name == wanted) {
            return Ok(c.clone());
        }
        let hex = !wanted.is_empty() && wanted.bytes().all(|b| b.is_ascii_hexdigit());
        let mut hits = all.into_iter().filter(|c| hex && c.id.starts_with(wanted));
        match (hits.next(), hits.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => Err(ContainerError::Ambiguous(name_or_id.to_string())),
            _ => Err(ContainerError::NotFound(name_or_id.to_string())),
        }
    }

    /// Holds the lock that makes name checks and creation one step.
    fn lock_names(&self) -> Result<fs::File> {
        let path = self.dir.join(".names.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("locking", &path)(e.into()))?;
        Ok(f)
    }

    /// Creates a container: a fresh id, the name (given, or generated), its directory
    /// with an empty writable layer, `config.json` and a `created` state. `config.id`
    /// and `config.name` are filled in here (`config.name` empty: generate one).
    pub fn create(&self, mut config: ContainerConfig) -> Result<Container> {
        if !config.name.is_empty() && !names::is_valid(&config.name) {
            return Err(ContainerError::InvalidName(config.name));
        }
        let _lock = self.lock_names()?;
        let existing = self.list()?;
        if config.name.is_empty() {
            for retry in 0.. {
                let r: [u8; 16] = random_bytes()?;
                let a = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                let b = u64::from_le_bytes(r[8..].try_into().expect("8 bytes"));
                let name = names::generate(a, b, retry);
                if !existing.iter().any(|c| c.name == name) {
                    config.name = name;
                    break;
                }
            }
        } else if let Some(c) = existing.iter().find(|c| c.name == config.name) {
            return Err(ContainerError::NameInUse {
                name: config.name,
                id: c.id.clone(),
            });
        }
        let id: String = random_bytes::<32>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        config.id = id.clone();
        if config.process.hostname.is_empty() {
            config.process.hostname = id[..12].to_string();
        }
        // Made in tmp/ and renamed into place: a half-made container never shows.
        fs::create_dir_all(&self.tmp).map_err(io_err("creating", &self.tmp))?;
        let tmp = self
            .tmp
            .join(format!("{}.container-{}", Store::writer(), &id[..12]));
        let make = || -> Result<()> {
            fs::create_dir(&tmp).map_err(io_err("creating", &tmp))?;
            for d in ["upper", "work", "run"] {
                let p = tmp.join(d);
                fs::create_dir(&p).map_err(io_err("creating", &p))?;
            }
            use std::os::unix::fs::PermissionsExt;
            let upper = tmp.join("upper");
            fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting the mode of", &upper))?;
            write_json(&tmp.join("config.json"), &config)?;
            write_json(&tmp.join("state.json"), &State::created())?;
            let dest = self.dir(&id);
            fs::rename(&tmp, &dest).map_err(io_err("creating", &dest))
        };
        if let Err(e) = make() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Container {
            id: id.clone(),
            name: config.name.clone(),
            image_id: config.image_id.clone(),
            config,
            state: State::created(),
        })
    }

    /// Records a container's state (atomically).
    pub fn save_state(&self, id: &str, state: &State) -> Result<()> {
        write_json(&self.state_path(id), state)
    }

    /// Records that the container runs as `pid` (started at `start_time`), clearing what
    /// its last run recorded.
    pub fn mark_running(&self, id: &str, pid: i32, start_time: u64, detached: bool) -> Result<()> {
        let state = State {
            status: Status::Running,
            pid,
            start_time,
            exit_code: 0,
            started_at: Some(now_rfc3339()),
            finished_at: None,
            error: None,
            detached,
        };
        self.save_state(id, &state)
    }

    /// Clears what a previous run left (its exit record and result) before a start.
    pub fn prepare_start(&self, id: &str) -> Result<()> {
        for p in [self.exit_path(id), self.result_path(id)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &p)(e)),
            }
        }
        Ok(())
    }

    /// Records that the container ended with `code` (and `error`, when the runtime
    /// failed).
    pub fn mark_exited(&self, id: &str, code: i32, error: Option<String>) -> Result<()> {
        let mut state =
            read_json::<State>(&self.state_path(id)).unwrap_or_else(|_| State::created());
        state.status = Status::Exited;
        state.pid = 0;
        state.start_time = 0;
        state.exit_code = code;
        state.finished_at = Some(now_rfc3339());
        state.error = error;
        self.save_state(id, &state)
    }

    /// Removes container `id`: its directory (writable layer, log, state) goes at once
    /// (renamed into `tmp/`, then deleted, so a kill midway leaves no half container).
    /// Refuses a running one unless `force` (then it is killed first).
    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let c = self.load(id)?;
        if c.state.running() {
            if !force {
                return Err(ContainerError::Running(c.name));
            }
            kill_and_wait(&c.state);
        }
        let dir = self.dir(id);
        fs::create_dir_all(&self.tmp).map_err(io_err("creating", &self.tmp))?;
        let tmp = self
            .tmp
            .join(format!("{}.removed-{}", Store::writer(), &id[..12]));
        match fs::rename(&dir, &tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("removing", &dir)(e)),
        }
        fs::remove_dir_all(&tmp).map_err(io_err("removing", &tmp))
    }
}

/// Sends SIGKILL to a running container's pid 1 and waits until it is gone.
pub fn kill_and_wait(state: &State) {
    if kiln_sandbox::container::signal(state.pid, state.start_time, libc_sigkill()) {
        wait_gone(state, std::time::Duration::from_secs(30));
    }
}

fn libc_sigkill() -> i32 {
    signal_number("KILL").expect("SIGKILL")
}

/// Waits until the container's pid 1 is gone, up to `timeout`; whether it is.
pub fn wait_gone(state: &State, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while is_alive(state.pid, state.start_time) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Linux signal numbers by name (x86-64 and aarch64 agree on these).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// A signal as Docker takes it (`SIGTERM`, `TERM`, `term`, `15`, `SIGRTMIN+3`).
pub fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some((_, n)) = SIGNALS.iter().find(|(n, _)| *n == name) {
        return Some(*n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().ok()?
        };
        let n = base + sign * off;
        (34..=64).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return match rest.strip_prefix('+') {
            Some(r) => rt(34, r, 1),
            None if rest.is_empty() => Some(34),
            None => None,
        };
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return match rest.strip_prefix('-') {
            Some(r) => rt(64, r, -1),
            None if rest.is_empty() => Some(64),
            None => None,
        };
    }
    None
}

#[cfg(test)]
mod tests;
