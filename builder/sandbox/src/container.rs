//! Containers: long-lived sandboxes for `kiln run`, `kiln exec` and their kin.
//!
//! A container is a [`Spec`] (the same overlay root, mounts, user, network, host files
//! and confinement as a RUN step) plus what a RUN step does not have: stdio (kiln's own,
//! a pty, a log file), an optional minimal init as pid 1, and a life of its own: it is
//! started, signalled, waited for, exec'd into, and can outlive the `kiln` that started
//! it under a monitor process.
//!
//! # Processes
//!
//! [`ContainerRuntime::start`] runs the same init process as a RUN step (`kiln
//! __kiln-sandbox-init SPEC`, see [`linux`]) in new mount, pid, uts and ipc
//! (and with [`NetworkMode::None`](crate::NetworkMode::None), network) namespaces. It
//! sets up the tree and starts the container's **pid 1**: the command itself, or with
//! [`ContainerSpec::init`] kiln's minimal init (a fork of the init process, which forwards
//! every catchable signal to the command, reaps orphans and exits with the command's
//! status, as `docker run --init`'s tini does). The init process then reports pid 1's
//! host pid back (or why it could not start it: 125, 126, 127), waits for it and records
//! how it ended in [`Spec::result_file`].
//!
//! Nothing outlives its owner: pid 1 has a parent-death signal tied to the init process,
//! the init process one tied to the thread that called `start` (so call it from a thread
//! that lives as long as the container: the main thread). When pid 1 dies, the kernel
//! kills the rest of its pid namespace; when the last process of the mount namespace is
//! gone, every mount goes with it: nothing is ever mounted on the host. The overlay's
//! upper and work directories are the caller's (the container's writable layer): they
//! persist, and a second `start` with the same ones sees what the first left.
//!
//! # Stdio
//!
//! [`Stdio`] says what the command's stdin, stdout and stderr are. Without a tty, stdout
//! and stderr are pipes that the caller's process relays, chunk by chunk, to kiln's own
//! stdout and stderr when [`Stdio::attach`] is set, and to [`Stdio::log`] as Docker's
//! json-file lines (`{"log":"hi\n","stream":"stdout","time":"2024-05-01T10:00:00.123Z"}`)
//! when given, so a foreground run is also in `kiln logs`. Stdin is kiln's own with
//! [`Stdio::stdin`] (`-i`), otherwise `/dev/null`. With [`Stdio::tty`] (`-t`) the command
//! gets a pty of the container's own devpts (it is `/dev/pts/0` inside) as its
//! controlling terminal; kiln relays between the master and its own stdin and stdout,
//! puts its terminal in raw mode while attached (restored when the container ends), and
//! forwards window size changes.
//!
//! # Using it: `kiln run` in the foreground
//!
//! ```no_run
//! use kiln_sandbox::container::{ContainerRuntime, ContainerSpec, Stdio, forward_signals};
//! # fn spec_from_image() -> kiln_sandbox::Spec { unimplemented!() }
//! # fn main() -> kiln_sandbox::Result<()> {
//! let runtime = ContainerRuntime::new()?;
//! let spec = ContainerSpec {
//!     // The image's snapshots as lowers, the container's upper/work dirs, its command,
//!     // env, user, mounts, host files... as for a RUN step.
//!     sandbox: spec_from_image(),
//!     spec_file: "/store/containers/ID/spec.json".into(),
//!     init: false,
//!     stdio: Stdio {
//!         stdin: true,                          // -i
//!         tty: ContainerRuntime::terminal_size(), // -t: kiln's terminal's size
//!         attach: true,                         // foreground
//!         log: Some("/store/containers/ID/ID-json.log".into()),
//!     },
//! };
//! let mut container = match runtime.start(&spec) {
//!     Ok(c) => c,
//!     // `exec: "nope": executable file not found in $PATH`, exit 127 (126, 125).
//!     Err(e) => std::process::exit(e.exit_code()),
//! };
//! // Record container.pid() and container.start_time() in the container's state.
//! // SIGINT/SIGTERM/... to kiln go to pid 1; a second Ctrl-C kills it.
//! let forwarding = forward_signals(container.pid());
//! let code = container.wait()?; // the command's code, or 128 + signal
//! drop(forwarding);
//! std::process::exit(code);
//! # }
//! ```
//!
//! # Using it: `kiln run -d`, `stop`, `exec`
//!
//! ```no_run
//! use kiln_sandbox::container::{ContainerRuntime, ContainerSpec, ExecSpec, Stdio, is_alive};
//! # fn main() -> kiln_sandbox::Result<()> {
//! # let spec: ContainerSpec = unimplemented!();
//! let runtime = ContainerRuntime::new()?;
//! // `kiln run -d`: a monitor process (kiln re-executed, in its own session) starts the
//! // container with its output to the log only, and writes the exit status to the
//! // status file when it ends. `spawn_monitor` returns once the container runs.
//! let detached = ContainerSpec { stdio: Stdio { stdin: false, attach: false, ..spec.stdio.clone() }, ..spec };
//! let monitor = runtime.spawn_monitor(&detached, "/store/containers/ID/exit.json".as_ref())?;
//! let (pid, start_time) = (monitor.pid, monitor.start_time);
//! // Later, from another `kiln` (`kiln stop`): the recorded pid is still that container?
//! if is_alive(pid, start_time) {
//!     kiln_sandbox::container::signal(pid, start_time, libc::SIGTERM);
//! }
//! // `kiln exec -it ID sh`: joins the namespaces of the container's pid 1.
//! let mut exec = runtime.exec(pid, start_time, &ExecSpec {
//!     args: vec!["sh".into()],
//!     env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
//!     cwd: "/".into(),
//!     uid: 0,
//!     gid: 0,
//!     groups: vec![0],
//!     privileged: false,
//!     stdio: Stdio { stdin: true, tty: ContainerRuntime::terminal_size(), attach: true, log: None },
//! })?;
//! let code = exec.wait()?;
//! # let _ = code; Ok(())
//! # }
//! ```
//!
//! The container store (ids, names, state files, `ps`), the CLI and volumes are the
//! caller's: this module takes paths and gives pids, start times and exit statuses.

