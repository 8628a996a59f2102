//! The Linux-specific and `unsafe` part of the sandbox: namespaces, mounts, `pivot_root`,
//! and the `pre_exec` hooks that set them up. Everything else in kiln is safe code.
//!
//! A step runs as two processes:
//! - the **init** process is kiln itself, re-executed as `kiln __kiln-sandbox-init SPEC`
//!   after `unshare(NEWNS|NEWPID|NEWUTS|NEWIPC[|NEWNET])` in its `pre_exec` hook. It is
//!   single-threaded; it makes its mounts private, mounts the rootfs (overlayfs or a bind
//!   of a copied tree), `/dev`, `/sys`, the step's mounts and `/etc/resolv.conf` and
//!   `/etc/hosts`, then starts
//! - the **command**, the first process of the new pid namespace, which mounts `/proc`,
//!   masks and write-protects the parts of `/proc` and `/sys` that reach the host,
//!   `pivot_root`s into the tree, installs Docker's default seccomp filter, keeps only
//!   Docker's default capabilities, drops to the step's user and executes.
//!
//! That is the same confinement Docker and BuildKit give a container by default, minus
//! cgroups; device nodes are made unusable instead with `nodev` on every mount but the
//! few devices of `/dev`. `RUN --security=insecure` ([`Spec::privileged`]) skips all of it.
//!
//! All mounts live in the init process's private mount namespace: when it and the command
//! are gone (normally, killed, or because kiln died: both have a parent-death signal),
//! the kernel drops every mount, so nothing is ever left mounted on the host.
//!
//! A container ([`crate::container`]) runs the same init process, which also reports the
//! command's host pid (or why it did not start) on an inherited socket, with a pty's
//! master allocated from the container's own devpts; with `--init`, pid 1 is a fork of
//! the init process running `init_loop` rather than the command. Two more hidden entry
//! points, dispatched by [`hidden_main`]: the **exec helper** (`kiln
//! __kiln-sandbox-exec`), single-threaded so it may `setns` into the container's mount
//! namespace, whose child (only children enter a pid namespace) is the exec'd command;
//! and a detached container's **monitor** (`kiln __kiln-container-monitor`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rustix::fs::{CWD, Gid, Uid};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    UnmountFlags,
};
use rustix::process::Signal;
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

use crate::container::{
    CONFIG_ENV, ChildStdio, ContainerOptions, ExecConfig, InitConfig, MonitorConfig, Report,
    TtySize, send_report,
};
use crate::mounts::{self, Kind, Mount, Target};
use crate::{InitResult, NetworkMode, SandboxError, Spec, Stubs, resolve_in_root, seccomp};

/// Docker's (and BuildKit's) default capabilities: a step keeps these, in every set,
/// and no others (0xa80425fb in `/proc/self/status`).
pub const DEFAULT_CAPABILITIES: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

/// The hidden argument that makes `kiln` act as a sandbox's init process.
pub const INIT_ARG: &str = "__kiln-sandbox-init";

/// The hidden argument that makes `kiln` exec a process into a running container.
pub const EXEC_ARG: &str = "__kiln-sandbox-exec";

/// The hidden argument that makes `kiln` a detached container's monitor.
pub const MONITOR_ARG: &str = "__kiln-container-monitor";

/// kiln's hidden entry points (the sandbox's init process, the exec helper, a detached
/// container's monitor): `main` calls this first thing and, when it answers, exits with
/// the code (or prints the error, which only comes from an unreadable spec, and exits
/// with [`SETUP_ERROR_CODE`]). `None`: a normal `kiln` invocation.
pub fn hidden_main() -> Option<Result<i32, SandboxError>> {
    let mut args = std::env::args_os();
    let first = args.nth(1)?;
    // (Every process these start gets an environment of its own: the config stays here.)
    let config = || std::env::var(CONFIG_ENV).map_err(|e| e.to_string());
    let bad = |e: String| SandboxError::Message(format!("reading ${CONFIG_ENV}: {e}"));
    if first == INIT_ARG {
        let spec = args.next().unwrap_or_default();
        Some(init_main(Path::new(&spec)))
    } else if first == EXEC_ARG {
        Some(
            config()
                .and_then(|s| serde_json::from_str::<ExecConfig>(&s).map_err(|e| e.to_string()))
                .map_err(bad)
                .map(|c| {
                    let sync = take_inherited_fd(c.sync_fd);
                    exec_main(&c, &sync)
                }),
        )
    } else if first == MONITOR_ARG {
        Some(
            config()
                .and_then(|s| serde_json::from_str::<MonitorConfig>(&s).map_err(|e| e.to_string()))
                .map_err(bad)
                .map(|c| {
                    let sync = take_inherited_fd(c.sync_fd);
                    crate::container::monitor_main(c, sync)
                }),
        )
    } else {
        None
    }
}

/// Starts the init process for `spec_path`, its stdout and stderr on `output`.
pub(super) fn spawn_init(
    exe: &Path,
    spec_path: &Path,
    network: NetworkMode,
    output: OwnedFd,
) -> io::Result<Child> {
    let err = output.try_clone()?;
    let stdio = ChildStdio {
        stdin: Stdio::null(),
        stdout: Stdio::from(output),
        stderr: Stdio::from(err),
    };
    spawn_namespaced(exe, spec_path, network, stdio, None)
}

/// Starts a container's init process for `spec_path`, with `stdio` and the socket it
/// reports on (`sync`, inherited).
pub(crate) fn spawn_container_init(
    exe: &Path,
    spec_path: &Path,
    network: NetworkMode,
    stdio: ChildStdio,
    sync: OwnedFd,
) -> io::Result<Child> {
    spawn_namespaced(exe, spec_path, network, stdio, Some(sync))
}

