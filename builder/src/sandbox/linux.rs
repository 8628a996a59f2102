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
//!   `pivot_root`s into the tree, drops to the step's user and executes.
//!
//! All mounts live in the init process's private mount namespace: when it and the command
//! are gone (normally, killed, or because kiln died: both have a parent-death signal),
//! the kernel drops every mount, so nothing is ever left mounted on the host.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
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
use rustix::thread::UnshareFlags;

use super::{InitResult, MountSpec, NetworkMode, RootSpec, Spec, Stubs, resolve_in_root};

/// The hidden argument that makes `kiln` act as a sandbox's init process.
pub const INIT_ARG: &str = "__kiln-sandbox-init";

/// Starts the init process for `spec_path`, its stdout and stderr on `output`.
pub(super) fn spawn_init(
    exe: &Path,
    spec_path: &Path,
    network: NetworkMode,
    output: OwnedFd,
) -> io::Result<Child> {
    let mut flags = UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWUTS;
    flags |= UnshareFlags::NEWIPC;
    if network == NetworkMode::None {
        flags |= UnshareFlags::NEWNET;
    }
    let err = output.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.arg(INIT_ARG)
        .arg(spec_path)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(err))
        // Its own process group: a terminal's Ctrl-C reaches kiln, which then stops the
        // step deliberately, instead of reaching the step's processes half-way.
        .process_group(0);
    // SAFETY: the hook runs in the forked child before exec and only makes two system
    // calls (no allocation, no locks), which is what a pre_exec hook may do even when
    // the parent is multi-threaded.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            rustix::thread::unshare_unsafe(flags)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// The init process: sets up the tree described by the spec at `spec_path`, runs the
/// command and records how it ended. Returns the process's exit code.
pub fn init_main(spec_path: &Path) -> i32 {
    let spec: Spec = match fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln sandbox: reading {}: {e}", spec_path.display());
            return 125;
        }
    };
    // Opened now: once the command has called pivot_root, this process sees the
    // sandbox's tree too (it shares the mount namespace), not the host's.
    let result_file = fs::File::create(&spec.result_file);
    let result = match run_init(&spec) {
        Ok(r) => r,
        Err(e) => InitResult::SetupError(e),
    };
    let code = match &result {
        InitResult::Exited(c) => *c,
        InitResult::Signaled(s) => 128 + s,
        InitResult::SetupError(_) => 125,
    };
    if let (Ok(bytes), Ok(mut f)) = (serde_json::to_vec(&result), result_file) {
        let _ = io::Write::write_all(&mut f, &bytes);
    }
    code
}

fn ctx(what: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{}: {e}", what())
}

fn errno<T>(r: rustix::io::Result<T>) -> io::Result<T> {
    r.map_err(io::Error::from)
}