use std::fs;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::{InitResult, Result, SandboxError, Spec, linux};

pub use crate::linux::{SignalForwarding, forward_signals};

/// Size of a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The stdio of a container's command (or of an exec'd one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stdio {
    /// `-i`: the command reads kiln's stdin (else `/dev/null`). Only when attached.
    pub stdin: bool,
    /// `-t`: a pty of this size (see [`ContainerRuntime::terminal_size`]).
    pub tty: Option<TtySize>,
    /// Relay the command's output to kiln's stdout and stderr (a foreground run), and
    /// with `stdin`, kiln's stdin to the command. Otherwise output goes to `log` only.
    pub attach: bool,
    /// Docker's json-file log of the output, appended to.
    pub log: Option<PathBuf>,
}

/// A container to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The tree, command and confinement, as for a RUN step. Its overlay's upper and
    /// work dirs are the container's writable layer; [`Spec::result_file`] gets how pid
    /// 1 ended, [`Spec::stubs_file`] the mount points created in the tree.
    pub sandbox: Spec,
    /// Where the spec is written for the init process.
    pub spec_file: PathBuf,
    /// `--init`: kiln's minimal init is pid 1 and runs the command as its child.
    pub init: bool,
    /// The command's stdio.
    pub stdio: Stdio,
}

/// What a process to be exec'd into a running container runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    /// argv (looked up in the container's `PATH` of `env`).
    pub args: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory (must exist in the container).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Keep every capability and no seccomp filter (`--privileged`); otherwise the same
    /// policy as the container's.
    pub privileged: bool,
    /// Its stdio.
    pub stdio: Stdio,
}

/// What the init process (or the exec helper, or the monitor) tells its starter, once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The command runs: its host pid (and its start time, from the monitor).
    Started {
        /// Host pid.
        pid: i32,
        /// Start time ([`start_time`]).
        start_time: u64,
    },
    /// It could not be started: Docker's exit code (125, 126, 127) and why.
    Failed {
        /// Exit code.
        code: i32,
        /// One line.
        message: String,
    },
}

/// What the container's init process reads: a step's [`Spec`] plus the container's
/// options (none for a RUN step, whose spec file is a plain `Spec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InitConfig {
    #[serde(flatten)]
    pub spec: Spec,
    #[serde(default)]
    pub container: Option<ContainerOptions>,
}