fn spawn_namespaced(
    exe: &Path,
    spec_path: &Path,
    network: NetworkMode,
    stdio: ChildStdio,
    sync: Option<OwnedFd>,
) -> io::Result<Child> {
    use std::os::fd::AsRawFd;
    let mut flags = UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWUTS;
    flags |= UnshareFlags::NEWIPC;
    if network == NetworkMode::None {
        flags |= UnshareFlags::NEWNET;
    }
    let mut cmd = Command::new(exe);
    cmd.arg(INIT_ARG)
        .arg(spec_path)
        .env_clear()
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr)
        // Its own process group: a terminal's Ctrl-C reaches kiln, which then stops the
        // step deliberately (or forwards it to a container), instead of reaching the
        // step's processes half-way.
        .process_group(0);
    let inherit = sync.as_ref().map(|s| s.as_raw_fd());
    // SAFETY: the hook runs in the forked child before exec and only makes system calls
    // (no allocation, no locks), which is what a pre_exec hook may do even when the
    // parent is multi-threaded; `inherit` is a descriptor `sync` keeps open until
    // `spawn` returns.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            rustix::thread::unshare_unsafe(flags)?;
            if let Some(fd) = inherit {
                keep_across_exec(fd)?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(sync);
    child
}

/// Clears close-on-exec on `fd` (in a forked child, before exec).
fn keep_across_exec(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; async-signal-safe.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `kiln ARG` (the exec helper or the monitor) with its config in its
/// environment and the socket it reports on. `tied`: it dies with the calling thread
/// (the exec helper); otherwise it gets a session of its own and outlives the caller
/// (the monitor).
pub(crate) fn spawn_helper(
    exe: &Path,
    arg: &str,
    config: &str,
    stdio: ChildStdio,
    sync: OwnedFd,
    tied: bool,
) -> io::Result<Child> {
    use std::os::fd::AsRawFd;
    let mut cmd = Command::new(exe);
    cmd.arg(arg)
        .env_clear()
        .env(CONFIG_ENV, config)
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr);
    if tied {
        cmd.process_group(0);
    } else {
        cmd.current_dir("/");
    }
    let fd = sync.as_raw_fd();
    // SAFETY: as in `spawn_namespaced`: only system calls in the hook; `fd` stays open
    // (owned by `sync`) until `spawn` returns.
    unsafe {
        cmd.pre_exec(move || {
            if tied {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            } else {
                errno(rustix::process::setsid())?;
            }
            keep_across_exec(fd)
        });
    }
    let child = cmd.spawn();
    drop(sync);
    child
}

/// The exec helper (`kiln __kiln-sandbox-exec`): joins the namespaces of the container
/// whose pid 1 `config` names, starts the command in it (a child: only children enter
/// the pid namespace), reports its pid on `sync`, and exits with its status.
fn exec_main(config: &ExecConfig, sync: &OwnedFd) -> i32 {
    match exec_inner(config, sync) {
        Ok(code) => code,
        Err(Failed::Setup(message)) => {
            let code = i32::from(SETUP_ERROR_CODE);
            send_report(sync.as_fd(), &Report::Failed { code, message }, None);
            code
        }
        Err(Failed::Exec(code, message)) => {
            send_report(sync.as_fd(), &Report::Failed { code, message }, None);
            code
        }
    }
}

fn exec_inner(config: &ExecConfig, sync: &OwnedFd) -> Result<i32, Failed> {
    let spec = &config.spec;
    let program = spec
        .args
        .first()
        .ok_or_else(|| "no command specified".to_string())?
        .clone();
    let gone = || format!("container (pid {}) is not running", config.pid);
    if !crate::container::is_alive(config.pid, config.start_time) {
        return Err(Failed::Setup(gone()));
    }
    // All opened first: once in the mount namespace, /proc is the container's.
    let mut fds = Vec::new();
    for ns in ["ipc", "uts", "net", "pid", "mnt"] {
        let f = fs::File::open(format!("/proc/{}/ns/{ns}", config.pid)).map_err(|_| gone())?;
        fds.push((ns, OwnedFd::from(f)));
    }
    for (ns, fd) in &fds {
        errno(rustix::thread::move_into_link_name_space(fd.as_fd(), None))
            .map_err(ctx(|| format!("joining the container's {ns} namespace")))?;
    }
    drop(fds);
    // setns into the mount namespace made its root (the container's) this process's
    // root and working directory.
    let pty = match spec.stdio.tty {
        Some(size) => Some(
            open_pty(Path::new("/dev/pts/ptmx"), size)
                .map_err(ctx(|| "allocating a pty".into()))?,
        ),
        None => None,
    };
    let cwd = CString::new(spec.cwd.as_bytes())
        .map_err(|_| "NUL in the working directory".to_string())?;
    let filters = if spec.privileged {
        Vec::new()
    } else {
        seccomp::default_profile()?
    };
    let privileged = spec.privileged;
    let ids = Ids::new(spec.uid, spec.gid, &spec.groups);
    let mut cmd = command(&spec.args, &spec.env);
    let tty = pty.is_some();
    if let Some((_, s)) = &pty {
        let dup = || s.try_clone().map_err(ctx(|| "allocating a pty".into()));
        cmd.stdin(dup()?).stdout(dup()?).stderr(dup()?);
    }
    // SAFETY: the helper is single-threaded (kiln re-executed); the hook makes system
    // calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            session(tty)?;
            errno(rustix::process::chdir(cwd.as_c_str()))?;
            confine(privileged, &filters)?;
            ids.apply()
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let (code, m) = exec_error(&program, &e);
        Failed::Exec(code, m)
    })?;
    let pid = child.id() as i32;
    let master = pty.map(|(m, _)| m);
    send_report(
        sync.as_fd(),
        &Report::Started { pid, start_time: 0 },
        master.as_ref().map(|m| m.as_fd()),
    );
    drop(master);
    Ok(crate::container::docker_code(&wait_pid(pid)))
}