fn run_init(spec: &Spec) -> Result<InitResult, String> {
    errno(rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    ))
    .map_err(ctx(|| "making mounts private".into()))?;
    let _ = rustix::system::sethostname(spec.hostname.as_bytes());
    if spec.network == NetworkMode::None {
        loopback_up().map_err(ctx(|| "bringing up the loopback interface".into()))?;
    }

    let root = &spec.merged;
    match &spec.root {
        RootSpec::Overlay {
            lowers,
            upper,
            work,
        } => mount_overlay(lowers, Some((upper, work)), root, false)
            .map_err(ctx(|| "mounting the overlay root filesystem".into()))?,
        // pivot_root needs the new root to be a mount point.
        RootSpec::Dir => errno(rustix::mount::mount_bind(root, root))
            .map_err(ctx(|| format!("bind-mounting {}", root.display())))?,
    }

    let mut stubs = Stubs::default();
    let target = |rel: &str, dir: bool, stubs: &mut Stubs| -> Result<PathBuf, String> {
        let p = resolve_in_root(root, rel).map_err(ctx(|| format!("resolving {rel}")))?;
        stubs
            .ensure(root, &p, dir)
            .map_err(ctx(|| format!("creating mount point {rel}")))?;
        Ok(root.join(&p))
    };

    target("proc", true, &mut stubs)?;
    let dev = target("dev", true, &mut stubs)?;
    mount_dev(&dev).map_err(ctx(|| "setting up /dev".into()))?;
    let sys = target("sys", true, &mut stubs)?;
    let ro_sys = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if errno(rustix::mount::mount("sysfs", &sys, "sysfs", ro_sys, None)).is_err() {
        errno(rustix::mount::mount_bind_recursive("/sys", &sys))
            .and_then(|()| {
                errno(rustix::mount::mount_remount(
                    &sys,
                    MountFlags::BIND | ro_sys,
                    c"",
                ))
            })
            .map_err(ctx(|| "mounting /sys".into()))?;
    }

    let mut n = 0;
    for m in &spec.mounts {
        n += 1;
        match m {
            MountSpec::Bind {
                source,
                target: t,
                readonly,
            } => {
                let dir = fs::metadata(source)
                    .map_err(ctx(|| format!("mount source {}", source.display())))?
                    .is_dir();
                let dest = target(t, dir, &mut stubs)?;
                bind(source, &dest, *readonly).map_err(ctx(|| format!("mounting {t}")))?;
            }
            MountSpec::Layers {
                lowers,
                rw,
                subpath,
                target: t,
                readonly,
            } => {
                let tree = spec.scratch.join(format!("m{n}"));
                fs::create_dir_all(&tree).map_err(ctx(|| "scratch dir".into()))?;
                mount_overlay(
                    lowers,
                    rw.as_ref().map(|(u, w)| (u, w)),
                    &tree,
                    rw.is_none(),
                )
                .map_err(ctx(|| format!("mounting the source of {t}")))?;
                let src_rel = resolve_in_root(&tree, subpath)
                    .map_err(ctx(|| format!("resolving {subpath}")))?;
                let src = tree.join(src_rel);
                let dir = fs::metadata(&src)
                    .map_err(ctx(|| format!("mount source {subpath}")))?
                    .is_dir();
                let dest = target(t, dir, &mut stubs)?;
                bind(&src, &dest, *readonly).map_err(ctx(|| format!("mounting {t}")))?;
            }
            MountSpec::Tmpfs { target: t, size } => {
                let dest = target(t, true, &mut stubs)?;
                let data = match size {
                    Some(s) => CString::new(format!("mode=1777,size={s}")),
                    None => CString::new("mode=1777"),
                }
                .expect("no NUL");
                errno(rustix::mount::mount(
                    "tmpfs",
                    &dest,
                    "tmpfs",
                    MountFlags::NOSUID | MountFlags::NODEV,
                    data.as_c_str(),
                ))
                .map_err(ctx(|| format!("mounting a tmpfs on {t}")))?;
            }
            MountSpec::Secret {
                source,
                target: t,
                mode,
                uid,
                gid,
            } => {
                // The secret is copied into a private tmpfs that exists only in this
                // mount namespace, then bound read-only onto its target.
                let holder = spec.scratch.join(format!("s{n}"));
                fs::create_dir_all(&holder).map_err(ctx(|| "scratch dir".into()))?;
                errno(rustix::mount::mount(
                    "tmpfs",
                    &holder,
                    "tmpfs",
                    MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                    c"mode=0700,size=1m",
                ))
                .map_err(ctx(|| "mounting a tmpfs for a secret".into()))?;
                let file = holder.join("secret");
                let bytes = fs::read(source).map_err(ctx(|| "reading a secret".into()))?;
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(*mode)
                    .open(&file)
                    .and_then(|mut f| io::Write::write_all(&mut f, &bytes))
                    .and_then(|()| fs::set_permissions(&file, fs::Permissions::from_mode(*mode)))
                    .map_err(ctx(|| "writing a secret".into()))?;
                errno(rustix::fs::chown(
                    &file,
                    Some(Uid::from_raw(*uid)),
                    Some(Gid::from_raw(*gid)),
                ))
                .map_err(ctx(|| "chown of a secret".into()))?;
                let dest = target(t, false, &mut stubs)?;
                bind(&file, &dest, true).map_err(ctx(|| format!("mounting {t}")))?;
            }
        }
    }
    for (host, t) in &spec.host_files {
        if let Ok(meta) = fs::metadata(host) {
            if meta.is_file() {
                let dest = target(t, false, &mut stubs)?;
                bind(host, &dest, true).map_err(ctx(|| format!("mounting {t}")))?;
            }
        }
    }
    fs::write(
        &spec.stubs_file,
        serde_json::to_vec(&stubs).map_err(|e| e.to_string())?,
    )
    .map_err(ctx(|| "recording mount points".into()))?;

    run_command(spec)
}