/// The options of a container's init process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContainerOptions {
    pub init: bool,
    pub tty: Option<TtySize>,
    /// The init process's end of the socket to report on (an inherited fd).
    pub sync_fd: i32,
}

/// What the exec helper reads (from its environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExecConfig {
    pub pid: i32,
    pub start_time: u64,
    pub spec: ExecSpec,
    pub sync_fd: i32,
}

/// What the monitor reads (from its environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MonitorConfig {
    pub container: ContainerSpec,
    pub status_file: PathBuf,
    pub sync_fd: i32,
    /// Arguments to run the runtime's binary with once the record is written.
    #[serde(default)]
    pub then: Vec<String>,
}

/// How a detached container ended, as the monitor records it in its status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Docker's exit code: the command's, 128 + signal, or 125.
    pub exit_code: i32,
    /// A setup error, if the runtime failed.
    pub error: Option<String>,
    /// When it ended (RFC 3339, nanoseconds).
    pub finished_at: String,
}

/// The environment variable the exec helper and the monitor get their config in (not on
/// the command line: `/proc/PID/environ` is readable by root only).
pub(crate) const CONFIG_ENV: &str = "KILN_SANDBOX_CONFIG";

/// Starts containers and processes in them.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    exe: PathBuf,
}

impl ContainerRuntime {
    /// A runtime whose helper processes are the running `kiln` binary (or
    /// `$KILN_SANDBOX_INIT`): it must call [`linux::hidden_main`] first thing in `main`.
    pub fn new() -> Result<ContainerRuntime> {
        let exe = match std::env::var_os("KILN_SANDBOX_INIT") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe().with_context(|| "finding the kiln binary".into())?,
        };
        Ok(ContainerRuntime { exe })
    }

    /// The size of kiln's terminal (stdin, else stdout), if it has one.
    pub fn terminal_size() -> Option<TtySize> {
        linux::terminal_size()
    }

    /// Starts the container and returns once its command runs. Errors: a setup failure
    /// (125), a command not found (127) or that cannot be executed (126), see
    /// [`SandboxError::exit_code`]; the recorded result file then says so too.
    pub fn start(&self, spec: &ContainerSpec) -> Result<Container> {
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::NeedsRoot);
        }
        let (ours, theirs) = sync_pair()?;
        let config = InitConfig {
            spec: spec.sandbox.clone(),
            container: Some(ContainerOptions {
                init: spec.init,
                tty: spec.stdio.tty,
                sync_fd: raw(&theirs),
            }),
        };
        let _ = fs::remove_file(&spec.sandbox.result_file);
        fs::write(&spec.spec_file, serde_json::to_vec(&config)?)
            .with_context(|| format!("writing {}", spec.spec_file.display()))?;
        let pipes = Pipes::new(&spec.stdio)?;
        let child = linux::spawn_container_init(
            &self.exe,
            &spec.spec_file,
            spec.sandbox.network,
            pipes.child,
            theirs,
        )
        .with_context(|| format!("starting the container ({})", self.exe.display()))?;
        let mut shim = Shim { child: Some(child) };
        let (report, master) = recv_report(&ours)?;
        let (pid, _) = match report {
            Some(Report::Started { pid, .. }) => (pid, ()),
            Some(Report::Failed { code, message }) => {
                shim.wait();
                return Err(SandboxError::Start { code, message });
            }
            None => {
                let status = shim.wait();
                let recorded = read_result(&spec.sandbox.result_file);
                let message = match recorded {
                    Some(InitResult::SetupError(m)) => m,
                    _ => format!("the container's init process ended early ({status})"),
                };
                return Err(SandboxError::Start { code: 125, message });
            }
        };
        let start_time = start_time(pid).unwrap_or(0);
        let io = Relays::start(&spec.stdio, pipes.ours, master)?;
        Ok(Container {
            pid,
            start_time,
            shim,
            result_file: spec.sandbox.result_file.clone(),
            io,
        })
    }

    /// Runs a process in the running container whose pid 1 is `pid` (started at
    /// `start_time`): it joins the container's mount, uts, ipc, net and pid namespaces,
    /// gets the same capabilities and seccomp filter as the container (unless
    /// [`ExecSpec::privileged`]) and its stdio as [`ExecSpec::stdio`] says. Returns once
    /// the command runs; errors as [`start`](Self::start)'s.
    pub fn exec(&self, pid: i32, start_time: u64, spec: &ExecSpec) -> Result<ExecProcess> {
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::NeedsRoot);
        }
        if !is_alive(pid, start_time) {
            return Err(SandboxError::Start {
                code: 125,
                message: format!("container (pid {pid}) is not running"),
            });
        }
        let (ours, theirs) = sync_pair()?;
        let config = ExecConfig {
            pid,
            start_time,
            spec: spec.clone(),
            sync_fd: raw(&theirs),
        };
        let pipes = Pipes::new(&spec.stdio)?;
        let child = linux::spawn_helper(
            &self.exe,
            linux::EXEC_ARG,
            &serde_json::to_string(&config)?,
            pipes.child,
            theirs,
            true,
        )
        .with_context(|| format!("starting the exec helper ({})", self.exe.display()))?;
        let mut helper = Shim { child: Some(child) };
        let (report, master) = recv_report(&ours)?;
        let pid = match report {
            Some(Report::Started { pid, .. }) => pid,
            Some(Report::Failed { code, message }) => {
                helper.wait();
                return Err(SandboxError::Start { code, message });
            }
            None => {
                let status = helper.wait();
                return Err(SandboxError::Start {
                    code: 125,
                    message: format!("the exec helper ended early ({status})"),
                });
            }
        };
        let io = Relays::start(&spec.stdio, pipes.ours, master)?;
        Ok(ExecProcess { pid, helper, io })
    }

    /// `kiln run -d`: starts a monitor process (kiln re-executed in a session of its own,
    /// stdio on `/dev/null`, not tied to the caller) that starts the container (whose
    /// output then goes to [`Stdio::log`] only), waits for it and writes an
    /// [`ExitRecord`] to `status_file` (atomically) when it ends. Returns once the
    /// container runs, with the pids; errors as [`start`](Self::start)'s.
    pub fn spawn_monitor(&self, spec: &ContainerSpec, status_file: &Path) -> Result<Monitor> {
        self.spawn_monitor_then(spec, status_file, &[])
    }

    /// [`spawn_monitor`](Self::spawn_monitor), and once the status file is written the
    /// monitor runs the runtime's binary (kiln) with `then` as its arguments, when not
    /// empty: `kiln run -d --rm` has the container removed this way.
    pub fn spawn_monitor_then(
        &self,
        spec: &ContainerSpec,
        status_file: &Path,
        then: &[String],
    ) -> Result<Monitor> {
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::NeedsRoot);
        }
        let mut container = spec.clone();
        container.stdio.attach = false;
        container.stdio.stdin = false;
        let (ours, theirs) = sync_pair()?;
        let config = MonitorConfig {
            container,
            status_file: status_file.to_path_buf(),
            sync_fd: raw(&theirs),
            then: then.to_vec(),
        };
        let child = linux::spawn_helper(
            &self.exe,
            linux::MONITOR_ARG,
            &serde_json::to_string(&config)?,
            ChildStdio::null()?,
            theirs,
            false,
        )
        .with_context(|| format!("starting the container monitor ({})", self.exe.display()))?;
        let mut child = Shim { child: Some(child) };
        match recv_report(&ours)?.0 {
            Some(Report::Started { pid, start_time }) => Ok(Monitor {
                pid,
                start_time,
                monitor: child.child.take().expect("monitor"),
            }),
            Some(Report::Failed { code, message }) => {
                child.wait();
                Err(SandboxError::Start { code, message })
            }
            None => {
                let status = child.wait();
                Err(SandboxError::Start {
                    code: 125,
                    message: format!("the container monitor ended early ({status})"),
                })
            }
        }
    }
}