/// The exit code of an init process that could not set up the sandbox (as runc's).
pub const SETUP_ERROR_CODE: u8 = 125;

/// The init process: sets up the tree described by the spec at `spec_path`, runs the
/// command and records how it ended. Returns the process's exit code; an error only
/// when the spec cannot be read (nothing is recorded then: the caller prints the error
/// and exits with [`SETUP_ERROR_CODE`]).
///
/// A container's spec (`InitConfig`: a `Spec` with options) also names the socket to
/// report the start on (pid 1's host pid and a pty's master, or why it could not start).
pub fn init_main(spec_path: &Path) -> Result<i32, SandboxError> {
    let config: InitConfig = fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|reason| SandboxError::ReadSpec {
            path: spec_path.to_path_buf(),
            reason,
        })?;
    let sync = config
        .container
        .as_ref()
        .map(|c| take_inherited_fd(c.sync_fd));
    let spec = &config.spec;
    // Opened now: once the command has called pivot_root, this process sees the
    // sandbox's tree too (it shares the mount namespace), not the host's.
    let result_file = fs::File::create(&spec.result_file);
    let (result, code) = match run_init(spec, config.container.as_ref(), sync.as_ref()) {
        Ok(r) => {
            let code = crate::container::docker_code(&r);
            (r, code)
        }
        Err(failed) => {
            let (code, message) = match failed {
                Failed::Exec(code, m) if sync.is_some() => (code, m),
                Failed::Exec(_, m) | Failed::Setup(m) => (i32::from(SETUP_ERROR_CODE), m),
            };
            if let Some(s) = &sync {
                send_report(
                    s.as_fd(),
                    &Report::Failed {
                        code,
                        message: message.clone(),
                    },
                    None,
                );
            }
            (InitResult::SetupError(message), code)
        }
    };
    if let (Ok(bytes), Ok(mut f)) = (serde_json::to_vec(&result), result_file) {
        let _ = io::Write::write_all(&mut f, &bytes);
    }
    Ok(code)
}

/// Takes ownership of a descriptor the starter left open for this process (named in
/// its config) and makes it close-on-exec, so the command does not inherit it.
fn take_inherited_fd(fd: i32) -> OwnedFd {
    // SAFETY: the starter passed this descriptor (inherited across exec, its number in
    // the config it wrote for this process) for this process alone; nothing else here
    // owns or closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    fd
}

/// Why the command did not start.
enum Failed {
    /// The sandbox could not be set up (125).
    Setup(String),
    /// The command could not be executed: Docker's code (126, 127) and message.
    Exec(i32, String),
}

impl From<String> for Failed {
    fn from(m: String) -> Failed {
        Failed::Setup(m)
    }
}

/// Docker's exit code and message for a command that could not be executed.
fn exec_error(program: &str, e: &io::Error) -> (i32, String) {
    let (code, why) = match e.raw_os_error() {
        Some(libc::ENOENT) if program.contains('/') => {
            (127, format!("stat {program}: no such file or directory"))
        }
        Some(libc::ENOENT) => (127, "executable file not found in $PATH".into()),
        Some(libc::EACCES) => (126, "permission denied".into()),
        Some(libc::ENOEXEC) => (126, "exec format error".into()),
        Some(libc::EISDIR) => (126, "is a directory".into()),
        _ => (i32::from(SETUP_ERROR_CODE), e.to_string()),
    };
    (code, format!("exec: {program:?}: {why}"))
}

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{}: {e}", what())
}

fn errno<T>(r: rustix::io::Result<T>) -> io::Result<T> {
    r.map_err(io::Error::from)
}

fn run_init(
    spec: &Spec,
    container: Option<&ContainerOptions>,
    sync: Option<&OwnedFd>,
) -> Result<InitResult, Failed> {
    errno(rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    ))
    .map_err(ctx(|| "making mounts private".into()))?;
    let _ = rustix::system::sethostname(spec.hostname.as_bytes());
    if spec.network == NetworkMode::None {
        loopback_up().map_err(ctx(|| "bringing up the loopback interface".into()))?;
    }

    let plan = mounts::plan(spec);
    let mut stubs = Stubs::default();
    let mut later = Vec::new();
    for (i, m) in plan.iter().enumerate() {
        if m.in_command {
            // Made by the command, once its pid namespace exists; only a new filesystem
            // (/proc) needs a mount point, the masks cover what the kernel has.
            let path = match (&m.kind, &m.target) {
                (Kind::Fs { .. }, Target::Sandbox(rel)) => {
                    mount_point(&spec.merged, rel, true, &mut stubs)?
                }
                (_, Target::Sandbox(rel)) => spec.merged.join(rel.trim_start_matches('/')),
                _ => continue,
            };
            let data = match &m.kind {
                Kind::Fs { data: Some(d), .. } => {
                    Some(CString::new(d.as_str()).map_err(|_| "NUL in mount data".to_string())?)
                }
                _ => None,
            };
            later.push(LateMount {
                kind: m.kind.clone(),
                path,
                flags: mount_flags(m.flags),
                data,
            });
            continue;
        }
        mount_one(spec, m, plan.get(i + 1), &mut stubs)?;
    }
    fs::write(
        &spec.stubs_file,
        serde_json::to_vec(&stubs).map_err(|e| e.to_string())?,
    )
    .map_err(ctx(|| "recording mount points".into()))?;

    let enter = Enter::new(spec, later)?;
    match (container, sync) {
        (Some(c), Some(sync)) => run_container(spec, enter, c, sync),
        _ => run_command(spec, enter).map_err(Failed::Setup),
    }
}

