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
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

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

/// The exit code of an init process that could not set up the sandbox (as runc's).
pub const SETUP_ERROR_CODE: u8 = 125;

/// The init process: sets up the tree described by the spec at `spec_path`, runs the
/// command and records how it ended. Returns the process's exit code; an error only
/// when the spec cannot be read (nothing is recorded then: the caller prints the error
/// and exits with [`SETUP_ERROR_CODE`]).
pub fn init_main(spec_path: &Path) -> Result<i32, SandboxError> {
    let spec: Spec = fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|reason| SandboxError::ReadSpec {
            path: spec_path.to_path_buf(),
            reason,
        })?;
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
        InitResult::SetupError(_) => i32::from(SETUP_ERROR_CODE),
    };
    if let (Ok(bytes), Ok(mut f)) = (serde_json::to_vec(&result), result_file) {
        let _ = io::Write::write_all(&mut f, &bytes);
    }
    Ok(code)
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

    run_command(spec, later)
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
        Kind::Dev => {
            let dev = dest(true, stubs)?;
            let nodev = if m.flags.nodev {
                MountFlags::NODEV
            } else {
                MountFlags::empty()
            };
            mount_dev(&dev, nodev).map_err(ctx(|| "setting up /dev".into()))
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

/// Starts the command as the first process of the new pid namespace and waits for it.
fn run_command(spec: &Spec, later: Vec<LateMount>) -> Result<InitResult, String> {
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
    let privileged = spec.privileged;
    let filters = if privileged {
        Vec::new()
    } else {
        seccomp::default_profile()?
    };
    // SAFETY: the init process is single-threaded, so the forked child may allocate; the
    // hook only makes system calls on data prepared before the fork (and, in
    // `install_seccomp`, hands the kernel a pointer to a filter that outlives the call).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // /proc, then what is masked or read-only in it (it exists only now: it
            // belongs to the new pid namespace).
            for m in &later {
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
            if !privileged {
                // Without no_new_privs (Docker does not set it: setuid programs must
                // work), installing a filter needs CAP_SYS_ADMIN, so it comes before the
                // capabilities go; every call after it is one the filter allows.
                for f in &filters {
                    install_seccomp(f)?;
                }
                drop_capabilities()?;
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
fn mount_dev(dev: &Path, nodev: MountFlags) -> io::Result<()> {
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