/// A running container, owned by the process that started it. Dropped without
/// [`wait`](Container::wait), it is killed (an error path never leaves one behind).
#[derive(Debug)]
pub struct Container {
    pid: i32,
    start_time: u64,
    shim: Shim,
    result_file: PathBuf,
    io: Relays,
}

impl Container {
    /// The host pid of the container's pid 1.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its start time ([`start_time`]), to tell it from a later process with the same pid.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Sends `sig` to pid 1 (if it still runs). As in Docker, pid 1 ignores signals it
    /// has no handler for, except SIGKILL (and SIGSTOP).
    pub fn signal(&self, sig: i32) -> bool {
        signal(self.pid, self.start_time, sig)
    }

    /// Waits until the container is gone (pid 1 and with it everything in it), its
    /// output relayed, and the terminal restored. Returns the exit status as Docker
    /// reports it: the command's code, 128 + the signal that killed it, 125 when the
    /// runtime failed.
    pub fn wait(&mut self) -> Result<i32> {
        let status = self.shim.wait();
        self.io.finish();
        Ok(match read_result(&self.result_file) {
            Some(r) => docker_code(&r),
            None => status.code().unwrap_or(125),
        })
    }
}

/// A process exec'd into a container.
#[derive(Debug)]
pub struct ExecProcess {
    pid: i32,
    helper: Shim,
    io: Relays,
}