/// A mount the command's process makes (see [`Mount::in_command`]), prepared by init.
struct LateMount {
    kind: Kind,
    path: PathBuf,
    flags: MountFlags,
    data: Option<CString>,
}

fn mount_flags(f: mounts::Flags) -> MountFlags {
    let mut out = MountFlags::empty();
    for (on, flag) in [
        (f.readonly, MountFlags::RDONLY),
        (f.nodev, MountFlags::NODEV),
        (f.nosuid, MountFlags::NOSUID),
        (f.noexec, MountFlags::NOEXEC),
    ] {
        if on {
            out |= flag;
        }
    }
    out
}

/// Resolves `rel` in the tree at `root` as the sandbox will see it and makes sure it
/// exists (a directory or a file), recording what had to be created.
fn mount_point(root: &Path, rel: &str, dir: bool, stubs: &mut Stubs) -> Result<PathBuf, String> {
    let p = resolve_in_root(root, rel).map_err(ctx(|| format!("resolving {rel}")))?;
    stubs
        .ensure(root, &p, dir)
        .map_err(ctx(|| format!("creating mount point {rel}")))?;
    Ok(root.join(&p))
}

/// Makes one mount of the plan in the init process. `next` is the mount after it, which
/// names what a scratch mount is for in error messages.
fn mount_one(
    spec: &Spec,
    m: &Mount,
    next: Option<&Mount>,
    stubs: &mut Stubs,
) -> Result<(), String> {
    let root = &spec.merged;
    let flags = mount_flags(m.flags);
    let t = m.sandbox_path().unwrap_or("/");
    let dest = |dir: bool, stubs: &mut Stubs| -> Result<PathBuf, String> {
        match &m.target {
            Target::Root => Ok(root.clone()),
            Target::Sandbox(rel) => mount_point(root, rel, dir, stubs),
            Target::Scratch(p) => {
                fs::create_dir_all(p).map_err(ctx(|| "scratch dir".into()))?;
                Ok(p.clone())
            }
        }
    };
    match &m.kind {
        Kind::Overlay { lowers, upper } => {
            let d = dest(true, stubs)?;
            mount_overlay(
                lowers,
                upper.as_ref().map(|(u, w)| (u, w)),
                &d,
                m.flags.nodev,
                m.flags.readonly,
            )
            .map_err(ctx(|| match next.and_then(Mount::sandbox_path) {
                _ if m.target == Target::Root => "mounting the overlay root filesystem".into(),
                Some(t) => format!("mounting the source of {t}"),
                None => "mounting a tree of layers".into(),
            }))
        }
        Kind::Bind {
            source,
            only_if_file,
        } => {
            if m.target == Target::Root {
                return bind(source, root, flags)
                    .map_err(ctx(|| format!("bind-mounting {}", root.display())));
            }
            let meta = match fs::metadata(source) {
                Ok(meta) => meta,
                Err(_) if *only_if_file => return Ok(()),
                Err(e) => return Err(ctx(|| format!("mount source {}", source.display()))(e)),
            };
            if *only_if_file && !meta.is_file() {
                return Ok(());
            }
            let d = dest(meta.is_dir(), stubs)?;
            bind(source, &d, flags).map_err(ctx(|| format!("mounting {t}")))
        }
        Kind::BindFrom { tree, subpath } => {
            let src_rel =
                resolve_in_root(tree, subpath).map_err(ctx(|| format!("resolving {subpath}")))?;
            let src = tree.join(src_rel);
            let dir = fs::metadata(&src)
                .map_err(ctx(|| format!("mount source {subpath}")))?
                .is_dir();
            let d = dest(dir, stubs)?;
            bind(&src, &d, flags).map_err(ctx(|| format!("mounting {t}")))
        }
        Kind::Fs { fstype, data } => {
            let d = dest(true, stubs)?;
            let data = data
                .as_deref()
                .map(CString::new)
                .transpose()
                .map_err(|_| "NUL in mount data".to_string())?;
            errno(rustix::mount::mount(
                *fstype,
                &d,
                *fstype,
                flags,
                data.as_deref(),
            ))
            .map_err(ctx(|| match &m.target {
                Target::Scratch(_) => "mounting a tmpfs for a secret".into(),
                _ => format!("mounting a {fstype} on {t}"),
            }))
        }
        Kind::Sysfs => {
            let sys = dest(true, stubs)?;
            if errno(rustix::mount::mount("sysfs", &sys, "sysfs", flags, None)).is_err() {
                errno(rustix::mount::mount_bind_recursive("/sys", &sys))
                    .and_then(|()| {
                        errno(rustix::mount::mount_remount(
                            &sys,
                            MountFlags::BIND | flags,
                            c"",
                        ))
                    })
                    .map_err(ctx(|| "mounting /sys".into()))?;
            }
            Ok(())
        }
        Kind::Dev { shm_size } => {
            let dev = dest(true, stubs)?;
            let nodev = if m.flags.nodev {
                MountFlags::NODEV
            } else {
                MountFlags::empty()
            };
            mount_dev(&dev, nodev, *shm_size).map_err(ctx(|| "setting up /dev".into()))
        }
        Kind::SecretFile {
            source,
            file,
            mode,
            uid,
            gid,
        } => {
            let bytes = fs::read(source).map_err(ctx(|| "reading a secret".into()))?;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .open(file)
                .and_then(|mut f| io::Write::write_all(&mut f, &bytes))
                .and_then(|()| fs::set_permissions(file, fs::Permissions::from_mode(*mode)))
                .map_err(ctx(|| "writing a secret".into()))?;
            errno(rustix::fs::chown(
                file,
                Some(Uid::from_raw(*uid)),
                Some(Gid::from_raw(*gid)),
            ))
            .map_err(ctx(|| "chown of a secret".into()))?;
            let d = dest(false, stubs)?;
            bind(file, &d, flags).map_err(ctx(|| format!("mounting {t}")))
        }
        Kind::Mask => mask_path(&root.join(t.trim_start_matches('/')), flags)
            .map_err(ctx(|| format!("masking {t}"))),
        Kind::ReadOnly => readonly_path(&root.join(t.trim_start_matches('/')), flags)
            .map_err(ctx(|| format!("making {t} read-only"))),
    }
}