/// Starts the command as the first process of the new pid namespace and waits for it.
fn run_command(spec: &Spec) -> Result<InitResult, String> {
    let root = CString::new(spec.merged.as_os_str().as_encoded_bytes())
        .map_err(|_| "NUL in a path".to_string())?;
    let cwd = CString::new(spec.cwd.as_bytes()).map_err(|_| "NUL in WORKDIR".to_string())?;
    let uid = Uid::from_raw(spec.uid);
    let gid = Gid::from_raw(spec.gid);
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let program = spec
        .args
        .first()
        .ok_or_else(|| "empty command".to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.args[1..]).env_clear();
    for kv in &spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    let cwd_path = PathBuf::from(&spec.cwd);
    let proc_dir = spec.merged.join("proc");
    // SAFETY: the init process is single-threaded, so the forked child may allocate; the
    // hook only makes system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            errno(rustix::mount::mount(
                "proc",
                &proc_dir,
                "proc",
                MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                None,
            ))?;
            errno(rustix::process::chdir(root.as_c_str()))?;
            errno(rustix::process::pivot_root(".", "."))?;
            errno(rustix::mount::unmount(".", UnmountFlags::DETACH))?;
            errno(rustix::process::chdir("/"))?;
            if rustix::process::chdir(cwd.as_c_str()).is_err() {
                // Docker creates a missing working directory.
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&cwd_path)?;
                errno(rustix::process::chdir(cwd.as_c_str()))?;
            }
            errno(rustix::thread::set_thread_groups(&groups))?;
            errno(rustix::thread::set_thread_gid(gid))?;
            errno(rustix::thread::set_thread_uid(uid))?;
            Ok(())
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
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => InitResult::Exited(c),
        (None, Some(s)) => InitResult::Signaled(s),
        _ => InitResult::Exited(255),
    })
}

/// Mounts an overlay of `lowers` (top first) at `target`, one `lowerdir+` per layer so a
/// long chain never hits the mount options' page-size limit.
fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&PathBuf, &PathBuf)>,
    target: &Path,
    readonly: bool,
) -> io::Result<()> {
    if upper.is_none() && lowers.len() == 1 {
        // overlayfs wants two lower layers without an upper one.
        return bind(&lowers[0], target, readonly);
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
    let attrs = if readonly {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
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

fn bind(src: &Path, dest: &Path, readonly: bool) -> io::Result<()> {
    errno(rustix::mount::mount_bind_recursive(src, dest))?;
    if readonly {
        errno(rustix::mount::mount_remount(
            dest,
            MountFlags::BIND | MountFlags::RDONLY,
            c"",
        ))?;
    }
    Ok(())
}

/// A minimal `/dev`: a tmpfs with the host's null, zero, full, random, urandom and tty
/// bound in, a private devpts, `/dev/shm` and the usual symlinks.
fn mount_dev(dev: &Path) -> io::Result<()> {
    errno(rustix::mount::mount(
        "tmpfs",
        dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        c"mode=755,size=65536k",
    ))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let p = dev.join(name);
        fs::File::create(&p)?;
        bind(&Path::new("/dev").join(name), &p, false)?;
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
        c"mode=1777,size=65536k",
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