impl ExecProcess {
    /// Its host pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends it `sig`.
    pub fn signal(&self, sig: i32) -> bool {
        start_time(self.pid).is_some_and(|t| signal(self.pid, t, sig))
    }

    /// Waits for it; its exit status as Docker reports it (see [`Container::wait`]).
    pub fn wait(&mut self) -> Result<i32> {
        let status = self.helper.wait();
        self.io.finish();
        Ok(status.code().unwrap_or(125))
    }
}

/// A detached container's monitor, as [`ContainerRuntime::spawn_monitor`] left it.
#[derive(Debug)]
pub struct Monitor {
    /// Host pid of the container's pid 1.
    pub pid: i32,
    /// Its start time ([`start_time`]).
    pub start_time: u64,
    /// The monitor process. `kiln run -d` just exits (the monitor is reparented); a
    /// longer-lived caller waits for it to reap it.
    pub monitor: Child,
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, clock ticks after
/// boot), `None` if there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let (state, time) = stat(pid)?;
    (state != 'Z' && state != 'X').then_some(time)
}

fn stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let time = fields.nth(18)?.parse().ok()?;
    Some((state, time))
}

/// Whether process `pid` runs and is the one that started at `start_time` (not a later
/// process that got the same pid), and is not a zombie.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    pid > 0 && self::start_time(pid) == Some(start_time)
}

/// Sends `sig` to `pid` if it is still the process that started at `start_time`.
pub fn signal(pid: i32, start_time: u64, sig: i32) -> bool {
    is_alive(pid, start_time) && linux::kill(pid, sig)
}

/// Docker's exit status for a result: the code, 128 + signal, 125 for a setup error.
pub fn docker_code(r: &InitResult) -> i32 {
    match r {
        InitResult::Exited(c) => *c,
        InitResult::Signaled(s) => 128 + s,
        InitResult::SetupError(_) => 125,
    }
}

fn read_result(path: &Path) -> Option<InitResult> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// A child process that is waited for once (and killed if dropped unwaited: an error
/// path must not leave a container behind).
#[derive(Debug)]
struct Shim {
    child: Option<Child>,
}

impl Shim {
    fn wait(&mut self) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        match self.child.take() {
            Some(mut c) => c
                .wait()
                .unwrap_or(std::process::ExitStatus::from_raw(125 << 8)),
            None => std::process::ExitStatus::from_raw(0),
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A SOCK_SEQPACKET pair: ours (close-on-exec), theirs (inherited by the child).
fn sync_pair() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
    .with_context(|| "creating a socket pair".into())
}

/// Sends one report, with a file descriptor (a pty master) if given.
pub(crate) fn send_report(sock: BorrowedFd<'_>, report: &Report, fd: Option<BorrowedFd<'_>>) {
    let bytes = serde_json::to_vec(report).unwrap_or_default();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let _ = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::empty(),
    );
}

/// Receives the one report (`None`: the other side closed without one).
fn recv_report(sock: &OwnedFd) -> Result<(Option<Report>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            r => {
                break r
                    .map_err(io::Error::from)
                    .with_context(|| "reading the container's start report".into())?
                    .bytes;
            }
        }
    };
    let mut fd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            fd = fds.next();
        }
    }
    if n == 0 {
        return Ok((None, fd));
    }
    Ok((serde_json::from_slice(&buf[..n]).ok(), fd))
}