/// What the command's process does between the fork and the exec (the container's pid
/// 1, or kiln's init for it): the mounts of the new pid namespace, `pivot_root`, the
/// working directory, the seccomp filter and capabilities, the user. Prepared by the
/// init process before it forks.
struct Enter {
    later: Vec<LateMount>,
    root: CString,
    cwd: CString,
    cwd_path: PathBuf,
    privileged: bool,
    filters: Vec<seccompiler::BpfProgram>,
    ids: Ids,
}

/// The user a process runs as.
struct Ids {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

impl Ids {
    fn new(uid: u32, gid: u32, groups: &[u32]) -> Ids {
        Ids {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            groups: groups.iter().map(|g| Gid::from_raw(*g)).collect(),
        }
    }

    fn apply(&self) -> io::Result<()> {
        errno(rustix::thread::set_thread_groups(&self.groups))?;
        errno(rustix::thread::set_thread_gid(self.gid))?;
        errno(rustix::thread::set_thread_uid(self.uid))
    }
}

impl Enter {
    fn new(spec: &Spec, later: Vec<LateMount>) -> Result<Enter, String> {
        Ok(Enter {
            later,
            root: CString::new(spec.merged.as_os_str().as_encoded_bytes())
                .map_err(|_| "NUL in a path".to_string())?,
            cwd: CString::new(spec.cwd.as_bytes()).map_err(|_| "NUL in WORKDIR".to_string())?,
            cwd_path: PathBuf::from(&spec.cwd),
            privileged: spec.privileged,
            filters: if spec.privileged {
                Vec::new()
            } else {
                seccomp::default_profile()?
            },
            ids: Ids::new(spec.uid, spec.gid, &spec.groups),
        })
    }

    /// Runs in the forked process: only system calls on data prepared before the fork.
    fn apply(&self) -> io::Result<()> {
        // /proc, then what is masked or read-only in it (it exists only now: it
        // belongs to the new pid namespace).
        for m in &self.later {
            match &m.kind {
                Kind::Fs { fstype, .. } => errno(rustix::mount::mount(
                    *fstype,
                    &m.path,
                    *fstype,
                    m.flags,
                    m.data.as_deref(),
                ))?,
                Kind::Mask => mask_path(&m.path, m.flags)?,
                Kind::ReadOnly => readonly_path(&m.path, m.flags)?,
                _ => {}
            }
        }
        errno(rustix::process::chdir(self.root.as_c_str()))?;
        errno(rustix::process::pivot_root(".", "."))?;
        errno(rustix::mount::unmount(".", UnmountFlags::DETACH))?;
        errno(rustix::process::chdir("/"))?;
        if rustix::process::chdir(self.cwd.as_c_str()).is_err() {
            // Docker creates a missing working directory.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&self.cwd_path)?;
            errno(rustix::process::chdir(self.cwd.as_c_str()))?;
        }
        confine(self.privileged, &self.filters)?;
        self.ids.apply()
    }
}

/// The seccomp filter and Docker's capabilities (nothing when privileged).
fn confine(privileged: bool, filters: &[seccompiler::BpfProgram]) -> io::Result<()> {
    if !privileged {
        // Without no_new_privs (Docker does not set it: setuid programs must work),
        // installing a filter needs CAP_SYS_ADMIN, so it comes before the capabilities
        // go; every call after it is one the filter allows.
        for f in filters {
            install_seccomp(f)?;
        }
        drop_capabilities()?;
    }
    Ok(())
}

/// The command of `spec` with its environment (looked up in its `PATH`).
fn command(args: &[String], env: &[String]) -> Command {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]).env_clear();
    for kv in env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        cmd.env(k, v);
    }
    cmd
}

/// Starts a RUN step's command as the first process of the new pid namespace and waits
/// for it.
fn run_command(spec: &Spec, enter: Enter) -> Result<InitResult, String> {
    let program = spec
        .args
        .first()
        .ok_or_else(|| "empty command".to_string())?;
    let mut cmd = command(&spec.args, &spec.env);
    cmd.stdin(Stdio::null());
    // SAFETY: the init process is single-threaded, so the forked child may allocate; the
    // hook only makes system calls on data prepared before the fork (and, in
    // `install_seccomp`, hands the kernel a pointer to a filter that outlives the call).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            enter.apply()
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!("{program:?}: executable file not found in $PATH")
        } else {
            format!("starting {program:?}: {e}")
        }
    })?;
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok(result_of(status))
}

fn result_of(status: std::process::ExitStatus) -> InitResult {
    match (status.code(), status.signal()) {
        (Some(c), _) => InitResult::Exited(c),
        (None, Some(s)) => InitResult::Signaled(s),
        _ => InitResult::Exited(255),
    }
}

/// A container: starts pid 1 (the command, or kiln's init running it), reports its
/// host pid (and a pty's master) on `sync`, waits for it.
fn run_container(
    spec: &Spec,
    enter: Enter,
    opts: &ContainerOptions,
    sync: &OwnedFd,
) -> Result<InitResult, Failed> {
    let program = spec
        .args
        .first()
        .ok_or_else(|| "no command specified".to_string())?
        .clone();
    let pty = match opts.tty {
        Some(size) => Some(
            open_pty(&spec.merged.join("dev/pts/ptmx"), size)
                .map_err(ctx(|| "allocating a pty".into()))?,
        ),
        None => None,
    };
    let slave = pty.as_ref().map(|(_, s)| s.try_clone()).transpose();
    let slave = slave.map_err(ctx(|| "allocating a pty".into()))?;
    let pid = if opts.init {
        fork_init(spec, &enter, slave.as_ref())?
    } else {
        let mut cmd = command(&spec.args, &spec.env);
        if let Some(s) = &slave {
            let dup = || s.try_clone().map_err(ctx(|| "allocating a pty".into()));
            cmd.stdin(dup()?).stdout(dup()?).stderr(dup()?);
        }
        let tty = slave.is_some();
        // SAFETY: as in `run_command`: the init process is single-threaded, the hook
        // makes system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                session(tty)?;
                enter.apply()
            });
        }
        let child = cmd.spawn().map_err(|e| {
            let (code, m) = exec_error(&program, &e);
            Failed::Exec(code, m)
        })?;
        child.id() as i32
    };
    drop(slave);
    let master = pty.map(|(m, _)| m);
    send_report(
        sync.as_fd(),
        &Report::Started { pid, start_time: 0 },
        master.as_ref().map(|m| m.as_fd()),
    );
    drop(master);
    Ok(wait_pid(pid))
}

/// A new session (as runc gives every container process), with fd 0 as its controlling
/// terminal when it is a pty.
fn session(tty: bool) -> io::Result<()> {
    errno(rustix::process::setsid())?;
    if tty {
        // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for the child `pid`.
fn wait_pid(pid: i32) -> InitResult {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a local integer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return InitResult::SetupError("lost the container's pid 1".into());
        }
    }
    result_of(std::process::ExitStatus::from_raw(status))
}

/// `--init`: forks kiln's minimal init as the container's pid 1 (no exec: the kiln
/// binary is not in the container's tree); it enters the container as the command
/// would, then runs [`init_loop`]. Returns its pid once it is set up.
fn fork_init(spec: &Spec, enter: &Enter, slave: Option<&OwnedFd>) -> Result<i32, Failed> {
    let (mut reader, writer) = io::pipe().map_err(ctx(|| "creating a pipe".into()))?;
    // SAFETY: the init process is single-threaded, so the child is a complete copy of
    // it that may run any code; it never returns from this block (it `_exit`s).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Failed::Setup(format!(
            "starting the init: {}",
            io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        let setup = (|| -> io::Result<()> {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if let Some(s) = slave {
                for target in 0..3 {
                    // SAFETY: dup2 onto the standard descriptors, which this process owns.
                    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(s), target) } < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
            }
            session(slave.is_some())?;
            enter.apply()
        })();
        let code = match setup {
            Err(e) => {
                let _ = io::Write::write_all(&mut &writer, e.to_string().as_bytes());
                i32::from(SETUP_ERROR_CODE)
            }
            Ok(()) => {
                drop(writer);
                init_loop(&spec.args, &spec.env)
            }
        };
        // SAFETY: ends the forked child without running the parent's exit handlers.
        unsafe { libc::_exit(code) }
    }
    drop(writer);
    let mut why = String::new();
    let _ = io::Read::read_to_string(&mut reader, &mut why);
    if !why.is_empty() {
        wait_pid(pid);
        return Err(Failed::Setup(format!("setting up the init: {why}")));
    }
    Ok(pid)
}

/// Signals the init never forwards: the ones the kernel sends a faulting thread itself,
/// and job control on a terminal.
const NOT_FORWARDED: &[i32] = &[
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGABRT,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// kiln's init, pid 1 of a `--init` container (tini's job): runs the command as its
/// child, forwards every catchable signal to it, reaps every process reparented to it,
/// and exits with the command's status (128 + signal if a signal ended it).
fn init_loop(args: &[String], env: &[String]) -> i32 {
    // SAFETY: plain signal-set operations on local, initialised sigset_t values.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in NOT_FORWARDED {
            libc::sigdelset(&mut set, *s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut cmd = command(args, env);
    // SAFETY: only sigprocmask, async-signal-safe, on a local set.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c.id() as i32,
        Err(e) => {
            let (code, message) = exec_error(&args[0], &e);
            eprintln!("kiln-init: {message}");
            return code;
        }
    };
    loop {
        // SAFETY: waits for one of the blocked signals of `set`.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: reaps any child without blocking; writes a local integer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == child {
                    return crate::container::docker_code(&result_of(
                        std::process::ExitStatus::from_raw(status),
                    ));
                }
            }
        } else {
            kill(child, sig);
        }
    }
}