/// The stdio handed to a child process.
pub(crate) struct ChildStdio {
    pub stdin: std::process::Stdio,
    pub stdout: std::process::Stdio,
    pub stderr: std::process::Stdio,
}

impl ChildStdio {
    fn null() -> Result<ChildStdio> {
        Ok(ChildStdio {
            stdin: std::process::Stdio::null(),
            stdout: std::process::Stdio::null(),
            stderr: std::process::Stdio::null(),
        })
    }
}

/// The child's stdio and our ends of its output pipes.
struct Pipes {
    child: ChildStdio,
    ours: Option<(io::PipeReader, io::PipeReader)>,
}

impl Pipes {
    fn new(stdio: &Stdio) -> Result<Pipes> {
        let stdin = if stdio.stdin && stdio.attach && stdio.tty.is_none() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        };
        if stdio.tty.is_some() {
            // The command's stdio is the pty; the init process's own is not used.
            return Ok(Pipes {
                child: ChildStdio {
                    stdin,
                    ..ChildStdio::null()?
                },
                ours: None,
            });
        }
        let (out_r, out_w) = io::pipe().with_context(|| "creating a pipe".into())?;
        let (err_r, err_w) = io::pipe().with_context(|| "creating a pipe".into())?;
        Ok(Pipes {
            child: ChildStdio {
                stdin,
                stdout: out_w.into(),
                stderr: err_w.into(),
            },
            ours: Some((out_r, err_r)),
        })
    }
}

/// The threads relaying a command's output (and a pty's input) and what to undo after.
#[derive(Debug, Default)]
struct Relays {
    threads: Vec<JoinHandle<()>>,
    raw: Option<linux::RawTerminal>,
    winch: Option<linux::WinchForwarding>,
}

impl Relays {
    fn start(
        stdio: &Stdio,
        pipes: Option<(io::PipeReader, io::PipeReader)>,
        master: Option<OwnedFd>,
    ) -> Result<Relays> {
        let log = match &stdio.log {
            Some(p) => Some(Arc::new(Mutex::new(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening the log {}", p.display()))?,
            ))),
            None => None,
        };
        let mut relays = Relays::default();
        if let Some((out, err)) = pipes {
            relays
                .threads
                .push(relay(out, Stream::Stdout, stdio.attach, log.clone()));
            relays
                .threads
                .push(relay(err, Stream::Stderr, stdio.attach, log));
        } else if let Some(master) = master {
            let reader = fs::File::from(master.try_clone().with_context(|| "pty".into())?);
            relays
                .threads
                .push(relay(reader, Stream::Stdout, stdio.attach, log));
            if stdio.attach {
                relays.raw = linux::RawTerminal::enter();
                relays.winch = linux::forward_winch(master.as_fd());
                if stdio.stdin {
                    let mut writer = fs::File::from(master);
                    // Not joined: it blocks on kiln's stdin until the next keystroke.
                    std::thread::spawn(move || {
                        let mut stdin = io::stdin().lock();
                        let mut buf = [0u8; 4096];
                        loop {
                            match stdin.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if writer.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        }
        Ok(relays)
    }

    fn finish(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.winch = None;
        self.raw = None;
    }
}

/// A stream of Docker's json-file log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's stdout (and a pty's output).
    Stdout,
    /// Its stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Docker splits longer lines into several entries.
const LOG_LINE_MAX: usize = 16 * 1024;

fn relay(
    mut from: impl Read + Send + 'static,
    stream: Stream,
    attach: bool,
    log: Option<Arc<Mutex<fs::File>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        let mut line: Vec<u8> = Vec::new();
        let to_log = |line: &[u8]| {
            if let Some(log) = &log {
                let entry = log_entry(line, stream, SystemTime::now());
                if let Ok(mut f) = log.lock() {
                    let _ = f.write_all(entry.as_bytes());
                }
            }
        };
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A pty's master reads EIO once the last slave is closed.
                Err(_) => break,
            };
            let chunk = &buf[..n];
            if attach {
                let _ = match stream {
                    Stream::Stdout => {
                        let mut o = io::stdout().lock();
                        o.write_all(chunk).and_then(|()| o.flush())
                    }
                    Stream::Stderr => io::stderr().lock().write_all(chunk),
                };
            }
            for &b in chunk {
                line.push(b);
                if b == b'\n' || line.len() >= LOG_LINE_MAX {
                    to_log(&line);
                    line.clear();
                }
            }
        }
        if !line.is_empty() {
            to_log(&line);
        }
    })
}

/// One line of Docker's json-file log driver.
pub fn log_entry(line: &[u8], stream: Stream, time: SystemTime) -> String {
    #[derive(Serialize)]
    struct Entry<'a> {
        log: &'a str,
        stream: &'a str,
        time: String,
    }
    let text = String::from_utf8_lossy(line);
    let mut s = serde_json::to_string(&Entry {
        log: &text,
        stream: stream.name(),
        time: rfc3339_nano(time),
    })
    .unwrap_or_default();
    s.push('\n');
    s
}