/// `kill(2)`; whether it was delivered.
pub(crate) fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Opens a pty on the devpts instance whose `ptmx` is at `ptmx`, of `size`: the master
/// and the slave.
fn open_pty(ptmx: &Path, size: TtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::AsRawFd;
    let master: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(ptmx)?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that lives across the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_size(master.as_raw_fd(), size);
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor, which we own.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

fn winsize(size: TtySize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_size(fd: i32, size: TtySize) {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads a winsize that lives across the call.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// The size of kiln's terminal (stdin, else stdout), if it has one.
pub(crate) fn terminal_size() -> Option<TtySize> {
    for fd in [0, 1] {
        // SAFETY: TIOCGWINSZ writes a winsize into a local value.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some(TtySize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            });
        }
    }
    None
}

/// kiln's terminal in raw mode while a pty is attached; restored when dropped.
#[derive(Debug)]
pub(crate) struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on stdin, if it is a terminal.
    pub(crate) fn enter() -> Option<RawTerminal> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with termios values of our own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawTerminal { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the termios read in `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Forwards kiln's terminal's size to a pty's master on SIGWINCH, while it lives.
#[derive(Debug)]
pub(crate) struct WinchForwarding {
    id: signal_hook::SigId,
    _master: OwnedFd,
}

/// Starts forwarding SIGWINCH to `master` (see [`WinchForwarding`]).
pub(crate) fn forward_winch(master: BorrowedFd<'_>) -> Option<WinchForwarding> {
    use std::os::fd::AsRawFd;
    let master = master.try_clone_to_owned().ok()?;
    let fd = master.as_raw_fd();
    // SAFETY: the action makes two ioctls (async-signal-safe) on a local winsize and on
    // a descriptor that stays open until the action is unregistered (`_master`).
    let id = unsafe {
        signal_hook::low_level::register(libc::SIGWINCH, move || {
            let mut ws: libc::winsize = std::mem::zeroed();
            if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(fd, libc::TIOCSWINSZ, &ws);
            }
        })
    }
    .ok()?;
    Some(WinchForwarding {
        id,
        _master: master,
    })
}

impl Drop for WinchForwarding {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.id);
    }
}

/// The signals `kiln run` passes on to a foreground container's pid 1.
pub const FORWARDED_SIGNALS: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// While it lives, kiln's SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 go to a
/// foreground container's pid 1 (instead of ending kiln); a second SIGINT (Ctrl-C)
/// sends SIGKILL instead.
///
/// It can be set up before the container exists ([`SignalForwarding::pending`]): a
/// signal that comes while the container starts (its output may already be out) is
/// kept and sent once [`SignalForwarding::target`] names the process, instead of
/// killing kiln halfway through the start.
#[derive(Debug)]
pub struct SignalForwarding {
    ids: Vec<signal_hook::SigId>,
    shared: std::sync::Arc<Forwarding>,
}

/// What the handlers share: the target (0 while unknown) and the signals kept until
/// it is known (one flag per [`FORWARDED_SIGNALS`] entry, then one for SIGKILL).
#[derive(Debug)]
struct Forwarding {
    pid: std::sync::atomic::AtomicI32,
    interrupts: std::sync::atomic::AtomicUsize,
    pending: [std::sync::atomic::AtomicBool; FORWARDED_SIGNALS.len() + 1],
}

fn signal_of(slot: usize) -> i32 {
    FORWARDED_SIGNALS
        .get(slot)
        .copied()
        .unwrap_or(libc::SIGKILL)
}

impl Forwarding {
    /// Sends slot's signal to the target if it is known, else keeps it. Only atomics
    /// and kill(2): async-signal-safe.
    fn deliver(&self, slot: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let pid = self.pid.load(SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid, signal_of(slot)) };
            return;
        }
        self.pending[slot].store(true, SeqCst);
        // The target may have been set since the load: whoever clears the flag sends.
        let pid = self.pid.load(SeqCst);
        if pid > 0 && self.pending[slot].swap(false, SeqCst) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, signal_of(slot)) };
        }
    }
}

/// Starts forwarding signals to `pid` (see [`SignalForwarding`]).
pub fn forward_signals(pid: i32) -> SignalForwarding {
    let f = SignalForwarding::pending();
    f.target(pid);
    f
}

impl SignalForwarding {
    /// Catches the forwarded signals now, keeping them until [`Self::target`].
    pub fn pending() -> SignalForwarding {
        let shared = std::sync::Arc::new(Forwarding {
            pid: std::sync::atomic::AtomicI32::new(0),
            interrupts: std::sync::atomic::AtomicUsize::new(0),
            pending: Default::default(),
        });
        let mut ids = Vec::new();
        for (slot, &sig) in FORWARDED_SIGNALS.iter().enumerate() {
            let shared = shared.clone();
            // SAFETY: the action only uses atomics and kill(2) (`Forwarding::deliver`):
            // async-signal-safe.
            let id = unsafe {
                signal_hook::low_level::register(sig, move || {
                    let mut slot = slot;
                    if sig == libc::SIGINT
                        && shared
                            .interrupts
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                            >= 1
                    {
                        slot = FORWARDED_SIGNALS.len();
                    }
                    shared.deliver(slot);
                })
            };
            if let Ok(id) = id {
                ids.push(id);
            }
        }
        SignalForwarding { ids, shared }
    }

    /// Names the process the signals go to, and sends it those kept so far.
    pub fn target(&self, pid: i32) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.pid.store(pid, SeqCst);
        for (slot, flag) in self.shared.pending.iter().enumerate() {
            if flag.swap(false, SeqCst) {
                // SAFETY: kill(2) has no memory effects.
                unsafe { libc::kill(pid, signal_of(slot)) };
            }
        }
    }
}

impl Drop for SignalForwarding {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Mounts an overlay of `lowers` (top first) at `target`, one `lowerdir+` per layer so a
/// long chain never hits the mount options' page-size limit.
fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&PathBuf, &PathBuf)>,
    target: &Path,
    nodev: bool,
    readonly: bool,
) -> io::Result<()> {
    let mut attrs = MountAttrFlags::empty();
    let mut flags = MountFlags::empty();
    if nodev {
        attrs |= MountAttrFlags::MOUNT_ATTR_NODEV;
        flags |= MountFlags::NODEV;
    }
    if readonly {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
        flags |= MountFlags::RDONLY;
    }
    if upper.is_none() && lowers.len() == 1 {
        // overlayfs wants two lower layers without an upper one.
        return bind(&lowers[0], target, flags);
    }
    let fs = errno(rustix::mount::fsopen(
        "overlay",
        FsOpenFlags::FSOPEN_CLOEXEC,
    ))?;
    for l in lowers {
        errno(rustix::mount::fsconfig_set_string(
            fs.as_fd(),
            "lowerdir+",
            l,
        ))?;
    }
    if let Some((u, w)) = upper {
        errno(rustix::mount::fsconfig_set_string(
            fs.as_fd(),
            "upperdir",
            u,
        ))?;
        errno(rustix::mount::fsconfig_set_string(fs.as_fd(), "workdir", w))?;
    }
    // Plain copy-up semantics: a changed file is copied whole (no metacopy), a renamed
    // directory is copied (no redirects), so the upper dir is a self-contained diff.
    for (k, v) in [
        ("redirect_dir", "off"),
        ("metacopy", "off"),
        ("index", "off"),
    ] {
        let _ = rustix::mount::fsconfig_set_string(fs.as_fd(), k, v);
    }
    errno(rustix::mount::fsconfig_create(fs.as_fd()))?;
    let mnt = errno(rustix::mount::fsmount(
        fs.as_fd(),
        FsMountFlags::FSMOUNT_CLOEXEC,
        attrs,
    ))?;
    errno(rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    ))
}

/// Binds `src` onto `dest`, then applies `flags` (`RDONLY`, `NODEV`, ...) to the new
/// mount.
fn bind(src: &Path, dest: &Path, flags: MountFlags) -> io::Result<()> {
    errno(rustix::mount::mount_bind_recursive(src, dest))?;
    if !flags.is_empty() {
        errno(rustix::mount::mount_remount(
            dest,
            MountFlags::BIND | flags,
            c"",
        ))?;
    }
    Ok(())
}

/// A minimal `/dev`: a tmpfs with the host's null, zero, full, random, urandom and tty
/// bound in, a private devpts, `/dev/shm` and the usual symlinks. With `nodev` the tmpfs
/// itself is `nodev`: the bound devices are mounts of their own and keep working, but a
/// node a step makes there cannot be opened.
fn mount_dev(dev: &Path, nodev: MountFlags, shm_size: u64) -> io::Result<()> {
    errno(rustix::mount::mount(
        "tmpfs",
        dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::STRICTATIME | nodev,
        c"mode=755,size=65536k",
    ))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let p = dev.join(name);
        fs::File::create(&p)?;
        bind(&Path::new("/dev").join(name), &p, MountFlags::empty())?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts)?;
    errno(rustix::mount::mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"newinstance,ptmxmode=0666,mode=0620",
    ))?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm)?;
    errno(rustix::mount::mount(
        "shm",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        std::ffi::CString::new(format!("mode=1777,size={shm_size}"))
            .expect("no NUL in numbers")
            .as_c_str(),
    ))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    Ok(())
}

/// Hides `path` (if the kernel has it): an empty tmpfs with `flags` (read-only) over a
/// directory, `/dev/null` over anything else, as runc does for Docker's masked paths.
fn mask_path(path: &Path, flags: MountFlags) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => errno(rustix::mount::mount(
            "tmpfs", path, "tmpfs", flags, c"size=0",
        )),
        Ok(_) => errno(rustix::mount::mount_bind("/dev/null", path)),
    }
}

/// Makes `path` (if the kernel has it) a mount of itself with `flags` (read-only).
fn readonly_path(path: &Path, flags: MountFlags) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(_) => bind(path, path, flags),
    }
}

/// `struct sock_fprog` of `<linux/filter.h>`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const seccompiler::sock_filter,
}

/// Installs one seccomp BPF program on the calling thread (and what it executes),
/// without setting no_new_privs.
fn install_seccomp(prog: &seccompiler::BpfProgram) -> io::Result<()> {
    let fprog = SockFprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::other("seccomp filter too long"))?,
        filter: prog.as_ptr(),
    };
    // SAFETY: `fprog` points at `prog.len()` valid, `repr(C)` BPF instructions that live
    // across the call; the kernel copies the program before returning.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const SockFprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps only [`DEFAULT_CAPABILITIES`]: out of the bounding set (what an `execve`, even
/// of a setuid-root program, can ever regain), the effective and permitted sets; the
/// inheritable and ambient sets are emptied, as Docker does since CVE-2022-24769.
fn drop_capabilities() -> io::Result<()> {
    for bit in 0..64 {
        let cap = CapabilitySet::from_bits_retain(1 << bit);
        if DEFAULT_CAPABILITIES.contains(cap) {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // Past the kernel's last capability.
            Err(rustix::io::Errno::INVAL) => break,
            r => errno(r)?,
        }
    }
    errno(rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: DEFAULT_CAPABILITIES,
            permitted: DEFAULT_CAPABILITIES,
            inheritable: CapabilitySet::empty(),
        },
    ))?;
    errno(rustix::thread::clear_ambient_capability_set())
}

/// `ip link set lo up` in the (new) network namespace.
fn loopback_up() -> io::Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let sock = errno(rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    ))?;
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    use std::os::fd::AsRawFd;
    // SAFETY: `req` is a valid, properly sized `struct ifreq` for both requests, and
    // lives across the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