/// `time` as Go's RFC3339Nano in UTC (trailing zeros of the fraction dropped), as
/// Docker writes it.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The monitor process (`kiln __kiln-container-monitor`): starts the container, tells
/// `kiln run -d` (over the inherited socket), waits, records the exit.
pub(crate) fn monitor_main(config: MonitorConfig, sync: OwnedFd) -> i32 {
    let runtime = match ContainerRuntime::new() {
        Ok(r) => r,
        Err(e) => {
            send_report(
                sync.as_fd(),
                &Report::Failed {
                    code: 125,
                    message: e.to_string(),
                },
                None,
            );
            return 125;
        }
    };
    let mut container = match runtime.start(&config.container) {
        Ok(c) => c,
        Err(e) => {
            send_report(
                sync.as_fd(),
                &Report::Failed {
                    code: e.exit_code(),
                    message: e.to_string(),
                },
                None,
            );
            return e.exit_code();
        }
    };
    send_report(
        sync.as_fd(),
        &Report::Started {
            pid: container.pid(),
            start_time: container.start_time(),
        },
        None,
    );
    drop(sync);
    let (exit_code, error) = match container.wait() {
        Ok(c) => (
            c,
            match read_result(&config.container.sandbox.result_file) {
                Some(InitResult::SetupError(m)) => Some(m),
                _ => None,
            },
        ),
        Err(e) => (125, Some(e.to_string())),
    };
    let record = ExitRecord {
        exit_code,
        error,
        finished_at: rfc3339_nano(SystemTime::now()),
    };
    let tmp = config.status_file.with_extension("tmp");
    if let Ok(bytes) = serde_json::to_vec(&record) {
        if fs::write(&tmp, bytes).is_ok() {
            let _ = fs::rename(&tmp, &config.status_file);
        }
    }
    if !config.then.is_empty() {
        let _ = std::process::Command::new(&runtime.exe)
            .args(&config.then)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    exit_code
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_nano_in_utc() {
        let t = UNIX_EPOCH + Duration::new(1_714_557_600, 123_400_000);
        assert_eq!(rfc3339_nano(t), "2024-05-01T10:00:00.1234Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::new(951_782_400, 5);
        assert_eq!(rfc3339_nano(leap), "2000-02-29T00:00:00.000000005Z");
    }

    #[test]
    fn log_entries_are_docker_json_file_lines() {
        let e = log_entry(b"a \"b\"\n", Stream::Stderr, UNIX_EPOCH);
        assert_eq!(
            e,
            "{\"log\":\"a \\\"b\\\"\\n\",\"stream\":\"stderr\",\"time\":\"1970-01-01T00:00:00Z\"}\n"
        );
    }

    #[test]
    fn the_init_config_of_a_step_is_a_plain_spec() {
        let spec = Spec {
            root: crate::RootSpec::Dir,
            merged: "/r/merged".into(),
            scratch: "/r/scratch".into(),
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
            network: crate::NetworkMode::Host,
            hostname: "kiln".into(),
            privileged: false,
            mounts: vec![],
            shm_size: None,
            host_files: vec![],
            stubs_file: "/r/stubs".into(),
            result_file: "/r/result".into(),
        };
        let plain = serde_json::to_vec(&spec).unwrap();
        let c: InitConfig = serde_json::from_slice(&plain).unwrap();
        assert!(c.container.is_none());
        assert_eq!(c.spec.args, spec.args);
    }

    #[test]
    fn stat_gives_state_and_start_time() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(is_alive(me, t));
        assert!(!is_alive(me, t + 1));
        assert!(!is_alive(i32::MAX, t));
    }
}
